"""``mcp-supervisor db lint``: schema checks modelled on Supabase splinter's portable lints.

Re-implemented from the lints' descriptions (no SQL copied). Each finding has splinter's output shape: ``name,
title, level, facing, categories, description, detail, remediation, metadata, cache_key``. Objects owned by
extensions and the system schemas are never reported.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

LEVELS = ("INFO", "WARN", "ERROR")
_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"
_USER_NS = f"n.nspname NOT IN {_SYSTEM} AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast%'"


def _not_extension(oid_expr: str, classid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{classid}'::regclass "
            f"AND d.objid = {oid_expr} AND d.deptype = 'e')")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    title: str
    level: str
    description: str
    detail: str
    remediation: str
    metadata: dict[str, Any] = field(default_factory=dict)
    facing: str = "EXTERNAL"
    categories: tuple[str, ...] = ("PERFORMANCE",)

    @property
    def cache_key(self) -> str:
        return f"{self.name}_{'_'.join(str(v) for v in self.metadata.values())}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories)
        d["cache_key"] = self.cache_key
        return d


@dataclass(frozen=True, slots=True)
class Lint:
    name: str
    title: str
    level: str
    categories: tuple[str, ...]
    description: str
    remediation: str
    sql: str
    detail: str  # format string over the row's columns


LINTS: tuple[Lint, ...] = (
    Lint(
        "unindexed_foreign_keys", "Unindexed foreign keys", "INFO", ("PERFORMANCE",),
        "A foreign key whose columns are not the leading columns of any index: joins and cascades scan the table.",
        "Create an index whose leading columns are the foreign key's columns.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table", c.conname AS fkey,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(att, ord)
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att) AS columns
        FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE c.contype = 'f' AND {_USER_NS} AND {_not_extension("cl.oid", "pg_class")}
          AND NOT EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = c.conrelid AND i.indisvalid AND i.indnkeyatts >= cardinality(c.conkey)
              AND (SELECT array_agg(x ORDER BY x) FROM unnest((i.indkey::int2[])[0:cardinality(c.conkey) - 1]) x)
                = (SELECT array_agg(x ORDER BY x) FROM unnest(c.conkey) x))
        ORDER BY 1, 2, 3""",
        "Table {schema}.{table} has foreign key {fkey} ({columns}) without a covering index",
    ),
    Lint(
        "no_primary_key", "No primary key", "INFO", ("PERFORMANCE",),
        "A table without a primary key: rows cannot be addressed reliably and logical replication cannot update it.",
        "Add a primary key.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table"
        FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE cl.relkind IN ('r', 'p') AND NOT cl.relispartition AND {_USER_NS}
          AND {_not_extension("cl.oid", "pg_class")}
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = cl.oid AND c.contype = 'p')
        ORDER BY 1, 2""",
        "Table {schema}.{table} has no primary key",
    ),
    Lint(
        "unused_index", "Unused index", "INFO", ("PERFORMANCE",),
        "An index that has never been scanned since statistics were reset: it only costs writes and space.",
        "Drop it if it is not needed (check every replica's statistics first).",
        f"""
        SELECT s.schemaname AS schema, s.relname AS "table", s.indexrelname AS index
        FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
        JOIN pg_namespace n ON n.nspname = s.schemaname
        WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND {_USER_NS}
          AND {_not_extension("s.relid", "pg_class")}
        ORDER BY 1, 2, 3""",
        "Index {index} on {schema}.{table} has never been used",
    ),
    Lint(
        "duplicate_index", "Duplicate index", "WARN", ("PERFORMANCE",),
        "Two or more identical indexes on one table: all but one are pure overhead.",
        "Drop all but one of them.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table",
               string_agg(ic.relname, ', ' ORDER BY ic.relname) AS indexes
        FROM pg_index i JOIN pg_class cl ON cl.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE {_USER_NS} AND {_not_extension("cl.oid", "pg_class")}
        GROUP BY n.nspname, cl.relname, i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text,
                 coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), ''),
                 i.indisunique
        HAVING count(*) > 1
        ORDER BY 1, 2""",
        "Table {schema}.{table} has identical indexes: {indexes}",
    ),
    Lint(
        "security_definer_view", "Security definer view", "ERROR", ("SECURITY",),
        "A view without security_invoker runs with its owner's rights, bypassing the caller's privileges and RLS.",
        "ALTER VIEW ... SET (security_invoker = true), or revoke access to it.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS view
        FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE cl.relkind = 'v' AND {_USER_NS} AND {_not_extension("cl.oid", "pg_class")}
          AND NOT coalesce(cl.reloptions::text[] && ARRAY['security_invoker=true', 'security_invoker=on',
                                                          'security_invoker=1'], false)
        ORDER BY 1, 2""",
        "View {schema}.{view} is security definer (no security_invoker)",
    ),
    Lint(
        "function_search_path_mutable", "Function search_path mutable", "WARN", ("SECURITY",),
        "A function without its own search_path resolves names through the caller's, which can hijack it.",
        "ALTER FUNCTION ... SET search_path = '' (and schema-qualify the names it uses).",
        f"""
        SELECT n.nspname AS schema, p.proname AS function, pg_get_function_identity_arguments(p.oid) AS args
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p') AND {_USER_NS} AND {_not_extension("p.oid", "pg_proc")}
          AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{{}}')) cfg WHERE cfg LIKE 'search_path=%')
        ORDER BY 1, 2""",
        "Function {schema}.{function}({args}) has a mutable search_path",
    ),
    Lint(
        "extension_in_public", "Extension in public", "WARN", ("SECURITY",),
        "An extension installed in the public schema puts its objects where every role can reach and shadow them.",
        "Install extensions in their own schema (CREATE EXTENSION ... SCHEMA extensions).",
        """
        SELECT e.extname AS extension FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
        "Extension {extension} is installed in the public schema",
    ),
    Lint(
        "unsupported_reg_types", "Unsupported reg types", "WARN", ("SECURITY",),
        "Columns of reg* types that store OIDs pg_upgrade cannot preserve: they block major-version upgrades.",
        "Store the name as text instead.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table", a.attname AS "column", t.typname AS type
        FROM pg_attribute a JOIN pg_class cl ON cl.oid = a.attrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attnum > 0 AND NOT a.attisdropped AND cl.relkind IN ('r', 'p', 'm') AND {_USER_NS}
          AND t.typname IN ('regcollation', 'regconfig', 'regdictionary', 'regnamespace', 'regoper',
                            'regoperator', 'regproc', 'regprocedure')
        ORDER BY 1, 2, 3""",
        "Column {schema}.{table}.{column} has the unsupported type {type}",
    ),
    Lint(
        "extension_versions_outdated", "Extension versions outdated", "WARN", ("SECURITY",),
        "An installed extension older than the version the server ships.",
        "ALTER EXTENSION ... UPDATE.",
        """
        SELECT e.extname AS extension, e.extversion AS installed, a.default_version AS available
        FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
        WHERE a.default_version IS NOT NULL AND a.default_version <> e.extversion ORDER BY 1""",
        "Extension {extension} is at {installed}; {available} is available",
    ),
    Lint(
        "policy_exists_rls_disabled", "Policy exists, RLS disabled", "ERROR", ("SECURITY",),
        "A table has row-level security policies but RLS is not enabled, so none of them applies.",
        "ALTER TABLE ... ENABLE ROW LEVEL SECURITY.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table", string_agg(p.polname, ', ' ORDER BY p.polname) AS policies
        FROM pg_policy p JOIN pg_class cl ON cl.oid = p.polrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE NOT cl.relrowsecurity AND {_USER_NS}
        GROUP BY 1, 2 ORDER BY 1, 2""",
        "Table {schema}.{table} has policies ({policies}) but RLS is disabled",
    ),
    Lint(
        "rls_enabled_no_policy", "RLS enabled, no policy", "INFO", ("SECURITY",),
        "RLS is enabled but no policy exists: every row is hidden from everyone but the owner.",
        "Create policies, or disable RLS if that is the intent.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table"
        FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE cl.relrowsecurity AND {_USER_NS} AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = cl.oid)
        ORDER BY 1, 2""",
        "Table {schema}.{table} has RLS enabled and no policy",
    ),
    Lint(
        "multiple_permissive_policies", "Multiple permissive policies", "WARN", ("PERFORMANCE",),
        "Several permissive policies for one role and action are all evaluated for every row.",
        "Combine them into one policy.",
        f"""
        WITH expanded AS (
          SELECT p.polrelid, p.polname, r.role,
                 unnest(CASE p.polcmd WHEN '*' THEN ARRAY['r', 'a', 'w', 'd'] ELSE ARRAY[p.polcmd::text] END) AS cmd
          FROM pg_policy p CROSS JOIN LATERAL unnest(p.polroles) r(role) WHERE p.polpermissive)
        SELECT n.nspname AS schema, cl.relname AS "table",
               CASE WHEN e.role = 0 THEN 'public' ELSE pg_get_userbyid(e.role) END AS role,
               CASE e.cmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' ELSE 'DELETE' END AS action,
               string_agg(e.polname, ', ' ORDER BY e.polname) AS policies
        FROM expanded e JOIN pg_class cl ON cl.oid = e.polrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE {_USER_NS}
        GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 ORDER BY 1, 2, 3, 4""",
        "Table {schema}.{table} has several permissive {action} policies for role {role}: {policies}",
    ),
    Lint(
        "rls_policy_always_true", "RLS policy always true", "WARN", ("SECURITY",),
        "A write policy whose USING or WITH CHECK is just true lets every role it applies to change every row.",
        "Give the policy a real condition.",
        f"""
        SELECT n.nspname AS schema, cl.relname AS "table", p.polname AS policy
        FROM pg_policy p JOIN pg_class cl ON cl.oid = p.polrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE {_USER_NS} AND p.polcmd IN ('w', 'd', 'a', '*')
          AND (pg_get_expr(p.polqual, p.polrelid) = 'true' OR pg_get_expr(p.polwithcheck, p.polrelid) = 'true')
        ORDER BY 1, 2, 3""",
        "Policy {policy} on {schema}.{table} is always true for writes",
    ),
)  # fmt: skip


async def _tenant_shape(conn: asyncpg.Connection) -> list[Finding]:
    rows = await conn.fetch(
        """
        SELECT n.nspname AS schema, c.relname AS "table", a.attname AS "column",
               format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname LIKE 'tenant\\_%' ORDER BY 1, 2, 3"""
    )
    shapes: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        shape = shapes[r["schema"]]
        if r["table"] is not None:
            shape[r["table"]]
            if r["column"] is not None:
                shape[r["table"]][r["column"]] = r["type"]
    if len(shapes) < 2:
        return []
    # the reference is the most common shape
    frozen = {s: tuple(sorted((t, tuple(sorted(cols.items()))) for t, cols in shape.items())) for s, shape in
              shapes.items()}  # fmt: skip
    counts: dict[Any, int] = defaultdict(int)
    for f in frozen.values():
        counts[f] += 1
    reference = max(counts, key=lambda f: (counts[f], f))
    ref_schema = min(s for s, f in frozen.items() if f == reference)
    ref = shapes[ref_schema]
    out = []
    for schema in sorted(shapes):
        if frozen[schema] == reference:
            continue
        shape = shapes[schema]
        diffs = [f"missing table {t}" for t in sorted(set(ref) - set(shape))]
        diffs += [f"extra table {t}" for t in sorted(set(shape) - set(ref))]
        for t in sorted(set(ref) & set(shape)):
            for col in sorted(set(ref[t]) | set(shape[t])):
                a, b = ref[t].get(col), shape[t].get(col)
                if a != b:
                    diffs.append(f"{t}.{col}: {b or 'missing'} (expected {a or 'absent'})")
        out.append(Finding(
            name="tenant_schema_drift", title="Tenant schemas differ", level="WARN",
            description="Every tenant_* schema should have identical tables and column types; otherwise cached "
                        "statements fail on tenant switches (InvalidCachedStatementError) and code diverges.",
            detail=f"Schema {schema} differs from {ref_schema}: " + "; ".join(diffs),
            remediation="Apply the same migrations to every tenant schema.",
            metadata={"schema": schema, "reference": ref_schema}, categories=("PERFORMANCE", "SECURITY"),
        ))  # fmt: skip
    return out


async def run_lints(conn: asyncpg.Connection) -> list[Finding]:
    findings: list[Finding] = []
    for lint in LINTS:
        for row in await conn.fetch(lint.sql):
            values = dict(row)
            findings.append(Finding(
                name=lint.name, title=lint.title, level=lint.level, description=lint.description,
                detail=lint.detail.format(**values), remediation=lint.remediation, metadata=values,
                categories=lint.categories,
            ))  # fmt: skip
    findings += await _tenant_shape(conn)
    return findings


def at_or_above(findings: list[Finding], level: str) -> list[Finding]:
    floor = LEVELS.index(level.upper())
    return [f for f in findings if LEVELS.index(f.level) >= floor]


def render_table(findings: list[Finding]) -> str:
    if not findings:
        return "no problems found"
    width = max(len(f.name) for f in findings)
    lines = [f"{f.level:<5}  {f.name:<{width}}  {f.detail}" for f in findings]
    counts = {lv: sum(1 for f in findings if f.level == lv) for lv in LEVELS}
    lines.append(f"{len(findings)} findings: " + ", ".join(f"{n} {lv}" for lv, n in counts.items() if n))
    return "\n".join(lines)
