//! The install algorithm: the agent container sees either no binary, the previous complete one,
//! or the new complete verified one; never a partial or unverified file. Each step says which
//! failure or attack it is there for.

use std::fs::{File, Permissions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::{Mode, SFlag};

use crate::copy::{self, Failure, Method};
use crate::digest::{Digest, ReadBack};
use crate::dir::DestDir;
use crate::error::Error;
use crate::expected::{Authority, Expected};
use crate::temp::{self, TempFile};

/// Mode of the installed binary: any uid in the agent container may run it, nobody may modify
/// it in place (a writable binary in a shared volume would let one container alter another's
/// supervisor).
const INSTALLED_MODE: u32 = 0o555;

/// What a successful run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new file was verified and renamed into place, its bytes moved with this method.
    Installed(Method),
    /// The destination already held the verified digest with mode 0555: nothing was written.
    AlreadyCurrent,
}

/// The outcome of a successful run, for the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub action: Action,
    /// The destination path.
    pub dest: PathBuf,
    /// The verified digest of the destination.
    pub digest: Digest,
    /// The destination's size in bytes.
    pub bytes: u64,
    /// What vouched for the digest.
    pub authority: Authority,
    /// Temp files of killed earlier runs that this run removed.
    pub stale_removed: usize,
}

/// Installs `source` at `dest` if `dest` does not already hold the `expected` digest.
pub fn install(source: &Path, dest: &Path, expected: &Expected) -> Result<Report, Error> {
    // Resolve the directory once; every later step is relative to this descriptor, so a path
    // component swapped mid-run cannot redirect our writes.
    let dir = DestDir::open(dest)?;
    // Before anything else, so that even a run with nothing to install leaves no debris of an
    // earlier run that was killed mid-copy.
    let stale_removed = temp::remove_stale(&dir)?;
    let report = |action, bytes| Report {
        action,
        dest: dir.path_of(dir.name()),
        digest: expected.digest,
        bytes,
        authority: expected.authority,
        stale_removed,
    };
    // A restarted init container finds its own earlier work: leave it alone, same inode.
    if let Some(bytes) = current_size(&dir, &expected.digest)? {
        return Ok(report(Action::AlreadyCurrent, bytes));
    }
    let (src, size) = open_source(source)?;
    let temp = TempFile::create(&dir)?;
    let (bytes, method) = write_verified(&src, source, size, &temp, &expected.digest)?;
    // rename(2) is atomic: readers of the destination see the old file or the new one, never a
    // mix, and it replaces the name itself rather than writing through whatever it points to.
    temp.rename_to_dest()?;
    // Without this a power loss could resurrect the previous entry (or none) after we said "done".
    dir.sync()?;
    Ok(report(Action::Installed(method), bytes))
}

/// Fills `temp` from `src` and proves it holds `expected`, made executable and durable.
/// On error the caller drops `temp`, which unlinks it: nothing partial survives.
fn write_verified(
    src: &File,
    source: &Path,
    size: u64,
    temp: &TempFile<'_>,
    expected: &Digest,
) -> Result<(u64, Method), Error> {
    let (copied, readback) = copy_and_hash(src, size, temp.file());
    let (_, method) = copied.map_err(|failure| match failure {
        Failure::Read(e) => Error::io(source, "read", e),
        Failure::Write { op, error } => Error::io(temp.path(), op, error),
    })?;
    let (actual, bytes) = readback
        .and_then(|readback| readback.finish(temp.file()))
        .map_err(|e| Error::io(temp.path(), "read back", e))?;
    if actual != *expected {
        return Err(Error::DigestMismatch {
            source_path: source.to_owned(),
            expected: *expected,
            actual,
        });
    }
    // Executable only once verified. Done before the fsync so that one fsync makes both the
    // bytes and the mode durable.
    temp.file()
        .set_permissions(Permissions::from_mode(INSTALLED_MODE))
        .map_err(|e| Error::io(temp.path(), "fchmod", e))?;
    // The data must be on disk before a name points at it, or a crash after the rename leaves a
    // complete-looking but empty or partial file. Delayed-allocation ENOSPC/EIO surface here,
    // while we can still back out.
    temp.file()
        .sync_all()
        .map_err(|e| Error::io(temp.path(), "fsync", e))?;
    Ok((bytes, method))
}

