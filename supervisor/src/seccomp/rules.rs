//! The system calls the agent may not make, as data: one row per system call, with the
//! condition under which it is refused, the errno the agent sees and the attack it stops.
//!
//! The filter is default-allow: the kernel surface an agent legitimately uses is huge (compilers,
//! language runtimes, browsers), while the calls below are the ones container escapes and kernel
//! exploits are made of. `memfd_create` is deliberately absent: Node/V8, CUDA and wasmtime need
//! it, and Landlock plus no_new_privs already stop executing anything privileged from it.

use libc::{EAFNOSUPPORT, EPERM, c_long};

/// When a row applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every call.
    Always,
    /// Calls whose argument `arg` (low 32 bits) has any bit of `mask` set.
    AnyFlag {
        /// Argument index.
        arg: u8,
        /// Refused bits.
        mask: u32,
    },
    /// Calls whose argument `arg` (low 32 bits, as the kernel reads an `int`/`unsigned int`)
    /// equals one of `values`.
    ArgIn {
        /// Argument index.
        arg: u8,
        /// Refused values.
        values: &'static [u32],
    },
    /// Calls whose argument `arg` (low 32 bits) is not one of `values`.
    ArgNotIn {
        /// Argument index.
        arg: u8,
        /// Allowed values.
        values: &'static [u32],
    },
    /// Calls whose argument `arg` (low 32 bits) lies in one of the inclusive `ranges`.
    ArgInRanges {
        /// Argument index.
        arg: u8,
        /// Refused ranges, `(low, high)`.
        ranges: &'static [(u32, u32)],
    },
    /// `socket(2)`: families other than unix, IPv4, IPv6 and route netlink, and raw or packet
    /// sockets of any family.
    SocketPolicy,
    /// Calls whose argument `arg` (all 64 bits) is not zero, e.g. a non-null pointer.
    NonZero {
        /// Argument index.
        arg: u8,
    },
}

/// One refused system call.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The call's name, for logs.
    pub name: &'static str,
    /// Its x86_64 number.
    pub nr: c_long,
    /// When it is refused.
    pub when: When,
    /// What the agent's call returns.
    pub errno: i32,
    /// Why it is refused, for logs and `check`.
    pub why: &'static str,
}

/// Every `CLONE_NEW*` flag: a new namespace of any kind gives back what the sandbox took away
/// (a user namespace in particular hands out a full capability set over it).
pub const CLONE_NEW_ANY: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
/// `unshare(2)` also takes `CLONE_NEWTIME`, whose bit is the exit-signal field in `clone(2)`.
pub const UNSHARE_NEW_ANY: u32 = CLONE_NEW_ANY | libc::CLONE_NEWTIME as u32;

/// Socket families the agent may create; anything else is refused with `EAFNOSUPPORT`.
pub const ALLOWED_FAMILIES: [u32; 3] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];
/// Netlink is allowed for routing information only (glibc's getaddrinfo and `ip addr` use it).
pub const ALLOWED_NETLINK_PROTOCOL: u32 = libc::NETLINK_ROUTE as u32;
/// The obsolete `SOCK_PACKET` type (libc marks it deprecated; refusing it is the point).
const SOCK_PACKET: u32 = 10;
/// Socket types refused in every family: they bypass the proxy below TCP/UDP.
pub const REFUSED_TYPES: [u32; 2] = [libc::SOCK_RAW as u32, SOCK_PACKET];
/// `type & SOCK_TYPE_MASK` strips SOCK_NONBLOCK / SOCK_CLOEXEC.
pub const SOCK_TYPE_MASK: u32 = 0xf;

/// Injecting keystrokes into the terminal the agent shares with the user (CVE-2017-5226), and
/// the Linux console's equivalent.
const TERMINAL_INJECTION: &[u32] = &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// Socket ioctls on network interfaces, routes and ARP (SIOCADDRT 0x890B to SIOCDEVPRIVATE's
/// end 0x89FF), except SIOCGIFNAME (0x8910) and SIOCGIFINDEX (0x8933), which map names to
/// indexes (`if_nametoindex`) and reveal nothing else, and SIOCOUTQNSD (0x894B), a socket's
/// own unsent bytes. An ioctl acts in the socket's network namespace, and a connection the
/// transparent path hands out belongs to the pod's: the pod's addresses, hardware addresses,
/// flags and ARP table are not the agent's to read.
const INTERFACE_IOCTLS: &[(u32, u32)] = &[
    (0x890B, 0x890F),
    (0x8911, 0x8932),
    (0x8934, 0x894A),
    (0x894C, 0x89FF),
];

