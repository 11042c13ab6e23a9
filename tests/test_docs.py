"""The documentation tells the truth: its code parses, its examples are the files they claim, its links resolve,
and the core example in the README runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".sh", ".service", ".yml", ".erl"} and path.is_file():
            assert ".." + "/shared" not in path.read_text(errors="replace"), name


def test_the_readme_core_example_runs() -> None:
    code = next(b for b in blocks(ROOT / "README.md") if "Tree(spec)" in b)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    first, status = done.stdout.splitlines()[:2]
    assert first == "1"
    assert "counter" in status and "sleeper" in status
