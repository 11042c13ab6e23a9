#!/usr/bin/env bash
# Runs mcp-supervisor in the foreground (Ctrl-C stops it cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m mcp_supervisor.demo "$@"
