#!/usr/bin/env bash
# Writes the secrets the kustomize secretGenerator in base/ reads, each 32 random bytes as
# 64 hex digits on one line, mode 0600, in deploy/kubernetes/base/secrets/ (gitignored):
#   relay-secret           [cluster] relay_secret_file: signs relays and node-to-node HTTP
#   publish-token-secret   [auth] publish_token_secret_file: signs `rackcast token` keys
# A file that exists is kept (rotating a secret: delete its file, rerun, apply; every pod
# rolls because the Secret's name changes with its content). --force rewrites both.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/base/secrets"
force=false
case "${1:-}" in
  "") ;;
  --force) force=true ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac
umask 077
mkdir -p "$dir"
random_hex() {
  if command -v openssl >/dev/null; then
    openssl rand -hex 32
  else
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
    echo
  fi
}
for name in relay-secret publish-token-secret; do
  if [ -s "$dir/$name" ] && ! $force; then
    echo "make-secrets: $dir/$name exists, kept"
    continue
  fi
  random_hex >"$dir/$name.tmp"
  mv "$dir/$name.tmp" "$dir/$name"
  echo "make-secrets: wrote $dir/$name"
done
