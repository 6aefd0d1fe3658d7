//! Binary pinning: each executable that earns a connection is pinned by SHA-256 the first
//! time (trust on first use); later connections from a binary with the same path but
//! different content are refused. Hashes are cached by device, inode, size, mtime and ctime,
//! so a binary is read once.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{as_filesystem_uid, exhausted};
use crate::procfs;
use crate::proxy::decision::Process;

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

/// The pins and the hash cache, shared by all connections.
#[derive(Debug, Default)]
pub struct Pins {
    hashes: Mutex<HashMap<FileKey, [u8; 32]>>,
    pins: Mutex<HashMap<String, [u8; 32]>>,
}

/// What identifies file content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Pins {
    /// Pins the content of `process`'s executable on first use; refuses a later change.
    /// Blocking (may hash the file).
    pub fn check(&self, process: &Process) -> Result<(), PinError> {
        if !alive(process)? {
            return Err(exited(process, "has exited: its binary cannot be checked"));
        }
        let digest = self.digest(process.pid).map_err(|e| match exhausted(&e) {
            true => PinError::Resources(e),
            false => PinError::Unreadable(format!(
                "cannot hash {} of pid {} to pin it: {e}",
                process.exe, process.pid
            )),
        })?;
        // Hashed the same process, not a successor that took its pid meanwhile.
        if !alive(process)? {
            return Err(exited(process, "exited while its binary was checked"));
        }
        self.compare(process, digest)
    }

    /// Pins `digest` for `process`'s executable on first use; refuses another one later.
    fn compare(&self, process: &Process, digest: [u8; 32]) -> Result<(), PinError> {
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

    /// [`Pins::check`] without reading the binary: `None` when its content was not hashed
    /// yet (then `check`, off the async threads), else the verdict, for the cost of a stat and
    /// one read of the process's `stat` (that it is still the same process: its pid was not
    /// reused while its executable was looked at).
    pub fn check_hashed(&self, process: &Process) -> Option<Result<(), PinError>> {
        let digest = self.hashed(process)?;
        Some(match alive(process) {
            Ok(true) => self.compare(process, digest),
            Ok(false) => Err(exited(process, "exited while its binary was checked")),
            Err(e) => Err(e),
        })
    }

    /// [`Pins::check_hashed`] for a process one of whose threads waits in a system call the
    /// supervisor is answering: `waiting` says whether it still does (then its pid was not
    /// reused), which costs less than reading its `stat`. `key` is its executable's, from
    /// [`exe_key`].
    pub fn check_hashed_in_call(
        &self,
        process: &Process,
        key: &FileKey,
        waiting: impl FnOnce() -> bool,
    ) -> Option<Result<(), PinError>> {
        let digest = self.cached(key)?;
        Some(match waiting() {
            true => self.compare(process, digest),
            false => Err(exited(process, "exited while its binary was checked")),
        })
    }

    /// The digest of `process`'s executable, when it was hashed already.
    fn hashed(&self, process: &Process) -> Option<[u8; 32]> {
        self.cached(&exe_key(process.pid)?)
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

/// The key of the executable process `pid` runs (a stat of `/proc/PID/exe`).
pub fn exe_key(pid: u32) -> Option<FileKey> {
    fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| file_key(&m))
}

fn exited(process: &Process, what: &str) -> PinError {
    PinError::Unreadable(format!("{} (pid {}) {what}", process.exe, process.pid))
}

/// Whether `process` still runs (the same process: its pid with its start time). A stat that
/// cannot be read while `/proc/PID` exists means the proxy is out of descriptors, which is
/// never reported as the caller's doing.
fn alive(process: &Process) -> Result<bool, PinError> {
    if let Some(stat) = procfs::stat(process.pid) {
        return Ok(stat.start == process.start);
    }
    match fs::metadata(format!("/proc/{}", process.pid)) {
        Err(_) => Ok(false),
        Ok(_) => Err(PinError::Resources(io::Error::other(format!(
            "cannot read /proc/{}/stat",
            process.pid
        )))),
    }
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

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
