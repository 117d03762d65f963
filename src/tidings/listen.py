"""``tidings listen``: print a project's events live, from the command line.

It is the Python client (:class:`tidings.client.TidingsClient`) with a printer: it
reconnects and resumes by itself, so each event is printed once, in ``seq`` order, across
server restarts and dead connections. Events go to stdout, one a line; what happens to the
connection goes to stderr. With ``--json`` every message the client hands out about the
project or the connection is printed to stdout as its JSON object, one a line, for
scripts.
"""

from __future__ import annotations

import sys
from typing import TextIO

import orjson
import websockets

from tidings.client import Backoff, Closed, SubscriptionError, TidingsClient, Unauthorized
from tidings.schema import (
    ConnectionEstablished,
    ErrorMessage,
    FileDeleted,
    FileUploaded,
    ProcessCompleted,
    ProcessProgress,
    ProcessStarted,
    ProjectCreated,
    ProjectDeleted,
    ProjectUpdated,
    Received,
    Subscribed,
    Unsubscribed,
)


def describe(message: Received) -> str:
    """One line for an event: ``timestamp  #seq  type  what``."""
    seq = message.get("seq")
    head = f"{message.get('timestamp', '')}  {'#' + str(seq) if seq is not None else '-'}  "
    match message:
        case FileUploaded() | FileDeleted():
            f = message.file
            folder = f.path.rstrip("/")
            what = f"{folder}/{f.name} ({f.size} bytes, {f.asset_type})"
        case ProjectCreated() | ProjectUpdated() | ProjectDeleted():
            what = repr(message.data.name)
        case ProcessStarted() | ProcessCompleted():
            p = message.process
            what = f"{p.kind} {p.id} {p.status}" + (f": {p.error}" if p.error else "")
        case ProcessProgress():
            what = f"{message.process_id} {message.progress:.0%} {message.message}".rstrip()
        case _:
            rest = {k: v for k, v in message.raw.items() if k not in ("type", "timestamp")}
            what = orjson.dumps(rest).decode()
    return f"{head}{message.type}  {what}"


def notice(message: Received, project_id: str) -> str | None:
    """A line for stderr about the connection or the subscription, if the message is one."""
    match message:
        case ConnectionEstablished():
            return f"connected as {message.user.username}"
        case Subscribed(recovered=False):
            return (
                f"events of {project_id} were lost to retention; "
                f"carrying on from seq {message.seq} (refetch the project)"
            )
        case Subscribed(recovered=True):
            return f"resumed {project_id} (latest seq {message.seq})"
        case Subscribed():
            return f"following {project_id} (latest seq {message.seq})"
        case Unsubscribed():
            return f"no longer following {project_id}: {message.reason or 'unsubscribed'}"
        case ErrorMessage():
            return f"error {message.code}: {message.message}"
    return None


async def listen(
    url: str,
    token: str,
    project_id: str,
    since: int | None = None,
    *,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    backoff: Backoff | None = None,
) -> int:
    """Print ``project_id``'s events until the subscription ends; return the exit status.

    0 after ``project.deleted``; 1 when the token is refused, the project cannot be
    seen, access is revoked, or the server closes for good. Runs until cancelled
    otherwise (Ctrl-C).
    """
    client = TidingsClient(url, token=token, backoff=backoff)
    try:
        await client.connect()
    except Unauthorized:
        print("tidings: the server refused the token", file=err)
        return 1
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        print(f"tidings: cannot connect to {client.url}: {exc}", file=err)
        return 1
    try:
        await client.subscribe(project_id, since)
        async for message in client:
            if message.get("project_id", project_id) != project_id:
                continue  # another project's news for the project list
            if as_json:
                print(orjson.dumps(message.raw).decode(), file=out, flush=True)
            else:
                line = notice(message, project_id)
                if line is not None:
                    print(f"tidings: {line}", file=err, flush=True)
                else:
                    print(describe(message), file=out, flush=True)
            if isinstance(message, ProjectDeleted):
                return 0
            if isinstance(message, Unsubscribed) and message.reason is not None:
                return 1
    except SubscriptionError as exc:
        print(f"tidings: cannot follow {project_id}: {exc}", file=err)
        return 1
    except Unauthorized:
        print("tidings: the token was revoked", file=err)
        return 1
    except Closed as exc:
        print(f"tidings: {exc}", file=err)
        return 1
    finally:
        await client.close()
    return 0
