//! Moving the bytes: in the kernel where the kernel and filesystem allow it, through a user
//! buffer otherwise.
//!
//! `copy_file_range` lets the filesystem reflink or copy server-side; `sendfile` still avoids the
//! user-space round trip when the two files live on different filesystems (`EXDEV` before 5.3 and
//! again since 5.19 across filesystem types); `read`/`write` works everywhere. Both descriptors'
//! file positions advance together whichever method runs, so a switch mid-copy resumes exactly
//! where the previous method stopped.

use std::fs::File;
use std::io::{self, Read, Write};

use nix::errno::Errno;

/// Bytes asked of one kernel copy call: small enough that a reader trailing the copy (the
/// verifying hash) starts early, large enough that syscall overhead stays negligible.
const KERNEL_CHUNK: usize = 1 << 20;
/// User-space buffer for the last-resort method.
const BUFFER: usize = 256 * 1024;

/// How the bytes were moved (reported in the log line, and asserted on by tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `copy_file_range(2)`: in-kernel, possibly reflinked or offloaded.
    CopyFileRange,
    /// `sendfile(2)`: in-kernel through the page cache.
    Sendfile,
    /// `read(2)` / `write(2)` through a user buffer.
    ReadWrite,
}

impl Method {
    /// The system call name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CopyFileRange => "copy_file_range",
            Self::Sendfile => "sendfile",
            Self::ReadWrite => "read_write",
        }
    }

    /// The method to try when this one is refused.
    fn fallback(self) -> Option<Self> {
        match self {
            Self::CopyFileRange => Some(Self::Sendfile),
            Self::Sendfile => Some(Self::ReadWrite),
            Self::ReadWrite => None,
        }
    }
}

/// Which side of a copy failed, so the error can name the right file.
#[derive(Debug)]
pub enum Failure {
    /// `read` of the source failed.
    Read(io::Error),
    /// Writing the destination failed, or a kernel copy did: it cannot say which side, but its
    /// failures a user can act on (`ENOSPC`, `EDQUOT`, `EFBIG`, `EROFS`) are the destination's.
    Write {
        /// The system call that failed.
        op: &'static str,
        /// The kernel's answer.
        error: io::Error,
    },
}

impl Failure {
    /// The underlying error.
    pub fn error(&self) -> &io::Error {
        match self {
            Self::Read(error) | Self::Write { error, .. } => error,
        }
    }

