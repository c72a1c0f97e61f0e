// REST calls to the server that served the page (CONTRACT §4), with the
// API token asked for once, kept in sessionStorage, never put in a URL.

const TOKEN_KEY = "flowpulse-token";

/** An error the server answered, with its message (§4 error body). */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Set once the person cancelled the dialog: background reads then stop asking. */
let declined = false;

/** Asks for the token with the page's dialog; resolves to it or null. */
let asking = null;
export function askToken() {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const cancel = document.getElementById("token-cancel");
  asking = new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      cancel.removeEventListener("click", onCancel);
      asking = null;
      if (value) {
        declined = false;
        sessionStorage.setItem(TOKEN_KEY, value);
        // The WebSocket reconnects at once with it.
        window.dispatchEvent(new Event("flowpulse-token"));
      } else {
        declined = true;
      }
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "ok" ? input.value.trim() || null : null);
    const onCancel = () => { dialog.returnValue = "cancel"; dialog.close(); };
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
    input.value = "";
    input.pattern = "[A-Za-z0-9._~\\-]{16,256}";
    input.title = "16 to 256 of A–Z, a–z, 0–9 and . _ ~ -";
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/** Forgets a token the server refused, unless another was entered meanwhile. */
export function forgetToken(sent) {
  if (token() === sent) sessionStorage.removeItem(TOKEN_KEY);
}

/** How long a request may take before it counts as failed. */
const REQUEST_TIMEOUT_MS = 10_000;

async function call(method, path, body, headers = {}, interactive = false, retried = false) {
  const h = { Accept: "application/json", ...headers };
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  if (body !== undefined) h["Content-Type"] = "application/json";
  let response;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  try {
    response = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal: abort.signal,
    });
  } catch (e) {
    throw new ApiError(0, "network", abort.signal.aborted
      ? "the server did not answer in time"
      : "cannot reach the server: " + e.message);
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 401 && !retried) {
    forgetToken(t);
    // Another request may have got a new token meanwhile: use it.
    if (token() && token() !== t) return call(method, path, body, headers, interactive, true);
    // Background reads ask only until the person declines once.
    if (interactive || !declined) {
      const entered = await askToken();
      if (entered) return call(method, path, body, headers, interactive, true);
    }
  }
  if (response.status === 204) return null;
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (!response.ok) {
    const e = json && json.error ? json.error : {};
    throw new ApiError(response.status, e.code || "http_" + response.status,
      e.message || "the server answered " + response.status, e.field);
  }
  return json;
}

export const get = (path) => call("GET", path);

/** A mutating request: asks for the token first if there is none yet. */
export async function post(path, body, headers = {}) {
  if (!token() && !(await askToken())) {
    throw new ApiError(401, "unauthorized", "this needs the API token");
  }
  return call("POST", path, body, { "X-Requested-By": "dashboard", ...headers }, true);
}

/** A random UUID, also on plain-HTTP pages (where crypto.randomUUID is missing). */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
