# shellcheck shell=sh
# The demo's agent: run by busybox sh INSIDE the sandbox, as
#   /bin/sh -c "$(cat demo-agent.sh)" agent ALLOWED DENIED API
# Shows who it is, then makes one request the policy allows and one it does not, both with
# plain `wget` through the proxy the supervisor set in http_proxy; then a POST to the allowed
# server, which its read-only L7 rule refuses (the response's status line and JSON body);
# then its ANTHROPIC_API_KEY (a placeholder: the pod's Secret never reaches the agent), a
# call of the fake model API with it, and the same key sent to the allowed server, where it
# is not bound.
allowed="$1"
denied="$2"
api="$3"

echo "agent: uid $(id -u), pid $$ in its own PID namespace, proxy ${http_proxy:-(none)}"
echo "agent: GET http://$allowed/  (the policy allows it)"
timeout 10 wget -q -O- "http://$allowed/" 2>&1 | sed 's/^/agent:   /'
echo "agent: GET http://$denied/  (the policy does not name it)"
timeout 10 wget -q -O- "http://$denied/" 2>&1 | sed 's/^/agent:   /'
echo "agent: POST http://$allowed/  (read-only: GET yes, POST no)"
# busybox wget sends GET through a proxy even with --post-data: the POST is written by hand.
printf 'POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi' \
  "$allowed" "$allowed" | timeout 10 nc 127.0.0.1 3128 | sed -n '1p;$p' | sed 's/^/agent:   /'
echo
echo "agent: my ANTHROPIC_API_KEY is ${ANTHROPIC_API_KEY:-(unset)}"
# By hand again: busybox wget prints no body for an error status.
call() {
  printf '%s http://%s%s HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' \
    "$1" "$2" "$3" "$2" "$ANTHROPIC_API_KEY" | timeout 10 nc 127.0.0.1 3128 | tr -d '\r' |
    sed -n '1p;$p' | sed 's/^/agent:   /'
  echo
}
echo "agent: POST http://$api/v1/messages with x-api-key: \$ANTHROPIC_API_KEY  (the fake model API)"
call POST "$api" /v1/messages
echo "agent: GET http://$allowed/ with the same key  (allowed, but the key is not bound there)"
call GET "$allowed" /
echo "agent: done"
