// A small app on tidings.js, type-checked with `tsc --strict` against tidings.d.ts
// (tests/test_typescript.py). Each `@ts-expect-error` line is a mistake the declarations
// must catch: tsc fails if it does not.

import {
  Backoff,
  type ClientMessage,
  type CloseCode,
  type DeliveredMessage,
  type ErrorCode,
  type ServerMessage,
  TidingsClient,
} from "../../src/tidings/static/tidings.js";

const files = new Map<string, { name: string; size: number }>();
const progress = new Map<string, number>();
const viewers = new Map<string, string>(); // who is viewing the project: id -> username

const client = new TidingsClient({
  backoff: new Backoff({ base: 250, cap: 10_000 }),
  fallbackAfter: 2,
  retryWebSocketAfter: 60_000,
});

client.addEventListener("message", (e) => {
  const message: DeliveredMessage = e.detail;
  switch (message.type) {
    case "connection.established":
      console.log(`hello ${message.user.username}, heartbeat every ${message.heartbeat_interval} s`);
      break;
    case "subscribed":
      if (message.recovered === false) refetch(message.project_id, message.seq);
      for (const user of message.presence ?? []) viewers.set(user.id, user.username);
      break;
    case "presence.joined":
      viewers.set(message.user.id, message.user.username);
      break;
    case "presence.left":
      viewers.delete(message.user.id);
      break;
    case "file.uploaded":
      files.set(message.file.id, { name: message.file.name, size: message.file.size });
      break;
    case "file.deleted":
      files.delete(message.file.id);
      break;
    case "process.progress":
      progress.set(message.process_id, message.progress);
      break;
    case "process.completed":
      if (message.process.status === "failed") console.warn(message.process.error ?? "failed");
      break;
    case "project.updated":
      document.title = `${message.data.name} · seq ${message.seq}`;
      break;
    case "error": {
      const code: ErrorCode = message.code;
      if (code === "rate_limited") console.warn(`retry after ${message.retry_after ?? 1} s`);
      break;
    }
    default:
      break;
  }
});

// Narrowing with `if` works the same way.
client.addEventListener("message", (e) => {
  if (e.detail.type === "file.uploaded") {
    const path: string = `${e.detail.file.path}/${e.detail.file.name}`;
    console.log(path, e.detail.seq);
  }
  // @ts-expect-error: not every message has a file
  console.log(e.detail.file);
  // @ts-expect-error: heartbeats never reach the application
  if (e.detail.type === "system.heartbeat") console.log("unreachable");
});

client.addEventListener("status", (e) => {
  const { state, reason, delay, transport } = e.detail;
  if (state === "reconnecting") console.log(`reconnecting in ${delay ?? 0} ms (${reason})`);
  if (state === "open" && transport === "stream") console.log("live over Server-Sent Events");
  // @ts-expect-error: no such transport
  if (transport === "long-polling") console.log("never");
  // @ts-expect-error: no such state
  if (state === "paused") console.log("never");
});

client.addEventListener("unrecovered", (e) => refetch(e.detail.project_id, undefined));

client.addEventListener("snapshot", (e) => {
  const { project, files, files_truncated, processes } = e.detail.snapshot;
  console.log(project.name, project.seq === e.detail.seq, files.map((f) => f.sha256), files_truncated);
  for (const process of processes) progress.set(process.id, process.progress);
  // @ts-expect-error: a snapshot's files are a list
  console.log(e.detail.snapshot.files.size);
});

// Published events are messages too, told apart by their `custom.` prefix.
client.addEventListener("message", (e) => {
  const message = e.detail;
  if (message.type.startsWith("custom.") && "data" in message) console.log(message.data);
  if (message.type === "custom.build.finished") console.log(message.data["build"], message.seq);
  // @ts-expect-error: a custom type starts with `custom.`
  if (message.type === "build.finished") console.log("never");
});

function refetch(projectId: string, seq: number | undefined): void {
  console.log(`refetch ${projectId} from ${seq ?? "the start"}`);
}

function onAnyServerMessage(message: ServerMessage): string {
  // Exhaustive: adding a message type to the protocol makes this fail to compile.
  switch (message.type) {
    case "connection.established":
    case "subscribed":
    case "unsubscribed":
    case "pong":
    case "error":
    case "system.heartbeat":
      return "control";
    case "project.created":
    case "project.updated":
    case "project.deleted":
    case "file.uploaded":
    case "file.deleted":
    case "process.started":
    case "process.completed":
      return `event ${message.seq}`;
    case "process.progress":
      return "progress";
    case "presence.joined":
    case "presence.left":
      return `${message.user.username} ${message.type === "presence.joined" ? "joined" : "left"}`;
    default: {
      const unhandled: never = message;
      return unhandled;
    }
  }
}

const hello: ClientMessage = { type: "subscribe", project_id: "c122e0eece434383", since: 41, id: 7 };
// @ts-expect-error: since is a number
const wrong: ClientMessage = { type: "subscribe", project_id: "p", since: "41" };
const restart: CloseCode = 1012;
// @ts-expect-error: not a close code of the protocol
const unknownCode: CloseCode = 1234;

await client.connect();
client.subscribe("c122e0eece434383", { since: 41 });
client.subscribe("5d1e", { snapshot: true });
await client.seen("c122e0eece434383", 42);
console.log(onAnyServerMessage, hello, wrong, restart, unknownCode, client.lastSeq("c122e0eece434383"));
