#!/usr/bin/env bash
# Every shipped policy (policies/*.yaml) loads and can be enforced on this machine:
# `openshell-sandbox check` exits 0 for it, and no network rule of it is inert (a rule
# without endpoints or binaries allows nothing, which in a shipped policy is a mistake).
# The five L7 policies among upstream's examples (supervisor/tests/fixtures) pass too, and `check`
# says their endpoints are enforced by default. Then broken copies prove that the check can
# fail: a protocol this build does not inspect, a credential file the agent could read, and a
# rule without binaries.
#
#   tests/e2e/check-policies.sh SANDBOX_BINARY       (make test-policies)
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 SANDBOX_BINARY" >&2; exit 2; }
readonly SANDBOX="$1"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO
[[ -x $SANDBOX ]] || { echo "check-policies: $SANDBOX is not an executable" >&2; exit 2; }
WORK="$(mktemp -d)"
readonly WORK
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

result() {
  if [[ $1 -eq 0 ]]; then
    printf '  ok    %s\n' "$2"
    passed=$((passed + 1))
  else
    printf '  FAIL  %s\n' "$2"
    sed 's/^/          | /' "$WORK/out"
    failed=$((failed + 1))
  fi
}

# enforceable FILE: check exits 0 and reports no inert rule.
enforceable() {
  local rc=0
  "$SANDBOX" check --policy "$1" --workdir /tmp >"$WORK/out" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || return 1
  ! grep -qE 'allows nothing' "$WORK/out"
}

echo "== shipped policies"
for policy in "$REPO"/policies/*.yaml; do
  rc=0
  enforceable "$policy" || rc=1
  result "$rc" "${policy#"$REPO"/} can be enforced as written"
done

echo "== upstream's L7 policies"
FIXTURES="$REPO/supervisor/tests/fixtures/upstream-policies"
if [[ -d $FIXTURES ]]; then
  for name in governance-interceptor_policy local-inference_sandbox-policy \
    openshell-prover_testdata_policy openshell-supervisor-network_testdata_sandbox-policy \
    sandbox-policy-quickstart_policy; do
    rc=0
    # Two of them run as user "sandbox", which this machine's /etc/passwd lacks: the ids come
    # from the environment then, as the Kubernetes driver sets them.
    OPENSHELL_SANDBOX_UID=1000 OPENSHELL_SANDBOX_GID=1000 \
      "$SANDBOX" check --policy "$FIXTURES/$name.yaml" --workdir /tmp >"$WORK/out" 2>&1 || rc=$?
    # Each writes enforcement: enforce, so check has no default to point out.
    if grep -q 'no enforcement written' "$WORK/out"; then rc=1; fi
    result "$rc" "$name.yaml loads and can be enforced"
  done
else
  echo "  skipped: $FIXTURES is not here (only on the project's machines)"
fi
printf 'version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - { host: api.example.com, port: 443, protocol: rest, access: read-only }\n    binaries: [{ path: /usr/bin/curl }]\n' \
  >"$WORK/default-enforce.yaml"
rc=0
enforceable "$WORK/default-enforce.yaml" || rc=1
grep -q 'no enforcement written, so its L7 rules are enforced (upstream would only audit)' "$WORK/out" || rc=1
result "$rc" "check says an endpoint without enforcement is enforced"

echo "== the check can fail"
# A protocol this build does not inspect in the first endpoint of the Claude Code policy.
sed '0,/^\( *\)protocol: rest$/s//\1protocol: graphql/' "$REPO/policies/claude-code.yaml" \
  >"$WORK/l7.yaml"
rc=0
cmp -s "$REPO/policies/claude-code.yaml" "$WORK/l7.yaml" && rc=1
if enforceable "$WORK/l7.yaml"; then rc=1; fi
grep -q 'is not supported' "$WORK/out" || rc=1
result "$rc" "a policy with protocol: graphql is refused as not supported"

# The model API's key in a file the agent could read (under /tmp, read-write for it).
printf 'sk-ant-check\n' >"$WORK/key"
sed "s#    variable: ANTHROPIC_API_KEY#    variable: ANTHROPIC_API_KEY\n    source: { file: $WORK/key }#" \
  "$REPO/policies/claude-code.yaml" >"$WORK/exposed.yaml"
sed -i 's#^  read_write:#  read_write:\n    - '"$WORK"'#' "$WORK/exposed.yaml"
rc=0
if enforceable "$WORK/exposed.yaml"; then rc=1; fi
grep -q 'lies under' "$WORK/out" || rc=1
result "$rc" "a credential whose source file the agent could read is refused"

# A rule with its binaries removed.
printf 'version: 1\nnetwork_policies:\n  orphan:\n    endpoints:\n      - { host: example.com, port: 443 }\n' \
  >"$WORK/orphan.yaml"
rc=0
if enforceable "$WORK/orphan.yaml"; then rc=1; fi
result "$rc" "a rule without binaries is reported as allowing nothing"

printf '%d passed, %d failed\n' "$passed" "$failed"
[[ $failed -eq 0 ]]
