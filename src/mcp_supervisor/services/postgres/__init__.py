"""``worker = "postgres"``: an asyncpg pool with the seed's features done right.

- ``settings``: the child's ``config`` table, parsed once (in ``env = "prod"`` a missing host or password is a config
  error, never a silent default); the handle's errors; identifier quoting.
- ``handle``: ``Database``, the concurrency-safe handle (checkout and command timeouts, query events), with
  ``tenancy`` (schema per tenant) and ``timescale`` (hypertables, soft deletes) mixed in through ``queries``.
- ``pool`` and ``session``: our own pool, lighter than asyncpg's, which skips the reset round trip where the
  statements run cannot have left session state.
- ``worker``: start, ready, liveness, close. ``lint`` and ``tools``: ``mcp-supervisor db lint`` and ``db seed``.
"""

from .handle import Database as Database
from .settings import SETTINGS_KEYS as SETTINGS_KEYS
from .settings import ExtensionMissing as ExtensionMissing
from .settings import PgSettings as PgSettings
from .settings import PoolExhausted as PoolExhausted
from .settings import TenantError as TenantError
from .settings import quote_ident as quote_ident
from .settings import tenant_schema as tenant_schema
from .worker import factory as factory
from .worker import run_postgres as run_postgres
