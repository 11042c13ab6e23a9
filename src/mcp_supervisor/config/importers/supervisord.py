"""supervisord.conf → our tree: ``[program:x]``, ``[group:x]``, ``[include]``, ``[eventlistener:x]``,
``[inet_http_server]``/``[unix_http_server]``, ``[supervisord]``; ``%(...)s`` expansions as supervisord applies them."""

from __future__ import annotations

import glob
import os
import re
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path

from .ini import Section, parse_ini
from .model import Group, Imported, Note, NoteKind, Program
from .traps import daemonizes, needs_shell, shell_command

PROGRAM_KEYS = {"command", "process_name", "numprocs", "numprocs_start", "priority", "autostart", "startsecs",
                "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs", "stopasgroup",
                "killasgroup", "user", "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes",
                "stdout_logfile_backups", "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog",
                "stderr_logfile", "stderr_logfile_maxbytes", "stderr_logfile_backups", "stderr_capture_maxbytes",
                "stderr_events_enabled", "stderr_syslog", "environment", "directory", "umask", "serverurl"}  # fmt: skip
SUPERVISORD_KEYS = {"logfile", "logfile_maxbytes", "logfile_backups", "loglevel", "pidfile", "umask", "nodaemon",
                    "silent", "minfds", "minprocs", "nocleanup", "childlogdir", "user", "directory", "strip_ansi",
                    "environment", "identifier"}  # fmt: skip
_SHELLS = {"sh", "bash", "dash", "zsh", "ash"}
_SIGNALS = {"TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"}
_LOGS = ("stdout_logfile", "stderr_logfile")
_EXPANSION = re.compile(r"%\(([A-Za-z0-9_]+)\)([-#0 +]*\d*)([sd])")


def import_supervisord(path: str, env: Mapping[str, str] | None = None) -> Imported:
    env = os.environ if env is None else env
    imp = Imported(source=path, format="supervisord")
    sections = _read(path, imp, set())
    by_kind: dict[str, list[Section]] = {}
    for s in sections:
        by_kind.setdefault(s.name.split(":", 1)[0], []).append(s)
    here = os.path.dirname(os.path.abspath(path))
    global_env: dict[str, str] = {}
    for s in by_kind.get("supervisord", []):
        global_env = _supervisord(s, imp, here, env)
    for s in by_kind.get("unix_http_server", []) + by_kind.get("inet_http_server", []):  # TCP wins: ctl reaches both
        _server(s, imp)
    for kind in ("supervisorctl", "rpcinterface", "ctlplugin"):
        for s in by_kind.get(kind, []):
            imp.note("caveat", f"[{s.name}] is not needed: `mcp-supervisor ctl` and the admin port replace it",
                     s.where())  # fmt: skip
    for s in by_kind.get("program", []):
        _program(s, imp, here, env, global_env)
    for s in by_kind.get("fcgi-program", []):
        imp.note("unsupported", f"[{s.name}]: a FastCGI socket shared by the processes; use [[daemon.sockets]] with "
                                "instances (docs/configuration.md)", s.where())  # fmt: skip
    for s in by_kind.get("group", []):
        _group(s, imp)
    for s in by_kind.get("eventlistener", []):
        _listener(s, imp)
    known = {"supervisord", "inet_http_server", "unix_http_server", "supervisorctl", "rpcinterface", "ctlplugin",
             "program", "fcgi-program", "group", "eventlistener", "include"}  # fmt: skip
    for s in sections:
        if s.name.split(":", 1)[0] not in known:
            imp.note("unsupported", f"[{s.name}] is not a section supervisord knows", s.where())
    return imp


def _read(path: str, imp: Imported, seen: set[str]) -> list[Section]:
    """The file's sections, then those of the files its ``[include]`` names (relative to it, globs sorted)."""
    real = os.path.realpath(path)
    if real in seen:
        imp.note("trap", f"{path} is included twice (an include loop): read once", path)
        return []
    seen.add(real)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    imp.files.append(path)
    sections, problems = parse_ini(text, path)
    for p in problems:
        imp.note("trap", p.text, p.where)
    out = [s for s in sections if s.name != "include"]
    for s in sections:
        if s.name != "include":
            continue
        base = os.path.dirname(os.path.abspath(path))
        patterns = (s.get("files") or "").split()
        if not patterns:
            imp.note("trap", "[include] has no files =", s.where())
        for pattern in patterns:
            full = os.path.join(base, os.path.expanduser(pattern))
            matches = sorted(glob.glob(full))
            if not matches:
                imp.note("caveat", f"[include] {pattern} matches no file", s.where("files"))
            for m in matches:
                out += _read(m, imp, seen)
    return out


