"""The write phase's load generator: concurrent REST writers, in a process of its own.

``run.py`` starts it pinned to the core the server does not use, with the case as JSON on
the command line; it prints JSON lines with a ``phase`` like ``loadgen.py`` (``ready``,
``start``, ``end``, ``done`` with the figures) and exits.

Each of ``writers`` writers keeps one keep-alive HTTP/1.1 connection and sends its next
change as soon as the last one is answered, cycling through the kinds of change: project
PATCH, a small file upload, a member add (a user made for it beforehand) and a durable
custom event (or only the ``kinds`` given). Writer ``i`` writes to project
``i mod len(projects)``. A change counts when it is answered 2xx; its latency is from the
first byte sent to the last byte of the answer.
The HTTP client is a few lines over asyncio streams, so that the load generator costs
little next to the server and keeps up with a fast one.

    python bench/writes.py '{"host", "port", "token", "projects": [...],
                             "users": PREFIX, "writers": 8, "changes": 4000,
                             "kinds": ["patch"]}'

Member adds use the users ``PREFIX0``, ``PREFIX1`` … (``changes`` of them); file deletes
the ``files`` given (ids of files of the first project, ``changes`` of them).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import orjson
import uvloop

KINDS = ("patch", "upload", "member", "event")
BOUNDARY = "benchboundary7f3a"


def encode_request(method: str, path: str, host: str, token: str, ctype: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def change(kind: str, n: int, project: str, item: str, host: str, token: str) -> bytes:
    """The bytes of the ``n``-th change of a writer (``item``: the user a member add adds,
    the file a delete deletes, the writer's name otherwise)."""
    base = f"/api/projects/{project}"
    if kind == "patch":
        body = orjson.dumps({"description": f"change {n}"})
        return encode_request("PATCH", base, host, token, "application/json", body)
    if kind == "upload":
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{item}-{n}.txt"\r\nContent-Type: text/plain\r\n\r\n'
            f"small file {n}\r\n--{BOUNDARY}--\r\n"
        ).encode()
        ctype = f"multipart/form-data; boundary={BOUNDARY}"
        return encode_request("POST", f"{base}/files", host, token, ctype, body)
    if kind == "member":
        body = orjson.dumps({"username": item})
        return encode_request("POST", f"{base}/members", host, token, "application/json", body)
    if kind == "create":
        body = orjson.dumps({"name": f"{item} {n}"})
        return encode_request("POST", "/api/projects", host, token, "application/json", body)
    if kind == "delete":
        return encode_request("DELETE", f"{base}/files/{item}", host, token, "text/plain", b"")
    body = orjson.dumps({"type": "custom.bench", "data": {"n": n}})
    return encode_request("POST", f"{base}/events", host, token, "application/json", body)


async def answer(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def writer(
    index: int,
    config: dict[str, Any],
    users: list[str],
    files: list[str],
    latencies: list[float],
) -> list[str]:
    host, port, token = config["host"], config["port"], config["token"]
    projects: list[str] = config["projects"]
    project = projects[index % len(projects)]
    kinds: list[str] = config.get("kinds") or list(KINDS)
    reader, stream = await asyncio.open_connection(host, port)
    errors: list[str] = []
    try:
        for n in range(config["changes"] // config["writers"]):
            kind = kinds[(n + index) % len(kinds)]
            item = (
                users.pop()
                if kind == "member"
                else files.pop()
                if kind == "delete"
                else f"w{index}"
            )
            request = change(kind, n, project, item, f"{host}:{port}", token)
            began = time.perf_counter()
            stream.write(request)
            status = await answer(reader)
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - began)
            else:
                errors.append(f"{kind} {status}")
    finally:
        stream.close()
    return errors


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def main(config: dict[str, Any]) -> None:
    users = [f"{config['users']}{i}" for i in range(config["changes"])]
    files: list[str] = config.get("files", [])
    latencies: list[float] = []
    print(json.dumps({"phase": "ready"}), flush=True)
    print(json.dumps({"phase": "start"}), flush=True)
    began = time.perf_counter()
    results = await asyncio.gather(
        *(writer(i, config, users, files, latencies) for i in range(config["writers"]))
    )
    took = time.perf_counter() - began
    print(json.dumps({"phase": "end"}), flush=True)
    errors = [e for r in results for e in r]
    done = {
        "phase": "done",
        "changes": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "changes_per_s": round(len(latencies) / took, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    uvloop.run(main(json.loads(sys.argv[1])))
