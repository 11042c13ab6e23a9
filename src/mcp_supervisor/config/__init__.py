"""The only reader of the TOML config and of the environment for it: frozen, validated config objects.

Errors are :class:`ConfigError` naming the file, the line where it can be found, and the key path, e.g.
``config.toml:14: tree.children[1].children[0].shutdown: must be >= 0 seconds, "brutal_kill" or "infinity", got -1``.
"""

from .load import load_config, parse_config
from .model import DEFAULT_ADMIN, DEFAULT_CONFIG_PATH, ChildEntry, Config, ConfigError, DaemonConfig, WorkerFactory
from .reader import split_host_port

__all__ = [
    "DEFAULT_ADMIN",
    "DEFAULT_CONFIG_PATH",
    "ChildEntry",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "WorkerFactory",
    "load_config",
    "parse_config",
    "split_host_port",
]