/// `MSG_FASTOPEN`: a TCP connect made by `sendto`/`sendmsg`, which neither the supervisor's
/// `connect()` interception nor Landlock's TCP rules see.
const MSG_FASTOPEN: u32 = 0x2000_0000;
/// `PR_SET_CHILD_SUBREAPER`.
const PR_SET_CHILD_SUBREAPER: u32 = 36;

/// `open_tree_attr(2)` (Linux 6.15) is newer than the libc crate's table.
const SYS_OPEN_TREE_ATTR: c_long = 467;

const fn always(name: &'static str, nr: c_long, why: &'static str) -> Rule {
    Rule {
        name,
        nr,
        when: When::Always,
        errno: EPERM,
        why,
    }
}

/// Refuses send call `nr` when its flags argument `flags_arg` has `MSG_FASTOPEN`.
const fn fast_open(name: &'static str, nr: c_long, flags_arg: u8) -> Rule {
    Rule {
        name,
        nr,
        when: When::AnyFlag {
            arg: flags_arg,
            mask: MSG_FASTOPEN,
        },
        errno: EPERM,
        why: "TCP Fast Open (MSG_FASTOPEN) connects without connect()",
    }
}

/// The refused calls. `clone3` is not here: it is answered with `ENOSYS` in the filter itself
/// (its flags live in memory the filter cannot read), which makes libc fall back to `clone`,
/// whose flags the rows below can see. A call may have several rows; the first whose
/// condition holds refuses it.
pub const RULES: &[Rule] = &[
    // Reaching into other processes: reading the supervisor's memory or stealing its fds.
    always("ptrace", libc::SYS_ptrace, "tracing other processes"),
    always(
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "reading another process's memory",
    ),
    always(
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "writing another process's memory",
    ),
    always(
        "pidfd_getfd",
        libc::SYS_pidfd_getfd,
        "stealing another process's file descriptors",
    ),
    always(
        "kcmp",
        libc::SYS_kcmp,
        "probing another process's kernel objects",
    ),
    always(
        "process_madvise",
        libc::SYS_process_madvise,
        "changing another process's memory",
    ),
    // Kernel attack surface behind most recent local privilege escalations.
    always("bpf", libc::SYS_bpf, "loading BPF programs into the kernel"),
    always(
        "perf_event_open",
        libc::SYS_perf_event_open,
        "kernel performance events",
    ),
    always(
        "userfaultfd",
        libc::SYS_userfaultfd,
        "stalling the kernel in page faults (race exploits)",
    ),
    always(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "io_uring bypasses seccomp for the calls it performs",
    ),
    always(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "io_uring bypasses seccomp for the calls it performs",
    ),
    always(
        "io_uring_register",
        libc::SYS_io_uring_register,
        "io_uring bypasses seccomp for the calls it performs",
    ),
    always(
        "keyctl",
        libc::SYS_keyctl,
        "kernel keyrings are not namespaced",
    ),
    always(
        "add_key",
        libc::SYS_add_key,
        "kernel keyrings are not namespaced",
    ),
    always(
        "request_key",
        libc::SYS_request_key,
        "kernel keyrings are not namespaced",
    ),
    // Rearranging the filesystem view that Landlock rules are anchored to.
    always("mount", libc::SYS_mount, "changing mounts"),
    always("umount2", libc::SYS_umount2, "changing mounts"),
    always(
        "pivot_root",
        libc::SYS_pivot_root,
        "changing the root filesystem",
    ),
    always("chroot", libc::SYS_chroot, "changing the root directory"),
    always("fsopen", libc::SYS_fsopen, "the new mount API"),
    always("fsconfig", libc::SYS_fsconfig, "the new mount API"),
    always("fsmount", libc::SYS_fsmount, "the new mount API"),
    always("fspick", libc::SYS_fspick, "the new mount API"),
    always("move_mount", libc::SYS_move_mount, "the new mount API"),
    always("open_tree", libc::SYS_open_tree, "the new mount API"),
    always("open_tree_attr", SYS_OPEN_TREE_ATTR, "the new mount API"),
    always(
        "mount_setattr",
        libc::SYS_mount_setattr,
        "the new mount API",
    ),
    // File handles name inodes directly, skipping path checks (the "shocker" escape).
    always(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "opening files by handle, bypassing path checks",
    ),
    always(
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "forging file handles",
    ),
    // Leaving or multiplying namespaces.
    always("setns", libc::SYS_setns, "entering other namespaces"),
    Rule {
        name: "unshare",
        nr: libc::SYS_unshare,
        when: When::AnyFlag {
            arg: 0,
            mask: UNSHARE_NEW_ANY,
        },
        errno: EPERM,
        why: "creating namespaces",
    },
    Rule {
        name: "clone",
        nr: libc::SYS_clone,
        when: When::AnyFlag {
            arg: 0,
            mask: CLONE_NEW_ANY,
        },
        errno: EPERM,
        why: "creating namespaces",
    },
    // Replacing or extending the kernel, or the machine's state.
    always("kexec_load", libc::SYS_kexec_load, "loading a new kernel"),
    always(
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "loading a new kernel",
    ),
    always(
        "init_module",
        libc::SYS_init_module,
        "loading kernel modules",
    ),
    always(
        "finit_module",
        libc::SYS_finit_module,
        "loading kernel modules",
    ),
    always(
        "delete_module",
        libc::SYS_delete_module,
        "unloading kernel modules",
    ),
    always("reboot", libc::SYS_reboot, "rebooting"),
    always("swapon", libc::SYS_swapon, "changing swap"),
    always("swapoff", libc::SYS_swapoff, "changing swap"),
    always("acct", libc::SYS_acct, "process accounting"),
    always("quotactl", libc::SYS_quotactl, "disk quotas"),
    always("quotactl_fd", libc::SYS_quotactl_fd, "disk quotas"),
    always(
        "syslog",
        libc::SYS_syslog,
        "the kernel log leaks kernel addresses",
    ),
    always("iopl", libc::SYS_iopl, "raw I/O port access"),
    always("ioperm", libc::SYS_ioperm, "raw I/O port access"),
    // Sockets that bypass the egress proxy or expose rarely audited kernel code (AF_ALG,
    // vsock, Bluetooth, packet sockets, non-route netlink).
    Rule {
        name: "socket",
        nr: libc::SYS_socket,
        when: When::SocketPolicy,
        errno: EAFNOSUPPORT,
        why: "socket family or type outside unix, IPv4, IPv6 and route netlink",
    },
    Rule {
        name: "socketpair",
        nr: libc::SYS_socketpair,
        when: When::ArgNotIn {
            arg: 0,
            values: &[libc::AF_UNIX as u32],
        },
        errno: EAFNOSUPPORT,
        why: "socket pairs other than unix",
    },
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        when: When::ArgIn {
            arg: 1,
            values: TERMINAL_INJECTION,
        },
        errno: EPERM,
        why: "injecting input into the terminal (TIOCSTI/TIOCLINUX)",
    },
    // Crediting a connection to another program's lineage (the proxy and the transparent
    // path credit a caller's ancestors only for children their current program started):
    // a sibling made with CLONE_PARENT, or an orphan adopted by a subreaper, would count as
    // that program's child. The sandbox's init is the only reaper.
    Rule {
        name: "clone",
        nr: libc::SYS_clone,
        when: When::AnyFlag {
            arg: 0,
            mask: libc::CLONE_PARENT as u32,
        },
        errno: EPERM,
        why: "re-parenting a child (CLONE_PARENT) to borrow another program's identity",
    },
    Rule {
        name: "prctl",
        nr: libc::SYS_prctl,
        when: When::ArgIn {
            arg: 0,
            values: &[PR_SET_CHILD_SUBREAPER],
        },
        errno: EPERM,
        why: "becoming a subreaper (PR_SET_CHILD_SUBREAPER) to adopt orphans and lend them \
              this program's identity",
    },
    // Connections the transparent path hands out belong to the pod's network.
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        when: When::ArgInRanges {
            arg: 1,
            ranges: INTERFACE_IOCTLS,
        },
        errno: EPERM,
        why: "socket ioctls that describe or change network interfaces, routes or ARP",
    },
    fast_open("sendto", libc::SYS_sendto, 3),
    fast_open("sendmsg", libc::SYS_sendmsg, 2),
    fast_open("sendmmsg", libc::SYS_sendmmsg, 3),
    // READ_IMPLIES_EXEC makes every readable mapping executable and ADDR_NO_RANDOMIZE turns
    // address randomization off for whatever the agent runs next: both undo exploit
    // mitigations. Only the query and plain Linux remain, as in container runtimes' default
    // profiles. (The kernel reads the argument as an unsigned int, as the filter does.)
    Rule {
        name: "personality",
        nr: libc::SYS_personality,
        when: When::ArgNotIn {
            arg: 0,
            values: &[PER_LINUX, PERSONALITY_QUERY],
        },
        errno: EPERM,
        why: "changing the execution domain (exploit mitigations off)",
    },
];

