"""The /ui observer in a real browser: Debian's chromium, headless, driven by Playwright (never its own browser
download), against a real daemon. A screenshot of the page is saved to ``artifacts/ui-observer.png``."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import TOKEN, Daemon

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None
)
pytestmark = [
    pytest.mark.realtime,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (scripts/bootstrap.sh installs it)"
    ),
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip

TREE = """
[tree]
intensity = 1000
[[tree.children]]
id = "web"
command = ["sleep", "100000"]
[[tree.children]]
id = "crasher"
command = ["sh", "-c", "echo run $$$$; echo oops from $$$$ >&2; sleep 1; exit 3"]
[[tree.children]]
id = "health"
worker = "health"
config = { interval = 60 }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("ui"), TREE)
    d.wait_ready()
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Page:
    """A fresh browser context (its own sessionStorage), the page, and everything it reported."""

    def __init__(self, browser: Any, daemon: Daemon) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.goto(f"http://{daemon.admin}/ui/")
        self.page.wait_for_selector("#tree tbody tr[data-path='web']")
        self.wait("document.getElementById('conn').textContent === 'live'")

    def _console(self, msg: Any) -> None:
        if msg.type in ("error", "warning"):  # CSP violations are reported here as errors
            self.problems.append(f"console {msg.type}: {msg.text}")

    def wait(self, expression: str, timeout: float = 30.0) -> None:
        """Until ``expression`` is true in the page (polled with evaluate: the page's CSP forbids eval, which
        Playwright's own wait_for_function would need)."""
        wait_until(lambda: self.page.evaluate(expression), timeout, expression)

    def cell(self, path: str, index: int) -> str:
        return str(self.page.inner_text(f"#tree tbody tr[data-path='{path}'] td:nth-child({index})")).strip()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, daemon: Daemon) -> Iterator[Page]:
    p = Page(browser, daemon)
    yield p
    p.close()


PID, RESTARTS = 4, 6


def test_the_page_shows_the_live_tree_and_follows_a_kill_9_without_reloading(page: Page, daemon: Daemon) -> None:
    assert page.cell("web", 3).endswith("running") and page.cell("web", 2) == "process"
    old_pid, old_restarts = int(page.cell("web", PID)), int(page.cell("web", RESTARTS))
    assert old_pid == daemon.node("web")["pid"]
    page.page.evaluate("window.__sameDocument = true")  # gone if the page reloaded
    t0 = time.monotonic()
    os.kill(old_pid, 9)
    page.wait(
        f"(() => {{ const r = document.querySelector(\"#tree tr[data-path='web']\"); return !!r &&"
        f" r.children[{PID - 1}].textContent !== '{old_pid}' && r.children[{PID - 1}].textContent !== '' &&"
        f" Number(r.children[{RESTARTS - 1}].textContent) === {old_restarts + 1}; }})()",
        10,  # measured well under a second; generous for a loaded machine
    )
    took = time.monotonic() - t0
    assert page.page.evaluate("window.__sameDocument") is True
    assert int(page.cell("web", PID)) == daemon.node("web")["pid"] != old_pid
    print(f"\nthe page showed the restart {took * 1000:.0f} ms after kill -9")
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.click("#tree tbody tr[data-path='crasher'] td:first-child")
    page.wait("document.getElementById('logs').textContent.includes('oops from')")
    page.page.screenshot(path=str(ARTIFACTS / "ui-observer.png"), full_page=True)
    assert page.problems == []


def test_the_page_fits_a_phone_and_its_actions_are_on_screen(browser: Any, daemon: Daemon) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(f"http://{daemon.admin}/ui/")
        page.wait_for_selector("#tree tbody tr[data-path='web']")
        # nothing wider than the screen, and the tree's actions within it without scrolling sideways
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.evaluate(f"sessionStorage.setItem('mcp-supervisor-token', '{TOKEN}')")
        page.reload()
        button = "#tree tbody tr[data-path='web'] button[data-action='restart']"
        page.wait_for_selector(f"{button}:not([disabled])")
        boxes = page.evaluate(  # every action of every child, on screen (measured at once: rows are redrawn)
            "[...document.querySelectorAll('#tree tbody button')].map(b => b.getBoundingClientRect().toJSON())"
        )
        assert len(boxes) == 9 and all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes), boxes
        before = daemon.node("web")["pid"]
        page.tap(button)
        wait_until(lambda: daemon.node("web")["pid"] not in (None, before), 30, "web restarted from the phone")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-observer-phone.png"), full_page=True)
    finally:
        context.close()


