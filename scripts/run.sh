#!/usr/bin/env bash
# Runs the local stack (config/local.toml) in the foreground; Ctrl-C stops it cleanly. Extra arguments go to
# `mcp-supervisor run`. MCP_SUPERVISOR_CONFIG runs another config (config/demo.toml: a small tree of processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run
export PATH="$PWD/.venv/bin:$PATH"   # moto_server and bao for the local stack
config="${MCP_SUPERVISOR_CONFIG:-config/local.toml}"
admin="${MCP_ADMIN:-127.0.0.1:7080}"
# the data directory, absolute: programs that change directory (postgres does) must resolve it the same way
mkdir -p "${MCP_VAR_DIR:-var}"
MCP_VAR_DIR="$(cd "${MCP_VAR_DIR:-var}" && pwd)"
export MCP_VAR_DIR
bash scripts/local-secrets.sh "$MCP_VAR_DIR"   # the admin token and the servers' secrets, random, made once
ctl=".venv/bin/mcp-supervisor ctl"
cat >&2 <<BANNER
mcp-supervisor: config $config, data in $MCP_VAR_DIR
  the live tree in a browser: http://$admin/ui/   (its buttons want the admin token in $MCP_VAR_DIR/admin-token)
  in another terminal:  $ctl status
                        $ctl logs postgres -f
                        $ctl restart app
                        $ctl events -f
BANNER
exec .venv/bin/mcp-supervisor run --config "$config" "$@"
