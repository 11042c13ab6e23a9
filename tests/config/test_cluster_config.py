"""The ``[cluster]`` table and ``singleton`` children."""

from __future__ import annotations

import pytest

from mcp_supervisor.config import ConfigError, parse_config

BASE = """
[cluster]
dsn = "postgresql://fleet:hunter2hunter2@db.internal/fleet"
node = "node-a"
lease = 10
heartbeat = 2

[tree]
[[tree.children]]
id = "local"
command = ["sleep", "1000"]

[[tree.children]]
id = "scheduler"
command = ["scheduler"]
singleton = true
prefer = ["node-a"]
shutdown = 3
"""


def test_singletons_are_kept_out_of_the_tree_and_the_dsn_password_is_a_secret() -> None:
    cfg = parse_config(BASE, "f.toml")
    assert cfg.cluster is not None and cfg.cluster.node == "node-a" and cfg.cluster.heartbeat == 2
    assert [c.id for c in cfg.tree.children] == ["local"]
    assert cfg.singletons["scheduler"].prefer == ("node-a",) and cfg.singletons["scheduler"].parent == ""
    assert "hunter2hunter2" in cfg.secrets
    assert "hunter2" not in repr(cfg.cluster)


def test_the_heartbeat_defaults_to_a_third_of_the_lease() -> None:
    cfg = parse_config(BASE.replace("heartbeat = 2\n", ""), "f.toml")
    assert cfg.cluster is not None and cfg.cluster.heartbeat == pytest.approx(10 / 3)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[cluster]", "[clusterx]", "clusterx: unknown key"),
        ("lease = 10", "lease = 0", "cluster.lease: must be a number of seconds 1..3600"),
        ("heartbeat = 2", "heartbeat = 6", "cluster.heartbeat: must be 0.05..lease/2 seconds"),
        ('dsn = "postgresql', 'dsn = "mysql', "cluster.dsn: must be a postgresql:// URL"),
        ("shutdown = 3", "shutdown = 8", "tree.children[1].shutdown: a singleton must stop well within its lease"),
        ("shutdown = 3", 'shutdown = "infinity"', "a singleton must stop well within its lease"),
        ("singleton = true", 'singleton = "yes"', "tree.children[1].singleton: must be true or false"),
        ('node = "node-a"', 'node = ""', "cluster.node: must be a printable name"),
    ],
)  # fmt: skip
def test_bad_cluster_settings_are_located_errors(old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.replace(old, new, 1), "f.toml")
    assert message in str(e.value)
    assert "hunter2" not in str(e.value)


def test_a_singleton_needs_a_cluster() -> None:
    text = '[tree]\n[[tree.children]]\nid = "s"\ncommand = ["x"]\nsingleton = true\n'
    with pytest.raises(ConfigError, match=r"singleton: needs a \[cluster\] table"):
        parse_config(text, "f.toml")


def test_nodes_says_which_nodes_may_hold_a_singleton_with_patterns() -> None:
    cfg = parse_config(
        BASE.replace('prefer = ["node-a"]', 'nodes = ["node-a", "edge-*"]\nprefer = ["node-a"]'), "f.toml"
    )
    assert cfg.singletons["scheduler"].nodes == ("node-a", "edge-*")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'nodes = ["node-b"]',
            r"tree\.children\[1\]\.prefer: names 'node-a', which nodes = \['node-b'\] does not allow",
        ),
        ("nodes = []", r"tree\.children\[1\]\.nodes: names no node"),
        ('nodes = "node-a"', r"tree\.children\[1\]\.nodes: must be an array of node names or patterns"),
    ],
)
def test_bad_nodes_are_named(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE.replace('prefer = ["node-a"]', f'{line}\nprefer = ["node-a"]'), "f.toml")


def test_nodes_applies_only_to_a_singleton() -> None:
    text = BASE.replace('command = ["sleep", "1000"]', 'command = ["sleep", "1000"]\nnodes = ["a"]', 1)
    with pytest.raises(ConfigError, match=r"tree\.children\[0\]\.nodes: applies only to a singleton"):
        parse_config(text, "f.toml")
