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

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{ForkResult, fork};

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

/// Creates the agent's network namespace with `lo` up, runs `inside` in it, and returns a
/// handle on the namespace with what `inside` returned.
pub fn create_network<T, F>(inside: F) -> Result<(OwnedFd, T), NamespaceError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<(OwnedFd, T), NamespaceError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(syscall("unshare(CLONE_NEWNET)"))?;
            loopback_up().map_err(syscall("bringing up lo in the sandbox network namespace"))?;
            let value = inside();
            let ns =
                File::open("/proc/thread-self/ns/net").map_err(|e| NamespaceError::Syscall {
                    what: "open /proc/thread-self/ns/net",
                    source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
            Ok((ns.into(), value))
        })
        .map_err(|e| NamespaceError::Thread(e.to_string()))?;
    thread
        .join()
        .map_err(|_| NamespaceError::Thread("panicked".into()))?
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: a plain socket for interface ioctls; closed when `sock` drops.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock)?;
    // SAFETY: the fd was just created and is owned here.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
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
    let original = File::open("/proc/self/ns/pid").map_err(|e| NamespaceError::Syscall {
        what: "open /proc/self/ns/pid",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
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

/// A namespace step that failed in init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsFailure {
    /// The step.
    pub what: &'static str,
    /// The error.
    pub errno: Errno,
}

/// What init needs to finish the namespaces.
#[derive(Debug)]
pub struct Prepared {
    netns: OwnedFd,
}

impl Prepared {
    /// Wraps the network namespace made by [`create_network`].
    pub fn new(netns: OwnedFd) -> Prepared {
        Prepared { netns }
    }

    /// In init, PID 1 of the new PID namespace: joins the network namespace, unshares mount,
    /// IPC, UTS and cgroup namespaces, and cuts the new mount namespace off from the pod's.
    pub fn apply(&self) -> Result<(), NsFailure> {
        let fail = |what| move |errno| NsFailure { what, errno };
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
