from __future__ import annotations

import orjson
import pytest

from tidings.codes import CloseCode
from tidings.messages import (
    RATE_LIMIT_STRIKES,
    ClientMessages,
    Close,
    Reply,
    Subscribe,
    SubscribeMany,
    Unsubscribe,
)


def session(**overrides: object) -> ClientMessages:
    options: dict[str, object] = {
        "max_message_bytes": 1024,
        "rate": 10.0,
        "burst": 5,
        "now": 0.0,
    }
    options.update(overrides)
    return ClientMessages(**options)  # type: ignore[arg-type]


def msg(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def error_code(action: object) -> str:
    assert isinstance(action, Reply), action
    assert action.message["type"] == "error"
    return str(action.message["code"])


def test_ping_echoes_id() -> None:
    action = session().receive(msg(type="ping", id="abc"), 0)
    assert action == Reply({"type": "pong", "id": "abc"})


def test_subscribe_and_unsubscribe() -> None:
    s = session()
    assert s.receive(msg(type="subscribe", project_id="p", id=1), 0) == Subscribe("p", None, 1)
    assert s.receive(msg(type="subscribe", project_id="p", since=4), 0) == Subscribe("p", 4, None)
    assert s.receive(msg(type="unsubscribe", project_id="p"), 0) == Unsubscribe("p", None)


def test_subscribe_to_several_projects_keeps_their_order() -> None:
    action = session().receive(
        msg(
            type="subscribe",
            id="r",
            projects=[
                {"project_id": "b", "since": 4, "snapshot": True},
                {"project_id": "a"},
                {"project_id": "b", "snapshot": False},
            ],
        ),
        0,
    )
    assert action == SubscribeMany(
        (Subscribe("b", 4, "r", True), Subscribe("a", None, "r"), Subscribe("b", None, "r"))
    )


def test_each_bad_entry_is_answered_in_its_place() -> None:
    action = session().receive(
        msg(
            type="subscribe",
            projects=[
                {"project_id": "a"},
                "b",
                {"project_id": "a/b"},
                {"project_id": "c", "since": -1},
                {"project_id": "d", "snapshot": "yes"},
                {"project_id": "e", "since": 2},
            ],
        ),
        0,
    )
    assert isinstance(action, SubscribeMany)
    first, *bad, last = action.actions
    assert first == Subscribe("a", None) and last == Subscribe("e", 2)
    assert [error_code(a) for a in bad] == ["bad_request"] * 4
    assert [a.message.get("project_id") for a in bad] == [None, None, "c", "d"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fields",
    [
        {"projects": []},
        {"projects": None},
        {"projects": {"project_id": "a"}},
        {"projects": [{"project_id": "a"}], "project_id": "a"},
        {"projects": [{"project_id": "a"}], "since": 3},
        {"projects": [{"project_id": "a"}], "snapshot": True},
    ],
)
def test_a_malformed_project_list_is_refused_whole(fields: dict[str, object]) -> None:
    assert error_code(session().receive(msg(type="subscribe", id=9, **fields), 0)) == "bad_request"


def test_a_project_list_is_bounded_by_the_subscription_limit() -> None:
    s = session(max_projects=3, max_message_bytes=65536)
    entries = [{"project_id": f"p{i}"} for i in range(4)]
    action = s.receive(msg(type="subscribe", projects=entries[:3]), 0)
    assert isinstance(action, SubscribeMany) and len(action.actions) == 3
    refused = s.receive(msg(type="subscribe", id=1, projects=entries), 0)
    assert error_code(refused) == "too_many_subscriptions"
    assert isinstance(refused, Reply) and refused.message["id"] == 1


@pytest.mark.parametrize(
    ("fields", "snapshot"),
    [
        ({}, False),
        ({"snapshot": None}, False),
        ({"snapshot": False}, False),
        ({"snapshot": True}, True),
        ({"snapshot": True, "since": 3}, True),
    ],
)
def test_subscribe_asks_for_a_snapshot(fields: dict[str, object], snapshot: bool) -> None:
    action = session().receive(msg(type="subscribe", project_id="p", **fields), 0)
    assert isinstance(action, Subscribe)
    assert action.snapshot is snapshot


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '"text"',
        msg(kind="ping"),
        msg(type="dance"),
        msg(type=5),
        msg(type="subscribe"),
        msg(type="subscribe", project_id=""),
        msg(type="subscribe", project_id=7),
        msg(type="subscribe", project_id="x" * 65),
        msg(type="subscribe", project_id="p", since=-1),
        msg(type="subscribe", project_id="p", since="3"),
        msg(type="subscribe", project_id="p", since=True),
        msg(type="subscribe", project_id="p", since=1.5),
        msg(type="subscribe", project_id="p", since=2**63),
        msg(type="subscribe", project_id="p", snapshot=1),
        msg(type="subscribe", project_id="p", snapshot="true"),
        msg(type="subscribe", project_id="p", snapshot={}),
        msg(type="subscribe", project_id="p\u0000"),
        msg(type="subscribe", project_id="\u202eab"),
        msg(type="subscribe", project_id="a b"),
        msg(type="unsubscribe", project_id="../x"),
        '{"type": "subscribe", "project_id": "\\ud800"}',
        "[" * 300 + "]" * 300,
        msg(type="subscribe", project_id="p", id=[[[]]]),
        msg(type="unsubscribe"),
        msg(type="ping", id=True),
        msg(type="ping", id="x" * 129),
        msg(type="ping", id={"a": 1}),
        b"\xff\xfe",
    ],
)
def test_bad_requests_get_an_error_and_keep_the_connection(raw: str | bytes) -> None:
    assert error_code(session().receive(raw, 0)) == "bad_request"


