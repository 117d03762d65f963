"""One line in the log for a failure an outage explains, a traceback for any other.

While the database or the broker is down or restarting, every attempt of a node's
background work (head sync, presence, credential checks, process leases) and of its
subscribes and replays fails alike: a traceback each buried the soaks' node logs under
thousands of identical ones, and the one traceback that mattered with them.
"""

from __future__ import annotations

import logging

from tidings.broker.base import unreachable
from tidings.db import unavailable


def outage(exc: BaseException) -> bool:
    """Whether the database or the broker being out of reach explains ``exc``."""
    return unavailable(exc) or unreachable(exc)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s text: what a one-line log entry says of it."""
    return next(iter(str(exc).splitlines()), "")


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """Log that ``message % args`` failed with ``exc``: a one-line warning naming the
    error (the first line of its text) if an outage explains it, else an error with its
    traceback."""
    if outage(exc):
        logger.warning("%s (%s: %s)", message % args, type(exc).__name__, first_line(exc))
    else:
        logger.error(message, *args, exc_info=exc)
