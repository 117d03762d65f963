"""The dashboard and tidings.js in real headless Chromium (Debian's, driven by Playwright).

Set ``TIDINGS_SCREENSHOT=docs/dashboard.png`` to save the README screenshot on the way
(taken by ``test_processes_panel_shows_results_reports_and_cancels``, a process mid-progress).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from tests.conftest import (
    IN_CI,
    MS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    create_project,
    create_user,
    eventually,
    upload,
)

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
MiB = 1024 * 1024


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


class SocketRoutes:
    """Every WebSocket of a page, routed by Playwright to the real server and forwarded
    both ways, until :meth:`silence`: from then on what the server sends on the sockets
    open at that moment is dropped (a connection that looks open and carries nothing).
    Sockets the page opens later are forwarded normally."""

    def __init__(self) -> None:
        self.silenced: list[bool] = []
        self.opened_at: list[float] = []  # time.monotonic() of each socket
        self.heard_at = 0.0  # of the newest message forwarded to the page
        self.silence_after_heartbeat = False

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()
        index = len(self.silenced)
        self.silenced.append(False)
        self.opened_at.append(time.monotonic())

        def forward(message: str | bytes) -> None:
            if self.silenced[index]:
                return
            ws.send(message)
            self.heard_at = time.monotonic()
            if self.silence_after_heartbeat and b"system.heartbeat" in _bytes(message):
                self.silence_after_heartbeat = False
                self.silence()

        server.on_message(forward)

    @property
    def count(self) -> int:
        return len(self.silenced)

    def silence(self) -> None:
        self.silenced = [True] * len(self.silenced)


def _bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


# Installed in a page: every text the connection indicator shows, in order.
RECORD_STATUS = """() => {
    window.statusSeen = [];
    const box = document.querySelector("#status-text");
    new MutationObserver(() => window.statusSeen.push(box.textContent))
        .observe(box, { childList: true, characterData: true, subtree: true });
}"""


async def open_dashboard(
    browser: Any, server: ServerThread, user: TestUser, routes: SocketRoutes | None = None
) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()
    if routes is not None:
        await page.route_web_socket("**/ws", routes.route)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The page runs under the server's Content-Security-Policy: a violation is an error.
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
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
    await server.stop_async()
    await bob_page.wait_for_selector("#status:not([data-state=open])", timeout=WAIT_MS)
    node = ServerThread(server.settings)
    node.start()
    try:
        async with api(node, alice) as http:
            assert (await upload(http, pid, "during-outage.txt", b"missed?")).is_success
    finally:
        await node.stop_async()
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
    assert alice_page.errors == [] and bob_page.errors == []


async def share(http: Any, name: str, *members: str) -> str:
    project = await create_project(http, name)
    for username in members:
        added = await http.post(
            f"/api/projects/{project['id']}/members", json={"username": username}
        )
        assert added.status_code == 201, added.text
    return str(project["id"])


async def start_from(page: Any, kind: str, compression: str = "stored") -> None:
    await page.select_option("#start-process select[name=kind]", kind)
    if kind == "export":
        await page.select_option("#start-process select[name=compression]", compression)
    await page.click("#start-process button[type=submit]")


# Installed in a page: every value the progress bar of the first process of `kind` shows,
# recorded as the DOM changes (a MutationObserver sees each one; polling could miss some).
# The arrival highlights have faded (only endless animations, a running bar's sheen, remain).
SETTLED = """() => document.getAnimations().every(
    a => a.playState === "finished" || a.effect.getTiming().iterations === Infinity
)"""

RECORD_PROGRESS = """kind => {
    window.progressSeen = [];
    const record = () => {
        const bar = document.querySelector(`#processes li[data-kind="${kind}"] [role=progressbar]`);
        const value = bar ? Number(bar.getAttribute("aria-valuenow")) : null;
        const seen = window.progressSeen;
        if (value !== null && seen[seen.length - 1] !== value) seen.push(value);
    };
    new MutationObserver(record).observe(document.querySelector("#processes"), {
        subtree: true, childList: true, attributes: true, attributeFilter: ["aria-valuenow"],
    });
}"""


async def test_an_export_started_in_one_page_runs_live_in_another(
    browser: Any, make_server: Any
) -> None:
    # Progress events every 20 ms, and a deflated zip of 6 MiB of random bytes: the export
    # takes long enough for several of them to reach the other page.
    server = make_server(progress_interval=0.02)
    alice = await create_user(server.settings, "alice")
    bob = await create_user(server.settings, "bob")
    files = {"renders/hero.exr": 4 * MiB, "renders/alt.exr": 2 * MiB, "brief.md": 2000}
    async with api(server, alice) as http:
        pid = await share(http, "Launch campaign", "bob")
        for location, size in files.items():
            folder, _, name = location.rpartition("/")
            sent = await upload(http, pid, name, os.urandom(size), path="/" + folder)
            assert sent.status_code == 201, sent.text

        alice_page = await open_dashboard(browser, server, alice)
        bob_page = await open_dashboard(browser, server, bob)
        for page in (alice_page, bob_page):
            await select(page, pid)
            await wait_file(page, "hero.exr")
            await page.wait_for_selector("#processes li.empty", timeout=WAIT_MS)
        await bob_page.evaluate(RECORD_PROGRESS, "export")

        await start_from(alice_page, "export", compression="deflated")
        row = "#processes li[data-kind=export]"
        await alice_page.wait_for_selector(row, timeout=WAIT_MS)
        await bob_page.wait_for_selector(row, timeout=WAIT_MS)
        # Bob's bar moves while it runs (a value strictly between 0 and 1) …
        await bob_page.wait_for_function(
            "() => window.progressSeen.some(v => v > 0 && v < 1)", timeout=WAIT_MS
        )
        # … and the export ends succeeded, full, with its result, on both pages.
        for page in (bob_page, alice_page):
            await page.wait_for_selector(f"{row}[data-status=succeeded]", timeout=WAIT_MS)
            assert await page.get_attribute(f"{row} [role=progressbar]", "aria-valuenow") == "1"
            assert await page.text_content(f"{row} .tag") == "succeeded"
            assert (await page.text_content(f"{row} .message") or "").startswith("3 files")
        seen = await bob_page.evaluate("window.progressSeen")
        assert seen == sorted(seen) and seen[-1] == 1, seen  # it only ever rose
        assert alice_page.errors == [] and bob_page.errors == []
        assert await bob_page.locator("#processes li.process").count() == 1

        # Both pages offer the zip; the link serves it.
        href = await bob_page.get_attribute(f"{row} a.download", "href")
        assert href == await alice_page.get_attribute(f"{row} a.download", "href")
        response = await http.get(href)
        assert response.status_code == 200
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert sorted(archive.namelist()) == sorted(files)


async def test_processes_panel_shows_results_reports_and_cancels(
    browser: Any, server: ServerThread, alice: TestUser, bob: TestUser, alice_api: Any
) -> None:
    pid = await share(alice_api, "Launch campaign", "bob")
    await share(alice_api, "Brand refresh")
    await upload(alice_api, pid, "brief.md", b"# Brief\n" * 400, content_type="text/markdown")
    await upload(alice_api, pid, "poster.png", PNG, path="/art", content_type="image/png")

    alice_page = await open_dashboard(browser, server, alice)
    bob_page = await open_dashboard(browser, server, bob)
    for page in (alice_page, bob_page):
        await select(page, pid)
        await wait_file(page, "poster.png")
    await upload(alice_api, pid, "storyboard.pdf", os.urandom(90_000), "/art", "application/pdf")
    await upload(alice_api, pid, "teaser.mp4", os.urandom(300_000), "/video", "video/mp4")
    for page in (alice_page, bob_page):
        await wait_file(page, "teaser.mp4")

    # Started by bob; alice's page shows how it ended and what it found.
    await start_from(bob_page, "verify")
    verify = "#processes li[data-kind=verify][data-status=succeeded]"
    await alice_page.wait_for_selector(verify, timeout=WAIT_MS)
    assert await alice_page.text_content(f"{verify} .message") == "4 files checked · all intact"
    await start_from(alice_page, "export")
    export = "#processes li[data-kind=export][data-status=succeeded]"
    await bob_page.wait_for_selector(f"{export} a.download", timeout=WAIT_MS)

    # An external worker reports progress over REST: both bars follow it.
    created = await alice_api.post(
        f"/api/projects/{pid}/processes",
        json={"kind": "external", "params": {"label": "transcode"}},
    )
    assert created.status_code == 202, created.text
    row = f"#processes li[data-id='{created.json()['id']}']"
    reported = await alice_api.post(
        f"/api/projects/{pid}/processes/{created.json()['id']}/progress",
        json={"progress": 0.42, "message": "Transcoding teaser.mp4 · pass 1 of 2"},
    )
    assert reported.status_code == 204
    for page in (alice_page, bob_page):
        await page.wait_for_selector(f"{row}[data-status=running] [aria-valuenow='0.42']")
        assert await page.text_content(f"{row} .name") == "transcode"
        assert await page.text_content(f"{row} .message") == "Transcoding teaser.mp4 · pass 1 of 2"
        assert await page.text_content(f"{row} .pct") == "42%"

    screenshot = os.environ.get("TIDINGS_SCREENSHOT")
    if screenshot:
        await alice_page.wait_for_function(SETTLED, timeout=WAIT_MS)
        await alice_page.screenshot(path=screenshot)

    # Bob cancels it: both pages show it cancelled where it stopped, with no cancel left.
    await bob_page.click(f"{row} button.cancel")
    for page in (bob_page, alice_page):
        await page.wait_for_selector(f"{row}[data-status=cancelled]", timeout=WAIT_MS)
        assert await page.text_content(f"{row} .message") == "Cancelled at 42%"
        assert await page.locator(f"{row} button.cancel").count() == 0
    # Finished processes offer no cancel; only the export offers a download.
    assert await bob_page.locator("#processes button.cancel").count() == 0
    assert await bob_page.locator("#processes a.download").count() == 1
    assert await bob_page.locator("#processes li.process").count() == 3
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


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock-tag"), ("/redoc", "h1")])
async def test_api_docs_need_no_third_party_host(
    browser: Any, server: ServerThread, path: str, rendered: str
) -> None:
    page = await browser.new_page()
    foreign: list[str] = []
    problems: list[str] = []

    async def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server.url + "/"):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_this_server)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    response = await page.goto(server.url + path)
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    await page.wait_for_selector(rendered, timeout=WAIT_MS)
    headings = await page.locator(rendered).all_text_contents()
    assert any("projects" in h for h in headings) or any("tidings" in h for h in headings)
    await page.get_by_text("/api/projects/{project_id}/files").first.wait_for(timeout=WAIT_MS)
    assert foreign == []
    # ReDoc's footer links a logo on its vendor's host; the policy refuses it.
    assert [p for p in problems if "cdn.redoc.ly" not in p] == [], problems


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
            out.push(s.receive({type: "presence.joined", project_id: "p", user: {id: "u"}}));
            out.push(s.receive({type: "presence.left", project_id: "p", user: {id: "u"}}));
            out.push(s.receive({type: "system.heartbeat"}));
            const b = new m.Backoff({base: 100, cap: 400, random: () => 1});
            const spreads = [b.spread(250), b.spread(5000)];
            const within = ["service restart; reconnect_within_ms=2500", "bye", null]
                .map((r) => m.reconnectWithin(r));
            const v = new m.SeqState();
            const views = [v.want("q", undefined, true)];
            v.receive({type: "subscribed", project_id: "q", seq: 6, snapshot: {}});
            views.push([v.seen("q", 6), v.seen("q", 7)]);
            v.receive({type: "file.uploaded", project_id: "q", seq: 7});
            views.push(v.resubscribe(), v.want("q", null, true), v.want("q", 2, false));
            return {
                views,
                out,
                resub: s.resubscribe(),
                delays: [b.next(), b.next(), b.next(), b.next()],
                spreads,
                within,
                reconnect: [4401, 1000, 1012, 4008, 1006].map(c => m.shouldReconnect(table, c)),
            };
        }"""
    )
    assert result == {
        "views": [
            {"type": "subscribe", "project_id": "q", "snapshot": True},
            [True, False],
            {"type": "subscribe", "projects": [{"project_id": "q", "since": 7, "snapshot": True}]},
            {"type": "subscribe", "project_id": "q", "snapshot": True},
            {"type": "subscribe", "project_id": "q", "since": 2},
        ],
        "out": [True, False, True, True, True, False],
        "resub": {"type": "subscribe", "projects": [{"project_id": "p", "since": 4}]},
        "delays": [100, 200, 400, 400],
        "spreads": [250, 400],
        "within": [2500, None, None],
        "reconnect": [False, False, True, True, True],
    }


