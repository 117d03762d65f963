"""The dashboard route and static files (the browser tests drive them in Chromium)."""

from __future__ import annotations

import httpx

from tests.conftest import ServerThread, on_stacks
from tidings.api.dashboard import STATIC_DIR


@on_stacks("sqlite-memory")  # static files: no storage or broker involved
async def test_dashboard_is_served(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/static/dashboard.js" in page.text
        script = await http.get("/static/tidings.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert (await http.get("/static/nope.js")).status_code == 404
        types = await http.get("/static/tidings.d.ts")
        assert types.status_code == 200
        assert types.headers["content-type"] == "application/typescript; charset=utf-8"
        assert types.text == (STATIC_DIR / "tidings.d.ts").read_text()
