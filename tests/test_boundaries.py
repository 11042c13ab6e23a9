"""The dependency rule (ARCHITECTURE.md practice 1): the core imports only the standard library and anyio."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mcp_supervisor"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            found.add("mcp_supervisor." + (node.module or ""))  # reaching out of the package
    return found


def test_core_imports_only_stdlib_and_anyio() -> None:
    bad = {}
    for path in sorted((SRC / "core").rglob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("anyio", "__future__"):
                continue
            bad.setdefault(path.name, []).append(name)
    assert bad == {}, f"core must not import these: {bad}"


def test_nothing_outside_telemetry_imports_structlog_or_prometheus() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "telemetry" in path.parts:
            continue
        for name in imports_of(path):
            if name.split(".")[0] in ("structlog", "prometheus_client"):
                offenders.append(f"{path.relative_to(SRC)}: {name}")
    assert offenders == []


def test_service_workers_do_not_import_each_other() -> None:
    services = {"postgres", "redis", "s3", "vault"}
    offenders = []
    for name in sorted(services):
        for imported in imports_of(SRC / "services" / f"{name}.py") | _relative_imports(
            SRC / "services" / f"{name}.py"
        ):
            if imported.rsplit(".", 1)[-1] in services - {name}:
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


def test_health_and_telemetry_depend_on_the_core_not_on_config_or_admin() -> None:
    for package in ("health", "core", "services"):
        for path in sorted((SRC / package).rglob("*.py")):
            rel = _relative_imports(path)
            assert not any(r.split(".")[0] in ("config", "admin", "app", "cli") for r in rel), (path.name, rel)


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = (node.module or "").lstrip(".")
            if node.level == 2 or path.parent.name == "mcp_supervisor":
                found.add(base)
            else:
                found.add(f"{path.parent.name}.{base}" if base else path.parent.name)
    return found
