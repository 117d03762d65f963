// tidings browser client: one logical connection to /ws that reconnects and resumes.
//
// Same behaviour as the Python client (tidings/client.py): the session cookie
// authenticates (log in with POST /api/auth/login first), whether to reconnect after a
// close code comes from the server's own table at GET /api/protocol, each subscription
// resumes after a reconnect with `since` = the last seq seen, and events whose seq was
// already seen are dropped.
//
// A connection that carries nothing for twice the `heartbeat_interval` announced in
// `connection.established` counts as dead (a laptop that slept, a NAT that forgot it;
// browsers expose no ping frames): the client drops it, reconnects and resumes. It also
// reconnects at once when the page comes back `online`, and when a hidden page becomes
// visible after a silence longer than the interval (timers barely run in hidden pages).
// Where a WebSocket cannot be opened (proxies and carriers that break it: several
// attempts in a row that never reached `connection.established`), the client carries on
// over Server-Sent Events (GET /api/stream, read with fetch) with the same API, the same
// events and the same resume by seq, and tries a WebSocket again every few minutes,
// switching back once one reaches `connection.established`.
// Types: /static/tidings.d.ts.
//
//   import { TidingsClient } from "/static/tidings.js";
//   const client = new TidingsClient();
//   client.addEventListener("message", (e) => console.log(e.detail));
//   client.addEventListener("status", (e) => console.log(e.detail.state));
//   client.addEventListener("snapshot", (e) => render(e.detail.snapshot));
//   await client.connect();
//   client.subscribe(projectId, { snapshot: true });
//   const answer = await fetch(...);               // a change of our own, then:
//   await client.seen(projectId, Number(answer.headers.get("Tidings-Seq")));
//
// Events (CustomEvent, payload in `detail`):
//   "message"     every server message except heartbeats, pongs and duplicates;
//                 `connection.established` again after each reconnect (refetch what you
//                 track without a subscription), `subscribed` with `recovered: false`
//                 when events were lost to retention (refetch that project, or subscribe
//                 with `snapshot: true` and the state comes by itself).
//   "snapshot"    {project_id, seq, snapshot}: a project's state at `seq` (its project,
//                 files and processes, as REST shows them), for a subscription made with
//                 `snapshot: true`: at first, and after a resume that could not recover.
//                 The events that follow have higher seqs. Sent before its "message".
//   "unrecovered" {project_id} for each `recovered: false`.
//   "status"      {state, transport, code, delay, attempt, reason}: state is
//                 "connecting", "open",
//                 "reconnecting" (after `delay` ms; `reason` "closed", "silent",
//                 "online" or "visible") or "closed" (code tells why; 4401: log in
//                 again); transport is "websocket" or "stream" (the SSE fallback).

const SUBPROTOCOLS = ["tidings.batch.v1", "tidings.v1"];
const SILENT = new Set(["system.heartbeat", "pong"]);
// Heartbeat intervals of silence after which a connection counts as dead.
export const DEAD_AFTER_HEARTBEATS = 2;
// What a dead connection is reported closed with: abnormal closure, as when it drops.
const ABNORMAL = 1006;
const RESTART = 1012; // service_restart: its reason may suggest a reconnect spread
// WebSocket attempts in a row that never reach `connection.established` before the client
// falls back to Server-Sent Events, and how long it stays there before trying again.
export const FALLBACK_AFTER_FAILURES = 3;
export const RETRY_WEBSOCKET_AFTER_MS = 120000;
// A refused stream request, as the close code a socket would have got.
const REFUSED = { 401: 4401, 429: 1013 };
const POLICY = 1008;

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
  /** The wait before the first reconnect after a restart that suggests spreading the
   * reconnects over `within` ms: a random time in [0, within] (`cap` at most). */
  spread(within) {
    return this.random() * Math.min(within, this.cap);
  }
  reset() {
    this.attempt = 0;
  }
}

