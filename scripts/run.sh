#!/usr/bin/env bash
# Runs mcp-supervisor in the foreground (Ctrl-C stops it cleanly). Extra arguments go to `mcp-supervisor run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"   # moto_server and bao for the local stack
config="${MCP_SUPERVISOR_CONFIG:-config/local.toml}"
admin="${MCP_ADMIN:-127.0.0.1:7080}"
var="${MCP_VAR_DIR:-./var}"
mkdir -p "$var"
if [ ! -s "$var/admin-token" ]; then  # the admin token for the UI's buttons and `ctl restart`, made once
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$var/admin-token")
fi
echo "mcp-supervisor: config $config" >&2
echo "  the live tree in a browser: http://$admin/ui/   (admin token for its buttons: $var/admin-token)" >&2
echo "  in another terminal: .venv/bin/mcp-supervisor ctl --admin $admin status --watch   (or --json)" >&2
echo "                       .venv/bin/mcp-supervisor ctl --admin $admin logs postgres/server -f" >&2
exec .venv/bin/mcp-supervisor run --config "$config" "$@"
