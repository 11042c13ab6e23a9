"""A PM2 ecosystem file — JSON, YAML, or JavaScript (``module.exports = {apps: [...]}``, evaluated by ``node`` when it
is installed, else read when it is a plain object literal) — → our tree, ``env_<name>`` chosen with ``--env``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .model import Imported, Program
from .traps import daemonizes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_KNOWN = {"name", "script", "args", "interpreter", "interpreter_args", "node_args", "cwd", "instances", "exec_mode",
          "env", "max_memory_restart", "kill_timeout", "wait_ready", "listen_timeout", "max_restarts", "min_uptime",
          "restart_delay", "exp_backoff_restart_delay", "autorestart", "watch", "ignore_watch", "watch_options",
          "cron_restart", "merge_logs", "log_date_format", "error_file", "out_file", "log_file", "pid_file",
          "combine_logs", "time", "uid", "gid", "user", "namespace", "force", "shutdown_with_message",
          "increment_var", "instance_var", "vizion", "source_map_support", "filter_env", "append_env_to_name",
          "stop_exit_codes", "treekill", "port"}  # fmt: skip


class Pm2Error(ValueError):
    """The file cannot be read as a PM2 ecosystem: what is wrong and what to do."""


def load_ecosystem(path: str) -> list[dict[str, Any]]:
    """The ``apps`` of a JSON, YAML or JavaScript ecosystem file."""
    text = Path(path).read_text(encoding="utf-8")
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise Pm2Error(
                "reading a YAML ecosystem needs PyYAML: pip install pyyaml (or convert it to JSON)"
            ) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise Pm2Error(f"not valid YAML: {e}") from None
    elif suffix in (".js", ".cjs", ".mjs"):
        doc = _javascript(path, text)
    else:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise Pm2Error(f"not valid JSON: {e}") from None
    apps = doc.get("apps") if isinstance(doc, dict) else doc
    if isinstance(apps, dict):
        apps = [apps]
    if not isinstance(apps, list) or not all(isinstance(a, dict) for a in apps):
        raise Pm2Error('expected {"apps": [{"name": ..., "script": ...}, ...]} (or a list of apps)')
    return apps


def _javascript(path: str, text: str) -> Any:
    node = shutil.which("node")
    if node is not None:
        code = "process.stdout.write(JSON.stringify(require(process.argv[1])))"
        done = subprocess.run([node, "-e", code, os.path.abspath(path)], capture_output=True, text=True, timeout=30,
                              check=False, cwd=os.path.dirname(os.path.abspath(path)))  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise Pm2Error(f"node could not evaluate it: {last}")
        return json.loads(done.stdout or "null")
    literal = _object_literal(text)
    if literal is None:
        raise Pm2Error("a JavaScript ecosystem needs node to evaluate it (it is not a plain object literal): "
                       "install Node.js, or run `pm2 ecosystem` / convert it to ecosystem.config.json")  # fmt: skip
    return literal


def _object_literal(text: str) -> Any:
    """``module.exports = {...}`` when the object is plain data: unquoted keys, single quotes, trailing commas."""
    m = re.search(r"module\.exports\s*=\s*", text)
    if m is None:
        return None
    body = re.sub(r"//[^\n]*|/\*.*?\*/", "", text[m.end() :], flags=re.S).strip().rstrip(";").strip()
    body = re.sub(r"'((?:[^'\\]|\\.)*)'", lambda q: json.dumps(q.group(1)), body)
    body = re.sub(r"([{,]\s*)([A-Za-z_$][A-Za-z0-9_$]*)\s*:", r'\1"\2":', body)
    body = re.sub(r",(\s*[}\]])", r"\1", body)
    try:
        return json.loads(body)
    except ValueError:
        return None


def import_pm2(path: str, env_name: str | None = None) -> Imported:
    imp = Imported(source=path, format="pm2")
    imp.files.append(path)
    apps = load_ecosystem(path)
    here = os.path.dirname(os.path.abspath(path))
    for i, app in enumerate(apps):
        p = _app(app, i, here, env_name, imp, path)
        if p is not None:
            imp.programs.append(p)
    return imp


def _app(app: dict[str, Any], i: int, here: str, env_name: str | None, imp: Imported, path: str) -> Program | None:  # noqa: C901, PLR0912, PLR0915, PLR0917 - one key at a time
    where = f"{path} apps[{i}]"
    script = app.get("script")
    if not isinstance(script, str) or not script:
        imp.note("trap", f"apps[{i}] has no script: skipped", where)
        return None
    name = str(app.get("name") or Path(script).stem)
    p = Program(id=re.sub(r"[^A-Za-z0-9_.-]", "-", name), command=[], where=where, order=i)
    for key in app:
        if key not in _KNOWN and not key.startswith("env_"):
            p.note("unsupported", f"{key}: not a PM2 key this importer knows", where)
    args = app.get("args", [])
    args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    interpreter = app.get("interpreter")
    if interpreter in ("none", "", None) and not script.endswith((".js", ".cjs", ".mjs", ".ts", ".py")):
        command = [*shlex.split(script), *args] if " " in script else [script, *args]
    else:
        if interpreter in (None, "", "none"):
            interpreter = "python3" if script.endswith(".py") else "node"
        extra = app.get("interpreter_args") or app.get("node_args") or []
        extra = shlex.split(extra) if isinstance(extra, str) else [str(a) for a in extra]
        command = [str(interpreter), *extra, script, *args]
    p.command = [c.replace("$", "$$") for c in command]
    trap = daemonizes(command)
    if trap:
        p.note("trap", trap, where)
    cwd = app.get("cwd")
    p.cwd = os.path.join(here, str(cwd)) if cwd else here
    env = {str(k): str(v) for k, v in (app.get("env") or {}).items()}
    if env_name:
        chosen = app.get(f"env_{env_name}")
        if isinstance(chosen, dict):
            env.update({str(k): str(v) for k, v in chosen.items()})
        else:
            p.note("caveat", f"it has no env_{env_name}: its env only", where)
    others = sorted(k for k in app if k.startswith("env_") and k != f"env_{env_name}")
    if others:
        p.note("caveat", f"{', '.join(others)} not used (choose one with --env NAME, as pm2 start --env NAME)", where)
    p.env = {k: v.replace("$", "$$") for k, v in env.items()}
    user = app.get("user") or app.get("uid")
    if user:
        p.user = str(user)
    _instances(app, p, where)
    memory = app.get("max_memory_restart")
    if memory is not None:
        m = _SIZE.match(str(memory))
        if m:
            p.max_memory = f"{m.group(1)}{m.group(2).upper()}" if m.group(2) else m.group(1)
        else:
            p.note("trap", f"max_memory_restart = {memory!r}: not a size (300M, 1G): left out", where)
    if app.get("kill_timeout") is not None:
        p.shutdown = float(app["kill_timeout"]) / 1000
    else:
        p.shutdown = 1.6  # PM2's default kill_timeout: 1600 ms
    if app.get("wait_ready") or app.get("listen_timeout"):
        p.note("approximated", "wait_ready/listen_timeout: there is no process.send('ready') here; give the child "
                               'a ready check (ready = { tcp = "127.0.0.1:PORT" }) so it counts as started when it '
                               "listens", where)  # fmt: skip
    _restarts(app, p, imp, where)
    for key, why in (("watch", "restart on file changes is not a supervisor's job here; restart it from your deploy"),
                     ("cron_restart", "scheduled restarts do not exist here; a systemd timer running "
                                      f"`mcp-supervisor ctl restart {p.id}` does it"),
                     ("merge_logs", "output is kept per child, each line with its pid"),
                     ("log_date_format", "every line has its time in the daemon's log"),
                     ("error_file", "no log files: the output goes to the daemon's log (journald) and `ctl logs`"),
                     ("out_file", "no log files: the output goes to the daemon's log (journald) and `ctl logs`"),
                     ("log_file", "no log files: the output goes to the daemon's log (journald) and `ctl logs`"),
                     ("pid_file", "not needed: the daemon knows the pid")):  # fmt: skip
        if app.get(key) not in (None, False):
            p.note("unsupported", f"{key}: {why}", where)
    return p


def _instances(app: dict[str, Any], p: Program, where: str) -> None:
    raw = app.get("instances")
    mode = str(app.get("exec_mode") or "fork").removesuffix("_mode")
    if raw is None:
        count = 1
    elif str(raw).strip() in ("max", "-1", "0"):
        cpus = os.cpu_count() or 1
        count = cpus - 1 if str(raw).strip() == "-1" else cpus
        p.note("approximated", f"instances = {raw!r} (one per CPU) is {count} on this machine; set it for the "
                               "target", where)  # fmt: skip
    else:
        try:
            count = int(str(raw).strip())
        except ValueError:
            p.note("trap", f"instances = {raw!r} is not a number: 1", where)
            count = 1
    if count > 1 or mode == "cluster":
        p.instances = max(1, count)
    if mode == "cluster":
        p.note("approximated", "exec_mode = cluster: PM2 shares one listening port among the instances through "
                               "Node's cluster module. Here each instance is its own process: have them listen "
                               "on a port each (PORT=300{instance}), or hold one socket for all ([[daemon.sockets]] "
                               "and sockets = [...], docs/configuration.md)", where)  # fmt: skip


def _restarts(app: dict[str, Any], p: Program, imp: Imported, where: str) -> None:
    auto = app.get("autorestart", True)
    if auto is False or str(auto).lower() == "false":
        p.restart = "temporary"
    delay = app.get("restart_delay")
    if app.get("exp_backoff_restart_delay") is not None:
        first = float(app["exp_backoff_restart_delay"]) / 1000
        p.backoff = {"initial": first, "max": 15.0, "multiplier": 1.5, "jitter": 0}
    elif delay is not None:
        d = float(delay) / 1000
        p.backoff = {"initial": d, "max": d, "multiplier": 1, "jitter": 0}
    if app.get("max_restarts") is not None or app.get("min_uptime") is not None:
        count = int(app.get("max_restarts") or 16)
        uptime = _ms(app.get("min_uptime", 1000))
        p.note("approximated", f"max_restarts = {count}, min_uptime = {app.get('min_uptime', 1000)}: PM2 stops "
                               "restarting an app after that many quick restarts; here a supervisor gives up after "
                               "more than intensity restarts within period. The root's are set from the "
                               "strictest app", where)  # fmt: skip
        period = max(1.0, uptime * count)
        if imp.intensity is None or count < imp.intensity:
            imp.intensity, imp.period = count, period


def _ms(value: Any) -> float:
    """PM2's durations: a number of ms, or "5s", "2m", "1000ms"."""
    text = str(value).strip().lower()
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    try:
        return float(text) / 1000
    except ValueError:
        return 1.0
