"""``worker = "redis"``: cache, cache-aside with single-flight, and pub/sub, done right.

- ``settings``: the child's ``config`` table and the client it describes. ``values``: the JSON envelope that tells a
  miss (:data:`MISS`) from a stored ``null``, pub/sub ``Message`` and ``Gap``, TTL jitter.
- ``cache``: ``Cache``, the concurrency-safe handle. ``lanes``: the few pipelined connections that carry its commands.
- ``worker``: start, ready, liveness, close.
"""

from .cache import Cache as Cache
from .settings import SETTINGS_KEYS as SETTINGS_KEYS
from .settings import RedisSettings as RedisSettings
from .values import MISS as MISS
from .values import CacheError as CacheError
from .values import Gap as Gap
from .values import Message as Message
from .worker import factory as factory
from .worker import run_redis as run_redis
