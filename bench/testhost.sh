# Sourced by the proxy benchmarks: a test host on a network of their own, nothing else.
#
# bench_binaries REPO: builds the release supervisor (sets $supervisor; SUPERVISOR=PATH takes
# that binary instead, not rebuilt) and the load generator (sets $proxy_load). Before
# testhost_up.
#
# testhost_up DIR ID: a "pod" network namespace ID-pod joined by a veth pair to a "host"
# namespace ID-host (pod 203.0.113.1, host 203.0.113.2), and nginx serving DIR/www on the host's
# port 80 (sendfile, no logging, two workers; it reads DIR/nginx.conf and writes under DIR),
# with DIR/www/small (64 bytes); and the load generator copied to DIR/proxy-load, where the
# sandbox can run it.
# testhost_down removes both namespaces and stops nginx; call it from the caller's EXIT trap.
# in_pod / in_host run a command in either namespace.

bench_binaries() {
    if [[ -n ${SUPERVISOR:-} ]]; then
        supervisor=$(realpath "$SUPERVISOR")
        echo "supervisor: $supervisor (SUPERVISOR, not rebuilt)"
    else
        echo "building: cargo build --release -p openshell-sandbox"
        (cd "$1" && cargo build --quiet --release -p openshell-sandbox)
        supervisor=$1/target/release/openshell-sandbox
    fi
    cargo build --quiet --release --manifest-path "$1/bench/proxy-load/Cargo.toml" \
        --target-dir "$1/target"
    proxy_load=$1/target/release/proxy-load
}

testhost_up() {
    testhost_dir=$1
    testhost_pod=$2-pod
    testhost_host=$2-host
    ip netns add "$testhost_pod"
    ip netns add "$testhost_host"
    ip link add veth0 netns "$testhost_pod" type veth peer name veth0 netns "$testhost_host"
    ip -n "$testhost_pod" -batch - <<EOF
link set lo up
link set veth0 up
addr add 203.0.113.1/24 dev veth0
EOF
    ip -n "$testhost_host" -batch - <<EOF
link set lo up
link set veth0 up
addr add 203.0.113.2/24 dev veth0
EOF
    # Tens of thousands of short connections per run: reuse TIME_WAIT ports rather than run out.
    in_pod sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
    in_host sysctl -q -w net.core.somaxconn=4096
    mkdir -p "$testhost_dir/www" "$testhost_dir/nginx"
    cat >"$testhost_dir/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $testhost_dir/nginx.pid;
error_log $testhost_dir/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    client_body_temp_path $testhost_dir/nginx/body;
    proxy_temp_path $testhost_dir/nginx/proxy;
    fastcgi_temp_path $testhost_dir/nginx/fastcgi;
    uwsgi_temp_path $testhost_dir/nginx/uwsgi;
    scgi_temp_path $testhost_dir/nginx/scgi;
    server {
        listen 203.0.113.2:80 backlog=4096;
        root $testhost_dir/www;
    }
}
EOF
    in_host nginx -c "$testhost_dir/nginx.conf"
    head -c 64 /dev/zero | tr '\0' x >"$testhost_dir/www/small"
    chmod -R a+rX "$testhost_dir/www"
    install -m 755 "$proxy_load" "$testhost_dir/proxy-load"
}

testhost_down() {
    if [[ -f ${testhost_dir:-}/nginx.pid ]]; then
        kill "$(cat "$testhost_dir/nginx.pid")" 2>/dev/null || true
    fi
    ip netns delete "${testhost_pod:-}" 2>/dev/null || true
    ip netns delete "${testhost_host:-}" 2>/dev/null || true
}

in_pod() { nsenter --net="/run/netns/$testhost_pod" "$@"; }
in_host() { nsenter --net="/run/netns/$testhost_host" "$@"; }
