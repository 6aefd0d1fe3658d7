//! Who is calling: the executables behind a proxied connection.
//!
//! The kernel knows which socket is the client end of an accepted connection only by its
//! 4-tuple; [`sock_diag`] turns that into the socket's inode. The processes holding that inode
//! are then found among the sandbox's processes only (`/proc/PID/fd`), and each one's
//! executable and ancestors are read up to the agent. Executables are what the kernel resolved
//! (`/proc/PID/exe`), never `argv`, so arguments never grant access. Each executable that earns
//! a connection is then pinned ([`pinning`]).
//!
//! `/proc/PID/fd` is a directory owned by the process's user with mode 0500, and the agent's
//! own files may be unreadable for others: root can list or read them only with
//! CAP_DAC_READ_SEARCH, a capability that reads every file on the node. Instead, the scanning
//! thread briefly takes the owner's uid as its filesystem uid (CAP_SETUID, which the
//! supervisor needs anyway) and reads as the owner would.

pub mod pinning;
pub mod record;
pub mod sock_diag;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

pub use pinning::{FileKey, PinError, Pins};
pub use record::Records;

use super::decision::Process;
use crate::lineage::Lineage;
use crate::procfs;

/// Most processes whose chain is kept ([`Identifier::chain_in_call`]); past it the kept ones
/// are forgotten (most will have exited).
const MAX_KNOWN: usize = 1024;

/// Most fds read to find a socket's owners: past it the request is answered 503 rather than
/// let one lookup run for seconds.
const MAX_SCANNED_FDS: usize = 262_144;

/// Why the caller could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
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
    /// Connections are recorded at `connect()`, and this one was not: it was not made
    /// through the sandbox's system call (never the case for the agent's own connections).
    #[error("no record of which process connected this socket")]
    Unrecorded,
    /// The connection comes from the recorded address but not from the recorded socket:
    /// another socket took the address over (possible without the TCP fence).
    #[error("the connection comes from another socket than the one recorded at its address")]
    Impostor,
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
    /// Pinned executables.
    pub pins: Pins,
    /// Who connected each socket, when the supervisor sees every `connect()`.
    pub records: Records,
    /// Where the callers come from.
    callers: Callers,
    /// Init's children seen in a system call, by pid: [`Identifier::chain_in_call`].
    known: Mutex<HashMap<u32, Known>>,
}

/// Where the proxy learns who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Every process holding the client's socket (found in /proc): without the transparent
    /// path, which is what sees the `connect()` calls.
    Holders,
    /// The process that connected it: every `connect()` of the sandbox is made through the
    /// supervisor, which records its caller in [`Identifier::records`] by the socket's
    /// address (with the TCP fence, no other socket can come to connect from it).
    Recorded,
    /// The same, and the connection must come from the very socket recorded (its inode):
    /// without the fence, another socket can connect from the recorded address.
    RecordedSockets,
}

/// A child of init whose chain is itself alone, and what says it still is.
#[derive(Debug)]
struct Known {
    /// Its executable's key when its chain was worked out.
    key: FileKey,
    /// The lineage's count of execs before it was.
    generation: u64,
    process: Process,
}

