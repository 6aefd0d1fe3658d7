//! The supervisor's side of the seccomp filter: receives each refused call, answers it with its
//! errno and logs it; hands the network calls it observes (connect, bind, listen, sendto) to
//! the transparent egress path when there is one, and otherwise lets them continue, logging
//! those that try to leave the sandbox around the proxy.
//!
//! A notification is answered exactly once, through [`Notice`]: now, from the serving thread,
//! or later, from a thread that waits for a connection on the caller's behalf ([`wait`]).
//! Waiting never happens on a serving thread, so one slow connection does not delay anyone
//! else's calls. The serving threads have a descriptor table of their own ([`start_serving`]).

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::rules::{self, When};
use super::wait;
use crate::lineage::Lineage;
use crate::log::{self, Denial, Layer, RateLimit};
use crate::procfs;
use crate::proxy::transparent::{self, Transparent};

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
    /// Let the kernel run the call; log `(what, destination, why)` when present.
    Continue(Option<Egress>),
    /// A program change: record the caller's children (lineage.rs), then let it run.
    Exec,
}

/// An attempt to reach the network around the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// The call and its destination, e.g. `connect to 1.1.1.1:443`.
    pub what: String,
    /// Where it tried to go.
    pub destination: SocketAddr,
    /// Why it cannot get there.
    pub why: &'static str,
}

/// Reads `len` bytes at `addr` in the caller's memory.
pub type ReadMemory<'a> = &'a dyn Fn(u64, usize) -> Option<Vec<u8>>;

/// Decides the answer for one notification from the same tables the filter was built from.
/// `memory` reads the caller's memory, for the destinations of observed calls.
pub fn classify(n: &Notification, memory: ReadMemory<'_>) -> Verdict {
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
    // Refused rows first, as in the filter: `sendto` with MSG_FASTOPEN is refused even with
    // an address, which would otherwise make it an observed call.
    if let Some(rule) = rules::rule_for(libc::c_long::from(n.nr), &n.args) {
        if rule.when == When::SocketPolicy {
            let [family, kind, protocol] = [n.args[0], n.args[1], n.args[2]].map(|a| a as u32);
            if let Some((errno, why)) = rules::socket_refusal(family, kind, protocol) {
                return deny(errno, "socket".to_owned(), &why);
            }
        }
        return deny(rule.errno, rule.name.to_owned(), rule.why);
    }
    if let Some(observed) = rules::observed_for(libc::c_long::from(n.nr)) {
        if observed.name.starts_with("execve") {
            return Verdict::Exec;
        }
        return Verdict::Continue(egress(observed.name, n, memory));
    }
    deny(
        libc::EPERM,
        format!("syscall {}", n.nr),
        "not in the allow-list",
    )
}

/// The destination of an observed call, when it leaves the sandbox's loopback.
fn egress(call: &str, n: &Notification, memory: ReadMemory<'_>) -> Option<Egress> {
    let (address, len) = match call {
        "connect" => (n.args[1], n.args[2]),
        "sendto" => (n.args[4], n.args[5]),
        _ => return None,
    };
    if address == 0 {
        return None;
    }
    let destination = sockaddr(&memory(address, len.min(128) as usize)?)?;
    if canonical_loopback(destination.ip()) {
        return None;
    }
    let why = if destination.port() == 53 {
        "direct DNS: the sandbox has no resolver; the proxy resolves names (use HTTP_PROXY/HTTPS_PROXY)"
    } else {
        "no route out of the sandbox: its only way out is the proxy at 127.0.0.1:3128 (HTTP_PROXY/HTTPS_PROXY)"
    };
    Some(Egress {
        what: format!("{call} to {destination}"),
        destination,
        why,
    })
}

fn canonical_loopback(ip: IpAddr) -> bool {
    crate::policy::canonical_ip(ip).is_loopback()
}

/// An IPv4 or IPv6 `struct sockaddr`; other families (unix, netlink, unspec) give `None`.
pub(crate) fn sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let octets: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
        }
        libc::AF_INET6 => {
            let octets: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        _ => None,
    }
}

/// Reads another process's memory (the supervisor holds CAP_SYS_PTRACE for this).
fn read_memory(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: writes at most `len` bytes into `buf`; the remote side is only read.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (n == len as isize).then_some(buf)
}

/// What the notifications are served with.
#[derive(Debug, Clone)]
pub struct Services {
    /// Program changes are recorded here.
    pub lineage: Arc<Lineage>,
    /// The transparent egress path; without it, network calls continue (and fail in the
    /// sandbox's namespace, which has no route out) and are logged.
    pub transparent: Option<Arc<Transparent>>,
}