async def test_after_a_restart_the_page_waits_within_the_suggested_spread(
    browser: Any, make_server: Any
) -> None:
    """The server stops with 1012 and `reconnect_within_ms=1500`: tidings.js's first
    reconnect waits a random part of 1.5 s (here all of it), then it resumes."""
    server = make_server(ws_reconnect_spread=1.5)
    alice = await create_user(server.settings, "alice")
    page = await open_dashboard(browser, server, alice)
    await page.evaluate(
        """async () => {
            const m = await import("/static/tidings.js");
            window.statuses = [];
            const client = new m.TidingsClient({backoff: new m.Backoff({random: () => 1})});
            client.addEventListener("status", (e) => window.statuses.push(e.detail));
            await client.connect();
        }"""
    )
    opened = "() => window.statuses.filter((s) => s.state === 'open').length"
    await page.wait_for_function(f"{opened} === 1", timeout=WAIT_MS)
    await server.stop_async()
    await page.wait_for_function(
        "window.statuses.some((s) => s.state === 'reconnecting')", timeout=WAIT_MS
    )
    first = await page.evaluate("window.statuses.find((s) => s.state === 'reconnecting')")
    assert (first["code"], first["reason"], first["delay"]) == (1012, "closed", 1500)
    server.start()
    await page.wait_for_function(f"{opened} === 2", timeout=RECONNECT_MS)
    assert page.errors == []


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (47, 111, 222)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


