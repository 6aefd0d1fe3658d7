//! Who is calling: the executables behind a proxied connection.
//!
//! The kernel knows which socket is the client end of an accepted connection only by its
//! 4-tuple. An exact `sock_diag` query (NETLINK_INET_DIAG, made on a netlink socket that lives
//! in the agent's network namespace) turns the 4-tuple into the socket's inode in one round
//! trip, however many sockets are open. The processes holding that inode are then found among
//! the sandbox's processes only (`/proc/PID/fd`), and each one's executable and ancestors are
//! read up to the agent. Executables are what the kernel resolved (`/proc/PID/exe`), never
//! `argv`, so arguments never grant access.
//!
//! Each executable that earns a connection is pinned by SHA-256 the first time (trust on first
//! use); later connections from a binary with the same path but different content are refused.
//! Hashes are cached by device, inode, size, mtime and ctime, so a binary is read once.
//!
//! `/proc/PID/fd` is a directory owned by the process's user with mode 0500, and the agent's
//! own files may be unreadable for others: root can list or read them only with
//! CAP_DAC_READ_SEARCH, a capability that reads every file on the node. Instead, the scanning
//! thread briefly takes the owner's uid as its filesystem uid (CAP_SETUID, which the
//! supervisor needs anyway) and reads as the owner would.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::decision::Process;
use crate::lineage::Lineage;
use crate::procfs;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// Most fds read to find a socket's owners: past it the request is answered 503 rather than
/// let one lookup run for seconds.
const MAX_SCANNED_FDS: usize = 262_144;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Opens the `sock_diag` socket; call it inside the agent's network namespace.
pub fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain netlink socket; ownership passes to the OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// Looks up the inode of the TCP socket `local` → `remote` in the diag socket's namespace.
fn socket_inode(diag: &OwnedFd, local: SocketAddr, remote: SocketAddr) -> io::Result<u64> {
    #[repr(C)]
    struct Request {
        header: NlMsgHdr,
        body: InetDiagReqV2,
    }
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: if local.is_ipv4() {
                libc::AF_INET as u8
            } else {
                libc::AF_INET6 as u8
            },
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: local.port().to_be(),
                dport: remote.port().to_be(),
                src: words(local.ip()),
                dst: words(remote.ip()),
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    // SAFETY: sends the request struct's bytes to the kernel (destination: the kernel, pid 0).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            diag.as_raw_fd(),
            (&request as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u64; 128];
    // SAFETY: receives into a buffer of the given size.
    let got = unsafe {
        libc::recv(
            diag.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            size_of_val(&reply),
            0,
        )
    };
    if got < size_of::<NlMsgHdr>() as isize {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer holds at least a header; it is 8-byte aligned and plain old data.
    let header = unsafe { *reply.as_ptr().cast::<NlMsgHdr>() };
    if header.kind == NLMSG_ERROR {
        // SAFETY: an error message carries an i32 errno right after the header.
        let errno = unsafe {
            *reply
                .as_ptr()
                .cast::<u8>()
                .add(size_of::<NlMsgHdr>())
                .cast::<i32>()
        };
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if (got as usize) < size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short sock_diag reply",
        ));
    }
    // SAFETY: checked above that a full inet_diag_msg follows the header.
    let msg = unsafe {
        *reply
            .as_ptr()
            .cast::<u8>()
            .add(size_of::<NlMsgHdr>())
            .cast::<InetDiagMsg>()
    };
    Ok(u64::from(msg.inode))
}

/// Why the caller could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The socket lookup failed.
    #[error("cannot find the client socket: {0}")]
    Socket(io::Error),
    /// No sandbox process holds the socket (it exited or passed the socket on).
    #[error("no process in the sandbox holds the client socket")]
    NoOwner,
    /// The client closed its socket before it could be identified (the kernel reports it
    /// orphaned): nobody is left to answer, and nothing to log as a denial.
    #[error("the client closed the connection before it was identified")]
    Abandoned,
    /// The scan itself failed (out of file descriptors, /proc unreadable): not a policy
    /// matter, and never reported as one.
    #[error("cannot scan the sandbox's processes: {0}")]
    Scan(io::Error),
    /// Owners with different executables share the socket.
    #[error("the socket is shared by processes with different executables: {0}")]
    Shared(String),
}

