#!/usr/bin/env bash
# Fuzzes every target in fuzz/ (as `cargo fuzz list` names them) for a share of a fixed time
# budget, starting from the seeds in the repository, as many at once as there are cores; any
# crash, panic, hang or leak fails the run and leaves its input under build/fuzz/artifacts/.
#
#   scripts/fuzz.sh [SECONDS]      # the fuzzing budget, wall-clock, build excluded (default 60)
#
# A new target is one [[bin]] entry in fuzz/Cargo.toml, its fuzz_targets/<name>.rs, seeds in
# fuzz/seeds/<name>/ and, optionally, a dictionary in fuzz/dicts/<name>.dict: nothing here
# changes. What the fuzzer finds goes to build/fuzz/corpus/<target>/ (not the repository), and
# is reused by later runs on the same machine.
#
# Needs the nightly toolchain and cargo-fuzz (make setup-test, i.e. scripts/setup-host.sh
# --agents, installs both).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly BUDGET="${1:-60}"
readonly TOOLCHAIN="${OPENSHELL_FUZZ_TOOLCHAIN:-nightly}"
readonly WORK=build/fuzz
fuzz() { cargo "+$TOOLCHAIN" fuzz "$@"; }
say() { printf 'fuzz: %s\n' "$*"; }

fuzz --version >/dev/null 2>&1 \
  || { say "cargo fuzz with the $TOOLCHAIN toolchain missing; run: make setup-test"; exit 1; }
mapfile -t targets < <(fuzz list --fuzz-dir fuzz)
[[ ${#targets[@]} -gt 0 ]] || { say "no targets in fuzz/"; exit 1; }
parallel=$(nproc)
rounds=$(((${#targets[@]} + parallel - 1) / parallel))
per_target=$((BUDGET / rounds))
[[ $per_target -ge 5 ]] || { say "a budget of ${BUDGET}s is too short for ${#targets[@]} targets"; exit 1; }

# Safe Rust: no sanitizer (a panic aborts, which libFuzzer reports as a crash). A development
# build: debug assertions make integer overflow a crash too, and it compiles in half the time
# of an optimised one, which on CI's 2 cores is most of this stage (about 1 of its 3 minutes);
# it runs fewer inputs a second, which a short smoke run can afford. Built once for all.
readonly FLAGS=(--fuzz-dir fuzz --sanitizer none --dev)
started=$SECONDS
fuzz build "${FLAGS[@]}"
say "built ${#targets[@]} targets in $((SECONDS - started))s; ${per_target}s each, $parallel at a time"

# Runs one target; its log is $WORK/<target>.log.
run_target() {
  local target=$1 options
  mkdir -p "$WORK/corpus/$target" "$WORK/artifacts/$target"
  [[ -d fuzz/seeds/$target ]] || { echo "no seeds in fuzz/seeds/$target" >"$WORK/$target.log"; return 1; }
  options=(
    "-max_total_time=$per_target"
    # An input that takes more than 10 s is a hang: a failure like a crash.
    -timeout=10
    -rss_limit_mb=2048
    "-artifact_prefix=$WORK/artifacts/$target/"
    -print_final_stats=1
  )
  [[ -f fuzz/dicts/$target.dict ]] && options+=("-dict=fuzz/dicts/$target.dict")
  # New inputs go to the first corpus directory; the seeds are only read.
  fuzz run "${FLAGS[@]}" "$target" "$WORK/corpus/$target" "fuzz/seeds/$target" \
    -- "${options[@]}" >"$WORK/$target.log" 2>&1
}

failed=()
for ((first = 0; first < ${#targets[@]}; first += parallel)); do
  batch=("${targets[@]:first:parallel}")
  pids=()
  for target in "${batch[@]}"; do
    run_target "$target" &
    pids+=($!)
  done
  for i in "${!batch[@]}"; do
    target=${batch[i]}
    if wait "${pids[i]}"; then
      say "$target: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$target.log" \
        | grep -o '[0-9]*$') inputs, no failure"
    else
      say "$target: FAILED; the input is in $WORK/artifacts/$target/, the log in $WORK/$target.log:"
      tail -n 30 "$WORK/$target.log" >&2
      failed+=("$target")
    fi
  done
done
say "done in $((SECONDS - started))s"
if [[ ${#failed[@]} -gt 0 ]]; then
  say "FAILED targets: ${failed[*]}"
  exit 1
fi