    /// Whether the kernel refused the method itself rather than failed doing it: a different
    /// filesystem, a kernel or filesystem without the call. Real failures (ENOSPC, EIO, ...)
    /// must surface, not be retried a slower way.
    fn means_unsupported(&self) -> bool {
        matches!(
            self.error().raw_os_error().map(Errno::from_raw),
            Some(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
        )
    }
}

/// Copies `src` from its current position to its end into `dst` at `dst`'s current position,
/// starting with `copy_file_range` and falling back when the kernel or filesystem refuses a
/// method. Returns the bytes copied and the method that finished the job.
///
/// `size_hint` is the source size from `fstat`: a kernel method that reports end-of-file before
/// reaching it is not trusted (some pseudo and FUSE filesystems say 0 for "cannot") and the next
/// method gets a chance; only `read` has the last word on where the file ends. Short copies are
/// simply continued, and the caller verifies the result by digest anyway.
///
/// `progress` is told the total copied after every call that moved bytes, so a reader can trail
/// the copy.
pub fn copy(
    src: &File,
    dst: &File,
    size_hint: u64,
    progress: impl FnMut(u64),
) -> Result<(u64, Method), Failure> {
    copy_from(Method::CopyFileRange, src, dst, size_hint, progress)
}

fn copy_from(
    first: Method,
    src: &File,
    dst: &File,
    size_hint: u64,
    mut progress: impl FnMut(u64),
) -> Result<(u64, Method), Failure> {
    let mut method = first;
    let mut copied = 0u64;
    let mut buf = Vec::new();
    loop {
        match step(method, src, dst, &mut buf) {
            Ok(0) => match method.fallback() {
                Some(next) if copied < size_hint => method = next,
                _ => return Ok((copied, method)),
            },
            Ok(n) => {
                copied += n as u64;
                progress(copied);
            }
            // A signal arrived before anything moved: just ask again.
            Err(f) if f.error().kind() == io::ErrorKind::Interrupted => {}
            Err(f) => match method.fallback() {
                Some(next) if f.means_unsupported() => method = next,
                _ => return Err(f),
            },
        }
    }
}

/// One call of `method`; returns how many bytes moved (0 at end of file).
fn step(method: Method, src: &File, dst: &File, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    let kernel = |op, result: nix::Result<usize>| {
        result.map_err(|e| Failure::Write {
            op,
            error: e.into(),
        })
    };
    match method {
        Method::CopyFileRange => kernel(
            "copy_file_range",
            nix::fcntl::copy_file_range(src, None, dst, None, KERNEL_CHUNK),
        ),
        Method::Sendfile => kernel(
            "sendfile",
            nix::sys::sendfile::sendfile(dst, src, None, KERNEL_CHUNK),
        ),
        Method::ReadWrite => {
            buf.resize(BUFFER, 0);
            let n = (&*src).read(buf).map_err(Failure::Read)?;
            // write_all continues short writes and retries EINTR itself.
            (&*dst)
                .write_all(&buf[..n])
                .map_err(|error| Failure::Write { op: "write", error })?;
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;
    use std::io::{Seek, SeekFrom};

    fn data() -> Vec<u8> {
        (0..3 * BUFFER + 123).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn copy_with(first: Method, src_dir: &Scratch, dst_dir: &Scratch) -> (Vec<u8>, Method) {
        let data = data();
        let src = src_dir.file("src", &data);
        let dst = dst_dir.file("dst", b"");
        let mut reported = Vec::new();
        let (n, method) = copy_from(first, &src, &dst, data.len() as u64, |done| {
            reported.push(done)
        })
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(reported.last(), Some(&n));
        assert!(reported.windows(2).all(|w| w[0] < w[1]));
        let written = std::fs::read(dst_dir.join("dst")).unwrap();
        (written, method)
    }

    #[test]
    fn copy_file_range_copies_within_one_filesystem() {
        let dir = Scratch::new();
        assert_eq!(
            copy_with(Method::CopyFileRange, &dir, &dir),
            (data(), Method::CopyFileRange)
        );
    }

    #[test]
    fn sendfile_and_read_write_copy_everything() {
        let dir = Scratch::new();
        assert_eq!(
            copy_with(Method::Sendfile, &dir, &dir),
            (data(), Method::Sendfile)
        );
        assert_eq!(
            copy_with(Method::ReadWrite, &dir, &dir),
            (data(), Method::ReadWrite)
        );
    }

    #[test]
    fn a_method_that_stops_early_hands_over_to_the_next() {
        let dir = Scratch::new();
        let data = data();
        let src = dir.file("src", &data);
        let dst = dir.file("dst", b"");
        // Claiming the file is longer than it is makes every kernel method's EOF look premature,
        // so the copy must end with read(2) having the last word, and still be exact.
        let (n, method) = copy_from(Method::CopyFileRange, &src, &dst, u64::MAX, |_| ()).unwrap();
        assert_eq!((n, method), (data.len() as u64, Method::ReadWrite));
        assert_eq!(std::fs::read(dir.join("dst")).unwrap(), data);
    }

    #[test]
    fn continues_from_the_current_positions() {
        let dir = Scratch::new();
        let data = data();
        let mut src = dir.file("src", &data);
        let mut dst = dir.file("dst", b"");
        dst.write_all(&data[..1000]).unwrap();
        src.seek(SeekFrom::Start(1000)).unwrap();
        let (n, _) = copy(&src, &dst, data.len() as u64, |_| ()).unwrap();
        assert_eq!(n, data.len() as u64 - 1000);
        assert_eq!(std::fs::read(dir.join("dst")).unwrap(), data);
    }

    #[test]
    fn only_refusals_count_as_unsupported() {
        let failure = |errno: Errno| Failure::Write {
            op: "copy_file_range",
            error: io::Error::from(errno),
        };
        assert!(failure(Errno::EXDEV).means_unsupported());
        assert!(failure(Errno::EOPNOTSUPP).means_unsupported());
        assert!(!failure(Errno::ENOSPC).means_unsupported());
        assert!(!failure(Errno::EIO).means_unsupported());
    }
}
