"""An outage's failures are one line each in the log; any other failure its traceback."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from tidings.outages import log_failure

logger = logging.getLogger("tidings.test")


class RedisConnectionError(Exception):
    """redis-py's ConnectionError derives from neither built-in: it is known by name."""


RedisConnectionError.__name__ = "ConnectionError"


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OperationalError("SELECT 1", {}, Exception("database is locked")),
        RedisConnectionError("Error 111 connecting to 127.0.0.1:6379."),
    ],
    ids=["socket", "database", "broker"],
)
def test_an_outage_is_one_warning_line(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "tidings.test"):
        log_failure(logger, exc, "head sync of %d projects failed", 3)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("head sync of 3 projects failed (")
    assert "\n" not in record.getMessage()


def test_any_other_failure_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        with caplog.at_level(logging.WARNING, "tidings.test"):
            log_failure(logger, exc, "head sync of %d projects failed", 3)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "head sync of 3 projects failed"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
