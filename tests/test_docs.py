"""The documentation tells the truth: its code parses, its examples are the files they claim, its links resolve,
and the core example in docs/core.md runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.core import FailedToStartChild

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_python_block_parses(doc: Path) -> None:
    for code in blocks(doc):
        tree = ast.parse(code, filename=str(doc))  # a SyntaxError fails the test, naming the file and line
        assert tree.body, f"an empty python block in {doc.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_the_worker_contract_example_is_the_type_checked_file() -> None:
    code = (ROOT / "examples" / "jobs.py").read_text()
    assert code[code.index("import asyncio") :] in blocks(ROOT / "docs" / "workers.md")


def test_nothing_points_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = [n for n in tracked.split("\0") if n]
    assert all(n == n.strip() and "\n" not in n and "#" not in n for n in names), "a tracked file with an odd name"
    for name in names:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".sh", ".service", ".yml", ".erl"} and path.is_file():
            assert ".." + "/shared" not in path.read_text(errors="replace"), name


def test_the_core_example_runs() -> None:
    code = next(b for b in blocks(ROOT / "docs" / "core.md") if "Tree(spec)" in b)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    first, status = done.stdout.splitlines()[:2]
    assert first == "1"
    assert "counter" in status and "sleeper" in status


def test_the_readme_is_a_readme() -> None:
    """About 100 lines: what it is, install, the two commands, a config, where to read next; every doc listed."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 110
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in readme, f"the README does not point at docs/{doc.name}"
    block = readme.split("```sh", 2)[2].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "bash scripts/run.sh",
        "bash scripts/test.sh",
    ]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def test_the_readme_config_is_valid() -> None:
    from mcp_supervisor.config import parse_config
    from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS

    code = next(b for b in re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S))
    cfg = parse_config(code, "README.md", env={}, workers=BUILTIN_WORKERS)
    assert [c.id for c in cfg.tree.children] == ["web"]


async def test_the_worker_testing_example_runs() -> None:
    """docs/workers.md's "Testing a worker" block is a test that passes."""
    block = next(b for b in BLOCK.findall((ROOT / "docs" / "workers.md").read_text()) if "test_my_worker_starts" in b)
    scope: dict[str, Any] = {}
    exec(compile(block, "docs/workers.md", "exec"), scope)
    await scope["test_my_worker_starts"]()  # the example passes with the example's worker

    async def never_starts(ctx: Any) -> None:
        raise RuntimeError("cannot connect")

    scope["my_worker"] = never_starts  # and fails for a worker that cannot start: it tests something
    with pytest.raises(FailedToStartChild, match="mine"):
        await scope["test_my_worker_starts"]()
