# shellcheck shell=bash disable=SC2154  # $repo and $size_mb are the sourcing script's
# Sourced by the proxy benchmarks (after they set $repo): the test host and the pod as two
# network namespaces joined by a veth pair (pod 203.0.113.1, test host 203.0.113.2), a scratch
# directory, and their removal on exit (with the servers the script starts there, whose pid
# files are $dir/*.pid); and the bookkeeping of the figures each round records.
#
#   bench_usage               prints the calling script's header (its --help)
#   bench_help ARG...         with -h or --help first, prints the header and exits
#   bench_needs NAME TOOL...  exits with a message unless root and every TOOL is on PATH
#   bench_supervisor          sets $supervisor: $SUPERVISOR, or the tree's release build
#   bench_lab NAME            sets $pod, $host, $dir and $results; defines in_pod and in_host
#   bench_nginx               serves $dir/www (with `small`, 64 bytes) on the test host's port 80
#   bench_https_nginx MB PORT...  a CA ($dir/ca.pem) and nginx serving `small` and `bulk` (MB MiB)
#                             over TLS 1.3 on each PORT of the test host, keep-alive unlimited
#   bench_bulk_file MB        writes $dir/www/bulk: MB MiB of random bytes
#   bench_load_generator      builds proxy-load and puts it at $dir/proxy-load, for the sandbox
#   bench_curl_config FILE URL COUNT  a curl config (curl -K FILE) fetching URL COUNT times to
#                             /dev/null: one curl process, one kept-alive connection
#   record NAME VALUE         appends one round's figure to $results
#   bench_bulk NAME CMD...    runs CMD, a curl -w '%{size_download} %{speed_download}', checks
#                             that it downloaded all $size_mb MiB and records bulk_NAME in MB/s
#   bench_load NAME CMD...    runs CMD, a proxy-load measurement printing JSON; fails on any
#                             error, records NAME_per_second, NAME_p50 and NAME_p99 (ms)
#   bench_hold CMD...         starts CMD (a sandbox command line: nsenter and env exec, so
#                             $hold_pid is the supervisor's) in the background, its stdin a
#                             FIFO held open here and its output in $hold_out
#   bench_hold_wait WORD      waits until the held run prints a line starting with WORD
#   bench_hold_end            closes the held run's stdin and waits for it to succeed
#   status_kib PID FIELD      a field of /proc/PID/status (VmRSS, VmHWM) in KiB
#   bench_no_denials          exits unless the supervisor's log ($dir/supervisor.log) is free
#                             of denials: a refused request would measure the refusal
# KEEP=1 keeps the scratch directory (logs) for inspection.

bench_usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
bench_help() { case ${1:-} in -h | --help) bench_usage; exit 0 ;; esac; }

bench_needs() {
    local name=$1 tool
    shift
    ((EUID == 0)) || { echo "$name: run as root (namespaces, nginx)" >&2; exit 2; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: $tool not found" >&2; exit 2; }
    done
}

bench_supervisor() {
    if [[ -n ${SUPERVISOR:-} ]]; then
        supervisor=$(realpath "$SUPERVISOR")
        echo "supervisor: $supervisor (SUPERVISOR, not rebuilt)"
    else
        echo "building: cargo build --release -p openshell-sandbox"
        (cd "$repo" && cargo build --quiet --release -p openshell-sandbox)
        supervisor=$repo/target/release/openshell-sandbox
    fi
}

bench_lab() {
    local id=$1-$$
    pod=$id-pod
    host=$id-host
    dir=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$dir"
    results=$dir/results
    trap bench_cleanup EXIT
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
EOF
    # Tens of thousands of short connections per run: reuse TIME_WAIT ports rather than run out.
    in_pod sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
    in_host sysctl -q -w net.core.somaxconn=4096
}

# nginx with sendfile, no logging and two workers: the server is not what is measured.
bench_nginx() {
    mkdir -p "$dir/www"
    head -c 64 /dev/zero | tr '\0' x >"$dir/www/small"
    chmod -R a+rX "$dir/www"
    bench_nginx_serve "    tcp_nopush on;" "        listen 203.0.113.2:80 backlog=4096;"
}

bench_https_nginx() {
    local size_mb=$1 port listen=""
    shift
    # The test host's own CA and certificate (for its IP: the proxy dials what it was asked).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=bench-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=203.0.113.2 \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:203.0.113.2\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
    bench_bulk_file "$size_mb"
    head -c 64 /dev/zero | tr '\0' x >"$dir/www/small"
    chmod -R a+rX "$dir/www"
    for port in "$@"; do
        listen+="        listen 203.0.113.2:$port ssl backlog=4096;"$'\n'
    done
    bench_nginx_serve "    keepalive_requests 1000000;
    keepalive_timeout 300s;
    ssl_session_cache shared:SSL:10m;" "$listen        ssl_certificate $dir/server.pem;
        ssl_certificate_key $dir/server.key;
        ssl_protocols TLSv1.3;"
}

# Writes $dir/nginx.conf with HTTP settings HTTP and the server's lines SERVER, and starts it.
bench_nginx_serve() {
    mkdir -p "$dir/nginx"
    cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
$1
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    server {
$2
        root $dir/www;
    }
}
EOF
    in_host nginx -c "$dir/nginx.conf"
}

