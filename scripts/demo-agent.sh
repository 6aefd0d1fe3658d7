# shellcheck shell=sh
# The demo's agent: run by busybox sh INSIDE the sandbox, as
#   /bin/sh -c "$(cat demo-agent.sh)" agent ALLOWED DENIED
# Shows who it is, then makes one request the policy allows and one it does not, both with
# plain `wget` through the proxy the supervisor set in http_proxy; then a POST to the allowed
# server, which its read-only L7 rule refuses.
allowed="$1"
denied="$2"

echo "agent: uid $(id -u), pid $$ in its own PID namespace, proxy ${http_proxy:-(none)}"
echo "agent: GET http://$allowed/  (the policy allows it)"
timeout 10 wget -q -O- "http://$allowed/" 2>&1 | sed 's/^/agent:   /'
echo "agent: GET http://$denied/  (the policy does not name it)"
timeout 10 wget -q -O- "http://$denied/" 2>&1 | sed 's/^/agent:   /'
echo "agent: POST http://$allowed/  (read-only: GET yes, POST no)"
timeout 10 wget -q -O- --post-data=x "http://$allowed/" 2>&1 | sed 's/^/agent:   /'
echo "agent: done"
