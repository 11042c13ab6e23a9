#!/usr/bin/env bash
# Runs mcp-supervisor in the foreground (Ctrl-C stops it cleanly). Extra arguments go to `mcp-supervisor run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"   # moto_server and bao for the local stack
config="${MCP_SUPERVISOR_CONFIG:-config/local.toml}"
admin="${MCP_ADMIN:-127.0.0.1:7080}"
echo "mcp-supervisor: config $config; admin http://$admin/status" >&2
echo "  in another terminal: .venv/bin/mcp-supervisor ctl --admin $admin status" >&2
exec .venv/bin/mcp-supervisor run --config "$config" "$@"
