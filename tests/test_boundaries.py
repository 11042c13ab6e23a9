"""The layering of docs/architecture.md, enforced: who may import whom, the core's facade, and an acyclic core.

Every import counts — at module level, inside functions (lazy), and under ``if TYPE_CHECKING:`` — because each is a
dependency a reader must follow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "mcp_supervisor"

# what each part may import from the project (besides itself); None: anything
ALLOWED: dict[str, set[str] | None] = {
    "core": set(),
    "config": {"core"},
    "health": {"core", "config"},
    "services": {"core", "config", "health"},
    "telemetry": {"core", "config", "health", "services", "__init__"},
    "admin": {"core"},
    "daemon": {"core", "config", "admin", "telemetry", "health", "__init__"},  # built-in workers by name only
    "cli": None,
    "worker": None,  # the facade a worker imports: it gathers from every room
    "testing": {"core"},
    "__init__": set(),
    "__main__": {"cli"},
}
STDLIB_ONLY = {
    "mcp_supervisor.config.settings", "mcp_supervisor.config.redact", "mcp_supervisor.health.probe",
    "mcp_supervisor.daemon.systemd", "mcp_supervisor.daemon.discovery", "mcp_supervisor.admin.journal",
    "mcp_supervisor.daemon.leasing", "mcp_supervisor.testing", "mcp_supervisor.testing.servers",
    "mcp_supervisor.testing.daemon", "mcp_supervisor.testing.faults",
}  # fmt: skip
"""Leaves outside the core that depend on the standard library only (and the core)."""
THIRD_PARTY_ONLY_IN = {
    "structlog": {"telemetry"},
    "prometheus_client": {"telemetry"},
    "aiohttp": {"admin", "services", "cli", "daemon"},  # the daemon: alert webhooks
    "mcp": {"cli"},  # the MCP server (the [mcp] extra)
}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts): p for p in sorted(PKG.rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import policy` imports a submodule
    return out


def part(module: str) -> str:
    """``mcp_supervisor.services.redis`` -> ``services``; ``mcp_supervisor.daemon.app`` -> ``app``."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


MODULES = modules()
WORKER_NAMES = {"ChildContext", "Database", "Cache", "MISS", "Storage", "Vault", "Settings", "ServiceUnavailable",
                "ServiceError", "service", "get_logger"}  # fmt: skip