bench_bulk_file() {
    mkdir -p "$dir/www"
    head -c $(($1 * 1024 * 1024)) /dev/urandom >"$dir/www/bulk"
    chmod a+r "$dir/www/bulk"
}

bench_load_generator() {
    cargo build --quiet --release --manifest-path "$repo/bench/proxy-load/Cargo.toml" \
        --target-dir "$repo/target"
    install -m 755 "$repo/target/release/proxy-load" "$dir/proxy-load"
}

bench_curl_config() {
    local file=$1 url=$2 count=$3 i
    for ((i = 0; i < count; i++)); do
        printf 'url = "%s"\noutput = "/dev/null"\n' "$url"
    done >"$file"
}

record() { echo "$1 $2" >>"$results"; }

bench_bulk() {
    local name=$1 out size speed
    shift
    out=$("$@")
    read -r size speed <<<"$out"
    ((size == size_mb * 1024 * 1024)) || { echo "$name: downloaded $size bytes" >&2; exit 1; }
    record "bulk_$name" "$(python3 -c "print($speed / 1e6)")"
}

bench_load() {
    local name=$1 out
    shift
    out=$("$@")
    python3 - "$name" "$out" >>"$results" <<'EOF'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
if r["errors"]:
    sys.exit(f"{name}: {r['errors']} failed operations")
print(f"{name}_per_second {r['per_second']}")
print(f"{name}_p50 {r['p50_ms']}")
print(f"{name}_p99 {r['p99_ms']}")
EOF
}

bench_hold() {
    local fifo=$dir/hold.in
    hold_out=$dir/hold.out
    rm -f "$fifo" "$hold_out"
    mkfifo "$fifo"
    # Opened read-write so that neither side blocks; closing it ends the hold.
    exec {hold_fd}<>"$fifo"
    "$@" <"$fifo" >"$hold_out" 2>>"$dir/supervisor.log" {hold_fd}>&- &
    hold_pid=$!
}

bench_hold_wait() {
    local waited=0
    until grep -q "^$1" "$hold_out" 2>/dev/null; do
        sleep 0.05
        waited=$((waited + 1))
        ((waited < 2400)) || { echo "the held run never printed $1: $(cat "$hold_out")" >&2; exit 1; }
    done
}

bench_hold_end() {
    exec {hold_fd}>&-
    wait "$hold_pid" || { echo "the held run failed: $(cat "$hold_out")" >&2; exit 1; }
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

bench_no_denials() {
    local denials
    denials=$(grep -c '"event":"denied"' "$dir/supervisor.log" || true)
    ((denials == 0)) || {
        echo "the supervisor denied something during the benchmark:" >&2
        grep '"denied"' "$dir/supervisor.log" | head >&2
        exit 1
    }
}

in_pod() { nsenter --net="/run/netns/$pod" "$@"; }
in_host() { nsenter --net="/run/netns/$host" "$@"; }

bench_cleanup() {
    local pidfile
    for pidfile in "$dir"/*.pid; do
        if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    ip netns delete "$pod" 2>/dev/null || true
    ip netns delete "$host" 2>/dev/null || true
    if [[ ${KEEP:-} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
