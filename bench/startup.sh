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

# shellcheck source=bench/timing.sh
source bench/timing.sh

readonly RUNS="${RUNS:-41}"
readonly TRUE=/bin/true

timing_needs bench/startup.sh bwrap
timing_build

bare() { "$TRUE"; }
bubblewrap() { bwrap --unshare-all --die-with-parent --ro-bind / / --dev /dev --proc /proc "$TRUE"; }
sandboxed() { "$SANDBOX" --log-level error -- "$TRUE"; }
readonly VARIANTS=(bare bubblewrap sandboxed)
timing_rounds "$RUNS" "${VARIANTS[@]}"

rss_kib=$("$SANDBOX" --log-level debug --log-format json -- "$TRUE" 2>&1 |
  sed -n 's/.*"peak_rss_kib":\([0-9]*\).*/\1/p')

printf 'start-up of %s, median of %d interleaved runs (kernel %s, %d cores)\n' \
  "$TRUE" "$RUNS" "$(uname -r)" "$(nproc)"
timing_table "${VARIANTS[@]}"
awk -v s="${med[sandboxed]}" -v b="${med[bubblewrap]}" -v t="${med[bare]}" 'BEGIN {
  printf "  sandboxed / bwrap = %.2fx (goal <= 2x)   sandboxed / bare = %.1fx\n", s / b, s / t }'
awk -v k="$rss_kib" 'BEGIN { printf "  supervisor peak RSS = %.1f MiB (goal <= 8 MiB)\n", k / 1024 }'
