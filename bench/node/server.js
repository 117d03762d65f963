// The reference of tidings' benchmarks: what a user might write instead, on Node and the
// npm `ws` package. Same client protocol subset as tidings' /ws (subscribe, subscribed,
// ping, pong, events); each event is encoded once and ws.send() to each subscriber, as
// the ws documentation's broadcast example does. No authentication, no event log, no
// backpressure policy (a client that stops reading makes ws buffer without bound).
//
//   node server.js PORT [HEARTBEAT_SECONDS]
"use strict";

const http = require("node:http");
const { WebSocketServer, WebSocket } = require("ws");

const port = Number(process.argv[2] || 8100);
const heartbeat = Number(process.argv[3] || 30);

const clients = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
const publishers = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 * 1024 });
const channels = new Map(); // project id -> Set of sockets

function now() {
  return new Date().toISOString();
}

function broadcast(projectId, message) {
  const subscribers = channels.get(projectId);
  if (!subscribers) return;
  message.timestamp = now();
  const data = Buffer.from(JSON.stringify(message)); // encoded once, sent to all
  for (const ws of subscribers) {
    if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: false });
  }
}

clients.on("connection", (ws) => {
  const subscriptions = new Set();
  ws.send(JSON.stringify({ type: "connection.established", heartbeat_interval: heartbeat, timestamp: now() }));
  ws.on("message", (data) => {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      ws.send(JSON.stringify({ type: "error", code: "bad_request", timestamp: now() }));
      return;
    }
    if (message.type === "subscribe") {
      const id = String(message.project_id);
      if (!channels.has(id)) channels.set(id, new Set());
      channels.get(id).add(ws);
      subscriptions.add(id);
      ws.send(JSON.stringify({ type: "subscribed", project_id: id, seq: 0, timestamp: now() }));
    } else if (message.type === "unsubscribe") {
      channels.get(String(message.project_id))?.delete(ws);
      subscriptions.delete(String(message.project_id));
      ws.send(JSON.stringify({ type: "unsubscribed", project_id: message.project_id, timestamp: now() }));
    } else if (message.type === "ping") {
      ws.send(JSON.stringify({ type: "pong", timestamp: now() }));
    }
  });
  ws.on("close", () => {
    for (const id of subscriptions) channels.get(id)?.delete(ws);
  });
  ws.on("error", () => {});
});

// The benchmark's publisher: each message is an event for one project.
publishers.on("connection", (ws) => {
  ws.on("message", (data) => {
    const event = JSON.parse(data);
    broadcast(String(event.project_id), event);
  });
});

const server = http.createServer((req, res) => {
  const match = /^\/api\/projects\/([^/]+)$/.exec(req.url);
  if (req.method === "PATCH" && match) {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const changes = JSON.parse(Buffer.concat(chunks).toString() || "{}");
      const project = { id: match[1], ...changes, updated_at: now() };
      broadcast(match[1], { type: "project.updated", project_id: match[1], data: project });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(project));
    });
    return;
  }
  res.writeHead(req.url === "/healthz" ? 200 : 404, { "content-type": "application/json" });
  res.end(JSON.stringify({ status: req.url === "/healthz" ? "ok" : "not found" }));
});

server.on("upgrade", (req, socket, head) => {
  const target = req.url === "/ws" ? clients : req.url === "/bench/publish" ? publishers : null;
  if (!target) {
    socket.destroy();
    return;
  }
  target.handleUpgrade(req, socket, head, (ws) => target.emit("connection", ws, req));
});

setInterval(() => {
  const text = JSON.stringify({ type: "system.heartbeat", timestamp: now() });
  for (const ws of clients.clients) if (ws.readyState === WebSocket.OPEN) ws.send(text);
}, heartbeat * 1000).unref();

process.on("SIGTERM", () => process.exit(0));
server.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
