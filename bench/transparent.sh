#!/usr/bin/env bash
# Benchmark: transparent egress (issue 10) against direct connections from the pod, with the
# CONNECT path measured alongside, every figure from one run against the same test host.
#
# The test host is a network namespace joined by a veth pair to a "pod" namespace (both made
# here, removed on exit): nginx serves it (sendfile, no logging), dnsmasq answers its names on
# 203.0.113.53, the pod's nameserver (a private mount namespace gives both sides the same
# /etc/resolv.conf): bench.test -> 203.0.113.2 with a TTL of 5 s (CoreDNS's default for a
# cluster's own names; names outside usually carry 30-300 s), and fresh.test, the same address
# with a TTL of 0, which no resolver may keep: each of its lookups is asked upstream. The same
# client binaries run on both sides of each comparison:
#   direct       from the pod namespace, as root
#   transparent  inside the sandbox (release build, started in the pod namespace), with no
#                proxy: the connect() is intercepted and the real connection handed over
#   relayed      inside the sandbox with OPENSHELL_TRANSPARENT_EGRESS=relay (what a kernel without
#                the TCP fence gets): the connection relayed by the supervisor (for the record)
#   connect      inside the sandbox through the proxy's CONNECT tunnel (for the record)
#   baseline     with BASELINE=PATH (another supervisor binary, e.g. main's), its transparent
#                and CONNECT figures in the same rounds, for before/after comparisons
# Measures, interleaved round by round (every other round in reverse order), medians of RUNS
# rounds:
#   bulk   curl downloading SIZE_MB MiB by name (bench.test), MB/s      goal transparent >= 0.97 direct
#   rate   proxy-load: connect + GET of 64 bytes + close, WORKERS threads, new connections/s
#                                                                       goal transparent >= 0.5 direct
#   dns    proxy-load resolve: getaddrinfo(bench.test) (A + AAAA), WORKERS threads, lookups/s
#          through the policy resolver vs straight to dnsmasq           goal >= 0.5
#   fresh  the same for fresh.test (TTL 0: the policy resolver forwards every A question, and
#          keeps the empty AAAA answer for 5 s, as it keeps every negative one)
#
# Usage: bench/transparent.sh            (as root; wrap in flock /tmp/openshell-bench.lock)
# Environment: RUNS (5), SIZE_MB (2048), RATE_COUNT (10000), DNS_COUNT (20000), WORKERS (4),
#              BASELINE=PATH (a release openshell-sandbox to compare the CONNECT path with),
#              SUPERVISOR=PATH measures that release binary instead of building the tree's,
#              KEEP=1 keeps the scratch directory, SKIP_BULK=1 measures rates only.
# Needs: nginx (nginx-light), dnsmasq (dnsmasq-base), curl, iproute2, util-linux, python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-5}
size_mb=${SIZE_MB:-2048}
rate_count=${RATE_COUNT:-10000}
dns_count=${DNS_COUNT:-20000}
workers=${WORKERS:-4}
# shellcheck source-path=SCRIPTDIR
source "$repo/bench/lab.sh"
bench_help "$@"
bench_needs bench/transparent.sh nginx dnsmasq curl ip nsenter unshare python3 cargo

# Everything below runs in a private mount namespace whose /etc/resolv.conf names the test
# host's dnsmasq: the pod's resolver, for direct lookups and for the supervisor alike.
if [[ -z ${TRANSPARENT_BENCH_INNER:-} ]]; then
    exec unshare --mount --propagation private env TRANSPARENT_BENCH_INNER=1 "$0" "$@"
fi

bench_supervisor
bench_lab transparent-bench
printf 'nameserver 203.0.113.53\n' >"$dir/resolv.conf"
printf '127.0.0.1 localhost\n' >"$dir/hosts"
mount --bind "$dir/resolv.conf" /etc/resolv.conf
mount --bind "$dir/hosts" /etc/hosts
bench_load_generator
bench_nginx
bench_bulk_file "$size_mb"
ip -n "$host" addr add 203.0.113.53/32 dev veth0
# --local: the names are its own, so a AAAA question gets an empty answer (NOERROR), as from a
# cluster's resolver, not REFUSED (dnsmasq's answer for what it would have to ask elsewhere).
in_host dnsmasq --no-resolv --no-hosts --local=/test/ --host-record=bench.test,203.0.113.2,5 \
    --host-record=fresh.test,203.0.113.2,0 --listen-address=203.0.113.53 \
    --bind-interfaces --port=53 --cache-size=10000 --user=root --pid-file="$dir/dnsmasq.pid" \
    --log-facility=/dev/null

cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
network_policies:
  bench:
    endpoints: [{ host: bench.test, port: 80 }, { host: fresh.test, port: 80 }, { host: 203.0.113.2, port: 80 }]
    binaries: [{ path: /usr/bin/curl }, { path: $dir/proxy-load }]
EOF

# nsenter and env exec: the supervisor (BINARY) runs the command in the pod namespace, with
# the supervisor's variables in SANDBOX_ENV (NAME=VALUE words).
sandbox_with() { # BINARY, then the command
    local binary=$1
    shift
    # shellcheck disable=SC2086 # SANDBOX_ENV is a list of words
    nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin ${SANDBOX_ENV:-} "$binary" \
        --policy "$dir/policy.yaml" --workdir "$dir" --log-format json -- "$@" 2>>"$dir/supervisor.log"
}
relayed=OPENSHELL_TRANSPARENT_EGRESS=relay

curl_bulk=(curl -sS -o /dev/null -w '%{size_download} %{speed_download}\n')
bulk() { [[ ${SKIP_BULK:-} == 1 ]] || bench_bulk "$@"; }

url=http://bench.test
rate=(rate 203.0.113.2:80 /small "$workers" "$rate_count")
resolve=(resolve bench.test "$workers" "$dns_count")
fresh=(resolve fresh.test "$workers" "$dns_count")
step() { # one measurement, by name; NAME_baseline is NAME with the BASELINE binary
    local name=${1%_baseline} binary=$supervisor
    [[ $1 == *_baseline ]] && binary=$BASELINE
    local sandbox=(sandbox_with "$binary") tag=${1#*_}
    case $name in
    bulk_direct) bulk "$tag" in_pod "${curl_bulk[@]}" "$url/bulk" ;;
    bulk_transparent) bulk "$tag" "${sandbox[@]}" "${curl_bulk[@]}" --noproxy '*' "$url/bulk" ;;
    bulk_relayed) SANDBOX_ENV=$relayed bulk "$tag" "${sandbox[@]}" "${curl_bulk[@]}" --noproxy '*' "$url/bulk" ;;
    bulk_connect) bulk "$tag" "${sandbox[@]}" "${curl_bulk[@]}" -p "$url/bulk" ;;
    rate_direct) bench_load "$1" in_pod "$dir/proxy-load" "${rate[@]}" ;;
    rate_transparent) bench_load "$1" "${sandbox[@]}" ./proxy-load "${rate[@]}" ;;
    rate_relayed) SANDBOX_ENV=$relayed bench_load "$1" "${sandbox[@]}" ./proxy-load "${rate[@]}" ;;
    rate_connect) bench_load "$1" "${sandbox[@]}" ./proxy-load "${rate[@]}" 127.0.0.1:3128 ;;
    dns_direct) bench_load "$1" in_pod "$dir/proxy-load" "${resolve[@]}" ;;
    dns_policy) bench_load "$1" "${sandbox[@]}" ./proxy-load "${resolve[@]}" ;;
    fresh_direct) bench_load "$1" in_pod "$dir/proxy-load" "${fresh[@]}" ;;
    fresh_policy) bench_load "$1" "${sandbox[@]}" ./proxy-load "${fresh[@]}" ;;
    esac
}
# Each measurement lasts about a second (2 GiB at ~3 GB/s; 10,000 connections; 20,000 lookups):
# with 512 MiB and 3,000 connections (0.1-0.2 s each), the same socket measured 0.86-1.04 of
# itself from run to run.
# Compared figures are measured next to each other, and every other round in reverse order:
# a run measured second was seen to be 5-10% slower or faster than the same run measured first.
# With BASELINE, each sandboxed figure is also taken with that binary, right after this one's.
steps=()
for name in bulk_direct bulk_transparent bulk_relayed bulk_connect rate_direct rate_transparent rate_relayed rate_connect dns_direct dns_policy fresh_direct fresh_policy; do
    steps+=("$name")
    if [[ -n ${BASELINE:-} && $name != *_direct && $name != *_relayed ]]; then steps+=("${name}_baseline"); fi
