#!/usr/bin/env bash
# The kernel matrix, for real: boots Debian 12's own 6.1 cloud kernel under QEMU (TCG: KVM
# fails on these nested machines) with an initramfs of static builds (busybox, the supervisor,
# the escape probe, fetch-direct and the escape/behaviour/view test suites) and runs the suites as root:
#   shipped     6.1 as Debian ships it: Landlock ABI 2 (no truncate right), no vm.memfd_noexec
#   nolandlock  6.1 booted with an lsm= list without landlock, like RHEL 9 before 9.6
# The machine's own kernel is the third column: `make test-unit` runs the same suites there.
# Every attack must be refused on each kernel, except where the kernel lacks the means
# (init.sh names those features; a test then says it skips and why).
#
#   tests/kernels/matrix.sh SANDBOX_BINARY      (make test-kernels; SANDBOX_BINARY is the
#                                                static musl build the image ships)
# KERNEL_MATRIX=shipped (or nolandlock) runs one configuration only.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 SANDBOX_BINARY" >&2; exit 2; }
SANDBOX="$(realpath "$1")"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly SANDBOX REPO
readonly WORK="$REPO/build/kernels"
readonly MUSL_TARGET=x86_64-unknown-linux-musl
readonly CONFIGS=("${KERNEL_MATRIX:-shipped nolandlock}")
# A list without landlock (the Debian kernel's CONFIG_LSM minus landlock).
readonly NO_LANDLOCK_LSM="lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf"
# TCG is slow but bounded: the whole boot and both suites take a few minutes.
readonly VM_TIMEOUT=1200

say() { printf 'kernel-matrix: %s\n' "$*"; }
die() { printf 'kernel-matrix: error: %s\n' "$*" >&2; exit 1; }

[[ -x $SANDBOX ]] || die "$SANDBOX is not an executable (make binaries builds it)"
for tool in qemu-system-x86_64 busybox cpio apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool missing; run: make setup"
done
mkdir -p "$WORK"

# Debian's newest 6.1 cloud kernel (the mirror keeps only recent ABI numbers, so the name is
# looked up, not pinned), unpacked once into build/kernels.
newest_kernel_package() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' |
    awk '{print $1}' | sort -V | tail -n1
}

kernel() {
  local package deb
  package="$(newest_kernel_package)"
  if [[ -z $package ]]; then
    apt-get update -qq >&2
    package="$(newest_kernel_package)"
  fi
  [[ -n $package ]] || die "no linux-image-6.1.0-*-cloud-amd64-unsigned package (apt-get update?)"
  if [[ ! -f $WORK/$package/vmlinuz || ! -f $WORK/$package/modules/tcp_diag.ko ]]; then
    say "downloading $package" >&2
    rm -rf "$WORK/download" && mkdir -p "$WORK/download" "$WORK/$package/modules"
    # (apt warns that root downloads unsandboxed into a directory _apt cannot write: fine.)
    (cd "$WORK/download" && apt-get download -q "$package" 2>/dev/null >&2)
    deb="$(ls "$WORK/download"/*.deb)"
    dpkg-deb -x "$deb" "$WORK/download/x"
    cp "$WORK/download"/x/boot/vmlinuz-* "$WORK/$package/vmlinuz"
    # sock_diag for TCP is modular in Debian's kernel; a node loads it on first use, which an
    # initramfs without modules cannot (init.sh loads these, in this order).
    for module in inet_diag tcp_diag; do
      cp "$(find "$WORK/download/x/lib/modules" -name "$module.ko")" "$WORK/$package/modules/"
    done
    rm -rf "$WORK/download"
  fi
  echo "$WORK/$package/vmlinuz"
}

# The test executables of the tests crate, built static (musl): "name path" lines.
test_binaries() {
  cargo test --no-run --quiet --target "$MUSL_TARGET" -p openshell-tests --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])'
}

initramfs() {
  local root="$WORK/root" name path applet
  rm -rf "$root"
  mkdir -p "$root"/{usr/bin,etc,proc,sys,dev,tmp,newroot,root,t/debug/deps}
  chmod 1777 "$root/tmp"
  # Merged /usr, as in Debian's images: /bin and friends are symlinks the view recreates.
  for link in bin sbin lib lib64; do
    ln -s "usr/bin" "$root/$link"
  done
  cp "$(command -v busybox)" "$root/usr/bin/busybox"
  for applet in $("$root/usr/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/usr/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  while read -r name path; do
    strip --strip-debug -o "$root/t/debug/deps/$name" "$path"
  done < <(test_binaries)
  for name in escape behaviour view; do
    [[ -x $root/t/debug/deps/$name ]] || die "test suite $name was not built"
  done
  for helper in escape-probe fetch-direct; do
    strip --strip-debug -o "$root/t/debug/$helper" "$REPO/target/$MUSL_TARGET/debug/$helper"
  done
  strip --strip-debug -o "$root/t/debug/openshell-sandbox" "$SANDBOX"
  # The behaviour tests read the shipped policies where they were compiled (as
  # $REPO/tests/../policies).
  mkdir -p "$root$REPO/policies" "$root$REPO/tests"
  cp "$REPO"/policies/*.yaml "$root$REPO/policies/"
  cp "$REPO/tests/kernels/init.sh" "$root/init"
  mkdir -p "$root/lib/modules-matrix"
  cp "$(dirname "$vmlinuz")"/modules/*.ko "$root/lib/modules-matrix/"
  (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$WORK/initrd.gz"
  rm -rf "$root"
}

# run CONFIG VMLINUZ: boots the kernel with the initramfs; prints the suites' results.
run() {
  local config="$1" vmlinuz="$2" log="$WORK/$1.log" append started rc=0
  append="console=ttyS0 quiet panic=-1 matrix=$config"
  [[ $config == nolandlock ]] && append+=" lsm=$NO_LANDLOCK_LSM"
  say "booting 6.1 ($config)"
  started=$SECONDS
  timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 2 -nographic \
    -no-reboot -kernel "$vmlinuz" -initrd "$WORK/initrd.gz" -append "$append" \
    </dev/null >"$log" 2>&1 || rc=$?
  grep -a -o 'MATRIX-INFO.*' "$log" | sed 's/^MATRIX-INFO /  /' || true
  grep -a -E '^(test result|    [a-z_0-9]+$)' "$log" | sed 's/^/  /' || true
  grep -a -E '(^skipping|: confined, this kernel gives)' "$log" | sort | uniq -c |
    sed 's/^ */  /' || true
  grep -a '^MATRIX-SUITE-RESULT' "$log" | sed 's/^MATRIX-SUITE-RESULT /  suite /' || true
  say "$config: $((SECONDS - started)) s (log: ${log#"$REPO"/})"
  if [[ $rc -ne 0 ]]; then
    say "$config: QEMU exited with $rc (124: the VM timed out)"
    return 1
  fi
  grep -aq '^MATRIX-DONE 0' "$log"
}

started=$SECONDS
vmlinuz="$(kernel)"
say "building the static test suites"
initramfs
say "initramfs $(du -h "$WORK/initrd.gz" | cut -f1), prepared in $((SECONDS - started)) s"
failed=()
for config in ${CONFIGS[*]}; do
  run "$config" "$vmlinuz" || failed+=("$config")
done
say "not run in the VMs: tests/tests/runtimes.rs (needs python3, node and wasmtime, which the \
initramfs does not carry; it runs on the machine's own kernel)"
say "total $((SECONDS - started)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
  say "FAILED on: ${failed[*]}"
  exit 1
fi
say "every suite passed on 6.1 (${CONFIGS[*]})"
