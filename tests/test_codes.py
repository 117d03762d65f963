"""codes.py: the protocol's tables and the restart hint, as clients read them."""

from __future__ import annotations

import pytest

from tidings.codes import CLOSE_CODES, CloseCode, protocol_table, reconnect_within, restart_reason


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


def test_the_served_table_lists_every_close_code() -> None:
    table = protocol_table()
    assert set(table["close_codes"]) == {str(int(c)) for c in CloseCode}  # type: ignore[arg-type]
    assert all(code in CLOSE_CODES for code in CloseCode)
    assert table["close_codes"]["1013"]["reconnect"] is True  # type: ignore[index]
