//! Filter tests: each case loads the filter in a fresh thread (filters are per thread) with a
//! sentinel errno, so "refused by our filter" cannot be confused with "refused by the kernel".
// Every unsafe block here is one raw system call with scalar arguments, null pointers or
// pointers to locals; none has anything more to justify.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::arch::asm;

use super::{Deny, prepare, rules, verify};

const SENTINEL: i32 = 4095;
const OBSERVED: i32 = 4094;
const SENTINELS: Deny = Deny::Sentinel {
    refused: SENTINEL as u16,
    observed: OBSERVED as u16,
};

/// Runs `call` in a new thread under the filter and returns its raw result and errno.
fn filtered(call: fn() -> i64) -> (i64, i32) {
    std::thread::spawn(move || {
        let filter = prepare(SENTINELS).unwrap();
        // SAFETY: per-thread prctl without pointers.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            0
        );
        assert!(filter.apply().unwrap().is_none());
        verify().unwrap();
        let rc = call();
        (
            rc,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        )
    })
    .join()
    .unwrap()
}

fn refused(call: fn() -> i64) -> bool {
    filtered(call) == (-1, SENTINEL)
}

/// An i386 system call through `int 0x80` (IA32 emulation).
fn int80(nr: u32) -> i64 {
    let ret: i32;
    // SAFETY: the i386 getpid/getuid calls used here take no arguments and touch no memory.
    unsafe { asm!("int 0x80", inlateout("eax") nr as i32 => ret, options(nostack)) };
    i64::from(ret)
}

#[test]
fn unconfined_baselines_work() {
    // SAFETY: getpid has no arguments.
    assert!(
        int80(20) > 0,
        "IA32 emulation is off: the int 0x80 case cannot be tested"
    );
    // SAFETY: socket with constant arguments; the fd is closed.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "root can open packet sockets without the filter");
    // SAFETY: closing the fd we own.
    unsafe { libc::close(fd) };
}

#[test]
fn refuses_the_table() {
    // SAFETY (all closures): raw system calls with scalar arguments or null pointers.
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0)
    }));
    assert!(refused(|| unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_io_uring_setup, 8, 0)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_keyctl, 0, 0, 0)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0)
    }));
    assert!(refused(|| unsafe { libc::syscall(libc::SYS_setns, -1, 0) }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, -1, 0, 0)
    }));
}

#[test]
fn namespace_flags_are_refused_and_others_allowed() {
    // SAFETY: unshare with flag constants.
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWTIME)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_FILES | libc::CLONE_NEWNET)
    }));
    assert_eq!(
        filtered(|| unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FILES) }).0,
        0
    );
    // clone(2) with a namespace flag, as a fork would make it (no stack, SIGCHLD).
    assert!(refused(|| unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    }));
}

#[test]
fn clone3_gets_enosys_and_threads_still_start() {
    // SAFETY: clone3 with a null argument block.
    assert_eq!(
        filtered(|| unsafe { libc::syscall(libc::SYS_clone3, 0, 0) }),
        (-1, libc::ENOSYS)
    );
    let (started, _) = filtered(|| i64::from(std::thread::spawn(|| 7).join().unwrap_or(0)));
    assert_eq!(started, 7, "libc must fall back from clone3 to clone");
}

#[test]
fn sockets_by_family_type_and_protocol() {
    // SAFETY (all): socket(2) with constant arguments; successful fds are leaked in a thread
    // that exits immediately, which is harmless in a test.
    assert!(
        filtered(|| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) } as i64).0 >= 0
    );
    assert!(
        filtered(|| unsafe {
            libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        } as i64)
        .0 >= 0
    );
    assert!(
        filtered(|| unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) } as i64).0 >= 0
    );
    assert!(
        filtered(|| unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        } as i64)
        .0 >= 0
    );
    assert!(refused(
        || unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) } as i64
    ));
    assert!(refused(
        || unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) } as i64
    ));
    assert!(refused(
        || unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } as i64
    ));
    assert!(refused(|| unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, 1)
    } as i64));
    assert!(refused(
        || unsafe { libc::socket(libc::AF_INET, 10, 0) } as i64
    ));
    assert!(refused(|| unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT)
    } as i64));
    assert!(refused(|| unsafe {
        let mut fds = [0; 2];
        libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, fds.as_mut_ptr())
    } as i64));
}

#[test]
fn tiocsti_is_refused_even_with_high_bits_set() {
    // SAFETY: ioctl on fd -1 never dereferences the argument; the filter decides first.
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_ioctl, -1, libc::TIOCSTI, 0)
    }));
    assert!(refused(|| unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            -1,
            0xffff_ffff_0000_0000u64 | libc::TIOCSTI,
            0,
        )
    }));
    let (_, errno) = filtered(|| unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TCGETS, 0) });
    assert_eq!(errno, libc::EBADF, "other ioctls reach the kernel");
}

