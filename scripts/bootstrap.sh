#!/usr/bin/env bash
# Sets up a fresh Debian machine for the project: system packages and a virtualenv in .venv with the project.
#   bash scripts/bootstrap.sh run   what `scripts/run.sh` needs: PostgreSQL, Redis, the project with its service
#                                   workers and the local stack's S3 (moto) and Vault (OpenBao) servers
#   bash scripts/bootstrap.sh       (dev) all of that and the test toolchain: linters, pytest, Erlang/OTP for the
#                                   differential test, chromium for the browser tests, promtool, real programs
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
case "$profile" in run|dev) ;; *) echo "usage: bash scripts/bootstrap.sh [run|dev]" >&2; exit 2 ;; esac

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pgrep >/dev/null || need_apt+=(procps)
{ command -v setpriv && command -v prlimit; } >/dev/null || need_apt+=(util-linux)  # the OS-children launch chain
if [ "$profile" = dev ]; then
  command -v erlc >/dev/null || need_apt+=(erlang-base)  # the differential test runs real Erlang/OTP
  [ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)  # the /ui browser tests (driven by Playwright)
  command -v promtool >/dev/null || need_apt+=(prometheus)  # promtool checks /metrics
  command -v systemd-analyze >/dev/null || need_apt+=(systemd)  # systemd-analyze verify checks the units
  # real programs run under the daemon in tests/test_programs.py, and the load generator of the benchmarks
  command -v nginx >/dev/null || need_apt+=(nginx-light)
  command -v php-fpm8.2 >/dev/null || need_apt+=(php8.2-fpm)
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v unshare >/dev/null || need_apt+=(util-linux)
  { command -v wrk && command -v curl; } >/dev/null || need_apt+=(wrk curl)
  command -v supervisord >/dev/null || need_apt+=(supervisor)  # imported configs run under real supervisord too
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# PostGIS is optional: its test is skipped (with the reason) when the extension is not installed
if [ "$profile" = dev ] && [ ! -f /usr/share/postgresql/15/extension/postgis.control ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      postgresql-15-postgis-3 >/dev/null ) || echo "bootstrap: PostGIS could not be installed; its test will be skipped" >&2
fi

# uv.lock pins every package for every platform, with hashes (scripts/lock.sh updates it). uv itself, pinned, lives
# in .tools/; the project's environment is .venv. A dev install covers a run install.
UV_VERSION=0.13.9
if [ "$(.tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv .tools
  .tools/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
hash=$(cat pyproject.toml uv.lock | sha256sum | cut -c1-16)
if [ ! -f ".venv/.installed-dev-$hash" ] && [ ! -f ".venv/.installed-$profile-$hash" ]; then
  extra=$([ "$profile" = dev ] && echo dev || echo local)
  # --locked: fail, rather than re-resolve, when uv.lock does not match pyproject.toml
  UV_PROJECT_ENVIRONMENT=.venv .tools/bin/uv sync -q --locked --python "$(command -v python3)" --extra "$extra"
  rm -f .venv/.installed-*
  touch ".venv/.installed-$profile-$hash"
fi
