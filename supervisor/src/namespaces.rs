//! Namespaces: the agent gets its own PID, mount, IPC, UTS, cgroup and network namespaces.
//!
//! The network namespace is made first, by a short-lived thread of the supervisor (namespaces
//! belong to threads, so the supervisor itself stays in the pod's namespace, from where the
//! proxy dials out). It holds only `lo`, brought up with one ioctl; whatever `inside` creates
//! there (the proxy's listening sockets) stays bound to it. No veth, no addresses, no routes,
//! no firewall: a connection to anything but the sandbox's own loopback has no route and fails
//! at once with ENETUNREACH.
//!
//! The PID namespace comes from `unshare(CLONE_NEWPID)` right before `fork`, so the forked
//! child is PID 1 of the new namespace; the supervisor then points its own future children
//! back at its original namespace (threads cannot be created otherwise). The child, our init,
//! joins the network namespace and unshares the rest; the filesystem view (`view/`) is then
//! built in the new mount namespace, with a fresh `/proc` showing only the sandbox's processes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, fork};

use crate::channel::StepFailure;

/// Why the namespaces could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// unshare/setns/open failed in the supervisor.
    #[error("{what}: {source}{}", hint(*source))]
    Syscall {
        /// The step.
        what: &'static str,
        /// The error.
        source: Errno,
    },
    /// The helper thread could not be started or died.
    #[error("network namespace thread: {0}")]
    Thread(String),
}

fn hint(e: Errno) -> &'static str {
    match e {
        Errno::EPERM => {
            " (the pod needs CAP_SYS_ADMIN and CAP_NET_ADMIN, and the runtime's seccomp profile must allow unshare/setns)"
        }
        _ => "",
    }
}

fn syscall(what: &'static str) -> impl FnOnce(Errno) -> NamespaceError {
    move |source| NamespaceError::Syscall { what, source }
}

/// Who may bind ports below 1024 in the sandbox's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Only holders of CAP_NET_BIND_SERVICE (the kernel's default).
    Privileged,
    /// Everyone (`net.ipv4.ip_unprivileged_port_start = 0` there): the supervisor's own
    /// services on the sandbox's loopback (the transparent path's DNS answerer on port 53)
    /// then bind without CAP_NET_BIND_SERVICE, which pods do not grant. The namespace has
    /// nothing but loopback, so a low port there reaches nothing outside it.
    Unprivileged,
}

/// A network namespace being made by its thread (see [`start_network`]).
#[derive(Debug)]
pub struct PendingNetwork<T> {
    thread: std::thread::JoinHandle<Result<(OwnedFd, T), NamespaceError>>,
}

impl<T> PendingNetwork<T> {
    /// Waits for the thread: the namespace and what `inside` returned.
    pub fn finish(self) -> Result<(OwnedFd, T), NamespaceError> {
        self.thread
            .join()
            .map_err(|_| NamespaceError::Thread("panicked".into()))?
    }
}

/// Creates the agent's network namespace with `lo` up and runs `inside` in it, in a thread of
/// its own; [`PendingNetwork::finish`] returns a handle on the namespace with what `inside`
/// returned. It returns at once: creating a namespace takes the kernel a few hundred
/// microseconds, which the caller spends preparing the other layers.
pub fn start_network<T, F>(ports: Ports, inside: F) -> Result<PendingNetwork<T>, NamespaceError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<(OwnedFd, T), NamespaceError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(syscall("unshare(CLONE_NEWNET)"))?;
            loopback_up().map_err(syscall("bringing up lo in the sandbox network namespace"))?;
            if ports == Ports::Unprivileged {
                unprivileged_ports().map_err(syscall(
                    "letting the sandbox's loopback services bind ports below 1024 \
                     (net.ipv4.ip_unprivileged_port_start)",
                ))?;
            }
            let value = inside();
            let ns = open_proc("/proc/thread-self/ns/net")
                .map_err(syscall("open /proc/thread-self/ns/net"))?;
            Ok((ns, value))
        })
        .map_err(|e| NamespaceError::Thread(e.to_string()))?;
    Ok(PendingNetwork { thread })
}

/// Sets `net.ipv4.ip_unprivileged_port_start` to 0 for the calling thread's network namespace
/// (a network sysctl applies to the namespace of the thread that opens it): through the pod's
/// /proc where it is writable, else through a procfs of our own (container runtimes mount
/// /proc/sys read-only), whose unmount costs an RCU grace period.
fn unprivileged_ports() -> Result<(), Errno> {
    const SYSCTL: &str = "sys/net/ipv4/ip_unprivileged_port_start";
    let write = |dir: &dyn AsFd| -> Result<(), Errno> {
        let sysctl = nix::fcntl::openat(
            dir.as_fd(),
            SYSCTL,
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        nix::unistd::write(&sysctl, b"0").map(drop)
    };
    match write(&open_proc("/proc")?) {
        Err(Errno::EROFS | Errno::EACCES | Errno::EPERM) => {}
        done => return done,
    }
    write(&crate::view::sys::new_proc()?)
}

/// Opens a `/proc` file or directory (read-only, close-on-exec).
fn open_proc(path: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<(), Errno> {
    // A plain socket for interface ioctls.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: reading and writing the flags member of the union SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) })?;
    Ok(())
}

/// Forks a child that is PID 1 of a new PID namespace. In the parent, the supervisor's own
/// later children (and threads) go back to its original namespace.
pub fn fork_pid1() -> Result<ForkResult, NamespaceError> {
    let original = open_proc("/proc/self/ns/pid").map_err(syscall("open /proc/self/ns/pid"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(syscall("unshare(CLONE_NEWPID)"))?;
    // SAFETY: the caller guarantees the process is single-threaded here (checked in
    // `sandbox::spawn`), so the child may allocate and take locks freely.
    let forked = unsafe { fork() };
    if let Ok(ForkResult::Child) = forked {
        return Ok(ForkResult::Child);
    }
    setns(&original, CloneFlags::CLONE_NEWPID).map_err(syscall("setns(original PID namespace)"))?;
    forked.map_err(syscall("fork"))
}

/// What init needs to finish the namespaces.
#[derive(Debug)]
pub struct Prepared {
    netns: OwnedFd,
}

impl Prepared {
    /// Wraps the network namespace made by [`start_network`].
    pub fn new(netns: OwnedFd) -> Prepared {
        Prepared { netns }
    }

    /// In init, PID 1 of the new PID namespace: joins the network namespace, unshares mount,
    /// IPC, UTS and cgroup namespaces, and cuts the new mount namespace off from the pod's.
    pub fn apply(&self) -> Result<(), StepFailure<'static>> {
        let fail = StepFailure::of;
        setns(&self.netns, CloneFlags::CLONE_NEWNET).map_err(fail("setns(network)"))?;
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWCGROUP,
        )
        .map_err(fail("unshare(mount, ipc, uts, cgroup)"))?;
        // Private before anything is mounted: no mount of the view may propagate back into
        // the pod (a copied mount namespace starts out sharing events with the original).
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(fail("making / a private mount tree"))?;
        Ok(())
    }
}