async def test_a_silent_socket_is_given_up_and_the_page_resumes(
    browser: Any, make_server: Any
) -> None:
    """The socket stays open but the server's messages stop reaching the page: tidings.js
    gives it up after twice the heartbeat interval, reconnects within three, and a file
    uploaded meanwhile appears."""
    interval = 1500 * MS
    server = make_server(heartbeat_interval=interval)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http, "Launch"))["id"]
        await upload(http, pid, "before.txt")
        routes = SocketRoutes()
        page = await open_dashboard(browser, server, alice, routes)
        await select(page, pid)
        await wait_file(page, "before.txt")
        await page.evaluate(RECORD_STATUS)

        routes.silence()
        silenced_at = time.monotonic()
        assert (await upload(http, pid, "meanwhile.txt")).status_code == 201
        await eventually(lambda: routes.count == 2)
        assert routes.opened_at[1] - silenced_at < 3 * interval
        await wait_file(page, "meanwhile.txt")
        await page.wait_for_selector("#status[data-state=open]", timeout=WAIT_MS)
        assert any("no heartbeat" in text for text in await page.evaluate("window.statusSeen"))
        assert page.errors == []


async def test_the_page_reconnects_at_once_when_it_comes_back_online(
    browser: Any, server: ServerThread, alice: TestUser, alice_api: Any
) -> None:
    """With the default 30 s heartbeat, only the `online` event can explain a reconnect
    within the test's time limit."""
    pid = (await create_project(alice_api, "Launch"))["id"]
    routes = SocketRoutes()
    page = await open_dashboard(browser, server, alice, routes)
    await select(page, pid)
    await page.evaluate(RECORD_STATUS)
    routes.silence()
    assert (await upload(alice_api, pid, "while-offline.txt")).status_code == 201
    await page.context.set_offline(True)
    await page.context.set_offline(False)
    await wait_file(page, "while-offline.txt")
    assert routes.count == 2
    assert any("back online" in text for text in await page.evaluate("window.statusSeen"))
    assert page.errors == []


