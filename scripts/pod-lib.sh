# shellcheck shell=bash
# Sourced by scripts/demo.sh and tests/e2e/pod.sh: plays the podman variant of
# deploy/kubernetes in a podman network of its own, next to two upstream HTTP servers of its
# own (busybox httpd in the agent image), one that the policy allows and one it does not.
# Every object is named "$prefix-..." so that osb_cleanup removes exactly what one run made.

OSB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly OSB_REPO
# A private /24 of our own: podman networks are bridges on this machine, and the proxy must
# treat the upstreams as private addresses (allowed only when the policy names them exactly).
readonly OSB_SUBNET="10.89.177.0/24"
readonly OSB_ALLOWED_IP="10.89.177.10"
readonly OSB_DENIED_IP="10.89.177.11"
# The fake model API of the credential demo and test (see osb_start_fake_api).
readonly OSB_API_IP="10.89.177.12"
readonly OSB_PORT=8080
readonly OSB_PYTHON="${PYTHON:-$OSB_REPO/build/venv/bin/python}"

osb_die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# Checks what every caller needs, with the command that fixes it.
osb_preflight() {
  local image
  [[ $(id -u) -eq 0 ]] || osb_die "run as root (rootful podman: the pod needs real capabilities)"
  command -v podman >/dev/null || osb_die "podman is missing; run scripts/setup-host.sh"
  "$OSB_PYTHON" -c 'import yaml' 2>/dev/null \
    || osb_die "$OSB_PYTHON cannot import yaml; run scripts/setup-host.sh"
  for image in "$@"; do
    podman image exists "$image" || osb_die "image $image is missing; run make image agent-image"
  done
}

# The openshell-sandbox entry of the SHA256SUMS inside IMAGE (read from the image itself, not
# from the build directory, so that what is checked is what ships).
osb_supervisor_sha256() {
  local image="$1" mnt sum
  mnt="$(podman image mount "$image")"
  sum="$(awk '$2 ~ /\/openshell-sandbox$/ { print $1 }' "$mnt/usr/local/share/openshell/SHA256SUMS")"
  podman image unmount "$image" >/dev/null
  [[ $sum =~ ^[0-9a-f]{64}$ ]] || osb_die "$image: no openshell-sandbox entry in SHA256SUMS"
  printf '%s\n' "$sum"
}

# Creates the network "$prefix-net" and the two upstream servers, and waits until they answer.
osb_start_upstreams() {
  local prefix="$1" agent_image="$2" name ip
  podman network create --disable-dns --subnet "$OSB_SUBNET" "$prefix-net" >/dev/null \
    || osb_die "cannot create a podman network on $OSB_SUBNET; a stale one? see: podman network ls"
  for name in allowed denied; do
    ip="$OSB_ALLOWED_IP"
    [[ $name == denied ]] && ip="$OSB_DENIED_IP"
    podman run --detach --name "$prefix-$name" --network "$prefix-net" --ip "$ip" \
      "$agent_image" /bin/sh -c \
      'mkdir -p /tmp/www && echo "$1" >/tmp/www/index.html && exec httpd -f -vv -p "$2" -h /tmp/www' \
      httpd "hello from the $name upstream" "$OSB_PORT" >/dev/null
    osb_wait_tcp "$ip" "$OSB_PORT" || osb_die "upstream $prefix-$name did not listen on $ip:$OSB_PORT"
  done
}

# A fake model API at $OSB_API_IP:$OSB_PORT, "$prefix-api": for every request it logs the
# x-api-key and Authorization it received (its own log: what really reached the API) and
# answers with a JSON body echoing both, as an API's error message quoting a key would.
# busybox nc runs the handler once per connection.
osb_start_fake_api() {
  local prefix="$1" agent_image="$2"
  # shellcheck disable=SC2016 # expanded by the container's shell
  # A connection without a request (the readiness probe below) is not logged.
  local handler='key= auth=
cr="$(printf "\r")"
IFS= read -r line || exit 0
while IFS= read -r line; do
  line="${line%"$cr"}"
  [ -z "$line" ] && break
  case "$line" in
    [Xx]-[Aa][Pp][Ii]-[Kk][Ee][Yy]:*) key="${line#*: }" ;;
    [Aa]uthorization:*) auth="${line#*: }" ;;
  esac