/// Why a binary's pin could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Its content differs from the first use: a denial.
    #[error("{0}")]
    Changed(String),
    /// It cannot be read to be hashed (a denial: what cannot be pinned is not trusted).
    #[error("{0}")]
    Unreadable(String),
    /// The proxy ran out of descriptors or memory: not the caller's doing.
    #[error("cannot hash the caller's binary: {0}")]
    Resources(io::Error),
}

/// Out of file descriptors or memory: the proxy's trouble, not a policy matter.
pub fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// How the sandbox's processes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enumeration {
    /// Down from init through `/proc/PID/task/TID/children`: only the sandbox's processes
    /// are read, however many others the machine runs.
    Tree,
    /// Every process in `/proc`, kept when its PID namespace is the sandbox's: for kernels
    /// without CONFIG_PROC_CHILDREN.
    Scan,
}

/// Identifies callers of the sandbox; shared by all connections.
#[derive(Debug)]
pub struct Identifier {
    diag: Mutex<OwnedFd>,
    enumeration: Enumeration,
    /// Inode of the sandbox's PID namespace.
    pidns: u64,
    /// Init's pid in the supervisor's namespace: the chains stop below it.
    init: u32,
    /// Which children each process started under its current program.
    lineage: Arc<Lineage>,
    hashes: Mutex<HashMap<FileKey, [u8; 32]>>,
    pins: Mutex<HashMap<String, [u8; 32]>>,
}