#[test]
fn personality_only_queries_and_plain_linux() {
    // ADDR_NO_RANDOMIZE and READ_IMPLIES_EXEC; the kernel reads an unsigned int, so high bits
    // do not hide the low ones.
    // SAFETY (all closures): personality takes one integer; the filter decides first, and a
    // change only affects the test's own short-lived thread.
    let refused_personas: [fn() -> i64; 3] = [
        || unsafe { libc::syscall(libc::SYS_personality, 0x0040000u64) },
        || unsafe { libc::syscall(libc::SYS_personality, 0x0400000u64) },
        || unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_0004_0000u64) },
    ];
    for (i, call) in refused_personas.into_iter().enumerate() {
        assert!(refused(call), "persona {i}");
    }
    let query = filtered(|| unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) });
    let linux = filtered(|| unsafe { libc::syscall(libc::SYS_personality, 0u64) });
    assert!(query.0 >= 0 && linux.0 >= 0, "{query:?} {linux:?}");
}

#[test]
fn other_abis_are_refused() {
    // x32 is off on this kernel, so unfiltered it fails with ENOSYS; filtered we answer first.
    // SAFETY: getpid with the x32 bit.
    assert!(refused(|| unsafe {
        libc::syscall(libc::SYS_getpid | 0x4000_0000)
    }));
    let (rc, _) = filtered(|| int80(20));
    assert_eq!(rc, -i64::from(SENTINEL), "int 0x80 getpid must be refused");
}

#[test]
fn ordinary_calls_pass() {
    // SAFETY: getpid/memfd_create with a static name.
    assert!(filtered(|| unsafe { libc::syscall(libc::SYS_getpid) }).0 > 0);
    assert!(
        filtered(|| unsafe { libc::syscall(libc::SYS_memfd_create, c"v8".as_ptr(), 0) }).0 >= 0
    );
}

#[test]
fn per_rule_errnos_without_notification() {
    let errno = std::thread::spawn(|| {
        let filter = prepare(Deny::RuleErrno).unwrap();
        // SAFETY: per-thread prctl; socket with constants.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        filter.apply().unwrap();
        let family = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        let family_errno = std::io::Error::last_os_error().raw_os_error();
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 1) };
        let raw_errno = std::io::Error::last_os_error().raw_os_error();
        (family, family_errno, raw, raw_errno)
    })
    .join()
    .unwrap();
    assert_eq!(errno, (-1, Some(libc::EAFNOSUPPORT), -1, Some(libc::EPERM)));
}

#[test]
fn classification_matches_the_filter() {
    use super::{Notification, Verdict, classify};
    let n = |arch: u32, nr: i64, args: [u64; 6]| Notification {
        pid: 1,
        arch,
        nr: nr as i32,
        args,
    };
    let classify = |n: &Notification| classify(n, &|_, _| None);
    let errno = |v: Verdict| match v {
        Verdict::Deny { errno, .. } => errno,
        Verdict::Continue(_) | Verdict::Exec => 0,
    };
    assert_eq!(
        errno(classify(&n(0xC000_003E, libc::SYS_ptrace, [0; 6]))),
        libc::EPERM
    );
    let packet = [libc::AF_PACKET as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0];
    assert_eq!(
        errno(classify(&n(0xC000_003E, libc::SYS_socket, packet))),
        libc::EAFNOSUPPORT
    );
    let raw = [libc::AF_INET as u64, libc::SOCK_RAW as u64, 1, 0, 0, 0];
    assert_eq!(
        errno(classify(&n(0xC000_003E, libc::SYS_socket, raw))),
        libc::EPERM
    );
    let what = |v: Verdict| match v {
        Verdict::Deny { what, .. } => what,
        Verdict::Continue(_) | Verdict::Exec => String::new(),
    };
    assert_eq!(
        what(classify(&n(0x4000_0003, 20, [0; 6]))),
        "i386 (int 0x80) syscall 20"
    );
    assert_eq!(
        what(classify(&n(0xC000_003E, 0x4000_0027, [0; 6]))),
        "x32 syscall 39"
    );
    assert!(rules::rule_for(libc::SYS_memfd_create, &[0; 6]).is_none());
}

