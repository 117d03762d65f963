// TypeScript declarations of tidings.js, the browser client of tidings, and of every
// message of its WebSocket protocol (served at /static/tidings.d.ts, beside the script).
// Put it next to the module you import and the "message" event narrows on `type`:
//
//   import { TidingsClient } from "./tidings.js";
//   const client = new TidingsClient();
//   client.addEventListener("message", (e) => {
//     if (e.detail.type === "file.uploaded") console.log(e.detail.file.name, e.detail.seq);
//   });
//
// The message types below are generated from the server's own definitions
// (src/tidings/schema.py, also served as JSON Schema at GET /api/protocol/schema).

// ---- BEGIN GENERATED from GET /api/protocol/schema (make types); do not edit ----

/** Any message the server sends, by its type. */
export type ServerMessage =
  | ConnectionEstablished
  | Subscribed
  | Unsubscribed
  | Pong
  | ErrorMessage
  | ProjectCreated
  | ProjectUpdated
  | ProjectDeleted
  | FileUploaded
  | FileDeleted
  | ProcessStarted
  | ProcessProgress
  | ProcessCompleted
  | PresenceJoined
  | PresenceLeft
  | SystemHeartbeat;

/** Any message a client sends, by its type. */
export type ClientMessage = SubscribeRequest | UnsubscribeRequest | PingRequest;

/** The first message of every connection (again after each reconnect). */
export interface ConnectionEstablished {
  type: "connection.established";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  client_id: string;
  user: User;
  /**
   * Seconds between `system.heartbeat` messages. A client that hears nothing for
   * twice as long treats the connection as dead: it closes it, reconnects and resumes.
   */
  heartbeat_interval: number;
  /** The protocol version (this is version 1). */
  protocol: number;
  /**
   * When the credential that opened the connection expires (null: never); the server
   * closes the socket with 4401 within 5 s of it.
   */
  expires_at: string | null;
}

/** The answer to `subscribe`; the project's events follow it. */
export interface Subscribed {
  type: "subscribed";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** The project's latest seq when the subscription started. */
  seq: number;
  /**
   * Only when `since` was given: true if every event after it follows; false if some
   * were lost to retention (refetch the project over REST and carry on from `seq`).
   */
  recovered?: boolean;
  /** Only when asked for with `snapshot` and needed: the project's state at `seq`. */
  snapshot?: Snapshot;
  /**
   * Who is viewing the project (subscribed to it on any node), the caller included,
   * each user once, by username; `presence.joined` and `presence.left` update it
   * (apply them as set operations: one may repeat what the list shows). This server always
   * sends it; optional so that replies of servers that predate presence still parse.
   */
  presence?: User[];
  /** The request's `id`, if it had one. */
  id?: string | number;
}

/** The answer to `unsubscribe`, or the end of a subscription the server decided. */
export interface Unsubscribed {
  type: "unsubscribed";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Only when the server ended it: the user was removed from the project's members. */
  reason?: "access_revoked";
  /** The request's `id`, if it had one. */
  id?: string | number;
}

/** The answer to `ping`. */
export interface Pong {
  type: "pong";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  /** The request's `id`, if it had one. */
  id?: string | number;
}

/** A request failed; the connection stays open. */
export interface ErrorMessage {
  type: "error";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  code: ErrorCode;
  /** For people; do not parse it. */
  message: string;
  /** The project the failed request named, when it named one. */
  project_id?: string;
  /** With `rate_limited`: seconds until a message is accepted again. */
  retry_after?: number;
  /** The request's `id`, if it had one. */
  id?: string | number;
}

/** A project was created (sent to its owner's connections). */
export interface ProjectCreated {
  type: "project.created";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  data: Project;
}

/** A project was renamed or described, or its members changed. */
export interface ProjectUpdated {
  type: "project.updated";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  data: Project;
}

/** A project was deleted: its subscriptions end after this. */
export interface ProjectDeleted {
  type: "project.deleted";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  data: Project;
}

/** A file was uploaded to the project. */
export interface FileUploaded {
  type: "file.uploaded";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  file: FileInfo;
}

/** A file was deleted from the project. */
export interface FileDeleted {
  type: "file.deleted";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  file: FileInfo;
}

/** A process started running. */
export interface ProcessStarted {
  type: "process.started";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  process_id: string;
  process: Process;
}

/**
 * A running process's progress. Ephemeral: no `seq`, never replayed, and under
 * backpressure only the newest one per process waits in a connection's queue.
 */
export interface ProcessProgress {
  type: "process.progress";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  process_id: string;
  /** 0 to 1. */
  progress: number;
  message: string;
}