/// `personality(PER_LINUX)`: the default execution domain.
const PER_LINUX: u32 = 0;
/// `personality(0xffffffff)` only returns the current one.
const PERSONALITY_QUERY: u32 = 0xffff_ffff;

/// The first row that refuses x86_64 system call `nr` with arguments `args`, checked the way
/// the filter checks it.
pub fn rule_for(nr: c_long, args: &[u64; 6]) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.nr == nr && r.when.holds(args))
}

impl When {
    /// Whether the condition holds for `args` (the filter reads the low 32 bits, except for
    /// [`When::NonZero`]). [`When::SocketPolicy`] is decided by [`socket_refusal`].
    pub fn holds(&self, args: &[u64; 6]) -> bool {
        let low = |arg: u8| args[usize::from(arg)] as u32;
        match *self {
            When::Always => true,
            When::AnyFlag { arg, mask } => low(arg) & mask != 0,
            When::ArgIn { arg, values } => values.contains(&low(arg)),
            When::ArgNotIn { arg, values } => !values.contains(&low(arg)),
            When::ArgInRanges { arg, ranges } => {
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&low(arg)))
            }
            When::SocketPolicy => socket_refusal(low(0), low(1), low(2)).is_some(),
            When::NonZero { arg } => args[usize::from(arg)] != 0,
        }
    }
}

