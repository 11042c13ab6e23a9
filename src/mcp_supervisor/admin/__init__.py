"""The admin HTTP port: status, health, metrics, and a few token-guarded controls."""

from .server import AdminServer, AdminState, Health, find_health, tree_health, tree_ready

__all__ = ["AdminServer", "AdminState", "Health", "find_health", "tree_health", "tree_ready"]
