// End-to-end client for tests/test_node_client.py, on the npm `ws` package pinned in
// bench/node (run with NODE_PATH=bench/node/node_modules).
//
//   node subscribe.js WS_URL TOKEN PROJECT_ID
//
// Connects with a bearer token and the tidings.v1 subprotocol, subscribes (the subscribe
// message sent in two fragments), pings at both levels (a WebSocket ping frame and a
// protocol "ping" message), prints "ready", then prints the first file.uploaded event as
// one JSON line, closes with 1000 and prints "closed CODE". Every step is bounded by the
// caller's timeout; any surprise exits non-zero with the reason on stderr.
"use strict";

const { WebSocket } = require("ws");

const [url, token, projectId] = process.argv.slice(2);
const ws = new WebSocket(url, ["tidings.v1"], { headers: { Authorization: `Bearer ${token}` } });
let step = "connect";
let pongFrame = false;

function fail(reason) {
  process.stderr.write(`failed at ${step}: ${reason}\n`);
  process.exit(1);
}

ws.on("error", (err) => fail(err.message));
ws.on("unexpected-response", (req, res) => fail(`HTTP ${res.statusCode}`));
ws.on("pong", () => {
  pongFrame = true;
});

ws.on("open", () => {
  if (ws.protocol !== "tidings.v1") fail(`subprotocol ${ws.protocol}`);
});

ws.on("message", (data, isBinary) => {
  if (isBinary) fail("binary message");
  const message = JSON.parse(data.toString());
  if (step === "connect") {
    if (message.type !== "connection.established") fail(message.type);
    step = "subscribe";
    const text = JSON.stringify({ type: "subscribe", project_id: projectId, id: 1 });
    const cut = Math.floor(text.length / 2);
    ws.send(text.slice(0, cut), { fin: false });
    ws.send(text.slice(cut), { fin: true });
  } else if (step === "subscribe") {
    if (message.type !== "subscribed" || message.id !== 1) fail(data.toString());
    step = "ping";
    ws.ping("frame");
    ws.send(JSON.stringify({ type: "ping", id: 2 }));
  } else if (step === "ping") {
    if (message.type !== "pong" || message.id !== 2) fail(data.toString());
    if (!pongFrame) fail("no pong frame before the pong message");
    step = "event";
    process.stdout.write("ready\n");
  } else if (step === "event" && message.type === "file.uploaded") {
    process.stdout.write(JSON.stringify(message) + "\n");
    step = "close";
    ws.close(1000, "done");
  }
});

ws.on("close", (code) => {
  if (step !== "close") fail(`closed with ${code}`);
  process.stdout.write(`closed ${code}\n`);
  process.exit(0);
});
