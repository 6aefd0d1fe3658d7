#!/usr/bin/env bash
# Builds the small agent image that `make demo` and the end-to-end test run under the
# supervisor, and prints its reference. It also serves as the test's upstream HTTP servers.
#
#   scripts/build-agent-image.sh        # prints e.g. localhost/openshell-e2e-agent:busybox-1.35.0-4-deb12u1-b1
#
# Debian's busybox-static (fetched with `apt-get download`; there is no container registry
# to pull an image from) gives sh, wget, httpd, sha256sum and grep in one static binary, in a
# FROM-scratch image of about 2 MB built in seconds. A Debian image with python3 and curl
# would take 30 s and 150 MB and test nothing more: the proxy sees a CONNECT or an
# absolute-form request either way. Every applet's executable is /bin/busybox, which the
# policies name as the calling binary.
#
# The tag carries the package version, so an image already built from the same package is
# reused (a cache, removed by `make clean-images`), and a Debian update rebuilds it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly CACHE="$REPO/build/cache"
readonly NAME="localhost/openshell-e2e-agent"
# The agent's user. Not the supervisor's choice to make here: the supervisor takes the
# image's `sandbox` user when neither the policy nor OPENSHELL_SANDBOX_UID names one.
readonly SANDBOX_UID=1000

say() { printf 'build-agent-image: %s\n' "$*" >&2; }
die() { printf 'build-agent-image: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"
version="$(apt-cache policy busybox-static | sed -n 's/^  Candidate: //p')"
if [[ -z $version || $version == "(none)" ]]; then
  say "no busybox-static candidate; refreshing the package lists"
  apt-get update -qq
  version="$(apt-cache policy busybox-static | sed -n 's/^  Candidate: //p')"
fi
[[ -n $version && $version != "(none)" ]] || die "Debian has no busybox-static package here"
# Tags allow [A-Za-z0-9_.-]: "1:1.35.0-4+deb12u1+b1" becomes "busybox-1.35.0-4-deb12u1-b1".
tag="busybox-$(printf '%s' "${version#*:}" | tr -c 'A-Za-z0-9_.-' '-')"
image="$NAME:$tag"

if podman image exists "$image"; then
  say "reusing $image"
  printf '%s\n' "$image"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
deb="$CACHE/busybox-static_${version#*:}_amd64.deb"
if [[ ! -s $deb ]]; then
  say "downloading busybox-static $version"
  mkdir "$work/download"
  # As root into a root-owned directory: apt's _apt sandbox user could not write there.
  (cd "$work/download" && apt-get download -qq -o APT::Sandbox::User=root "busybox-static=$version")
  mv "$work"/download/busybox-static_*.deb "$deb"
fi
dpkg-deb -x "$deb" "$work/deb"
root="$work/root"
mkdir -p "$root/bin" "$root/etc" "$root/sandbox" "$root/tmp" "$root/root"
install -m 0755 "$work/deb/bin/busybox" "$root/bin/busybox"
# Every applet as a symlink at its usual path (what `busybox --install -s` would do inside).
while read -r applet; do
  [[ $applet == bin/busybox ]] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)
printf '%s\n' \
  'root:x:0:0:root:/root:/bin/sh' \
  "sandbox:x:$SANDBOX_UID:$SANDBOX_UID:sandbox:/sandbox:/bin/sh" \
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' "sandbox:x:$SANDBOX_UID:" 'nogroup:x:65534:' >"$root/etc/group"
chmod 1777 "$root/tmp"
chown "$SANDBOX_UID:$SANDBOX_UID" "$root/sandbox"
# ADD of a local tar keeps owners and modes exactly as staged (COPY would make them root's).
tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
cat >"$work/Containerfile" <<EOF
FROM scratch
ADD rootfs.tar /
LABEL org.opencontainers.image.title="openshell-e2e-agent" \\
      org.opencontainers.image.description="busybox-static $version: test agent and upstream server for openshell-sandbox"
WORKDIR /sandbox
CMD ["/bin/sh"]
EOF
podman build --quiet --layers=false --tag "$image" "$work" >/dev/null
say "built $image"
printf '%s\n' "$image"
