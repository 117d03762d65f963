"""``codes.py``: the protocol table as clients read it from ``GET /api/protocol``, and
the restart hint."""

from __future__ import annotations

import orjson
import pytest

from tidings.codes import (
    CLOSE_CODES,
    ERROR_CODES,
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    protocol_table,
    reconnect_within,
    restart_reason,
)


def test_every_code_has_its_entry() -> None:
    assert set(CLOSE_CODES) == set(CloseCode)
    assert set(ERROR_CODES) == set(ErrorCode)


@pytest.mark.parametrize(
    ("code", "name", "reconnect"),
    [
        (1000, "normal", False),
        (1001, "going_away", True),
        (1009, "message_too_big", True),
        (1012, "service_restart", True),
        (1013, "try_again_later", True),
        (4008, "slow_consumer", True),
        (4401, "unauthorized", False),
        (4429, "rate_limited", True),
    ],
)
def test_close_codes_in_the_table(code: int, name: str, reconnect: bool) -> None:
    entry = protocol_table()["close_codes"][str(code)]  # type: ignore[index]
    assert entry["name"] == name
    assert entry["reconnect"] is reconnect
    assert entry["meaning"] == CLOSE_CODES[CloseCode(code)].meaning


def test_table_is_json_with_string_keys() -> None:
    table = protocol_table()
    assert orjson.loads(orjson.dumps(table)) == table
    assert table["protocol"] == PROTOCOL_VERSION
    assert table["error_codes"] == {str(code): text for code, text in ERROR_CODES.items()}
    assert set(table) == {"protocol", "close_codes", "error_codes"}


@pytest.mark.parametrize(
    ("reason", "seconds"),
    [
        (restart_reason(5), 5.0),
        (restart_reason(0.25), 0.25),
        (restart_reason(0), 0.0),
        ("service restart", None),
        ("", None),
        ("reconnect_within_ms=abc", None),
        ("reconnect_within_ms=99999999", None),  # absurd: ignored
        ("xreconnect_within_ms=5", None),
    ],
)
def test_reconnect_within_reads_the_restart_reason(reason: str, seconds: float | None) -> None:
    assert reconnect_within(reason) == seconds
