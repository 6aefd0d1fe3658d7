#!/usr/bin/env bash
# Benchmark: the egress proxy against a direct connection, every figure from one run against
# the same test host.
#
# The test host is a network namespace joined by a veth pair to a "pod" namespace (both made
# here, removed on exit). nginx serves it (sendfile, no logging, two workers), so the server is
# not what is measured. The same client binaries run on both sides of each comparison:
#   direct    from the pod namespace, no proxy, as root
#   proxied   inside the sandbox (release build of openshell-sandbox, started in the pod
#             namespace), through the proxy at 127.0.0.1:3128: a CONNECT tunnel, or
#             absolute-form http:// (curl without -p)
# Measures, run interleaved round by round (so drift hits all alike), medians of RUNS rounds:
#   bulk      curl downloading SIZE_MB MiB (from page cache) to /dev/null, MB/s
#   latency   proxy-load, 1 worker: connect [+ CONNECT] + GET of a 64-byte file + close,
#             p50/p99 over RATE_COUNT exchanges
#   rate      the same with WORKERS concurrent workers: new connections per second
#             (both also with the supervisor in a PID namespace of its own, "pod pidns", as in
#             a pod: the proxy scans /proc per connection, so the machine's process count
#             weighs on the plain "proxy" figures)
#   memory    the supervisor's VmRSS idle, and VmRSS/VmHWM with TUNNELS idle tunnels open
# The supervisor logs at its default level (info: one line per allowed connection), to a file.
#
# Usage: bench/proxy.sh            (as root)
# Environment: RUNS (default 7), SIZE_MB (512, at least 256), RATE_COUNT (3000), WORKERS (4),
#              TUNNELS (1000), KEEP=1 keeps the scratch directory (logs) for inspection,
#              SUPERVISOR=PATH measures that (release) binary instead of building the tree's.
# Needs: nginx (apt: nginx-light), curl, iproute2, util-linux (nsenter), python3, cargo.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-7}
size_mb=${SIZE_MB:-512}
rate_count=${RATE_COUNT:-3000}
workers=${WORKERS:-4}
tunnels=${TUNNELS:-1000}
# shellcheck source-path=SCRIPTDIR
source "$repo/bench/lab.sh"
bench_help "$@"
((size_mb >= 256)) || { echo "SIZE_MB must be at least 256" >&2; exit 2; }
bench_needs bench/proxy.sh nginx curl ip nsenter python3 cargo
bench_supervisor
bench_lab proxy-bench
bench_load_generator
bench_nginx
bench_bulk_file "$size_mb"
cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
network_policies:
  bench:
    endpoints: [{ host: 203.0.113.2, port: 80 }]
    binaries: [{ path: /usr/bin/curl }, { path: $dir/proxy-load }]
EOF

# nsenter and env exec, so a background start's $! is the supervisor's pid.
sandbox_command=(nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin "$supervisor"
    --policy "$dir/policy.yaml" --workdir "$dir" --log-format json --)
sandbox() { "${sandbox_command[@]}" "$@" 2>>"$dir/supervisor.log"; }
# As in a pod, whose /proc lists only the pod's own processes: the proxy scans /proc for the
# process holding each client socket, so what it sees there is part of its per-connection cost.
sandbox_pidns() {
    nsenter --net="/run/netns/$pod" unshare --pid --fork --mount-proc \
        "${sandbox_command[@]:2}" "$@" 2>>"$dir/supervisor.log"
}

url=http://203.0.113.2
curl_bulk=(curl -sS -o /dev/null -w '%{size_download} %{speed_download}\n')

memory() {
    bench_hold "${sandbox_command[@]}" ./proxy-load hold 203.0.113.2:80 "$tunnels" 127.0.0.1:3128
    bench_hold_wait idle
    [[ $(readlink "/proc/$hold_pid/exe") == "$supervisor" ]] \
        || { echo "pid $hold_pid is not the supervisor" >&2; exit 1; }
    sleep 0.5
    record rss_idle "$(status_kib "$hold_pid" VmRSS)"
    local started=$EPOCHREALTIME
    bench_hold_wait ready
    record tunnels_open_seconds "$(python3 -c "print(${EPOCHREALTIME} - $started)")"
    record rss_tunnels "$(status_kib "$hold_pid" VmRSS)"
    record hwm_tunnels "$(status_kib "$hold_pid" VmHWM)"
    bench_hold_end
}

echo "rounds: $runs (bulk $size_mb MiB; $rate_count exchanges per latency/rate run; $workers workers; $tunnels tunnels)"
for ((round = 1; round <= runs; round++)); do
    printf 'round %d/%d\r' "$round" "$runs"
    bench_bulk direct in_pod "${curl_bulk[@]}" "$url/bulk"
    bench_bulk connect sandbox "${curl_bulk[@]}" -p "$url/bulk"
    bench_bulk forward sandbox "${curl_bulk[@]}" "$url/bulk"
    bench_load lat_direct in_pod "$dir/proxy-load" rate 203.0.113.2:80 /small 1 "$rate_count"
    bench_load lat_proxy sandbox ./proxy-load rate 203.0.113.2:80 /small 1 "$rate_count" 127.0.0.1:3128
    bench_load lat_pidns sandbox_pidns ./proxy-load rate 203.0.113.2:80 /small 1 "$rate_count" 127.0.0.1:3128
    bench_load rate_direct in_pod "$dir/proxy-load" rate 203.0.113.2:80 /small "$workers" "$rate_count"
    bench_load rate_proxy sandbox ./proxy-load rate 203.0.113.2:80 /small "$workers" "$rate_count" 127.0.0.1:3128
    bench_load rate_pidns sandbox_pidns ./proxy-load rate 203.0.113.2:80 /small "$workers" "$rate_count" 127.0.0.1:3128
    memory
done
echo

bench_no_denials

python3 "$repo/bench/proxy-report.py" "$results" "$runs" "$size_mb" "$workers" "$tunnels" \
    "$(nginx -v 2>&1)" "$(curl --version | head -1)" "$(nproc)" "$(ps -e --no-headers | wc -l)"
