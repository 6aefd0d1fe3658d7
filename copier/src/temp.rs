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
use nix::sys::stat::{Mode, fstat};

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
        Self::create_from(dir, || fresh_name(dir.name()))
    }

    fn create_from(
        dir: &'d DestDir,
        mut next_name: impl FnMut() -> OsString,
    ) -> Result<Self, Error> {
        for _ in 0..ATTEMPTS {
            let name = next_name();
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
    /// Returns the device and inode of the file renamed, for the caller to find at the
    /// destination (see `install`).
    ///
    /// The directory may be writable by other users (an `emptyDir` is 0777, and another
    /// container of the pod may mount it read-write): one could rename a file of its own over
    /// the temp name between our verification and our rename. So the temp name must still be
    /// this very file (device and inode of the descriptor verified); if not, dropping `self`
    /// removes the name, and what was put there with it.
    pub fn rename_to_dest(mut self) -> Result<(u64, u64), Error> {
        let dir = self.entry.dir;
        let ours = fstat(&self.file).map_err(|errno| Error::io(self.path(), "fstat", errno))?;
        let ours = (ours.st_dev, ours.st_ino);
        match dir.stat_entry(&self.entry.name) {
            Ok(st) if (st.st_dev, st.st_ino) == ours => {}
            Ok(_) | Err(Errno::ENOENT) => {
                return Err(Error::Replaced {
                    path: self.path(),
                    when: "before the rename",
                });
            }
            Err(errno) => return Err(Error::io(self.path(), "stat", errno)),
        }
        dir.rename_to_dest(&self.entry.name)
            .map_err(|errno| Error::io(dir.path_of(dir.name()), "rename", errno))?;
        self.entry.name.clear();
        Ok(ours)
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
        // ENOENT: swept by someone else. EROFS: a read-only directory can gain no new files
        // either, so its leftovers are inert; an install that needs to write reports EROFS itself.
        Err(Errno::ENOENT | Errno::EROFS) => Ok(false),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;
    use std::os::unix::fs::symlink;

    const STALE: &str = ".app.tmp-0123456789abcdef";

    fn dest_dir(scratch: &Scratch) -> DestDir {
        DestDir::open(&scratch.join("app")).unwrap()
    }

    #[test]
    fn fresh_names_match_the_pattern_and_differ() {
        let prefix = temp_prefix(OsStr::new("app"));
        let a = fresh_name(OsStr::new("app"));
        let b = fresh_name(OsStr::new("app"));
        assert!(is_temp_name(&prefix, &a) && is_temp_name(&prefix, &b));
        assert_ne!(a, b);
    }

    #[test]
    fn only_the_exact_pattern_counts_as_ours() {
        let prefix = temp_prefix(OsStr::new("app"));
        assert!(is_temp_name(&prefix, OsStr::new(STALE)));
        for other in [
            "app",
            ".app.tmp-0123456789abcde",
            ".app.tmp-0123456789abcdef0",
            ".app.tmp-0123456789ABCDEF",
            ".other.tmp-0123456789abcdef",
            "x.app.tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_name(&prefix, OsStr::new(other)), "{other}");
        }
    }

    #[test]
    fn a_planted_symlink_on_the_chosen_name_is_skipped_not_followed() {
        let scratch = Scratch::new();
        let outside = Scratch::new();
        std::fs::write(outside.join("target"), b"precious").unwrap();
        symlink(outside.join("target"), scratch.join(STALE)).unwrap();
        let dir = dest_dir(&scratch);
        let mut names = [OsString::from(STALE), fresh_name(OsStr::new("app"))].into_iter();
        let temp = TempFile::create_from(&dir, || names.next().unwrap()).unwrap();
        assert_ne!(temp.path(), scratch.join(STALE));
        assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"precious");
        assert!(scratch.join(STALE).symlink_metadata().unwrap().is_symlink());
    }

    #[test]
    fn gives_up_after_a_bounded_number_of_collisions() {
        let scratch = Scratch::new();
        std::fs::write(scratch.join(STALE), b"").unwrap();
        let dir = dest_dir(&scratch);
        let err = TempFile::create_from(&dir, || OsString::from(STALE)).unwrap_err();
        assert!(err.to_string().contains("File exists"), "{err}");
    }

    #[test]
    fn dropping_a_temp_file_removes_it_and_renaming_keeps_it() {
        let scratch = Scratch::new();
        let dir = dest_dir(&scratch);
        let temp = TempFile::create(&dir).unwrap();
        assert_eq!(scratch.listing().len(), 1);
        drop(temp);
        assert!(scratch.listing().is_empty());
        TempFile::create(&dir).unwrap().rename_to_dest().unwrap();
        assert_eq!(scratch.listing(), ["app"]);
    }

    #[test]
    fn sweeps_abandoned_temp_files_only() {
        let scratch = Scratch::new();
        let outside = Scratch::new();
        std::fs::write(scratch.join(STALE), b"partial").unwrap();
        std::fs::write(scratch.join(".app.tmp-notours"), b"").unwrap();
        std::fs::write(scratch.join(".other.tmp-0123456789abcdef"), b"").unwrap();
        std::fs::write(outside.join("target"), b"precious").unwrap();
        symlink(
            outside.join("target"),
            scratch.join(".app.tmp-00000000000000aa"),
        )
        .unwrap();
        nix::unistd::mkfifo(&scratch.join(".app.tmp-00000000000000bb"), Mode::S_IRWXU).unwrap();
        std::fs::create_dir(scratch.join(".app.tmp-00000000000000cc")).unwrap();
        let dir = dest_dir(&scratch);
        // A live copier's temp file: created and locked, as TempFile::create does.
        let live = TempFile::create(&dir).unwrap();
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();

        assert_eq!(remove_stale(&dir).unwrap(), 1);
        let mut expected = vec![
            ".app.tmp-00000000000000aa",
            ".app.tmp-00000000000000bb",
            ".app.tmp-00000000000000cc",
            ".app.tmp-notours",
            ".other.tmp-0123456789abcdef",
            &live_name,
        ];
        expected.sort_unstable();
        assert_eq!(scratch.listing(), expected);
        assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"precious");
        drop(live);
    }

    #[test]
    fn a_temp_file_whose_owner_died_is_swept() {
        let scratch = Scratch::new();
        let dir = dest_dir(&scratch);
        let temp = TempFile::create(&dir).unwrap();
        // Simulate the owner dying: the kernel drops its lock; the name stays.
        temp.file.unlock().unwrap();
        assert_eq!(remove_stale(&dir).unwrap(), 1);
        assert!(scratch.listing().is_empty());
        drop(temp);
    }
}
