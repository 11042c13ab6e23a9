"""``env_file``: dotenv files (``KEY=value``, quotes, ``export``, comments, ``${VAR}`` and ``${VAR:-default}``,
multi-line quoted values), parsed by python-dotenv; a line it cannot parse is an error naming the file and line.

A relative path is relative to the config file's directory. Files are read at every load (a reload re-reads them;
a changed value restarts the children that get it, as a changed ``env`` does).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from typing import Any

from dotenv.parser import parse_stream
from dotenv.variables import parse_variables

from .reader import Reader
from .settings import kind_of, read_small_file

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")


def env_files(ctx: Reader, value: Any, key: str) -> list[str]:
    """The ``env_file`` key: a path or an array of paths, made absolute against the config file's directory."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise ctx.error(key, f'must be a path or an array of paths (["app.env", ...]), got {kind_of(value)}')
    base = os.path.dirname(os.path.abspath(ctx.file)) if ctx.file and not ctx.file.startswith("<") else os.getcwd()
    return [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for p in paths]


def read_env_files(ctx: Reader, paths: list[str], key: str, outer: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``paths``, in order (a later file wins); ``${VAR}`` sees the files' earlier variables, then
    ``outer`` (the daemon's environment)."""
    out: dict[str, str] = {}
    for path in paths:
        try:
            text = read_small_file(path)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ctx.error(key, f"cannot read {path}: {reason}") from None
        out.update(parse_env(ctx, text, path, key, {**outer, **out}))
    return out


def parse_env(ctx: Reader, text: str, path: str, key: str, outer: Mapping[str, str]) -> dict[str, str]:
    """One dotenv file's variables; an unparsable line is a ConfigError naming ``path`` and its line."""
    out: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            first = binding.original.string.strip().splitlines()[0] if binding.original.string.strip() else ""
            name = first.removeprefix("export ").split("=", 1)[0].strip()
            what = f"the line of {name!r}" if _NAME.fullmatch(name) else "this line"  # never a value: a secret
            raise ctx.error(key, f"{path}:{line}: cannot parse {what} (expected NAME=value, with the value quoted "
                                 "if it has spaces, # or quotes)")  # fmt: skip
        if binding.key is None:
            continue  # a comment or a blank line
        if binding.value is None:  # `NAME` alone: taken from the environment, as dotenv does
            if binding.key in outer:
                out[binding.key] = outer[binding.key]
            continue
        if binding.original.string.partition("=")[2].lstrip().startswith("'"):
            out[binding.key] = binding.value  # single quotes: literal, as in a shell
            continue
        env = {**outer, **out}
        out[binding.key] = "".join(atom.resolve(env) for atom in parse_variables(binding.value))
    return out
