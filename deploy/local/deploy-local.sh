#!/usr/bin/env bash
# `make deploy-local`: the Helm chart, for real, on this machine. Builds the image with podman,
# renders the chart with helm/one-agents/values-local.yaml (plus $ONE_AGENTS_DEPLOY_VALUES, a
# values file of yours, when set), plays it with `podman kube play` against the local stack, waits
# for the migration pod to exit 0 and for every role's readiness probe (run in its container), and
# prints how to reach the gateway. `deploy-local.sh down` removes every pod, secret and volume.
#   deploy/local/deploy-local.sh [up|down] [RELEASE]      (default release: oalocal)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$ROOT/deploy/image/podman-env.sh"
ACTION="${1:-up}"
RELEASE="${2:-oalocal}"
OUT="$ONE_AGENTS_LOCAL_DIR/deploy/$RELEASE"
PY="$ONE_AGENTS_LOCAL_DIR/venv/bin/python"
manifest() { "$PY" -c "import json,sys; m=json.load(open('$OUT/manifest.json')); $1"; }

down() {
  [ -f "$OUT/play.yaml" ] || return 0
  podman kube down "$OUT/play.yaml" >/dev/null 2>&1 || true
  for pod in $(manifest "print(' '.join(m['pods']))"); do podman pod rm -f "$pod" >/dev/null 2>&1 || true; done
  for secret in $(manifest "print(' '.join(m['secrets']))"); do podman secret rm "$secret" >/dev/null 2>&1 || true; done
  for volume in $(manifest "print(' '.join(m['volumes']))"); do podman volume rm -f "$volume" >/dev/null 2>&1 || true; done
  echo "deploy-local: $RELEASE removed"
}

if [ "$ACTION" = down ]; then down; exit 0; fi
[ "$ACTION" = up ] || { echo "usage: $0 [up|down] [RELEASE]" >&2; exit 2; }

bash "$HERE/start.sh"
down >/dev/null
started=$(date +%s)
bash "$ROOT/deploy/image/build.sh" localhost/one-agents:dev
image_done=$(date +%s)
values=(-f "$ROOT/helm/one-agents/values-local.yaml")
[ -n "${ONE_AGENTS_DEPLOY_VALUES:-}" ] && values+=(-f "$ONE_AGENTS_DEPLOY_VALUES")
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" "$ROOT/deploy/chart/chart.py" podman --name "$RELEASE" --out "$OUT" "${values[@]}"
for file in "$OUT"/secrets/*.json; do
  [ -e "$file" ] && podman secret create "$(basename "$file" .json)" "$file" >/dev/null
done
# The sandbox stands in for the LLM, SMS and product APIs, as in `make run`.
if ! (exec 3<>"/dev/tcp/127.0.0.1/59100") 2>/dev/null; then
  nohup "$ROOT/target/debug/one-agents" --config "$ONE_AGENTS_LOCAL_DIR/one-agents.toml" sandbox \
    >"$ONE_AGENTS_LOCAL_DIR/sandbox.log" 2>&1 &
  echo $! >"$ONE_AGENTS_LOCAL_DIR/sandbox.pid"
fi
podman kube play "$OUT/play.yaml" >/dev/null 2>"$OUT/play.log" || { cat "$OUT/play.log" >&2; exit 1; }

for job in $(manifest "print(' '.join(m['jobs']))"); do
  code="$(podman wait "$job")"
  if [ "$code" != 0 ]; then
    echo "deploy-local: $job exited $code" >&2; podman logs "$job" >&2; exit 1
  fi
  echo "deploy-local: $job exited 0"
done
manifest "print('\n'.join(c['name'] + '\t' + json.dumps(c['probe']) for c in m['containers']))" |
while IFS=$'\t' read -r container probe; do
  mapfile -t command < <("$PY" -c "import json,sys; print('\n'.join(json.loads(sys.argv[1])))" "$probe")
  for attempt in $(seq 1 120); do
    podman exec "$container" "${command[@]}" >/dev/null 2>&1 && break
    if [ "$attempt" = 120 ]; then
      echo "deploy-local: $container is not ready:" >&2
      podman exec "$container" "${command[@]}" >&2 || true
      podman logs --tail 20 "$container" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "deploy-local: $container ready"
done
ready=$(date +%s)
GATEWAY="$(manifest "print([c['probe'][3] for c in m['containers'] if c['probe'][2] == 'http'][0])")"
GW_CONTAINER="$(manifest "print([c['name'] for c in m['containers'] if c['probe'][2] == 'http'][0])")"
cat <<TXT

One Agents runs as pods (image $((image_done - started)) s, pods ready $((ready - image_done)) s): http://$GATEWAY
  podman pod ps --filter name=$RELEASE      podman logs $GW_CONTAINER
A key for the demo org, then an event through the gateway pod:
  podman exec $GW_CONTAINER one-agents orgs create --id org_demo --name "Demo MSP" --tier pro --if-absent
  KEY=\$(podman exec $GW_CONTAINER one-agents keys create --org org_demo --name pods --scope events:publish --scope executions:read | tail -1)
  curl -s -X POST -H "X-Integration-Key: \$KEY" -H 'content-type: application/json' http://$GATEWAY/api/events/publish \\
    -d '{"source_product":"psa","event_type":"ticket.created","payload":{"ticket_id":"tkt_1","priority":"p1","subject":"Email down","client_id":"cl_acme","client_name":"Acme"}}'
  curl -s -H "X-Integration-Key: \$KEY" http://$GATEWAY/api/executions
Remove it all: make deploy-local-down
TXT
