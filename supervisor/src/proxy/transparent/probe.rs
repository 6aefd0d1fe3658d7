//! Whether this kernel has what the transparent path needs, probed without side effects.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::fence;
use super::socket;

/// What the kernel lacks for the transparent path, in words (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// Missing features, each with the kernel that brought it and why it is needed.
    pub missing: Vec<String>,
    /// Whether `SECCOMP_IOCTL_NOTIF_ADDFD` takes the SEND flag (Linux 5.14); reported, not
    /// needed (SEND would make `connect()` return the fd number).
    pub addfd_send: bool,
}

/// Probes the kernel; `notify`: seccomp user notification works; `landlock_abi`: 0 when none.
pub fn probe(notify: bool, landlock_abi: i32) -> Probe {
    let mut missing = Vec::new();
    let mut addfd_send = false;
    if !notify {
        missing.push(
            "seccomp user notification (Linux 5.0): connect() cannot be intercepted".to_owned(),
        );
    } else {
        match std::thread::spawn(addfd).join() {
            Ok(Ok(send)) => addfd_send = send,
            _ => missing.push(
                "SECCOMP_IOCTL_NOTIF_ADDFD (Linux 5.9): a connection cannot be handed to the agent"
                    .to_owned(),
            ),
        }
    }
    // SAFETY: pidfd_getfd on an invalid pidfd only reports an error.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0u32) };
    if rc < 0 && Errno::last() == Errno::ENOSYS {
        missing.push("pidfd_getfd (Linux 5.6): the agent's socket cannot be read".to_owned());
    }
    if socket::current_netns().is_err() {
        missing.push(
            "SO_NETNS_COOKIE (Linux 5.14): handed-out connections cannot be told apart".to_owned(),
        );
    }
    if landlock_abi < fence::MIN_ABI {
        missing.push(format!(
            "Landlock ABI {} (Linux 6.7; this kernel has {landlock_abi}): TCP bind and connect \
             control, which keeps handed-out connections from being reconnected elsewhere",
            fence::MIN_ABI
        ));
    }
    Probe {
        missing,
        addfd_send,
    }
}

/// On a throw-away thread: a listener from an allow-all filter, asked to add an fd to a
/// notification that does not exist (ENOENT: the ioctl and the flag are known).
fn addfd() -> Result<bool, Errno> {
    // No new privileges for this thread only, which ends right after.
    nix::sys::prctl::set_no_new_privs()?;
    let allow = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: allow.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the one-instruction program; the filter dies with the thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    // SAFETY: NEW_LISTENER returned a new fd nothing else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(Errno::result(rc)? as i32) };
    let ask = |flags: u64| {
        let addfd = libc::seccomp_notif_addfd {
            id: 0,
            flags: flags as u32,
            srcfd: 0,
            newfd: 0,
            newfd_flags: 0,
        };
        // SAFETY: ADDFD reads a correctly sized struct; no notification 0 exists.
        let rc = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                &addfd,
            )
        };
        (rc < 0).then(Errno::last)
    };
    match ask(libc::SECCOMP_ADDFD_FLAG_SETFD) {
        Some(Errno::ENOENT) => {}
        Some(e) => return Err(e),
        None => return Err(Errno::EINVAL),
    }
    Ok(ask(libc::SECCOMP_ADDFD_FLAG_SEND) == Some(Errno::ENOENT))
}

/// `check`'s lines about the transparent path; a policy with `protocol: tcp` endpoints on a
/// kernel that cannot serve them is a problem (the sandbox would not start).
pub fn describe(
    out: &mut String,
    problems: &mut Vec<String>,
    policy: &crate::policy::Policy,
    probe: &Probe,
) {
    use std::fmt::Write as _;
    let send = if probe.addfd_send {
        "present (not needed)"
    } else {
        "absent (not needed)"
    };
    if probe.missing.is_empty() {
        let _ = writeln!(
            out,
            "  transparent egress: on (seccomp user notification with ADDFD, pidfd_getfd, \
             SO_NETNS_COOKIE, Landlock TCP fence): direct connections and DNS lookups meet the \
             policy; ADDFD's SEND flag: {send}"
        );
        return;
    }
    let _ = writeln!(
        out,
        "  transparent egress: OFF, this kernel lacks: {}; only clients that use the proxy \
         reach the network, the sandbox has no DNS, and protocol: tcp endpoints are refused",
        probe.missing.join("; ")
    );
    let direct_only: Vec<String> = policy
        .network
        .iter()
        .flat_map(|rule| &rule.endpoints)
        .filter(|e| e.reach == crate::policy::Reach::Transparent)
        .map(|e| e.host.to_string())
        .collect();
    if !direct_only.is_empty() {
        problems.push(format!(
            "protocol: tcp endpoints ({}) need transparent egress, which this kernel cannot \
             provide",
            direct_only.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{self, PolicyOrigin};

    #[test]
    fn check_says_what_is_missing_and_refuses_protocol_tcp_without_it() {
        let origin = PolicyOrigin::BuiltinDefault;
        let text = "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{ host: redis.example, \
                    port: 6379, protocol: tcp }]\n    binaries: [{ path: /usr/bin/redis-cli }]\n";
        let policy = policy::validate(
            policy::parse(text, &origin).unwrap(),
            origin,
            Path::new("/w"),
        )
        .unwrap();
        let old = Probe {
            missing: vec!["Landlock ABI 4 (Linux 6.7; this kernel has 2)".to_owned()],
            addfd_send: true,
        };
        let (mut out, mut problems) = (String::new(), Vec::new());
        describe(&mut out, &mut problems, &policy, &old);
        assert!(
            out.contains("transparent egress: OFF, this kernel lacks: Landlock ABI 4"),
            "{out}"
        );
        assert_eq!(
            problems,
            [
                "protocol: tcp endpoints (redis.example) need transparent egress, which this \
              kernel cannot provide"
            ]
        );
        let (mut out, mut problems) = (String::new(), Vec::new());
        describe(&mut out, &mut problems, &policy, &Probe::default());
        assert!(out.contains("transparent egress: on"), "{out}");
        assert!(problems.is_empty());
    }
}