HIDE = """hidden => {
    Object.defineProperty(document, "visibilityState", {
        configurable: true, get: () => (hidden ? "hidden" : "visible"),
    });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_a_page_shown_again_after_a_silence_reconnects_at_once(
    browser: Any, make_server: Any
) -> None:
    """A hidden page whose socket fell silent reconnects as soon as it is shown, once the
    silence is longer than the heartbeat interval, before the silence timer would."""
    interval = 2000 * MS
    server = make_server(heartbeat_interval=interval)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http, "Launch"))["id"]
        routes = SocketRoutes()
        page = await open_dashboard(browser, server, alice, routes)
        await select(page, pid)
        await page.evaluate(RECORD_STATUS)
        await page.evaluate(HIDE, True)
        # Silence right after a heartbeat: the page heard from the server just then.
        routes.silence_after_heartbeat = True
        await eventually(lambda: routes.silenced[0])
        last_heard = routes.heard_at
        assert (await upload(http, pid, "while-hidden.txt")).status_code == 201
        # Shown again only after the silence has lasted longer than the interval (a wait
        # for time itself to pass), and well before it lasts two.
        await page.evaluate(HIDE, True)  # still hidden: nothing happens
        await asyncio.sleep(max(0.0, last_heard + 1.3 * interval - time.monotonic()))
        assert routes.count == 1
        await page.evaluate(HIDE, False)
        await wait_file(page, "while-hidden.txt")
        assert routes.count == 2
        assert routes.opened_at[1] - last_heard < 2 * interval
        seen = await page.evaluate("window.statusSeen")
        assert any("page shown again" in text for text in seen), seen
        assert page.errors == []


def project_reads(urls: list[str], pid: str) -> list[str]:
    """The requests that read a project's own state (its project, files or processes)."""
    base = f"/api/projects/{pid}"
    return [u for u in urls if u.split("?")[0].endswith(base) or f"{base}/" in u]


