#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, strict typing, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.tools/bin/uv lock --check -q  # uv.lock still matches pyproject.toml (else: bash scripts/lock.sh)
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy  # strict, on the files pyproject.toml names
.venv/bin/pytest -n 4 --dist worksteal "$@"  # most tests wait on servers and processes, not the CPU