def test_stop_asks_first(page: Page, daemon: Daemon) -> None:
    page.page.evaluate(f"sessionStorage.setItem('mcp-supervisor-token', '{TOKEN}')")
    page.page.reload()
    button = "#tree tbody tr[data-path='web'] button[data-action='stop']"
    page.page.wait_for_selector(f"{button}:not([disabled])")
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.page.once("dialog", dismiss)
    page.page.click(button)
    wait_until(lambda: asked, 10, "the confirmation")
    assert "Stop web?" in asked[0] and daemon.node("web")["state"] == "running"  # dismissed: nothing happened
    page.page.once("dialog", lambda d: d.accept())
    page.page.click(button)
    wait_until(lambda: daemon.node("web")["state"] == "stopped", 30, "web stopped once confirmed")
    code, body, _ = daemon.request("POST", "/children/web/start")
    assert code == 200, body


def test_a_new_tab_shows_the_latest_reload_not_an_old_failure_and_hides_telemetry(browser: Any, daemon: Daemon) -> None:
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("intensity = 1000", "intensity = -1"))
    assert daemon.request("POST", "/reload?wait=1")[0] == 422
    daemon.config.write_text(good)
    assert daemon.request("POST", "/reload?wait=1")[0] == 200
    assert daemon.request("POST", "/health/check")[0] == 200  # a HealthRound: service telemetry
    p = Page(browser, daemon)
    try:
        p.wait("[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('reload applied'))")
        assert "reload failed" not in p.page.inner_text("#message")
        noise = "[...document.querySelectorAll('#events li.noise')]"
        p.wait(f"{noise}.length > 0")
        assert p.page.evaluate(f"{noise}.every(li => li.offsetParent === null)")  # hidden by default
        p.page.check("#show-noise")
        assert p.page.evaluate(f"{noise}.some(li => li.offsetParent !== null)")
        assert p.problems == []
    finally:
        p.close()


def kill_connections_to(port: int) -> None:
    """Drop every TCP connection to ``port`` from the server's side of the world (ss -K: the kernel resets them)."""
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)], capture_output=True, check=False)


def test_a_page_that_reconnects_shows_each_event_once(page: Page, daemon: Daemon) -> None:
    for _ in range(2):
        assert daemon.request("POST", "/children/web/restart")[0] == 200
    restarts = daemon.node("web")["restarts"]
    started = "[...document.querySelectorAll('#events li.ChildStarted')].filter(li => li.textContent.includes(' web '))"
    page.wait(f"{started}.length === {restarts + 1}")
    page.page.evaluate("window.__sameDocument = true")
    kill_connections_to(daemon.port)
    page.wait("document.getElementById('conn').textContent !== 'live'", 20)  # the stream dropped...
    page.wait("document.getElementById('conn').textContent === 'live'", 30)  # ...and the browser reconnected
    assert daemon.request("POST", "/children/web/restart")[0] == 200
    page.wait(f"{started}.length === {restarts + 2}")
    ids = page.page.evaluate("[...document.querySelectorAll('#events li')].map(li => li.dataset.id).filter(x => x)")
    assert len(ids) == len(set(ids)), "an event shown twice"
    spark = "document.querySelector(\"#tree tbody tr[data-path='web'] td.spark\").title"
    page.wait(f"{spark}.startsWith('{restarts + 1} restart(s)')")  # each restart counted once (a replay: twice)
    assert page.page.evaluate("window.__sameDocument") is True


def test_a_childs_crash_output_is_readable_after_it_restarted(page: Page, daemon: Daemon) -> None:
    wait_until(lambda: daemon.node("crasher")["restarts"] >= 2, 30, "two restarts of crasher")
    current = daemon.node("crasher")["pid"]
    page.page.click("#tree tbody tr[data-path='crasher'] td:first-child")
    page.wait(
        f"[...document.querySelectorAll('#logs span.stderr')].some(s => s.textContent.includes('oops from') &&"
        f" !s.textContent.includes('{current}'))"
    )  # the previous run's stderr, marked with its own pid
    assert page.problems == []


