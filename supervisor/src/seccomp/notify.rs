//! The supervisor's side of the seccomp filter: receives each refused call, answers it with its
//! errno and logs it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::rules::{self, When};
use crate::log::{self, Denial, Layer, RateLimit};

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: i32 = 0x4000_0000;

/// A refused call as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    /// The caller, in the supervisor's PID namespace.
    pub pid: u32,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
    /// System call number (with the x32 bit, if any).
    pub nr: i32,
    /// Raw arguments.
    pub args: [u64; 6],
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fail the call with `errno`; log `what` and `why`.
    Deny {
        /// The errno the caller gets.
        errno: i32,
        /// The call, e.g. `ptrace` or `x32 syscall 101`.
        what: String,
        /// The rule, in words.
        why: String,
    },
}

/// Decides the answer for one notification from the same table the filter was built from.
pub fn classify(n: &Notification) -> Verdict {
    let deny = |errno: i32, what: String, why: &str| Verdict::Deny {
        errno,
        what,
        why: why.to_owned(),
    };
    if n.arch != AUDIT_ARCH_X86_64 {
        let abi = if n.arch == AUDIT_ARCH_I386 {
            "i386 (int 0x80)"
        } else {
            "foreign-architecture"
        };
        return deny(
            libc::EPERM,
            format!("{abi} syscall {}", n.nr),
            "32-bit and foreign system call ABIs are refused",
        );
    }
    if n.nr & X32_SYSCALL_BIT != 0 {
        return deny(
            libc::EPERM,
            format!("x32 syscall {}", n.nr & !X32_SYSCALL_BIT),
            "the x32 system call ABI is refused",
        );
    }
    let Some(rule) = rules::rule_for(libc::c_long::from(n.nr)) else {
        return deny(
            libc::EPERM,
            format!("syscall {}", n.nr),
            "not in the allow-list",
        );
    };
    if rule.when == When::SocketPolicy {
        let [family, kind, protocol] = [n.args[0], n.args[1], n.args[2]].map(|a| a as u32);
        let (errno, why) = rules::socket_refusal(family, kind, protocol).unwrap_or((
            libc::EPERM,
            "socket arguments changed after the filter ran".to_owned(),
        ));
        return deny(errno, "socket".to_owned(), &why);
    }
    deny(rule.errno, rule.name.to_owned(), rule.why)
}

/// Answers notifications on `listener` until every process under the filter has exited.
pub fn serve(listener: OwnedFd) {
    let limiter = RateLimit::new(50, Duration::from_secs(1));
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&listener),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(
                    "seccomp listener poll failed: {e}; refused calls now fail with ENOSYS"
                );
                return;
            }
            Ok(_) => {}
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLIN) {
            handle_one(&listener, &limiter);
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
    }
}

fn handle_one(listener: &OwnedFd, limiter: &RateLimit) {
    let fd = listener.as_raw_fd();
    // SAFETY: seccomp_notif is plain old data; the kernel requires it zeroed.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV fills `req`, a correctly sized seccomp_notif.
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV as _, &mut req) } < 0 {
        // ENOENT: the caller was interrupted or died before we looked.
        return;
    }
    let n = Notification {
        pid: req.pid,
        arch: req.data.arch,
        nr: req.data.nr,
        args: req.data.args,
    };
    let Verdict::Deny { errno, what, why } = classify(&n);
    // Read the executable while the caller is still blocked in the call, then make sure the
    // notification is still live: otherwise the pid may already belong to someone else.
    let exe = log::exe_of(n.pid);
    // SAFETY: ID_VALID reads the u64 id.
    let live = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _, &req.id) } == 0;
    let resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: -errno,
        flags: 0,
    };
    // SAFETY: SEND reads a correctly sized seccomp_notif_resp. Failure means the caller is gone.
    unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND as _, &resp) };
    if live && limiter.allow() {
        log::denied(&Denial {
            layer: Layer::Seccomp,
            pid: n.pid,
            exe: &exe,
            what: &what,
            why: &why,
            target: None,
        });
    }
}
