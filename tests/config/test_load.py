"""The config file contract: keys, env expansion, located errors, and the shipped templates."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest

from mcp_supervisor.config import ConfigError
from mcp_supervisor.config import parse_config as _parse_config
from mcp_supervisor.config.locate import too_deep
from mcp_supervisor.core import ProcessSpec, ReadyOutput, ReadyTCP, SupervisorSpec
from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS

ROOT = Path(__file__).resolve().parents[2]

FULL = """
[daemon]
admin = "unix:/run/mcp/admin.sock"
log_format = "json"

[tree]
strategy = "one_for_one"
intensity = 3
period = 5

[[tree.children]]
id = "edge"
strategy = "rest_for_one"
[[tree.children.children]]
id = "proxy"
command = ["/usr/bin/some-daemon", "--flag", "${FLAG:-x}"]
env = { MODE = "${MODE}" }
restart = "transient"
shutdown = 10
backoff = { initial = 0.5, max = 30 }
ready = { tcp = "127.0.0.1:8081", timeout = 15 }
"""

parse_config = partial(_parse_config, workers=BUILTIN_WORKERS)  # the daemon's built-in worker names


def test_the_documented_shape_builds_the_specs() -> None:
    cfg = parse_config(FULL, "f.toml", env={"MODE": "prod"})
    assert str(cfg.daemon.admin) == "unix:/run/mcp/admin.sock" and cfg.daemon.log_format == "json"
    edge = cfg.tree.children[0]
    assert isinstance(edge, SupervisorSpec) and edge.flags.strategy == "rest_for_one"
    proxy = edge.children[0]
    assert isinstance(proxy, ProcessSpec)
    assert proxy.command == ("/usr/bin/some-daemon", "--flag", "x") and proxy.env == {"MODE": "prod"}
    assert proxy.shutdown == 10 and proxy.backoff is not None and proxy.backoff.max == 30
    assert proxy.ready == ReadyTCP(host="127.0.0.1", port=8081, timeout=15)
    assert set(cfg.entries) == {"", "edge", "edge/proxy"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("shutdown = 10", "shutdown = -1"), "f.toml:19: tree.children[0].children[0].shutdown: must be >= 0"),
        (("shutdown = 10", "shutdwn = 10"), "f.toml:19: tree.children[0].children[0].shutdwn: not valid for an OS"),
        (('restart = "transient"', 'restart = "sometimes"'), "f.toml:18: tree.children[0].children[0].restart"),
        (("timeout = 15 }", "timeout = 15, interval = 1 }"), "ready.interval: applies only to command readiness"),
        (('tcp = "127.0.0.1:8081"', 'tcp = "nope"'), "tree.children[0].children[0].ready.tcp: must be"),
        (('strategy = "rest_for_one"', 'strategy = "rest_for_all"'), "f.toml:13: tree.children[0].strategy"),
        (('id = "proxy"', 'id = "proxy"\nworker = "x:y"'), "needs exactly one of"),
        (('admin = "unix:/run/mcp/admin.sock"', 'admin = "0.0.0.0:7080"'), "daemon.admin: '0.0.0.0' is not a loopback"),
        (('log_format = "json"', 'log_format = "xml"'), "f.toml:4: daemon.log_format"),
        (("[daemon]", "[demon]"), "demon: unknown key"),
        (
            ('env = { MODE = "${MODE}" }', 'env = { MODE = "${UNSET_VAR_X}" }'),
            "environment variable UNSET_VAR_X is not set",
        ),
        (("period = 5", "period = 5\nperiod = 6"), "not valid TOML"),
    ],
)
def test_errors_name_the_file_line_and_key(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(FULL.replace(*edit), "f.toml", env={"MODE": "prod"})
    assert message in str(err.value)


def test_unknown_worker_and_bad_worker_settings_are_config_errors() -> None:
    base = '[tree]\n[[tree.children]]\nid = "w"\nworker = "{}"\n'
    with pytest.raises(ConfigError, match=r"tree.children\[0\].worker: unknown worker 'nosuch'"):
        parse_config(base.format("nosuch"), env={})
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_x'"):
        parse_config(base.format("no_such_module_x:factory"), env={})

    def factory(settings: dict[str, object]) -> object:
        if "interval" not in settings:
            raise ValueError("interval: required (seconds between rounds)")
        return lambda ctx: None

    with pytest.raises(ConfigError, match=r"tree.children\[0\].config: interval: required"):
        parse_config(base.format("mine"), env={}, factories={"mine": factory})  # type: ignore[dict-item]


def test_the_production_template_passes_check_config() -> None:
    run = subprocess.run(
        [str(ROOT / ".venv/bin/mcp-supervisor"), "check-config", str(ROOT / "config/supervision.toml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "valid" in run.stdout


def test_the_docker_env_makes_the_template_valid() -> None:
    import os

    env = dict(os.environ)
    for line in (ROOT / "config/docker.env").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    run = subprocess.run(
        [str(ROOT / ".venv/bin/mcp-supervisor"), "check-config", str(ROOT / "config/supervision.toml")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    compose = (ROOT / "docker-compose.dev.yml").read_text()
    for service in ("postgres:", "redis:", "minio:", "vault:"):
        assert service in compose
    assert compose.count("healthcheck:") == 4


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a = [[[1]]]", 1),
        ('a = "[[[["', None),
        ("a = '[[[[['", None),
        ('a = """\n[[[[\n"""\nb = [[[1]]]', 4),
        ("a = '''\n[[[[\n'''", None),
        ("# [[[[\nb = {a={a={a=1}}}", 2),
        ('a = "x\\"[[[["', None),
    ],
)
def test_nesting_is_measured_outside_strings_and_comments(text: str, line: int | None) -> None:
    assert too_deep(text, 2) == line


@pytest.mark.parametrize(
    ("child", "token", "message"),
    [
        ('command = ["sleep", "1"]', "short", "daemon.admin_token_file: the token in "),
        (
            'command = ["no-such-program-x9"]',
            None,
            "tree.children[0].command[0]: program 'no-such-program-x9' not found",
        ),
        ('command = ["./not-executable"]', None, "not-executable is not executable"),
        ('command = ["./missing"]', None, "tree.children[0].command[0]: program './missing' not found (relative to"),
        ('command = ["sleep", "1"]\nuser = "no-such-user-x9"', None, "tree.children[0].user: no user named"),
        ('command = ["sleep", "1"]\ngroup = "no-such-group-x9"', None, "tree.children[0].group: no group named"),
    ],
)
def test_check_config_refuses_what_run_refuses(tmp_path: Path, child: str, token: str | None, message: str) -> None:
    """check-config's verdict is run's: the token file, the programs and the users are checked by both."""
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    daemon = ""
    if token is not None:
        (tmp_path / "token").write_text(token)
        daemon = f'[daemon]\nadmin_token_file = "{tmp_path / "token"}"\n'
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'{daemon}[tree]\n[[tree.children]]\nid = "a"\n{child}\n')
    for command in ("check-config", "run"):
        done = subprocess.run([str(ROOT / ".venv/bin/mcp-supervisor"), command, "--config", str(cfg)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)  # fmt: skip
        assert done.returncode == 78, (command, done.stdout, done.stderr)
        assert message in done.stdout + done.stderr, (command, done.stdout, done.stderr)
        assert "c.toml:" in done.stdout + done.stderr


def test_a_key_after_brackets_inside_strings_is_still_located() -> None:
    text = '[tree]\n[[tree.children]]\nid = "a"\ncommand = ["sh", "-c", "echo {{{ [[["]\nrestart = "sometimes"\n'
    with pytest.raises(ConfigError, match=r"^f.toml:5: tree.children\[0\].restart"):
        parse_config(text, "f.toml", env={})


def test_start_retries_is_a_child_key_checked_like_the_others() -> None:
    base = '[tree]\n[[tree.children]]\nid = "a"\ncommand = ["sleep", "1"]\nstart_retries = {}\n'
    assert parse_config(base.format(3), "f.toml", env={}).tree.children[0].start_retries == 3
    assert parse_config(base.format('"${N:-2}"'), "f.toml", env={}).tree.children[0].start_retries == 2
    with pytest.raises(ConfigError, match=r"^f.toml:5: tree.children\[0\].start_retries: must be an integer 0..1000"):
        parse_config(base.format(-1), "f.toml", env={})


def test_readiness_by_output_is_parsed_and_a_bad_pattern_is_named() -> None:
    text = (
        '[tree]\n[[tree.children]]\nid = "web"\ncommand = ["web"]\nready = { output = "Listening on", timeout = 5 }\n'
    )
    spec = parse_config(text, "f.toml").tree.children[0]
    assert isinstance(spec, ProcessSpec) and spec.ready == ReadyOutput(pattern="Listening on", timeout=5)
    with pytest.raises(ConfigError, match=r"tree\.children\[0\]\.ready\.output: is not a regular expression"):
        parse_config(text.replace("Listening on", "(oops"), "f.toml")
    with pytest.raises(ConfigError, match=r'needs exactly one of "tcp", "command" or "output"'):
        parse_config(text.replace('output = "Listening on"', 'output = "x", tcp = "127.0.0.1:1"'), "f.toml")


def test_an_isolated_supervisor_is_one_process_child_and_its_subtree_is_kept_for_its_process() -> None:
    text = (
        '[tree]\n[[tree.children]]\nid = "iso"\nisolation = "process"\n'
        '[[tree.children.children]]\nid = "db"\nworker = "postgres"\n'
    )
    cfg = parse_config(text, "f.toml")
    iso = cfg.tree.children[0]
    assert isinstance(iso, ProcessSpec) and iso.command[1:3] == ("-m", "mcp_supervisor.daemon.isolated")
    assert iso.command[-1] == "iso" and iso.shutdown == 30.0  # "infinity" would make it unkillable
    assert isinstance(cfg.isolated["iso"], SupervisorSpec) and cfg.isolated["iso"].children[0].id == "db"
    assert cfg.entries["iso"].kind == "process" and cfg.entries["iso/db"].kind == "worker"  # its process's entries
    sub = cfg.subtree("iso")  # the config its process runs: its supervisor the root, its children's entries under it
    assert sub.tree is cfg.isolated["iso"] and set(sub.entries) == {"", "db"} and sub.entries[""].kind == "supervisor"
    with pytest.raises(ConfigError, match=r'tree\.children\[0\]\.isolation: must be "none" or "process"'):
        parse_config(text.replace('"process"', '"thread"'), "f.toml")


def test_process_keys_of_a_supervisor_need_its_isolation() -> None:
    text = '[tree]\n[[tree.children]]\nid = "grp"\nmax_memory = "1G"\n[[tree.children.children]]\nid = "db"\nworker = "postgres"\n'
    with pytest.raises(ConfigError, match=r"tree\.children\[0\]\.max_memory: applies only to an isolated supervisor"):
        parse_config(text, "f.toml")
    iso = parse_config(text.replace('id = "grp"', 'id = "grp"\nisolation = "process"'), "f.toml").tree.children[0]
    assert isinstance(iso, ProcessSpec) and iso.max_memory == 2**30