/// Copies `src` into `dst` on a second thread while this one hashes `dst` read back through its
/// own descriptor, trailing the copy chunk by chunk.
///
/// Hashing what the temp file holds (`pread` on the temp file's own descriptor), not what we read
/// from the source, catches a source modified
/// or replaced while we copied, a short copy, and a filesystem that mangled the write. Doing it
/// alongside the copy, with writeback of each chunk started as soon as it is copied, overlaps the
/// three costs (kernel copy, SHA-256, disk writes) instead of adding them up.
fn copy_and_hash(
    src: &File,
    size: u64,
    dst: &File,
) -> (Result<(u64, Method), Failure>, std::io::Result<ReadBack>) {
    let (progress, copied_up_to) = mpsc::channel();
    std::thread::scope(|scope| {
        let copier = scope.spawn(move || {
            let mut written = 0;
            copy::copy(src, dst, size, |done| {
                start_writeback(dst, written, done);
                written = done;
                // The receiver only goes away if hashing failed; the copy result no longer matters.
                let _ = progress.send(done);
            })
        });
        let mut readback = ReadBack::new();
        let hashed = copied_up_to
            .iter()
            .try_for_each(|done| readback.advance(dst, done));
        // A panic on the copy thread is a bug: re-raise it here rather than hide it.
        let copied = copier
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (copied, hashed.map(|()| readback))
    })
}

/// Asks the kernel to start writing `[from, to)` of `file` to disk now, so the fsync that must
/// follow finds most of the work done. Only a hint: any real write error is reported by fsync.
fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from)))
    else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is kept open by
    // `file` for the duration of the call.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// The destination's size if it already is a regular file of mode 0555 holding `expected`.
///
/// A symlink at the destination is refused rather than replaced: we never create one, so it was
/// planted (or the volume is misconfigured), and failing loudly beats quietly papering over
/// tampering. The atomic rename would never write through one anyway.
fn current_size(dir: &DestDir, expected: &Digest) -> Result<Option<u64>, Error> {
    let path = || dir.path_of(dir.name());
    let st = match dir.stat_entry(dir.name()) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(Error::io(path(), "stat", errno)),
    };
    match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
        SFlag::S_IFREG => {}
        SFlag::S_IFLNK => {
            return Err(Error::Symlink {
                path: path(),
                hint: "remove it: the copier only ever replaces a regular file there",
            });
        }
        _ => return Err(Error::not_regular(path(), st.st_mode)),
    }
    if st.st_mode & 0o7777 != INSTALLED_MODE {
        return Ok(None);
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = match dir.open_entry(dir.name(), flags, Mode::empty()) {
        Ok(file) => file,
        // Replaced since the stat: whatever it is now, it is not known to be current.
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
        Err(errno) => return Err(Error::io(path(), "open", errno)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path(), "fstat", e))?;
    if !meta.file_type().is_file() || meta.mode() & 0o7777 != INSTALLED_MODE {
        return Ok(None);
    }
    let (digest, bytes) = Digest::of_file(&file).map_err(|e| Error::io(path(), "read", e))?;
    Ok((digest == *expected).then_some(bytes))
}

/// Opens the source for reading and returns it with its size.
///
/// Symlinks are followed here: the image may lay out its binaries through links, and whatever we
/// read is verified by digest before it is installed. It must be a regular file, though, and
/// `O_NONBLOCK` keeps a FIFO from hanging us before `fstat` can say so.
fn open_source(path: &Path) -> Result<(File, u64), Error> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "fstat", e))?;
    if !meta.file_type().is_file() {
        return Err(Error::not_regular(path, meta.mode()));
    }
    Ok((file, meta.len()))
}
