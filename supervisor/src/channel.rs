//! The control channel from the sandbox (init, and the agent before `execve`) to the supervisor.
//!
//! A `SOCK_SEQPACKET` pair: one datagram per message, so messages never merge or split. The
//! sandbox side writes from a forked child, so encoding uses a stack buffer and one `send`, no
//! allocation. The agent's copy of the socket is close-on-exec: once the agent program runs it
//! cannot talk to the supervisor.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};

const HEADER: usize = 16;
const MAX_DETAIL: usize = 200;
const MAX_MESSAGE: usize = HEADER + MAX_DETAIL;

const AGENT_SPAWNED: u32 = 1;
const FAILED: u32 = 2;
const UNVERIFIED: u32 = 3;
const CONFINED: u32 = 4;
const EXEC_FAILED: u32 = 5;
const EXITED: u32 = 6;
const SECCOMP_LISTENER: u32 = 7;
const CAPABILITY_SURVIVED: u32 = 8;
/// The one message the other way, supervisor to init: every supervisor thread exists, the
/// agent may be started.
const GO: u32 = 9;

/// A message as the supervisor receives it.
#[derive(Debug)]
pub enum Message {
    /// Init forked the agent (its pid inside the sandbox).
    AgentSpawned(i32),
    /// A set-up step failed with an errno.
    Failed {
        /// The step.
        step: String,
        /// The error.
        errno: Errno,
    },
    /// A read-back after a step found the wrong state.
    Unverified {
        /// What was checked.
        check: String,
        /// The value found (a capability number, securebits...).
        value: i64,
    },
    /// A capability read back as still held after the sets were emptied.
    CapabilitySurvived {
        /// Which set, in words.
        set: String,
        /// The capability's number.
        cap: u32,
    },
    /// Every layer is applied and verified; `execve` follows.
    Confined,
    /// `execve` failed for every candidate path.
    ExecFailed {
        /// The errno reported (EACCES wins over ENOENT, as in execvp).
        errno: Errno,
        /// Index of the candidate it refers to.
        candidate: usize,
    },
    /// The agent exited (raw wait status).
    Exited(i32),
    /// The seccomp notification listener.
    SeccompListener(OwnedFd),
}

/// A set-up step in the sandbox that failed with an errno, as [`Sender::failed`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFailure<'a> {
    /// The step.
    pub what: &'a str,
    /// The error.
    pub errno: Errno,
}

impl<'a> StepFailure<'a> {
    /// For `map_err`: `what` failed with the errno given.
    pub fn of(what: &'a str) -> impl FnOnce(Errno) -> StepFailure<'a> {
        move |errno| StepFailure { what, errno }
    }
}

/// Creates the pair: (supervisor end, sandbox end). Both close-on-exec.
pub fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// The sandbox end: allocation-free; it sends, and receives only [`go`].
#[derive(Debug, Clone, Copy)]
pub struct Sender(pub RawFd);

impl Sender {
    fn send(self, kind: u32, errno: i32, value: i64, detail: &str) {
        let mut buf = [0u8; MAX_MESSAGE];
        buf[0..4].copy_from_slice(&kind.to_ne_bytes());
        buf[4..8].copy_from_slice(&errno.to_ne_bytes());
        buf[8..16].copy_from_slice(&value.to_ne_bytes());
        let detail = &detail.as_bytes()[..detail.len().min(MAX_DETAIL)];
        buf[HEADER..HEADER + detail.len()].copy_from_slice(detail);
        // MSG_NOSIGNAL turns a dead supervisor into EPIPE rather than SIGPIPE. There is nobody
        // to report a failure to.
        let _ = nix::sys::socket::send(
            self.0,
            &buf[..HEADER + detail.len()],
            MsgFlags::MSG_NOSIGNAL,
        );
    }

    /// Init forked the agent.
    pub fn agent_spawned(self, pid: i32) {
        self.send(AGENT_SPAWNED, 0, i64::from(pid), "");
    }

    /// `step` failed with `errno`.
    pub fn failed(self, step: &str, errno: Errno) {
        self.send(FAILED, errno as i32, 0, step);
    }

    /// The step `failure` names failed.
    pub fn step_failed(self, failure: StepFailure<'_>) {
        self.failed(failure.what, failure.errno);
    }

