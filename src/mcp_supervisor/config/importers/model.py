"""What an importer builds — programs, groups, daemon settings, each with the notes a person must read — and the
``supervision.toml`` text it becomes, with a comment wherever something was approximated or left out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

NoteKind = Literal["caveat", "approximated", "unsupported", "trap"]


@dataclass(frozen=True, slots=True)
class Note:
    kind: NoteKind
    text: str
    where: str = ""  # "supervisord.conf:12" — where the source says it

    def comment(self) -> list[str]:
        label = {"caveat": "note", "approximated": "APPROXIMATED", "unsupported": "NOT IMPORTED", "trap": "WARNING"}
        head = f"{label[self.kind]}{' (' + self.where + ')' if self.where else ''}: "
        return [f"# {line}" for line in _wrap(head + self.text, 116)]


@dataclass(slots=True)
class Program:
    """One child to write: an OS process table."""

    id: str
    command: list[str]
    where: str = ""
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_file: list[str] = field(default_factory=list)
    user: str | None = None
    umask: str | None = None
    restart: str | None = None  # None: our default (permanent)
    shutdown: float | None = None
    stop_signal: str | None = None
    instances: int | None = None
    start_retries: int | None = None
    ready_after: float | None = None  # seconds it must stay up to count as started (supervisord's startsecs)
    ready_tcp: str | None = None
    max_memory: str | None = None
    backoff: dict[str, float] | None = None
    order: float = 0.0
    disabled: bool = False  # written commented out (autostart=false)
    notes: list[Note] = field(default_factory=list)

    def note(self, kind: NoteKind, text: str, where: str = "") -> None:
        self.notes.append(Note(kind, text, where or self.where))


@dataclass(slots=True)
class Group:
    """A supervisor of some programs (supervisord's ``[group:x]``)."""

    id: str
    programs: list[str]
    order: float = 0.0
    notes: list[Note] = field(default_factory=list)


@dataclass(slots=True)
class Imported:
    source: str
    format: str
    programs: list[Program] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    admin: str | None = None
    intensity: int | None = None
    period: float | None = None
    exit_code: str | None = None
    notes: list[Note] = field(default_factory=list)  # about the whole file (the [daemon] and [tree] part)
    files: list[str] = field(default_factory=list)  # every file read (includes, env files)

    def note(self, kind: NoteKind, text: str, where: str = "") -> None:
        self.notes.append(Note(kind, text, where))

    def counts(self) -> dict[str, int]:
        every = self.notes + [n for p in self.programs for n in p.notes] + [n for g in self.groups for n in g.notes]
        out = {"programs": len([p for p in self.programs if not p.disabled]), "disabled": 0, "approximated": 0,
               "unsupported": 0, "trap": 0, "caveat": 0}  # fmt: skip
        out["disabled"] = len(self.programs) - out["programs"]
        for n in every:
            out[n.kind] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{c['programs']} program(s) imported"]
        if c["disabled"]:
            parts.append(f"{c['disabled']} written commented out (autostart=false)")
        parts += [f"{c['approximated']} approximated", f"{c['unsupported']} not imported",
                  f"{c['trap']} warning(s)"]  # fmt: skip
        return f"{self.source}: " + ", ".join(parts) + " — each is a comment in the output"


def toml_string(text: str) -> str:
    """A TOML basic string; a ``$`` is doubled (the config expands ``${VAR}`` at load: ``$$`` is a ``$``)."""
    return json.dumps(text.replace("$", "$$"), ensure_ascii=False)


def toml_raw(text: str) -> str:
    """A TOML basic string whose ``${VAR}`` the config expands at load (supervisord's ``%(ENV_X)s``)."""
    return json.dumps(text, ensure_ascii=False)


def _array(items: list[str], raw: bool = False) -> str:
    return "[" + ", ".join(toml_raw(i) if raw else toml_string(i) for i in items) + "]"


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE.fullmatch(name) else json.dumps(name)


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def render(imp: Imported) -> str:
    """The ``supervision.toml`` text: a header, ``[daemon]``, ``[tree]``, then each child in start order."""
    out = [f"# imported from {imp.source} ({imp.format}) by `mcp-supervisor import`", f"# {imp.summary()}",
           "# Read every comment below, then: mcp-supervisor check-config THIS_FILE", ""]  # fmt: skip
    out += ["[daemon]"]
    if imp.admin:
        out.append(f"admin = {toml_string(imp.admin)}")
    if imp.exit_code:
        out.append(f"exit_code = {toml_string(imp.exit_code)}")
    out += ["", "[tree]"]
    for n in imp.notes:
        out += n.comment()
    if imp.intensity is not None:
        out.append(f"intensity = {imp.intensity}")
    if imp.period is not None:
        out.append(f"period = {_number(imp.period)}")
    grouped = {name for g in imp.groups for name in g.programs}
    by_id = {p.id: p for p in imp.programs}
    items: list[tuple[float, int, Program | Group]] = [(p.order, i, p) for i, p in enumerate(imp.programs)
                                                       if p.id not in grouped]  # fmt: skip
    items += [(g.order, len(imp.programs) + i, g) for i, g in enumerate(imp.groups)]
    for _, _, item in sorted(items, key=lambda t: (t[0], t[1])):
        out.append("")
        if isinstance(item, Group):
            out += [line for n in item.notes for line in n.comment()]
            out += ["[[tree.children]]", f"id = {toml_string(item.id)}", 'strategy = "one_for_one"',
                    "intensity = 1000  # supervisord restarts its programs without a limit", "period = 1"]  # fmt: skip
            members = sorted((by_id[name] for name in item.programs if name in by_id), key=lambda p: p.order)
            for p in members:
                out.append("")
                out += _program(p, "tree.children.children")
        else:
            out += _program(item, "tree.children")
    return "\n".join(out).rstrip() + "\n"


def _program(p: Program, table: str) -> list[str]:  # noqa: C901, PLR0912 - one line per key, in a fixed order
    lines = [line for n in p.notes for line in n.comment()]
    body = [f"[[{table}]]", f"id = {toml_string(p.id)}", f"command = {_array(p.command, raw=True)}"]
    if p.cwd:
        body.append(f"cwd = {toml_raw(p.cwd)}")
    if p.env_file:
        body.append(f"env_file = {_array(p.env_file)}")
    if p.env:
        body.append("env = { " + ", ".join(f"{_key(k)} = {toml_raw(v)}" for k, v in p.env.items()) + " }")
    if p.user:
        body.append(f"user = {toml_string(p.user)}")
    if p.umask:
        body.append(f"umask = {toml_string(p.umask)}")
    if p.restart:
        body.append(f"restart = {toml_string(p.restart)}")
    if p.instances is not None:
        body.append(f"instances = {p.instances}")
    if p.start_retries is not None:
        body.append(f"start_retries = {p.start_retries}")
    if p.ready_after:
        secs = _number(p.ready_after)
        body.append(f'ready = {{ command = ["sleep", "{secs}"], timeout = {_number(p.ready_after + 30)} }}'
                    f"  # up for {secs} s counts as started")  # fmt: skip
    elif p.ready_tcp:
        body.append(f"ready = {{ tcp = {toml_string(p.ready_tcp)} }}")
    if p.stop_signal:
        body.append(f"stop_signal = {toml_string(p.stop_signal)}")
    if p.shutdown is not None:
        body.append(f"shutdown = {_number(p.shutdown)}")
    if p.max_memory:
        body.append(f"max_memory = {toml_string(p.max_memory)}")
    if p.backoff:
        body.append("backoff = { " + ", ".join(f"{k} = {_number(v)}" for k, v in p.backoff.items()) + " }")
    if p.disabled:
        return lines + [f"# {line}" for line in body]
    return lines + body


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return [*lines, line] if line else lines