#[test]
fn socket_classification_agrees_with_the_filter_everywhere() {
    let disagreements = std::thread::spawn(|| {
        let filter = prepare(SENTINELS).unwrap();
        // SAFETY: per-thread prctl.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        filter.apply().unwrap();
        let mut wrong = Vec::new();
        for family in 0..46 {
            for kind in [1, 2, 3, 4, 5, 6, 10] {
                for protocol in [0, libc::NETLINK_AUDIT, 6] {
                    // SAFETY: socket with scalar arguments; a created fd is closed at once.
                    let fd = unsafe { libc::socket(family, kind, protocol) };
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    if fd >= 0 {
                        // SAFETY: closing the fd just created.
                        unsafe { libc::close(fd) };
                    }
                    let by_filter = fd < 0 && errno == Some(SENTINEL);
                    let by_table =
                        rules::socket_refusal(family as u32, kind as u32, protocol as u32)
                            .is_some();
                    if by_filter != by_table {
                        wrong.push((family, kind, protocol, by_filter));
                    }
                }
            }
        }
        wrong
    })
    .join()
    .unwrap();
    assert!(disagreements.is_empty(), "{disagreements:?}");
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut raw = vec![0u8; 16];
    raw[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    raw[2..4].copy_from_slice(&port.to_be_bytes());
    raw[4..8].copy_from_slice(&ip);
    raw
}

fn sockaddr_in6(ip: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
    let mut raw = vec![0u8; 28];
    raw[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    raw[2..4].copy_from_slice(&port.to_be_bytes());
    raw[8..24].copy_from_slice(&ip.octets());
    raw
}

/// Classifies an observed call against a fake address space.
fn observe(nr: i64, args: [u64; 6], memory: &[(u64, Vec<u8>)]) -> Option<super::Egress> {
    use super::{Notification, Verdict, classify};
    let n = Notification {
        pid: 1,
        arch: 0xC000_003E,
        nr: nr as i32,
        args,
    };
    let read = |address: u64, len: usize| {
        memory
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, bytes)| bytes[..len.min(bytes.len())].to_vec())
    };
    match classify(&n, &read) {
        Verdict::Continue(report) => report,
        Verdict::Exec => None,
        Verdict::Deny { what, .. } => panic!("{what} must not be refused"),
    }
}

#[test]
fn direct_egress_is_reported_and_loopback_is_not() {
    let outside = observe(
        libc::SYS_connect,
        [3, 0x1000, 16, 0, 0, 0],
        &[(0x1000, sockaddr_in([1, 1, 1, 1], 443))],
    );
    let outside = outside.expect("a connect to 1.1.1.1 is reported");
    assert_eq!(outside.what, "connect to 1.1.1.1:443");
    assert!(outside.why.contains("no route"));
    let proxy = observe(
        libc::SYS_connect,
        [3, 0x1000, 16, 0, 0, 0],
        &[(0x1000, sockaddr_in([127, 0, 0, 1], 3128))],
    );
    assert!(proxy.is_none(), "the proxy is on loopback");
    let mapped = "::ffff:127.0.0.1".parse().unwrap();
    assert!(
        observe(
            libc::SYS_connect,
            [3, 0x1000, 28, 0, 0, 0],
            &[(0x1000, sockaddr_in6(mapped, 80))]
        )
        .is_none()
    );
    let v6 = observe(
        libc::SYS_connect,
        [3, 0x1000, 28, 0, 0, 0],
        &[(
            0x1000,
            sockaddr_in6("2606:4700::1111".parse().unwrap(), 443),
        )],
    );
    assert_eq!(v6.unwrap().what, "connect to [2606:4700::1111]:443");
    let mut unix = vec![0u8; 16];
    unix[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    assert!(
        observe(
            libc::SYS_connect,
            [3, 0x1000, 16, 0, 0, 0],
            &[(0x1000, unix)]
        )
        .is_none()
    );
    assert!(
        observe(libc::SYS_connect, [3, 0x1000, 16, 0, 0, 0], &[]).is_none(),
        "unreadable memory"
    );
}

#[test]
fn udp_destinations_through_sendto() {
    let dns = observe(
        libc::SYS_sendto,
        [3, 0x2000, 40, 0, 0x1000, 16],
        &[(0x1000, sockaddr_in([8, 8, 8, 8], 53))],
    );
    let dns = dns.expect("UDP to port 53 is reported");
    assert_eq!(dns.what, "sendto to 8.8.8.8:53");
    assert!(dns.why.contains("direct DNS"));
}

#[test]
fn destinations_go_to_the_supervisor_and_plain_sends_do_not() {
    let observed = |call: fn() -> i64| filtered(call) == (-1, OBSERVED);
    assert!(observed(
        || unsafe { libc::connect(-1, std::ptr::null(), 0) } as i64
    ));
    // sendmsg carries fd passing and IPC: never waits on the supervisor.
    assert_eq!(
        filtered(|| unsafe { libc::sendmsg(-1, std::ptr::null(), 0) } as i64).1,
        libc::EBADF
    );
    assert!(observed(|| unsafe {
        libc::syscall(libc::SYS_sendto, -1, 0, 0, 0, 0x7fff_0000_0000u64, 16)
    }));
    assert!(observed(|| unsafe {
        libc::syscall(libc::SYS_sendto, -1, 0, 0, 0, 0x1000, 16)
    }));
    // send(2) is sendto with a null destination: allowed outright (EBADF from the kernel).
    let (_, errno) =
        filtered(
            || unsafe { libc::sendto(-1, std::ptr::null(), 0, 0, std::ptr::null(), 0) } as i64,
        );
    assert_eq!(errno, libc::EBADF);
}
