# shellcheck shell=bash
# Sourced by the start-up benchmarks (startup.sh, view-startup.sh, agents.sh), run from the
# repository's root: the sandbox they time, and timing variants interleaved round by round so
# that machine noise hits all alike.
#
#   timing_needs NAME [bwrap]   exits with a message unless root (and bwrap is installed)
#   timing_build                builds $SANDBOX, the static musl binary the image ships
#   time_us CMD...              microseconds of one run of CMD, its output discarded
#   median                      the median of the numbers on stdin (spaces or lines)
#   timing_rounds RUNS VARIANT...  runs each VARIANT (a function) once to warm the page cache
#                               and the binaries, failing loudly if it fails; then RUNS rounds
#                               of all; sets med[VARIANT] (microseconds)
#   timing_table VARIANT...     prints the variants' medians, in ms

# shellcheck disable=SC2034  # used by the sourcing scripts
readonly SANDBOX=target/x86_64-unknown-linux-musl/release/openshell-sandbox

timing_needs() {
  [[ $(id -u) -eq 0 ]] || { echo "$1: run as root (the sandbox needs its capabilities)" >&2; exit 1; }
  if [[ ${2:-} == bwrap ]] && ! command -v bwrap >/dev/null; then
    echo "$1: bwrap missing; install it with: apt-get install -y bubblewrap" >&2
    exit 1
  fi
}

timing_build() { cargo build -q --release --target x86_64-unknown-linux-musl -p openshell-sandbox; }

# bash's EPOCHREALTIME has microsecond resolution; the fork/exec of the timing shell is the
# same for every variant.
time_us() {
  local start end
  start=$EPOCHREALTIME
  "$@" >/dev/null
  end=$EPOCHREALTIME
  echo $((${end/./} - ${start/./}))
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A med
timing_rounds() {
  local runs=$1 variant round
  shift
  local -A samples
  for variant in "$@"; do
    "$variant" >/dev/null || { echo "$0: $variant fails" >&2; exit 1; }
    samples[$variant]=""
  done
  for ((round = 0; round < runs; round++)); do
    for variant in "$@"; do
      samples[$variant]+="$(time_us "$variant") "
    done
  done
  for variant in "$@"; do
    med[$variant]=$(median <<<"${samples[$variant]}")
  done
}

timing_table() {
  local variant
  printf '  %-12s %8s\n' variant "ms"
  for variant in "$@"; do
    awk -v v="$variant" -v us="${med[$variant]}" 'BEGIN { printf "  %-12s %8.2f\n", v, us / 1000 }'
  done
}