/// Threads answering notifications: a second one keeps the agent's calls flowing while the
/// first reads /proc for another caller (each notification goes to one of them).
const SERVING_THREADS: usize = 2;

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` (Linux 6.6).
const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`: the caller and the serving thread hand the CPU to
/// each other at each notification and answer instead of waking each other on another CPU.
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// The serving threads, started by [`start_serving`] and waiting for the listener.
#[derive(Debug)]
pub struct Serving {
    /// The supervisor's end of the socket that carries the listener into the serving threads'
    /// descriptor table.
    socket: OwnedFd,
    services: SyncSender<Services>,
}

impl Serving {
    /// Hands the serving threads the listener and what its notifications are served with.
    /// Dropping a `Serving` undelivered (the sandbox failed before its seccomp step) ends them.
    pub fn deliver(self, listener: OwnedFd, services: Services) -> Result<(), Errno> {
        self.services.try_send(services).map_err(|_| Errno::EPIPE)?;
        let fds = [listener.as_raw_fd()];
        sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(&[0])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
    }
}

/// Starts the threads that answer notifications, every one of them before the agent runs: the
/// agent shares the pod's pids limit, and one that forks up to it leaves no room for a thread
/// made once the listener arrives (the calls it would answer then wait forever).
///
/// They have a descriptor table of their own. Each notification needs a few descriptors for a
/// moment (a pidfd, the agent's socket, a `/proc` file, a new connection), and the proxy, which
/// holds descriptors for every tunnel the agent opens, can use up the process's limit: with one
/// table for all, the agent's own `connect()` to the proxy then failed with EMFILE instead of
/// waiting in the proxy's backlog, and reserving descriptors in a shared table cannot work (a
/// freed one goes to whichever thread asks first). Waits and hashing run on threads of that
/// table too ([`wait`]): a descriptor of one table means nothing in the other, so nothing
/// opened there is ever handed to the proxy's runtime, and the listener, which arrives later,
/// comes in through a socket of both tables ([`Serving::deliver`]).
pub fn start_serving() -> std::io::Result<Serving> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let number = theirs.as_raw_fd();
    let (services, delivered) = sync_channel::<Services>(1);
    let (ready, started) = sync_channel::<Started>(1);
    std::thread::Builder::new()
        .name("seccomp".into())
        .spawn(move || serve_apart(theirs, &ready, delivered))?;
    let Ok(Started { apart, threads }) = started.recv() else {
        return Err(std::io::Error::other(
            "the seccomp thread ended before it started",
        ));
    };
    // The thread's `theirs` names its own table's copy once it has one; the shared table's copy
    // then belongs to nobody, and is closed here.
    if apart {
        // SAFETY: `number` is open in this table and no object of this table owns it (the
        // OwnedFd moved to the thread now names the copy in that thread's own table).
        drop(unsafe { OwnedFd::from_raw_fd(number) });
    }
    threads?;
    Ok(Serving {
        socket: ours,
        services,
    })
}

/// What the first serving thread reports once it is ready for the listener.
struct Started {
    /// Whether its descriptor table is its own.
    apart: bool,
    /// Whether the threads it starts (the waiter's, the second serving one) could be made.
    threads: std::io::Result<()>,
}

/// On the thread started for it: makes the descriptor table private (keeping `socket`), starts
/// the other threads in it, says so on `ready`, then serves the listener that `socket` brings.
fn serve_apart(socket: OwnedFd, ready: &SyncSender<Started>, delivered: Receiver<Services>) {
    // No signal handler may run on a thread of the other table (see wait.rs).
    wait::block_signals();
    let apart = match own_table(&socket) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "seccomp notifications served from the shared descriptor table ({e}): out of \
                 descriptors, the proxy can make the agent's connect() fail"
            );
            false
        }
    };
    let waiting = match wait::Waiter::start() {
        Ok(running) => running,
        Err(e) => {
            let _ = ready.send(Started {
                apart,
                threads: Err(e),
            });
            return;
        }
    };
    let serve = |served: &Served| {
        wait::enter(waiting.waiter());
        serve_loop(served);
    };
    let served = std::thread::scope(|scope| {
        let mut shares = Vec::new();
        for _ in 1..SERVING_THREADS {
            let (share, shared) = sync_channel::<Arc<Served>>(1);
            let spawned = std::thread::Builder::new()
                .name("seccomp".into())
                .spawn_scoped(scope, move || {
                    if let Ok(served) = shared.recv() {
                        serve(&served);
                    }
                });
            if let Err(e) = spawned {
                // The threads started so far end as `shares` is dropped.
                let _ = ready.send(Started {
                    apart,
                    threads: Err(e),
                });
                return None;
            }
            shares.push(share);
        }
        let _ = ready.send(Started {
            apart,
            threads: Ok(()),
        });
        // Nothing comes when the sandbox failed before its seccomp step.
        let (listener, services) = receive_listener(&socket, &delivered)?;
        // Every connect() of the agent waits for its answer: a notification is a synchronous
        // call, and handing the CPU over (rather than waking a thread elsewhere) makes the
        // round trip several times cheaper. Older kernels (before 6.6) lack it and keep the
        // usual wake-up.
        // SAFETY: SET_FLAGS takes the flags as its integer argument.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        let served = Arc::new(Served {
            listener: Arc::new(listener),
            limiter: RateLimit::new(50, Duration::from_secs(1)),
            services,
        });
        for share in shares {
            let _ = share.send(Arc::clone(&served));
        }
        serve(&served);
        Some(served)
    });
    // Pending waits end with the agent.
    waiting.stop();
    // The services hold descriptors of the shared table (the proxy's): dropped here, where the
    // same numbers name other descriptors or none, they would close the wrong ones. They are
    // left for the process's end, which follows the agent's; so is a delivery never taken.
    std::mem::forget(served);
    std::mem::forget(delivered);
}

