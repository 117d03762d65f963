"""Who is at the other end: the client's address and scheme, behind trusted proxies only.

tidings decides this itself from the ASGI ``client`` and the forwarding headers (uvicorn's
own proxy handling is off: it would believe any local process). ``X-Forwarded-For`` (or,
when it is absent, ``Forwarded``) is believed only when the peer is one of
``TIDINGS_TRUSTED_PROXIES``, and then only up to the rightmost hop that is not itself a
trusted proxy: everything left of that hop was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from starlette.requests import HTTPConnection

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

MAX_HOPS = 32  # a longer chain is not a real proxy path; do not parse megabytes of it


def parse_address(value: str) -> Address | None:
    """An IP from a forwarding hop: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"::1"``."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # IPv4 with a port; a bare IPv6 has several colons
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def _forwarded_for(values: Sequence[str]) -> list[str]:
    """The ``for=`` of every element of ``Forwarded`` headers (RFC 7239), left to right."""
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            found = "unknown"  # an element without for= is a hop that did not say
            for pair in element.split(";"):
                name, _, token = pair.partition("=")
                if name.strip().lower() == "for":
                    found = token.strip().strip('"')
            hops.append(found)
    return hops


def forwarded_client(
    peer: str | None,
    x_forwarded_for: Sequence[str],
    forwarded: Sequence[str],
    trusted: Sequence[Network],
) -> str:
    """The client's address: the rightmost hop not in ``trusted``, starting from the peer.

    ``peer`` is the ASGI client host. The headers are read only if the peer is trusted;
    ``X-Forwarded-For`` wins over ``Forwarded`` when both are present. A hop that is not
    an IP address (``unknown``, an obfuscated name) is returned as written.
    """
    if peer is None:
        return "unknown"
    peer_address = parse_address(peer)
    if not _trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else peer
    if x_forwarded_for:
        hops = [hop.strip() for value in x_forwarded_for for hop in value.split(",")]
    else:
        hops = _forwarded_for(forwarded)
    hops = [hop for hop in hops if hop][-MAX_HOPS:]
    client = str(peer_address)
    for hop in reversed(hops):
        address = parse_address(hop)
        client = str(address) if address is not None else hop[:64]
        if not _trusted(address, trusted):
            break
    return client


def forwarded_scheme(
    peer: str | None,
    scheme: str,
    x_forwarded_proto: str | None,
    forwarded: Sequence[str],
    trusted: Sequence[Network],
) -> str:
    """``http`` or ``https`` as the client used it: the proxy's word if the peer is trusted
    (TLS ends at the proxy), else the connection's own scheme (``ws`` counts as ``http``)."""
    own = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    if peer is None or not _trusted(parse_address(peer), trusted):
        return own
    proto = None
    if x_forwarded_proto:
        proto = x_forwarded_proto.split(",")[-1].strip().lower()
    else:
        for value in forwarded:
            for pair in value.split(",")[-1].split(";"):
                name, _, token = pair.partition("=")
                if name.strip().lower() == "proto":
                    proto = token.strip().strip('"').lower()
    return proto if proto in ("http", "https") else own


def _trusted_proxies(conn: HTTPConnection) -> Sequence[Network]:
    proxies: Sequence[Network] = conn.app.state.services.settings.trusted_proxies
    return proxies


def client_address(conn: HTTPConnection) -> str:
    """The address of the client behind a request or WebSocket (see the module doc).

    What login throttling counts by and what logs show.
    """
    return forwarded_client(
        conn.client.host if conn.client else None,
        conn.headers.getlist("x-forwarded-for"),
        conn.headers.getlist("forwarded"),
        _trusted_proxies(conn),
    )


def own_origin(conn: HTTPConnection) -> str | None:
    """``scheme://host`` of this server as the client addressed it (None without Host)."""
    host = conn.headers.get("host")
    if not host:
        return None
    scheme = forwarded_scheme(
        conn.client.host if conn.client else None,
        conn.url.scheme,
        conn.headers.get("x-forwarded-proto"),
        conn.headers.getlist("forwarded"),
        _trusted_proxies(conn),
    )
    return f"{scheme}://{host}".lower()
