// Live updates: the WebSocket of CONTRACT §3 while it works; REST polling
// every `next_update_in_ms` while it does not, retrying the WebSocket with
// backoff (1 s doubling to 30 s, with jitter). One socket, one reconnect
// timer and one poll timer at most, whatever happens.

import { get, token } from "./api.js";

const MIN_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
const DEFAULT_PATH = "/ws/monitoring";

/**
 * The WebSocket's path on this origin, as the server's OpenAPI document
 * lists it: a `websocket` sink sharing the address may have another `path`.
 * The default one first if it is there; the default if nothing says.
 */
async function websocketPath() {
  try {
    const r = await fetch("/api/v1/openapi.json", { cache: "no-store", signal: AbortSignal.timeout(10_000) });
    const doc = await r.json();
    const paths = Object.entries(doc.paths || {})
      .filter(([, item]) => item && item.get && String(item.get.operationId || "").startsWith("websocket_"))
      .map(([path]) => path);
    return paths.includes(DEFAULT_PATH) ? DEFAULT_PATH : (paths[0] || DEFAULT_PATH);
  } catch (e) {
    console.warn("flowpulse: cannot read the OpenAPI document; trying the default WebSocket path", e);
    return DEFAULT_PATH;
  }
}

export class Live {
  /**
   * @param {object} handlers onMetrics(doc), onAlert(alert), onEvents(events, dropped),
   *   onOpenAlerts(list) (polling), onState(state): state is live, polling,
   *   reconnecting or offline.
   */
  constructor(handlers) {
    this.h = handlers;
    this.ws = null;
    this.retryMs = MIN_RETRY_MS;
    this.reconnectTimer = null;
    this.pollTimer = null;
    this.pollEveryMs = 5000;
    this.events = false;
    this.state = "offline";
    this.polling = false;
    this.watchdog = null;
    this.path = DEFAULT_PATH;
    // A token just entered: try the WebSocket again at once.
    window.addEventListener("flowpulse-token", () => {
      if (this.state !== "live") {
        this.retryMs = MIN_RETRY_MS;
        if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
        this.connect();
      }
    });
  }

  /**
   * A connection can die without a close (a laptop asleep, a NAT dropping
   * it): no frame for three update intervals (at least 45 s) counts as lost.
   */
  feedWatchdog() {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    const ws = this.ws;
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      if (this.ws === ws && ws) {
        console.warn("flowpulse: no frame for a while; reconnecting");
        this.lost();
      }
    }, Math.max(45_000, 3 * this.pollEveryMs));
  }

  async start() {
    this.path = await websocketPath();
    this.connect();
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.h.onState(state);
    }
  }

  /** Follow the `events` channel (while the events panel is open). */
  setEvents(open) {
    this.events = open;
    this.send({ type: open ? "subscribe" : "unsubscribe", channels: ["events"] });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  connect() {
    this.reconnectTimer = null;
    this.drop();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const t = token();
    const protocols = t ? ["flowpulse", "bearer." + t] : ["flowpulse"];
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}${this.path}`, protocols);
    } catch (e) {
      console.warn("flowpulse: cannot open the WebSocket", e);
      this.lost();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = MIN_RETRY_MS;
      this.stopPolling();
      this.setState("live");
      this.feedWatchdog();
      if (this.events) this.send({ type: "subscribe", channels: ["events"] });
      // What happened while no socket was open is read again.
      if (this.h.onOpen) this.h.onOpen();
    };
    ws.onmessage = (message) => {
      this.feedWatchdog();
      this.frame(message.data);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.lost();
    };
    ws.onerror = () => {
      // onclose follows and does the work.
    };
  }

  /** Forgets the current socket and its handlers. */
  drop() {
    const ws = this.ws;
    this.ws = null;
    if (this.watchdog !== null) {
      clearTimeout(this.watchdog);
      this.watchdog = null;
    }
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** The socket is gone: poll meanwhile, and try again later. */
  lost() {
    this.drop();
    if (this.state === "live") this.setState("reconnecting");
    this.startPolling();
    if (this.reconnectTimer === null) {
      const jittered = this.retryMs / 2 + Math.random() * (this.retryMs / 2);
      this.reconnectTimer = setTimeout(() => this.connect(), jittered);
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    }
  }

  frame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch (e) {
      console.warn("flowpulse: a frame that is not JSON was skipped", e);
      return;
    }
    try {
      switch (f.type) {
        case "metrics:update":
          if (f.data && f.data.overview && typeof f.data.overview === "object") {
            if (f.data.next_update_in_ms > 0) this.pollEveryMs = Math.max(1000, f.data.next_update_in_ms);
            this.h.onMetrics(f.data);
          }
          else console.warn("flowpulse: a metrics frame without a document was skipped");
          break;
        case "alert:triggered":
        case "alert:acknowledged":
        case "alert:resolved":
          if (f.data && f.data.id) this.h.onAlert(f.data);
          break;
        case "events":
          if (Array.isArray(f.data)) this.h.onEvents(f.data, f.dropped || 0);
          break;
        case "error":
          console.warn("flowpulse: the server refused a message:", f.message);
          break;
        default:
          break;
      }
    } catch (e) {
      console.warn("flowpulse: a frame could not be shown and was skipped", e);
    }
  }

  startPolling() {
    // One poll at a time: a tick waiting on a slow answer (or on the token
    // dialog) is not joined by more.
    if (this.pollTimer !== null || this.polling) return;
    const tick = async () => {
      this.pollTimer = null;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) return;
      this.polling = true;
      try {
        const answer = await get("/api/v1/monitoring/metrics/realtime");
        if (answer && answer.data) {
          this.pollEveryMs = Math.max(1000, answer.data.next_update_in_ms || 5000);
          this.h.onMetrics(answer.data);
        }
        if (this.h.onPollAlerts) await this.h.onPollAlerts();
        if (!(this.ws && this.ws.readyState === WebSocket.OPEN)) this.setState("polling");
      } catch (e) {
        if (!(this.ws && this.ws.readyState === WebSocket.OPEN)) this.setState("offline");
      }
      this.polling = false;
      if (!(this.ws && this.ws.readyState === WebSocket.OPEN) && this.pollTimer === null) {
        this.pollTimer = setTimeout(tick, this.pollEveryMs);
      }
    };
    this.pollTimer = setTimeout(tick, 0);
  }

  stopPolling() {
    if (this.pollTimer !== null) {
      clearTimeout(this.pollTimer);
      this.pollTimer = null;
    }
  }
}