/// What every serving thread answers notifications with.
struct Served {
    /// The listener, in the serving threads' table.
    listener: Arc<OwnedFd>,
    /// Shared by the threads' log lines.
    limiter: RateLimit,
    services: Services,
}

/// The listener, received on `socket` into this thread's table, and its services.
fn receive_listener(
    socket: &OwnedFd,
    delivered: &Receiver<Services>,
) -> Option<(OwnedFd, Services)> {
    let mut byte = [0u8; 1];
    let mut control = nix::cmsg_space!(RawFd);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("cannot receive the seccomp listener: {e}");
                return None;
            }
            Ok(msg) => break msg,
        }
    };
    let mut listener = None;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                // SAFETY: SCM_RIGHTS installed this fd in this thread's table; it is ours.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                listener.get_or_insert(fd);
            }
        }
    }
    Some((listener?, delivered.try_recv().ok()?))
}

/// `CLOSE_RANGE_UNSHARE`: unshare the descriptor table, then close the range in the copy.
const CLOSE_RANGE_UNSHARE: u32 = 1 << 1;

/// Gives the calling thread (and the threads it starts later) a descriptor table of its own
/// holding stdin, stdout, stderr and a copy of `keep` only, which `keep` then names.
fn own_table(keep: &OwnedFd) -> Result<(), Errno> {
    let keep = keep.as_raw_fd() as u32;
    // SAFETY: close_range with scalar arguments; it closes descriptors of the new copy of
    // the table only, so nothing another thread holds is closed under it.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            u32::MAX,
            CLOSE_RANGE_UNSHARE,
        )
    })?;
    if keep > 3 {
        // SAFETY: as above, in the table now private to this thread.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32) })?;
    }
    Ok(())
}

fn serve_loop(served: &Served) {
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&*served.listener),
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
            handle_one(served);
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
    }
}

/// A notification not answered yet: its caller waits in the system call until one of the
/// answers below is sent. Each answer consumes the notice; a notice dropped unanswered (a
/// bug) fails the call with EIO rather than leave the caller waiting forever.
#[derive(Debug)]
pub struct Notice {
    listener: Arc<OwnedFd>,
    id: u64,
    answered: bool,
    /// The call.
    pub call: Notification,
}

