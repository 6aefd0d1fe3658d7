#!/usr/bin/env bash
# Start-up cost of the sandbox: `/bin/true` bare, under bubblewrap, and under openshell-sandbox
# (full confinement, built-in default policy, the static musl binary the image ships), run
# interleaved so that machine noise hits all three alike. Prints medians, ratios and the
# supervisor's own peak RSS.
#
# Goals (issue 4): sandboxed <= 2x bwrap; supervisor peak RSS <= 8 MiB.
# Usage: bench/startup.sh            (RUNS=N to change the number of rounds, default 41)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly RUNS="${RUNS:-41}"
readonly SANDBOX=target/x86_64-unknown-linux-musl/release/openshell-sandbox
readonly TRUE=/bin/true

command -v bwrap >/dev/null || {
  echo "bench/startup.sh: bwrap missing; install it with: apt-get install -y bubblewrap" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || { echo "bench/startup.sh: run as root (the sandbox needs its capabilities)" >&2; exit 1; }
cargo build -q --release --target x86_64-unknown-linux-musl -p openshell-sandbox

bare() { "$TRUE"; }
bubblewrap() { bwrap --unshare-all --die-with-parent --ro-bind / / --dev /dev --proc /proc "$TRUE"; }
sandboxed() { "$SANDBOX" --log-level error -- "$TRUE"; }
readonly VARIANTS=(bare bubblewrap sandboxed)

# Microseconds of one run of a variant (bash's EPOCHREALTIME has microsecond resolution; the
# fork/exec of the timing shell is the same for every variant).
time_us() {
  local start end
  start=$EPOCHREALTIME
  "$1" >/dev/null
  end=$EPOCHREALTIME
  echo $((${end/./} - ${start/./}))
}

declare -A samples
for variant in "${VARIANTS[@]}"; do
  "$variant" >/dev/null # warm the page cache and the binaries
  samples[$variant]=""
done
for ((round = 0; round < RUNS; round++)); do
  for variant in "${VARIANTS[@]}"; do
    samples[$variant]+="$(time_us "$variant") "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A med
for variant in "${VARIANTS[@]}"; do
  med[$variant]=$(median <<<"${samples[$variant]}")
done

rss_kib=$("$SANDBOX" --log-level debug --log-format json -- "$TRUE" 2>&1 |
  sed -n 's/.*"peak_rss_kib":\([0-9]*\).*/\1/p')

printf 'start-up of %s, median of %d interleaved runs (kernel %s, %d cores)\n' \
  "$TRUE" "$RUNS" "$(uname -r)" "$(nproc)"
printf '  %-12s %8s\n' variant "ms"
for variant in "${VARIANTS[@]}"; do
  awk -v v="$variant" -v us="${med[$variant]}" 'BEGIN { printf "  %-12s %8.2f\n", v, us / 1000 }'
done
awk -v s="${med[sandboxed]}" -v b="${med[bubblewrap]}" -v t="${med[bare]}" 'BEGIN {
  printf "  sandboxed / bwrap = %.2fx (goal <= 2x)   sandboxed / bare = %.1fx\n", s / b, s / t }'
awk -v k="$rss_kib" 'BEGIN { printf "  supervisor peak RSS = %.1f MiB (goal <= 8 MiB)\n", k / 1024 }'