done
echo "fake-api: received x-api-key: $key; authorization: $auth" >&2
body="{\"message\":\"fake API: called\",\"x-api-key\":\"$key\",\"authorization\":\"$auth\"}"
printf "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s" "${#body}" "$body"'
  podman run --detach --name "$prefix-api" --network "$prefix-net" --ip "$OSB_API_IP" \
    "$agent_image" /bin/sh -c \
    'printf "%s\n" "$1" >/tmp/api.sh && chmod +x /tmp/api.sh && exec nc -ll -p "$2" -e /tmp/api.sh' \
    api "#!/bin/sh
$handler" "$OSB_PORT" >/dev/null
  osb_wait_tcp "$OSB_API_IP" "$OSB_PORT" || osb_die "the fake API did not listen on $OSB_API_IP:$OSB_PORT"
}

# A podman secret "$prefix-$name" holding KEY=VALUE pairs, in the form podman 4.3's kube play
# reads for `env: valueFrom: secretKeyRef` (a JSON map of base64 values, which is what a
# Kubernetes Secret's `data` is).
osb_secret() {
  local prefix="$1" name="$2" json="{" sep="" pair
  shift 2
  for pair in "$@"; do
    json+="$sep\"${pair%%=*}\":\"$(printf '%s' "${pair#*=}" | base64 -w0)\""
    sep=","
  done
  printf '%s}' "$json" | podman secret create "$prefix-$name" - >/dev/null
}

osb_wait_tcp() {
  local ip="$1" port="$2"
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# Writes the podman variant of the shipped pod to OUT (see tests/e2e/podman_variant.py).
#   osb_render OUT POD_NAME SUPERVISOR_IMAGE AGENT_IMAGE SHA256 POLICY LOG_FORMAT SCRIPT ARGS...
# OSB_WITHOUT_CAP=CAP in the environment leaves that capability out of the agent container.
osb_render() {
  local out="$1" pod="$2" sup="$3" agent="$4" sha="$5" policy="$6" format="$7" script="$8"
  shift 8
  local args=() arg
  for arg in "$@"; do
    args+=(--agent-arg "$arg")
  done
  if [[ -n ${OSB_WITHOUT_CAP:-} ]]; then
    args+=(--without-cap "$OSB_WITHOUT_CAP")
  fi
  # OSB_SECRET_ENV="VAR=SECRET/KEY ...": agent variables from podman secrets (secretKeyRef).
  for arg in ${OSB_SECRET_ENV:-}; do
    args+=(--secret-env "$arg")
  done
  # OSB_SECRET_FILE="PATH=FILE": a read-only file at PATH in the agent container.
  if [[ -n ${OSB_SECRET_FILE:-} ]]; then
    args+=(--secret-file "$OSB_SECRET_FILE")
  fi
  "$OSB_PYTHON" "$OSB_REPO/tests/e2e/podman_variant.py" \
    --deploy-dir "$OSB_REPO/deploy/kubernetes" \
    --supervisor-image "$sup" --agent-image "$agent" --sha256 "$sha" --policy "$policy" \
    --pod-name "$pod" --log-format "$format" --agent-script "$script" "${args[@]}" >"$out"
}

# Plays FILE in the run's network; returns kube play's status (its output goes to FILE.log).
osb_play() {
  local file="$1" prefix="$2"
  podman kube play --network "$prefix-net" "$file" >"$file.log" 2>&1
}

# Waits for a container to exit and prints its exit code (fails after SECONDS).
osb_wait_exit() {
  local container="$1" seconds="$2"
  timeout "$seconds" podman wait "$container"
}

# Removes every pod, container and volume named "$prefix-*", and the network.
osb_cleanup() {
  local prefix="$1" name
  for name in $(podman pod ls --format '{{.Name}}' | grep "^$prefix-" || true); do
    podman pod rm --force --time 0 "$name" >/dev/null 2>&1 || true
  done
  for name in $(podman ps --all --format '{{.Names}}' | grep "^$prefix-" || true); do
    podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
  done
  for name in $(podman volume ls --format '{{.Name}}' | grep "^$prefix-" || true); do
    podman volume rm --force "$name" >/dev/null 2>&1 || true
  done
  for name in $(podman secret ls --format '{{.Name}}' | grep "^$prefix-" || true); do
    podman secret rm "$name" >/dev/null 2>&1 || true
  done
  podman network rm --force "$prefix-net" >/dev/null 2>&1 || true
}

# Prints what is left of a run (nothing, after osb_cleanup).
osb_leftovers() {
  local prefix="$1"
  {
    podman pod ls --format 'pod {{.Name}}'
    podman ps --all --format 'container {{.Names}}'
    podman volume ls --format 'volume {{.Name}}'
    podman network ls --format 'network {{.Name}}'
    podman secret ls --format 'secret {{.Name}}'
  } | grep " $prefix-" || true
}
