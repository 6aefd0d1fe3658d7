#!/usr/bin/env bash
# Benchmark: HTTPS through an L7 (protocol: rest) endpoint against direct HTTPS to the same
# server, every figure from one run, interleaved round by round.
#
# The test host is a network namespace joined by a veth pair to a "pod" namespace (both made
# here, removed on exit); nginx serves HTTPS there (TLS 1.3, a CA made for the run, keep-alive
# without a request limit). The same curl runs on both sides of each comparison:
#   direct    from the pod namespace, no proxy
#   L7        inside the sandbox (release openshell-sandbox), CONNECT through the proxy,
#             which terminates TLS, decides each request (access: read-only) and opens
#             verified TLS upstream
# curl runs with --insecure on both sides: the sandbox's CA reaches the agent through the
# filesystem view, and verification costs the client the same either way.
# Measures (medians of RUNS rounds):
#   keepalive  WORKERS curl processes, each COUNT GETs of 64 bytes on one connection:
#              requests/s (all workers); and one worker alone: p50 per request (curl's
#              time_total), so that the added latency is not the 2 CPUs' run queue
#   newconn    one curl, COUNT/4 GETs each on a new connection (Connection: close): per second
#   bulk       SIZE_MB MiB download, MB/s
#   memory     the supervisor's VmRSS with TUNNELS TLS tunnels held open after one GET each
#   plain L4   the same keepalive figures through a plain (spliced) tunnel, for comparison
#
# Usage: bench/l7.sh            (as root)
# Environment: RUNS (5), COUNT (2000), WORKERS (4), SIZE_MB (512), TUNNELS (1000),
#              SUPERVISOR=PATH measures that release binary instead of building the tree's.
# Needs: nginx (apt: nginx-light), curl, openssl, iproute2, util-linux (nsenter), python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-5}
count=${COUNT:-2000}
workers=${WORKERS:-4}
size_mb=${SIZE_MB:-512}
tunnels=${TUNNELS:-1000}
# shellcheck source-path=SCRIPTDIR
source "$repo/bench/lab.sh"
bench_help "$@"
bench_needs bench/l7.sh nginx curl openssl ip nsenter python3 cargo
bench_supervisor
bench_lab l7-bench

bench_https_nginx "$size_mb" 443 8443
mkdir -p "$dir/out"
chmod 777 "$dir/out"

# Port 443: inspected (read-only). Port 8443: a plain tunnel, the L4 baseline.
cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
network_policies:
  bench:
    endpoints:
      - { host: 203.0.113.2, port: 443, protocol: rest, access: read-only }
      - { host: 203.0.113.2, port: 8443 }
    binaries: [{ path: /usr/bin/curl }, { path: /usr/bin/python3* }, { path: /usr/bin/dash }, { path: /usr/bin/bash }]
EOF

sandbox_command=(nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin
    OPENSHELL_UPSTREAM_CA_FILE="$dir/ca.pem" "$supervisor"
    --policy "$dir/policy.yaml" --workdir "$dir" --log-format json --)
sandbox() { "${sandbox_command[@]}" "$@" 2>>"$dir/supervisor.log"; }

# COUNT URLs in a curl config file: one curl process, one connection (keep-alive).
bench_curl_config "$dir/urls.443" https://203.0.113.2/small "$count"
bench_curl_config "$dir/urls.8443" https://203.0.113.2:8443/small "$count"
curl_many=(curl -sS --insecure -w '%{time_total}\n')

keepalive() { # NAME PORT WORKERS [sandbox]: curls in parallel in one sandbox; requests/s, p50
    local name=$1 port=$2 n=$3 runner=${4:-in_pod} start end
    rm -f "$dir"/out/times.*
    cat >"$dir/workers.sh" <<SH
for w in \$(seq 1 $n); do curl -sS --insecure -w '%{time_total}\n' -K urls.$port >out/times.\$w & done
wait
SH
    start=$EPOCHREALTIME
    (cd "$dir" && $runner /bin/sh workers.sh)
    end=$EPOCHREALTIME
    python3 - "$name" "$start" "$end" "$dir"/out/times.* >>"$results" <<'PY'
import statistics, sys
name, start, end, files = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
times = [float(t) for f in files for t in open(f).read().split()]
print(f"{name}_per_second {len(times) / (end - start)}")
print(f"{name}_p50_us {statistics.median(times) * 1e6}")
PY
}

newconn() { # NAME [sandbox]: one curl, COUNT/4 GETs each on a new connection
    local name=$1 runner=${2:-in_pod} n=$((count / 4)) start end
    head -n "$((2 * n))" "$dir/urls.443" >"$dir/urls.new"
    start=$EPOCHREALTIME
    $runner "${curl_many[@]}" -H 'Connection: close' -K "$dir/urls.new" >/dev/null
    end=$EPOCHREALTIME
    record "${name}_per_second" "$(python3 -c "print($n / ($end - $start))")"
}

