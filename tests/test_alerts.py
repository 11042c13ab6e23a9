"""Alerts, end to end: a real daemon, a real HTTP receiver (the standard library's server, answering as told) and a
real command. One alert per crash-loop episode and one recovery; a receiver that is down, then failing, then up
gets the alert exactly once; a refused reload is told; a test alert from `ctl`; secrets never written."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

HOOK_SECRET = "T0A1B2C3D/B4E5F6/Zq9sX2mLw7Rk3vTpY8uN"  # the secret part of a Slack-style webhook URL
BEARER = "rcv-token-8f3a9c2e71d04b6a"


class Hook:
    """An HTTP receiver on a loopback port: records each POST (path, headers, body); answers the statuses in
    ``answers`` first, then 200."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Hook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = hook.answers.pop(0) if hook.answers else 200
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "status": status})  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def taken(self, path: str = "") -> list[dict[str, Any]]:
        """What was answered 2xx (on ``path``), its body parsed when JSON."""
        out = []
        for r in self.requests:
            if r["status"] == 200 and r["path"].startswith(path):
                try:
                    out.append(json.loads(r["body"]))
                except ValueError:
                    out.append({"text": r["body"].decode(), "headers": r["headers"]})
        return out


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook().start()
    yield h
    h.stop()


def crasher(tmp: Path, fails: int) -> str:
    """A child that crashes ``fails`` times in a row (a second after starting), then stays up."""
    return f"""
[[tree.children]]
id = "api"
command = ["sh", "-c", "n=$(cat {tmp}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp}/count; if [ $n -le {fails} ]; then echo \\"fatal: cannot reach the database (attempt $n)\\" >&2; exit 1; fi; exec sleep 1000"]
backoff = {{ initial = 0.05, max = 0.1, jitter = 0 }}
"""


def events_of(hook: Hook, path: str = "/") -> list[str]:
    return [a["event"] for a in hook.taken(path)]


def test_one_alert_per_crash_loop_episode_and_one_recovery(tmp_path: Path, hook: Hook) -> None:
    log = tmp_path / "exec.jsonl"
    script = tmp_path / "page.sh"
    script.write_text(f'#!/bin/sh\n{{ cat; }} >> {log}\necho "paged $MCP_ALERT_EVENT for $MCP_ALERT_PATH"\n')
    script.chmod(0o755)
    d = Daemon(
        tmp_path,
        f"""
[[daemon.alerts]]
name = "ops"
webhook = "http://127.0.0.1:{hook.port}/json/{HOOK_SECRET}"
headers = {{ Authorization = "Bearer {BEARER}" }}

[[daemon.alerts]]
name = "chat"
webhook = "http://127.0.0.1:{hook.port}/slack/{HOOK_SECRET}"
format = "slack"
paths = ["api"]

[[daemon.alerts]]
name = "pager"
exec = ["{script}"]
on = ["crash-loop"]

[[daemon.alerts]]
name = "elsewhere"
webhook = "http://127.0.0.1:{hook.port}/other/{HOOK_SECRET}"
paths = ["db/*"]

[tree]
intensity = 1000
period = 2
{crasher(tmp_path, 6)}""",
    )
    try:
        d.wait_ready()
        wait_until(lambda: "recovered" in events_of(hook, "/json/"), 60, "the recovery alert")
        assert events_of(hook, "/json/") == ["crash-loop", "recovered"]  # 6 crashes: one episode, told once
        loop, recovered = hook.taken("/json/")
        assert loop["path"] == "api" and loop["severity"] == "critical" and loop["title"] == "api is crash-looping"
        assert "fatal: cannot reach the database" in loop["text"], loop
        assert loop["details"]["cause"] == "crash" and loop["details"]["count"] >= 3
        assert recovered["title"] == "api recovered" and recovered["severity"] == "info"
        ops = [r for r in hook.requests if r["path"].startswith("/json/")]
        assert all(r["headers"]["Authorization"] == f"Bearer {BEARER}" for r in ops)

        wait_until(lambda: len(hook.taken("/slack/")) == 2, 10, "the Slack-format pair")
        slack = hook.taken("/slack/")
        assert set(slack[0]) == {"text"} and slack[0]["text"].startswith("*api is crash-looping*\n"), slack
        assert slack[1]["text"].startswith("*api recovered*")
        assert hook.taken("/other/") == []  # its paths do not match api

        wait_until(log.exists, 10, "the command's alert")
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(a["event"], a["path"]) for a in lines] == [("crash-loop", "api")]  # its `on`: crash loops only

        doc = d.request("GET", "/alerts")[1]
        by_name = {r["name"]: r for r in doc["receivers"]}
        assert (by_name["ops"]["sent"], by_name["ops"]["failed"], by_name["ops"]["up"]) == (2, 0, True)
        assert by_name["pager"]["sent"] == 1 and by_name["elsewhere"]["up"] is None
        assert by_name["ops"]["receiver"] == f"http://127.0.0.1:{hook.port}/…"
        assert doc["crash_looping"] == []
        assert 'mcp_alerts_total{alert="ops",outcome="sent"} 2.0' in d.metrics()

        out = d.ctl("alerts")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].split()[:4] == ["name", "receiver", "on", "sent"]
        assert any(line.startswith("ops ") and " ok at " in line for line in out.stdout.splitlines()), out.stdout
    finally:
        d.stop()
    written = d.log_text() + json.dumps(doc) + out.stdout
    for secret in (HOOK_SECRET, BEARER, HOOK_SECRET.rsplit("/", maxsplit=1)[-1]):
        assert secret not in written


