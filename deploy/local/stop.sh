#!/usr/bin/env bash
# Stops what start.sh started (and a plane started by `make run`), leaving the data in place.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
L="$ONE_AGENTS_LOCAL_DIR"

stop_pidfile() {
  local name=$1 file=$2
  [ -f "$file" ] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stop: $name"
  fi
  rm -f "$file"
}

# Pods of `make deploy-local` run against these servers: they go first.
for release in "$L"/deploy/*/; do
  [ -f "$release/play.yaml" ] && bash "$HERE/deploy-local.sh" down "$(basename "$release")"
done
stop_pidfile plane "$L/plane.pid"
stop_pidfile sandbox "$L/sandbox.pid"
stop_pidfile s3 "$L/s3.pid"
stop_pidfile nats "$L/nats.pid"
stop_pidfile redis "$L/redis.pid"
if [ -f "$L/pg/postmaster.pid" ]; then
  PG_DATA="$(readlink -f "$L/pg")"
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null) && echo "stop: postgres"
  else
    "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null && echo "stop: postgres"
  fi
fi
