#!/usr/bin/env bash
# Runs a private PostgreSQL for the local stack: initdb on first run into DATA, then postgres in the foreground
# (exec: the supervisor's signals reach the server itself). As root it runs as the unprivileged postgres user.
set -euo pipefail
port="$2"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
mkdir -p "$1"
data="$(cd "$1" && pwd)"  # absolute: postgres resolves its socket directory after changing into the data directory
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # the postgres user must be able to reach the data directory: give "traverse" (o+x) to ancestors lacking it
  dir="$data"
  while [ "$dir" != "/" ]; do
    dir="$(dirname "$dir")"
    if ! setpriv --reuid=postgres --regid=postgres --init-groups -- test -x "$dir"; then
      echo "local-postgres: allowing the postgres user to traverse $dir (chmod o+x)" >&2
      chmod o+x "$dir"
    fi
  done
  chown postgres:postgres "$data"
  chmod 700 "$data"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
if [ ! -f "$data/PG_VERSION" ]; then
  echo "local-postgres: initdb into $data (first run)" >&2
  "${as_pg[@]}" "$bin/initdb" -D "$data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
fi
sockets="$data"
if [ $(( ${#data} + ${#port} + 12 )) -gt 107 ]; then  # ".s.PGSQL.<port>" must fit a unix socket address
  echo "local-postgres: $data is too long a path for a unix socket; TCP only (127.0.0.1:$port)" >&2
  sockets=""
fi
exec "${as_pg[@]}" "$bin/postgres" -D "$data" -p "$port" -k "$sockets" -c listen_addresses=127.0.0.1
