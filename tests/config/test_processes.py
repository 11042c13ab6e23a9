"""The OS-process keys of the config: instances, held sockets, limits, user, stop signal, memory, liveness."""

from __future__ import annotations

import signal

import pytest

from mcp_supervisor.config import ConfigError, parse_config
from mcp_supervisor.core import Liveness, ProcessSpec, ReadyTCP

BASE = """
[[daemon.sockets]]
name = "http"
listen = "127.0.0.1:8080"
backlog = 512

[[daemon.sockets]]
name = "ctl"
listen = "unix:/run/app/ctl.sock"
mode = "660"

[tree]
[[tree.children]]
id = "web"
command = ["app", "--port", "90{instance}"]
env = { SLOT = "{instance}" }
ready = { tcp = "127.0.0.1:90{instance}" }
live = { http = "http://127.0.0.1:90{instance}/healthz", every = 5, timeout = 2, failures = 3 }
instances = 3
reload = "rolling"
sockets = ["http", "ctl"]
limits = { nofile = 4096, core = 0, memory = "512M" }
user = "nobody"
umask = "027"
stop_signal = "SIGINT"
max_memory = "300M"
"""


def test_instances_expand_and_every_key_reaches_the_spec() -> None:
    cfg = parse_config(BASE, "f.toml")
    assert [s.name for s in cfg.daemon.sockets] == ["http", "ctl"]
    assert cfg.daemon.sockets[0].backlog == 512 and cfg.daemon.sockets[1].mode == 0o660
    specs = cfg.tree.children
    assert [s.id for s in specs] == ["web#0", "web#1", "web#2"]
    two = specs[2]
    assert isinstance(two, ProcessSpec)
    assert list(two.command) == ["app", "--port", "902"] and two.env == {"SLOT": "2"}
    assert two.ready == ReadyTCP(host="127.0.0.1", port=902)
    assert two.live == Liveness(http="http://127.0.0.1:902/healthz", every=5, timeout=2, failures=3)
    assert two.sockets == ("http", "ctl") and two.user == "nobody" and two.umask == 0o027
    assert two.limits == {"nofile": 4096, "core": 0, "memory": 512 * 2**20}
    assert two.stop_signal == signal.SIGINT and two.max_memory == 300 * 2**20
    replicas = cfg.replicas["web"]
    assert replicas.instances == 3 and replicas.rolling and replicas.make(7).id == "web#7"
    assert set(cfg.entries) >= {"web#0", "web#1", "web#2"}


def test_changing_instances_does_not_change_an_instance_s_fingerprint() -> None:
    a = parse_config(BASE, "f.toml")
    b = parse_config(BASE.replace("instances = 3", "instances = 5"), "f.toml")
    assert a.entries["web#0"].fingerprint == b.entries["web#0"].fingerprint and "web#4" in b.entries


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('sockets = ["http", "ctl"]', 'sockets = ["db"]',
         "tree.children[0].sockets[0]: 'db' is not a [[daemon.sockets]] name (ctl, http)"),
        ("instances = 3", "instances = 5000", "tree.children[0].instances: must be an integer 0..1024, got 5000"),
        ('reload = "rolling"', 'reload = "fast"', 'tree.children[0].reload: must be "restart" or "rolling"'),
        ('stop_signal = "SIGINT"', 'stop_signal = "SIGNOPE"', "tree.children[0].stop_signal: must be a signal name"),
        ('memory = "512M"', 'memory = "lots"', "tree.children[0].limits.memory: must be a size in bytes"),
        ("nofile = 4096", "files = 4096", "tree.children[0].limits.files: unknown key"),
        ('max_memory = "300M"', "max_memory = -1", "tree.children[0].max_memory: must be a size in bytes"),
        ('umask = "027"', 'umask = "999"', 'tree.children[0].umask: must be octal like "027"'),
        ("every = 5,", "every = 0,", "tree.children[0].live.every: must be > 0"),
        ('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:99999"', "daemon.sockets[0].listen: port must be 1..65535"),
        ('mode = "660"', 'mode = "abc"', 'daemon.sockets[1].mode: must be a file mode like "660"'),
        ('name = "ctl"', 'name = "http"', "daemon.sockets[1].name: 'http' is declared twice"),
        ('id = "web"', 'id = "web#1"', "tree.children[0].id: must not contain '#'"),
    ],
)  # fmt: skip
def test_bad_values_are_located_errors(old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.replace(old, new, 1), "f.toml")
    assert message in str(e.value)
    assert str(e.value).startswith("f.toml:")


def test_reload_mode_needs_instances() -> None:
    text = '[tree]\n[[tree.children]]\nid = "w"\ncommand = ["x"]\nreload = "rolling"\n'
    with pytest.raises(ConfigError, match="reload: applies only to a child with instances"):
        parse_config(text, "f.toml")
