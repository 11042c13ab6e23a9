"""The admin HTTP port: status, health, metrics, events, logs, the web observer, and token-guarded controls."""

from .seams import Controls, Health, Outcome, TreePort, Views, find_health
from .server import AdminServer, build_app, tree_health, tree_ready

__all__ = [
    "AdminServer", "Controls", "Health", "Outcome", "TreePort", "Views", "build_app", "find_health", "tree_health",
    "tree_ready",
]  # fmt: skip
