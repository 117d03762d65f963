// tidings browser client: one logical connection to /ws that reconnects and resumes.
//
// Same behaviour as the Python client (tidings/client.py): the session cookie
// authenticates (log in with POST /api/auth/login first), whether to reconnect after a
// close code comes from the server's own table at GET /api/protocol, each subscription
// resumes after a reconnect with `since` = the last seq seen, and events whose seq was
// already seen are dropped.
//
//   import { TidingsClient } from "/static/tidings.js";
//   const client = new TidingsClient();
//   client.addEventListener("message", (e) => console.log(e.detail));
//   client.addEventListener("status", (e) => console.log(e.detail.state));
//   await client.connect();
//   client.subscribe(projectId, { since: project.seq });
//
// Events (CustomEvent, payload in `detail`):
//   "message"     every server message except heartbeats, pongs and duplicates;
//                 `connection.established` again after each reconnect (refetch what you
//                 track without a subscription), `subscribed` with `recovered: false`
//                 when events were lost to retention (refetch that project).
//   "unrecovered" {project_id} for each `recovered: false`.
//   "status"      {state, code, delay, attempt, last}: state is "connecting", "open",
//                 "reconnecting" (after `delay` ms) or "closed" (code tells why; 4401:
//                 log in again).

const SUBPROTOCOLS = ["tidings.batch.v1", "tidings.v1"];
const SILENT = new Set(["system.heartbeat", "pong"]);

/** Exponential back-off with jitter: a random delay in [d/2, d], d = min(cap, base*2^n). */
export class Backoff {
  constructor({ base = 500, cap = 30000, factor = 2, random = Math.random } = {}) {
    Object.assign(this, { base, cap, factor, random, attempt: 0 });
  }
  next() {
    const ceiling = Math.min(this.cap, this.base * this.factor ** Math.min(this.attempt, 64));
    this.attempt += 1;
    return ceiling / 2 + this.random() * (ceiling / 2);
  }
  reset() {
    this.attempt = 0;
  }
}

/** Per-project seq bookkeeping and wanted subscriptions; no I/O (mirrors ClientState).
 * Only a project's subscription stream (what follows its `subscribed` reply on the current
 * connection) moves its cursor; its durable events arriving outside the stream are dropped,
 * and events of projects not subscribed to (the project-list audience) pass untouched. */
export class SeqState {
  constructor() {
    this.last = new Map();
    this.subscriptions = new Set();
    this.streaming = new Set();
  }
  want(projectId, since) {
    this.subscriptions.add(projectId);
    this.streaming.delete(projectId);
    if (since !== undefined && since !== null) this.last.set(projectId, since);
    return this.subscribeMessage(projectId);
  }
  drop(projectId) {
    this.subscriptions.delete(projectId);
    this.streaming.delete(projectId);
    return { type: "unsubscribe", project_id: projectId };
  }
  subscribeMessage(projectId) {
    const message = { type: "subscribe", project_id: projectId };
    if (this.last.has(projectId)) message.since = this.last.get(projectId);
    return message;
  }
  resubscribe() {
    this.streaming.clear();
    return [...this.subscriptions].sort().map((p) => this.subscribeMessage(p));
  }
  /** Account for one server message; true if the application should see it. */
  receive(message) {
    const { type, project_id: pid, seq } = message;
    if (SILENT.has(type)) return false;
    if (typeof pid !== "string") return true;
    if (type === "subscribed") {
      if (this.subscriptions.has(pid)) this.streaming.add(pid);
      if (Number.isInteger(seq)) {
        if (message.recovered === false) this.last.set(pid, seq);
        else if (!("recovered" in message)) this.last.set(pid, Math.max(this.last.get(pid) ?? 0, seq));
      }
      return true;
    }
    if ((type === "unsubscribed" && message.reason) || (type === "error" && message.code === "not_found")) {
      this.subscriptions.delete(pid);
      this.streaming.delete(pid);
      return true;
    }
    if (Number.isInteger(seq) && this.subscriptions.has(pid)) {
      if (!this.streaming.has(pid) || seq <= (this.last.get(pid) ?? -1)) return false;
      this.last.set(pid, seq);
      if (type === "project.deleted") {
        this.subscriptions.delete(pid);
        this.streaming.delete(pid);
      }
    }
    return true;
  }
}

/** Reconnect after `code`? The server's table decides; codes it does not list
 * (1006 abnormal closure: refused, dropped) are transient. */
export function shouldReconnect(table, code) {
  const entry = table && table.close_codes ? table.close_codes[String(code)] : undefined;
  return entry ? entry.reconnect : true;
}

export function defaultUrl(loc = window.location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

export class TidingsClient extends EventTarget {
  constructor({ url, protocolUrl = "/api/protocol", backoff } = {}) {
    super();
    this.url = url || defaultUrl();
    this.protocolUrl = protocolUrl;
    this.backoff = backoff || new Backoff();
    this.state = new SeqState();
    this.table = null;
    this.ws = null;
    this.open = false;
    this.stopped = false;
    this.reconnects = 0;
    this.timer = null;
  }

  /** Fetch the close-code table, then open the socket (and keep it open). */
  async connect() {
    this.stopped = false;
    await this.loadTable();
    this.openSocket();
  }

  async loadTable() {
    try {
      const response = await fetch(this.protocolUrl, { credentials: "same-origin" });
      if (response.ok) this.table = await response.json();
    } catch (err) {
      // Unreachable now; every code counts as transient until the table loads.
    }
  }

  subscribe(projectId, { since } = {}) {
    this.send(this.state.want(projectId, since));
  }

  unsubscribe(projectId) {
    this.send(this.state.drop(projectId));
  }

  /** Seq of the newest event seen for a project (undefined if none). */
  lastSeq(projectId) {
    return this.state.last.get(projectId);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.status({ state: "closed", code: 1000 });
  }

  // -- internals ------------------------------------------------------------------------

  send(message) {
    // While disconnected the state remembers the subscription; the reconnect sends it.
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  status(detail) {
    this.dispatchEvent(new CustomEvent("status", { detail: { attempt: this.backoff.attempt, ...detail } }));
  }

  openSocket() {
    this.status({ state: "connecting" });
    const ws = new WebSocket(this.url, SUBPROTOCOLS);
    this.ws = ws;
    ws.onmessage = (event) => {
      let parsed;
      try {
        parsed = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
        if (message && typeof message === "object") this.handle(ws, message);
      }
    };
    ws.onclose = (event) => this.closed(ws, event.code);
  }

  handle(ws, message) {
    if (message.type === "connection.established") {
      for (const m of this.state.resubscribe()) ws.send(JSON.stringify(m));
      this.open = true;
      if (this.backoff.attempt > 0) this.reconnects += 1;
      this.backoff.reset();
      this.status({ state: "open" });
    }
    if (!this.state.receive(message)) return;
    if (message.type === "subscribed" && message.recovered === false) {
      this.dispatchEvent(new CustomEvent("unrecovered", { detail: { project_id: message.project_id } }));
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  async closed(ws, code) {
    if (ws !== this.ws) return;
    this.open = false;
    this.ws = null;
    if (this.stopped) return;
    if (!this.table) await this.loadTable();
    if (!shouldReconnect(this.table, code)) {
      this.stopped = true;
      const entry = this.table.close_codes[String(code)];
      this.status({ state: "closed", code, reason: entry.name });
      return;
    }
    const delay = this.backoff.next();
    this.status({ state: "reconnecting", code, delay });
    this.timer = setTimeout(async () => {
      if (this.stopped) return;
      if (!this.table) await this.loadTable();
      this.openSocket();
    }, delay);
  }
}
