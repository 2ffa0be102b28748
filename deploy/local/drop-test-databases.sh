#!/usr/bin/env bash
# Drops the per-test databases (oat_*) left by earlier test runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qtA \
  -c "SELECT datname FROM pg_database WHERE datname LIKE 'oat\_%'" | while read -r db; do
  [ -n "$db" ] && psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
done