def expand(text: str, values: Mapping[str, str], env: Mapping[str, str], instance: bool = False) -> str:
    """supervisord's ``%(name)s`` expansions; literal ``$`` doubled for our config, ``%(ENV_X)s`` → ``${X}``
    (read when the config loads, as supervisord reads it when it starts), ``%(process_num)d`` → ``{instance}``."""

    def one(m: re.Match[str]) -> str:
        name, spec, conv = m.group(1), m.group(2), m.group(3)
        if name.startswith("ENV_"):
            return "${" + name[4:] + "}"
        if name == "process_num" and instance:
            return "{instance}"  # a width (02d) is approximated by the plain index
        if name in values:
            value = values[name]
            return ("%" + spec + conv) % (int(value) if conv == "d" else value)
        raise KeyError(name)

    escaped = text.replace("$", "$$")
    parts = escaped.split("%%")
    return "%".join(_EXPANSION.sub(one, p) for p in parts)


def _now(text: str, env: Mapping[str, str], values: Mapping[str, str]) -> str:
    """An expansion evaluated now (a number or a boolean cannot wait for the config's load)."""

    def one(m: re.Match[str]) -> str:
        name, spec, conv = m.group(1), m.group(2), m.group(3)
        value = env.get(name[4:], "") if name.startswith("ENV_") else values.get(name, "")
        return ("%" + spec + conv) % (int(value) if conv == "d" else value)

    return "%".join(_EXPANSION.sub(one, p) for p in text.split("%%"))


def _supervisord(s: Section, imp: Imported, here: str, env: Mapping[str, str]) -> dict[str, str]:
    values = {"here": here, "host_node_name": socket.gethostname()}
    if (s.get("nodaemon") or "false").lower() in ("true", "1", "yes", "on"):
        imp.note("caveat", "nodaemon=true: mcp-supervisor always runs in the foreground (a container's init, or "
                           "systemd's Type=notify)", s.where("nodaemon"))  # fmt: skip
    for key in ("logfile", "logfile_maxbytes", "logfile_backups", "loglevel", "childlogdir"):
        if key in s.keys:
            imp.note("unsupported", f"{key}: the daemon logs to stdout (JSON or console; journald keeps it); set "
                                    "[daemon] log_level", s.where(key))  # fmt: skip
    for key in ("pidfile", "minfds", "minprocs", "user", "umask", "identifier", "directory", "nocleanup", "silent"):
        if key in s.keys:
            imp.note("unsupported", f"{key}: not a setting here (systemd's unit sets the daemon's user, limits and "
                                    "directory: `mcp-supervisor systemd-unit`)", s.where(key))  # fmt: skip
    for key in s.keys:
        if key in PROGRAM_KEYS - SUPERVISORD_KEYS:
            imp.note("trap", f"{key} is a [program:x] key in [supervisord]: supervisord ignores it here",
                     s.where(key))  # fmt: skip
    raw = s.get("environment")
    return parse_environment(expand(raw, values, env), imp, s.where("environment")) if raw else {}


def _server(s: Section, imp: Imported) -> None:
    if s.name == "inet_http_server":
        port = s.get("port") or "127.0.0.1:9001"
        host, _, num = port.rpartition(":")
        host = host or "*"
        if host in ("*", "0.0.0.0", "", "::"):
            imp.note(
                "caveat",
                f"[inet_http_server] listened on {port}, every interface: the admin port is on "
                "loopback here (allow_remote_admin = true and a TLS proxy for more)",
                s.where("port"),
            )
            host = "127.0.0.1"
        imp.admin = f"{host}:{num}"
    else:
        file = s.get("file") or "/tmp/supervisor.sock"  # noqa: S108 - supervisord's own default, reported as it is
        imp.admin = f"unix:{file}"
    if "username" in s.keys or "password" in s.keys:
        imp.note("caveat", f"[{s.name}] username/password: the admin port takes a bearer token instead "
                           "(admin_token_file = \"/etc/mcp-supervisor/admin-token\"); the password is not copied",
                 s.where("password" if "password" in s.keys else "username"))  # fmt: skip