const RECONNECT_WITHIN = /\breconnect_within_ms=(\d{1,7})\b/;

/** Milliseconds a close reason suggests spreading the reconnect over (null: none); a
 * node that stops closes with 1012 and `service restart; reconnect_within_ms=5000`. */
export function reconnectWithin(reason) {
  const match = RECONNECT_WITHIN.exec(reason || "");
  return match ? Number(match[1]) : null;
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
    this.snapshots = new Set(); // subscriptions that ask for a snapshot
  }
  /** With `snapshot` and no `since` the caller holds nothing: start from the state. */
  want(projectId, since, snapshot = false) {
    const hasSince = since !== undefined && since !== null;
    this.subscriptions.add(projectId);
    this.streaming.delete(projectId);
    if (snapshot) {
      this.snapshots.add(projectId);
      if (!hasSince) this.last.delete(projectId);
    } else {
      this.snapshots.delete(projectId);
    }
    if (hasSince) this.last.set(projectId, since);
    return this.subscribeMessage(projectId);
  }
  drop(projectId) {
    this.forget(projectId);
    return { type: "unsubscribe", project_id: projectId };
  }
  forget(projectId) {
    this.subscriptions.delete(projectId);
    this.streaming.delete(projectId);
    this.snapshots.delete(projectId);
  }
  subscribeMessage(projectId) {
    return { type: "subscribe", ...this.entry(projectId) };
  }
  entry(projectId) {
    const entry = { project_id: projectId };
    if (this.last.has(projectId)) entry.since = this.last.get(projectId);
    if (this.snapshots.has(projectId)) entry.snapshot = true;
    return entry;
  }
  /** Whether the view of a project includes its event `seq` (delivered, or covered by a
   * `subscribed` seq: a snapshot's, or where an unrecovered subscription starts). */
  seen(projectId, seq) {
    return (this.last.get(projectId) ?? -1) >= seq;
  }
  /** A new connection: one `subscribe` naming every wanted project (null: none). */
  resubscribe() {
    this.streaming.clear();
    if (!this.subscriptions.size) return null;
    return { type: "subscribe", projects: [...this.subscriptions].sort().map((p) => this.entry(p)) };
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
      this.forget(pid);
      return true;
    }
    if (Number.isInteger(seq) && this.subscriptions.has(pid)) {
      if (!this.streaming.has(pid) || seq <= (this.last.get(pid) ?? -1)) return false;
      this.last.set(pid, seq);
      if (type === "project.deleted") this.forget(pid);
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

/** GET /api/stream for the wanted subscriptions of `state`, each resuming from its last
 * seen seq, as the subscribe messages of a socket would. */
export function streamUrl(base, state) {
  const query = new URLSearchParams();
  for (const m of state.resubscribe()?.projects ?? []) {
    query.append("project", m.project_id);
    if (m.since !== undefined) query.append("since", `${m.project_id}:${m.since}`);
    if (m.snapshot) query.append("snapshot", m.project_id);
  }
  const text = query.toString();
  return text ? `${base}?${text}` : base;
}

/** One Server-Sent Events response read with fetch, looking like a WebSocket to the
 * client: `onmessage({data})` per event, `onclose({code})` once (the code of the
 * server's closing comment, 4401 for a 401, 1006 if the connection dropped). fetch
 * rather than EventSource: it sees every event type (custom.* included), the status
 * of a refusal, and lets the client decide when to reconnect. */
export class EventStreamSocket {
  constructor(url, projects = []) {
    this.isStream = true;
    this.projects = projects;
    this.onmessage = null;
    this.onclose = null;
    this.controller = new AbortController();
    this.run(url);
  }
  async run(url) {
    let code = ABNORMAL;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/event-stream" },
        signal: this.controller.signal,
      });
      if (!response.ok) {
        code = REFUSED[response.status] ?? POLICY;
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const closing = this.dispatch(buffer.slice(0, end));
          if (closing) code = closing;
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      // Dropped, or aborted by close(): reported below either way.
    } finally {
      const onclose = this.onclose;
      this.onclose = null;
      if (onclose) onclose({ code });
    }
  }
  /** One event; returns the close code of a `: closed CODE reason` comment. */
  dispatch(block) {
    const data = [];
    let closing;
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
      const m = /^: closed (\d+)/.exec(line);
      if (m) closing = Number(m[1]);
    }
    if (data.length && this.onmessage) this.onmessage({ data: data.join("\n") });
    return closing;
  }
  send() {
    throw new Error("an event stream carries no client messages");
  }
  close() {
    this.controller.abort();
  }
}

