#!/usr/bin/env bash
# Benchmark: what credentials cost on an L7 endpoint, against the same L7 endpoint without a
# credential, every figure from one run, interleaved round by round.
#
# nginx serves HTTPS on the test host (bench/lab.sh) on two ports of one address, both
# inspected (protocol: rest, access: full) by the same sandbox:
#   bound     port 443: a credential is bound there. curl sends its placeholder in x-api-key;
#             the proxy puts the value in (each request) and searches every response for the
#             value (headers and body: a body up to 256 KiB whole, a larger one streamed and
#             sent on chunked)
#   unbound   port 8443: no credential. The same curl sends a header of the same length that
#             holds no placeholder; responses pass as they come
# Measures (medians of RUNS rounds):
#   keepalive  WORKERS curl processes, each COUNT GETs of 64 bytes on one kept-alive
#              connection: requests/s (goal: bound >= 0.95 of unbound), and the CPU time of
#              the sandbox (supervisor and curls) per request, which the machine's other
#              load disturbs less than the rate
#   bulk       SIZE_MB MiB download, MB/s (goal: bound >= 0.9 of unbound)
#
# Usage: bench/credentials.sh            (as root)
# Environment: RUNS (5), COUNT (2000), WORKERS (4), SIZE_MB (512),
#              SUPERVISOR=PATH measures that release binary instead of building the tree's.
# Needs: nginx (apt: nginx-light), curl, openssl, iproute2, util-linux (nsenter), python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-5}
count=${COUNT:-2000}
workers=${WORKERS:-4}
size_mb=${SIZE_MB:-512}
# shellcheck source-path=SCRIPTDIR
source "$repo/bench/lab.sh"
bench_help "$@"
bench_needs bench/credentials.sh nginx curl openssl ip nsenter python3 cargo
bench_supervisor
bench_lab credentials-bench
bench_https_nginx "$size_mb" 443 8443
mkdir -p "$dir/out"
chmod 777 "$dir/out"

# The value the supervisor gets; the agent's curl holds the placeholder.
readonly KEY=sk-bench-0123456789abcdef0123456789abcdef
cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
credentials:
  bench:
    variable: API_KEY
    endpoints: [{ host: 203.0.113.2, port: 443 }]
network_policies:
  bench:
    endpoints:
      - { host: 203.0.113.2, port: 443, protocol: rest, access: full }
      - { host: 203.0.113.2, port: 8443, protocol: rest, access: full }
    binaries: [{ path: /usr/bin/curl }, { path: /usr/bin/dash }]
EOF

sandbox=(nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin API_KEY="$KEY"
    OPENSHELL_UPSTREAM_CA_FILE="$dir/ca.pem" "$supervisor"
    --policy "$dir/policy.yaml" --workdir "$dir" --log-format json --)
sandbox() { "${sandbox[@]}" "$@" 2>>"$dir/supervisor.log"; }

# The header each curl sends: the placeholder to the bound port, as many other bytes to the
# other, so that both requests weigh the same.
placeholder=openshell:resolve:env:API_KEY
filler=$(printf '%*s' "${#placeholder}" '' | tr ' ' x)
bench_curl_config "$dir/urls.443" https://203.0.113.2/small "$count"
bench_curl_config "$dir/urls.8443" https://203.0.113.2:8443/small "$count"

keepalive() { # NAME PORT HEADER: WORKERS curls in parallel in one sandbox; requests/s
    local name=$1 port=$2 header=$3 start end
    rm -f "$dir"/out/times.*
    cat >"$dir/workers.sh" <<SH
for w in \$(seq 1 $workers); do
    curl -sS --insecure -H 'x-api-key: $header' -w '%{http_code}\n' -K urls.$port >out/times.\$w &
done
wait
SH
    start=$EPOCHREALTIME
    (cd "$dir" && /usr/bin/time -f '%U %S' -o "$dir/cpu" "${sandbox[@]}" /bin/sh workers.sh \
        2>>"$dir/supervisor.log")
    end=$EPOCHREALTIME
    python3 - "$name" "$start" "$end" "$count" "$workers" "$dir/cpu" "$dir"/out/times.* \
        >>"$results" <<'PY'
import sys
name, start, end, count, workers, cpu, files = *sys.argv[1:7], sys.argv[7:]
codes = [c for f in files for c in open(f).read().split()]
if len(codes) != int(count) * int(workers) or set(codes) != {"200"}:
    sys.exit(f"{name}: {len(codes)} answers, codes {sorted(set(codes))}")
print(f"{name}_per_second {len(codes) / (float(end) - float(start))}")
user, system = open(cpu).read().split()[-2:]
print(f"{name}_cpu_us {(float(user) + float(system)) * 1e6 / len(codes)}")
PY
}

