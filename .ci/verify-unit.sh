#!/usr/bin/env bash
# Checks deploy/gatehouse.service with systemd-analyze, against the binary just built: any
# complaint (an unknown directive, a value it would ignore, a missing executable) fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq systemd
fi
bin="$PWD/target/debug/gatehouse"
[ -x "$bin" ] || cargo build -q -p gatehouse
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/gatehouse|$bin|g" deploy/gatehouse.service >"$tmp/gatehouse.service"
out=$(systemd-analyze verify "$tmp/gatehouse.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "$out"
  exit 1
fi
echo "deploy/gatehouse.service: verified"