/// A system call the supervisor watches without refusing it.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// The call's name, for logs.
    pub name: &'static str,
    /// Its x86_64 number.
    pub nr: c_long,
    /// When it is reported.
    pub when: When,
}

/// Calls the supervisor watches without refusing them: program changes, and the network calls
/// (those that name a destination, `bind`, `listen`). With the transparent path on, it answers
/// the network calls itself, making each on the agent's socket with the address it read and
/// checked (see `proxy/transparent`). Without it, the network namespace already refuses every
/// destination but the sandbox's own loopback (no route); watching these lets the supervisor
/// log each attempt to go around the proxy with pid, executable and destination. It then only
/// reads the destination and lets the call continue, so a process racing to change it after
/// the read can falsify a log line but never reach anything.
///
/// `sendmsg`/`sendmmsg` are not watched: they carry unix-socket IPC and fd passing (including
/// the hand-over of this very filter's listener), which must not wait on the supervisor. A
/// datagram sent with them to an outside address is still refused (no route), just not logged.
pub const OBSERVED: &[Observed] = &[
    Observed {
        name: "connect",
        nr: libc::SYS_connect,
        when: When::Always,
    },
    // Only with a destination address: send(2) on a connected socket passes none and stays
    // off the supervisor's path.
    Observed {
        name: "sendto",
        nr: libc::SYS_sendto,
        when: When::NonZero { arg: 4 },
    },
    // The transparent path makes these on the agent's socket itself (see transparent/):
    // listening or binding a handed-out connection is refused, and a TCP bind in the agent's
    // own namespace is made for it (its TCP fence refuses the agent's own).
    Observed {
        name: "bind",
        nr: libc::SYS_bind,
        when: When::Always,
    },
    Observed {
        name: "listen",
        nr: libc::SYS_listen,
        when: When::Always,
    },
    // Every program change, so the proxy knows which children a process started under its
    // current program (see lineage.rs): an ancestor's allowed binary is credited only for
    // those.
    Observed {
        name: "execve",
        nr: libc::SYS_execve,
        when: When::Always,
    },
    Observed {
        name: "execveat",
        nr: libc::SYS_execveat,
        when: When::Always,
    },
];