done
echo "rounds: $runs (bulk $size_mb MiB; $rate_count connections and $dns_count lookups per run; $workers workers)"
for ((round = 1; round <= runs; round++)); do
    printf 'round %d/%d\r' "$round" "$runs"
    order=("${steps[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#steps[@]} - 1; i >= 0; i--)); do order+=("${steps[i]}"); done
    fi
    for name in "${order[@]}"; do step "$name"; done
done
echo

bench_no_denials

python3 - "$results" <<'EOF'
import statistics, sys
values = {}
for line in open(sys.argv[1]):
    name, value = line.split()
    values.setdefault(name, []).append(float(value))
m = {name: statistics.median(v) for name, v in values.items()}
def row(label, name, unit):
    if name not in m:
        return
    print(f"  {label:<34} {m[name]:>12.1f} {unit}")
def ratio(label, a, b, goal=None):
    if a not in m or b not in m:
        return
    r = m[a] / m[b]
    verdict = "" if goal is None else ("  (goal >= %.2f: %s)" % (goal, "met" if r >= goal else "MISSED"))
    print(f"  {label:<34} {r:>12.2f}{verdict}")
def baseline(name):
    # The BASELINE binary's figure of the same step (bench_load appends _per_second).
    return name.replace("_per_second", "") + "_baseline" + ("_per_second" if name.endswith("_per_second") else "")
rows = [
    ("bulk direct", "bulk_direct", "MB/s"),
    ("bulk transparent", "bulk_transparent", "MB/s"),
    ("bulk relayed", "bulk_relayed", "MB/s"),
    ("bulk CONNECT", "bulk_connect", "MB/s"),
    ("new connections direct", "rate_direct_per_second", "/s"),
    ("new connections transparent", "rate_transparent_per_second", "/s"),
    ("new connections relayed", "rate_relayed_per_second", "/s"),
    ("new connections CONNECT", "rate_connect_per_second", "/s"),
    ("lookups direct (dnsmasq)", "dns_direct_per_second", "/s"),
    ("lookups policy resolver", "dns_policy_per_second", "/s"),
    ("lookups TTL 0 direct (dnsmasq)", "fresh_direct_per_second", "/s"),
    ("lookups TTL 0 policy resolver", "fresh_policy_per_second", "/s"),
]
print("medians:")
for label, name, unit in rows:
    row(label, name, unit)
print("ratios:")
ratio("bulk transparent / direct", "bulk_transparent", "bulk_direct", 0.97)
ratio("connections transparent / direct", "rate_transparent_per_second", "rate_direct_per_second", 0.5)
ratio("lookups policy / direct", "dns_policy_per_second", "dns_direct_per_second", 0.5)
ratio("lookups TTL 0 policy / direct", "fresh_policy_per_second", "fresh_direct_per_second")
ratio("bulk relayed / direct", "bulk_relayed", "bulk_direct")
ratio("connections relayed / direct", "rate_relayed_per_second", "rate_direct_per_second")
ratio("bulk CONNECT / direct", "bulk_connect", "bulk_direct")
ratio("connections CONNECT / direct", "rate_connect_per_second", "rate_direct_per_second")
if baseline("rate_connect_per_second") in m:
    print("against the baseline binary (same rounds):")
    for label, name, unit in rows:
        if name in ("bulk_transparent", "rate_transparent_per_second", "dns_policy_per_second", "fresh_policy_per_second"):
            row(f"{label}, baseline", baseline(name), unit)
    for label, name, goal in [
        ("transparent bulk", "bulk_transparent", None),
        ("transparent connections", "rate_transparent_per_second", None),
        ("lookups", "dns_policy_per_second", None),
        ("lookups TTL 0", "fresh_policy_per_second", None),
        ("CONNECT connections", "rate_connect_per_second", 0.9),
        ("CONNECT bulk", "bulk_connect", 0.9),
    ]:
        ratio(f"{label}: this / baseline", name, baseline(name), goal)
EOF
