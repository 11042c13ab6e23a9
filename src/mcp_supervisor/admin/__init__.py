"""The admin HTTP port: status, health, metrics, and a few token-guarded controls."""

from .server import AdminServer, AdminState, tree_health

__all__ = ["AdminServer", "AdminState", "tree_health"]