GRAPH = {name: {i for i in imports(name, path) if i in MODULES} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_what_its_layer_may(name: str) -> None:
    own = part(name)
    allowed = ALLOWED[own]
    if allowed is None:
        return
    bad = sorted(i for i in GRAPH[name] if part(i) != own and part(i) not in allowed)
    assert bad == [], f"{name} ({own}) may import only {sorted(allowed)} of the project, not {bad}"


def test_the_core_and_the_leaves_import_only_the_standard_library() -> None:
    bad: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        if part(name) != "core" and name not in STDLIB_ONLY:
            continue
        for mod in imports(name, path):
            top = mod.split(".")[0]
            if top not in sys.stdlib_module_names and top not in {"mcp_supervisor", "__future__"}:
                bad.setdefault(name, []).append(mod)
    assert bad == {}


def test_third_party_libraries_stay_in_their_parts() -> None:
    offenders = []
    for name, path in MODULES.items():
        for mod in imports(name, path):
            allowed = THIRD_PARTY_ONLY_IN.get(mod.split(".")[0])
            if allowed is not None and part(name) not in allowed:
                offenders.append(f"{name} imports {mod}")
    assert offenders == []


SEAMS = {
    "mcp_supervisor.core.cgroups": {"daemon"},  # the daemon gives the tree its delegated cgroup subtree
    "mcp_supervisor.core.context": {"telemetry"},  # a log line knows which child's task wrote it
    "mcp_supervisor.core.clock": {"services"},  # the services' cheap per-call deadlines
    "mcp_supervisor.core.specs": {"config"},  # the limits an OS child may set
}
"""The only places the rest of the package reaches past the core's facade, and who may."""


def test_outside_the_core_everything_goes_through_its_facade() -> None:
    """Only mcp_supervisor.core itself is the core's API (and a few named seams); its submodules are its own
    layout."""
    offenders = sorted(
        f"{name} imports {i}"
        for name in MODULES
        if part(name) != "core"
        for i in GRAPH[name]
        if i.startswith("mcp_supervisor.core.")
        and part(name) not in SEAMS.get(i.rpartition(".")[0] if i.count(".") > 2 else i, set())
    )
    assert offenders == []


def service_of(module: str) -> str | None:
    """``mcp_supervisor.services.postgres.pool`` -> ``postgres``; the shared ``base`` and ``events`` -> None."""
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "services" or parts[2] not in {"postgres", "redis", "s3", "vault"}:
        return None
    return parts[2]


def test_service_workers_do_not_import_each_other() -> None:
    offenders = [
        f"{name} imports {i}"
        for name in MODULES
        if service_of(name)
        for i in GRAPH[name]
        if service_of(i) and service_of(i) != service_of(name)
    ]
    assert offenders == []
    assert {service_of(n) for n in MODULES} >= {"postgres", "redis", "s3", "vault"}  # the test sees them all


def test_the_core_import_graph_has_no_cycle() -> None:
    core = {
        n: {i for i in GRAPH[n] if part(i) == "core" and i != "mcp_supervisor.core"}
        for n in MODULES
        if part(n) == "core"
    }
    core.pop("mcp_supervisor.core", None)  # the facade imports everything; nothing in the core imports it
    assert not any("mcp_supervisor.core" in deps for deps in core.values()), "a core module imports the facade"
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(core.get(n, ())):
            if state.get(m) == 1:
                cycle = [*path[path.index(m) :], m]
                pytest.fail("import cycle in the core: " + " -> ".join(c.rpartition(".")[2] for c in cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(core):
        if n not in state:
            visit(n)
    assert len(core) >= 15  # the test sees the whole core


def test_the_test_catches_a_cycle() -> None:
    """The walker above, on a graph with a known cycle (a test that cannot fail proves nothing)."""
    saved = dict(GRAPH)
    try:
        GRAPH["mcp_supervisor.core.errors"] = {*GRAPH["mcp_supervisor.core.errors"], "mcp_supervisor.core.supervisor"}
        with pytest.raises(pytest.fail.Exception, match="import cycle in the core"):
            test_the_core_import_graph_has_no_cycle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_a_worker_imports_one_module() -> None:
    """The examples are workers as users write them: they import the worker facade, nothing else of ours."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    for path in sorted(examples.glob("*.py")):
        ours = {m for m in imports(f"examples.{path.stem}", path) if m.startswith("mcp_supervisor")}
        assert ours <= {"mcp_supervisor.worker"} | {f"mcp_supervisor.worker.{n}" for n in WORKER_NAMES}, (path, ours)


def test_the_worker_facade_imports_no_service_library_until_asked() -> None:
    code = (
        "import sys; import mcp_supervisor.worker as w\n"
        "assert not {'asyncpg', 'redis', 'aiobotocore'} & set(sys.modules), sorted(sys.modules)\n"
        "from mcp_supervisor.worker import Database, Cache\n"
        "assert 'asyncpg' in sys.modules and Database.__name__ == 'Database' and Cache.__name__ == 'Cache'\n"
        "import mcp_supervisor.daemon.app, mcp_supervisor.cli.main\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_config_naming_a_service_whose_extra_is_missing_says_which_to_install(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tree]\n[[tree.children]]\nid = "db"\nworker = "postgres"\n')
    code = (  # asyncpg made unimportable, as in a base install
        "import sys; sys.modules['asyncpg'] = None\n"
        "from mcp_supervisor.cli.main import main\n"
        f"sys.exit(main(['check-config', {str(cfg)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert "c.toml:4: tree.children[0].worker: worker 'postgres' needs asyncpg" in done.stderr
    assert "pip install 'mcp-supervisor-otp[postgres]'" in done.stderr