export class TidingsClient extends EventTarget {
  constructor({
    url,
    protocolUrl = "/api/protocol",
    backoff,
    streamUrl = "/api/stream",
    fallbackAfter = FALLBACK_AFTER_FAILURES,
    retryWebSocketAfter = RETRY_WEBSOCKET_AFTER_MS,
  } = {}) {
    super();
    this.url = url || defaultUrl();
    this.streamBase = streamUrl; // null: never fall back
    this.fallbackAfter = fallbackAfter;
    this.retryWebSocketAfter = retryWebSocketAfter;
    this.transport = "websocket";
    this.failures = 0; // WebSocket attempts in a row that never reached connection.established
    this.reached = false; // the current connection got connection.established
    this.probe = null; // a WebSocket tried while the stream runs
    this.probeTimer = null;
    this.reopenQueued = false;
    this.protocolUrl = protocolUrl;
    this.backoff = backoff || new Backoff();
    this.state = new SeqState();
    this.table = null;
    this.ws = null;
    this.open = false;
    this.stopped = false;
    this.reconnects = 0;
    this.established = 0;
    this.timer = null;
    this.heartbeatMs = null; // from connection.established
    this.lastHeard = 0; // Date.now() of the newest frame: wall time, which runs on in sleep
    this.watchdog = null;
    this.onOnline = () => this.reconnectNow("online");
    this.onVisible = () => {
      const silence = Date.now() - this.lastHeard;
      if (document.visibilityState === "visible" && this.heartbeatMs && silence > this.heartbeatMs) {
        this.reconnectNow("visible");
      }
    };
    this.waiters = new Map(); // project id -> [{seq, resolve, reject}] of seen() calls
  }

  /** Fetch the close-code table, then open the socket (and keep it open). */
  async connect() {
    this.stopped = false;
    if (typeof window !== "undefined") window.addEventListener("online", this.onOnline);
    if (typeof document !== "undefined") document.addEventListener("visibilitychange", this.onVisible);
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

  /** Subscribe (resuming after `since` if given). With `snapshot: true` the project's
   * state comes as a "snapshot" event whenever the subscription does not resume. */
  subscribe(projectId, { since, snapshot = false } = {}) {
    this.send(this.state.want(projectId, since, snapshot));
  }

  unsubscribe(projectId) {
    this.send(this.state.drop(projectId));
    this.releaseWaiters(projectId);
  }

  /** A Promise that resolves once the event `seq` of a subscribed project has been
   * delivered (or a `subscribed` reply covers it): read-your-writes for a change whose
   * answer said `Tidings-Seq: seq`. It rejects if the subscription ends first (or there
   * is none) and if the client stops. */
  seen(projectId, seq) {
    if (this.state.seen(projectId, seq)) return Promise.resolve();
    if (!this.state.subscriptions.has(projectId) || this.stopped) {
      return Promise.reject(new Error(`not subscribed to ${projectId}`));
    }
    return new Promise((resolve, reject) => {
      if (!this.waiters.has(projectId)) this.waiters.set(projectId, []);
      this.waiters.get(projectId).push({ seq, resolve, reject });
    });
  }

  /** Seq of the newest event seen for a project (undefined if none). */
  lastSeq(projectId) {
    return this.state.last.get(projectId);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    this.stopProbe();
    if (typeof window !== "undefined") window.removeEventListener("online", this.onOnline);
    if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this.onVisible);
    if (this.ws) this.ws.close(1000);
    this.status({ state: "closed", code: 1000 });
    this.rejectWaiters("the client was closed");
  }