async def test_dashboard_builds_each_project_view_from_its_snapshot(
    browser: Any, make_server: Any
) -> None:
    """Opening a project reads nothing over REST: its snapshot builds the view. After an
    outage longer than the event history, the resume brings a new snapshot that replaces
    the view (a file deleted meanwhile disappears); only a project with more files than a
    snapshot holds pages the rest over REST."""
    server = make_server(event_history=2, snapshot_max_files=3)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = await share(http, "Launch campaign")
        brief = await upload(http, pid, "brief.md", b"# Brief\n", content_type="text/markdown")
        started = await http.post(f"/api/projects/{pid}/processes", json={"kind": "external"})
        assert started.status_code == 202
        big = await share(http, "Archive")
        for name in ("e.txt", "d.txt", "c.txt", "b.txt", "a.txt"):
            await upload(http, big, name)

        page = await open_dashboard(browser, server, alice)
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url.removeprefix(server.url)))
        await select(page, pid)
        await wait_file(page, "brief.md")
        await page.wait_for_selector("#processes li[data-kind=external][data-status=running]")
        assert project_reads(urls, pid) == []

        # An outage; meanwhile more happens than the log keeps.
        await server.stop_async()
        await page.wait_for_selector("#status:not([data-state=open])", timeout=WAIT_MS)
        node = ServerThread(server.settings)
        node.start()
        try:
            async with api(node, alice) as other:
                gone = await other.delete(f"/api/projects/{pid}/files/{brief.json()['id']}")
                assert gone.status_code == 204
                for name in ("one.txt", "two.txt"):
                    assert (await upload(other, pid, name)).status_code == 201
                await other.patch(f"/api/projects/{pid}", json={"name": "Launch v2"})
        finally:
            await node.stop_async()
        server.start()
        await page.wait_for_selector("#status[data-state=open]", timeout=RECONNECT_MS)
        await page.wait_for_selector("#files tr[data-name='brief.md']", state="detached")
        await wait_file(page, "two.txt")
        names = await page.eval_on_selector_all(
            "#files tr[data-name]", "rs => rs.map(r => r.dataset.name)"
        )
        assert names == ["one.txt", "two.txt"]
        assert await page.text_content("#project-name") == "Launch v2"
        assert await page.get_attribute("#status", "data-seq") == "7"
        assert project_reads(urls, pid) == []
        # Live again from there.
        await upload(http, pid, "three.txt")
        await wait_file(page, "three.txt")

        # More files than a snapshot holds: the rest come page by page over REST.
        await select(page, big)
        await wait_file(page, "e.txt")
        names = await page.eval_on_selector_all(
            "#files tr[data-name]", "rs => rs.map(r => r.dataset.name)"
        )
        assert names == ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]
        assert project_reads(urls, big) == [f"/api/projects/{big}/files?limit=1000&offset=3"]
        assert page.errors == []