def test_error_echoes_a_valid_id() -> None:
    action = session().receive(msg(type="dance", id=9), 0)
    assert isinstance(action, Reply) and action.message["id"] == 9


def test_oversized_message_closes_with_1009() -> None:
    action = session(max_message_bytes=10).receive("x" * 11, 0)
    assert action == Close(CloseCode.MESSAGE_TOO_BIG, "message too big")


def test_size_is_counted_in_utf8_bytes() -> None:
    action = session(max_message_bytes=10).receive("é" * 6, 0)
    assert isinstance(action, Close)


def test_rate_limit_then_close() -> None:
    s = session(rate=1.0, burst=3)
    for _ in range(3):
        assert isinstance(s.receive(msg(type="ping"), 0), Reply)
    for _ in range(RATE_LIMIT_STRIKES):
        assert error_code(s.receive(msg(type="ping"), 0)) == "rate_limited"
    assert s.receive(msg(type="ping"), 0) == Close(CloseCode.RATE_LIMITED, "rate limit exceeded")


def test_rate_limit_refills_over_time() -> None:
    s = session(rate=2.0, burst=2)
    s.receive(msg(type="ping"), 0)
    s.receive(msg(type="ping"), 0)
    assert error_code(s.receive(msg(type="ping"), 0)) == "rate_limited"
    assert s.receive(msg(type="ping"), 0.5) == Reply({"type": "pong"})


def test_retry_after_is_never_zero() -> None:
    """Found by the protocol state machine (tests/test_protocol_states.py): a message a
    fraction of a millisecond too early was told `retry_after: 0.0`, which a client takes
    as "now" and is refused again. Rounded up to the next millisecond."""
    s = session(rate=1.0, burst=1)
    s.receive(msg(type="ping"), 0)
    refused = s.receive(msg(type="ping"), 0.9999)
    assert isinstance(refused, Reply)
    assert refused.message["retry_after"] == 0.001


def test_strikes_reset_after_a_good_message() -> None:
    s = session(rate=1.0, burst=1)
    s.receive(msg(type="ping"), 0)
    for _ in range(RATE_LIMIT_STRIKES):
        s.receive(msg(type="ping"), 0)
    assert isinstance(s.receive(msg(type="ping"), 1.0), Reply)
    for _ in range(RATE_LIMIT_STRIKES):
        assert error_code(s.receive(msg(type="ping"), 1.0)) == "rate_limited"
