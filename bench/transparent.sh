#!/usr/bin/env bash
# Benchmark: transparent egress (issue 10) against direct connections from the pod, with the
# CONNECT path measured alongside, every figure from one run against the same test host.
#
# The test host is a network namespace joined by a veth pair to a "pod" namespace (both made
# here, removed on exit): nginx serves it (sendfile, no logging), dnsmasq answers its names
# (bench.test -> 203.0.113.2) on 203.0.113.53, the pod's nameserver (a private mount
# namespace gives both sides the same /etc/resolv.conf). The same client binaries run on
# both sides of each comparison:
#   direct       from the pod namespace, as root
#   transparent  inside the sandbox (release build, started in the pod namespace), with no
#                proxy: the connect() is intercepted and the real connection handed over
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
#
# Usage: bench/transparent.sh            (as root; wrap in flock /tmp/openshell-bench.lock)
# Environment: RUNS (5), SIZE_MB (512), RATE_COUNT (3000), DNS_COUNT (5000), WORKERS (4),
#              BASELINE=PATH (a release openshell-sandbox to compare the CONNECT path with),
#              KEEP=1 keeps the scratch directory, SKIP_BULK=1 measures rates only.
# Needs: nginx (nginx-light), dnsmasq (dnsmasq-base), curl, iproute2, util-linux, python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-5}
size_mb=${SIZE_MB:-512}
rate_count=${RATE_COUNT:-3000}
dns_count=${DNS_COUNT:-5000}
workers=${WORKERS:-4}
case ${1:-} in
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac
((EUID == 0)) || { echo "bench/transparent.sh: run as root (namespaces, nginx)" >&2; exit 2; }
for tool in nginx dnsmasq curl ip nsenter unshare python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench/transparent.sh: $tool not found" >&2; exit 2; }
done

# Everything below runs in a private mount namespace whose /etc/resolv.conf names the test
# host's dnsmasq: the pod's resolver, for direct lookups and for the supervisor alike.
if [[ -z ${TRANSPARENT_BENCH_INNER:-} ]]; then
    exec unshare --mount --propagation private env TRANSPARENT_BENCH_INNER=1 "$0" "$@"
fi

echo "building: cargo build --release -p openshell-sandbox, bench/proxy-load"
(cd "$repo" && cargo build --quiet --release -p openshell-sandbox)
supervisor=$repo/target/release/openshell-sandbox
cargo build --quiet --release --manifest-path "$repo/bench/proxy-load/Cargo.toml" \
    --target-dir "$repo/target"

