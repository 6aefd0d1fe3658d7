//! The destination directory, opened once and used only through its descriptor.
//!
//! Resolving the directory path a single time means a rename or a symlink swapped in mid-run
//! cannot redirect later steps elsewhere: every create, stat, rename and unlink is `*at()`
//! relative to the descriptor we checked.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::Error;

/// The directory that will hold the destination file, plus the destination's name in it.
#[derive(Debug)]
pub struct DestDir {
    fd: File,
    path: PathBuf,
    name: OsString,
}

impl DestDir {
    /// Opens the parent directory of `dest`.
    ///
    /// `O_NOFOLLOW` refuses a symlink as the last component: the install directory is the mount
    /// point we were given, and a symlink there (planted, or a misconfigured volume) could be
    /// re-pointed between our checks and our writes. The components above it belong to the image.
    pub fn open(dest: &Path) -> Result<Self, Error> {
        let name = dest.file_name().ok_or_else(|| Error::Usage {
            arg: "--dest".into(),
            reason: format!("{} does not name a file", dest.display()),
        })?;
        let path = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(&path, flags, Mode::empty()).map_err(|errno| {
            // Linux says ELOOP or ENOTDIR for a symlink under O_NOFOLLOW|O_DIRECTORY; look again
            // so the message says what the user has to fix.
            let is_link = path
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                Error::Symlink {
                    path: path.clone(),
                    hint: "point --dest into the real directory",
                }
            } else {
                Error::io(&path, "open directory", errno)
            }
        })?;
        Ok(Self {
            fd: fd.into(),
            path,
            name: name.to_owned(),
        })
    }

    /// The destination's file name inside the directory.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The full path of an entry, for messages only: never used to reach the file.
    pub fn path_of(&self, entry: &OsStr) -> PathBuf {
        self.path.join(entry)
    }

    /// The directory's own path, for messages only.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens an entry without ever following a symlink (`O_NOFOLLOW | O_CLOEXEC` are always added).
    pub fn open_entry(&self, entry: &OsStr, flags: OFlag, mode: Mode) -> Result<File, Errno> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(&self.fd, entry, flags, mode).map(File::from)
    }

    /// `lstat` of an entry.
    pub fn stat_entry(&self, entry: &OsStr) -> Result<FileStat, Errno> {
        fstatat(&self.fd, entry, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// Atomically replaces the destination with `entry`. `rename` swaps the directory entry
    /// itself, so it never writes through a symlink that may have appeared at the destination.
    pub fn rename_to_dest(&self, entry: &OsStr) -> Result<(), Errno> {
        renameat(&self.fd, entry, &self.fd, self.name.as_os_str())
    }

    /// Removes an entry (never a directory).
    pub fn unlink(&self, entry: &OsStr) -> Result<(), Errno> {
        unlinkat(&self.fd, entry, UnlinkatFlags::NoRemoveDir)
    }

    /// Makes completed renames durable: without it a power loss may bring back the old entry,
    /// or none, even though the file's data was synced.
    pub fn sync(&self) -> Result<(), Error> {
        self.fd
            .sync_all()
            .map_err(|e| Error::io(&self.path, "fsync", e))
    }
}

impl AsFd for DestDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
