"""``include``: conf.d files that add children to the root or to a named supervisor, read in sorted order, errors
naming the included file and line, `check-config` listing them, and a reload that re-reads them (a real daemon)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_supervisor.config import ConfigError, load_config
from mcp_supervisor.core import ProcessSpec, SupervisorSpec
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

MAIN = """include = ["conf.d/*.toml", "extra.toml"]
[tree]
[[tree.children]]
id = "edge"
children = []
[[tree.children]]
id = "db"
command = ["sleep", "100"]
"""


def setup(tmp: Path) -> Path:
    (tmp / "conf.d").mkdir()
    (tmp / "conf.d" / "20-jobs.toml").write_text('[[children]]\nid = "jobs"\ncommand = ["sleep", "1"]\ninstances = 2\n')
    (tmp / "conf.d" / "10-edge.toml").write_text(
        'parent = "edge"\n[[children]]\nid = "proxy"\ncommand = ["sleep", "2"]\nenv_file = "proxy.env"\n'
    )
    (tmp / "conf.d" / "proxy.env").write_text("UPSTREAM=db\n")
    (tmp / "conf.d" / "notes.txt").write_text("not a toml file: not matched\n")
    (tmp / "extra.toml").write_text('[[children]]\nid = "extra"\ncommand = ["sleep", "3"]\n')
    cfg = tmp / "supervision.toml"
    cfg.write_text(MAIN)
    return cfg


def test_included_files_add_children_in_sorted_order_to_their_parent(tmp_path: Path) -> None:
    cfg = load_config(str(setup(tmp_path)))
    assert [c.id for c in cfg.tree.children] == ["edge", "db", "jobs#0", "jobs#1", "extra"]
    edge = cfg.tree.children[0]
    assert isinstance(edge, SupervisorSpec) and [c.id for c in edge.children] == ["proxy"]
    proxy = edge.children[0]
    assert isinstance(proxy, ProcessSpec) and proxy.env == {"UPSTREAM": "db"}  # its env_file: beside its file
    assert cfg.includes == tuple(
        str(tmp_path / p) for p in ("conf.d/10-edge.toml", "conf.d/20-jobs.toml", "extra.toml")
    )
    assert set(cfg.entries) >= {"edge/proxy", "jobs#0", "extra"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "30-dup.toml",
            '[[children]]\nid = "db"\ncommand = ["true"]\n',
            "30-dup.toml:2: children[0].id: 'db' is already a child of the root",
        ),
        (
            "30-p.toml",
            'parent = "nowhere"\n[[children]]\nid = "x"\ncommand = ["true"]\n',
            "30-p.toml:1: parent: 'nowhere' is not a supervisor",
        ),
        ("30-d.toml", '[daemon]\nadmin = "127.0.0.1:1"\n', "30-d.toml:1: daemon: an included file adds children only"),
        (
            "30-k.toml",
            '[[children]]\nid = "x"\ncommand = ["true"]\nbogus = 1\n',
            "30-k.toml:4: children[0].bogus: not valid for an OS process",
        ),
        ("30-t.toml", "[[children]\n", "30-t.toml:1: not valid TOML"),
    ],
)
def test_an_error_names_the_included_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    cfg = setup(tmp_path)
    (tmp_path / "conf.d" / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert message in str(e.value)


def test_a_missing_plain_path_is_an_error_an_empty_glob_a_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "supervision.toml"
    cfg.write_text('include = ["gone.toml"]\n[tree]\n')
    with pytest.raises(ConfigError, match=r"include: cannot read .*gone\.toml: No such file"):
        load_config(str(cfg))
    cfg.write_text('include = ["conf.d/*.toml"]\n[tree]\n')
    assert load_config(str(cfg)).warnings == ("include: conf.d/*.toml matches no file",)


def test_check_config_lists_what_it_included(tmp_path: Path) -> None:
    setup(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mcp_supervisor.cli", "check-config", "supervision.toml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [f"  included {tmp_path}/conf.d/10-edge.toml",
                                            f"  included {tmp_path}/conf.d/20-jobs.toml",
                                            f"  included {tmp_path}/extra.toml"]  # fmt: skip


@pytest.mark.realtime
def test_a_reload_rereads_the_included_files(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.toml").write_text('[[children]]\nid = "a"\ncommand = ["sleep", "1000"]\n')
    d = Daemon(tmp_path, "[tree]\n", head=f'include = ["{tmp_path}/conf.d/*.toml"]\n')
    try:
        d.wait_ready()
        assert d.node("a")["state"] == "running"
        (tmp_path / "conf.d" / "b.toml").write_text('[[children]]\nid = "b"\ncommand = ["sleep", "1000"]\n')
        out = d.ctl("reload", "--wait")
        assert out.returncode == 0 and "b: added" in out.stdout, out
        wait_until(lambda: d.node("b")["state"] == "running", 10, "b running")
        (tmp_path / "conf.d" / "a.toml").unlink()
        out = d.ctl("reload", "--wait")
        assert out.returncode == 0 and "a: removed" in out.stdout, out
    finally:
        d.stop()