/** A process ended: succeeded, failed or cancelled (`process.status`). */
export interface ProcessCompleted {
  type: "process.completed";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Numbered per project, from 1, without gaps; resume after it with `since`. */
  seq: number;
  process_id: string;
  process: Process;
}

/**
 * A user's first subscription to the project opened (on any node): they are viewing
 * it. Ephemeral (no `seq`, never replayed); sent to the project's subscribers (not to
 * that user's own connections: their `subscribed` lists them).
 */
export interface PresenceJoined {
  type: "presence.joined";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  user: User;
}

/**
 * A user's last subscription to the project closed: unsubscribed, disconnected, lost
 * access, or the node that held it stopped (then within 1.25 times
 * `TIDINGS_PRESENCE_EXPIRY`). Ephemeral, like `presence.joined`.
 */
export interface PresenceLeft {
  type: "presence.left";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  user: User;
}

/** Sent to every connection every `heartbeat_interval` seconds. */
export interface SystemHeartbeat {
  type: "system.heartbeat";
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
}

/**
 * Follow a project's events; with `since`, first every event after that seq.
 *
 * Either `project_id` (with `since` and `snapshot`) or `projects`, a list of
 * such entries: each is answered (`subscribed` or `error`) in the order given, as if
 * sent alone. The list holds at most the server's per-connection subscription limit.
 */
export interface SubscribeRequest {
  type: "subscribe";
  /** The project (unless `projects` is given). */
  project_id?: string;
  /** Several projects at once, instead of `project_id`. */
  projects?: SubscribeEntry[];
  /** The last seq the client has processed for this project. */
  since?: number;
  /**
   * Ask for the project's state in the reply (with `since`: only if it cannot
   * recover).
   */
  snapshot?: boolean;
  /** Echoed in the reply (in each reply, with `projects`). */
  id?: string | number;
}

/** Stop following a project. */
export interface UnsubscribeRequest {
  type: "unsubscribe";
  project_id: string;
  /** Echoed in the reply. */
  id?: string | number;
}

/** Ask for a `pong`. */
export interface PingRequest {
  type: "ping";
  /** Echoed in the reply. */
  id?: string | number;
}

/**
 * An event another service published (`POST /api/projects/{id}/events`): `custom.`
 * and a name. Durable ones have a `seq` and are replayed like the built-in events;
 * ephemeral ones have none.
 */
export interface CustomMessage {
  type: `custom.${string}`;
  /** When the server sent it: RFC 3339, UTC, milliseconds, `Z`. */
  timestamp: string;
  project_id: string;
  /** Only when durable: numbered with the project's other events. */
  seq?: number;
  /** The object the publisher gave. */
  data: Record<string, unknown>;
}

/** Close codes of /ws, and whether a client should reconnect after each. */
export type CloseCode =
  /** normal: The connection ended normally. */
  | 1000
  /** going_away: The peer went away (page closed, node leaving). */
  | 1001
  /** protocol_error: The client broke the WebSocket protocol (RFC 6455). Fix the client before retrying. */
  | 1002
  /** invalid_payload: A text message was not valid UTF-8. Reconnect, but do not resend it. */
  | 1007
  /** message_too_big: A client message exceeded TIDINGS_WS_MAX_MESSAGE_BYTES. Reconnect, but do not resend it. */
  | 1009
  /** internal_error: The server failed (a subscribe the database could not serve included), or the client did not answer pings within TIDINGS_WS_PING_TIMEOUT. Reconnect and resume with `since`. */
  | 1011
  /** service_restart: The node is shutting down. Reconnect (to any node) and resume with `since`, after a random delay up to the reason's `reconnect_within_ms`. */
  | 1012
  /** try_again_later: The user has too many open connections (TIDINGS_WS_MAX_CONNECTIONS_PER_USER). Reconnect after a back-off, or close another connection first. */
  | 1013
  /** slow_consumer: The client read too slowly and its outbound queue overflowed. Reconnect and resume with `since`: nothing durable is lost. */
  | 4008
  /** unauthorized: No valid session or token, or it was revoked or has expired. Log in again before reconnecting. */
  | 4401
  /** rate_limited: The client kept sending faster than allowed after a rate_limited error. Reconnect after a back-off. */
  | 4429;

/** `code` of an `error` message; the connection stays open after each. */
export type ErrorCode =
  | "bad_request"
  | "not_found"
  | "rate_limited"
  | "too_many_subscriptions"
  | "internal";

/** The file of a `file.*` event. */
export interface FileInfo {
  id: string;
  name: string;
  /** The folder, `/` or `/a/b`. */
  path: string;
  /** Bytes. */
  size: number;
  /** `image`, `model`, `video`, `document` … (from the name). */
  asset_type: string;
}