impl Notice {
    /// Whether the caller still waits for this answer (it was not interrupted, and the pid
    /// still names it).
    pub fn valid(&self) -> bool {
        // SAFETY: ID_VALID reads the u64 id.
        unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
                &self.id,
            ) == 0
        }
    }

    /// Reads `len` bytes at `address` in the caller's memory.
    pub fn read(&self, address: u64, len: usize) -> Option<Vec<u8>> {
        read_memory(self.call.pid, address, len)
    }

    fn send(mut self, error: i32, flags: u32) {
        self.answered = true;
        self.respond(error, flags);
    }

    /// Sends the answer. Failure means the caller is gone (or was interrupted): nobody is
    /// left to answer.
    fn respond(&self, error: i32, flags: u32) {
        let resp = libc::seccomp_notif_resp {
            id: self.id,
            val: 0,
            error,
            flags,
        };
        // SAFETY: SEND reads a correctly sized seccomp_notif_resp.
        unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                &resp,
            )
        };
    }

    /// Lets the kernel run the call as the caller made it. Only for calls whose effect does
    /// not depend on what the caller may change meanwhile (its memory, its fd table): the
    /// kernel reads both again.
    pub fn proceed(self) {
        self.send(0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32);
    }

    /// The call returns 0.
    pub fn succeed(self) {
        self.send(0, 0);
    }

    /// The call fails with `errno`.
    pub fn fail(self, errno: i32) {
        self.send(-errno, 0);
    }

    /// Puts `socket` in the caller's fd table at `target` (replacing what is there), then
    /// answers `errno` (0: success). Not with ADDFD's SEND flag, which would make the call
    /// return the fd number: `connect()` must return 0 (or -1 with EINPROGRESS). The
    /// replacement cannot leak: `target` already exists in the caller's table.
    pub fn install(self, socket: BorrowedFd<'_>, target: u32, cloexec: bool, errno: i32) {
        let addfd = libc::seccomp_notif_addfd {
            id: self.id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: socket.as_raw_fd() as u32,
            newfd: target,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads a correctly sized seccomp_notif_addfd; the source fd is open.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                &addfd,
            )
        };
        if rc < 0 {
            // The caller is gone or was interrupted (ENOENT), or its fd table is full.
            let e = Errno::last();
            if e != Errno::ENOENT {
                tracing::warn!(pid = self.call.pid, "cannot hand the connection over: {e}");
            }
            self.fail(e as i32);
            return;
        }
        self.send(-errno, 0);
    }
}

impl Drop for Notice {
    fn drop(&mut self) {
        if !self.answered {
            self.respond(-libc::EIO, 0);
        }
    }
}

fn handle_one(served: &Served) {
    let Served {
        listener,
        limiter,
        services,
    } = served;
    let fd = listener.as_raw_fd();
    // SAFETY: seccomp_notif is plain old data; the kernel requires it zeroed.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV fills `req`, a correctly sized seccomp_notif.
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV as _, &mut req) } < 0 {
        // ENOENT: the caller was interrupted or died before we looked.
        return;
    }
    let notice = Notice {
        listener: listener.clone(),
        id: req.id,
        answered: false,
        call: Notification {
            pid: req.pid,
            arch: req.data.arch,
            nr: req.data.nr,
            args: req.data.args,
        },
    };
    let n = notice.call;
    if let Some(transparent) = &services.transparent
        && n.arch == AUDIT_ARCH_X86_64
        && let Some(call) = transparent::Call::of(libc::c_long::from(n.nr))
        && rules::rule_for(libc::c_long::from(n.nr), &n.args).is_none()
    {
        transparent.handle(call, notice);
        return;
    }
    // Everything about the caller (its memory, its executable) is read while it is still
    // blocked in the call; then the notification must still be live, otherwise the pid may
    // already belong to someone else.
    let verdict = classify(&n, &|address, len| read_memory(n.pid, address, len));
    // Only a line that is logged names the executable: a program change, or a call that stays
    // in the sandbox (each connect() to the proxy), costs no readlink.
    let exe = match &verdict {
        Verdict::Deny { .. } | Verdict::Continue(Some(_)) => log::exe_of(n.pid),
        Verdict::Continue(None) | Verdict::Exec => String::new(),
    };
    // The log line is written while the caller still waits for its answer: once answered it
    // may exit at once, and the supervisor with it, taking an unwritten line along; logging
    // first also orders the line before anything the caller prints afterwards.
    if notice.valid() {
        log_verdict(&verdict, n.pid, &exe, limiter);
        if verdict == Verdict::Exec {
            // The process as it will be after the exec (a thread that execs takes over the
            // thread group's pid).
            services
                .lineage
                .record_exec(procfs::tgid(n.pid).unwrap_or(n.pid));
        }
    }
    match &verdict {
        Verdict::Deny { errno, .. } => notice.fail(*errno),
        Verdict::Continue(_) | Verdict::Exec => notice.proceed(),
    }
}

fn log_verdict(verdict: &Verdict, pid: u32, exe: &str, limiter: &RateLimit) {
    let (layer, what, why, destination) = match verdict {
        Verdict::Deny { what, why, .. } => (Layer::Seccomp, what.as_str(), why.as_str(), None),
        Verdict::Continue(Some(egress)) => (
            Layer::Network,
            egress.what.as_str(),
            egress.why,
            Some(egress.destination),
        ),
        Verdict::Continue(None) | Verdict::Exec => return,
    };
    if !limiter.allow() {
        return;
    }
    let host = destination.map(|d| d.ip().to_string());
    log::denied(&Denial {
        layer,
        pid,
        exe,
        what,
        why,
        target: host.as_deref().zip(destination.map(|d| d.port())),
    });
}
