//! Seccomp: the last layer, loaded right before `execve`.
//!
//! Last because a filter loaded earlier would also police the supervisor's own set-up calls
//! (mount, setns, capability changes), and because it needs no_new_privs, which the Landlock
//! step has just set. Refused calls are sent to the supervisor as user notifications, so that
//! each one is logged with pid, executable and call name while the agent still gets its errno.

mod bpf;
mod notify;
pub mod rules;
pub mod wait;

use std::os::fd::{FromRawFd, OwnedFd};

use libc::sock_filter;
use nix::errno::Errno;

pub use bpf::Deny;
pub(crate) use notify::sockaddr;
pub use notify::{
    Egress, Notice, Notification, Services, Serving, Verdict, classify, start_serving,
};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rule table outgrew BPF's jump range.
    #[error(transparent)]
    TooLong(#[from] bpf::TooLong),
    /// A program longer than the kernel accepts.
    #[error("seccomp filter has {0} instructions; the kernel accepts at most 4096")]
    TooManyInstructions(usize),
}

/// The compiled filter, ready to load after fork.
#[derive(Debug, Clone)]
pub struct Prepared {
    program: Vec<sock_filter>,
    deny: Deny,
}

/// Whether this kernel can hand refused calls to the supervisor (Linux 5.0+).
pub fn user_notification_available() -> bool {
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    rc == 0
}

/// Compiles the filter. `deny` is [`Deny::Notify`] in production when the kernel supports it.
pub fn prepare(deny: Deny) -> Result<Prepared, SeccompError> {
    let program = bpf::compile(deny)?;
    if program.len() > 4096 {
        return Err(SeccompError::TooManyInstructions(program.len()));
    }
    Ok(Prepared { program, deny })
}

impl Prepared {
    /// Number of BPF instructions, for `check`.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Always false: a compiled filter has at least its architecture check.
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Whether refusals go to the supervisor.
    pub fn notifies(&self) -> bool {
        self.deny == Deny::Notify
    }

    /// Loads the filter on the calling thread (after fork, after no_new_privs). Returns the
    /// notification listener when refusals go to the supervisor.
    pub fn apply(&self) -> Result<Option<OwnedFd>, Errno> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        let flags = if self.notifies() {
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
        } else {
            0
        };
        // SAFETY: the kernel copies the program out of `prog`, which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(Errno::last());
        }
        // SAFETY: with NEW_LISTENER the kernel returns a fresh fd that nothing else owns.
        Ok(self
            .notifies()
            .then(|| unsafe { OwnedFd::from_raw_fd(rc as i32) }))
    }
}

/// Reads back that the calling thread runs under a seccomp filter.
pub fn verify() -> Result<(), Errno> {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if mode == libc::SECCOMP_MODE_FILTER as i32 {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

#[cfg(test)]
mod tests;
