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
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "ok" ? input.value.trim() || null : null);
    const onCancel = () => { dialog.returnValue = "cancel"; dialog.close(); };
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
    input.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/** Forgets a token the server refused. */
export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function call(method, path, body, headers = {}, retried = false) {
  const h = { Accept: "application/json", ...headers };
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  if (body !== undefined) h["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, "network", "cannot reach the server: " + e.message);
  }
  if (response.status === 401 && !retried) {
    forgetToken();
    const entered = await askToken();
    if (entered) return call(method, path, body, headers, true);
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
  if (!token()) await askToken();
  return call("POST", path, body, { "X-Requested-By": "dashboard", ...headers });
}