async def test_seen_resolves_once_the_event_is_delivered_in_chromium(
    browser: Any, server: ServerThread, alice: TestUser, alice_api: Any
) -> None:
    """Read-your-writes in the browser: a page uploads, reads Tidings-Seq from the answer,
    and client.seen(project, seq) resolves once that event has been dispatched."""
    pid = await share(alice_api, "Launch campaign")
    other = await share(alice_api, "Brand refresh")
    page = await open_dashboard(browser, server, alice)  # logged in: the cookie is set
    result = await page.evaluate(
        """async ([pid, other]) => {
            const { TidingsClient } = await import("/static/tidings.js");
            const client = new TidingsClient();
            const delivered = [];
            const snapshots = [];
            client.addEventListener("message", (e) => {
                if (e.detail.project_id === pid && e.detail.seq) delivered.push(e.detail.seq);
            });
            client.addEventListener("snapshot", (e) => snapshots.push(e.detail));
            await client.connect();
            client.subscribe(pid, { snapshot: true });
            await new Promise((ok) => client.addEventListener("snapshot", ok, { once: true }));
            const form = new FormData();
            form.append("file", new Blob(["mine"], { type: "text/plain" }), "mine.txt");
            const url = `/api/projects/${pid}/files`;
            const answer = await fetch(url, { method: "POST", body: form });
            const seq = Number(answer.headers.get("Tidings-Seq"));
            await client.seen(pid, seq);
            const after = delivered.includes(seq);
            await client.seen(pid, seq);  // already seen: at once
            const refused = await client.seen(other, 1).then(() => "resolved", (e) => e.message);
            const waiting = client.seen(pid, seq + 10).then(() => "resolved", (e) => e.message);
            client.unsubscribe(pid);
            const ended = await waiting;
            client.close();
            return {
                status: answer.status, seq, after, ended, refused,
                snapshot: snapshots.map((s) => [s.project_id, s.seq, s.snapshot.files.length]),
            };
        }""",
        [pid, other],
    )
    assert result == {
        "status": 201,
        "seq": 2,
        "after": True,
        "ended": f"the subscription to {pid} ended",
        "refused": f"not subscribed to {other}",
        "snapshot": [[pid, 1, 0]],
    }
    assert page.errors == []


class BlockedSockets:
    """Refuses the page's first ``blocked`` WebSockets (each closes before the server
    answers, as behind a proxy that breaks WebSocket); later ones reach the server."""

    def __init__(self, blocked: int) -> None:
        self.blocked = blocked
        self.refused = 0
        self.passed = 0

    async def route(self, ws: Any) -> None:
        if self.refused < self.blocked:
            self.refused += 1
            await ws.close()
            return
        self.passed += 1
        ws.connect_to_server()


async def test_with_websocket_blocked_the_dashboard_goes_live_over_sse(
    browser: Any, server: ServerThread, alice: TestUser, alice_api: Any
) -> None:
    pid = await share(alice_api, "Launch campaign")
    sockets = BlockedSockets(blocked=1_000_000)
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()
    await page.route_web_socket("**/ws", sockets.route)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/stream" in r.url else None)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    await page.goto(server.url + "/")
    await page.fill("#login input[name=username]", alice.username)
    await page.fill("#login input[name=password]", alice.password)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector(
        "#status[data-state=open][data-transport=stream]", timeout=RECONNECT_MS
    )
    assert sockets.refused >= 3 and sockets.passed == 0
    await select(page, pid)
    # Selecting a project subscribes: the stream is opened again with it.
    await eventually(lambda: any(f"project={pid}" in url for url in streams))
    assert (await upload(alice_api, pid, "live.txt", b"over SSE")).is_success
    await wait_file(page, "live.txt")
    assert await page.get_attribute("#status", "data-seq") == "2"
    assert "(SSE)" in (await page.text_content("#status-text") or "")
    assert errors == []
    # A stream keeps its request open: a server stopping now would wait for it (up to
    # uvicorn's graceful shutdown timeout), so the page goes first.
    await context.close()


