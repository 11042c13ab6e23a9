#!/usr/bin/env bash
# Makes the local stack's secrets once, in VAR (default ./var): random values, mode 0600. The admin token (for the
# web observer's buttons and `ctl`), OpenBao's dev root token and the S3 secret key. scripts/run.sh calls it.
set -euo pipefail
var="${1:-./var}"
mkdir -p "$var"
for name in admin-token vault-token s3-secret-key; do
  if [ ! -s "$var/$name" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$var/$name")
  fi
done
