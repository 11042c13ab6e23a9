"""``mcp-supervisor import``: every row of the mapping (docs/importing.md) and every trap, from configs written here
in the shapes real ones take; the output is a config ``check-config`` accepts; the imported supervisord and
Procfile trees run for real (programs replaced by harmless stand-ins) with the processes, order, instances,
environment and restart behaviour supervisord's and foreman's documentation promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.config import parse_config
from mcp_supervisor.config.importers import import_file, render
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

PY = sys.executable


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "mcp_supervisor.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False, env=env)  # fmt: skip


def imported(tmp: Path, name: str, text: str, **kw: Any) -> tuple[dict[str, Any], str]:
    """Import ``text`` (written as ``name``): the parsed TOML and its text; the text is a valid config."""
    path = tmp / name
    path.write_text(text)
    out = render(import_file(str(path), **kw))
    parse_config(out, "imported.toml", env={"LOG_LEVEL": "info", "HOME": "/root"})
    return tomllib.loads(out), flat(out)


def flat(text: str) -> str:
    """The output with its comments joined back into one line each (they are wrapped at 120 columns)."""
    return " ".join(line.removeprefix("# ") for line in text.splitlines())


def children(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    stack = list(doc["tree"].get("children", []))
    while stack:
        c = stack.pop()
        out[c["id"]] = c
        stack += c.get("children", [])
    return out


# -- supervisord -------------------------------------------------------------------------------------------------
MAPPING = r"""
[supervisord]
nodaemon=true
environment=GLOBAL="g 1",LANG='C.UTF-8'

[program:web]
command=python3 -m http.server
    --bind 127.0.0.1 8000   ; continued on an indented line, with an inline comment
directory=%(here)s/app
user=nobody
umask=022
autorestart=true
startsecs=3
startretries=7
stopsignal=QUIT
stopwaitsecs=25
stopasgroup=true
killasgroup=true
priority=20
environment=A="double quoted",B='single quoted',C=bare,D="with, comma"

[program:once]
command=/bin/true
autorestart=false
priority=10

[program:job]
command=/bin/sh -c "exit 2"
autorestart=unexpected
exitcodes=0,2
startsecs=0

[program:pool]
command=sleep 100%(process_num)02d %(program_name)s %(group_name)s %%literal %(ENV_HOME)s
process_name=%(program_name)s_%(process_num)02d
numprocs=3
numprocs_start=1

[program:off]
command=sleep 1
autostart=false
"""


def test_supervisord_mapping_row_by_row(tmp_path: Path) -> None:
    doc, text = imported(tmp_path, "supervisord.conf", MAPPING)
    kids = children(doc)
    web = kids["web"]
    assert web["command"] == ["python3", "-m", "http.server", "--bind", "127.0.0.1", "8000"]
    assert web["cwd"] == f"{tmp_path}/app" and web["user"] == "nobody" and web["umask"] == "022"
    assert "restart" not in web  # autorestart=true: permanent, our default
    assert web["ready"] == {"command": ["sleep", "3"], "timeout": 33} and web["start_retries"] == 7
    assert web["stop_signal"] == "SIGQUIT" and web["shutdown"] == 25
    assert web["env"] == {"GLOBAL": "g 1", "LANG": "C.UTF-8", "A": "double quoted", "B": "single quoted", "C": "bare",
                          "D": "with, comma"}  # fmt: skip
    assert "stopasgroup=true is what happens here anyway" in text
    assert kids["once"]["restart"] == "temporary" and kids["once"]["start_retries"] == 3  # supervisord's default
    assert kids["job"]["restart"] == "transient" and "ready" not in kids["job"]  # startsecs=0
    assert "exitcodes = 0,2: a transient child is restarted after any exit but 0" in text
    pool = kids["pool"]
    assert pool["instances"] == 3 and pool["command"][:2] == ["sleep", "100{instance}"]
    assert pool["command"][2:] == ["pool", "pool", "%literal", "${HOME}"]  # read when the config loads
    assert "numprocs_start = 1: our {instance} counts from 0" in text
    assert "off" not in kids and 'id = "off"' in text and "autostart=false" in text  # written commented out
    assert [c["id"] for c in doc["tree"]["children"]] == ["once", "web", "job", "pool"]  # priority, then file order
    assert doc["tree"]["children"][1]["shutdown"] == 25


def test_supervisord_sections_includes_groups_listeners_and_servers(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("[program:b]\ncommand=sleep 2\npriority=2\n")
    (tmp_path / "conf.d" / "a.conf").write_text("[program:a]\ncommand=sleep 1\npriority=2\n")
    (tmp_path / "conf.d" / "skip.ini").write_text("[program:nope]\ncommand=sleep 3\n")
    doc, text = imported(
        tmp_path,
        "supervisord.conf",
        """