async def test_the_client_goes_back_to_websocket_once_it_works_again(
    browser: Any, server: ServerThread, alice: TestUser, alice_api: Any
) -> None:
    """Three refused sockets: the client falls back to the stream, keeps the project's
    events flowing, tries a WebSocket again later and moves to it, missing nothing."""
    pid = await share(alice_api, "Launch campaign")
    page = await open_dashboard(browser, server, alice)  # logged in: the cookie is set
    sockets = BlockedSockets(blocked=3)
    await page.route_web_socket("**/ws", sockets.route)
    await page.evaluate(
        """async (pid) => {
            const { TidingsClient } = await import("/static/tidings.js");
            const client = new TidingsClient({ retryWebSocketAfter: 1500 });
            window.seen = { seqs: [], transports: [], established: 0 };
            client.addEventListener("message", (e) => {
                if (e.detail.project_id === pid && e.detail.type === "custom.tick") {
                    window.seen.seqs.push(e.detail.seq);
                }
                if (e.detail.type === "connection.established") window.seen.established += 1;
            });
            client.addEventListener("status", (e) => {
                if (e.detail.state === "open") window.seen.transports.push(e.detail.transport);
            });
            window.client = client;
            await client.connect();
            client.subscribe(pid, { since: 1 });  // from the project's creation on
        }""",
        pid,
    )

    async def transports() -> list[str]:
        return list((await page.evaluate("window.seen"))["transports"])

    seqs = []
    for n in range(40):
        response = await alice_api.post(
            f"/api/projects/{pid}/events", json={"type": "custom.tick", "data": {"n": n}}
        )
        assert response.status_code == 201
        seqs.append(response.json()["seq"])
        if n >= 20 and (await transports())[-1:] == ["websocket"]:
            break
        await asyncio.sleep(100 * MS)
    deadline = time.monotonic() + RECONNECT_MS / 1000
    while (await transports())[-1:] != ["websocket"] and time.monotonic() < deadline:
        await asyncio.sleep(50 * MS)
    last = await alice_api.post(f"/api/projects/{pid}/events", json={"type": "custom.tick"})
    seqs.append(last.json()["seq"])
    await page.wait_for_function(
        "(seq) => window.seen.seqs.includes(seq)", arg=seqs[-1], timeout=WAIT_MS
    )
    seen = await page.evaluate("window.seen")
    assert seen["transports"] == ["stream", "websocket"]
    assert sockets.refused == 3 and sockets.passed == 1
    # Every event once, in order, across the move from the stream to the socket.
    assert seen["seqs"] == seqs
    assert seen["established"] == 2  # one per transport: the app refetches what it tracks
    await page.context.close()


async def test_dashboard_shows_who_views_the_open_project_live(
    browser: Any, server: ServerThread, alice: TestUser, bob: TestUser, alice_api
) -> None:
    pid = (await create_project(alice_api, "Launch"))["id"]
    other = (await create_project(alice_api, "Other"))["id"]
    added = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    assert added.status_code == 201
    alice_page = await open_dashboard(browser, server, alice)
    await select(alice_page, pid)
    await alice_page.wait_for_selector("#viewers li:text-is('alice')", timeout=WAIT_MS)

    bob_page = await open_dashboard(browser, server, bob)
    await select(bob_page, pid)
    for page in (alice_page, bob_page):
        await page.wait_for_selector("#viewers li:text-is('bob')", timeout=WAIT_MS)
    assert await bob_page.locator("#viewers li").all_text_contents() == ["alice", "bob"]
    assert await alice_page.locator("#viewer-count").text_content() == "2"

    # Alice opens another project: bob sees her leave; she sees only herself there.
    await select(alice_page, other)
    await bob_page.wait_for_selector(
        "#viewers li:text-is('alice')", state="detached", timeout=WAIT_MS
    )
    # Her page shows the other project's viewers once its `subscribed` reply is there,
    # which bob's page seeing her leave does not wait for.
    await alice_page.wait_for_function(
        "() => [...document.querySelectorAll('#viewers li')].map(li => li.textContent)"
        ".join() === 'alice'",
        timeout=WAIT_MS,
    )
    await select(alice_page, pid)
    await bob_page.wait_for_selector("#viewers li:text-is('alice')", timeout=WAIT_MS)
    # Bob closes his page: gone from alice's.
    await bob_page.context.close()
    await alice_page.wait_for_selector(
        "#viewers li:text-is('bob')", state="detached", timeout=WAIT_MS
    )
    assert alice_page.errors == []
