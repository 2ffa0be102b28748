#!/usr/bin/env bash
# `make run`: starts the stack, migrates, seeds a demo org, starts the whole plane in the
# background (logs in .local/plane.log) and prints a dev token and a curl line that works.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
L="$ONE_AGENTS_LOCAL_DIR"
BIN="$ROOT/target/debug/one-agents"
CONFIG="$L/one-agents.toml"
oa() { "$BIN" --config "$CONFIG" "$@"; }

bash "$HERE/start.sh"
oa migrate
oa orgs create --id org_demo --name "Demo MSP" --tier pro --if-absent >/dev/null
# Who the demo org's agents notify: its on-call phone, mailboxes and chat webhooks (the sandbox's).
oa orgs settings --org org_demo --json '{"contacts": {"on_call_sms": ["+15550100200"],
  "security_email": ["security@demo-msp.example"], "account_manager_email": ["account-managers@demo-msp.example"],
  "finance_email": ["finance@demo-msp.example"]},
  "webhooks": {"slack": "http://127.0.0.1:59100/webhooks/slack", "teams": "http://127.0.0.1:59100/webhooks/teams"}}' >/dev/null
oa dev-jwks >"$L/jwks.json"
# A demo product key (shown once at creation, so kept in the git-ignored folder).
if [ ! -s "$L/demo-product-key" ]; then
  oa keys create --org org_demo --name "demo product" --scope events:publish 2>/dev/null | tail -1 >"$L/demo-product-key"
fi
KEY="$(cat "$L/demo-product-key")"

if ! (exec 3<>"/dev/tcp/127.0.0.1/59100") 2>/dev/null; then
  nohup "$BIN" --config "$CONFIG" sandbox >"$L/sandbox.log" 2>&1 &
  echo $! >"$L/sandbox.pid"
fi

if [ -f "$L/plane.pid" ] && kill -0 "$(cat "$L/plane.pid")" 2>/dev/null; then
  kill "$(cat "$L/plane.pid")"
  while kill -0 "$(cat "$L/plane.pid")" 2>/dev/null; do sleep 0.1; done
fi
nohup "$BIN" --config "$CONFIG" serve --services all >"$L/plane.log" 2>&1 &
echo $! >"$L/plane.pid"

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! curl -fsS "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null; then
  echo "run: the plane did not become ready; see $L/plane.log" >&2
  tail -20 "$L/plane.log" >&2
  exit 1
fi

TOKEN="$(oa dev-token --org org_demo --role admin)"
cat <<TXT

One Agents is running on http://127.0.0.1:$GATEWAY_PORT (logs: $L/plane.log; stop: make stop)
Demo org: org_demo (tier pro). A 12-hour admin token for it, signed by the local dev key:

export TOKEN=$TOKEN

curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$GATEWAY_PORT/api/me

More to try: /api/agents (the six system agents), /api/templates, /api/events (the catalog),
/api/executions. Publish a ticket event (the Dispatch agent classifies it with the sandbox model):

curl -s -X POST -H "X-Integration-Key: $KEY" -H 'content-type: application/json' \
  http://127.0.0.1:$GATEWAY_PORT/api/events/publish -d '{"source_product":"psa","event_type":"ticket.created","payload":{"ticket_id":"tkt_1","priority":"p1","subject":"Email down","client_id":"cl_acme","client_name":"Acme"}}'

Publish a ransomware detection: the Guardian agent assesses it, then waits for a human at an
approval gate (its on-call number gets a signed link in the sandbox):

curl -s -X POST -H "X-Integration-Key: $KEY" -H 'content-type: application/json' \
  http://127.0.0.1:$GATEWAY_PORT/api/events/publish -d '{"source_product":"defend","event_type":"ransomware.detected","payload":{"detection_id":"det_1","confidence":0.97,"severity":"critical","encrypted_files":412,"process":"svch0st.exe","client_id":"cl_acme","client_name":"Acme Corp","device":{"id":"dev_ws01","hostname":"WORKSTATION-01","role":"workstation"}}}'
curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$GATEWAY_PORT/api/approvals
curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'content-type: application/json' \
  http://127.0.0.1:$GATEWAY_PORT/api/approvals/<id>/decision -d '{"decision":"approved","note":"isolate it"}'

(that key, the demo org's with events:publish, is kept in $L/demo-product-key; a product registers
its event types with a product key of its own: one-agents keys create --product psa --name "psa")
The SANDBOX (stand-in LLM, SMS, email, webhooks, product APIs) shows what it received: http://127.0.0.1:59100/
TXT
