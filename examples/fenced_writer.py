"""A singleton's writes guarded by its fencing token (an example, and what the fleet tests run).

Run as an OS-process child with ``singleton = true``: the daemon that holds the lease passes its token in
``MCP_FENCING_TOKEN``. Every write says ``WHERE fencing_token <= $token``, so once a newer holder has written, a
late write of an older holder — a paused node that wakes up, a partitioned one — changes nothing.

    python examples/fenced_writer.py postgresql://.../db NODE-NAME

Each attempt is also logged in ``fenced_log`` (node, token, time, accepted), which the tests analyse.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS fenced (k int PRIMARY KEY, fencing_token bigint NOT NULL, node text, writes bigint);
INSERT INTO fenced VALUES (1, 0, NULL, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS fenced_log (node text, token bigint, at timestamptz DEFAULT clock_timestamp(),
                                       accepted boolean);
"""


async def main(dsn: str, node: str) -> None:
    token = int(os.environ["MCP_FENCING_TOKEN"])
    print(f"writing as {node} with token {token}", flush=True)
    while True:
        try:
            await write(dsn, node, token)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as e:
            # (InternalClientError: asyncpg's state machine when the server vanishes mid-statement)
            print(f"the database does not answer ({type(e).__name__}); retrying", flush=True)
            await asyncio.sleep(0.2)


async def write(dsn: str, node: str, token: int) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
            await conn.execute(SCHEMA)
        while True:
            async with conn.transaction():
                done = await conn.fetchval(
                    "UPDATE fenced SET fencing_token = $1, node = $2, writes = writes + 1"
                    " WHERE k = 1 AND fencing_token <= $1 RETURNING writes",
                    token, node,
                )  # fmt: skip
                await conn.execute("INSERT INTO fenced_log (node, token, accepted) VALUES ($1, $2, $3)",
                                   node, token, done is not None)  # fmt: skip
            await asyncio.sleep(0.05)
    finally:
        conn.terminate()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