[inet_http_server]
port=0.0.0.0:9001
username=admin
password=letmein-secret-99

[include]
files = conf.d/*.conf

[group:jobs]
programs=a,b,ghost
priority=1

[eventlistener:crashmail]
command=crashmail -a -m ops@example.com
events=PROCESS_STATE_EXITED
""",
    )
    assert doc["daemon"]["admin"] == "127.0.0.1:9001" and "letmein-secret-99" not in text
    assert "the admin port takes a bearer token instead" in text
    (group,) = doc["tree"]["children"]
    assert group["id"] == "jobs" and [c["id"] for c in group["children"]] == ["a", "b"]  # globs sorted
    assert "names 'ghost', which is not a [program:x]" in text
    assert "event listeners do not exist here; for notifications use [[daemon.alerts]]" in text
    assert "intensity" not in doc["tree"]

    doc, text = imported(
        tmp_path,
        "failfast.conf",
        """
[unix_http_server]
file=/run/supervisor.sock
[program:app]
command=sleep 100
[eventlistener:quit_on_fatal]
command=python3 /usr/local/bin/kill_supervisor.py
events=PROCESS_STATE_FATAL,PROCESS_STATE_EXITED
""",
    )
    assert doc["daemon"] == {"admin": "unix:/run/supervisor.sock", "exit_code": "child"}
    assert doc["tree"]["intensity"] == 0 and "stops everything when a program dies" in text


@pytest.mark.parametrize(
    ("program", "warning"),
    [
        ("command=/usr/sbin/nginx", "nginx daemonizes itself unless told not to: add -g 'daemon off;'"),
        ("command=/usr/sbin/php-fpm8.2", "php-fpm daemonizes itself unless told not to: add -F"),
        ("command=/usr/sbin/postfix start", "`postfix start` daemonizes and exits: run `postfix start-fg`"),
        ("command=redis-server --daemonize yes", "redis-server daemonizes itself unless told not to"),
        ("command=/usr/sbin/apachectl start", "apachectl daemonizes itself"),
        ("command=service nginx start", "starts a service in the background and exits"),
        ("command=sleep 1\nstdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=50MB", "fails to rotate a device"),
        ("command=sleep 1\nnumprocs=2", "numprocs = 2 but process_name has no %(process_num)"),
        ("command=sleep 1\nnodaemon=true", "nodaemon: not a [program:x] key"),
        ("command=sleep 1\nautorestart=true\n[program:broken\ncommand=sleep 2", "is missing its ']'"),
    ],
)
def test_supervisord_traps_are_named_with_their_line_and_the_fix(tmp_path: Path, program: str, warning: str) -> None:
    path = tmp_path / "supervisord.conf"
    path.write_text(f"[program:x]\n{program}\n")
    done = cli("import", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert warning in flat(done.stdout) and warning in done.stderr  # a comment in the output, a warning on stderr
    assert "supervisord.conf:" in done.stderr.split("warning: ", 1)[1]


def test_good_programs_raise_no_warning(tmp_path: Path) -> None:
    doc, text = imported(
        tmp_path,
        "supervisord.conf",
        """
[program:nginx]
command=/usr/sbin/nginx -g "daemon off;"
[program:fpm]
command=php-fpm8.2 -F
[program:redis]
command=redis-server --daemonize no
""",
    )
    assert "WARNING" not in text and len(doc["tree"]["children"]) == 3


# -- Procfile ----------------------------------------------------------------------------------------------------
PROCFILE = """\
# a comment
web: gunicorn app:wsgi --bind 0.0.0.0:$PORT --workers ${WEB_CONCURRENCY:-2}
worker: celery -A proj worker
clock: LOG_LEVEL=debug python3 clock.py
release: ./manage.py migrate && ./manage.py collectstatic
not a process line
"""


def test_procfile_mapping(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SECRET_KEY=abcdefghijklmnop1234\n")
    doc, text = imported(tmp_path, "Procfile", PROCFILE)
    web, worker, clock = doc["tree"]["children"]
    # `$$` is a `$` for the config's own ${VAR} expansion: the shell gets $PORT and ${WEB_CONCURRENCY:-2}
    assert web["command"] == [
        "sh",
        "-c",
        "exec gunicorn app:wsgi --bind 0.0.0.0:$$PORT --workers $${WEB_CONCURRENCY:-2}",
    ]
    assert (web["env"], worker["env"], clock["env"]) == ({"PORT": "5000"}, {"PORT": "5100"},
                                                         {"PORT": "5200", "LOG_LEVEL": "debug"})  # fmt: skip
    assert clock["command"] == ["python3", "clock.py"] and worker["command"] == ["celery", "-A", "proj", "worker"]
    assert all(c["env_file"] == [str(tmp_path / ".env")] and c["cwd"] == str(tmp_path) for c in (web, worker, clock))
    assert "release: ./manage.py migrate" in text and "ExecStartPre=" in text
    assert "'not a process line' is not `type: command`" in text


# -- PM2 ---------------------------------------------------------------------------------------------------------
ECOSYSTEM_JS = """\
// a comment
const base = { autorestart: true };
module.exports = {
  apps: [{
    ...base,
    name: "api",
    script: "./server.js",
    instances: "max",
    exec_mode: "cluster",
    max_memory_restart: "300M",
    kill_timeout: 5000,
    env: { NODE_ENV: "development", PORT: 3000 },
    env_production: { NODE_ENV: "production" },
    watch: true,
    out_file: "./logs/out.log",
    max_restarts: 10,
    min_uptime: "5s",
    restart_delay: 2000,
  }]
};
"""
PLAIN_JS = """\
module.exports = {
  apps : [{
    name   : 'jobs',
    script : 'worker.py',
    interpreter: 'python3',
    instances: '3',
    autorestart: false,
    cron_restart: '0 3 * * *',
    exp_backoff_restart_delay: 100,
  }],
}
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (scripts/bootstrap.sh installs it)")
def test_pm2_javascript_evaluated_by_node(tmp_path: Path) -> None:
    doc, text = imported(tmp_path, "ecosystem.config.js", ECOSYSTEM_JS, env_name="production")
    (api,) = doc["tree"]["children"]
    assert api["command"] == ["node", "./server.js"] and api["cwd"] == str(tmp_path)
    assert api["env"] == {"NODE_ENV": "production", "PORT": "3000"}
    assert api["instances"] == (os.cpu_count() or 1) and "exec_mode = cluster" in text
    assert (api["max_memory"], api["shutdown"]) == ("300M", 5)
    assert api["backoff"] == {"initial": 2, "max": 2, "multiplier": 1, "jitter": 0}
    assert (doc["tree"]["intensity"], doc["tree"]["period"]) == (10, 50)
    assert "watch: restart on file changes" in text and "out_file: no log files" in text


def test_pm2_plain_object_literal_without_node_json_and_yaml(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("python3",):
        (bare / tool).symlink_to(shutil.which(tool) or PY)
    (tmp_path / "ecosystem.config.js").write_text(PLAIN_JS)
    done = cli("import", "ecosystem.config.js", cwd=tmp_path, env={**os.environ, "PATH": str(bare)})
    assert done.returncode == 0, done.stderr
    (jobs,) = tomllib.loads(done.stdout)["tree"]["children"]
    assert jobs["command"] == ["python3", "worker.py"] and jobs["instances"] == 3 and jobs["restart"] == "temporary"
    assert jobs["backoff"] == {"initial": 0.1, "max": 15, "multiplier": 1.5, "jitter": 0}
    assert "cron_restart: scheduled restarts do not exist here" in flat(done.stdout)

    (tmp_path / "dynamic.config.js").write_text("module.exports = { apps: require('./apps') }\n")
    done = cli("import", "dynamic.config.js", cwd=tmp_path, env={**os.environ, "PATH": str(bare)})
    assert done.returncode == 1 and "needs node to evaluate it" in done.stderr

    doc, _ = imported(tmp_path, "ecosystem.json", '{"apps": [{"name": "a", "script": "app.py", "instances": -1}]}')
    assert doc["tree"]["children"][0]["command"] == ["python3", "app.py"]
    doc, _ = imported(tmp_path, "ecosystem.yml", "apps:\n  - name: b\n    script: /usr/bin/env\n    args: [-i]\n")
    assert doc["tree"]["children"][0]["command"] == ["/usr/bin/env", "-i"]


# -- the command ---------------------------------------------------------------------------------------------------
def test_the_command_writes_a_file_check_config_accepts_and_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "supervisord.conf").write_text("[program:app]\ncommand=sleep 1000\n[program:nginx]\ncommand=nginx\n")
    done = cli("import", "supervisord.conf", "-o", "supervision.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "supervisord.conf: 2 program(s) imported, 0 approximated, 0 not imported, 1 warning(s)" in done.stderr
    assert "wrote supervision.toml; next: mcp-supervisor check-config supervision.toml" in done.stderr
    (tmp_path / "supervision.toml").write_text(
        (tmp_path / "supervision.toml").read_text().replace('"nginx"]', '"sleep", "1"]')
    )
    check = cli("check-config", "supervision.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    again = cli("import", "supervisord.conf", "-o", "supervision.toml", cwd=tmp_path)
    assert again.returncode == 1 and "supervision.toml exists: not overwritten" in again.stderr
    unknown = cli("import", "mystery.txt", cwd=tmp_path)
    assert unknown.returncode == 1 and "cannot read mystery.txt" in unknown.stderr
    (tmp_path / "mystery.txt").write_text("hello\n")
    unknown = cli("import", "mystery.txt", cwd=tmp_path)
    assert unknown.returncode == 1 and "give --format supervisord, procfile or pm2" in unknown.stderr


# -- real runs -----------------------------------------------------------------------------------------------------
def _tree_of(text: str) -> str:
    return text.replace("[daemon]\n", "", 1)  # the test daemon writes its own [daemon] table


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_an_imported_supervisord_tree_runs_as_supervisord_promises(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""
[supervisord]
nodaemon=true
environment=STACK="demo"

[program:db]
command={PY} -c "import os, time; print('db up', os.environ['STACK'], flush=True); time.sleep(1000)"
priority=1

[program:web]
command={PY} -c "import os, time; print('web', os.environ['SLOT'], os.environ['STACK'], flush=True); time.sleep(1000)"
process_name=%(program_name)s_%(process_num)d
numprocs=2
environment=SLOT="%(process_num)d"
priority=2

[program:oneshot]
command=sh -c "echo oneshot ran; exit 0"
autorestart=unexpected
startsecs=0
priority=3

[program:flaky]
command=sh -c "n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/n; echo flaky $((n+1)); [ $n -ge 2 ] && exec sleep 1000; exit 3"
autorestart=unexpected
startsecs=0
priority=4

[program:never]
command=sh -c "echo never again; exit 5"
autorestart=false
startsecs=0
priority=5
""")
    text = render(import_file(str(conf)))
    d = Daemon(tmp_path, _tree_of(text))
    try:
        d.wait_ready()
        wait_until(lambda: "flaky 3" in d.log_text() and "never again" in d.log_text(), 30, "every program ran")
        log = d.log_text()
        started = [json.loads(line)["path"] for line in d.request("GET", "/events?type=ChildStarted")[1].splitlines()]
        assert started[:5] == ["db", "web#0", "web#1", "oneshot", "flaky"]  # priority order, instances in order
        assert '"line": "web 0 demo"' in log and '"line": "web 1 demo"' in log  # %(process_num)d, [supervisord] env
        pids = {p: d.node(p)["pid"] for p in ("db", "web#0", "web#1", "flaky")}
        assert all(pids.values()) and len(set(pids.values())) == 4  # two web instances
        wait_until(lambda: d.node("flaky")["restarts"] == 2, 10, "flaky restarted after each exit 3, then up")
        assert log.count("oneshot ran") == 1 and log.count("never again") == 1  # exit 0 / autorestart=false: once
    finally:
        d.stop()


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_an_imported_procfile_runs_with_its_ports_env_file_and_prefixes(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('GREETING="hello from .env"\n')
    (tmp_path / "Procfile").write_text(
        'web: echo "web port=$PORT greeting=$GREETING default=${UNSET_VAR:-dflt}"; exec sleep 1000\n'
        f"worker: MODE=fast {PY} -c \"import os, time; print('worker', os.environ['MODE'], os.environ['PORT'], "
        'flush=True); time.sleep(1000)"\n'
    )
    text = render(import_file(str(tmp_path / "Procfile")))
    d = Daemon(tmp_path, _tree_of(text))
    try:
        d.wait_ready()
        wait_until(lambda: "worker fast 5100" in d.log_text(), 20, "the worker's line")
        assert "web port=5000 greeting=hello from .env default=dflt" in d.log_text()
    finally:
        d.stop()


SAME_AS_SUPERVISORD = """
[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
environment=STACK="compare"

[program:db]
command=sleep 1001
priority=1

[program:web]
command=sleep 100%(process_num)d
process_name=%(program_name)s_%(process_num)d
numprocs=3
environment=SLOT="%(process_num)d"
priority=2

[program:shell]
command=sh -c "exec sleep 1002"
directory={tmp}
priority=3
"""


def _proc(pid: int) -> tuple[str, str, str]:
    """A process's command line, its SLOT and STACK variables."""
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    env = dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)
    return cmd, env.get("SLOT", ""), env.get("STACK", "")


def _kids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


@pytest.mark.realtime
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("supervisord") is None, reason="supervisord is not installed (bootstrap installs it)")
def test_real_supervisord_and_the_imported_tree_run_the_same_processes(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SAME_AS_SUPERVISORD.format(tmp=tmp_path))
    sup = subprocess.Popen(["supervisord", "-n", "-c", str(conf)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:

        def started() -> list[tuple[str, str, str]] | None:  # five programs, each past its exec
            procs = [_proc(p) for p in _kids(sup.pid)]
            return procs if len(procs) == 5 and all(c.startswith("sleep ") for c, _, _ in procs) else None

        theirs = sorted(wait_until(started, 30, "supervisord's five programs"))
    finally:
        sup.terminate()
        sup.wait(30)
    text = render(import_file(str(conf)))
    d = Daemon(tmp_path, text[text.index("[tree]") :])
    try:
        d.wait_ready()
        ours = sorted(_proc(d.node(p)["pid"]) for p in ("db", "web#0", "web#1", "web#2", "shell"))
    finally:
        d.stop()
    expected = [("sleep 1000", "0", "compare"), ("sleep 1001", "", "compare"), ("sleep 1001", "1", "compare"),
                ("sleep 1002", "", "compare"), ("sleep 1002", "2", "compare")]  # fmt: skip
    assert theirs == expected and ours == theirs, (ours, theirs)