def test_a_receiver_down_then_failing_then_up_gets_the_alert_exactly_once(tmp_path: Path) -> None:
    hook = Hook()  # not listening yet: connections are refused
    d = Daemon(
        tmp_path,
        f"""
[[daemon.alerts]]
name = "ops"
webhook = "http://127.0.0.1:{hook.port}/hook/{HOOK_SECRET}"
on = ["crash-loop"]
timeout = 2

[tree]
intensity = 1000
period = 2
{crasher(tmp_path, 4)}""",
    )
    try:
        d.wait_ready()

        def ops() -> dict[str, Any]:
            receivers: list[dict[str, Any]] = d.request("GET", "/alerts")[1]["receivers"]
            return next(r for r in receivers if r["name"] == "ops")

        wait_until(lambda: ops()["up"] is False, 30, "a failed first attempt")
        assert "Cannot connect" in ops()["last_error"] or "refused" in ops()["last_error"].lower(), ops()
        assert HOOK_SECRET not in ops()["last_error"]
        hook.answers = [503]  # up, but failing once more
        hook.start()
        wait_until(lambda: hook.taken(), 30, "the alert delivered")
        assert [r["status"] for r in hook.requests] == [503, 200]  # the same alert: retried, not duplicated
        assert hook.requests[0]["body"] == hook.requests[1]["body"]
        assert wait_until(lambda: ops()["sent"] == 1 and ops()["up"], 10, "ops sent=1, up")
        assert ops()["failed"] == 0 and ops()["dropped"] == 0
        assert 'mcp_alert_receiver_up{alert="ops"' in d.metrics()
    finally:
        d.stop()
        hook.stop()
    assert HOOK_SECRET not in d.log_text()


def test_a_refused_reload_is_told_and_ctl_sends_a_test_alert(tmp_path: Path, hook: Hook) -> None:
    d = Daemon(
        tmp_path,
        f"""
[[daemon.alerts]]
name = "ops"
webhook = "http://127.0.0.1:{hook.port}/hook/{HOOK_SECRET}"
format = "ntfy"
on = ["reload-failed"]

[[daemon.alerts]]
name = "broken"
webhook = "http://127.0.0.1:{free_port()}/nobody/{HOOK_SECRET}"

[tree]
[[tree.children]]
id = "idle"
command = ["sleep", "1000"]
""",
    )
    try:
        d.wait_ready()
        good = d.config.read_text()
        d.config.write_text(good + "\n[[tree.children]]\nid = 3\n")
        out = d.ctl("reload")
        assert out.returncode == 78, out
        wait_until(lambda: hook.taken(), 20, "the reload-failed alert")
        (told,) = hook.taken()
        assert told["headers"]["Title"] == "reload failed" and told["headers"]["Priority"] == "4"
        assert "id" in told["text"] and "the running configuration is kept" in told["text"]

        d.config.write_text(good)
        out = d.ctl("alerts", "test", "ops")
        assert (out.returncode, out.stdout.strip()) == (0, "ops: test alert sent"), out
        assert hook.taken()[-1]["headers"]["Title"] == "mcp-supervisor test alert"
        out = d.ctl("alerts", "test", "broken")
        assert out.returncode == 1 and "broken: the test alert was not taken" in out.stderr, out
        assert HOOK_SECRET not in out.stderr
        out = d.ctl("alerts", "test", "nope")
        assert out.returncode == 1 and "no alert receiver named 'nope'" in out.stderr, out
        code, body, _ = d.request("POST", "/alerts/ops/test", token="")
        assert code == 401, body
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "a"\non = ["crash-loop", "bogus"]\nexec = ["true"]', "unknown event 'bogus'"),
        ('name = "a"\nexec = ["true"]\nwebhook = "http://x/y"', 'needs exactly one of "webhook"'),
        ('name = "a"', 'needs exactly one of "webhook"'),
        ('name = "a"\nwebhook = "ftp://host/SECRETSECRET"', "must be an http:// or https:// URL"),
        ('name = "a"\nwebhook = "http://h/x"\nformat = "teams"', "must be one of json, slack, discord, ntfy"),
        ('name = "a"\nexec = ["true"]\nformat = "slack"', "applies to a webhook"),
        ('name = "a"\nwebhook = "http://h/x"\nrate = 0', "rate: must be an integer 1..10000"),
        ('name = "a"\nwebhook = "http://h/x"\nheaders = { "Bad Name" = "v" }', "is not a valid HTTP header name"),
        ('name = "a b"\nwebhook = "http://h/x"', "must be a name of letters"),
    ],
)
def test_bad_alert_tables_are_refused_with_the_key_and_what_to_do(table: str, message: str, tmp_path: Path) -> None:
    from mcp_supervisor.config import ConfigError, parse_config

    text = f'[daemon]\n[[daemon.alerts]]\n{table}\n[tree]\n[[tree.children]]\nid = "x"\ncommand = ["true"]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(text, "supervision.toml")
    assert message in str(e.value) and "daemon.alerts[0]" in str(e.value)
    assert "SECRETSECRET" not in str(e.value)


def test_two_alert_tables_with_one_name_are_refused() -> None:
    from mcp_supervisor.config import ConfigError, parse_config

    one = '[[daemon.alerts]]\nname = "a"\nexec = ["true"]\n'
    text = f'[daemon]\n{one}{one}[tree]\n[[tree.children]]\nid = "x"\ncommand = ["true"]\n'
    with pytest.raises(ConfigError, match=r"daemon.alerts\[1\].name: 'a' is declared twice"):
        parse_config(text, "supervision.toml")
