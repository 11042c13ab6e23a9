"""Everything an in-process worker needs, in one module (docs/workers.md is its contract).

A worker for the daemon is a factory: ``worker = "myapp.jobs:factory"`` calls ``factory(config)`` with the child's
``config`` table when the config is loaded; it validates that table (:class:`Settings`) and returns
``async def run(ctx)``, which calls ``ctx.started(handle)`` once usable. The service handles (``Database``,
``Cache``, ``Storage``, ``Vault``) are here too, imported only when a worker asks for one: each needs its extra
(``mcp-supervisor-otp[postgres]`` ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config.settings import SettingError as SettingError
from .config.settings import Settings as Settings
from .config.settings import read_secret_file as read_secret_file
from .core import Call as Call
from .core import CalleeExited as CalleeExited
from .core import CallError as CallError
from .core import CallTimeout as CallTimeout
from .core import Cast as Cast
from .core import ChildContext as ChildContext
from .core import Key as Key
from .core import Mailbox as Mailbox
from .core import MailboxFull as MailboxFull
from .core import NotRunning as NotRunning
from .core import Shutdown as Shutdown
from .core import WorkerFn as WorkerFn
from .health.probe import Probeable as Probeable
from .health.probe import ProbeResult as ProbeResult
from .services.base import ServiceError as ServiceError
from .services.base import ServiceRef as ServiceRef
from .services.base import ServiceUnavailable as ServiceUnavailable
from .services.base import service as service
from .telemetry.logs import get_logger as get_logger

if TYPE_CHECKING:
    from .services.postgres import Database as Database
    from .services.redis import MISS as MISS
    from .services.redis import Cache as Cache
    from .services.s3 import Storage as Storage
    from .services.vault import Vault as Vault

_HANDLES = {
    "Database": "mcp_supervisor.services.postgres",
    "Cache": "mcp_supervisor.services.redis",
    "MISS": "mcp_supervisor.services.redis",
    "Storage": "mcp_supervisor.services.s3",
    "Vault": "mcp_supervisor.services.vault",
}


def __getattr__(name: str) -> Any:
    """The service handles, imported when first asked for (their client libraries are extras)."""
    module = _HANDLES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