/// The watched call for an x86_64 system call number.
pub fn observed_for(nr: c_long) -> Option<&'static Observed> {
    OBSERVED.iter().find(|o| o.nr == nr)
}

/// Why the filter refuses `socket(family, type, protocol)`, with the errno it answers, in
/// the same order the filter checks: family first (`EAFNOSUPPORT`, as a kernel without that
/// family would say), then raw and packet types (`EPERM`). `None` when the call is allowed.
pub fn socket_refusal(family: u32, kind: u32, protocol: u32) -> Option<(i32, String)> {
    if family == libc::AF_NETLINK as u32 {
        return (protocol != ALLOWED_NETLINK_PROTOCOL).then(|| {
            (
                EAFNOSUPPORT,
                format!("netlink protocol {protocol} (only NETLINK_ROUTE is allowed)"),
            )
        });
    }
    if !ALLOWED_FAMILIES.contains(&family) {
        return Some((EAFNOSUPPORT, format!("socket family {family}")));
    }
    let kind = kind & SOCK_TYPE_MASK;
    REFUSED_TYPES.contains(&kind).then(|| {
        (
            EPERM,
            format!("socket type {kind} (raw or packet) in family {family}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_calls_have_one_row_and_refused_rows_differ() {
        for (i, o) in OBSERVED.iter().enumerate() {
            assert!(
                OBSERVED[i + 1..].iter().all(|p| p.nr != o.nr),
                "{} observed twice",
                o.name
            );
        }
        for (i, r) in RULES.iter().enumerate() {
            assert!(
                RULES[i + 1..]
                    .iter()
                    .all(|q| q.nr != r.nr || q.when != r.when),
                "{} has the same row twice",
                r.name
            );
        }
    }

    #[test]
    fn clone3_is_not_a_row() {
        assert!(RULES.iter().all(|r| r.nr != libc::SYS_clone3));
    }

    #[test]
    fn rows_of_one_call_are_told_apart_by_their_arguments() {
        let args = |a: [u64; 6]| a;
        let parent = args([libc::CLONE_PARENT as u64, 0, 0, 0, 0, 0]);
        let thread = args([(libc::CLONE_VM | libc::CLONE_THREAD) as u64, 0, 0, 0, 0, 0]);
        assert!(rule_for(libc::SYS_clone, &parent).is_some_and(|r| r.why.contains("CLONE_PARENT")));
        assert!(rule_for(libc::SYS_clone, &thread).is_none());
        let siocgifconf = args([3, 0x8912, 0, 0, 0, 0]);
        let fionread = args([3, libc::FIONREAD, 0, 0, 0, 0]);
        let siocgifindex = args([3, 0x8933, 0, 0, 0, 0]);
        assert!(
            rule_for(libc::SYS_ioctl, &siocgifconf).is_some_and(|r| r.why.contains("interfaces"))
        );
        assert!(rule_for(libc::SYS_ioctl, &fionread).is_none());
        assert!(rule_for(libc::SYS_ioctl, &siocgifindex).is_none());
        let fastopen = args([3, 0, 0, MSG_FASTOPEN as u64, 1, 16]);
        assert!(rule_for(libc::SYS_sendto, &fastopen).is_some());
        assert!(rule_for(libc::SYS_sendto, &args([3, 0, 0, 0, 1, 16])).is_none());
    }
}
