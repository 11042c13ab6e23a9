"""The command line: ``run``, ``check-config``, ``systemd-unit``, ``db`` (``main``) and ``ctl``."""

from .main import main

__all__ = ["main"]
