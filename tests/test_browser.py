"""The dashboard and tidings.js in real headless Chromium (Debian's, driven by Playwright).

Set ``TIDINGS_SCREENSHOT=docs/dashboard.png`` to save the README screenshot on the way.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from tests.conftest import IN_CI, TIMEOUT, ServerThread, TestUser, api, create_project, upload

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = TIMEOUT * 1000
# A restart outage lets the page's back-off grow to a few seconds: wait longer for that.
RECONNECT_MS = 4 * WAIT_MS


def _require(ok: bool, why: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true requires it)")
    pytest.skip(why)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _require(
        shutil.which(CHROMIUM) is not None,
        f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)",
    )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _require(False, "playwright is not installed (pip install -r requirements-dev.lock)")
        raise
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_dashboard(browser: Any, server: ServerThread, user: TestUser) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(server.url + "/")
    await page.fill("#login input[name=username]", user.username)
    await page.fill("#login input[name=password]", user.password)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#status[data-state=open]", timeout=WAIT_MS)
    return page


async def select(page: Any, project_id: str) -> None:
    await page.click(f"#projects li[data-id='{project_id}']", timeout=WAIT_MS)
    await page.wait_for_selector("#project:not([hidden])", timeout=WAIT_MS)


async def wait_file(page: Any, name: str, timeout: float = WAIT_MS) -> None:
    await page.wait_for_selector(f"#files tr[data-name='{name}']", timeout=timeout)


async def test_two_members_see_changes_live_across_a_restart(
    browser: Any, server: ServerThread, alice: TestUser, bob: TestUser, alice_api
) -> None:
    project = await create_project(alice_api, "Launch campaign")
    pid = project["id"]
    added = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    assert added.status_code == 201
    await create_project(alice_api, "Brand refresh")
    await upload(alice_api, pid, "brief.md", b"# Brief\n" * 40, content_type="text/markdown")

    alice_page = await open_dashboard(browser, server, alice)
    bob_page = await open_dashboard(browser, server, bob)
    for page in (alice_page, bob_page):
        await select(page, pid)
        await wait_file(page, "brief.md")

    # Uploaded over REST by alice: both pages show it without a reload.
    assert (await upload(alice_api, pid, "poster.png", PNG, content_type="image/png")).is_success
    for page in (alice_page, bob_page):
        await wait_file(page, "poster.png")
    # And a new project shows up in bob's list once he is made a member.
    other = await create_project(alice_api, "Q3 report")
    await alice_api.post(f"/api/projects/{other['id']}/members", json={"username": "bob"})
    await bob_page.wait_for_selector(f"#projects li[data-id='{other['id']}']", timeout=WAIT_MS)

    # The server restarts; meanwhile another node (same database) takes an upload.
    server.stop()
    await bob_page.wait_for_selector("#status:not([data-state=open])", timeout=WAIT_MS)
    node = ServerThread(server.settings)
    node.start()
    try:
        async with api(node, alice) as http:
            assert (await upload(http, pid, "during-outage.txt", b"missed?")).is_success
    finally:
        node.stop()
    server.start()

    for page in (alice_page, bob_page):
        await page.wait_for_selector("#status[data-state=open]", timeout=RECONNECT_MS)
        await wait_file(page, "during-outage.txt")
    # Each file once: the resumed replay and the live stream did not double anything.
    names = await bob_page.eval_on_selector_all(
        "#files tr[data-name]", "rs => rs.map(r => r.dataset.name)"
    )
    assert sorted(names) == ["brief.md", "during-outage.txt", "poster.png"]
    assert await bob_page.get_attribute("#status", "data-seq") == "5"

    # Removal works live too.
    file_id = await alice_page.get_attribute("#files tr[data-name='brief.md']", "data-id")
    assert (await alice_api.delete(f"/api/projects/{pid}/files/{file_id}")).status_code == 204
    await bob_page.wait_for_selector("#files tr[data-name='brief.md']", state="detached")

    screenshot = os.environ.get("TIDINGS_SCREENSHOT")
    if screenshot:
        await alice_page.wait_for_timeout(1500)  # let the arrival highlights fade
        await alice_page.screenshot(path=screenshot)
    assert alice_page.errors == [] and bob_page.errors == []


async def test_dashboard_logs_in_and_out(
    browser: Any, server: ServerThread, alice: TestUser
) -> None:
    page = await open_dashboard(browser, server, alice)
    assert await page.text_content("#username") == "alice"
    await page.click("#logout")
    await page.wait_for_selector("#login-view:not([hidden])", timeout=WAIT_MS)
    await page.fill("#login input[name=username]", "alice")
    await page.fill("#login input[name=password]", "wrong")
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#login-error:has-text('invalid')", timeout=WAIT_MS)


async def test_browser_client_core_in_chromium(browser: Any, server: ServerThread) -> None:
    """tidings.js's pure parts, run by the browser itself against the served table."""
    page = await browser.new_page()
    await page.goto(server.url + "/static/index.html")
    result = await page.evaluate(
        """async () => {
            const m = await import("/static/tidings.js");
            const table = await (await fetch("/api/protocol")).json();
            const s = new m.SeqState();
            const out = [];
            s.want("p");
            out.push(s.receive({type: "subscribed", project_id: "p", seq: 3}));
            out.push(s.receive({type: "file.uploaded", project_id: "p", seq: 3}));
            out.push(s.receive({type: "file.uploaded", project_id: "p", seq: 4}));
            out.push(s.receive({type: "system.heartbeat"}));
            const b = new m.Backoff({base: 100, cap: 400, random: () => 1});
            return {
                out,
                resub: s.resubscribe(),
                delays: [b.next(), b.next(), b.next(), b.next()],
                reconnect: [4401, 1000, 1012, 4008, 1006].map(c => m.shouldReconnect(table, c)),
            };
        }"""
    )
    assert result == {
        "out": [True, False, True, False],
        "resub": [{"type": "subscribe", "project_id": "p", "since": 4}],
        "delays": [100, 200, 400, 400],
        "reconnect": [False, False, True, True, True],
    }


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (47, 111, 222)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()
