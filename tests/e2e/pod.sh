#!/usr/bin/env bash
# End-to-end test of the supervisor image and the shipped pod, under podman, as root.
#
#   tests/e2e/pod.sh SUPERVISOR_IMAGE AGENT_IMAGE        (make test-e2e builds both first)
#
# Plays the podman variant of deploy/kubernetes (tests/e2e/podman_variant.py says what
# differs) in a podman network next to two upstream HTTP servers of its own, and checks:
#   the image: size budget, SHA256SUMS and policies inside it;
#   the happy path: the init container installed exactly the verified binary; the agent ran
#     under the supervisor (PID namespace with our init as PID 1, non-root, no capabilities,
#     no_new_privs, seccomp); its exit code is the pod's; the allowed upstream is reachable
#     through the proxy and directly (transparent egress); the other one is refused (403
#     through the proxy, ECONNREFUSED directly) with a deny log line from the supervisor for
#     each, and never sees a connection;
#   the faults: an image whose supervisor bytes do not match its SHA256SUMS, and a wrong
#     pinned digest, each stop the pod in the init container (exit 3) before the agent
#     starts; a policy with an error makes the agent container exit 125 with the reason
#     (file:line:column) in its log.
# Every check is printed with its result; the run ends with "N passed, N failed" and exits
# non-zero if any failed. Everything it creates is removed on exit, also on failure; its
# generated pods and the logs it read are kept in build/e2e-last/.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR/../../scripts
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/pod-lib.sh"

