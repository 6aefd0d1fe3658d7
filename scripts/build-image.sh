#!/usr/bin/env bash
# Builds the supervisor image (Containerfile) from static binaries already built on the host.
#
#   scripts/build-image.sh BIN_DIR IMAGE VERSION REVISION SOURCE
#
# BIN_DIR holds openshell-sandbox and openshell-copier (x86_64-unknown-linux-musl, release).
# Stages them in build/image/ with the SHA256SUMS computed here and the shipped policies, then
# builds IMAGE with podman. The image's timestamps are set to the last commit's time, so the
# same binaries give the same image digest on every machine. `make image` is the usual caller.
set -euo pipefail

die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 5 ]] || die "usage: $0 BIN_DIR IMAGE VERSION REVISION SOURCE"
readonly BIN_DIR="$1" IMAGE="$2" VERSION="$3" REVISION="$4" SOURCE="$5"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly CONTEXT="$REPO/build/image"
# What the image may weigh (issue 6): the init container is pulled on every node.
readonly MAX_BYTES=$((8 * 1000 * 1000))

case "$IMAGE" in
  *:latest | *:latest@*) die "refusing the tag :latest; tag with the version ($IMAGE)" ;;
  *:*) ;;
  *) die "IMAGE must carry an explicit tag ($IMAGE)" ;;
esac
for v in VERSION REVISION SOURCE; do
  [[ -n ${!v} ]] || die "$v is empty"
done

for bin in openshell-sandbox openshell-copier; do
  [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin is missing; build it with
  cargo build --release --target x86_64-unknown-linux-musl -p openshell-sandbox -p openshell-copier"
  # A dynamically linked binary would start on the build host and fail in the scratch image
  # with a baffling "no such file or directory" (the missing loader).
  if LC_ALL=C readelf --program-headers "$BIN_DIR/$bin" | grep -q 'INTERP'; then
    die "$BIN_DIR/$bin is dynamically linked; the FROM-scratch image needs a static (musl) build"
  fi
done

rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/policies"
install -m 0555 "$BIN_DIR/openshell-sandbox" "$BIN_DIR/openshell-copier" "$CONTEXT/"
install -m 0444 "$REPO"/policies/*.yaml "$CONTEXT/policies/"
# Absolute paths, so that `sha256sum -c` works from / in a copy of the image's files; the
# copier matches an entry by its last path component.
(
  cd "$CONTEXT"
  for bin in openshell-sandbox openshell-copier; do
    printf '%s  /usr/local/bin/%s\n' "$(sha256sum <"$bin" | cut -d' ' -f1)" "$bin"
  done
) >"$CONTEXT/SHA256SUMS"
chmod 0444 "$CONTEXT/SHA256SUMS"

timestamp="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)"
previous="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
podman build --quiet \
  --file "$REPO/Containerfile" \
  --layers=false \
  --timestamp "$timestamp" \
  --build-arg VERSION="$VERSION" \
  --build-arg REVISION="$REVISION" \
  --build-arg SOURCE="$SOURCE" \
  --tag "$IMAGE" \
  "$CONTEXT" >/dev/null
# A rebuild moves the tag; drop the image it left untagged unless a container still uses it.
current="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
if [[ -n $previous && $previous != "$current" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
printf 'build-image: %s: %s bytes (%s MB); SHA256SUMS:\n' "$IMAGE" "$size" \
  "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1000000 }')"
sed 's/^/  /' "$CONTEXT/SHA256SUMS"
((size <= MAX_BYTES)) || die "$IMAGE weighs $size bytes, over the $MAX_BYTES-byte budget"
