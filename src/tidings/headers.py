"""Security headers on every HTTP response: a pure ASGI middleware.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that a streamed body passes through
untouched and WebSocket connections do not see it at all.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What a page of tidings may load: its own scripts, styles, images and sockets, nothing
# inline and nothing from elsewhere, and it may not be framed. Pages that need more (the
# API docs) set their own Content-Security-Policy, which is then left as it is.
PAGE_POLICY = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class SecurityHeaders:
    """Adds ``X-Content-Type-Options: nosniff`` to every HTTP response and, to HTML
    responses, :data:`PAGE_POLICY` as Content-Security-Policy and
    ``Referrer-Policy: same-origin``; a header the response already has is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", PAGE_POLICY)
                    headers.setdefault("Referrer-Policy", "same-origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)