/// What identifies file content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identifier {
    /// An identifier for the sandbox whose init is `init`.
    pub fn new(diag: OwnedFd, init: u32, lineage: Arc<Lineage>) -> io::Result<Identifier> {
        let pidns = fs::metadata(format!("/proc/{init}/ns/pid"))?.ino();
        let enumeration = match fs::metadata(format!("/proc/{init}/task/{init}/children")) {
            Ok(_) => Enumeration::Tree,
            Err(_) => Enumeration::Scan,
        };
        Ok(Identifier {
            diag: Mutex::new(diag),
            enumeration,
            pidns,
            init,
            lineage,
            hashes: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
        })
    }

    /// The owners of the client socket `client` → `proxy`, each with its chain of ancestors.
    /// Blocking: call from a blocking thread.
    pub fn callers(
        &self,
        client: SocketAddr,
        proxy: SocketAddr,
    ) -> Result<Vec<Vec<Process>>, IdentityError> {
        let inode = self.client_socket(client, proxy)?;
        let owners = self.owners(inode).map_err(IdentityError::Scan)?;
        if owners.is_empty() {
            // Closing a socket removes its fd a moment before the kernel marks the socket
            // orphaned: ask again before calling it a socket nobody holds.
            self.client_socket(client, proxy)?;
            return Err(IdentityError::NoOwner);
        }
        let chains: Vec<Vec<Process>> = owners.into_iter().map(|pid| self.chain(pid)).collect();
        let mut exes: Vec<&str> = chains
            .iter()
            .filter_map(|c| c.first())
            .map(|p| p.exe.as_str())
            .collect();
        exes.sort_unstable();
        exes.dedup();
        if exes.len() > 1 {
            return Err(IdentityError::Shared(exes.join(", ")));
        }
        Ok(chains)
    }

    /// The inode of the client's socket; `Abandoned` once the client has closed it (the
    /// kernel then reports it orphaned, inode 0, or no longer has it at all).
    fn client_socket(&self, client: SocketAddr, proxy: SocketAddr) -> Result<u64, IdentityError> {
        let diag = self.diag.lock().unwrap_or_else(|p| p.into_inner());
        match socket_inode(&diag, client, proxy) {
            Ok(0) => Err(IdentityError::Abandoned),
            Ok(inode) => Ok(inode),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(IdentityError::Abandoned),
            Err(e) => Err(IdentityError::Socket(e)),
        }
    }

    /// Pids of the sandbox's processes holding `socket:[inode]`. A process that exits during
    /// the scan is skipped; any other failure fails the whole scan, since an unread process
    /// could be one of the owners.
    fn owners(&self, inode: u64) -> io::Result<Vec<u32>> {
        let wanted = format!("socket:[{inode}]");
        let mut owners = Vec::new();
        let mut budget = MAX_SCANNED_FDS;
        for pid in self.sandbox_pids()? {
            let dir = format!("/proc/{pid}/fd");
            let owner = match fs::metadata(&dir) {
                Ok(m) => m.uid(),
                Err(e) if gone(&e) || exited_meanwhile(&e, pid) => continue,
                Err(e) => return Err(e),
            };
            match as_filesystem_uid(owner, || holds(&dir, &wanted, &mut budget)) {
                Ok(true) => owners.push(pid),
                Ok(false) => {}
                Err(e) if gone(&e) || exited_meanwhile(&e, pid) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(owners)
    }

    /// The sandbox's processes (init excluded), in the supervisor's PID numbering.
    fn sandbox_pids(&self) -> io::Result<Vec<u32>> {
        match self.enumeration {
            Enumeration::Tree => descendants(self.init),
            Enumeration::Scan => {
                let mut pids = Vec::new();
                for entry in fs::read_dir("/proc")? {
                    let name = entry?.file_name();
                    if let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok())
                        && pid != self.init
                        && self.in_sandbox(pid)
                    {
                        pids.push(pid);
                    }
                }
                Ok(pids)
            }
        }
    }

    fn in_sandbox(&self, pid: u32) -> bool {
        fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() == self.pidns)
    }

    /// `pid` and its ancestors inside the sandbox, nearest first; an ancestor only when the
    /// program it runs now started the line below it (lineage.rs), so that forking first and
    /// then making the parent exec an allowed binary borrows nothing.
    fn chain(&self, pid: u32) -> Vec<Process> {
        let mut chain = Vec::new();
        let (mut current, mut below) = (pid, None);
        while current > 1 && current != self.init && chain.len() < 64 && self.in_sandbox(current) {
            let Some(exe) = exe_of(current) else { break };
            if below.is_none_or(|child| self.lineage.credits(current, child)) {
                chain.push(Process { pid: current, exe });
            }
            let Some(parent) = procfs::stat(current).map(|s| s.ppid) else {
                break;
            };
            (current, below) = (parent, Some(current));
        }
        chain
    }

    /// Pins the content of `process`'s executable on first use; refuses a later change.
    /// Blocking (may hash the file).
    pub fn check_pin(&self, process: &Process) -> Result<(), PinError> {
        let digest = self.digest(process.pid).map_err(|e| match exhausted(&e) {
            true => PinError::Resources(e),
            false => PinError::Unreadable(format!(
                "cannot hash {} of pid {} to pin it: {e}",
                process.exe, process.pid
            )),
        })?;
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        match pins.get(&process.exe) {
            None => {
                tracing::info!(exe = %process.exe, sha256 = %hex(&digest), "binary pinned on first use");
                pins.insert(process.exe.clone(), digest);
                Ok(())
            }
            Some(pinned) if *pinned == digest => Ok(()),
            Some(pinned) => Err(PinError::Changed(format!(
                "{} changed since first use (sha256 {} now, {} pinned)",
                process.exe,
                hex(&digest),
                hex(pinned)
            ))),
        }
    }

    /// Whether `pid`'s executable was hashed already, so pinning it costs a stat, not a read:
    /// the caller then need not move off the async runtime.
    pub fn is_hashed(&self, pid: u32) -> bool {
        fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| self.cached(&file_key(&m)).is_some())
    }

    fn cached(&self, key: &FileKey) -> Option<[u8; 32]> {
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// SHA-256 of the file `pid` is running (even if it was replaced on disk since).
    fn digest(&self, pid: u32) -> io::Result<[u8; 32]> {
        let exe = format!("/proc/{pid}/exe");
        let meta = fs::metadata(&exe)?;
        if let Some(digest) = self.cached(&file_key(&meta)) {
            return Ok(digest);
        }
        let mut file = as_filesystem_uid(meta.uid(), || fs::File::open(&exe))?;
        let key = file_key(&file.metadata()?);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, digest);
        Ok(digest)
    }
}

/// Every descendant of `root`. Each process of the sandbox's PID namespace descends from its
/// init (orphans are re-parented to it), and each thread lists its own children.
fn descendants(root: u32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        let tasks = match fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(tasks) => tasks,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for task in tasks {
            let children = match fs::read_to_string(task?.path().join("children")) {
                Ok(children) => children,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                pending.push(child);
            }
        }
    }
    Ok(found)
}