id=tbench-$$
pod=$id-pod
host=$id-host
dir=$(mktemp -d /tmp/transparent-bench.XXXXXX)
chmod 755 "$dir"
cleanup() {
    for pidfile in "$dir/nginx.pid" "$dir/dnsmasq.pid"; do
        if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    ip netns delete "$pod" 2>/dev/null || true
    ip netns delete "$host" 2>/dev/null || true
    if [[ ${KEEP:-} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

printf 'nameserver 203.0.113.53\n' >"$dir/resolv.conf"
printf '127.0.0.1 localhost\n' >"$dir/hosts"
mount --bind "$dir/resolv.conf" /etc/resolv.conf
mount --bind "$dir/hosts" /etc/hosts

in_pod() { nsenter --net="/run/netns/$pod" "$@"; }
in_host() { nsenter --net="/run/netns/$host" "$@"; }

ip netns add "$pod"
ip netns add "$host"
ip link add veth0 netns "$pod" type veth peer name veth0 netns "$host"
ip -n "$pod" -batch - <<EOF
link set lo up
link set veth0 up
addr add 203.0.113.1/24 dev veth0
EOF
ip -n "$host" -batch - <<EOF
link set lo up
link set veth0 up
addr add 203.0.113.2/24 dev veth0
addr add 203.0.113.53/32 dev veth0
EOF
in_pod sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
in_host sysctl -q -w net.core.somaxconn=4096

mkdir -p "$dir/www" "$dir/nginx"
head -c $((size_mb * 1024 * 1024)) /dev/urandom >"$dir/www/bulk"
head -c 64 /dev/zero | tr '\0' x >"$dir/www/small"
chmod -R a+rX "$dir/www"
cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    server {
        listen 203.0.113.2:80 backlog=4096;
        root $dir/www;
    }
}
EOF
in_host nginx -c "$dir/nginx.conf"
printf '203.0.113.2 bench.test\n' >"$dir/dns-hosts"
in_host dnsmasq --no-resolv --no-hosts --addn-hosts="$dir/dns-hosts" --listen-address=203.0.113.53 \
    --bind-interfaces --port=53 --cache-size=10000 --user=root --pid-file="$dir/dnsmasq.pid" \
    --log-facility=/dev/null

cp "$repo/target/release/proxy-load" "$dir/proxy-load"
chmod 755 "$dir/proxy-load"
cat >"$dir/policy.yaml" <<EOF
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
network_policies:
  bench:
    endpoints: [{ host: bench.test, port: 80 }, { host: 203.0.113.2, port: 80 }]
    binaries: [{ path: /usr/bin/curl }, { path: $dir/proxy-load }]
EOF

sandbox_with() { # SUPERVISOR, then the command
    local binary=$1
    shift
    nsenter --net="/run/netns/$pod" env -i PATH=/usr/bin:/bin "$binary" --policy "$dir/policy.yaml" \
        --workdir "$dir" --log-format json -- "$@" 2>>"$dir/supervisor.log"
}
sandbox() { sandbox_with "$supervisor" "$@"; }

results=$dir/results
record() { echo "$1 $2" >>"$results"; }
curl_bulk=(curl -sS -o /dev/null -w '%{size_download} %{speed_download}\n')
bulk() { # NAME, then the command
    local name=$1 out size speed
    shift
    [[ ${SKIP_BULK:-} == 1 ]] && return
    out=$("$@")
    read -r size speed <<<"$out"
    ((size == size_mb * 1024 * 1024)) || { echo "$name: downloaded $size bytes" >&2; exit 1; }
    record "bulk_$name" "$(python3 -c "print($speed / 1e6)")"
}
load() { # NAME, then the command printing proxy-load's JSON
    local name=$1 out
    shift
    out=$("$@")
    python3 - "$name" "$out" >>"$results" <<'EOF'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
if r["errors"]:
    sys.exit(f"{name}: {r['errors']} failed operations")
print(f"{name} {r['per_second']}")
EOF
}

url=http://bench.test
rate=(rate 203.0.113.2:80 /small "$workers" "$rate_count")
resolve=(resolve bench.test "$workers" "$dns_count")
step() { # one measurement, by name
    case $1 in
    bulk_direct) bulk direct in_pod "${curl_bulk[@]}" "$url/bulk" ;;
    bulk_transparent) bulk transparent sandbox "${curl_bulk[@]}" --noproxy '*' "$url/bulk" ;;
    bulk_connect) bulk connect sandbox "${curl_bulk[@]}" -p "$url/bulk" ;;
    rate_direct) load rate_direct in_pod "$dir/proxy-load" "${rate[@]}" ;;
    rate_transparent) load rate_transparent sandbox ./proxy-load "${rate[@]}" ;;
    rate_connect) load rate_connect sandbox ./proxy-load "${rate[@]}" 127.0.0.1:3128 ;;
    dns_direct) load dns_direct in_pod "$dir/proxy-load" "${resolve[@]}" ;;
    dns_policy) load dns_policy sandbox ./proxy-load "${resolve[@]}" ;;
    bulk_transparent_baseline)
        bulk transparent_baseline sandbox_with "$BASELINE" "${curl_bulk[@]}" --noproxy '*' "$url/bulk" ;;
    bulk_connect_baseline) bulk connect_baseline sandbox_with "$BASELINE" "${curl_bulk[@]}" -p "$url/bulk" ;;
    rate_transparent_baseline) load rate_transparent_baseline sandbox_with "$BASELINE" ./proxy-load "${rate[@]}" ;;
    rate_connect_baseline)
        load rate_connect_baseline sandbox_with "$BASELINE" ./proxy-load "${rate[@]}" 127.0.0.1:3128 ;;
    dns_policy_baseline) load dns_policy_baseline sandbox_with "$BASELINE" ./proxy-load "${resolve[@]}" ;;
    esac
}
# Compared figures are measured next to each other, and every other round in reverse order:
# a run measured second was seen to be 5-10% slower or faster than the same run measured first.
steps=(bulk_direct bulk_transparent bulk_connect rate_direct rate_transparent rate_connect dns_direct dns_policy)
if [[ -n ${BASELINE:-} ]]; then
    steps=(bulk_direct bulk_transparent bulk_transparent_baseline bulk_connect bulk_connect_baseline
        rate_direct rate_transparent rate_transparent_baseline rate_connect rate_connect_baseline
        dns_direct dns_policy dns_policy_baseline)
fi
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

denials=$(grep -c '"event":"denied"' "$dir/supervisor.log" || true)
((denials == 0)) || { echo "the supervisor denied something during the benchmark:" >&2; grep '"denied"' "$dir/supervisor.log" | head >&2; exit 1; }

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
print("medians:")
row("bulk direct", "bulk_direct", "MB/s")
row("bulk transparent", "bulk_transparent", "MB/s")
row("bulk CONNECT", "bulk_connect", "MB/s")
row("new connections direct", "rate_direct", "/s")
row("new connections transparent", "rate_transparent", "/s")
row("new connections CONNECT", "rate_connect", "/s")
row("lookups direct (dnsmasq)", "dns_direct", "/s")
row("lookups policy resolver", "dns_policy", "/s")
print("ratios:")
ratio("bulk transparent / direct", "bulk_transparent", "bulk_direct", 0.97)
ratio("connections transparent / direct", "rate_transparent", "rate_direct", 0.5)
ratio("lookups policy / direct", "dns_policy", "dns_direct", 0.5)
ratio("bulk CONNECT / direct", "bulk_connect", "bulk_direct")
ratio("connections CONNECT / direct", "rate_connect", "rate_direct")
if "rate_connect_baseline" in m:
    print("against the baseline binary (same rounds):")
    row("bulk transparent, baseline", "bulk_transparent_baseline", "MB/s")
    row("new connections transparent, baseline", "rate_transparent_baseline", "/s")
    row("lookups policy resolver, baseline", "dns_policy_baseline", "/s")
    ratio("transparent bulk: this / baseline", "bulk_transparent", "bulk_transparent_baseline")
    ratio("transparent connections: this / baseline", "rate_transparent", "rate_transparent_baseline")
    ratio("lookups: this / baseline", "dns_policy", "dns_policy_baseline")
    ratio("CONNECT connections: this / baseline", "rate_connect", "rate_connect_baseline", 0.9)
    ratio("CONNECT bulk: this / baseline", "bulk_connect", "bulk_connect_baseline", 0.9)
EOF
