#!/bin/sh
# /init of the kernel matrix's initramfs (tests/kernels/matrix.sh): runs the escape suite and
# the behaviour tests, as root, on the kernel QEMU booted, then powers off. Everything is
# static: busybox and musl builds of the tests, the probe and the supervisor.
#
# The supervisor pivots into its view, which the kernel allows only where "/" has a parent
# mount; the initramfs is the namespace's root itself, so the first run moves everything to
# a tmpfs and switches to it (as an initramfs hands over to the real root).
set -u
if [ ! -e /.switched ]; then
  mount -t tmpfs -o mode=0755 root /newroot
  for entry in /*; do
    case "$entry" in /newroot | /proc | /sys | /dev) ;; *) cp -a "$entry" /newroot/ ;; esac
  done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev
  touch /newroot/.switched
  exec switch_root /newroot /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# Not a mount of its own: the root is a tmpfs already, and the repository's files staged here
# (the shipped policies, at the path the tests were compiled with) may live under /tmp, as in
# a CI clone made in a temporary directory.
mkdir -p /tmp && chmod 1777 /tmp
# The host's / is shared on systemd machines, which is what the view must not propagate into.
mount --make-rshared /
hostname matrix
# No network device: a default route through loopback gives the escape suite's unconfined
# baseline a route to "the internet", which the sandbox's own namespace must not have.
ip link set lo up
ip route add default dev lo

# The modules a node would load on demand (matrix.sh says which): sock_diag for TCP, which
# relayed transparent egress needs.
for module in inet_diag tcp_diag; do
  insmod "/lib/modules-matrix/$module.ko" || echo "MATRIX-INFO cannot load $module"
done

# Set by matrix.sh on the kernel command line: which configuration this boot is, and the
# kernel features the tests may skip on it because the kernel lacks them.
case "${matrix:-}" in
  shipped) lacks="vm.memfd_noexec=2 (Linux 6.6)" ;;
  nolandlock) lacks="vm.memfd_noexec=2 (Linux 6.6)|Landlock" ;;
  *) lacks="" ;;
esac
echo "MATRIX-INFO kernel $(uname -r); lsm $(cat /sys/kernel/security/lsm 2>/dev/null); config ${matrix:-?}"

export OPENSHELL_REQUIRE_KERNEL=1 OPENSHELL_KERNEL_LACKS="$lacks" RUST_BACKTRACE=1 HOME=/root
export PATH=/usr/bin:/bin
status=0
cd /t/debug/deps
for suite in escape behaviour view; do
  echo "MATRIX-SUITE $suite"
  # --show-output: what passing tests printed, i.e. which ones skipped for a missing feature.
  if ./"$suite" --test-threads=2 --show-output; then
    echo "MATRIX-SUITE-RESULT $suite pass"
  else
    echo "MATRIX-SUITE-RESULT $suite FAIL"
    status=1
  fi
done
echo "MATRIX-DONE $status"
sync
poweroff -f