  // -- internals ------------------------------------------------------------------------

  send(message) {
    // While disconnected the state remembers the subscription; the reconnect sends it.
    // A stream's subscriptions are in its URL: it is opened again with the new ones.
    if (!this.open) return;
    if (this.ws.isStream) this.reopenStream();
    else this.ws.send(JSON.stringify(message));
  }

  status(detail) {
    const base = { attempt: this.backoff.attempt, transport: this.transport };
    this.dispatchEvent(new CustomEvent("status", { detail: { ...base, ...detail } }));
  }

  openSocket() {
    if (this.ws) this.drop(); // one socket at a time, whoever asked for it
    const stream = this.streamBase !== null && this.failures >= this.fallbackAfter;
    this.transport = stream ? "stream" : "websocket";
    this.status({ state: "connecting" });
    if (!stream) {
      this.attach(new WebSocket(this.url, SUBPROTOCOLS));
      return;
    }
    this.attach(this.newStream());
    if (!this.probeTimer && !this.probe) this.armProbe();
  }

  newStream() {
    const url = streamUrl(this.streamBase, this.state);
    return new EventStreamSocket(url, [...this.state.subscriptions].sort());
  }

  /** Subscriptions changed while on a stream: open it again with them (once for all the
   * changes of this task), without a new "connection.established" for the app. */
  reopenStream() {
    if (this.reopenQueued) return;
    this.reopenQueued = true;
    queueMicrotask(() => {
      this.reopenQueued = false;
      if (this.stopped || !this.ws || !this.ws.isStream) return;
      this.drop();
      const stream = this.newStream();
      stream.quiet = true;
      this.attach(stream);
    });
  }