    /// The read-back `check` found `value`.
    pub fn unverified(self, check: &str, value: i64) {
        self.send(UNVERIFIED, 0, value, check);
    }

    /// Capability `cap` survived in `set`.
    pub fn capability_survived(self, set: &str, cap: u32) {
        self.send(CAPABILITY_SURVIVED, 0, i64::from(cap), set);
    }

    /// All layers in place.
    pub fn confined(self) {
        self.send(CONFINED, 0, 0, "");
    }

    /// `execve` failed.
    pub fn exec_failed(self, errno: Errno, candidate: usize) {
        self.send(EXEC_FAILED, errno as i32, candidate as i64, "");
    }

    /// The agent exited with `status`.
    pub fn exited(self, status: i32) {
        self.send(EXITED, 0, i64::from(status), "");
    }

    /// Waits for the supervisor's [`go`]. `Err` when the supervisor is gone or said anything
    /// else: the agent must not start.
    pub fn wait_for_go(self) -> Result<(), Errno> {
        let mut buf = [0u8; HEADER];
        loop {
            match nix::sys::socket::recv(self.0, &mut buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(HEADER) if u32::from_ne_bytes(array(&buf)) == GO => return Ok(()),
                Ok(_) => return Err(Errno::EBADMSG),
            }
        }
    }

    /// Passes the seccomp listener to the supervisor.
    pub fn seccomp_listener(self, listener: RawFd) -> Result<(), Errno> {
        let mut buf = [0u8; HEADER];
        buf[0..4].copy_from_slice(&SECCOMP_LISTENER.to_ne_bytes());
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one cmsghdr carrying one fd, aligned as the kernel expects.
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain old data; every pointer set below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as _;
        // SAFETY: the control buffer holds at least one cmsghdr (checked by CMSG_FIRSTHDR).
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if cmsg.is_null() {
            return Err(Errno::ENOBUFS);
        }
        // SAFETY: `cmsg` points into `control`, sized by CMSG_SPACE for one fd.
        unsafe {
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            libc::CMSG_DATA(cmsg)
                .cast::<RawFd>()
                .write_unaligned(listener);
        }
        // SAFETY: `msg` and everything it points to are valid for the call.
        let rc = unsafe { libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL) };
        Errno::result(rc).map(drop)
    }
}

/// Tells init (waiting in [`Sender::wait_for_go`]) that it may start the agent.
pub fn go(fd: &OwnedFd) -> Result<(), Errno> {
    let mut buf = [0u8; HEADER];
    buf[0..4].copy_from_slice(&GO.to_ne_bytes());
    nix::sys::socket::send(fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL).map(drop)
}

/// Receives one message on the supervisor end. `Ok(None)` when every sandbox end is closed.
pub fn receive(fd: &OwnedFd) -> Result<Option<Message>, Errno> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut control = nix::cmsg_space!(RawFd);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: SCM_RIGHTS installed these fds in our table; we own them now.
                fds.extend(
                    received
                        .into_iter()
                        .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(None);
    }
    if len < HEADER {
        return Err(Errno::EBADMSG);
    }
    let kind = u32::from_ne_bytes(array(&buf[0..]));
    let errno = Errno::from_raw(i32::from_ne_bytes(array(&buf[4..])));
    let value = i64::from_ne_bytes(array(&buf[8..]));
    let detail = String::from_utf8_lossy(&buf[HEADER..len]).into_owned();
    Ok(Some(match kind {
        AGENT_SPAWNED => Message::AgentSpawned(value as i32),
        FAILED => Message::Failed {
            step: detail,
            errno,
        },
        UNVERIFIED => Message::Unverified {
            check: detail,
            value,
        },
        CAPABILITY_SURVIVED => Message::CapabilitySurvived {
            set: detail,
            cap: u32::try_from(value).map_err(|_| Errno::EBADMSG)?,
        },
        CONFINED => Message::Confined,
        EXEC_FAILED => Message::ExecFailed {
            errno,
            candidate: value as usize,
        },
        EXITED => Message::Exited(value as i32),
        SECCOMP_LISTENER => Message::SeccompListener(fds.into_iter().next().ok_or(Errno::EBADMSG)?),
        _ => return Err(Errno::EBADMSG),
    }))
}

/// The first `N` bytes of `bytes` (callers pass slices of a full header).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}
