#!/usr/bin/env bash
# Start-up of `/bin/true` with a 10-path filesystem policy: openshell-sandbox (full
# confinement: the filesystem view with those 10 paths, Landlock, seccomp, namespaces, the
# proxy; the static musl binary the image ships) against bubblewrap with --unshare-all binding
# the same 10 paths (plus what the view also has: a fresh /dev, a private /tmp, its own /proc).
# Run interleaved so that machine noise hits both alike; prints medians and the ratio.
#
# Goal (issue 12): sandboxed <= 1.0x bwrap.
# Usage: bench/view-startup.sh            (RUNS=N to change the number of rounds, default 41)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=bench/timing.sh
source bench/timing.sh

readonly RUNS="${RUNS:-41}"
readonly TRUE=/bin/true

timing_needs bench/view-startup.sh bwrap
timing_build

WORK="$(mktemp -d /tmp/openshell-bench-view.XXXXXX)"
readonly WORK
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/project" "$WORK/cache"
chown 65534:65534 "$WORK/project" "$WORK/cache"

# Ten paths, as an agent's policy lists them: the system read-only, two read-write.
readonly READ_ONLY=(/usr /bin /sbin /lib /lib64 /etc /opt /var/lib)
readonly READ_WRITE=("$WORK/project" "$WORK/cache")
for path in "${READ_ONLY[@]}"; do
  [[ -e $path ]] || { echo "bench/view-startup.sh: $path missing on this machine" >&2; exit 1; }
done
{
  echo "version: 1"
  echo "filesystem_policy:"
  echo "  include_workdir: false"
  echo "  read_only:"
  printf '    - %s\n' "${READ_ONLY[@]}"
  echo "  read_write:"
  printf '    - %s\n' "${READ_WRITE[@]}"
  echo "process:"
  echo "  run_as_user: 65534"
} >"$WORK/policy.yaml"

# The private /tmp first: the read-write paths live below it.
bwrap_args=(--unshare-all --die-with-parent --uid 65534 --gid 65534 --dev /dev --proc /proc
  --tmpfs /tmp)
for path in "${READ_ONLY[@]}"; do bwrap_args+=(--ro-bind "$path" "$path"); done
for path in "${READ_WRITE[@]}"; do bwrap_args+=(--bind "$path" "$path"); done
bwrap_args+=(--chdir "$WORK/project")

bubblewrap() { bwrap "${bwrap_args[@]}" "$TRUE"; }
sandboxed() {
  "$SANDBOX" --log-level error --policy "$WORK/policy.yaml" --workdir "$WORK/project" -- "$TRUE"
}
readonly VARIANTS=(bubblewrap sandboxed)
timing_rounds "$RUNS" "${VARIANTS[@]}"

printf 'start-up of %s with a %d-path policy, median of %d interleaved runs (kernel %s, %d cores)\n' \
  "$TRUE" $((${#READ_ONLY[@]} + ${#READ_WRITE[@]})) "$RUNS" "$(uname -r)" "$(nproc)"
timing_table "${VARIANTS[@]}"
awk -v s="${med[sandboxed]}" -v b="${med[bubblewrap]}" 'BEGIN {
  printf "  sandboxed / bwrap = %.2fx (goal <= 1.0x)\n", s / b }'
