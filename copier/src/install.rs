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
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::geteuid;

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
    let (src, size) = open_source(source)?;
    // A restarted init container finds its own earlier work: leave it alone, same inode.
    if let Some(bytes) = current_size(&dir, &expected.digest, size)? {
        return Ok(report(Action::AlreadyCurrent, bytes));
    }
    let temp = TempFile::create(&dir)?;
    let (bytes, method) = write_verified(&src, source, size, &temp, &expected.digest)?;
    // rename(2) is atomic: readers of the destination see the old file or the new one, never a
    // mix, and it replaces the name itself rather than writing through whatever it points to.
    let renamed = temp.rename_to_dest()?;
    confirm_installed(&dir, renamed, &expected.digest, size)?;
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

/// The destination's size if it already is the binary this copier would install: a regular
/// file owned by our effective uid, with one link, mode 0555, `size` bytes (the source's) and
/// the `expected` digest.
///
/// Anything less is replaced, not trusted. The directory may be writable by other users: a
/// 0555 file another uid owns can be made writable again by its owner and rewritten after we
/// vouched for it; a second link is a name someone else may hold; and a file of the wrong size
/// is not ours, however long it would take to hash (a planted 20 GiB sparse file costs its
/// planter nothing). Hashing reads at most `size` bytes.
///
/// A symlink at the destination is refused rather than replaced: we never create one, so it was
/// planted (or the volume is misconfigured), and failing loudly beats quietly papering over
/// tampering. The atomic rename would never write through one anyway.
fn current_size(dir: &DestDir, expected: &Digest, size: u64) -> Result<Option<u64>, Error> {
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
    // Judged by what is opened now (a copier finishing meanwhile may have replaced it).
    match open_dest(dir)? {
        None => Ok(None),
        Some((file, opened)) => verified_size(dir, &file, &opened, expected, size),
    }
}

/// Opens the destination without following a link; `None` when there is nothing (or a link)
/// there by now. Returns the file and its `fstat`: what was opened, not whatever the name
/// points to a moment later.
fn open_dest(dir: &DestDir) -> Result<Option<(File, FileStat)>, Error> {
    let path = || dir.path_of(dir.name());
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = match dir.open_entry(dir.name(), flags, Mode::empty()) {
        Ok(file) => file,
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
        Err(errno) => return Err(Error::io(path(), "open", errno)),
    };
    let opened = fstat(&file).map_err(|errno| Error::io(path(), "fstat", errno))?;
    Ok(Some((file, opened)))
}

/// `Some(size)` when the open `file` (whose `fstat` is `opened`) is one this copier would have
/// left: ours by [`installed_by_us`], with the expected digest. Reads at most `size` bytes.
fn verified_size(
    dir: &DestDir,
    file: &File,
    opened: &FileStat,
    expected: &Digest,
    size: u64,
) -> Result<Option<u64>, Error> {
    if !installed_by_us(opened, size) {
        return Ok(None);
    }
    let (digest, bytes) =
        Digest::of_prefix(file, size).map_err(|e| Error::io(dir.path_of(dir.name()), "read", e))?;
    Ok((bytes == size && digest == *expected).then_some(bytes))
}

/// After the rename, the destination must be the very file verified (`renamed`: device and
/// inode): another user of the directory could have renamed a file of theirs over the temp
/// name just before our rename, or over the destination just after. A concurrent copier of
/// ours finishing after us is fine: what it installed is verified like ours (checked again
/// here). Anything else there was never verified: it is removed and the run fails.
fn confirm_installed(
    dir: &DestDir,
    renamed: (u64, u64),
    expected: &Digest,
    size: u64,
) -> Result<(), Error> {
    // With several copiers renaming over the destination at once, the file we open may be
    // replaced before we judge it: then we look again at what replaced it. Bounded, because
    // someone renaming files over the destination without end must not keep us here forever.
    for _ in 0..LOOKS {
        // Opened, then judged by its descriptor: a stat followed by an open could see two
        // different files.
        let Some((file, opened)) = open_dest(dir)? else {
            break;
        };
        match judge(dir, &file, &opened, renamed, expected, size)? {
            Look::Installed => return Ok(()),
            Look::Replaced => {}
            Look::Unverified => break,
        }
    }
    // Best effort, as on every error path: the run fails either way.
    let _ = dir.unlink(dir.name());
    Err(Error::Replaced {
        path: dir.path_of(dir.name()),
        when: "after the rename",
    })
}

/// Times [`confirm_installed`] looks at the destination: each look after the first follows
/// another rename over it, and a pod runs one copier (a few at most when restarts overlap).
const LOOKS: usize = 16;

/// What one look at the destination found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// The file we renamed, or one a concurrent copier verified like ours.
    Installed,
    /// A file that no longer has the destination's name: renamed over since we opened it.
    Replaced,
    /// Something no copier verified.
    Unverified,
}

/// Judges the destination `file` (whose `fstat` is `opened`) after our rename of `renamed`.
fn judge(
    dir: &DestDir,
    file: &File,
    opened: &FileStat,
    renamed: (u64, u64),
    expected: &Digest,
    size: u64,
) -> Result<Look, Error> {
    if (opened.st_dev, opened.st_ino) == renamed {
        return Ok(Look::Installed);
    }
    // No name left: someone renamed over it between our open and our fstat. What it was no
    // longer matters; its successor does.
    if opened.st_nlink == 0 {
        return Ok(Look::Replaced);
    }
    Ok(match verified_size(dir, file, opened, expected, size)? {
        Some(_) => Look::Installed,
        None => Look::Unverified,
    })
}

