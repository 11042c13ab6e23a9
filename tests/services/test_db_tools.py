"""``mcp-supervisor db lint`` and ``db seed`` against a private PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from mcp_supervisor.testing.servers import PgServer

DIRTY = """
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
CREATE TABLE nopk (x int);
CREATE TABLE dup (id int PRIMARY KEY, y int);
CREATE INDEX dup_y_1 ON dup (y);
CREATE INDEX dup_y_2 ON dup (y);
CREATE VIEW definer_view AS SELECT id FROM parent;
CREATE FUNCTION mutable_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE EXTENSION citext VERSION '1.4' SCHEMA public;
CREATE TABLE regcol (id int PRIMARY KEY, fn regproc);
CREATE TABLE pol_no_rls (id int PRIMARY KEY);
CREATE POLICY p1 ON pol_no_rls USING (id > 0);
CREATE TABLE rls_no_pol (id int PRIMARY KEY);
ALTER TABLE rls_no_pol ENABLE ROW LEVEL SECURITY;
CREATE TABLE two_perm (id int PRIMARY KEY);
ALTER TABLE two_perm ENABLE ROW LEVEL SECURITY;
CREATE POLICY a ON two_perm FOR SELECT USING (id > 0);
CREATE POLICY b ON two_perm FOR SELECT USING (id < 100);
CREATE TABLE always (id int PRIMARY KEY);
ALTER TABLE always ENABLE ROW LEVEL SECURITY;
CREATE POLICY open_update ON always FOR UPDATE USING (true);
CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.items (id int PRIMARY KEY, v int);
CREATE SCHEMA tenant_b; CREATE TABLE tenant_b.items (id int PRIMARY KEY, v text);
CREATE SCHEMA tenant_c; CREATE TABLE tenant_c.items (id int PRIMARY KEY, v int);
"""

CLEAN = """
CREATE SCHEMA app;
CREATE TABLE app.parent (id int PRIMARY KEY);
CREATE TABLE app.child (parent_id int REFERENCES app.parent (id), id int, PRIMARY KEY (parent_id, id));
CREATE VIEW app.invoker_view WITH (security_invoker = true) AS SELECT id FROM app.parent;
CREATE FUNCTION app.safe_fn() RETURNS int LANGUAGE sql SET search_path = '' AS 'SELECT 1';
CREATE TABLE app.secured (id int PRIMARY KEY, owner text NOT NULL);
ALTER TABLE app.secured ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON app.secured USING (owner = current_user);
CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.items (id int PRIMARY KEY, v int);
CREATE SCHEMA tenant_b; CREATE TABLE tenant_b.items (id int PRIMARY KEY, v int);
"""

EXPECTED = {
    "unindexed_foreign_keys", "no_primary_key", "unused_index", "duplicate_index", "security_definer_view",
    "function_search_path_mutable", "extension_in_public", "unsupported_reg_types", "extension_versions_outdated",
    "policy_exists_rls_disabled", "rls_enabled_no_policy", "multiple_permissive_policies", "rls_policy_always_true",
    "tenant_schema_drift",
}  # fmt: skip


async def fresh_db(pg: PgServer, name: str, ddl: str) -> str:
    admin = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="postgres", database="postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(ddl)
    finally:
        await conn.close()
    return dsn


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_supervisor.cli", "db", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})  # fmt: skip


async def test_lint_finds_every_planted_problem(pg: PgServer) -> None:
    dsn = await fresh_db(pg, "lint_dirty", DIRTY)
    run = cli("--dsn", dsn, "lint", "--json")
    assert run.returncode == 1, run.stderr  # there are ERROR findings
    findings = json.loads(run.stdout)
    assert {f["name"] for f in findings} == EXPECTED
    by = {(f["name"], f["detail"]) for f in findings}
    assert (
        "unindexed_foreign_keys",
        "Table public.child has foreign key child_parent_id_fkey (parent_id) without a covering index",
    ) in by
    assert any(n == "no_primary_key" and "public.nopk" in d for n, d in by)
    assert any(n == "duplicate_index" and "dup_y_1, dup_y_2" in d for n, d in by)
    assert any(
        n == "tenant_schema_drift" and "tenant_b" in d and "items.v: text (expected integer)" in d for n, d in by
    )
    assert all(set(f) >= {"name", "title", "level", "facing", "categories", "description", "detail", "remediation",
                          "metadata", "cache_key"} for f in findings)  # fmt: skip
    table = cli("--dsn", dsn, "lint", "--fail-on", "error")
    assert table.returncode == 1 and "ERROR  security_definer_view" in table.stdout


async def test_lint_finds_nothing_in_a_clean_schema(pg: PgServer) -> None:
    dsn = await fresh_db(pg, "lint_clean", CLEAN)
    run = cli("--dsn", dsn, "lint", "--fail-on", "info")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "no problems found"


async def test_seed_is_idempotent_transactional_and_refuses_prod(pg: PgServer, tmp_path: Path) -> None:
    dsn = await fresh_db(pg, "seeded", "CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL);")
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"plans": [{"id": 1, "name": "free"}, {"id": 2, "name": "pro"}]}))
    first = cli("--dsn", dsn, "seed", str(seed))
    assert first.returncode == 0 and "plans: 2 rows inserted" in first.stdout
    again = cli("--dsn", dsn, "seed", str(seed))
    assert again.returncode == 0 and "plans: 0 rows inserted" in again.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[plans]]\nid = 3\nname = "team"\n\n[[plans]]\nid = 4\n')  # the 2nd row violates NOT NULL
    failed = cli("--dsn", dsn, "seed", str(bad))
    assert failed.returncode == 1 and "nothing was written" in failed.stderr
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM plans") == 2  # id 3 was rolled back with id 4
    finally:
        await conn.close()
    refused = cli("--dsn", dsn, "seed", str(seed), env={"ENV": "prod"})
    assert refused.returncode == 1 and "--force" in refused.stderr
    forced = cli("--dsn", dsn, "seed", str(seed), "--force", env={"ENV": "prod"})
    assert forced.returncode == 0


@pytest.mark.parametrize("column", ["id; DROP TABLE plans", 'x"y'])
async def test_seed_rejects_unsafe_column_names(pg: PgServer, tmp_path: Path, column: str) -> None:
    dsn = await fresh_db(pg, "seeded2", "CREATE TABLE plans (id int PRIMARY KEY);")
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"plans": [{column: 1}]}))
    run = cli("--dsn", dsn, "seed", str(seed))
    assert run.returncode == 1 and "invalid column name" in run.stderr
