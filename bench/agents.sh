#!/usr/bin/env bash
# Start-up cost of the sandbox for the real agent CLIs: each agent's `--version`, bare and under
# openshell-sandbox with its shipped policy (the static musl binary the image ships), both as
# the agent's uid with the same home, run interleaved so that machine noise hits both alike.
# Prints medians and the ratio per agent.
#
# Goal (issue 14): sandboxed / bare <= 1.05x for every agent.
# Usage: bench/agents.sh         (RUNS=N to change the number of rounds, default 5)
# Needs the agent CLIs of scripts/agent-clis.txt (scripts/setup-host.sh --agents installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=bench/timing.sh
source bench/timing.sh

readonly RUNS="${RUNS:-5}"
readonly PREFIX="${OPENSHELL_AGENTS_PREFIX:-/usr/local}"
readonly AGENT_ID=65534
# The workdir (read-write under every agent policy) holds the agents' home: not under /tmp,
# where Codex refuses to create its helper links and says so at every start.
WORK="$(pwd)/build/bench-agents"
readonly WORK
readonly HOME_DIR="$WORK/home"

timing_needs bench/agents.sh
declare -A POLICY=([claude]=claude-code.yaml [codex]=codex.yaml [gemini]=gemini-cli.yaml)
readonly AGENTS=(claude codex gemini)
for agent in "${AGENTS[@]}"; do
  [[ -x $PREFIX/bin/$agent ]] || {
    echo "bench/agents.sh: $PREFIX/bin/$agent missing; run scripts/setup-host.sh --agents" >&2
    exit 1
  }
done
timing_build
mkdir -p "$HOME_DIR"
chown "$AGENT_ID:$AGENT_ID" "$HOME_DIR"

# What both variants run: the CLI's --version with the home and PATH an agent image gives it.
readonly CLI_ENV=(env -i HOME="$HOME_DIR" PATH="$PREFIX/bin:/usr/bin:/bin")
bare() {
  setpriv --reuid "$AGENT_ID" --regid "$AGENT_ID" --clear-groups -- \
    "${CLI_ENV[@]}" "$PREFIX/bin/$1" --version
}
sandboxed() {
  OPENSHELL_SANDBOX_UID=$AGENT_ID OPENSHELL_SANDBOX_GID=$AGENT_ID "$SANDBOX" \
    --policy "policies/${POLICY[$1]}" --workdir "$WORK" --log-level error -- \
    "${CLI_ENV[@]}" "$PREFIX/bin/$1" --version
}

declare -A samples
for agent in "${AGENTS[@]}"; do
  for variant in bare sandboxed; do
    # Warm the page cache and the CLI's first-run state; fail loudly if it does not run.
    "$variant" "$agent" >"$WORK/out" 2>&1 || {
      echo "bench/agents.sh: $variant $agent --version failed:" >&2
      cat "$WORK/out" >&2
      exit 1
    }
    samples[$agent.$variant]=""
  done
done
for ((round = 0; round < RUNS; round++)); do
  for agent in "${AGENTS[@]}"; do
    for variant in bare sandboxed; do
      samples[$agent.$variant]+="$(time_us "$variant" "$agent" 2>/dev/null) "
    done
  done
done

printf 'agent CLI --version, bare vs sandboxed (shipped policy), median of %d interleaved runs\n' "$RUNS"
printf '(kernel %s, %d cores)\n' "$(uname -r)" "$(nproc)"
printf '  %-8s %-10s %10s %10s %8s\n' agent version "bare ms" "sandbox ms" ratio
for agent in "${AGENTS[@]}"; do
  b=$(median <<<"${samples[$agent.bare]}")
  s=$(median <<<"${samples[$agent.sandboxed]}")
  version=$("${CLI_ENV[@]}" "$PREFIX/bin/$agent" --version 2>/dev/null | head -n1 |
    grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)
  awk -v a="$agent" -v v="$version" -v b="$b" -v s="$s" 'BEGIN {
    printf "  %-8s %-10s %10.1f %10.1f %7.3fx\n", a, v, b / 1000, s / 1000, s / b }'
done
echo '  goal: sandboxed / bare <= 1.05x'
