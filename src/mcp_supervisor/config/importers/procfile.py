"""A Procfile (foreman, honcho, Heroku): ``type: command`` lines, run by a shell, each type with its own ``$PORT``
(5000, 5100, ... as foreman and honcho give them), ``release:`` left for a deploy step, a ``.env`` beside it as an
env file."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from .model import Imported, Program
from .traps import daemonizes, needs_shell, shell_command

_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*)$")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
BASE_PORT = 5000
STEP = 100


def import_procfile(path: str) -> Imported:
    imp = Imported(source=path, format="procfile")
    imp.files.append(path)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    here = os.path.dirname(os.path.abspath(path))  # foreman and honcho run each process in the Procfile's directory
    dotenv = os.path.join(here, ".env")
    env_file = [dotenv] if os.path.isfile(dotenv) else []
    if env_file:
        imp.files.append(dotenv)
    index = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        m = _LINE.match(line)
        if m is None:
            imp.note("trap", f"{line[:60]!r} is not `type: command`: skipped", where)
            continue
        name, command = m.group(1), m.group(2).strip()
        if not command:
            imp.note("trap", f"{name}: has no command: skipped", where)
            continue
        if name == "release":
            imp.note("unsupported", f"release: {command} — a one-shot step a deploy runs before the processes "
                                    "start; run it there (or ExecStartPre= in the systemd unit), not under a "
                                    "supervisor that would restart it", where)  # fmt: skip
            continue
        if any(p.id == name for p in imp.programs):
            imp.note("trap", f"{name}: a second line for the same type: skipped", where)
            continue
        port = BASE_PORT + STEP * index
        index += 1
        imp.programs.append(_program(name, command, where=where, port=port, env_file=env_file, cwd=here, order=index))
    if env_file:
        imp.note("caveat", ".env beside the Procfile is every process's env_file (values secret by their names)")
    if not imp.programs:
        imp.note("trap", "no process type found (lines are `web: command`)")
    return imp


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _program(name: str, command: str, *, where: str, port: int, env_file: list[str], cwd: str, order: int) -> Program:
    p = Program(id=name, command=[], where=where, env_file=list(env_file), cwd=cwd.replace("$", "$$"), order=order)
    p.env["PORT"] = str(port)
    words = _words(command)
    if words and not needs_shell(command, dollar=True):
        while len(words) > 1 and _ASSIGN.match(words[0]):  # VAR=value prefixes: its environment
            key, _, value = words.pop(0).partition("=")
            p.env[key] = value.replace("$", "$$")
        p.command = [w.replace("$", "$$") for w in words]
    else:  # the shell sets the prefixes itself, and expands $PORT and ${VAR:-default} as honcho's shell does
        p.command = [w.replace("$", "$$") for w in shell_command(command)]
    p.note("caveat", f"PORT={port} (foreman's and honcho's numbering: {BASE_PORT} + {STEP} per type)", where)
    trap = daemonizes(p.command)
    if trap:
        p.note("trap", trap, where)
    return p
