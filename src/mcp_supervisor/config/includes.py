"""``include = ["conf.d/*.toml"]``: files that add children — to the root, or to the supervisor their ``parent``
names — and nothing else (no ``[daemon]``, ``[tree]`` or ``[cluster]``). Paths and globs are relative to the main
file's directory; a glob's files are read in sorted order; an error names the included file and its line."""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from .locate import too_deep
from .model import ConfigError
from .reader import Reader, check_keys
from .settings import kind_of, read_small_file

MAX_INCLUDED = 1000  # files
MAX_FILE = 4 * 2**20


@dataclass(frozen=True, slots=True)
class Included:
    """One included file, read: its reader (errors name it) and its ``[[children]]`` tables."""

    reader: Reader
    parent: str
    children: list[Any]


def read_includes(ctx: Reader, value: Any) -> list[Included]:
    """Every file ``include`` names, in order (each glob's matches sorted), each read and checked."""
    if value is None:
        return []
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ctx.error("include", f'must be a path or an array of paths and globs (["conf.d/*.toml"]), got '
                                   f"{kind_of(value)}")  # fmt: skip
    base = os.path.dirname(os.path.abspath(ctx.file)) if not ctx.file.startswith("<") else os.getcwd()
    files: list[str] = []
    for pattern in patterns:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(pattern)))
        if glob.has_magic(full):
            matches = sorted(glob.glob(full))
            if not matches:
                ctx.warnings.append(f"include: {pattern} matches no file")
            files += [m for m in matches if m not in files]
        elif full not in files:
            files.append(full)
    if len(files) > MAX_INCLUDED:
        raise ctx.error("include", f"names {len(files)} files (at most {MAX_INCLUDED})")
    return [_read(ctx, path) for path in files if os.path.realpath(path) != os.path.realpath(ctx.file)]


def _read(ctx: Reader, path: str) -> Included:
    try:
        text = read_small_file(path, MAX_FILE)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ctx.error("include", f"cannot read {path}: {reason}") from None
    sub = Reader(path, text, ctx.env, ctx.workers, ctx.factories)
    for name in (
        "secrets",
        "sockets",
        "replicas",
        "singletons",
        "cluster",
        "warnings",
        "host_checks",
        "daemon_env",
        "included",
        "included_used",
    ):
        setattr(sub, name, getattr(ctx, name))  # one config: shared secrets, sockets, warnings...
    deep = too_deep(text, 64)
    if deep is not None:
        raise ConfigError(path, "", "tables or arrays nest deeper than 64 levels", deep)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(path, "", f"not valid TOML: {e}", int(m.group(1)) if m else None) from None
    for key in ("daemon", "tree", "cluster", "include"):
        if key in raw:
            raise sub.error(key, f"an included file adds children only; [{key}] belongs in the main file "
                                 f"({ctx.file})")  # fmt: skip
    check_keys(sub, raw, {"parent", "children"}, "")
    data = sub.expand(raw, "")
    parent = data.get("parent", "")
    if not isinstance(parent, str):
        raise sub.error("parent", f'must be the path of a supervisor ("" for the root), got {kind_of(parent)}')
    children = data.get("children", [])
    if not isinstance(children, list):
        raise sub.error("children", "must be an array of tables ([[children]])")
    return Included(sub, parent.strip("/"), children)


def attach(ctx: Reader, files: list[Included]) -> None:
    """Make each file's children known to the supervisor its ``parent`` names (built with its own children)."""
    for inc in files:
        ctx.included.setdefault(inc.parent, []).append(inc)


def check_parents(ctx: Reader) -> None:
    """Every ``parent`` an included file named is a supervisor of the tree."""
    for parent, files in ctx.included.items():
        if parent not in ctx.included_used:
            sub = files[0].reader
            raise sub.error("parent", f"{parent!r} is not a supervisor of the tree (a path like \"edge\", or "
                                      "\"\" for the root)")  # fmt: skip