bulk() { # NAME [sandbox]
    bench_bulk "$1" "${2:-in_pod}" curl -sS --insecure -o /dev/null \
        -w '%{size_download} %{speed_download}' https://203.0.113.2/bulk
}

cat >"$dir/hold.py" <<'PY'
"""Opens N CONNECT tunnels to 203.0.113.2:443, TLS inside each, one GET each, then holds
them all open until stdin closes."""
import asyncio, ssl, sys

async def one(ctx):
    r, w = await asyncio.open_connection("127.0.0.1", 3128)
    w.write(b"CONNECT 203.0.113.2:443 HTTP/1.1\r\nHost: 203.0.113.2:443\r\n\r\n")
    await r.readuntil(b"\r\n\r\n")
    await w.start_tls(ctx, server_hostname=None)
    w.write(b"GET /small HTTP/1.1\r\nHost: 203.0.113.2\r\n\r\n")
    await r.readuntil(b"\r\n\r\n")
    await r.readexactly(64)
    return w

async def main(n):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    held = []
    for i in range(0, n, 100):
        held += await asyncio.gather(*(one(ctx) for _ in range(min(100, n - i))))
    print("ready", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1])))
PY
chmod 644 "$dir/hold.py"

memory() {
    bench_hold "${sandbox_command[@]}" /usr/bin/python3 hold.py "$tunnels"
    bench_hold_wait ready
    sleep 0.5
    record rss_tls_tunnels "$(status_kib "$hold_pid" VmRSS)"
    bench_hold_end
}

echo "rounds: $runs ($count requests per keep-alive worker, $workers workers; bulk $size_mb MiB; $tunnels tunnels)"
for ((round = 1; round <= runs; round++)); do
    printf 'round %d/%d\r' "$round" "$runs"
    keepalive ka_direct 443 "$workers"
    keepalive ka_l7 443 "$workers" sandbox
    keepalive ka_l4 8443 "$workers" sandbox
    keepalive lat_direct 443 1
    keepalive lat_l7 443 1 sandbox
    keepalive lat_l4 8443 1 sandbox
    newconn new_direct
    newconn new_l7 sandbox
    bulk direct
    bulk l7 sandbox
    memory
done
echo

bench_no_denials

python3 - "$results" "$runs" "$(nproc)" "$(nginx -v 2>&1)" "$(curl --version | head -1)" <<'PY'
import statistics, sys
from collections import defaultdict
path, runs, cpus, nginx, curl = sys.argv[1:]
rounds = defaultdict(list)
for line in open(path):
    name, value = line.split()
    rounds[name].append(float(value))
m = {k: statistics.median(v) for k, v in rounds.items()}
def row(label, direct, l7, unit, goal, ok):
    print(f"{label:<40}{direct:>12}{l7:>12}  {unit:<10} {goal:<28} {'met' if ok else 'MISSED'}")
print(f"L7 (TLS terminated, each request decided) vs direct HTTPS: medians of {runs} rounds; {cpus} CPUs")
print(f"server: {nginx.split(': ')[-1]} TLS 1.3; client: {curl.split(' (')[0]}")
print(f"{'':<40}{'direct':>12}{'L7':>12}")
ka_ratio = m["ka_l7_per_second"] / m["ka_direct_per_second"]
row("keep-alive GETs, requests/s", f"{m['ka_direct_per_second']:.0f}", f"{m['ka_l7_per_second']:.0f}",
    f"x{ka_ratio:.2f}", ">= 0.5 of direct", ka_ratio >= 0.5)
added = m["lat_l7_p50_us"] - m["lat_direct_p50_us"]
row("keep-alive p50 per request (1 worker), us", f"{m['lat_direct_p50_us']:.0f}", f"{m['lat_l7_p50_us']:.0f}",
    f"+{added:.0f} us", "added <= 150 us", added <= 150)
new_ratio = m["new_l7_per_second"] / m["new_direct_per_second"]
row("new TLS connection + GET, per second", f"{m['new_direct_per_second']:.0f}", f"{m['new_l7_per_second']:.0f}",
    f"x{new_ratio:.2f}", ">= 0.45 of direct", new_ratio >= 0.45)
bulk_ratio = m["bulk_l7"] / m["bulk_direct"]
row("bulk download, MB/s", f"{m['bulk_direct']:.0f}", f"{m['bulk_l7']:.0f}", f"x{bulk_ratio:.2f}",
    ">= 0.6 of direct", bulk_ratio >= 0.6)
rss = m["rss_tls_tunnels"] / 1024
row("supervisor RSS, idle TLS tunnels, MiB", "", f"{rss:.1f}", "", "<= 64 MiB", rss <= 64)
l4_ratio = m["ka_l4_per_second"] / m["ka_direct_per_second"]
print(f"plain L4 tunnel, keep-alive requests/s: {m['ka_l4_per_second']:.0f} (x{l4_ratio:.2f} of direct), "
      f"p50 (1 worker) {m['lat_l4_p50_us']:.0f} us")
PY
