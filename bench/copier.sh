#!/usr/bin/env bash
# Benchmark: installing a 15 MB and a 64 MB file with openshell-copier (copy + read-back SHA-256
# verification + fsync + atomic rename) against plain `cp`, and against `cp` followed by an fsync
# of the file and its directory (what the copier's durability costs, for a fair second look).
#
# Prints ratios, it is not a timed test. Every timed command gets a fresh destination, all three
# are interleaved run by run (so drift in the machine hits them alike), each is preceded by a
# `sync` outside the timed window (so nobody pays for another's dirty pages), source and
# destination are on the same filesystem, and the median of RUNS runs is reported.
#
# Usage: bench/copier.sh [--tmpfs] [DIR]
#   DIR       directory on the filesystem to measure (default: target/ in the repository); the
#             script works in a fresh subdirectory of it and removes only that.
#   --tmpfs   also measure on a private tmpfs mounted under DIR (needs root): the case of an
#             `emptyDir: {medium: Memory}` volume.
# Environment: RUNS (default 15, at least 10).
#
# Needs: cargo with the x86_64-unknown-linux-musl target, coreutils, file; binutils' `strip` for
# the stripped size (reported as missing otherwise). Installs nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-15}
tmpfs=false
dir=""
for arg in "$@"; do
    case $arg in
        --tmpfs) tmpfs=true ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) dir=$arg ;;
    esac
done
dir=${dir:-$repo/target}
if ((runs < 10)); then
    echo "RUNS must be at least 10" >&2
    exit 2
fi
for tool in cargo file sha256sum; do
    command -v "$tool" >/dev/null || { echo "bench/copier.sh: $tool not found" >&2; exit 2; }
done

target=x86_64-unknown-linux-musl
echo "building: cargo build --release --target $target -p openshell-copier"
(cd "$repo" && cargo build --quiet --release --target "$target" -p openshell-copier)
bin=$repo/target/$target/release/openshell-copier

mkdir -p "$dir"
dir=$(mktemp -d "$(cd "$dir" && pwd)/bench-copier.XXXXXX")
mounted=""
cleanup() {
    if [[ -n $mounted ]]; then umount "$mounted" || umount -l "$mounted"; fi
    rm -rf "$dir"
}
trap cleanup EXIT

echo
echo "binary: $bin"
if command -v strip >/dev/null; then
    strip -o "$dir/copier.stripped" "$bin"
    stripped=$(stat -c %s "$dir/copier.stripped")
    echo "  stripped size: $stripped bytes ($((stripped / 1024)) KiB; goal <= 800 KiB)"
    echo "  file: $(file -b "$dir/copier.stripped")"
else
    echo "  strip not found (binutils): size as built $(stat -c %s "$bin") bytes"
    echo "  file: $(file -b "$bin")"
fi

# Times one command in microseconds, from a clean writeback state, with stdout discarded.
# EPOCHREALTIME is a bash builtin: no fork inside the timed window.
time_us() {
    sync
    local t0=$EPOCHREALTIME
    "$@" >/dev/null
    local t1=$EPOCHREALTIME
    echo $((${t1/./} - ${t0/./}))
}

median_ms() {
    printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%.2f", m / 1000 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Benchmarks both sizes on the filesystem holding $1.
bench_in() {
    local work=$1
    local fs
    fs=$(stat -f -c %T "$work")
    echo
    echo "filesystem: $work ($fs), $runs interleaved runs per command, medians"
    printf '%-7s %12s %9s %14s %11s %19s\n' size "copier ms" "cp ms" "cp+fsync ms" copier/cp "copier/(cp+fsync)"
    local mb
    for mb in 15 64; do
        local src=$work/src-$mb/openshell-sandbox out=$work/out-$mb
        mkdir -p "${src%/*}" "$out"
        head -c $((mb * 1000 * 1000)) /dev/urandom >"$src"
        (cd "${src%/*}" && sha256sum openshell-sandbox >SHA256SUMS)
        local copier_t=() cp_t=() cpsync_t=() i
        for ((i = 0; i < runs; i++)); do
            rm -f "$out/openshell-sandbox"
            copier_t+=("$(time_us "$bin" --source "$src" --manifest "${src%/*}/SHA256SUMS" --dest "$out/openshell-sandbox")")
            rm -f "$out/cp"
            cp_t+=("$(time_us cp "$src" "$out/cp")")
            rm -f "$out/cp"
            cpsync_t+=("$(time_us sh -c 'cp "$1" "$2" && sync "$2" "$3"' sh "$src" "$out/cp" "$out")")
        done
        cmp -s "$src" "$out/openshell-sandbox" || { echo "copier output differs from source" >&2; exit 1; }
        local c p s
        c=$(median_ms "${copier_t[@]}")
        p=$(median_ms "${cp_t[@]}")
        s=$(median_ms "${cpsync_t[@]}")
        printf '%-7s %12s %9s %14s %10sx %18sx\n' "$mb MB" "$c" "$p" "$s" "$(ratio "$c" "$p")" "$(ratio "$c" "$s")"
        rm -rf "${src%/*}" "$out"
    done
}

bench_in "$dir"
if $tmpfs; then
    mkdir -p "$dir/tmpfs"
    mount -t tmpfs -o size=512m tmpfs "$dir/tmpfs"
    mounted=$dir/tmpfs
    bench_in "$dir/tmpfs"
fi
echo
echo "goal: copier <= 1.5x cp at 15 MB; binary <= 800 KiB stripped, static"
