"""``proxies.py``: the client's address and scheme, believed from trusted proxies only.

The pure functions table by table, then over a real socket: the login throttle counts by
the address tidings decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import TIMEOUT, ServerThread, create_user
from tidings.proxies import Network, forwarded_client, forwarded_scheme, parse_address

LOCAL = [ipaddress.ip_network("127.0.0.1")]
LOCAL_AND_LAN = [*LOCAL, ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "trusted", "expected"),
    [
        # No trusted proxies (the default): headers are ignored, whoever sends them.
        ("127.0.0.1", ["1.2.3.4"], [], [], "127.0.0.1"),
        ("203.0.113.5", ["1.2.3.4"], ["for=1.2.3.4"], LOCAL, "203.0.113.5"),
        # A trusted peer: the rightmost hop it did not add itself.
        ("127.0.0.1", ["1.2.3.4"], [], LOCAL, "1.2.3.4"),
        ("127.0.0.1", ["6.6.6.6, 1.2.3.4"], [], LOCAL, "1.2.3.4"),  # left part is the client's
        ("127.0.0.1", ["6.6.6.6", "1.2.3.4"], [], LOCAL, "1.2.3.4"),  # several header lines
        ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"], [], LOCAL_AND_LAN, "1.2.3.4"),
        ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], [], LOCAL_AND_LAN, "10.0.0.1"),  # all trusted
        ("127.0.0.1", [], [], LOCAL, "127.0.0.1"),  # a trusted peer that forwarded nothing
        ("127.0.0.1", ["1.2.3.4:5678"], [], LOCAL, "1.2.3.4"),
        ("127.0.0.1", ["[2001:db8::7]:443"], [], LOCAL, "2001:db8::7"),
        ("127.0.0.1", ["unknown"], [], LOCAL, "unknown"),
        ("127.0.0.1", [" , "], [], LOCAL, "127.0.0.1"),
        ("::ffff:127.0.0.1", ["1.2.3.4"], [], LOCAL, "1.2.3.4"),  # IPv4-mapped peer
        # Forwarded (RFC 7239) when X-Forwarded-For is absent.
        (
            "127.0.0.1",
            [],
            ['for=192.0.2.60;proto=https;by=203.0.113.43, for="[2001:db8::1]:4711"'],
            LOCAL,
            "2001:db8::1",
        ),
        ("127.0.0.1", [], ["for=6.6.6.6", "for=192.0.2.60"], LOCAL, "192.0.2.60"),
        ("127.0.0.1", [], ["proto=https"], LOCAL, "unknown"),
        ("127.0.0.1", ["1.2.3.4"], ["for=5.6.7.8"], LOCAL, "1.2.3.4"),  # XFF wins
        (None, ["1.2.3.4"], [], LOCAL, "unknown"),
        ("not-an-ip", [], [], LOCAL, "not-an-ip"),
    ],
)
def test_forwarded_client(
    peer: str | None, xff: list[str], forwarded: list[str], trusted: list[Network], expected: str
) -> None:
    assert forwarded_client(peer, xff, forwarded, trusted) == expected


def test_a_long_chain_is_cut() -> None:
    chain = ", ".join(["10.0.0.1"] * 10_000)
    assert forwarded_client("127.0.0.1", [chain], [], LOCAL_AND_LAN) == "10.0.0.1"


@pytest.mark.parametrize(
    ("peer", "scheme", "proto", "forwarded", "trusted", "expected"),
    [
        ("127.0.0.1", "http", "https", [], [], "http"),  # untrusted: the connection's own
        ("127.0.0.1", "http", "https", [], LOCAL, "https"),
        ("127.0.0.1", "http", "http, https", [], LOCAL, "https"),
        ("127.0.0.1", "http", "gopher", [], LOCAL, "http"),
        ("127.0.0.1", "http", None, ["for=1.2.3.4;proto=https"], LOCAL, "https"),
        ("127.0.0.1", "ws", None, [], LOCAL, "http"),
        ("127.0.0.1", "wss", None, [], [], "https"),
        (None, "http", "https", [], LOCAL, "http"),
    ],
)
def test_forwarded_scheme(
    peer: str | None,
    scheme: str,
    proto: str | None,
    forwarded: list[str],
    trusted: list[Network],
    expected: str,
) -> None:
    assert forwarded_scheme(peer, scheme, proto, forwarded, trusted) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1.2.3.4", "1.2.3.4"), ('"[::1]:80"', "::1"), ("::1", "::1"), ("_hidden", None)],
)
def test_parse_address(value: str, expected: str | None) -> None:
    parsed = parse_address(value)
    assert (str(parsed) if parsed else None) == expected


# -- over a real socket ------------------------------------------------------------------


async def _login(client: httpx.AsyncClient, username: str, password: str, xff: str) -> int:
    response = await client.post(
        "/api/auth/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": xff},
    )
    return response.status_code


async def test_forwarded_addresses_are_ignored_from_untrusted_peers(
    make_server: Callable[..., ServerThread],
) -> None:
    """A client that makes up X-Forwarded-For cannot pass for many addresses."""
    server = make_server(login_max_address_failures=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        for i in range(3):
            assert await _login(client, f"u{i}", "wrong", f"198.51.100.{i}") == 401
        assert await _login(client, "u9", "wrong", "198.51.100.99") == 429


async def test_the_rightmost_untrusted_hop_behind_a_trusted_proxy(
    make_server: Callable[..., ServerThread],
) -> None:
    """Behind a trusted proxy, the client is the address the proxy saw: what the client
    wrote to the left of it does not matter, and another address is another client."""
    server = make_server(trusted_proxies=LOCAL)
    alice = await create_user(server.settings, "alice")
    limit = server.settings.login_max_failures
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        for i in range(limit):
            assert await _login(client, "alice", "wrong", f"6.6.6.{i}, 203.0.113.7") == 401
        assert await _login(client, "alice", alice.password, "203.0.113.7") == 429
        assert await _login(client, "alice", alice.password, "9.9.9.9, 203.0.113.7") == 429
        # alice from elsewhere is not locked out by what 203.0.113.7 did.
        assert await _login(client, "alice", alice.password, "198.51.100.1") == 200


async def test_origin_check_believes_a_trusted_proxys_scheme(
    make_server: Callable[..., ServerThread],
) -> None:
    """TLS ends at the proxy: the browser's Origin is https://host while the proxy talks
    plain http to tidings. The trusted proxy's X-Forwarded-Proto reconciles the two."""
    plain = make_server()
    proxied = make_server(trusted_proxies=LOCAL)
    for server, expected in ((plain, 403), (proxied, 201)):
        user = await create_user(server.settings)
        https = {"Origin": f"https://127.0.0.1:{server.port}", "X-Forwarded-Proto": "https"}
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            login = await client.post(
                "/api/auth/login", json={"username": user.username, "password": user.password}
            )
            assert login.status_code == 200, login.text
            created = await client.post("/api/projects", json={"name": "x"}, headers=https)
            assert created.status_code == expected, created.text
