//! The agent's socket, as the supervisor handles it: taken with `pidfd_getfd`, described,
//! acted on, and its state copied onto the connection that replaces it.
//!
//! `pidfd_getfd` gives the supervisor the very socket the agent named (the same open file,
//! not a copy), so a `connect()`, `bind()` or `listen()` made on it acts on the agent's
//! socket, with the address the supervisor read and checked. The kernel never reads the
//! agent's arguments again, so neither its memory nor its fd table can change under the
//! check (the race a `CONTINUE` answer would allow).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, socket};

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for one thread, whose fd table may be its own.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
/// `SO_NETNS_COOKIE` (Linux 5.14): the socket's network namespace, as a number.
pub const SO_NETNS_COOKIE: i32 = 71;
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;

/// `PIDFD_GET_INFO` (Linux 6.13): a pidfd's pid, thread group and parent, in one ioctl.
const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;

/// `struct pidfd_info`, its first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ids: [u32; 8],
    spare: u32,
}

/// A thread in a system call: a pidfd that reaches its descriptor table, and its process.
#[derive(Debug)]
pub struct Thread {
    pidfd: Arc<OwnedFd>,
    /// Whether the pidfd names the thread itself (Linux 6.9), not its process.
    own: bool,
    /// Its thread group (the process).
    pub tgid: u32,
    /// Its process's parent, when the kernel says (6.13).
    pub ppid: Option<u32>,
}