def _program(s: Section, imp: Imported, here: str, env: Mapping[str, str], global_env: dict[str, str]) -> None:  # noqa: C901, PLR0912, PLR0915 - one key at a time, in the table's order
    name = s.name.split(":", 1)[1].strip()
    values = {"program_name": name, "group_name": name, "here": here, "host_node_name": socket.gethostname(),
              "process_num": "0"}  # fmt: skip
    where = s.where
    for key in s.keys:
        if key not in PROGRAM_KEYS:
            kind: NoteKind = "trap" if key in SUPERVISORD_KEYS else "unsupported"
            imp.note(kind, f"[{s.name}] {key}: not a [program:x] key (supervisord refuses it)", where(key))
    raw = s.get("command")
    if not raw:
        imp.note("trap", f"[{s.name}] has no command: skipped", where())
        return
    try:
        numprocs = int(_now(s.get("numprocs") or "1", env, values))
    except ValueError:
        imp.note("trap", f"[{s.name}] numprocs is not a number: 1 is used", where("numprocs"))
        numprocs = 1
    process_name = s.get("process_name") or "%(program_name)s"
    if numprocs > 1 and "%(process_num)" not in process_name:
        imp.note("trap", f"[{s.name}] numprocs = {numprocs} but process_name has no %(process_num): supervisord "
                         "refuses that; imported as instances", where("numprocs"))  # fmt: skip
    p = Program(id=name, command=[], where=where())
    command = expand(raw.replace("\n", " "), values, env, instance=numprocs > 1)
    try:
        words = shlex.split(command)
    except ValueError as e:
        imp.note("trap", f"[{s.name}] command cannot be split ({e}): skipped", where("command"))
        return
    shell = bool(words) and os.path.basename(words[0]) in _SHELLS and "-c" in words[1:2]
    if not shell and needs_shell(_EXPANSION.sub("x", raw)):  # its own text, not what %(ENV_X)s became
        p.command = shell_command(command)
        p.note("caveat", "the command has shell syntax, which supervisord passes to the program as plain "
                         "arguments: run by sh -c here", where("command"))  # fmt: skip
    else:
        p.command = words
    if "%(host_node_name)" in raw:
        p.note("caveat", f"%(host_node_name)s is this machine's name ({socket.gethostname()}), written in at "
                         "import: change it for another host", where("command"))  # fmt: skip
    trap = daemonizes(p.command)
    if trap:
        p.note("trap", trap, where("command"))
    if numprocs > 1:
        p.instances = numprocs
        if "{instance}" not in " ".join(p.command):
            p.note("caveat", f"{numprocs} identical instances (id#0 … id#{numprocs - 1}): none gets its number; "
                             "{instance} in the command gives it", where("numprocs"))  # fmt: skip
        start = s.get("numprocs_start")
        if start and start.strip() != "0":
            p.note("approximated", f"numprocs_start = {start}: our {{instance}} counts from 0", where("numprocs_start"))
        if re.search(r"%\(process_num\)0?\d+d", raw):
            p.note("approximated", "%(process_num) with a width: {instance} is the plain number", where("command"))
    elif "%(process_num)" in raw:
        p.note("caveat", "%(process_num)d of a single process is 0", where("command"))
    try:
        p.order = float(_now(s.get("priority") or "999", env, values))
    except ValueError:
        p.order = 999.0
    if s.get("directory"):
        p.cwd = expand(s.get("directory") or "", values, env)
    if s.get("user"):
        p.user = _now(s.get("user") or "", env, values)
    if s.get("umask"):
        p.umask = s.get("umask")
    own = s.get("environment")
    own_env = (
        parse_environment(expand(own, values, env, instance=numprocs > 1), imp, where("environment")) if own else {}
    )
    p.env = {**global_env, **own_env}
    autostart = _now(s.get("autostart") or "true", env, values).lower()
    if autostart in ("false", "0", "no", "off"):
        p.disabled = True
        p.note("unsupported", "autostart=false: every child here starts with the tree; the table is written "
                              "commented out — uncomment it to run it", where("autostart"))  # fmt: skip
    _restart(s, p)
    startsecs = s.get("startsecs")
    if startsecs is not None:
        try:
            secs = float(_now(startsecs, env, values))
        except ValueError:
            secs = 1.0
        if secs > 0:
            p.ready_after = secs
    retries = s.get("startretries")
    p.start_retries = int(retries) if retries and retries.isdigit() else 3  # supervisord's default is 3
    sig = (s.get("stopsignal") or "TERM").upper().removeprefix("SIG")
    if sig not in _SIGNALS:
        p.note("trap", f"stopsignal = {sig}: not a signal supervisord accepts; SIGTERM used", where("stopsignal"))
        sig = "TERM"
    if sig != "TERM":
        p.stop_signal = f"SIG{sig}"
    try:
        p.shutdown = float(_now(s.get("stopwaitsecs") or "10", env, values))
    except ValueError:
        p.shutdown = 10.0
    for key in ("stopasgroup", "killasgroup"):
        if (s.get(key) or "").lower() == "false" or key not in s.keys:
            continue
        p.note("caveat", f"{key}=true is what happens here anyway: each program runs in its own process group, "
                         "and a stop signals the whole group", where(key))  # fmt: skip
    _logs(s, p)
    imp.programs.append(p)


