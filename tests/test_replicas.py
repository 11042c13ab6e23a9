"""Zero-downtime OS services through the daemon: held sockets, replicas, scaling, rolling restarts and reloads,
under a real load loop on loopback."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

SERVER = str(Path(__file__).parents[1] / "examples" / "socket_activated_server.py")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def start(daemons: list[Daemon], tmp: Path, toml: str) -> Daemon:
    d = Daemon(tmp, toml)
    daemons.append(d)
    d.wait_ready()
    return d


def server_toml(port: int, *, held: bool, instances: int | None = None, extra: str = "", tmp: Path) -> str:
    sockets = f'[[daemon.sockets]]\nname = "web"\nlisten = "127.0.0.1:{port}"\n\n' if held else ""
    args = f'"{sys.executable}", "{SERVER}", "--ready-file", "{tmp}/ready-{{instance}}"'
    if not held:
        args += f', "--port", "{port}"'
    ready = (
        f'ready = {{ command = ["sh", "-c", "test -e {tmp}/ready-{{instance}} && test ! -e {tmp}/block-{{instance}}"]'
    )
    ready += ", timeout = 5 }"
    out = sockets + '[tree]\nstrategy = "one_for_one"\nintensity = 100\nperiod = 5\n\n[[tree.children]]\nid = "web"\n'
    out += f"command = [{args}]\n{ready}\n" + ('sockets = ["web"]\n' if held else "")
    if instances is not None:
        out += f"instances = {instances}\n"
    return out + extra


class Load:
    """Requests one after another on loopback from a thread, each with a generous timeout; counts the outcomes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.pids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status == 200:
                    self.ok += 1
                    self.pids.add(body)
                else:
                    self.failed.append(f"HTTP {resp.status}")
            except OSError as e:
                self.failed.append(type(e).__name__)
            finally:
                conn.close()

    def __enter__(self) -> Load:
        self._thread.start()
        wait_until(lambda: self.ok > 0 or self.failed, what="a first answer")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def more(self, n: int = 5) -> None:
        """Wait until ``n`` more requests have been answered (the load really runs across what follows)."""
        target = self.ok + n
        wait_until(lambda: self.ok >= target, what=f"{n} more answers")


def restart(d: Daemon, path: str, rolling: bool = False) -> tuple[int, Any]:
    code, doc, _ = d.request("POST", f"/children/{quote(path, safe='/')}/restart" + ("?rolling=1" if rolling else ""))
    return code, doc


def instance_pids(d: Daemon, n: int) -> dict[str, int]:
    return {f"web#{i}": d.node(f"web#{i}")["pid"] for i in range(n)}


def ten_restarts_under_load(daemons: list[Daemon], tmp_path: Path, *, held: bool) -> Load:
    port = free_port()
    d = start(daemons, tmp_path, server_toml(port, held=held, tmp=tmp_path))
    with Load(port) as load:
        for _ in range(10):
            code, doc = restart(d, "web")
            assert code == 200, doc
            load.more(3)
    return load


def test_restarts_behind_a_held_socket_fail_no_request(daemons: list[Daemon], tmp_path: Path) -> None:
    load = ten_restarts_under_load(daemons, tmp_path, held=True)
    assert load.failed == [] and load.ok >= 30
    assert len(load.pids) >= 10  # every incarnation answered some


def test_the_same_restarts_without_a_held_socket_refuse_requests(daemons: list[Daemon], tmp_path: Path) -> None:
    load = ten_restarts_under_load(daemons, tmp_path, held=False)
    assert load.failed, "without a held socket a restart must refuse some connections (the test can fail)"
    assert set(load.failed) <= {"ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected"}


