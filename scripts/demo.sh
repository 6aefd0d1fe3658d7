#!/usr/bin/env bash
# `make demo`: the shipped pod (deploy/kubernetes, in its podman variant) runs a tiny agent
# under openshell-sandbox next to two web servers of its own, and shows an allowed request
# succeeding, a denied one refused, and the supervisor's log line for the denial; an L7
# rule (read-only access): a GET allowed, a POST to the same server refused with its log line;
# and credentials: the pod gives the agent container an ANTHROPIC_API_KEY from a Secret, the
# agent holds a placeholder, the fake model API receives the real key (its own log shows it)
# while the key it echoes back reaches the agent as the placeholder, and the key sent to a
# host it is not bound to is refused.
#
#   scripts/demo.sh SUPERVISOR_IMAGE AGENT_IMAGE       (make demo builds both first)
#
# Exits non-zero, saying what was missing, when the run did not show all three. Removes
# everything it created (pod, containers, volumes, network) on exit.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pod-lib.sh"

[[ $# -eq 2 ]] || osb_die "usage: $0 SUPERVISOR_IMAGE AGENT_IMAGE"
readonly SUPERVISOR_IMAGE="$1" AGENT_IMAGE="$2"
readonly PREFIX="osb-demo"
readonly ALLOWED="$OSB_ALLOWED_IP:$OSB_PORT" DENIED="$OSB_DENIED_IP:$OSB_PORT"
readonly API="$OSB_API_IP:$OSB_PORT"
# The key the pod's Secret holds: the agent must never see it.
REAL_KEY="sk-ant-demo-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
readonly REAL_KEY

osb_preflight "$SUPERVISOR_IMAGE" "$AGENT_IMAGE"
WORK="$(mktemp -d)"
readonly WORK
trap 'osb_cleanup "$PREFIX"; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
# A previous demo killed before its cleanup would block the network's address range.
osb_cleanup "$PREFIX"

# Bold headings on a terminal, plain ones in a log.
if [[ -t 1 ]]; then
  step() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
  step() { printf '\n%s\n' "$*"; }
fi

step "1. Two web servers on a podman network ($OSB_SUBNET): $ALLOWED and $DENIED, and a fake model API at $API"
osb_start_upstreams "$PREFIX" "$AGENT_IMAGE"
osb_start_fake_api "$PREFIX" "$AGENT_IMAGE"
# What `kubectl create secret generic anthropic --from-literal=api-key=...` would hold.
osb_secret "$PREFIX" anthropic "api-key=$REAL_KEY"

cat >"$WORK/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/bin, /usr, /etc, /proc, /dev/urandom]
  read_write: [/tmp, /dev/null]
landlock:
  compatibility: hard_requirement
credentials:
  anthropic:
    variable: ANTHROPIC_API_KEY
    endpoints: [{ host: "$OSB_API_IP", port: $OSB_PORT }]
network_policies:
  demo_upstream:
    endpoints:
      - { host: "$OSB_ALLOWED_IP", port: $OSB_PORT, protocol: rest, access: read-only }
    binaries:
      - { path: /bin/busybox }
  model_api:
    endpoints:
      - { host: "$OSB_API_IP", port: $OSB_PORT, protocol: rest, access: full }
    binaries:
      - { path: /bin/busybox }
EOF
step "2. The policy (ConfigMap openshell-policy): $ALLOWED read-only (L7) and the API, for /bin/busybox only; ANTHROPIC_API_KEY goes only to the API"
sed 's/^/   /' "$WORK/policy.yaml"

step "3. podman kube play: init container verifies and installs the supervisor, agent runs under it"
sha="$(osb_supervisor_sha256 "$SUPERVISOR_IMAGE")"
OSB_SECRET_ENV="ANTHROPIC_API_KEY=$PREFIX-anthropic/api-key" \
  osb_render "$WORK/pod.yaml" "$PREFIX-pod" "$SUPERVISOR_IMAGE" "$AGENT_IMAGE" "$sha" \
  "$WORK/policy.yaml" text "$OSB_REPO/scripts/demo-agent.sh" "$ALLOWED" "$DENIED" "$API"
osb_play "$WORK/pod.yaml" "$PREFIX" || { cat "$WORK/pod.yaml.log"; osb_die "kube play failed"; }
code="$(osb_wait_exit "$PREFIX-pod-agent" 60)" || osb_die "the agent did not finish in 60 s"
podman logs "$PREFIX-pod-install-supervisor" 2>&1 | sed 's/^/   init: /'

step "4. What the agent container printed (agent lines, and the supervisor's log)"
podman logs "$PREFIX-pod-agent" >"$WORK/agent.log" 2>&1
sed 's/^/   /' "$WORK/agent.log"
echo "   (agent container exit code: $code)"

step "5. The supervisor's deny log line"
missing=()
grep -q 'hello from the allowed upstream' "$WORK/agent.log" || missing+=("the allowed response")
grep -q '403' "$WORK/agent.log" || missing+=("the 403 refusal")
deny_lines="$(grep -E 'denied .* by proxy' "$WORK/agent.log" || true)"
if [[ -n $deny_lines ]]; then
  sed 's/^/   /' <<<"$deny_lines"
else
  missing+=("the supervisor's deny log line")
fi
l7_lines="$(grep -E 'denied POST / by l7' "$WORK/agent.log" || true)"
if [[ -n $l7_lines ]]; then
  sed 's/^/   /' <<<"$l7_lines"
else
  missing+=("the L7 deny log line for the POST")
fi

step "6. Credentials: the agent container got ANTHROPIC_API_KEY from the pod's Secret ..."
podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$PREFIX-pod-agent" |
  grep '^ANTHROPIC_API_KEY=' | sed 's/^/   podman inspect: /'
echo "   ... the agent holds a placeholder (above); the fake API's own log shows what it received:"
podman logs "$PREFIX-api" >"$WORK/api.log" 2>&1
sed 's/^/   /' "$WORK/api.log"
grep -q '^agent: my ANTHROPIC_API_KEY is openshell:resolve:env:ANTHROPIC_API_KEY$' "$WORK/agent.log" ||
  missing+=("the agent's placeholder")
grep -q "received x-api-key: $REAL_KEY" "$WORK/api.log" || missing+=("the real key at the API")
grep -q '"x-api-key":"openshell:resolve:env:ANTHROPIC_API_KEY"' "$WORK/agent.log" ||
  missing+=("the API's echo as the placeholder")
grep -q 'credential_endpoint_mismatch' "$WORK/agent.log" ||
  missing+=("the refusal of the key sent elsewhere")
if grep -q "$REAL_KEY" "$WORK/agent.log"; then
  missing+=("an agent container log without the real key")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  osb_die "the demo did not show: ${missing[*]}"
fi
step "Done: allowed requests served; denied ones (another host, a POST under read-only, the key where it is not bound) refused with 403 and logged; the real key reached the API, never the agent. Cleaning up."
