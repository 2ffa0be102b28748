# Ports, credentials and folders of the local stack: sourced by every script in deploy/local/
# and by the Makefile. Override any of them in the environment before sourcing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export ONE_AGENTS_LOCAL_DIR="${ONE_AGENTS_LOCAL_DIR:-$ROOT/.local}"

export PG_PORT="${PG_PORT:-55432}"
export REDIS_PORT="${REDIS_PORT:-56379}"
export NATS_PORT="${NATS_PORT:-54222}"
export NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-58222}"
export S3_PORT="${S3_PORT:-59000}"
export S3_ACCESS_KEY="${S3_ACCESS_KEY:-oneagents-local}"
export S3_SECRET_KEY="${S3_SECRET_KEY:-oneagents-local-secret}"
export GATEWAY_PORT="${GATEWAY_PORT:-8080}"

# The superuser URL runs migrations and creates test databases; the plane itself connects as
# the app role, which owns no tables and is subject to row-level security.
export ONE_AGENTS_ADMIN_DATABASE_URL="${ONE_AGENTS_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/one_agents}"
export ONE_AGENTS_TEST_ADMIN_URL="${ONE_AGENTS_TEST_ADMIN_URL:-postgres://postgres@127.0.0.1:$PG_PORT/postgres}"
export ONE_AGENTS_TEST_REDIS_URL="${ONE_AGENTS_TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
export ONE_AGENTS_TEST_NATS_URL="${ONE_AGENTS_TEST_NATS_URL:-nats://127.0.0.1:$NATS_PORT}"
export ONE_AGENTS_TEST_S3_URL="${ONE_AGENTS_TEST_S3_URL:-http://127.0.0.1:$S3_PORT}"

# Tools installed by install.sh land here when they come from PyPI or crates.io.
export PATH="$ONE_AGENTS_LOCAL_DIR/venv/bin:$HOME/.cargo/bin:$PATH"
