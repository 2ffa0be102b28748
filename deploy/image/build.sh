#!/usr/bin/env bash
# Builds the runtime image offline with podman: the runtime stage of deploy/Dockerfile (the one
# `docker build` makes) on a Debian bookworm minbase made here with mmdebstrap from the Debian
# packages apt uses, with the one-agents binary the host built (debug by default; set
# ONE_AGENTS_BINARY for another). Installs podman, runc and mmdebstrap when missing. The base is
# cached under .local/image/; a rebuild takes seconds.
#   deploy/image/build.sh [TAG]      (default localhost/one-agents:dev)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/deploy/local/env.sh"
source "$HERE/podman-env.sh"
TAG="${1:-localhost/one-agents:dev}"
BASE="localhost/one-agents-base:bookworm"
BINARY="${ONE_AGENTS_BINARY:-$ROOT/target/debug/one-agents}"
CACHE="$ONE_AGENTS_LOCAL_DIR/image"
mkdir -p "$CACHE/host"

if ! [ -x "$BINARY" ]; then
  echo "image: $BINARY is missing; run cargo build --workspace first" >&2
  exit 1
fi

if ! podman image exists "$BASE"; then
  if ! [ -s "$CACHE/bookworm-minbase.tar" ]; then
    echo "image: making the Debian bookworm minbase with mmdebstrap (about a minute, once)"
    mmdebstrap --quiet --variant=minbase --format=tar bookworm "$CACHE/bookworm-minbase.tar.part"
    mv "$CACHE/bookworm-minbase.tar.part" "$CACHE/bookworm-minbase.tar"
  fi
  podman import --quiet "$CACHE/bookworm-minbase.tar" "$BASE" >/dev/null
fi

# The `host` build context holds only the binary (hard-linked when it can be: it is large).
ln -f "$BINARY" "$CACHE/host/one-agents" 2>/dev/null || cp -f "$BINARY" "$CACHE/host/one-agents"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
podman build --quiet \
  --file "$ROOT/deploy/Dockerfile" \
  --target runtime \
  --build-arg BASE_IMAGE="$BASE" \
  --build-arg BINARY=prebuilt \
  --build-arg VERSION="$VERSION" \
  --build-arg REVISION="$REVISION" \
  --build-context host="$CACHE/host" \
  --tag "$TAG" \
  "$CACHE/host" >/dev/null
# Each new binary leaves the previous build's layers behind; they are large.
podman image prune --force >/dev/null
echo "image: $TAG ($VERSION, $REVISION)"
