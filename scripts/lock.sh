#!/usr/bin/env bash
# Re-resolves the dependencies into uv.lock (every platform, hashed). Run it after changing the dependencies in
# pyproject.toml, or with --upgrade to move to newer releases; then run the tests and commit both files.
#   bash scripts/lock.sh              keep the locked versions that still satisfy pyproject.toml
#   bash scripts/lock.sh --upgrade    move every package to its newest allowed release
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run >/dev/null 2>&1 || true  # installs the pinned uv into .tools/ if it is missing
.tools/bin/uv lock "$@"
echo "uv.lock: $(grep -c '^\[\[package\]\]' uv.lock) packages"
