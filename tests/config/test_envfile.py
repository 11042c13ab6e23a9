"""``env_file``: dotenv files on a child and in ``[daemon]`` — the syntax people write, located errors, the order of
precedence, redaction by key name, and a reload that re-reads them (a real daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_supervisor.config import ConfigError, load_config
from mcp_supervisor.core import ProcessSpec
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

APP_ENV = """\
# the app's settings
export PORT=8000
GREETING="hello world"   # a comment after a quoted value
LITERAL='${PORT} stays'
URL_BASE=http://localhost:${PORT}/x
DEFAULTED=${NOPE_NOT_SET:-fallback}
DB_PASSWORD=s3cr3t-passw0rd-value
MULTI="line one
line two"
EMPTY=
"""


def write(tmp: Path, child_extra: str, daemon_extra: str = "") -> Path:
    cfg = tmp / "supervision.toml"
    cfg.write_text(f"""[daemon]
{daemon_extra}
[tree]
[[tree.children]]
id = "app"
command = ["sleep", "100"]
{child_extra}
""")
    return cfg


def env_of(cfg: Path) -> dict[str, str]:
    spec = load_config(str(cfg)).tree.children[0]
    assert isinstance(spec, ProcessSpec)
    return dict(spec.env)


def test_the_dotenv_syntax_people_write(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text(APP_ENV)
    env = env_of(write(tmp_path, 'env_file = "app.env"'))
    assert env == {"PORT": "8000", "GREETING": "hello world", "LITERAL": "${PORT} stays",
                   "URL_BASE": "http://localhost:8000/x", "DEFAULTED": "fallback",
                   "DB_PASSWORD": "s3cr3t-passw0rd-value", "MULTI": "line one\nline two", "EMPTY": ""}  # fmt: skip


def test_precedence_daemon_files_then_the_childs_files_in_order_then_its_env(tmp_path: Path) -> None:
    (tmp_path / "all.env").write_text("A=daemon\nB=daemon\nC=daemon\nD=daemon\n")
    (tmp_path / "one.env").write_text("B=one\nC=one\nD=one\n")
    (tmp_path / "two.env").write_text("C=two\nD=two\n")
    cfg = write(tmp_path, 'env_file = ["one.env", "two.env"]\nenv = { D = "table" }', 'env_file = "all.env"')
    assert env_of(cfg) == {"A": "daemon", "B": "one", "C": "two", "D": "table"}


def test_values_are_secret_by_their_names_and_the_table_env_stays_secret(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text(APP_ENV)
    secrets = load_config(
        str(write(tmp_path, 'env_file = "app.env"\nenv = { TABLE_VALUE = "opaque-value-123" }'))
    ).secrets
    assert "s3cr3t-passw0rd-value" in secrets and "opaque-value-123" in secrets
    assert "hello world" not in secrets and "fallback" not in secrets


def test_a_relative_path_is_relative_to_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.env").write_text("WHERE=conf\n")
    cfg = write(tmp_path / "conf", 'env_file = "app.env"')
    monkeypatch.chdir("/")
    assert env_of(cfg) == {"WHERE": "conf"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("GOOD=1\nBAD LINE here\n", "app.env:2: cannot parse this line"),
        ('A=1\nB="unterminated\n', "app.env:2: cannot parse the line of 'B'"),
    ],
)
def test_a_line_it_cannot_parse_is_located_and_never_quoted(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "app.env").write_text(content)
    with pytest.raises(ConfigError) as e:
        load_config(str(write(tmp_path, 'env_file = "app.env"')))
    assert (
        message in str(e.value) and "tree.children[0].env_file" in str(e.value) and "unterminated" not in str(e.value)
    )


def test_a_missing_file_or_a_bad_value_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env_file: cannot read .*/nope\.env: No such file"):
        load_config(str(write(tmp_path, 'env_file = "nope.env"')))
    with pytest.raises(ConfigError, match=r"env_file: must be a path or an array of paths"):
        load_config(str(write(tmp_path, "env_file = 3")))
    with pytest.raises(ConfigError, match=r"daemon.env_file: cannot read"):
        load_config(str(write(tmp_path, "", 'env_file = "gone.env"')))


@pytest.mark.realtime
def test_a_reload_rereads_the_file_and_restarts_only_the_children_it_changed(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("COLOUR=blue\n")
    (tmp_path / "other.env").write_text("SHAPE=round\n")
    d = Daemon(
        tmp_path,
        f"""
[tree]
[[tree.children]]
id = "app"
command = ["sh", "-c", "echo colour=$COLOUR; exec sleep 1000"]
env_file = "{tmp_path}/app.env"
[[tree.children]]
id = "other"
command = ["sh", "-c", "echo shape=$SHAPE; exec sleep 1000"]
env_file = "{tmp_path}/other.env"
""",
    )
    try:
        d.wait_ready()
        wait_until(lambda: "colour=blue" in d.log_text(), 10, "the first value")
        pids = d.pids("app", "other")
        (tmp_path / "app.env").write_text("COLOUR=green\n")
        out = d.ctl("reload", "--wait")
        assert out.returncode == 0 and "app" in out.stdout, out
        wait_until(lambda: "colour=green" in d.log_text(), 10, "the new value")
        assert d.pids("other") == {"other": pids["other"]} and d.pids("app")["app"] != pids["app"]
    finally:
        d.stop()
