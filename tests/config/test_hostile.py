"""Bad input never crashes anything: every config is valid or a located, one-line ConfigError that echoes no
secret — never a traceback, never a 500 — in process and through check-config, run, SIGHUP and POST /reload."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings

from mcp_supervisor.config import ConfigError
from mcp_supervisor.config import parse_config as _parse_config
from mcp_supervisor.core import ChildContext, SupervisorSpec
from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon
from tests.config.hostile import ENV, SECRET, documents, render

FILE = "h.toml"
LOCATED = re.compile(rf"^{re.escape(FILE)}(:\d+)?: \S")
EXAMPLES = int(os.environ.get("MCP_HYPOTHESIS_EXAMPLES", "2000"))
ROOT = Path(__file__).resolve().parents[2]

parse_config = partial(_parse_config, workers=BUILTIN_WORKERS)  # the daemon's built-in worker names


def outcome(text: str) -> str | None:
    """None when valid, else the error message (which the assertions below hold to the contract)."""
    try:
        cfg = parse_config(text, FILE, env=ENV)
    except ConfigError as e:
        return str(e)
    assert isinstance(cfg.tree, SupervisorSpec)
    return None


def check_message(msg: str) -> None:
    assert LOCATED.match(msg), f"not located: {msg!r}"
    assert SECRET not in msg, f"secret echoed: {msg!r}"
    assert "\n" not in msg and "Traceback" not in msg, msg
    # the catch-all guard must never be what answered: every failure deserves its own message
    assert "cannot be loaded (" not in msg, f"an unforeseen failure reached the guard: {msg}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(documents())
@pytest.mark.timeout(300)  # MCP_HYPOTHESIS_EXAMPLES examples (2000 by default), in-process
def test_the_loader_accepts_or_rejects_with_a_located_message(doc: dict[str, object]) -> None:
    msg = outcome(render(doc))
    if msg is not None:
        check_message(msg)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[tree]\n[[tree.children]]\nid = "db"\nworker = "postgres"\nconfig = { port = inf }\n',
            "h.toml:5: tree.children[0].config.port: must be an integer 1..65535, got inf",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "cache"\nworker = "redis"\n[tree.children.config]\ndb = nan\n',
            "h.toml:6: tree.children[0].config.db: must be an integer 0..2147483647, got nan",
        ),
        (
            "[tree]\nx = " + "{ a = " * 3000 + "1" + " }" * 3000 + "\n",
            "h.toml:2: tables or arrays nest deeper than 64 levels",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "p"\ncommand = ["true"]\nenv = { API_KEY = "'
            + SECRET
            + '", RETRIES = 3 }\n',
            "h.toml:5: tree.children[0].env.RETRIES: must be a string, got an integer",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "db"\nworker = "postgres"\nconfig = { password = 12.5 }\n',
            "h.toml:5: tree.children[0].config.password: must be a string, got a number",
        ),
        ('[tree]\nid = "${SET"\n', 'h.toml:2: tree.id: unterminated "${" (write "$$" for a literal "$")'),
        ('[tree]\nid = "${1A}"\n', 'h.toml:2: tree.id: "${1A}" is not a variable reference'),
        (
            '[tree]\n[[tree.children]]\nid = "s"\nworker = "s3"\nconfig = { bucket = "bkt", part_size = 1e300 }\n',
            "tree.children[0].config.part_size: must be an integer 5242880..5368709120, got 1e+300",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "h"\nworker = "health"\nconfig = { system = { rss_warn_mb = -0.0 } }\n',
            "tree.children[0].config.system.rss_warn_mb: must be a number > 0 and <= 1000000000000, got -0.0",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "db"\nworker = "postgres"\nconfig = { password_file = "/dev/zero" }\n',
            "tree.children[0].config.password_file: cannot read '/dev/zero': not a regular file",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "t"\nworker = "telemetry"\nconfig = { queue = 2e70 }\n',
            "tree.children[0].config.queue: must be an integer 1..10000000, got 2e+70",
        ),
        (
            '[tree]\n[[tree.children]]\nid = "x"\nworker = "json:loads"\n',
            "h.toml:2: tree.children[0].config: the JSON object must be str, bytes or bytearray, not dict",
        ),
    ],
)
def test_hostile_values_get_the_exact_message(toml: str, expected: str) -> None:
    msg = outcome(toml)
    assert msg is not None and expected in msg, msg
    check_message(msg)


def test_a_factory_that_fails_unexpectedly_names_its_child() -> None:
    def broken(_: Mapping[str, Any]) -> Callable[[ChildContext[Any]], Awaitable[None]]:
        raise OverflowError("cannot convert float infinity to integer")

    with pytest.raises(ConfigError) as err:
        parse_config(
            '[tree]\n[[tree.children]]\nid = "w"\nworker = "mine"\n', FILE, env=ENV, factories={"mine": broken}
        )
    assert str(err.value) == (
        "h.toml:2: tree.children[0].config: the 'mine' worker rejected its settings "
        "(OverflowError: cannot convert float infinity to integer)"
    )


# -- the same files through the real entrances -------------------------------------------------------------------
CASES = {
    "port_inf": ('[[tree.children]]\nid = "db"\nworker = "postgres"\nconfig = { port = inf }\n', "config.port: must be an integer 1..65535, got inf"),
    "db_nan": ('[[tree.children]]\nid = "cache"\nworker = "redis"\nconfig = { db = nan }\n', "config.db: must be an integer 0..2147483647, got nan"),
    "deep": ("x = " + "{ a = " * 3000 + "1" + " }" * 3000 + "\n", "tables or arrays nest deeper than 64 levels"),
}  # fmt: skip
BASE = '[tree]\nintensity = 10\n[[tree.children]]\nid = "a"\ncommand = ["sleep", "1000"]\n'


def case_config(case: str) -> str:
    body = CASES[case][0]
    return BASE.replace("[tree]\n", "[tree]\n" + body, 1) if case == "deep" else BASE + body


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_supervisor.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.mark.realtime
@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_and_run_exit_78_with_the_message(tmp_path: Path, case: str) -> None:
    expected = CASES[case][1]
    path = tmp_path / "bad.toml"
    path.write_text('[daemon]\nlog_format = "json"\n' + case_config(case))
    checked = cli("check-config", str(path), cwd=tmp_path)
    assert checked.returncode == 78 and expected in checked.stderr, checked
    ran = cli("run", "--config", str(path), cwd=tmp_path)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 78 and expected in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, BASE)
    d.wait_ready()
    yield d
    assert d.stop() == 0


@pytest.mark.realtime
def test_sighup_and_post_reload_answer_422_and_change_nothing(daemon: Daemon) -> None:
    pid = daemon.node("a")["pid"]
    for case in sorted(CASES):
        expected = CASES[case][1]
        daemon.write(case_config(case))
        code, result, _ = daemon.request("POST", "/reload?wait=1")
        assert code == 422 and result["ok"] is False and expected in result["error"], result
        seen = len(daemon.drain_notify())
        daemon.signal(signal.SIGHUP)
        msg = daemon.wait_notify("READY=1", after=seen)
        assert "STATUS=reload failed, running the previous config" in msg and expected in msg, msg
        assert daemon.node("a")["pid"] == pid
    log = daemon.log_text()
    assert "Traceback" not in log
    failures = [e for e in daemon.log_events() if e.get("event") == "reload failed; keeping the running configuration"]
    assert len(failures) == 2 * len(CASES)


# -- a hypothesis sample through the CLI and a running daemon ------------------------------------------------------
def invalid(doc: dict[str, object]) -> str:
    text = render(doc)
    assume(outcome(text) is not None)
    return text


# through real processes: no shrinking (each step would be a process); a failure prints its example as generated
SAMPLE = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), phases=[Phase.generate])


@settings(SAMPLE, max_examples=12)
@given(documents())
@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_a_sample_through_check_config_exits_78_with_a_located_message(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, object]
) -> None:
    text = invalid(doc)
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / FILE).write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor.cli", "check-config", FILE],
        capture_output=True, text=True, cwd=tmp, timeout=60, env={**os.environ, **ENV},
    )  # fmt: skip
    assert done.returncode == 78, done
    msg = done.stderr.strip().removeprefix("invalid config: ")
    check_message(msg)
    assert msg == outcome(text)


@pytest.fixture(scope="module")
def sample_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("daemon"), BASE, env=ENV)
    d.wait_ready()
    yield d
    assert d.stop() == 0
    assert "Traceback" not in d.log_text()


@settings(SAMPLE, max_examples=25)
@given(documents())
@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_a_sample_through_post_reload_answers_422_and_keeps_the_children(
    sample_daemon: Daemon, doc: dict[str, object]
) -> None:
    text = invalid(doc)
    pid = sample_daemon.node("a")["pid"]
    sample_daemon.config.write_text(text)
    code, result, _ = sample_daemon.request("POST", "/reload?wait=1")
    assert code == 422 and result["ok"] is False, result
    msg = result["error"]
    assert msg.startswith(str(sample_daemon.config))
    check_message(FILE + msg.removeprefix(str(sample_daemon.config)))
    assert wait_until(lambda: sample_daemon.node("a")["pid"]) == pid
