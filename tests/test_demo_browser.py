"""The demo page and its browser client (``static/``) in a real Chromium.

Playwright's async API drives Debian's ``/usr/bin/chromium`` (never a
downloaded browser) on the loop the servers run on, so a server keeps
serving while a test awaits the browser.  One Chromium serves the module;
each test has its own server and browser context.  Every wait has a
timeout.  Nothing sleeps its way to a state; the one quiet period is the
check that something does *not* happen (the 7th and 8th tab never
connecting), which has no event to wait for.

Without chromium (or the playwright package) these tests skip, except under
``CI=true``, where they fail.  ``UPDATE_DEMO_PNG=1`` also writes the
screenshot test's picture to ``docs/demo.png`` (the README shows it).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import struct
from typing import Any

import pytest
import tornado.ioloop

from core.streams.manager import SHUTDOWN
from tests.support.checks import wait_until
from tests.support.processes import need

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - exercised only where it is missing
    async_playwright = None

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow, pytest.mark.usefixtures("no_error_logged")]

#: As measured in STACK-NOTES: what makes Debian's chromium reliable here.
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
#: Milliseconds any single browser wait may take.
WAIT_MS = 10_000
USER = "empresaabc_123"
DOCS_PNG = pathlib.Path(__file__).resolve().parent.parent / "docs" / "demo.png"


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def io_loop():
    """One loop for the module, so that one Chromium serves every test.

    Playwright objects belong to the loop they were made on; launching
    Chromium (and Playwright's driver) for each test would cost about a
    second a test.  Each test still gets its own server and its own browser
    context (cookies, storage, connection pool).
    """
    loop = tornado.ioloop.IOLoop()
    loop.make_current()
    yield loop
    loop.clear_current()
    loop.close(all_fds=True)


@pytest.fixture(scope="module")
def chromium(io_loop):
    """Debian's headless Chromium, driven by Playwright on the module's loop."""
    path = need("chromium")
    if async_playwright is None:
        if os.environ.get("CI"):
            pytest.fail("the playwright package is required under CI (requirements-dev.txt)")
        pytest.skip("the playwright package is not installed")

    async def launch():
        playwright = await async_playwright().start()
        try:
            return playwright, await playwright.chromium.launch(
                executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=30_000
            )
        except BaseException:
            await playwright.stop()
            raise

    playwright, browser = io_loop.run_sync(launch)
    yield browser

    async def close():
        try:
            await browser.close()
        finally:
            await playwright.stop()

    io_loop.run_sync(close)


class Browser:
    """The module's Chromium for one test: the contexts it opens are closed after it."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser
        self.contexts: list[Any] = []

    async def new_context(self, width: int = 1280, height: int = 800) -> Any:
        """A fresh profile (cookies, storage, its own 6-connection pool)."""
        context = await self._browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        return context


@pytest.fixture
def browser(io_loop, chromium, make_server):
    """Depends on ``make_server`` so its contexts close before the servers stop."""
    wrapper = Browser(chromium)
    yield wrapper

    async def close():
        for context in wrapper.contexts:
            await context.close()

    io_loop.run_sync(close)


# -- helpers -----------------------------------------------------------------------


def url(server: Any, path: str = "/") -> str:
    return f"http://{server.host}:{server.port}{path}"


def watch(page: Any, problems: list[str]) -> Any:
    """Collect uncaught page errors and CSP violations into ``problems``."""
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.on(
        "console",
        lambda message: problems.append(f"console: {message.text}")
        if message.type == "error" and "Content Security Policy" in message.text
        else None,
    )
    return page


async def login(page: Any, server: Any, user: str = USER) -> None:
    """Sign in through the picker and wait until the stream is live."""
    await page.goto(url(server))
    await page.select_option("#login-user", user)
    await page.fill("#login-password", "demo")
    await page.click("#login-form button[type=submit]")
    await wait_live(page)


async def wait_live(page: Any, role: str | None = None) -> None:
    selector = "#conn[data-state=live]" if role is None else f"#conn[data-state=live][data-role={role}]"
    await page.wait_for_selector(selector)


async def open_device(page: Any) -> Any:
    """Click "Open another device" and return the live new tab."""
    async with page.context.expect_page() as new_page:
        await page.click("#open-device")
    tab = await new_page.value
    await wait_live(tab)
    return tab


async def wait_item(page: Any, notification_id: str) -> None:
    await page.wait_for_selector(f'#inbox li[data-id="{notification_id}"]')


async def wait_badge(page: Any, count: int) -> None:
    await page.wait_for_selector(f'#badge[data-count="{count}"]')


async def deliveries(page: Any, notification_id: str) -> int:
    """How many times the client handed this notification to the page."""
    return await page.evaluate(
        "id => window.notifyDemo.log.filter(e => e.event === 'notification' && e.notificationId === id).length",
        notification_id,
    )


async def connection_id(page: Any) -> str:
    return (await page.text_content("#conn-id")) or ""


async def wait_devices(server: Any, count: int, user: str = USER, timeout: float = 10) -> None:
    """Wait until the server holds exactly ``count`` streams of ``user``."""
    await wait_until(lambda: len(server.manager.devices_of(user)) == count, timeout,
                     lambda: f"{count} streams (the server has {len(server.manager.devices_of(user))})")


async def turn_on_shared_mode(page: Any) -> None:
    await page.check("#shared-toggle")
    await wait_live(page, role="leader")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# -- tests ---------------------------------------------------------------------------


async def test_two_tabs_of_one_user_both_show_a_notification_sent_from_python(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    problems: list[str] = []
    first = watch(await context.new_page(), problems)
    await login(first, server)
    second = watch(await open_device(first), problems)
    assert await connection_id(first) != await connection_id(second)

    created = await server.notify(USER, "QuickCheck completed", type="success", actionUrl="/machines/123/quickchecks")

    for page in (first, second):
        toast = await page.wait_for_selector(f'.toast[data-id="{created["notificationId"]}"]')
        assert "type-success" in (await toast.get_attribute("class"))
        assert "QuickCheck completed" in await toast.text_content()
        assert await toast.eval_on_selector("a", "a => a.getAttribute('href')") == "/machines/123/quickchecks"
        await wait_item(page, created["notificationId"])
        await wait_badge(page, 1)
    assert problems == []


async def test_named_events_reach_a_listener_registered_with_on(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    page = await context.new_page()
    await login(page, server)
    await page.evaluate(
        "() => { window.got = []; window.notifyDemo.client.on('build.finished', d => window.got.push(d)); }"
    )

    status, _, body, _ = await server.request(
        "POST", "/api/v1/events", {"event": "build.finished", "userIds": [USER], "data": {"build": 42}},
        as_user="ci", role="publisher",
    )
    assert status == 202, body

    await page.wait_for_function("() => window.got.length === 1")
    assert await page.evaluate("window.got") == [{"build": 42}]


async def test_marking_read_in_one_tab_updates_the_badge_in_the_other(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    first = await context.new_page()
    await login(first, server)
    second = await open_device(first)
    one = await server.notify(USER, "one")
    two = await server.notify(USER, "two")
    for page in (first, second):
        await wait_item(page, two["notificationId"])
        await wait_badge(page, 2)

    await first.click(f'#inbox li[data-id="{one["notificationId"]}"] [data-action=toggle-read]')
    await wait_badge(second, 1)
    await second.wait_for_selector(f'#inbox li[data-id="{one["notificationId"]}"]:not(.unread)')

    await second.click("#read-all")
    await wait_badge(first, 0)

    await first.click(f'#inbox li[data-id="{two["notificationId"]}"] [data-action=delete]')
    await second.wait_for_selector(f'#inbox li[data-id="{two["notificationId"]}"]', state="detached")


async def test_notifications_published_during_a_server_drop_arrive_once_after_the_reconnect(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    page = await context.new_page()
    await login(page, server)
    before = await server.notify(USER, "before the drop")
    await wait_item(page, before["notificationId"])
    dropped_connection = await connection_id(page)

    for device in server.manager.devices_of(USER):
        server.manager.unsubscribe(device, SHUTDOWN)  # ends the response cleanly, as a restart does
    missed = [await server.notify(USER, f"missed {n}") for n in range(3)]
    # The client waits ~2 s (the server's retry) before reconnecting: these
    # were published while it had no stream.
    assert not server.manager.devices_of(USER), "the tab reconnected before the test published"
    await page.wait_for_selector("#conn[data-state=reconnecting]")

    for notification in missed:
        await wait_item(page, notification["notificationId"])
    await wait_live(page)
    assert await connection_id(page) != dropped_connection
    after = await server.notify(USER, "after the reconnect")
    await wait_item(page, after["notificationId"])

    for notification in [before, *missed, after]:
        assert await deliveries(page, notification["notificationId"]) == 1, notification["message"]
    await wait_badge(page, 5)


async def test_a_reopened_page_resumes_from_the_last_event_id(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    page = await context.new_page()
    await login(page, server)
    seen = await server.notify(USER, "seen")
    await wait_item(page, seen["notificationId"])
    await page.close()
    await wait_devices(server, 0)
    missed = await server.notify(USER, "published while no tab was open")

    page = await context.new_page()
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if "/notifications/stream" in request.url else None)
    await page.goto(url(server))
    # Only the stream delivers events (the list does not): a toast means a replay.
    await page.wait_for_selector(f'.toast[data-id="{missed["notificationId"]}"]')
    delivered = await page.evaluate("window.notifyDemo.log.filter(e => e.event === 'notification')")
    assert [entry["notificationId"] for entry in delivered] == [missed["notificationId"]]
    assert "lastEventId=" in streams[0]
    await wait_item(page, seen["notificationId"])  # from the list


async def test_a_cursor_the_server_cannot_replay_brings_a_reset_and_a_fresh_list(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    page = await context.new_page()
    await login(page, server)
    old = await server.notify(USER, "before the reset")
    await wait_item(page, old["notificationId"])
    # A cursor from some other database, far beyond this one's history.
    await page.evaluate("user => localStorage.setItem('notifications:lastEventId:' + user, '999999')", USER)
    await page.reload()

    await page.wait_for_function("() => window.notifyDemo.log.some(e => e.event === 'reset')")
    await wait_item(page, old["notificationId"])
    new = await server.notify(USER, "after the reset")
    await wait_item(page, new["notificationId"])  # not mistaken for an old cursor
    assert await deliveries(page, new["notificationId"]) == 1


async def test_a_token_that_expires_mid_stream_is_replaced_without_a_page_reload(make_server, browser):
    server = await make_server()
    context = await browser.new_context()
    page = await context.new_page()
    minted: list[str] = []

    def provide_token(user_id: str) -> str:
        # The embedding app's token refresh (see static/session.js).
        minted.append(user_id)
        return server.token(user_id, ttl=600)

    await page.expose_function("demoTokenProvider", provide_token)
    loads: list[Any] = []
    page.on("load", lambda _: loads.append(True))
    await page.goto(url(server))
    await page.fill("#token-input", server.token(USER, ttl=4))
    await page.click("#token-form button[type=submit]")
    await wait_live(page)
    first_connection = await connection_id(page)

    await page.wait_for_function(
        "() => window.notifyDemo.log.some(e => e.event === 'token-expired')", timeout=WAIT_MS
    )
    await page.wait_for_function(
        """old => document.querySelector('#conn').dataset.state === 'live'
                  && !['', old].includes(document.querySelector('#conn-id').textContent)""",
        arg=first_connection,
    )
    assert minted == [USER]
    assert len(loads) == 1, "the page was reloaded"

    created = await server.notify(USER, "after the new token")
    await wait_item(page, created["notificationId"])
    # REST calls use the new token too.
    await page.fill("#send-message", "sent with the new token")
    await page.click("#send-form button[type=submit]")
    await page.wait_for_selector("#inbox li:has-text('sent with the new token')")


async def test_an_expired_password_session_stops_and_asks_to_sign_in_again(make_server, browser):
    server = await make_server(demo=True, token_ttl=2)
    context = await browser.new_context()
    page = await context.new_page()
    await login(page, server)

    # token-expired, then no credential left for a new ticket: stopped.
    await page.wait_for_selector("#login-view:not([hidden])")
    assert await page.get_attribute("#conn", "data-state") == "stopped"
    assert "sign in again" in await page.text_content("#login-error")
    await wait_devices(server, 0)


async def test_without_shared_mode_only_six_of_eight_tabs_connect(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    first = await context.new_page()
    await login(first, server)
    others = [await context.new_page() for _ in range(7)]
    # Not awaited one by one: the loads of the last tabs queue behind the
    # six streams for good (and so would page.evaluate on them).
    loads = [asyncio.ensure_future(page.goto(url(server), timeout=30_000)) for page in others]
    try:
        await wait_devices(server, 6)
        await asyncio.sleep(1.5)  # the quiet period: nothing more connects
        assert len(server.manager.devices_of(USER)) == 6, "HTTP/1.1 allows 6 connections per origin"
    finally:
        # The stuck loads end only when their context closes.
        await context.close()
        await asyncio.gather(*loads, return_exceptions=True)


async def test_shared_mode_delivers_to_all_eight_tabs_over_one_connection(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    problems: list[str] = []
    first = watch(await context.new_page(), problems)
    await login(first, server)
    await turn_on_shared_mode(first)
    followers = [watch(await context.new_page(), problems) for _ in range(7)]
    await asyncio.gather(*(page.goto(url(server)) for page in followers))
    for page in followers:
        await wait_live(page, role="follower")
    pages = [first, *followers]
    await wait_devices(server, 1)

    created = await server.notify(USER, "to every tab", type="warning")
    for page in pages:
        await page.wait_for_selector(f'.toast[data-id="{created["notificationId"]}"]')
        await wait_item(page, created["notificationId"])
        assert await deliveries(page, created["notificationId"]) == 1
    assert len(server.manager.devices_of(USER)) == 1

    # A follower's named-event listener reaches the leader's EventSource.
    follower = pages[-1]
    await follower.evaluate(
        "() => { window.got = []; window.notifyDemo.client.on('build.finished', d => window.got.push(d)); }"
    )
    await first.wait_for_function("() => window.notifyDemo.client._names.has('build.finished')")
    status, _, _, _ = await server.request(
        "POST", "/api/v1/events", {"event": "build.finished", "userIds": [USER], "data": {"ok": True}},
        as_user="ci", role="publisher",
    )
    assert status == 202
    await follower.wait_for_function("() => window.got.length === 1")
    assert problems == []


async def test_closing_the_leader_tab_hands_over_without_losing_a_notification(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context()
    first = await context.new_page()
    await login(first, server)
    await turn_on_shared_mode(first)
    pages = [first, await open_device(first), await open_device(first)]
    before = await server.notify(USER, "before the handover")
    for page in pages:
        await wait_item(page, before["notificationId"])
    roles = [await page.get_attribute("#conn", "data-role") for page in pages]
    assert sorted(roles) == ["follower", "follower", "leader"]

    leader = pages[roles.index("leader")]
    rest = [page for page in pages if page is not leader]
    await leader.close()
    during = await server.notify(USER, "during the handover")

    for page in rest:
        await wait_item(page, during["notificationId"])
    # The new leader may have shown the item (caught up from the relayed
    # cursor) a moment before its indicator says so: wait for the roles.
    async def roles_of_the_rest() -> list[str | None]:
        return sorted([await page.get_attribute("#conn", "data-role") or "" for page in rest])

    for _ in range(200):
        if await roles_of_the_rest() == ["follower", "leader"]:
            break
        await asyncio.sleep(0.05)
    assert await roles_of_the_rest() == ["follower", "leader"]
    await wait_devices(server, 1)
    after = await server.notify(USER, "after the handover")
    for page in rest:
        await wait_item(page, after["notificationId"])
        for notification in (before, during, after):
            assert await deliveries(page, notification["notificationId"]) == 1, notification["message"]


async def test_page_works_by_keyboard_on_a_phone_sized_screen(make_server, browser):
    server = await make_server(demo=True)
    context = await browser.new_context(width=375, height=740)
    page = await context.new_page()
    await page.goto(url(server))
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip-link"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "login-user"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "login-password"
    await page.keyboard.press("Enter")
    await wait_live(page)

    created = await server.notify(USER, "a rather long message that has to wrap on a narrow phone screen " * 2)
    await wait_item(page, created["notificationId"])
    await page.focus(f'#inbox li[data-id="{created["notificationId"]}"] [data-action=toggle-read]')
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "focus must be visible"
    await page.keyboard.press("Enter")
    await wait_badge(page, 0)
    # Focus stays on the row after it re-renders.
    assert await page.evaluate("document.activeElement.dataset.action") == "toggle-read"
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling"


async def test_screenshot_of_the_demo_page(make_server, browser, tmp_path):
    server = await make_server(demo=True)
    context = await browser.new_context(width=1280, height=800)
    page = await context.new_page()
    await login(page, server)
    await page.click("#send-form button[type=submit]")  # the form's default: a success
    created = await server.notify(
        USER, "Maintenance due on machine 42", type="warning",
        actionUrl="/machines/42/maintenance", sourceType="MAINTENANCE",
    )
    await wait_item(page, created["notificationId"])
    await page.wait_for_function("() => document.querySelectorAll('#inbox li').length === 2")
    await page.wait_for_function("() => document.querySelectorAll('.toast').length === 2")
    await page.wait_for_function(
        """() => document.querySelector('[data-stat=totalDevices]').textContent === '1'
                  && Number(document.querySelector('[data-stat=eventsPublished]').textContent) >= 2"""
    )

    shot = tmp_path / "demo.png"
    await page.screenshot(path=str(shot), animations="disabled")
    assert png_size(shot.read_bytes()) == (1280, 800)
    if os.environ.get("UPDATE_DEMO_PNG"):
        DOCS_PNG.write_bytes(shot.read_bytes())
