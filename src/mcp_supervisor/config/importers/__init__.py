"""``mcp-supervisor import``: supervisord.conf, Procfiles and PM2 ecosystem files → ``supervision.toml``, with a
comment wherever something was approximated or left out (docs/importing.md has the mapping)."""

from __future__ import annotations

import os
from pathlib import Path

from .model import Imported, render
from .pm2 import Pm2Error, import_pm2
from .procfile import import_procfile
from .supervisord import import_supervisord

FORMATS = ("supervisord", "procfile", "pm2")

__all__ = ["FORMATS", "Imported", "Pm2Error", "detect", "import_file", "render"]


def detect(path: str) -> str | None:
    """The format a file's name (or its first section) says, or None."""
    name = os.path.basename(path).lower()
    if name.startswith("procfile"):
        return "procfile"
    if name.endswith((".json", ".js", ".cjs", ".mjs", ".yaml", ".yml")) or "ecosystem" in name:
        return "pm2"
    if name.endswith((".conf", ".ini")) or "supervisor" in name:
        return "supervisord"
    try:
        head = Path(path).read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return None
    if "[program:" in head or "[supervisord]" in head:
        return "supervisord"
    return None


def import_file(path: str, fmt: str | None = None, env_name: str | None = None) -> Imported:
    """Read ``path`` as ``fmt`` (detected when None). OSError: unreadable; ValueError: not that format."""
    fmt = fmt or detect(path)
    if fmt is None:
        raise ValueError("cannot tell its format from its name: give --format supervisord, procfile or pm2")
    if fmt == "supervisord":
        return import_supervisord(path)
    if fmt == "procfile":
        return import_procfile(path)
    if fmt == "pm2":
        return import_pm2(path, env_name)
    raise ValueError(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