impl Thread {
    /// Opens thread `tid`: a pidfd for the thread itself (Linux 6.9), whose process comes
    /// from the pidfd (6.13) or `/proc`; before 6.9 a pidfd for its process, whose leader's
    /// descriptor table is the thread's unless the thread unshared it (`CLONE_FILES`), which
    /// is rare enough to accept.
    fn open(tid: u32) -> io::Result<Thread> {
        match pidfd_open(tid, PIDFD_THREAD) {
            Ok(pidfd) => Thread::of(Arc::new(pidfd), tid, None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let tgid = crate::procfs::tgid(tid).ok_or_else(gone)?;
                Ok(Thread {
                    pidfd: Arc::new(pidfd_open(tgid, 0)?),
                    own: false,
                    tgid,
                    ppid: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Thread `tid` through `pidfd`, its own, whose process may be `known` already (it does
    /// not change while the pidfd answers); ESRCH when the thread behind it is gone.
    fn of(pidfd: Arc<OwnedFd>, tid: u32, known: Option<u32>) -> io::Result<Thread> {
        let info = pidfd_info(&pidfd)?;
        let tgid = info
            .map(|(tgid, _)| tgid)
            .or(known)
            .or_else(|| crate::procfs::tgid(tid))
            .ok_or_else(gone)?;
        Ok(Thread {
            pidfd,
            own: true,
            tgid,
            ppid: info.map(|(_, ppid)| ppid),
        })
    }

    /// Takes a duplicate of its fd `fd` (the same open file).
    fn take(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd with a pidfd we own; flags must be 0.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0u32) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd (close-on-exec) that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
    }
}

fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

/// Most pidfds kept by [`Threads`]; past it they are all closed (most of their threads will
/// have ended).
const MAX_KEPT: usize = 256;

/// The pidfds of the threads that made calls lately, kept: opening one and closing it again
/// costs as much as the rest of the supervisor's work on the `connect()` of a DNS lookup, and
/// a thread that makes one call usually makes more. Only pidfds of threads themselves (Linux
/// 6.9) are kept: one names its thread for good, and once that thread has ended every use
/// fails with ESRCH, whichever thread has its tid since (then a new one is opened). A
/// process's pidfd, kept under the tid of one of its threads, would reach the wrong process
/// once that tid is reused.
#[derive(Debug, Default)]
pub struct Threads {
    /// By tid: the thread's pidfd and its process (before Linux 6.13 the pidfd cannot say).
    kept: Mutex<HashMap<u32, (Arc<OwnedFd>, u32)>>,
}

impl Threads {
    /// Thread `tid`, which waits in a system call, with its fd `fd` taken.
    pub fn take(&self, tid: u32, fd: i32) -> io::Result<(Thread, OwnedFd)> {
        let kept = self.lock().get(&tid).cloned();
        if let Some((pidfd, tgid)) = kept {
            // A thread that has ended fails here or in `take` with ESRCH.
            let thread = Thread::of(pidfd, tid, Some(tgid));
            match thread.and_then(|t| t.take(fd).map(|socket| (t, socket))) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.lock().remove(&tid);
                }
                taken => return taken,
            }
        }
        let thread = Thread::open(tid)?;
        let socket = thread.take(fd)?;
        if thread.own {
            let mut kept = self.lock();
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
            kept.insert(tid, (Arc::clone(&thread.pidfd), thread.tgid));
        }
        Ok((thread, socket))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Arc<OwnedFd>, u32)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread group and its parent of the task behind `pidfd`, when the kernel says (6.13);
/// ESRCH when the task is gone.
fn pidfd_info(pidfd: &OwnedFd) -> io::Result<Option<(u32, u32)>> {
    let mut info = PidfdInfo::default();
    // SAFETY: PIDFD_GET_INFO writes at most size_of::<PidfdInfo>() (encoded in the request
    // number) into `info`.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Err(e),
            // Older kernels do not know the request.
            _ => Ok(None),
        };
    }
    Ok((info.tgid != 0).then_some((info.tgid, info.ppid)))
}

fn pidfd_open(pid: u32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Values any bytes are valid for, which a socket option can be read into.
trait Plain {}
impl Plain for i32 {}
impl Plain for u64 {}
impl Plain for [u8; 64] {}

/// Reads socket option `name` into `value`; the number of bytes the kernel wrote.
fn get_into<T: Plain>(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (the size of `T`) into `value`, and any
    // bytes are a valid `T` (`Plain`).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// An integer socket option.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    get_into(fd, level, name, &mut value)?;
    Ok(value)
}

/// The network namespace cookie of a socket (the kernel wants exactly 8 bytes).
fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut value: u64 = 0;
    get_into(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut value)?;
    Ok(value)
}

/// The raw bytes of a socket option (at most 64).
fn get_raw(fd: BorrowedFd<'_>, level: i32, name: i32) -> Option<Vec<u8>> {
    let mut value = [0u8; 64];
    let len = get_into(fd, level, name, &mut value).ok()?;
    Some(value[..len].to_vec())
}

fn set_raw(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> bool {
    // SAFETY: setsockopt reads `value.len()` bytes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        ) == 0
    }
}

/// What the supervisor needs to know about a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `AF_INET`, `AF_INET6`...
    pub domain: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`...
    pub kind: i32,
    /// `IPPROTO_TCP`...
    pub protocol: i32,
    /// Its network namespace.
    pub netns: u64,
}

impl Kind {
    /// Reads the socket's description; `ENOTSOCK` for anything else.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Kind> {
        let netns = netns_cookie(fd)?;
        Ok(Kind {
            domain: get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
            kind: get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
            protocol: get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
            netns,
        })
    }

    /// A TCP socket (MPTCP included, which falls back to TCP).
    pub fn is_tcp(&self) -> bool {
        self.kind == libc::SOCK_STREAM
            && matches!(self.protocol, 0 | libc::IPPROTO_TCP | libc::IPPROTO_MPTCP)
            && matches!(self.domain, libc::AF_INET | libc::AF_INET6)
    }
}

/// The network namespace of the calling thread, as a socket cookie.
pub fn current_netns() -> io::Result<u64> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
    netns_cookie(std::os::fd::AsFd::as_fd(&probe))
}

/// Where a TCP socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected.
    Established,
    /// Connecting.
    Connecting,
    /// Neither (never connected, failed, or closed).
    Idle,
}

/// The state of TCP socket `fd`. One call for a new socket (every `connect()` asks): the
/// peer is looked up only in the states that may or may not have one (closing, listening).
pub fn tcp_state(fd: BorrowedFd<'_>) -> State {
    match get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO).and_then(|i| i.first().copied()) {
        Some(TCP_ESTABLISHED) => State::Established,
        Some(TCP_SYN_SENT) => State::Connecting,
        Some(TCP_CLOSE) => State::Idle,
        _ if nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).is_ok() => {
            State::Established
        }
        _ => State::Idle,
    }
}

/// The socket's local address.
pub fn local_address(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    let local: SockaddrStorage = nix::sys::socket::getsockname(fd.as_raw_fd()).ok()?;
    to_std(&local)
}

/// Where a connection `fd` is about to make toward `ip` will come from, as its peer sees it:
/// the socket's own address when it is bound to a port (an unspecified one reads as `ip`),
/// else the one it is bound to now, `ip` with a port of the kernel's choosing.
pub fn source_toward(fd: BorrowedFd<'_>, ip: IpAddr, domain: i32) -> Result<SocketAddr, Errno> {
    match local_address(fd) {
        Some(bound) if bound.port() != 0 && !bound.ip().is_unspecified() => Ok(bound),
        Some(bound) if bound.port() != 0 => Ok(SocketAddr::new(ip, bound.port())),
        _ => {
            bind(fd, &for_domain(SocketAddr::new(ip, 0), domain))?;
            local_address(fd).ok_or(Errno::EADDRNOTAVAIL)
        }
    }
}

fn to_std(address: &SockaddrStorage) -> Option<SocketAddr> {
    address
        .as_sockaddr_in()
        .map(|a| SocketAddr::from(*a))
        .or_else(|| address.as_sockaddr_in6().map(|a| SocketAddr::from(*a)))
}

/// `address` for a socket of `domain`: an IPv4 destination of an IPv6 socket is written
/// v4-mapped, as the agent's own call would have it.
pub fn for_domain(address: SocketAddr, domain: i32) -> SockaddrStorage {
    match (address, domain) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SockaddrStorage::from(SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()))
        }
        _ => SockaddrStorage::from(address),
    }
}

/// `connect()` on `fd`.
pub fn connect(fd: BorrowedFd<'_>, address: &SockaddrStorage) -> Result<(), Errno> {
    nix::sys::socket::connect(fd.as_raw_fd(), address)
}

/// `bind()` on `fd`.
pub fn bind(fd: BorrowedFd<'_>, address: &SockaddrStorage) -> Result<(), Errno> {
    nix::sys::socket::bind(fd.as_raw_fd(), address)
}

/// Disconnects `fd` (`connect()` with `AF_UNSPEC`).
pub fn disconnect(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: connect reads a sockaddr of the given size from the stack.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &unspec,
            size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// The file status flags (O_NONBLOCK...) of the open file behind `fd`.
pub fn status_flags(fd: BorrowedFd<'_>) -> i32 {
    fcntl(fd, FcntlArg::F_GETFL).unwrap_or(0)
}

/// Sets the file status flags of the open file behind `fd`.
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) {
    let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(flags)));
}

/// Whether fd `fd` of thread `tid` is close-on-exec (from `/proc/TID/fdinfo/FD`).
pub fn cloexec(tid: u32, fd: i32) -> bool {
    crate::procfs::with_small(&format!("/proc/{tid}/fdinfo/{fd}"), |info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
    })
    .is_none_or(|flags| flags & libc::O_CLOEXEC != 0)
}

/// The pending error of a socket (reading it clears it).
pub fn take_error(fd: BorrowedFd<'_>) -> i32 {
    get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(libc::EIO)
}

/// Options an agent sets before `connect()` that change how the connection behaves: each is
/// copied when the agent's value differs from a new socket's. Buffer sizes read back doubled
/// (the kernel's bookkeeping) and are halved for setting.
const COPIED: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IP, libc::IP_RECVERR),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
];

/// The copied options of a new socket, read once per family: only the agent's options
/// that differ from them are set on the connection that replaces its socket. Options a new
/// socket of the family does not have (IPv6 ones on an IPv4 socket) are not read at all.
#[derive(Debug, Clone)]
pub struct Defaults(Vec<((i32, i32), Vec<u8>)>);

impl Defaults {
    /// The options of `fresh`, a socket nothing has been set on.
    pub fn of(fresh: BorrowedFd<'_>) -> Defaults {
        Defaults(
            COPIED
                .iter()
                .filter_map(|&(level, name)| Some(((level, name), get_raw(fresh, level, name)?)))
                .collect(),
        )
    }

    /// Sets on `to` (a new socket) the options of `from` (the agent's socket) that differ
    /// from the defaults. Options the new socket refuses are left at its defaults.
    pub fn copy(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
        for ((level, name), default) in &self.0 {
            let (level, name) = (*level, *name);
            let Some(theirs) = get_raw(from, level, name) else {
                continue;
            };
            if *default == theirs {
                continue;
            }
            let mut value = theirs;
            if level == libc::SOL_SOCKET
                && matches!(name, libc::SO_RCVBUF | libc::SO_SNDBUF)
                && let Ok(bytes) = <[u8; 4]>::try_from(value.as_slice())
            {
                value = (i32::from_ne_bytes(bytes) / 2).to_ne_bytes().to_vec();
            }
            if level == libc::IPPROTO_TCP && name == libc::TCP_CONGESTION {
                // A name, NUL-padded: set up to the NUL.
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                value.truncate(end);
            }
            if !set_raw(to, level, name, &value) {
                tracing::debug!(
                    level,
                    name,
                    "socket option of the agent not copied: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// A new TCP socket of `kind`'s domain in the calling thread's namespace (the pod's),
/// non-blocking.
pub fn new_like(kind: &Kind) -> io::Result<OwnedFd> {
    let domain = AddressFamily::from_i32(kind.domain).ok_or(Errno::EAFNOSUPPORT)?;
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    Ok(socket(domain, SockType::Stream, flags, SockProtocol::Tcp)?)
}

/// Whether `fd` is writable now (a connection attempt finished).
pub fn writable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// The inode of the socket behind `fd`.
    fn inode(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd).expect("fstat").st_ino
    }

    #[test]
    fn tcp_state_of_new_listening_connected_and_half_closed_sockets() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let new = new_like(&Kind::of(listener.as_fd()).unwrap()).unwrap();
        assert_eq!(tcp_state(new.as_fd()), State::Idle);
        assert_eq!(tcp_state(listener.as_fd()), State::Idle);
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(tcp_state(client.as_fd()), State::Established);
        // The server closes: the client, in CLOSE_WAIT, still has its peer.
        drop(listener.accept().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(tcp_state(client.as_fd()), State::Established);
    }

    #[test]
    fn a_kept_pidfd_serves_its_thread_and_never_outlives_it() {
        if pidfd_open(std::process::id(), PIDFD_THREAD).is_err() {
            let why = "this kernel has no thread pidfds (Linux 6.9), which are the only ones kept";
            assert!(
                std::env::var_os("OPENSHELL_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
                "OPENSHELL_REQUIRE_KERNEL=1: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
        let (ready, parked) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
            let fd = socket.as_raw_fd();
            let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino());
            // SAFETY: gettid has no arguments.
            let tid = unsafe { libc::gettid() } as u32;
            ready.send((tid, fd, ino.expect("inode"))).expect("send");
            let _ = finished.recv();
            drop(socket);
        });
        let (tid, fd, ino) = parked.recv().expect("parked");
        let threads = Threads::default();
        let (first, socket) = threads.take(tid, fd).expect("first take");
        assert_eq!(first.tgid, std::process::id());
        assert_eq!(inode(socket.as_fd()), ino);
        // The second call reuses the pidfd kept by the first.
        let (second, socket) = threads.take(tid, fd).expect("second take");
        assert!(Arc::ptr_eq(&first.pidfd, &second.pidfd));
        assert_eq!(inode(socket.as_fd()), ino);
        let kept = Arc::clone(&first.pidfd);
        drop((first, second));
        finish.send(()).expect("finish");
        thread.join().expect("join");
        // The thread is gone: its kept pidfd reaches nothing, and is forgotten.
        let taken = threads.take(tid, fd).map(drop);
        assert_eq!(taken.map_err(|e| e.raw_os_error()), Err(Some(libc::ESRCH)));
        assert!(threads.lock().is_empty());
        // SAFETY: pidfd_getfd with a pidfd we own; flags must be 0.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, kept.as_raw_fd(), fd, 0u32) };
        assert_eq!((rc, Errno::last()), (-1, Errno::ESRCH));
    }
}