def _restart(s: Section, p: Program) -> None:
    w = s.where
    auto = (s.get("autorestart") or "unexpected").lower()
    codes = {c.strip() for c in (s.get("exitcodes") or "0").split(",") if c.strip()}
    if auto in ("true", "1", "yes", "on"):
        p.restart = None  # permanent: our default
    elif auto in ("false", "0", "no", "off"):
        p.restart = "temporary"
    else:
        p.restart = "transient"
        if codes != {"0"}:
            p.note("approximated", f"exitcodes = {','.join(sorted(codes))}: a transient child is restarted after "
                                   "any exit but 0 here", w("exitcodes"))  # fmt: skip
    p.backoff = None


def _logs(s: Section, p: Program) -> None:
    w = s.where
    for key in _LOGS:
        target = s.get(key)
        if target is None or target.upper() == "AUTO":
            continue
        if target.upper() == "NONE":
            p.note("approximated", f"{key}=NONE: its output is still kept here (the output ring and the daemon's "
                                   "log)", w(key))  # fmt: skip
            continue
        size = s.get(f"{key}_maxbytes")
        if target.startswith(("/dev/stdout", "/dev/fd/1", "/dev/stderr", "/dev/fd/2", "/proc/self/fd/")):
            if size is not None and size.strip() not in ("0", "0MB", "0KB", "0GB"):
                p.note("trap", f"{key}={target} with {key}_maxbytes={size}: supervisord fails to rotate a "
                               "device (Illegal seek); set it to 0 there. Here the output goes to the daemon's "
                               "stdout anyway", w(key))  # fmt: skip
            else:
                p.note("caveat", f"{key}={target}: every line goes to the daemon's stdout (and journald) here, "
                                 "tagged with the child's path", w(key))  # fmt: skip
            continue
        p.note("unsupported", f"{key}={target}"
               + (f" (rotated at {size})" if size else "")
               + ": no log files here: the output goes to the daemon's log (journald under systemd: "
                 "journalctl -u mcp-supervisor) and `ctl logs`", w(key))  # fmt: skip
    if (s.get("redirect_stderr") or "").lower() == "true":
        p.note(
            "caveat", "redirect_stderr=true: stderr lines are kept with stdout's, marked stderr", w("redirect_stderr")
        )


def parse_environment(text: str, imp: Imported, where: str) -> dict[str, str]:
    """``KEY="a b",KEY2='c',KEY3=d`` (supervisord's syntax: a comma between pairs, quotes optional)."""
    out: dict[str, str] = {}
    lexer = shlex.shlex(text.replace("\n", " "), posix=True)
    lexer.whitespace = ","
    lexer.whitespace_split = True
    try:
        pairs = list(lexer)
    except ValueError as e:
        imp.note("trap", f"environment cannot be parsed ({e}): skipped", where)
        return out
    for pair in pairs:
        key, sep, value = pair.strip().partition("=")
        if not sep or not key.strip():
            imp.note("trap", f"environment: {key.strip()[:40]!r} is not KEY=value: skipped", where)
            continue
        out[key.strip()] = value
    return out


def _group(s: Section, imp: Imported) -> None:
    name = s.name.split(":", 1)[1].strip()
    members = [m.strip() for m in (s.get("programs") or "").split(",") if m.strip()]
    known = {p.id for p in imp.programs}
    g = Group(id=name, programs=[m for m in members if m in known])
    for m in members:
        if m not in known:
            g.notes.append(Note("trap", f"[group:{name}] names {m!r}, which is not a [program:x]", s.where("programs")))
    try:
        g.order = float(s.get("priority") or "999")
    except ValueError:
        g.order = 999.0
    g.notes.append(Note("caveat", f"[group:{name}] is a supervisor here: `ctl restart '{name}/*'` acts on its "
                                "programs, which are now its children (paths " + name + "/…)", s.where()))  # fmt: skip
    imp.groups.append(g)


def _listener(s: Section, imp: Imported) -> None:
    events = (s.get("events") or "").upper()
    command = (s.get("command") or "").lower()
    fail_fast = ("PROCESS_STATE_FATAL" in events or "PROCESS_STATE_EXITED" in events) and any(
        w in command for w in ("kill", "fatal", "stop", "exit", "shutdown", "quit")
    )
    if fail_fast:
        imp.intensity, imp.period, imp.exit_code = 0, 1.0, "child"
        imp.note("approximated", f"[{s.name}] stops everything when a program dies (events {events or '?'}): here "
                                 "the root gives up at the first exit (intensity = 0) and the daemon exits with "
                                 "that child's status (exit_code = \"child\")", s.where())  # fmt: skip
    else:
        imp.note("unsupported", f"[{s.name}] (events {events or '?'}): event listeners do not exist here; for "
                                "notifications use [[daemon.alerts]] (a webhook or a command: docs/forensics.md), "
                                "for logs the daemon's JSON log", s.where())  # fmt: skip
