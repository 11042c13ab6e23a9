#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine: system packages, a virtualenv in .venv, the project and its
# development tools. Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pgrep >/dev/null || need_apt+=(procps)
{ command -v setpriv && command -v prlimit; } >/dev/null || need_apt+=(util-linux)  # the OS-children launch chain
command -v erlc >/dev/null || need_apt+=(erlang-base)  # the differential test runs real Erlang/OTP
[ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)  # the /ui browser tests (driven by Playwright)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# PostGIS is optional: its test is skipped (with the reason) when the extension is not installed
if [ ! -f /usr/share/postgresql/15/extension/postgis.control ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      postgresql-15-postgis-3 >/dev/null ) || echo "bootstrap: PostGIS could not be installed; its test will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# constraints.txt pins every package (scripts/lock.sh rewrites it): pip resolves nothing, it only downloads
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
