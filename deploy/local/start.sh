#!/usr/bin/env bash
# Starts the local stack on loopback, idempotently: PostgreSQL, Redis, NATS with JetStream and the
# S3-compatible s3s-fs, with data under $ONE_AGENTS_LOCAL_DIR (git-ignored). Installs what is
# missing first. Writes the plane's local config to $ONE_AGENTS_LOCAL_DIR/one-agents.toml.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
bash "$HERE/install.sh"
L="$ONE_AGENTS_LOCAL_DIR"
mkdir -p "$L"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  echo "start: $name did not open port $port; see its log under $L" >&2
  return 1
}

# --- PostgreSQL -----------------------------------------------------------------------------
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PG_DATA="$L/pg"
as_pg() { if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
if [ "$(id -u)" -eq 0 ] && [ ! -e "$PG_DATA" ]; then
  # Postgres runs as the postgres user, which may not reach a clone under /root, and its socket
  # path must stay short: then the data lives in a folder of its own, linked from .local/pg.
  if ! runuser -u postgres -- test -x "$L" 2>/dev/null || [ ${#PG_DATA} -gt 80 ]; then
    ALT="/var/lib/one-agents/$(printf '%s' "$L" | sha256sum | cut -c1-12)/pg"
    mkdir -p "$ALT"
    ln -sfn "$ALT" "$PG_DATA"
  fi
fi
PG_DATA="$(readlink -f "$PG_DATA")"
if ! port_open "$PG_PORT"; then
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$PG_DATA"; fi
    chmod 700 "$PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/pg.log" -w start -o \
    "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_DATA -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
fi
wait_port postgres "$PG_PORT"
psql_admin() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname='one_agents'")" != "1" ]; then
  psql_admin -d postgres -c "CREATE DATABASE one_agents" >/dev/null
fi

# --- Redis ----------------------------------------------------------------------------------
if ! port_open "$REDIS_PORT"; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --pidfile "$L/redis.pid" --logfile "$L/redis.log" --dir "$L"
fi
wait_port redis "$REDIS_PORT"

# --- NATS with JetStream ---------------------------------------------------------------------
if ! port_open "$NATS_PORT"; then
  mkdir -p "$L/nats"
  nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$L/nats" \
    -P "$L/nats.pid" >"$L/nats.log" 2>&1 &
fi
wait_port nats "$NATS_PORT"

# --- S3-compatible object store --------------------------------------------------------------
if ! port_open "$S3_PORT"; then
  mkdir -p "$L/s3"
  nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
    --secret-key "$S3_SECRET_KEY" "$L/s3" >"$L/s3.log" 2>&1 &
  echo $! >"$L/s3.pid"
fi
wait_port s3 "$S3_PORT"

# --- The local dev signing key and the plane's config ----------------------------------------
if [ ! -f "$L/dev-hub-key.pem" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$L/dev-hub-key.pem" 2>/dev/null
fi
cat >"$L/one-agents.toml" <<TOML
# Written by deploy/local/start.sh for the local stack. Development only.
environment = "development"

[database]
url = "postgres://one_agents_app@127.0.0.1:$PG_PORT/one_agents"
admin_url = "postgres://postgres@127.0.0.1:$PG_PORT/one_agents"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[nats]
url = "nats://127.0.0.1:$NATS_PORT"

[gateway]
listen = "127.0.0.1:$GATEWAY_PORT"

[auth]
jwks_file = "$L/jwks.json"
dev_signing_key_file = "$L/dev-hub-key.pem"
TOML
echo "start: postgres :$PG_PORT, redis :$REDIS_PORT, nats :$NATS_PORT (JetStream), s3 :$S3_PORT; data in $L"