[[ $# -eq 2 ]] || osb_die "usage: $0 SUPERVISOR_IMAGE AGENT_IMAGE"
readonly SUPERVISOR_IMAGE="$1" AGENT_IMAGE="$2"
readonly PREFIX="osb-e2e-$$"
readonly TAMPERED_IMAGE="localhost/$PREFIX-tampered:test"
readonly AGENT_EXIT=42
readonly MAX_IMAGE_BYTES=$((8 * 1000 * 1000))
readonly ALLOWED="$OSB_ALLOWED_IP:$OSB_PORT" DENIED="$OSB_DENIED_IP:$OSB_PORT"

osb_preflight "$SUPERVISOR_IMAGE" "$AGENT_IMAGE"
WORK="$(mktemp -d)"
readonly WORK
started=$SECONDS
passed=0
failed=0

teardown() {
  local rc=$?
  osb_cleanup "$PREFIX"
  podman rmi --force "$TAMPERED_IMAGE" >/dev/null 2>&1 || true
  local left
  left="$(osb_leftovers "$PREFIX")"
  if podman image exists "$TAMPERED_IMAGE"; then
    left+=$'\n'"image $TAMPERED_IMAGE"
  fi
  if [[ -n $left ]]; then
    printf 'teardown: left behind:\n%s\n' "$left" >&2
    rc=1
  fi
  # The logs of the last run stay for a post-mortem (build/ is git-ignored).
  rm -rf "$OSB_REPO/build/e2e-last"
  mkdir -p "$OSB_REPO/build"
  mv "$WORK" "$OSB_REPO/build/e2e-last"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A run killed before its teardown (a stopped CI job) leaves its network on our address
# range; every later run would then fail. Its name carries its PID: reap it once that is gone.
for net in $(podman network ls --format '{{.Name}}' | grep -E '^osb-e2e-[0-9]+-net$' || true); do
  pid="${net#osb-e2e-}"
  pid="${pid%-net}"
  if ! kill -0 "$pid" 2>/dev/null; then
    printf 'removing what the dead run %s left behind\n' "$pid"
    osb_cleanup "osb-e2e-$pid"
  fi
done

section() { printf '\n== %s\n' "$*"; }

# check DESCRIPTION COMMAND...: runs COMMAND, prints ok/FAIL with DESCRIPTION, counts.
check() {
  local what="$1"
  shift
  if "$@" >"$WORK/check.out" 2>&1; then
    printf '  ok    %s\n' "$what"
    passed=$((passed + 1))
  else
    printf '  FAIL  %s\n' "$what"
    cut -c1-160 "$WORK/check.out" | sed -n '1,15s/^/          | /p'
    failed=$((failed + 1))
  fi
}

# has FILE REGEX: FILE has a line matching REGEX (extended); shows FILE when not.
has() {
  grep -Eq -- "$2" "$1" || { echo "no line matching /$2/ in:"; cat "$1"; return 1; }
}
lacks() {
  ! grep -E -- "$2" "$1" || { echo "(the line above should not be there)"; return 1; }
}
equals() {
  [[ $1 == "$2" ]] || { printf 'got      %q\nexpected %q\n' "$1" "$2"; return 1; }
}
# value FILE KEY: the text after "KEY: " on the agent's output line for KEY.
value() { sed -n "s/^$2: //p" "$1" | head -n1; }

# deny_logged FILE DESTINATION LAYER: the supervisor's JSON deny event for DESTINATION:
# event=denied, layer=LAYER, pid, exe, what.
deny_logged() {
  "$OSB_PYTHON" - "$1" "$2" "$3" <<'EOF'
import json, sys
path, dest, layer = sys.argv[1], sys.argv[2], sys.argv[3]
for line in open(path, encoding="utf-8", errors="replace"):
    # The agent's stdout and the supervisor's stderr share the log; a line the agent leaves
    # unterminated gets the next log event glued to its end.
    start = line.find('{"timestamp"')
    try:
        e = json.loads(line[start:]) if start >= 0 else None
    except ValueError:
        continue
    if (isinstance(e, dict) and e.get("event") == "denied" and e.get("layer") == layer
            and dest in str(e.get("what", "")) and e.get("pid") and e.get("exe")):
        print("found:", line.strip())
        sys.exit(0)
print(f"no JSON line with event=denied, layer={layer}, pid, exe and what containing {dest}")
sys.exit(1)
EOF
}

# The agent container's capabilities in deploy/kubernetes/pod.yaml, as podman lists them.
shipped_agent_caps() {
  "$OSB_PYTHON" - "$OSB_REPO/deploy/kubernetes/pod.yaml" <<'EOF'
import sys, yaml
pod = yaml.safe_load(open(sys.argv[1]))
agent = [c for c in pod["spec"]["containers"] if c["name"] == "agent"][0]
print("".join(f"CAP_{c} " for c in sorted(agent["securityContext"]["capabilities"]["add"])))
EOF
}

# never_started CONTAINER: podman created it (or not even that) but never ran it.
never_started() {
  local state
  state="$(podman inspect --format '{{.State.Status}} {{.State.StartedAt.IsZero}}' "$1" 2>&1)" ||
    { echo "no container $1: $state"; return 0; }
  equals "$state" "created true"
}

# Each pod goes as soon as its checks are done; the trap's cleanup catches the rest.
kube_down() { podman kube down "$1" >/dev/null 2>&1 || true; }

# Image facts, from the image itself.
section "image $SUPERVISOR_IMAGE"
size="$(podman image inspect --format '{{.Size}}' "$SUPERVISOR_IMAGE")"
printf '  size: %s bytes\n' "$size"
check "weighs at most $MAX_IMAGE_BYTES bytes" test "$size" -le "$MAX_IMAGE_BYTES"
mnt="$(podman image mount "$SUPERVISOR_IMAGE")"
# The manifest names absolute paths; check them relative to the image's root.
check "SHA256SUMS matches both binaries in the image" bash -c \
  "cd '$mnt' && sed 's#  /#  ./#' usr/local/share/openshell/SHA256SUMS | sha256sum --strict -c"
check "ships every policy of policies/ unchanged" \
  diff -r "$OSB_REPO/policies" "$mnt/usr/local/share/openshell/policies"
podman image unmount "$SUPERVISOR_IMAGE" >/dev/null
check "entrypoint is the copier" equals \
  "$(podman image inspect --format '{{json .Config.Entrypoint}}' "$SUPERVISOR_IMAGE")" \
  '["/usr/local/bin/openshell-copier"]'
check "labels version, revision, source, licenses=Apache-2.0" has <(
  podman image inspect --format \
    '{{index .Labels "org.opencontainers.image.version"}} {{index .Labels "org.opencontainers.image.revision"}} {{index .Labels "org.opencontainers.image.source"}} {{index .Labels "org.opencontainers.image.licenses"}}' \
    "$SUPERVISOR_IMAGE"
) '^[0-9]+\.[0-9]+\.[0-9]+[^ ]* [0-9a-f]{7,}[^ ]* https://[^ ]+ Apache-2\.0$'
SHA="$(osb_supervisor_sha256 "$SUPERVISOR_IMAGE")"
printf '  openshell-sandbox sha256: %s\n' "$SHA"

section "upstream servers on $OSB_SUBNET"
osb_start_upstreams "$PREFIX" "$AGENT_IMAGE"
printf '  allowed %s, denied %s (busybox httpd)\n' "$ALLOWED" "$DENIED"

# The filesystem part of the test policies: the test agent's needs.
readonly POLICY_HEAD="version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/bin, /usr, /etc, /proc, /opt/openshell/bin, /dev/urandom]
  read_write: [/tmp, /dev/null]
landlock:
  compatibility: hard_requirement"
# The policy the agent runs under: the allowed upstream only, for busybox (every applet's
# executable). The address is written out exactly, which is what lets the proxy connect to a
# private address.
cat >"$WORK/policy.yaml" <<EOF
$POLICY_HEAD
network_policies:
  e2e_upstream:
    endpoints:
      - { host: "$OSB_ALLOWED_IP", port: $OSB_PORT }
    binaries:
      - { path: /bin/busybox }
EOF
readonly SCRIPT="$OSB_REPO/tests/e2e/agent.sh"

section "the pod: init container installs, agent runs confined"
pod="$PREFIX-ok"
osb_render "$WORK/ok.yaml" "$pod" "$SUPERVISOR_IMAGE" "$AGENT_IMAGE" "$SHA" "$WORK/policy.yaml" \
  json "$SCRIPT" "$ALLOWED" "$DENIED" "$AGENT_EXIT"
t0=$(date +%s%N)
check "podman kube play succeeds" osb_play "$WORK/ok.yaml" "$PREFIX"
code="$(osb_wait_exit "$pod-agent" 60 || echo timeout)"
t1=$(date +%s%N)
pod_ms=$(((t1 - t0) / 1000000))
printf '  pod start to agent exit: %d ms\n' "$pod_ms"
podman logs "$pod-install-supervisor" >"$WORK/init.log" 2>&1
podman logs "$pod-agent" >"$WORK/agent.log" 2>&1
check "init container exited 0" equals \
  "$(podman inspect --format '{{.State.ExitCode}}' "$pod-install-supervisor")" 0
check "copier logged the install, verified by pin and manifest, with the image's digest" \
  has "$WORK/init.log" "\"event\":\"installed\".*\"sha256\":\"$SHA\".*\"verified_by\":\"pin\+manifest\""
check "agent container's exit code is the agent's ($AGENT_EXIT)" equals "$code" "$AGENT_EXIT"
check "the binary the agent container ran has the SHA256SUMS digest" \
  equals "$(value "$WORK/agent.log" supervisor-sha256)" "$SHA"
check "agent is PID 2 of its own PID namespace" equals "$(value "$WORK/agent.log" agent-pid)" 2
check "PID 1 there is the supervisor's init" \
  equals "$(value "$WORK/agent.log" pid1-argv0)" /opt/openshell/bin/openshell-sandbox
check "agent is not root (real, effective, saved, fs uid and gid)" \
  has "$WORK/agent.log" '^status-Uid:[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*$'
check "agent group is not root" \
  has "$WORK/agent.log" '^status-Gid:[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*[[:space:]]+[1-9][0-9]*$'
for set in CapInh CapPrm CapEff CapBnd CapAmb; do
  check "agent $set is empty" has "$WORK/agent.log" "^status-$set:[[:space:]]+0+$"
done
check "agent has no_new_privs" has "$WORK/agent.log" '^status-NoNewPrivs:[[:space:]]+1$'
check "agent runs under a seccomp filter" has "$WORK/agent.log" '^status-Seccomp:[[:space:]]+2$'
check "supervisor ran with no_new_privs (allowPrivilegeEscalation: false)" has <(
  podman inspect --format '{{.HostConfig.SecurityOpt}}' "$pod-agent"
) 'no-new-privileges'
check "agent container holds exactly the capabilities pod.yaml adds" equals \
  "$(podman inspect --format '{{range .EffectiveCaps}}{{.}} {{end}}' "$pod-agent")" \
  "$(shipped_agent_caps)"
check "a direct connection to $ALLOWED is served (transparent egress, same policy)" \
  has "$WORK/agent.log" '^direct: hello from the allowed upstream$'
check "a direct connection to $DENIED is refused at once" \
  has "$WORK/agent.log" '^direct-denied: .*Connection refused'

section "the network, through the supervisor's proxy"
check "agent's environment points at the proxy on 127.0.0.1:3128" has "$WORK/agent.log" \
  '^proxy-env: HTTP_PROXY=http://127.0.0.1:3128 HTTPS_PROXY=http://127.0.0.1:3128 ALL_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128 NO_PROXY=127.0.0.1,localhost,::1$'
check "allowed upstream $ALLOWED answers through the proxy" \
  has "$WORK/agent.log" '^allowed-body: hello from the allowed upstream$'
check "CONNECT to $ALLOWED is established" \
  has "$WORK/agent.log" '^allowed-connect: HTTP/1\.1 200 '
check "the tunnel carries the agent's request to the allowed upstream" \
  has "$WORK/agent.log" '^allowed-connect: hello from the allowed upstream$'
check "CONNECT to $DENIED is refused with 403 Forbidden" \
  has "$WORK/agent.log" '^denied-response: HTTP/1\.1 403 Forbidden$'
check "the refusal's body is the policy_denied JSON" \
  has "$WORK/agent.log" '^denied-response: \{.*"error": ?"policy_denied"'
check "the supervisor logged the denial (event, layer, pid, exe, what)" \
  deny_logged "$WORK/agent.log" "$DENIED" proxy
check "the supervisor logged the direct attempt too (layer network)" \
  deny_logged "$WORK/agent.log" "$DENIED" network
podman logs "$PREFIX-allowed" >"$WORK/allowed.log" 2>&1
podman logs "$PREFIX-denied" >"$WORK/denied.log" 2>&1
check "the allowed upstream served the three requests (direct, absolute-form and tunnel)" \
  equals "$(grep -c 'response:200' "$WORK/allowed.log")" 3
check "the denied upstream saw no connection at all" lacks "$WORK/denied.log" '.'
kube_down "$WORK/ok.yaml"

section "credentials: a Secret's key reaches the API, never the agent"
REAL_KEY="sk-ant-e2e-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
REAL_TOKEN="tok-e2e-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
readonly REAL_KEY REAL_TOKEN API="$OSB_API_IP:$OSB_PORT"
osb_start_fake_api "$PREFIX" "$AGENT_IMAGE"
osb_secret "$PREFIX" key "api-key=$REAL_KEY"
printf '%s\n' "$REAL_TOKEN" >"$WORK/token"
cat >"$WORK/credentials-policy.yaml" <<POLICY
$POLICY_HEAD
credentials:
  anthropic:
    variable: ANTHROPIC_API_KEY
    placeholder: sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY
    endpoints: [{ host: "$OSB_API_IP", port: $OSB_PORT }]
  token:
    variable: FILE_TOKEN
    source: { file: /var/run/secrets/openshell-test/token }
    endpoints: [{ host: "$OSB_API_IP", port: $OSB_PORT }]
network_policies:
  api:
    endpoints:
      - { host: "$OSB_API_IP", port: $OSB_PORT, protocol: rest, access: full }
      - { host: "$OSB_ALLOWED_IP", port: $OSB_PORT, protocol: rest, access: read-only }
    binaries:
      - { path: /bin/busybox }
POLICY
pod="$PREFIX-creds"
podman logs "$PREFIX-allowed" >"$WORK/allowed-before.log" 2>&1
OSB_SECRET_ENV="ANTHROPIC_API_KEY=$PREFIX-key/api-key" \
  OSB_SECRET_FILE="/var/run/secrets/openshell-test/token=$WORK/token" \
  osb_render "$WORK/creds.yaml" "$pod" "$SUPERVISOR_IMAGE" "$AGENT_IMAGE" "$SHA" \
  "$WORK/credentials-policy.yaml" json "$OSB_REPO/tests/e2e/credentials-agent.sh" "$API" "$ALLOWED"
check "podman kube play succeeds (the key from a secret, the token from a mounted file)" \
  osb_play "$WORK/creds.yaml" "$PREFIX"
for _ in $(seq 300); do
  podman logs "$pod-agent" 2>&1 | grep -q '^waiting$' && break
  sleep 0.1
done
# PID 1 of the agent container is the supervisor, which the pod gave the key.
podman exec "$pod-agent" cat /proc/1/environ 2>&1 | tr '\0' '\n' >"$WORK/supervisor-environ.txt"
code="$(osb_wait_exit "$pod-agent" 60 || echo timeout)"
podman logs "$pod-agent" >"$WORK/creds.log" 2>&1
podman logs "$PREFIX-api" >"$WORK/api.log" 2>&1
podman logs "$PREFIX-allowed" >"$WORK/allowed-after.log" 2>&1
check "the agent exited 0" equals "$code" 0
check "podman inspect shows the key in the agent container's environment (the pod's Secret)" \
  has <(podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$pod-agent") \
  "^ANTHROPIC_API_KEY=$REAL_KEY\$"
check "the agent's ANTHROPIC_API_KEY is the alias placeholder" \
  equals "$(value "$WORK/creds.log" key-env)" sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY
check "the agent's FILE_TOKEN is the placeholder" \
  equals "$(value "$WORK/creds.log" token-env)" openshell:resolve:env:FILE_TOKEN
check "the agent cannot read the key file (not in its view)" \
  has "$WORK/creds.log" '^secret-file: cat: can.t open .*No such file'
check "the supervisor (the container's PID 1) keeps the variable, emptied" \
  has "$WORK/supervisor-environ.txt" '^ANTHROPIC_API_KEY=$'
check "the fake API received the real key and the real token" \
  has "$WORK/api.log" "^fake-api: received x-api-key: $REAL_KEY; authorization: Bearer $REAL_TOKEN\$"
check "the API's echo reached the agent as the placeholders" has "$WORK/creds.log" \
  '^api-response: \{.*"x-api-key":"sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY","authorization":"Bearer openshell:resolve:env:FILE_TOKEN"'
check "the key sent to a host it is not bound to is refused (403)" \
  has "$WORK/creds.log" '^other-response: HTTP/1\.1 403 '
check "with credential_endpoint_mismatch" \
  has "$WORK/creds.log" '^other-response: .*"error": ?"credential_endpoint_mismatch"'
check "the supervisor logged that refusal" deny_logged "$WORK/creds.log" "GET /" l7
check "that host saw no request" equals "$(grep -c 'response:' "$WORK/allowed-after.log")" \
  "$(grep -c 'response:' "$WORK/allowed-before.log")"
for value in "$REAL_KEY" "$REAL_TOKEN"; do
  check "no real value in the agent container's output (agent and supervisor log)" \
    lacks "$WORK/creds.log" "$value"
  check "none in the supervisor's environment block" lacks "$WORK/supervisor-environ.txt" "$value"
done
kube_down "$WORK/creds.yaml"

section "every capability the pod adds is needed"
# The pod again with one capability left out at a time: either the supervisor refuses to
# start (its start-up check names the capability) or the agent can no longer reach the
# allowed upstream. A capability whose removal changes nothing would be one too many.
for cap in $(shipped_agent_caps); do
  cap="${cap#CAP_}"
  name="no-$(tr 'A-Z_' 'a-z-' <<<"$cap")"
  pod="$PREFIX-$name"
  OSB_WITHOUT_CAP="$cap" osb_render "$WORK/$name.yaml" "$pod" "$SUPERVISOR_IMAGE" \
    "$AGENT_IMAGE" "$SHA" "$WORK/policy.yaml" json "$SCRIPT" "$ALLOWED" "$DENIED" "$AGENT_EXIT"
  osb_play "$WORK/$name.yaml" "$PREFIX" || true
  code="$(osb_wait_exit "$pod-agent" 60 || echo timeout)"
  podman logs "$pod-agent" >"$WORK/$name.log" 2>&1
  if [[ $code == 125 ]]; then
    check "without $cap the supervisor refuses to start (125) and names it" \
      has "$WORK/$name.log" "missing capabilit.*$cap"
  else
    check "without $cap the agent cannot reach the allowed upstream (exit $code)" \
      lacks "$WORK/$name.log" '^allowed-body: hello from the allowed upstream$'
  fi
  kube_down "$WORK/$name.yaml"
done

section "fault: supervisor bytes in the image do not match its SHA256SUMS"
# The shipped image with one byte appended to the supervisor and SHA256SUMS left as it was:
# what a corrupted layer or a tampered registry copy looks like.
mkdir "$WORK/tampered"
mnt="$(podman image mount "$SUPERVISOR_IMAGE")"
cp "$mnt/usr/local/bin/openshell-sandbox" "$WORK/tampered/openshell-sandbox"
podman image unmount "$SUPERVISOR_IMAGE" >/dev/null
printf '\0' >>"$WORK/tampered/openshell-sandbox"
printf 'FROM %s\nCOPY openshell-sandbox /usr/local/bin/openshell-sandbox\n' "$SUPERVISOR_IMAGE" \
  >"$WORK/tampered/Containerfile"
podman build --quiet --layers=false --tag "$TAMPERED_IMAGE" "$WORK/tampered" >/dev/null

# expect_init_refusal NAME IMAGE PIN: the pod stops in the init container with exit 3.
expect_init_refusal() {
  local name="$1" image="$2" pin="$3" pod="$PREFIX-$1"
  osb_render "$WORK/$name.yaml" "$pod" "$image" "$AGENT_IMAGE" "$pin" "$WORK/policy.yaml" \
    json "$SCRIPT" "$ALLOWED" "$DENIED" "$AGENT_EXIT"
  local rc=0
  osb_play "$WORK/$name.yaml" "$PREFIX" || rc=$?
  check "podman kube play fails (init container failed)" test "$rc" -ne 0
  check "init container exited 3 (digest mismatch)" equals \
    "$(podman inspect --format '{{.State.ExitCode}}' "$pod-install-supervisor")" 3
  podman logs "$pod-install-supervisor" >"$WORK/$name-init.log" 2>&1
  check "the copier said why" has "$WORK/$name-init.log" '"event":"failed","exit_code":3'
  check "agent container never started" never_started "$pod-agent"
  kube_down "$WORK/$name.yaml"
}
expect_init_refusal tampered "$TAMPERED_IMAGE" "$SHA"

section "fault: the pod pins a different digest than the image ships"
expect_init_refusal wrongpin "$SUPERVISOR_IMAGE" "$(printf '%s' "$SHA" | rev)"

section "fault: the policy ConfigMap has an error"
# Line 4, column 7: the relative path. The supervisor must name exactly that place.
printf 'version: 1\nfilesystem_policy:\n  read_only:\n    - relative/path\n' >"$WORK/bad-policy.yaml"
pod="$PREFIX-badpolicy"
osb_render "$WORK/badpolicy.yaml" "$pod" "$SUPERVISOR_IMAGE" "$AGENT_IMAGE" "$SHA" \
  "$WORK/bad-policy.yaml" json "$SCRIPT" "$ALLOWED" "$DENIED" "$AGENT_EXIT"
check "podman kube play succeeds (the init container is fine)" \
  osb_play "$WORK/badpolicy.yaml" "$PREFIX"
code="$(osb_wait_exit "$pod-agent" 60 || echo timeout)"
podman logs "$pod-agent" >"$WORK/badpolicy.log" 2>&1
check "agent container exits 125 (supervisor refused to start)" equals "$code" 125
check "its log names the policy file, line 4, column 7" \
  has "$WORK/badpolicy.log" '/etc/openshell/policy\.yaml:4:7: filesystem_policy\.read_only\[0\]'
check "the reason is one line" equals "$(grep -c 'policy\.yaml:4:7' "$WORK/badpolicy.log")" 1
check "the agent never ran" lacks "$WORK/badpolicy.log" '^agent-pid:'
kube_down "$WORK/badpolicy.yaml"

section "summary"
printf '  pod start to agent exit: %d ms; whole run: %d s\n' "$pod_ms" "$((SECONDS - started))"
printf '%d passed, %d failed\n' "$passed" "$failed"
[[ $failed -eq 0 ]]
