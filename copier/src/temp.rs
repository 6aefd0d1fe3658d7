//! Temporary files beside the destination, and the sweep that removes abandoned ones.
//!
//! A copier writes `.NAME.tmp-XXXXXXXXXXXXXXXX` next to `NAME` and renames it into place only
//! once verified, so a reader of `NAME` never sees a partial file. A copier killed mid-copy leaves
//! its temp file behind; the next copier removes it. To tell abandoned temp files from ones a live
//! concurrent copier is still writing, every copier holds an exclusive `flock` on its temp file for
//! its whole life: the kernel releases it when the process dies, even by SIGKILL.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::hash::{BuildHasher, Hasher};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::dir::DestDir;
use crate::error::Error;

/// Hex digits in the random part of a temp name.
const SUFFIX_DIGITS: usize = 16;
/// Fresh names tried before giving up; collisions need a planted file or a 2^-64 coincidence.
const ATTEMPTS: usize = 16;

/// A temp file this process created and holds the lock on. Dropping it unlinks it, so every
/// early return on an error path leaves nothing behind; [`TempFile::rename_to_dest`] disarms that.
#[derive(Debug)]
pub struct TempFile<'d> {
    // Field order matters: the name is unlinked (on drop) before the lock is released, so a
    // sweeping copier never sees this file unlocked while it still has its name.
    entry: Entry<'d>,
    file: File,
}

impl<'d> TempFile<'d> {
    /// Creates a new, empty, locked temp file in `dir`, mode 0600 until verified.
    pub fn create(dir: &'d DestDir) -> Result<Self, Error> {
        for _ in 0..ATTEMPTS {
            let name = fresh_name(dir.name());
            // O_EXCL|O_NOFOLLOW: if anything, a symlink in particular, already has this name we
            // get EEXIST instead of writing through it, and simply pick another name.
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL;
            let file = match dir.open_entry(&name, flags, Mode::from_bits_truncate(0o600)) {
                Ok(file) => file,
                Err(Errno::EEXIST) => continue,
                Err(errno) => return Err(Error::io(dir.path_of(&name), "create", errno)),
            };
            let entry = Entry { dir, name };
            match file.try_lock() {
                // A sweeping copier grabbed the lock in the instant between our create and our
                // lock, and may already have unlinked the name: start over with a new one.
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(Error::io(entry.path(), "flock", e)),
                Ok(()) => match file.metadata() {
                    Ok(meta) if meta.nlink() > 0 => return Ok(Self { entry, file }),
                    Ok(_) => continue,
                    Err(e) => return Err(Error::io(entry.path(), "fstat", e)),
                },
            }
        }
        Err(Error::io(
            dir.path_of(&temp_prefix(dir.name())),
            "create",
            Errno::EEXIST,
        ))
    }

    /// The open temp file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temp file's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.entry.path()
    }

    /// Renames the temp file over the destination; from then on it is no longer ours to remove.
    pub fn rename_to_dest(mut self) -> Result<(), Error> {
        let dir = self.entry.dir;
        dir.rename_to_dest(&self.entry.name)
            .map_err(|errno| Error::io(dir.path_of(dir.name()), "rename", errno))?;
        self.entry.name.clear();
        Ok(())
    }
}

/// The directory entry of a temp file; unlinked on drop unless its name was cleared.
#[derive(Debug)]
struct Entry<'d> {
    dir: &'d DestDir,
    name: OsString,
}

impl Entry<'_> {
    fn path(&self) -> PathBuf {
        self.dir.path_of(&self.name)
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            // Best effort: if this fails too, the next copier's sweep removes the file.
            let _ = self.dir.unlink(&self.name);
        }
    }
}

/// Removes temp files that earlier copiers abandoned in `dir`; returns how many.
///
/// Only names matching our exact pattern, only regular files (a symlink or FIFO wearing our name
/// is not ours and is never followed or opened blocking), and only unlocked ones (a locked one
/// belongs to a live concurrent copier).
pub fn remove_stale(dir: &DestDir) -> Result<usize, Error> {
    // A fresh open of "." gives the listing its own read position, independent of dir's fd.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut listing = Dir::openat(dir, ".", flags, Mode::empty())
        .map_err(|errno| Error::io(dir.path(), "open directory", errno))?;
    let prefix = temp_prefix(dir.name());
    let mut removed = 0;
    for entry in listing.iter() {
        let entry = entry.map_err(|errno| Error::io(dir.path(), "read directory", errno))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if is_temp_name(&prefix, name) && remove_if_abandoned(dir, name)? {
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove_if_abandoned(dir: &DestDir, name: &OsStr) -> Result<bool, Error> {
    let path = || dir.path_of(name);
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = match dir.open_entry(name, flags, Mode::empty()) {
        Ok(file) => file,
        // ELOOP: a symlink wearing our name. ENOENT: another copier swept it first.
        Err(Errno::ELOOP | Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(Error::io(path(), "open", errno)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path(), "fstat", e))?;
    if !meta.file_type().is_file() {
        return Ok(false);
    }
    // Held until `file` closes at the end of this function.
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(e)) => return Err(Error::io(path(), "flock", e)),
    }
    // Between our open and our lock its owner may have renamed it into place and exited: unlink
    // the name only if it still refers to the very inode we hold locked.
    match dir.stat_entry(name) {
        Ok(st) if st.st_ino == meta.ino() && st.st_dev == meta.dev() => {}
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(Error::io(path(), "stat", errno)),
    }
    match dir.unlink(name) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(Error::io(path(), "unlink", errno)),
    }
}

/// `.NAME.tmp-`: hidden, so `ls` and shell globs skip it, and tied to the destination name, so
/// copiers installing different files into one directory never sweep each other's.
fn temp_prefix(dest_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(dest_name);
    prefix.push(".tmp-");
    prefix
}

fn is_temp_name(prefix: &OsStr, candidate: &OsStr) -> bool {
    candidate
        .as_bytes()
        .strip_prefix(prefix.as_bytes())
        .is_some_and(|s| {
            s.len() == SUFFIX_DIGITS && s.iter().all(|b| b"0123456789abcdef".contains(b))
        })
}

/// A new temp name. Uniqueness, not secrecy, is what matters: O_EXCL|O_NOFOLLOW already make a
/// guessed and planted name harmless. `RandomState` is seeded from the OS's random source once per
/// process and advanced on every call, so no random-number crate is needed.
fn fresh_name(dest_name: &OsStr) -> OsString {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    let mut name = temp_prefix(dest_name).into_vec();
    name.extend(format!("{:0width$x}", hasher.finish(), width = SUFFIX_DIGITS).bytes());
    OsString::from_vec(name)
}
