"""The layering of docs/architecture.md, enforced: who may import whom, the core's facade, and an acyclic core.

Every import counts — at module level, inside functions (lazy), and under ``if TYPE_CHECKING:`` — because each is a
dependency a reader must follow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "mcp_supervisor"

# what each part may import from the project (besides itself); None: anything
ALLOWED: dict[str, set[str] | None] = {
    "core": set(),
    "settings": set(),
    "redact": set(),
    "probe": set(),
    "systemd": set(),
    "journal": {"core"},
    "services": {"core", "settings", "probe"},
    "health": {"core", "settings", "probe"},
    "admin": {"core", "journal"},
    "config": {"core", "settings", "redact"},
    "telemetry": {"core", "settings", "redact", "probe", "health", "services", "__init__"},
    "listeners": {"config"},
    "replicas": {"core", "config"},
    "cluster": {"core", "config", "__init__"},
    "app": None,
    "cli": None,
    "ctl": {"core"},
    "__init__": set(),
}
THIRD_PARTY_ONLY_IN = {
    "structlog": {"telemetry"},
    "prometheus_client": {"telemetry"},
    "aiohttp": {"admin", "services", "cli", "ctl"},
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
    """``mcp_supervisor.services.redis`` -> ``services``; ``mcp_supervisor.app`` -> ``app``."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


MODULES = modules()
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
        if part(name) not in ("core", "settings", "redact", "probe", "systemd", "journal"):
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


def test_outside_the_core_everything_goes_through_its_facade() -> None:
    """Only mcp_supervisor.core itself is the core's API; its submodules are its own layout."""
    offenders = sorted(
        f"{name} imports {i}"
        for name in MODULES
        if part(name) != "core"
        for i in GRAPH[name]
        if i.startswith("mcp_supervisor.core.")
    )
    assert offenders == []


def test_service_workers_do_not_import_each_other() -> None:
    services = {"postgres", "redis", "s3", "vault"}
    offenders = [
        f"{name} imports {i}"
        for name in MODULES
        if name.rpartition(".")[2] in services and part(name) == "services"
        for i in GRAPH[name]
        if part(i) == "services" and i.rpartition(".")[2] in services - {name.rpartition(".")[2]}
    ]
    assert offenders == []


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