/** A process as `GET /api/projects/{id}/processes/{pid}` returns it. */
export interface Process {
  id: string;
  project_id: string;
  kind: string;
  params: Record<string, unknown>;
  status: "queued" | "running" | "succeeded" | "failed" | "cancelled";
  /** 0 to 1. */
  progress: number;
  message: string;
  /** The kind's result once succeeded (null until then, and after retention). */
  result: unknown;
  error: string | null;
  created_by: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

/** A project as `GET /api/projects/{id}` returns it. */
export interface Project {
  id: string;
  name: string;
  description: string;
  /** The owner's username. */
  owner: string;
  created_at: string;
  updated_at: string;
  /** The project's newest event seq when this was read: resume from here. */
  seq: number;
}

/**
 * A project's state at the `seq` of the `subscribed` that carries it, in the REST
 * API's shapes.
 */
export interface Snapshot {
  project: Project;
  /** In path and name order, at most `TIDINGS_SNAPSHOT_MAX_FILES`. */
  files: StoredFile[];
  /** True if `files` is not all of them: page the rest over REST. */
  files_truncated: boolean;
  /** The queued and running ones and the most recent others, newest first. */
  processes: Process[];
  /** True if some queued or recent processes did not fit: list them over REST. */
  processes_truncated: boolean;
}

/** A file as `GET /api/projects/{id}/files` lists it. */
export interface StoredFile {
  id: string;
  name: string;
  /** The folder, `/` or `/a/b`. */
  path: string;
  /** Bytes. */
  size: number;
  /** `image`, `model`, `video`, `document` … (from the name). */
  asset_type: string;
  content_type: string;
  /** Hex SHA-256 of the content. */
  sha256: string;
  created_at: string;
}

/** One project of a `subscribe` that names several (`projects`). */
export interface SubscribeEntry {
  project_id: string;
  /** The last seq the client has processed for this project. */
  since?: number;
  /**
   * Ask for the project's state in its reply (with `since`: only if it cannot
   * recover).
   */
  snapshot?: boolean;
}

/**
 * A user, as `connection.established` names the connected one (and presence names
 * viewers).
 */
export interface User {
  id: string;
  username: string;
}

// ---- END GENERATED ----

/** What the "message" event carries: every server message but heartbeats and pongs,
 * published `custom.*` events included. */
export type DeliveredMessage = Exclude<ServerMessage, SystemHeartbeat | Pong> | CustomMessage;

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/**
 * Why the client reconnects: the server closed the socket ("closed"), it carried nothing
 * for twice the heartbeat interval ("silent"), the page came back online ("online"), or a
 * hidden page became visible after a silence longer than the interval ("visible").
 */
export type ReconnectReason = "closed" | "silent" | "online" | "visible";

/** How the client is connected: a WebSocket, or the Server-Sent Events fallback
 * (GET /api/stream) when WebSocket cannot be opened. */
export type Transport = "websocket" | "stream";

export interface StatusDetail {
  state: ConnectionState;
  /** The transport of this connection (attempt). */
  transport: Transport;
  /** Failed attempts since the last established connection. */
  attempt: number;
  /** The close code ("reconnecting" and "closed"); 1006 for a connection that dropped or
   * was given up as dead. */
  code?: number;
  /** "reconnecting": a ReconnectReason; "closed": the close code's name (see CloseCode). */
  reason?: ReconnectReason | string;
  /** "reconnecting": milliseconds before the next attempt. */
  delay?: number;
}

export interface UnrecoveredDetail {
  project_id: string;
}

/** A project's state at `seq` (subscriptions made with `snapshot: true`). */
export interface SnapshotDetail {
  project_id: string;
  seq: number;
  snapshot: Snapshot;
}

export interface SubscribeOptions {
  /** Resume after this seq. */
  since?: number | null;
  /** Ask for the project's state whenever the subscription does not resume. */
  snapshot?: boolean;
}

export interface TidingsClientEventMap {
  message: CustomEvent<DeliveredMessage>;
  snapshot: CustomEvent<SnapshotDetail>;
  status: CustomEvent<StatusDetail>;
  unrecovered: CustomEvent<UnrecoveredDetail>;
}

/** The tables served at GET /api/protocol. */
export interface ProtocolTable {
  protocol: number;
  close_codes: Record<string, { name: string; meaning: string; reconnect: boolean }>;
  error_codes: Record<string, string>;
}

export interface BackoffOptions {
  /** Milliseconds (500). */
  base?: number;
  /** Milliseconds (30000). */
  cap?: number;
  factor?: number;
  random?: () => number;
}

/** Exponential back-off with jitter: a random delay in [d/2, d], d = min(cap, base*2^n). */
export declare class Backoff {
  constructor(options?: BackoffOptions);
  base: number;
  cap: number;
  factor: number;
  attempt: number;
  next(): number;
  /** The wait before the first reconnect after a 1012 whose reason suggests spreading
   * reconnects over `within` ms: random in [0, min(within, cap)]. */
  spread(within: number): number;
  reset(): void;
}

/** Milliseconds a close reason suggests spreading the reconnect over (null: none). */
export declare function reconnectWithin(reason: string | null | undefined): number | null;

/** Per-project seq bookkeeping and wanted subscriptions; no I/O. */
export declare class SeqState {
  last: Map<string, number>;
  subscriptions: Set<string>;
  streaming: Set<string>;
  snapshots: Set<string>;
  want(projectId: string, since?: number | null, snapshot?: boolean): SubscribeRequest;
  drop(projectId: string): UnsubscribeRequest;
  forget(projectId: string): void;
  subscribeMessage(projectId: string): SubscribeRequest;
  /** One entry of a `subscribe` with `projects`: how this project resumes. */
  entry(projectId: string): SubscribeEntry;
  /** Whether the view of a project includes its event `seq`. */
  seen(projectId: string, seq: number): boolean;
  /** A new connection: one `subscribe` naming every wanted project (null: none). */
  resubscribe(): SubscribeRequest | null;
  /** Account for one server message; true if the application should see it. */
  receive(message: ServerMessage | CustomMessage): boolean;
}

/** Heartbeat intervals of silence after which a connection counts as dead (2). */
export declare const DEAD_AFTER_HEARTBEATS: number;

/** Reconnect after `code`? The server's table decides; codes it does not list are transient. */
export declare function shouldReconnect(table: ProtocolTable | null, code: number): boolean;

/** ws(s)://<this host>/ws */
export declare function defaultUrl(loc?: Location): string;

/** WebSocket attempts in a row that never reach connection.established before the client
 * falls back to Server-Sent Events (3). */
export declare const FALLBACK_AFTER_FAILURES: number;

/** Milliseconds on the stream before a WebSocket is tried again (120000). */
export declare const RETRY_WEBSOCKET_AFTER_MS: number;

/** GET /api/stream with the wanted subscriptions of `state` (each resuming from its last
 * seen seq: `since=PROJECT:SEQ`). */
export declare function streamUrl(base: string, state: SeqState): string;

/** One Server-Sent Events response read with fetch, looking like a WebSocket to the
 * client: `onmessage({data})` per event, `onclose({code})` once. */
export declare class EventStreamSocket {
  constructor(url: string, projects?: string[]);
  readonly isStream: true;
  readonly projects: string[];
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  close(): void;
}

export interface TidingsClientOptions {
  /** The socket's URL (default: /ws of this page's host). */
  url?: string;
  /** The close-code table (default: /api/protocol). */
  protocolUrl?: string;
  backoff?: Backoff;
  /** The Server-Sent Events fallback (default: /api/stream); null: never fall back. */
  streamUrl?: string | null;
  /** WebSocket attempts in a row that never reach connection.established before the
   * fallback (default: FALLBACK_AFTER_FAILURES). */
  fallbackAfter?: number;
  /** Milliseconds on the stream before a WebSocket is tried again, beside it (default:
   * RETRY_WEBSOCKET_AFTER_MS). */
  retryWebSocketAfter?: number;
}

/** One logical connection to /ws (or, where WebSocket cannot be opened, to /api/stream)
 * that reconnects, resumes and drops duplicates. */
export declare class TidingsClient extends EventTarget {
  constructor(options?: TidingsClientOptions);
  readonly url: string;
  readonly state: SeqState;
  readonly reconnects: number;
  /** The current transport: "stream" while on the Server-Sent Events fallback. */
  readonly transport: Transport;
  /** Fetch the close-code table, then open the socket (and keep it open). */
  connect(): Promise<void>;
  /** Follow a project; with `since`, from the event after that seq; with `snapshot`, its
   * state comes as a "snapshot" event whenever the subscription does not resume. Kept
   * across reconnects. */
  subscribe(projectId: string, options?: SubscribeOptions): void;
  unsubscribe(projectId: string): void;
  /** Resolves once the event `seq` of a subscribed project has been delivered (the
   * `Tidings-Seq` of a change's answer); rejects if the subscription ends first. */
  seen(projectId: string, seq: number): Promise<void>;
  /** Seq of the newest event seen for a project (undefined if none). */
  lastSeq(projectId: string): number | undefined;
  close(): void;
  addEventListener<K extends keyof TidingsClientEventMap>(
    type: K,
    listener: (this: TidingsClient, event: TidingsClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof TidingsClientEventMap>(
    type: K,
    listener: (this: TidingsClient, event: TidingsClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