bulk() { # NAME PORT HEADER
    local name=$1 port=$2 header=$3
    bench_bulk "$name" sandbox curl -sS --insecure -H "x-api-key: $header" -o /dev/null \
        -w '%{size_download} %{speed_download}' "https://203.0.113.2:$port/bulk"
}

echo "rounds: $runs ($count requests per keep-alive worker, $workers workers; bulk $size_mb MiB)"
# The two sides alternate which goes first, round by round: a machine whose load drifts
# (other builds on 2 CPUs) then weighs on both alike.
for ((round = 1; round <= runs; round++)); do
    printf 'round %d/%d\r' "$round" "$runs"
    if ((round % 2)); then
        keepalive ka_unbound 8443 "$filler"
        keepalive ka_bound 443 "$placeholder"
        bulk unbound 8443 "$filler"
        bulk bound 443 "$placeholder"
    else
        keepalive ka_bound 443 "$placeholder"
        keepalive ka_unbound 8443 "$filler"
        bulk bound 443 "$placeholder"
        bulk unbound 8443 "$filler"
    fi
done
echo

bench_no_denials
if grep -q "$KEY" "$dir/supervisor.log"; then
    echo "the value is in the supervisor's log" >&2
    exit 1
fi

python3 - "$results" "$runs" "$(nproc)" <<'PY'
import statistics, sys
from collections import defaultdict
path, runs, cpus = sys.argv[1:]
rounds = defaultdict(list)
for line in open(path):
    name, value = line.split()
    rounds[name].append(float(value))
m = {k: statistics.median(v) for k, v in rounds.items()}
# The ratio of each round's pair (measured seconds apart), then their median: steadier than
# the ratio of medians when the machine's load drifts.
ratio = lambda b, u: statistics.median(x / y for x, y in zip(rounds[b], rounds[u]))
spread = lambda b, u: f"{min(x / y for x, y in zip(rounds[b], rounds[u])):.2f}-" \
    f"{max(x / y for x, y in zip(rounds[b], rounds[u])):.2f}"
def row(label, unbound, bound, ratio, goal, ok):
    print(f"{label:<36}{unbound:>12}{bound:>12}  x{ratio:<6.3f} {goal:<26} {'met' if ok else 'MISSED'}")
print(f"credentials on an L7 endpoint vs the same endpoint without: {runs} rounds, medians "
      f"(ratio: median of the rounds' ratios); {cpus} CPUs")
print(f"{'':<36}{'unbound':>12}{'bound':>12}")
ka = ratio("ka_bound_per_second", "ka_unbound_per_second")
row("keep-alive GETs, requests/s", f"{m['ka_unbound_per_second']:.0f}", f"{m['ka_bound_per_second']:.0f}",
    ka, ">= 0.95 of unbound", ka >= 0.95)
bulk = ratio("bulk_bound", "bulk_unbound")
row("bulk download, MB/s", f"{m['bulk_unbound']:.0f}", f"{m['bulk_bound']:.0f}", bulk,
    ">= 0.9 of unbound", bulk >= 0.9)
cpu = ratio("ka_bound_cpu_us", "ka_unbound_cpu_us")
print(f"CPU per keep-alive request (supervisor and the curls), us: unbound "
      f"{m['ka_unbound_cpu_us']:.0f}, bound {m['ka_bound_cpu_us']:.0f} (x{cpu:.3f}; "
      f"rounds {spread('ka_bound_cpu_us', 'ka_unbound_cpu_us')})")
print(f"the rounds' ratios (min-max): requests/s {spread('ka_bound_per_second', 'ka_unbound_per_second')}, "
      f"bulk {spread('bulk_bound', 'bulk_unbound')}")
PY