def test_a_selected_child_shows_why_it_ended_and_every_row_its_memory(page: Page, daemon: Daemon) -> None:
    wait_until(lambda: len(daemon.request("GET", "/children/crasher/exits")[1]["exits"]) >= 2, 30, "two exits")
    page.page.click("#tree tbody tr[data-path='crasher'] td:first-child")
    page.wait("!document.getElementById('why-panel').hidden")
    page.wait("document.querySelectorAll('#exits tbody tr').length >= 2")
    first = page.page.locator("#exits tbody tr").first  # the latest end first
    assert first.locator("td:nth-child(5)").inner_text() == "crash"
    assert first.locator("td:nth-child(6)").inner_text() == "exit code 3"
    assert "oops from" in str(first.get_attribute("title"))  # its last output lines
    assert page.page.inner_text("#why-path") == "crasher" and page.page.inner_text("#diagnosis")
    page.wait(
        "/(KiB|MiB) · \\d+\\.\\ds/.test(document.querySelector(\"#tree tr[data-path='web'] td.resources\").textContent)"
    )
    assert page.page.inner_text("#alerts") == "none configured"
    page.wait(
        "document.querySelector(\"#tree tr[data-path='crasher'] td.state\").textContent.includes('crash-looping')"
    )
    assert page.problems == []


def test_controls_need_the_token_and_then_restart_a_child(page: Page, daemon: Daemon) -> None:
    button = "#tree tbody tr[data-path='web'] button[data-action='restart']"
    assert page.page.is_disabled(button) and page.page.is_disabled("#reload")
    page.page.fill("#token", TOKEN)
    page.page.click("#save-token")
    assert page.page.evaluate("sessionStorage.getItem('mcp-supervisor-token')") == TOKEN
    assert page.page.evaluate("document.cookie") == ""  # never a cookie
    before = daemon.node("web")["pid"]
    page.page.wait_for_selector(f"{button}:not([disabled])")
    page.page.click(button)
    page.wait("document.getElementById('message').textContent.includes('restart web: done')")
    wait_until(lambda: daemon.node("web")["pid"] not in (None, before), 30, "a new pid")
    page.page.click("#reload")
    page.wait("document.getElementById('message').textContent.startsWith('reloaded')")
    assert page.problems == []


def test_a_forged_cross_origin_post_is_refused(browser: Any, daemon: Daemon) -> None:
    """A page on another origin posts a form to the admin port, and tries fetch(): neither can act (no token)."""
    attack = f"""<!doctype html><html><body>
<form id="f" method="POST" action="http://{daemon.admin}/children/web/restart"><input name="x" value="1"></form>
<script>fetch("http://{daemon.admin}/children/web/stop", {{method: "POST", mode: "no-cors"}}).finally(() =>
  document.getElementById("f").submit());</script></body></html>"""

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = attack.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before = daemon.node("web")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_url(f"http://{daemon.admin}/children/web/restart")  # the form was submitted...
        assert "missing Authorization" in page.content()  # ...and refused with 401
        wait_until(
            lambda: sum(1 for e in daemon.log_events() if e.get("event") == "admin mutation"
                        and e.get("outcome") == "denied" and e.get("status") == 401) >= 2, 30, "both attempts denied",
        )  # fmt: skip
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    after = daemon.node("web")
    assert (after["pid"], after["restarts"], after["state"]) == (before["pid"], before["restarts"], "running")


def test_in_fleet_mode_the_page_shows_the_nodes_and_the_singletons_holder(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mcp_supervisor.testing.servers import PgServer

    pg = PgServer()
    pg.start()
    d = Daemon(tmp_path_factory.mktemp("fleet-ui"), f"""
[cluster]
dsn = "postgresql://postgres@127.0.0.1:{pg.port}/postgres"
node = "ui-node"
lease = 3
heartbeat = 0.5

[tree]
[[tree.children]]
id = "web"
command = ["sleep", "100000"]

[[tree.children]]
id = "cron"
singleton = true
shutdown = 0.5
command = ["sleep", "100000"]
""")  # fmt: skip
    try:
        d.wait_ready()
        p = Page(browser, d)
        try:
            p.wait("!document.getElementById('fleet-panel').hidden")
            p.wait("document.querySelector('#fleet tbody tr[data-node=\"ui-node\"]') !== null")
            p.wait("(document.querySelector('#singletons li[data-path=\"cron\"]') || {}).textContent"
                   " === 'cron: held by ui-node (token 1)'")  # fmt: skip
            assert "live" in p.page.inner_text("#fleet tbody tr[data-node='ui-node']")
            assert p.problems == []
        finally:
            p.close()
    finally:
        d.stop()
        pg.cleanup()
