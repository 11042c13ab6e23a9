#!/usr/bin/env bash
# Re-resolves the dependencies and rewrites constraints.txt, the exact versions bootstrap installs.
# Run it after changing the dependencies in pyproject.toml (or to move to newer releases), then run the tests
# and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
{
  echo "# Exact versions for scripts/bootstrap.sh (pip install -c constraints.txt). Regenerate: bash scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e '
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
