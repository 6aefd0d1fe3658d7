#!/usr/bin/env bash
# Soak: the supervisor under a long, mixed, partly hostile load must stay flat and serve every
# well-behaved request.
#
# CLIENTS clients (threads of proxy-load, inside the sandbox, through its proxy) each repeat a
# mix of requests for SECONDS seconds, or until MAX requests were made in all: allowed (CONNECT
# and GET a small file from the test host), denied (CONNECT to a port the policy does not
# allow: 403), slow (the CONNECT head in four pieces over a second), and abandoned (closed
# after connecting, after half a head, after a CONNECT without reading the answer, after
# opening a tunnel; or silent past the header timeout). The test host is a network namespace
# of its own (bench/lab.sh); nothing leaves the machine.
#
# The supervisor's RSS and open file descriptors are sampled every 2 s. After a warm-up (the
# first fifth), the median of the first fifth after it is compared with the median of the last
# fifth: the run fails if either grew by more than 10%, or if any well-behaved request (allowed,
# denied, slow) was not served. Prints counts, p50/p99 latencies, and both series' medians.
#
# Usage: bench/soak.sh            1,000 clients for 5 minutes (as root)
#        bench/soak.sh quick      200 clients for 45 s
# Environment: CLIENTS, SECONDS_TOTAL, MAX (default 5,000,000 requests), KEEP=1 keeps the
#              scratch directory, SUPERVISOR=PATH measures that (release) binary.
# Needs: nginx (apt: nginx-light), iproute2, util-linux (nsenter), python3, cargo.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR
source "$repo/bench/lab.sh"
case ${1:-} in
    quick) clients=${CLIENTS:-200} seconds=${SECONDS_TOTAL:-45} ;;
    "") clients=${CLIENTS:-1000} seconds=${SECONDS_TOTAL:-300} ;;
    *) bench_usage; exit 2 ;;
esac
max=${MAX:-5000000}
bench_needs bench/soak.sh nginx ip nsenter python3 cargo
# Each client holds a socket, and the supervisor two plus two pipes per connection.
if (($(ulimit -n) < clients * 8)); then
    ulimit -n $((clients * 8)) 2>/dev/null \
        || { echo "bench/soak.sh: raise the open-files limit to $((clients * 8))" >&2; exit 2; }
fi
bench_supervisor
bench_lab soak-bench
# The supervisor is stopped too if the run ends early.
trap 'if [[ -n ${supervisor_pid:-} ]]; then kill "$supervisor_pid" 2>/dev/null || true; fi
bench_cleanup' EXIT
bench_load_generator
bench_nginx
cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc]
  read_write: [/dev/null]
network_policies:
  soak:
    endpoints: [{ host: 203.0.113.2, port: 80 }]
    binaries: [{ path: $dir/proxy-load }]
EOF

echo "soak: $clients clients for ${seconds}s (at most $max requests); supervisor $supervisor"
# nsenter and env exec (no shell function, which would fork): $! is the supervisor's pid. Its
# log (denials included, rate-limited) goes to a file, as a pod's would go to the runtime. The
# clients start on a line on their stdin, a FIFO held open here.
mkfifo "$dir/go"
exec {go}<>"$dir/go"
nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin "$supervisor" \
    --policy "$dir/policy.yaml" --workdir "$dir" --log-format json \
    --log-file "$dir/supervisor.log" --timeout $((seconds + 120)) -- \
    ./proxy-load soak 203.0.113.2:80 203.0.113.2:81 "$clients" "$seconds" "$max" 127.0.0.1:3128 \
    <"$dir/go" >"$dir/soak.json" 2>"$dir/agent.err" &
supervisor_pid=$!
sleep 0.5
[[ $(readlink "/proc/$supervisor_pid/exe") == "$supervisor" ]] \
    || { echo "pid $supervisor_pid is not the supervisor" >&2; exit 1; }