def test_a_rolling_restart_and_a_rolling_reload_of_4_instances_fail_no_request(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    port = free_port()
    toml = server_toml(port, held=True, instances=4, tmp=tmp_path, extra='reload = "rolling"\n')
    d = start(daemons, tmp_path, toml)
    with Load(port) as load:
        before = instance_pids(d, 4)
        code, doc = restart(d, "web", rolling=True)
        assert code == 200 and doc["ok"] is True, doc
        assert doc["replaced"] == ["web#0", "web#1", "web#2", "web#3"]
        after = instance_pids(d, 4)
        assert all(after[p] != before[p] for p in before)
        load.more(10)
        d.write(toml + 'env = { GENERATION = "2" }\n')
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and doc["ok"], doc
        assert [c["path"] for c in doc["changes"]] == ["web#0", "web#1", "web#2", "web#3"]
        reloaded = instance_pids(d, 4)
        assert all(reloaded[p] != after[p] for p in after)
        load.more(10)
    assert load.failed == [] and load.ok >= 20


def test_a_roll_stops_at_the_instance_that_fails_readiness(daemons: list[Daemon], tmp_path: Path) -> None:
    port = free_port()
    d = start(daemons, tmp_path, server_toml(port, held=True, instances=4, tmp=tmp_path))
    before = instance_pids(d, 4)
    (tmp_path / "block-2").touch()
    code, doc = restart(d, "web", rolling=True)
    assert code == 409 and doc["ok"] is False, doc
    assert doc["replaced"] == ["web#0", "web#1"] and doc["failed"] == "web#2" and doc["untouched"] == ["web#3"]
    assert "start timeout" in doc["error"]
    assert d.node("web#3")["pid"] == before["web#3"] and d.node("web#3")["state"] == "running"
    assert d.node("web#2")["state"] == "stopped"
    (tmp_path / "block-2").unlink()
    cli = [
        sys.executable,
        "-m",
        "mcp_supervisor.cli",
        "ctl",
        "--admin",
        d.admin,
        "--token-file",
        str(d.token_file),
    ]
    done = subprocess.run([*cli, "restart", "--rolling", "web"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert d.node("web#2")["state"] == "running"
    (tmp_path / "block-3").touch()
    done = subprocess.run([*cli, "restart", "--rolling", "web"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("web: rolling restart stopped at web#3: ")
    assert "replaced: web#0, web#1, web#2; untouched: none" in done.stdout
    done = subprocess.run([*cli, "scale", "web", "2"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("web: 2 instances (started none; stopped web#3"), done


def test_scale_up_and_down_and_a_reload_with_new_instances_touch_no_other_instance(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    port = free_port()
    toml = server_toml(port, held=True, instances=2, tmp=tmp_path)
    d = start(daemons, tmp_path, toml)
    first = instance_pids(d, 2)
    code, doc, _ = d.request("POST", "/children/web/scale?instances=4")
    assert code == 200 and doc["started"] == ["web#2", "web#3"], doc
    assert instance_pids(d, 4)["web#0"] == first["web#0"]
    code, doc, _ = d.request("POST", "/children/web/scale?instances=1")
    assert code == 200 and doc["stopped"] == ["web#3", "web#2", "web#1"], doc
    assert [c["id"] for c in d.status()["children"]] == ["web#0"]
    d.write(toml.replace("instances = 2", "instances = 3"))
    code, doc, _ = d.request("POST", "/reload?wait=1")
    assert code == 200 and doc["ok"], doc
    assert sorted(c["path"] for c in doc["changes"]) == ["web#1", "web#2"]
    assert d.node("web#0")["pid"] == first["web#0"]
    code, doc = restart(d, "web#1")  # an instance by its path ('#' sent as %23)
    assert code == 200 and doc["child"]["path"] == "web#1", doc
    code, doc, _ = d.request("POST", "/children/nope/scale?instances=2")
    assert code == 404
    code, doc, _ = d.request("POST", "/children/web/scale?instances=many")
    assert code == 400


def test_a_child_naming_an_undeclared_socket_is_a_config_error(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[tree]\n[[tree.children]]\nid = "w"\ncommand = ["true"]\nsockets = ["web"]\n')
    try:
        assert d.proc.wait(30) == 78
        assert "tree.children[0].sockets[0]: 'web' is not a [[daemon.sockets]] name" in d.log_text()
    finally:
        d.stop()


def test_a_socket_activated_daemon_takes_its_socket_from_systemd(daemons: list[Daemon], tmp_path: Path) -> None:
    """As systemd would: the listening socket at fd 3 with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID = our pid."""
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen(16)
    port = inherited.getsockname()[1]
    unused = free_port()  # what the config says: not bound, since systemd's socket of that name is used
    fd = inherited.fileno()
    moves = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
    activate = ("bash", "-c", f'{moves}export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; exec "$@"', "activate")
    d = Daemon(tmp_path, server_toml(unused, held=True, tmp=tmp_path), prefix=activate, pass_fds=(fd,))
    daemons.append(d)
    inherited.close()  # the daemon holds it now
    d.wait_ready()
    pid = d.node("web")["pid"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/")
    assert conn.getresponse().read().decode() == str(pid)
    conn.close()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", unused)) != 0  # nothing bound the configured address
