#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, strict typing, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy --strict src examples tests benchmarks
.venv/bin/pytest -n 4 --dist worksteal "$@"  # most tests wait on servers and processes, not the CPU
