# shellcheck shell=sh
# The credential test's agent: run by busybox sh INSIDE the sandbox, as
#   /bin/sh -c "$(cat credentials-agent.sh)" agent API OTHER
# where API is the fake model API (its key bound there) and OTHER an upstream the key is not
# bound to. It shows what it holds (its variables, the key file if it could read it), sends
# both keys to each (by hand through the proxy: busybox wget prints no body on an error), and
# waits a moment at the end so that the test can look at its container from outside.
api="$1"
other="$2"

echo "key-env: ${ANTHROPIC_API_KEY:-}"
echo "token-env: ${FILE_TOKEN:-}"
echo "secret-file: $(cat /var/run/secrets/openshell-test/token 2>&1)"
request() {
  printf 'GET http://%s%s HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' \
    "$1" "$2" "$1" "$ANTHROPIC_API_KEY" "$FILE_TOKEN" | timeout 10 nc 127.0.0.1 3128 2>&1 | tr -d '\r'
  # The JSON body ends without a newline.
  echo
}
request "$api" /v1/messages | sed 's/^/api-response: /'
request "$other" / | sed 's/^/other-response: /'
echo "waiting"
sleep 5
echo "done"