  /** While on a stream: try a WebSocket every `retryWebSocketAfter` ms, beside the
   * stream, and move to it once it reaches connection.established. */
  armProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (this.stopped || this.transport !== "stream") return;
      const probe = new WebSocket(this.url, SUBPROTOCOLS);
      this.probe = probe;
      probe.onmessage = (event) => {
        if (this.probe !== probe) return;
        this.probe = null;
        this.failures = 0;
        this.transport = "websocket";
        this.drop(); // the stream: the socket resumes every subscription from here
        this.attach(probe);
        probe.onmessage(event);
      };
      probe.onclose = () => {
        if (this.probe !== probe) return;
        this.probe = null;
        this.armProbe();
      };
    }, this.retryWebSocketAfter);
  }

  stopProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = null;
    const probe = this.probe;
    this.probe = null;
    if (probe) {
      probe.onmessage = null;
      probe.onclose = null;
      probe.close();
    }
  }

  attach(ws) {
    this.ws = ws;
    this.reached = false;
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
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
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
  }

  handle(ws, message) {
    if (message.type === "connection.established") {
      const wanted = this.state.resubscribe(); // one message for all; a stream's URL carries them
      if (wanted && !ws.isStream) ws.send(JSON.stringify(wanted));
      this.open = true;
      this.reached = true;
      if (ws.isStream) {
        const now = wanted ? wanted.projects.map((m) => m.project_id) : [];
        if (now.join() !== ws.projects.join()) this.reopenStream(); // changed meanwhile
      } else {
        this.failures = 0;
      }
      if (ws.quiet) {
        this.armWatchdog();
        return; // the same connection to the app, with other subscriptions
      }
      if (this.established > 0) this.reconnects += 1;
      this.established += 1;
      this.backoff.reset();
      const interval = Number(message.heartbeat_interval);
      this.heartbeatMs = interval > 0 ? interval * 1000 : null;
      this.armWatchdog();
      this.status({ state: "open" });
    }
    if (!this.state.receive(message)) return;
    if (message.type === "subscribed" && message.recovered === false) {
      this.dispatchEvent(new CustomEvent("unrecovered", { detail: { project_id: message.project_id } }));
    }
    if (message.type === "subscribed" && message.snapshot) {
      const { project_id, seq, snapshot } = message;
      this.dispatchEvent(new CustomEvent("snapshot", { detail: { project_id, seq, snapshot } }));
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
    if (this.waiters.has(message.project_id)) this.releaseWaiters(message.project_id);
  }

  /** Settle the seen() calls of a project that its view now covers, or whose
   * subscription has ended. */
  releaseWaiters(projectId) {
    const ended = !this.state.subscriptions.has(projectId);
    const left = [];
    for (const waiter of this.waiters.get(projectId) || []) {
      if (this.state.seen(projectId, waiter.seq)) waiter.resolve();
      else if (ended) waiter.reject(new Error(`the subscription to ${projectId} ended`));
      else left.push(waiter);
    }
    if (left.length) this.waiters.set(projectId, left);
    else this.waiters.delete(projectId);
  }

  rejectWaiters(why) {
    for (const waiters of this.waiters.values()) {
      for (const waiter of waiters) waiter.reject(new Error(why));
    }
    this.waiters.clear();
  }

  /** One timer per silence: it fires when the connection would have been silent for
   * DEAD_AFTER_HEARTBEATS intervals, and sets itself again if something came meanwhile. */
  armWatchdog() {
    clearTimeout(this.watchdog);
    if (!this.open || !this.heartbeatMs) return;
    const limit = DEAD_AFTER_HEARTBEATS * this.heartbeatMs;
    this.watchdog = setTimeout(() => {
      if (!this.open) return;
      if (Date.now() - this.lastHeard >= limit) this.abandon("silent");
      else this.armWatchdog();
    }, Math.max(0, this.lastHeard + limit - Date.now()));
  }

  /** Give up on the current socket without waiting for it: a dead connection may take
   * minutes to report its close. Its late events are ignored (`ws !== this.ws`). */
  drop() {
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    clearTimeout(this.watchdog);
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      try {
        ws.close();
      } catch (err) {
        // Closing a socket that never opened can throw; it is abandoned either way.
      }
    }
  }

  /** The connection is judged dead: reconnect after the usual back-off. */
  abandon(reason) {
    this.drop();
    this.retry(ABNORMAL, reason, this.backoff.next());
  }

  /** Reconnect now (the page came back online, or became visible after a silence). */
  reconnectNow(reason) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const code = this.ws ? ABNORMAL : undefined;
    this.drop();
    this.retry(code, reason, 0);
  }

  async closed(ws, code, reason) {
    if (ws !== this.ws) return;
    if (!ws.isStream && !this.reached) this.failures += 1;
    this.open = false;
    this.ws = null;
    clearTimeout(this.watchdog);
    if (this.stopped) return;
    if (!this.table) await this.loadTable();
    if (!shouldReconnect(this.table, code)) {
      this.stopped = true;
      const entry = this.table.close_codes[String(code)];
      this.status({ state: "closed", code, reason: entry.name });
      this.rejectWaiters(`the connection closed with ${code}`);
      return;
    }
    // A node that stops (1012) suggests spreading the fleet's return: the first attempt
    // waits a random part of it; later ones back off as usual.
    const within = code === RESTART ? reconnectWithin(reason) : null;
    this.retry(code, "closed", within === null ? this.backoff.next() : this.backoff.spread(within));
  }

  retry(code, reason, delay) {
    this.status({ state: "reconnecting", code, reason, delay });
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      if (this.stopped || this.ws) return;
      if (!this.table) await this.loadTable();
      if (!this.stopped && !this.ws) this.openSocket();
    }, delay);
  }
}