/// Whether the fd directory `dir` lists `wanted` (`socket:[N]`). Highest fds first: the
/// socket a client just opened is usually its newest, so a process with a thousand open
/// connections is not read to the end for it. An fd closed while being read is not a match.
fn holds(dir: &str, wanted: &str, budget: &mut usize) -> io::Result<bool> {
    let mut fds: Vec<(u32, std::path::PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        *budget = budget.checked_sub(1).ok_or_else(|| {
            io::Error::other(format!(
                "the sandbox holds more than {MAX_SCANNED_FDS} open files to search"
            ))
        })?;
        if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            fds.push((fd, entry.path()));
        }
    }
    fds.sort_unstable_by_key(|(fd, _)| std::cmp::Reverse(*fd));
    for (_, path) in fds {
        match fs::read_link(path) {
            Ok(target) if target.as_os_str() == wanted => return Ok(true),
            Ok(_) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether `pid` is exiting or gone: while a process dies its /proc entries lose their
/// owner and fd table, so reading them fails with EACCES rather than ENOENT. A process that
/// holds no fds any more cannot be an owner.
fn exiting(pid: u32) -> bool {
    match procfs::stat(pid) {
        Some(stat) => matches!(stat.state, 'Z' | 'X' | 'x'),
        // Unreadable: gone only if the process itself is (stat(2) needs no file descriptor,
        // so running out of them cannot pass for an exit and hide a live owner).
        None => fs::metadata(format!("/proc/{pid}")).is_err_and(|e| gone(&e)),
    }
}

/// EACCES from a process that is exiting (see [`exiting`]): as good as gone.
fn exited_meanwhile(e: &io::Error, pid: u32) -> bool {
    e.raw_os_error() == Some(libc::EACCES) && exiting(pid)
}

/// The process or fd vanished while we looked: ENOENT, or ESRCH from a dying process.
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// What identifies a file's content without reading it.
fn file_key(m: &fs::Metadata) -> FileKey {
    FileKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

/// Runs `f` with the calling thread's filesystem uid set to `uid` (permission checks then
/// treat it as that user; nothing else about the process changes), and restores it after.
/// Only this thread is affected: `setfsuid` is per thread.
fn as_filesystem_uid<T>(uid: u32, f: impl FnOnce() -> T) -> T {
    if uid == 0 {
        return f();
    }
    // SAFETY: setfsuid takes a uid and returns the previous one; it cannot fail in a way
    // that matters here (an unchanged fsuid only makes the read fail).
    let previous = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
    let result = f();
    // SAFETY: as above, back to the previous filesystem uid.
    unsafe { libc::syscall(libc::SYS_setfsuid, previous) };
    result
}

/// The executable of `pid`, without the " (deleted)" mark of a replaced file (its content is
/// still checked against the pin).
fn exe_of(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy();
    Some(exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_owned())
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of this test process with a grandchild, both alive until killed.
    fn family() -> (std::process::Child, u32) {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        (child, line.trim().parse().unwrap())
    }

    #[test]
    fn the_tree_walk_and_the_scan_find_the_same_family() {
        let (mut child, grandchild) = family();
        let me = std::process::id();
        let walked = descendants(me).unwrap();
        assert!(
            walked.contains(&child.id()) && walked.contains(&grandchild),
            "{walked:?}"
        );
        let diag = diag_socket().unwrap();
        let scanning = Identifier {
            enumeration: Enumeration::Scan,
            ..Identifier::new(diag, me, Arc::default()).unwrap()
        };
        let scanned = scanning.sandbox_pids().unwrap();
        // The scan keeps the processes of the same PID namespace: ours, so it finds at least
        // the same family.
        assert!(
            scanned.contains(&child.id()) && scanned.contains(&grandchild),
            "{scanned:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    #[test]
    fn finds_the_inode_of_a_local_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let diag = diag_socket().unwrap();
        let inode = socket_inode(
            &diag,
            client.local_addr().unwrap(),
            client.peer_addr().unwrap(),
        )
        .unwrap();
        let fd_target = fs::read_link(format!("/proc/self/fd/{}", client.as_raw_fd())).unwrap();
        assert_eq!(fd_target.to_string_lossy(), format!("socket:[{inode}]"));
        let missing = socket_inode(
            &diag,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
}
