"""The fork server's program: ``python -m mcp_supervisor.core.forkmain FD [MODULE...]`` (see :mod:`.forkserver`).

A module of its own, imported by nothing: run with ``-m``, the server's code is imported once, as a module."""

from __future__ import annotations

import sys

from .forkserver import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:])
