# shellcheck shell=sh
# The test agent: run by busybox sh INSIDE the sandbox, as
#   /bin/sh -c "$(cat agent.sh)" agent ALLOWED DENIED EXIT_CODE
# where ALLOWED and DENIED are host:port of the test's two upstream servers. It prints what the
# end-to-end test asserts on, one "key: value" line each, and exits with EXIT_CODE so that the
# test can tell the agent's own status from anything the supervisor or podman would report.
# Every network tool here is a busybox applet: its executable is /bin/busybox, which is the
# binary the test policy allows. Time limits come from `timeout`: busybox 1.35's own wget -T
# crashes (SIGSEGV, also outside any sandbox).
allowed="$1"
denied="$2"
code="$3"

echo "agent-pid: $$"
grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status |
  sed 's/^/status-/'
echo "pid1-argv0: $(tr '\0' '\n' </proc/1/cmdline | head -n1)"
echo "supervisor-sha256: $(sha256sum /opt/openshell/bin/openshell-sandbox | cut -d' ' -f1)"
echo "proxy-env: HTTP_PROXY=${HTTP_PROXY:-} HTTPS_PROXY=${HTTPS_PROXY:-} ALL_PROXY=${ALL_PROXY:-} http_proxy=${http_proxy:-} NO_PROXY=${NO_PROXY:-}"

# Around the proxy (-Y off): the supervisor intercepts connect() (transparent egress), so the
# allowed upstream is reached directly and the other one is refused at once.
echo "direct: $(timeout 5 wget -Y off -q -O- "http://$allowed/" 2>&1)"
echo "direct-denied: $(timeout 5 wget -Y off -q -O- "http://$denied/" 2>&1)"

# Through the proxy (http_proxy from the supervisor): an absolute-form GET, allowed.
body="$(timeout 10 wget -q -O- "http://$allowed/" 2>&1)"
echo "allowed-rc: $?"
echo "allowed-body: $body"

# A CONNECT tunnel to it, by hand, with the request right behind the CONNECT head (bytes
# after the head belong to the tunnel).
printf 'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nGET / HTTP/1.0\r\n\r\n' "$allowed" "$allowed" |
  timeout 10 nc 127.0.0.1 3128 2>&1 | tr -d '\r' | sed 's/^/allowed-connect: /'

# A CONNECT to the upstream the policy does not name, by hand, to see the proxy's answer.
printf 'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' "$denied" "$denied" |
  timeout 10 nc 127.0.0.1 3128 2>&1 | tr -d '\r' | sed 's/^/denied-response: /'
# The JSON body ends without a newline.
echo

exit "$code"