# The clients connect to the proxy over the sandbox's loopback, hundreds of new connections a
# second for minutes: as bench/lab.sh does for the pod's namespace, the sandbox's gets the
# whole port range and TIME_WAIT reuse, or the clients run out of ports (EADDRINUSE), which
# would measure the harness, not the supervisor. Its init is the supervisor's child.
init=$(cat /proc/"$supervisor_pid"/task/*/children | awk '{ print $1; exit }')
nsenter --net="/proc/$init/ns/net" sysctl -q -w net.ipv4.tcp_tw_reuse=1 \
    net.ipv4.ip_local_port_range="1024 65535"
echo go >&"$go"

samples=$dir/samples
started=$EPOCHREALTIME
while kill -0 "$supervisor_pid" 2>/dev/null; do
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$supervisor_pid/status" 2>/dev/null || true)
    fds=$(find "/proc/$supervisor_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [[ -n $rss ]] && echo "$(python3 -c "print(round($EPOCHREALTIME - $started, 1))") $rss $fds" >>"$samples"
    sleep 2
done
wait "$supervisor_pid" || { echo "the soak run failed (exit $?):" >&2; cat "$dir/agent.err" >&2; exit 1; }
supervisor_pid=

python3 - "$dir/soak.json" "$samples" "$dir/supervisor.log" "$seconds" <<'EOF'
import json, statistics, sys

result = json.loads(open(sys.argv[1]).read())
samples = [tuple(map(float, line.split())) for line in open(sys.argv[2])]
log = [json.loads(line) for line in open(sys.argv[3])]
seconds = float(sys.argv[4])
# Only the samples taken while the clients ran (the supervisor lingers a little after).
samples = [s for s in samples if s[0] <= result["seconds"]]
warm = seconds / 5
after_warmup = [s for s in samples if warm <= s[0] < 2 * warm]
last = [s for s in samples if s[0] >= result["seconds"] - warm]
if not after_warmup or not last:
    sys.exit("soak: too few samples (run longer)")
def median(rows, column):
    return statistics.median(row[column] for row in rows)
requests, errors = result["requests"], result["errors"]
print(f"{'kind':<10} {'requests':>10} {'errors':>7} {'p50 ms':>9} {'p99 ms':>9}")
for kind in requests:
    p50 = result["p50_ms"].get(kind)
    p99 = result["p99_ms"].get(kind)
    cell = lambda v: f"{v:9.2f}" if v is not None else f"{'-':>9}"
    print(f"{kind:<10} {requests[kind]:>10} {errors[kind]:>7} {cell(p50)} {cell(p99)}")
total = sum(requests.values())
print(f"{total} requests in {result['seconds']:.0f} s ({total / result['seconds']:.0f}/s)")
failed = []
served = sum(errors[k] for k in ("allowed", "denied", "slow"))
if served:
    failed.append(f"{served} well-behaved requests not served (first: {result['first_error']})")
for name, column, unit in (("RSS", 1, "KiB"), ("open fds", 2, "")):
    a, b = median(after_warmup, column), median(last, column)
    growth = (b - a) / a * 100 if a else 0.0
    peak = max(row[column] for row in samples)
    print(f"supervisor {name}: {a:.0f} -> {b:.0f} {unit} ({growth:+.1f}%; peak {peak:.0f})")
    if growth > 10:
        failed.append(f"supervisor {name} grew {growth:.1f}% after warm-up")
denied = sum(1 for line in log if line.get("event") == "denied")
suppressed = sum(line.get("count", 0) for line in log if line.get("event") == "denials_suppressed")
dropped = sum(line.get("denials", 0) for line in log if line.get("event") == "log_lines_dropped")
refused = requests["denied"] - errors["denied"]
accounted = denied + suppressed + dropped
print(f"denials: {denied} logged + {suppressed} summarised + {dropped} dropped = {accounted} "
      f"(the clients were refused {refused} times)")
if errors["denied"] == 0 and accounted != refused:
    failed.append(f"{refused} refusals but {accounted} accounted for in the log")
if failed:
    sys.exit("soak: FAILED: " + "; ".join(failed))
print("soak: passed (flat after warm-up, every well-behaved request served)")
EOF