impl Identifier {
    /// An identifier for the sandbox whose init is `init`, finding its callers as `callers`
    /// says.
    pub fn new(
        diag: OwnedFd,
        init: u32,
        lineage: Arc<Lineage>,
        callers: Callers,
    ) -> io::Result<Identifier> {
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
            pins: Pins::default(),
            records: Records::default(),
            callers,
            known: Mutex::default(),
        })
    }

    /// Whether callers are read from the records (a table lookup, and at most one `sock_diag`
    /// question) rather than found among the socket's holders (a scan of /proc).
    pub fn is_recorded(&self) -> bool {
        self.callers != Callers::Holders
    }

    /// The callers behind the client socket `client` → `proxy`, each with its chain of
    /// ancestors: the process that connected it (recorded at `connect()`), or, without such
    /// records, every process holding it. Blocking: call from a blocking thread.
    pub fn callers(
        &self,
        client: SocketAddr,
        proxy: SocketAddr,
    ) -> Result<Vec<Vec<Process>>, CallerError> {
        let recorded = || self.records.get(client).ok_or(CallerError::Unrecorded);
        match self.callers {
            Callers::Holders => {}
            Callers::Recorded => return Ok(vec![recorded()?.chain]),
            Callers::RecordedSockets => {
                let recorded = recorded()?;
                // A record without a socket (the resolver's) names no connection to the proxy.
                let socket = recorded.socket.ok_or(CallerError::Unrecorded)?;
                self.comes_from(client, proxy, socket)?;
                return Ok(vec![recorded.chain]);
            }
        }
        let inode = self.client_socket(client, proxy)?;
        let owners = self.owners(inode).map_err(CallerError::Scan)?;
        if owners.is_empty() {
            // Closing a socket removes its fd a moment before the kernel marks the socket
            // orphaned: ask again before calling it a socket nobody holds.
            self.client_socket(client, proxy)?;
            return Err(CallerError::NoOwner);
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
            return Err(CallerError::Shared(exes.join(", ")));
        }
        Ok(chains)
    }

    /// Whether the sandbox's TCP connection `client` → `server` comes from the socket whose
    /// inode is `socket`: `Impostor` when another socket connected from that address,
    /// `Abandoned` when it is closed already.
    pub fn comes_from(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        socket: u64,
    ) -> Result<(), CallerError> {
        match self.client_socket(client, server)? == socket {
            true => Ok(()),
            false => Err(CallerError::Impostor),
        }
    }

    /// The inode of the client's socket; `Abandoned` once the client has closed it (the
    /// kernel then reports it orphaned, inode 0, or no longer has it at all).
    fn client_socket(&self, client: SocketAddr, proxy: SocketAddr) -> Result<u64, CallerError> {
        let diag = self.diag.lock().unwrap_or_else(|p| p.into_inner());
        match sock_diag::socket_inode(&diag, client, proxy) {
            Ok(0) => Err(CallerError::Abandoned),
            Ok(inode) => Ok(inode),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(CallerError::Abandoned),
            Err(e) => Err(CallerError::Socket(e)),
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

    /// `pid` alone, for records that only name who asked (the resolver's): neither its
    /// ancestors nor its start time and executable are read, which a lookup would pay for
    /// every time; [`Identifier::exe_of`] reads the executable when a refusal is logged.
    pub fn process(&self, pid: u32) -> Vec<Process> {
        vec![Process {
            pid,
            start: 0,
            exe: String::new(),
        }]
    }

    /// The executable of a recorded process, read now if the record left it out.
    pub fn exe_of(process: &Process) -> String {
        match process.exe.is_empty() {
            true => crate::log::exe_of(process.pid),
            false => process.exe.clone(),
        }
    }

    /// [`Identifier::chain`] of `pid`, one of whose threads waits in a system call, given its
    /// parent (`ppid`, from its pidfd) and its executable's key (`key`), read first. A child
    /// of init (the agent's own process, which makes most connections) has itself alone for a
    /// chain, with its executable for the only name that matters: that is kept, and reused
    /// while its parent is still init, its executable the same file, and no exec was recorded
    /// since (an exec through another path to the same file keeps the key). That saves
    /// reading `/proc` twice for each of its connections. An exec under way when the chain
    /// was worked out changes the key by the time it took effect.
    pub fn chain_in_call(
        &self,
        pid: u32,
        ppid: Option<u32>,
        key: Option<&FileKey>,
    ) -> Vec<Process> {
        let generation = self.lineage.generation();
        let key = match (ppid, key) {
            (Some(ppid), Some(key)) if ppid == self.init => key,
            _ => return self.chain(pid),
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.get(&pid)
            && k.key == *key
            && k.generation == generation
        {
            return vec![k.process.clone()];
        }
        drop(known);
        let chain = self.chain(pid);
        if let [process] = chain.as_slice() {
            known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            let process = process.clone();
            known.insert(
                pid,
                Known {
                    key: *key,
                    generation,
                    process,
                },
            );
        }
        chain
    }

    /// `pid` (a process of the sandbox: a caller in a system call under its filter, or a
    /// socket owner found among its processes) and its ancestors inside the sandbox, nearest
    /// first; an ancestor only when the program it runs now started the line below it
    /// (lineage.rs), so that forking first and then making the parent exec an allowed binary
    /// borrows nothing.
    pub fn chain(&self, pid: u32) -> Vec<Process> {
        let mut chain = Vec::new();
        let (mut current, mut below) = (pid, None);
        while current > 1
            && current != self.init
            && chain.len() < 64
            && (below.is_none() || self.in_sandbox(current))
        {
            let (Some(exe), Some(stat)) = (exe_of(current), procfs::stat(current)) else {
                break;
            };
            if below.is_none_or(|child| self.lineage.credits(current, child)) {
                chain.push(Process {
                    pid: current,
                    start: stat.start,
                    exe,
                });
            }
            let parent = stat.ppid;
            (current, below) = (parent, Some(current));
        }
        chain
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

/// Runs `f` with the calling thread's filesystem uid set to `uid` (permission checks then
/// treat it as that user; nothing else about the process changes), and restores it after.
/// Only this thread is affected: `setfsuid` is per thread.
pub(crate) fn as_filesystem_uid<T>(uid: u32, f: impl FnOnce() -> T) -> T {
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
        let diag = sock_diag::diag_socket().unwrap();
        let scanning = Identifier {
            enumeration: Enumeration::Scan,
            ..Identifier::new(diag, me, Arc::default(), Callers::Holders).unwrap()
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

    /// `PROGRAM` run as a child of this test process (the "init" of these tests), waiting for
    /// a line on its stdin before it runs `then`: `exec`s another program, the way an agent's
    /// process can.
    fn exec_on_cue(program: &std::path::Path, then: &str) -> std::process::Child {
        std::process::Command::new(program)
            .args(["-c", &format!("read go; {then}")])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Lets `child` go on and waits until its executable is `exe`.
    fn cue(child: &mut std::process::Child, exe: &std::path::Path) {
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
        for _ in 0..500 {
            if fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| e == exe) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never ran {}", child.id(), exe.display());
    }

    /// The chain of `pid` as the transparent path asks for it, its parent being this process.
    fn chain_now(identifier: &Identifier, pid: u32) -> Vec<String> {
        let key = pinning::exe_key(pid);
        identifier
            .chain_in_call(pid, Some(std::process::id()), key.as_ref())
            .into_iter()
            .map(|p| p.exe)
            .collect()
    }

    fn stop(mut child: std::process::Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    use std::os::fd::AsRawFd;

    /// A TCP socket of this process with `SO_REUSEADDR`, bound to `address`.
    fn reusing(address: SocketAddr) -> OwnedFd {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
        let SocketAddr::V4(v4) = address else {
            panic!("IPv4 only")
        };
        bind(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
        fd
    }

    /// The attack a record must survive without the TCP fence: a second socket bound to the
    /// recorded socket's address (both with `SO_REUSEADDR`) connects to the proxy first. By
    /// its address alone it is the recorded caller; by its inode it is not.
    #[test]
    fn a_recorded_address_taken_over_by_another_socket_is_not_credited() {
        use nix::sys::socket::{SockaddrIn, connect, getsockname};
        let me = std::process::id();
        let identifier = |callers| {
            Identifier::new(
                sock_diag::diag_socket().unwrap(),
                me,
                Arc::default(),
                callers,
            )
            .unwrap()
        };
        let (by_address, by_socket) = (
            identifier(Callers::Recorded),
            identifier(Callers::RecordedSockets),
        );
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = proxy.local_addr().unwrap() else {
            unreachable!()
        };
        // The recorded socket, bound (the supervisor binds before it records) but not yet
        // connected; and the impostor on its address.
        let recorded = reusing("127.0.0.1:0".parse().unwrap());
        let local: SockaddrIn = getsockname(recorded.as_raw_fd()).unwrap();
        let local = SocketAddr::from((local.ip(), local.port()));
        let impostor = reusing(local);
        connect(impostor.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
        let inode = |fd: &OwnedFd| Some(nix::sys::stat::fstat(fd).unwrap().st_ino);
        let allowed = vec![Process {
            pid: 1,
            start: 1,
            exe: "/usr/bin/allowed".into(),
        }];
        let credited = |identifier: &Identifier, socket| {
            identifier.records.record(local, allowed.clone(), socket);
            identifier.callers(local, SocketAddr::V4(to))
        };
        // By address alone, the impostor is the recorded caller: the attack works.
        assert_eq!(
            credited(&by_address, inode(&recorded)).unwrap(),
            vec![allowed.clone()]
        );
        assert!(matches!(
            credited(&by_socket, inode(&recorded)),
            Err(CallerError::Impostor)
        ));
        // A record that names no socket (the resolver's) credits nobody.
        assert!(matches!(
            credited(&by_socket, None),
            Err(CallerError::Unrecorded)
        ));
        // The socket recorded is the one connected: credited.
        assert_eq!(
            credited(&by_socket, inode(&impostor)).unwrap(),
            vec![allowed.clone()]
        );
        // Closed before the proxy asked: nobody to credit.
        drop(impostor);
        assert!(matches!(
            credited(&by_socket, inode(&recorded)),
            Err(CallerError::Abandoned | CallerError::Impostor)
        ));
    }

    #[test]
    fn a_kept_chain_follows_its_process_into_another_program() {
        let me = std::process::id();
        let identifier = Identifier::new(
            sock_diag::diag_socket().unwrap(),
            me,
            Arc::default(),
            Callers::Holders,
        )
        .unwrap();
        let sleep = fs::canonicalize("/bin/sleep").unwrap();
        let sh = fs::canonicalize("/bin/sh").unwrap();
        let mut child = exec_on_cue(&sh, &format!("exec {} 60", sleep.display()));
        // Kept on the first call, reused on the second.
        let before = chain_now(&identifier, child.id());
        assert_eq!(before, [sh.display().to_string()]);
        let kept = identifier.known.lock().unwrap()[&child.id()]
            .process
            .exe
            .clone();
        assert_eq!(kept, sh.display().to_string());
        assert_eq!(chain_now(&identifier, child.id()), before);
        // An exec the lineage never heard of (the count of execs is unchanged): the kept chain
        // must not outlive the program, which its executable's key shows.
        cue(&mut child, &sleep);
        assert_eq!(
            chain_now(&identifier, child.id()),
            [sleep.display().to_string()]
        );
        stop(child);
    }

    #[test]
    fn a_recorded_exec_through_another_name_of_the_same_file_renews_a_kept_chain() {
        let me = std::process::id();
        let lineage = Arc::new(Lineage::default());
        let identifier = Identifier::new(
            sock_diag::diag_socket().unwrap(),
            me,
            lineage.clone(),
            Callers::Holders,
        )
        .unwrap();
        // Two names of one file: the same key, and a policy that matches paths tells them
        // apart. Both are made first (a new link changes the file's ctime, part of its key).
        let dir = std::env::temp_dir().join(format!("openshell-chain-{me}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let (first, second) = (dir.join("first"), dir.join("second"));
        fs::copy("/bin/sh", &first).unwrap();
        fs::hard_link(&first, &second).unwrap();
        let mut child = exec_on_cue(&first, &format!("exec {} -c 'read x'", second.display()));
        assert_eq!(
            chain_now(&identifier, child.id()),
            [first.display().to_string()]
        );
        // The seccomp handler records each exec before it runs, which renews the kept chains.
        lineage.record_exec(child.id());
        cue(&mut child, &second);
        assert_eq!(
            chain_now(&identifier, child.id()),
            [second.display().to_string()]
        );
        stop(child);
        let _ = fs::remove_dir_all(&dir);
    }
}