/// Whether `st` is what this copier leaves behind: owned by our effective uid, nobody else's
/// name for it, mode 0555, `size` bytes.
fn installed_by_us(st: &FileStat, size: u64) -> bool {
    st.st_uid == geteuid().as_raw()
        && st.st_nlink == 1
        && st.st_mode & 0o7777 == INSTALLED_MODE
        && u64::try_from(st.st_size) == Ok(size)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;

    /// A source file, its digest, and the destination directory `out/` with `app` to install.
    struct Setup {
        scratch: Scratch,
        size: u64,
        digest: Digest,
        dir: DestDir,
    }

    impl Setup {
        fn new() -> Setup {
            let scratch = Scratch::new();
            let data = b"the verified binary ".repeat(1000);
            let source = scratch.file("source", &data);
            let digest = Digest::of_file(&source).unwrap().0;
            std::fs::create_dir(scratch.join("out")).unwrap();
            let dir = DestDir::open(&scratch.join("out/app")).unwrap();
            Setup {
                scratch,
                size: data.len() as u64,
                digest,
                dir,
            }
        }

        /// A temp file holding the verified copy, mode 0555, ready to be renamed.
        fn verified(&self) -> TempFile<'_> {
            let temp = TempFile::create(&self.dir).unwrap();
            // Each copy reads its own descriptor (copying moves the file position).
            let source_path = self.scratch.join("source");
            let source = File::open(&source_path).unwrap();
            write_verified(&source, &source_path, self.size, &temp, &self.digest).unwrap();
            temp
        }

        /// Another user's file, renamed over `name` in `out/`.
        fn plant_over(&self, name: &Path) {
            let planted = self.scratch.join("out/planted");
            std::fs::write(&planted, b"the attacker's bytes").unwrap();
            std::fs::rename(&planted, name).unwrap();
        }

        fn out(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.scratch.join("out"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn a_file_renamed_over_the_temp_name_after_verification_is_not_installed() {
        let setup = Setup::new();
        let temp = setup.verified();
        setup.plant_over(&temp.path());
        let err = temp.rename_to_dest().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Replaced {
                    when: "before the rename",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::EXIT_IO);
        assert!(setup.out().is_empty(), "{:?}", setup.out());
    }

    #[test]
    fn a_file_renamed_over_the_destination_after_the_rename_is_removed() {
        let setup = Setup::new();
        let renamed = setup.verified().rename_to_dest().unwrap();
        setup.plant_over(&setup.scratch.join("out/app"));
        let err = confirm_installed(&setup.dir, renamed, &setup.digest, setup.size).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Replaced {
                    when: "after the rename",
                    ..
                }
            ),
            "{err}"
        );
        assert!(setup.out().is_empty(), "{:?}", setup.out());
    }

    #[test]
    fn a_concurrent_copiers_verified_file_at_the_destination_is_accepted() {
        let setup = Setup::new();
        let (first, second) = (setup.verified(), setup.verified());
        let renamed = first.rename_to_dest().unwrap();
        second.rename_to_dest().unwrap();
        confirm_installed(&setup.dir, renamed, &setup.digest, setup.size).unwrap();
        assert_eq!(setup.out(), ["app"]);
    }

    #[test]
    fn a_destination_renamed_over_after_it_was_opened_is_looked_at_again() {
        let setup = Setup::new();
        let renamed = setup.verified().rename_to_dest().unwrap();
        let (file, opened) = open_dest(&setup.dir).unwrap().unwrap();
        let judged = |opened: &FileStat, renamed| {
            judge(
                &setup.dir,
                &file,
                opened,
                renamed,
                &setup.digest,
                setup.size,
            )
            .unwrap()
        };
        assert_eq!(judged(&opened, renamed), Look::Installed);
        // Another copier's verified file renamed over ours while we held it open: ours has no
        // name left, and in our fstat that is all that tells it from the file now there.
        let other = setup.verified().rename_to_dest().unwrap();
        assert_ne!(other, renamed);
        let opened = fstat(&file).unwrap();
        assert_eq!(opened.st_nlink, 0);
        // Judged as a third copier would, whose own file was replaced by both.
        let third = (0, 0);
        assert_eq!(judged(&opened, third), Look::Replaced);
        confirm_installed(&setup.dir, third, &setup.digest, setup.size).unwrap();
        assert_eq!(setup.out(), ["app"]);
    }

    #[test]
    fn only_our_own_single_linked_0555_file_of_the_right_size_is_current() {
        let setup = Setup::new();
        setup.verified().rename_to_dest().unwrap();
        let current = || current_size(&setup.dir, &setup.digest, setup.size).unwrap();
        assert_eq!(current(), Some(setup.size));
        let app = setup.scratch.join("out/app");
        // A second name for it.
        std::fs::hard_link(&app, setup.scratch.join("out/link")).unwrap();
        assert_eq!(current(), None);
        std::fs::remove_file(setup.scratch.join("out/link")).unwrap();
        // Another owner (who could make it writable again).
        std::os::unix::fs::lchown(&app, Some(65534), None).unwrap();
        assert_eq!(current(), None);
        std::os::unix::fs::lchown(&app, Some(geteuid().as_raw()), None).unwrap();
        std::fs::set_permissions(&app, Permissions::from_mode(INSTALLED_MODE)).unwrap();
        assert_eq!(current(), Some(setup.size));
        // Another size: not even read.
        assert_eq!(
            current_size(&setup.dir, &setup.digest, setup.size - 1).unwrap(),
            None
        );
    }
}
