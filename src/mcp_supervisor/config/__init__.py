"""The only reader of the TOML config and of the environment for it: frozen, validated config objects.

Errors are :class:`ConfigError` naming the file, the line where it can be found, and the key path, e.g.
``config.toml:14: tree.children[1].children[0].shutdown: must be >= 0 seconds, "brutal_kill" or "infinity", got -1``.
"""

from .load import (
    DEFAULT_CONFIG_PATH,
    ChildEntry,
    Config,
    ConfigError,
    DaemonConfig,
    WorkerFactory,
    builtin_workers,
    load_config,
    parse_config,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ChildEntry",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "WorkerFactory",
    "builtin_workers",
    "load_config",
    "parse_config",
]
