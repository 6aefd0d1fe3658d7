//! The copier's one error type and the exit status each failure maps to.
//!
//! Every message names the file (or argument) at fault and the cause, so the single line an
//! init container leaves in `kubectl logs` is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

use nix::libc;

use crate::digest::Digest;

/// Exit status of a run that installed the binary or found it already current.
pub const EXIT_OK: u8 = 0;
/// Exit status of a usage or configuration error: nothing was read or written.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a digest disagreement: nothing was installed.
pub const EXIT_MISMATCH: u8 = 3;
/// Exit status of an I/O failure or a refused symlink / non-regular file: nothing partial is left.
pub const EXIT_IO: u8 = 4;

/// Everything that can stop an install, with a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line (or `OPENSHELL_SUPERVISOR_SHA256`) could not be understood.
    #[error("{arg}: {reason} (see --help)")]
    Usage {
        /// The argument or environment variable at fault.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No pin was given and the manifest does not exist: nothing vouches for the source.
    #[error(
        "{}: not found and no pin given; refusing to install a binary nothing vouches for \
         (pass --sha256 or set OPENSHELL_SUPERVISOR_SHA256)",
        shown(.manifest)
    )]
    NothingToVerifyAgainst {
        /// The manifest that was looked for.
        manifest: PathBuf,
    },

    /// A manifest line is not in `sha256sum` format.
    #[error(
        "{}: line {line}: {reason}; expected `<64 hex digits>  <file name>` as written by sha256sum",
        shown(.path)
    )]
    ManifestSyntax {
        /// The manifest.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: &'static str,
    },

    /// The manifest has no line for the source and no pin was given.
    #[error(
        "{}: no entry for {}, and no pin given (pass --sha256 or set OPENSHELL_SUPERVISOR_SHA256)",
        shown(.path),
        shown(.name)
    )]
    ManifestNoEntry {
        /// The manifest.
        path: PathBuf,
        /// The source's file name, which no entry matched.
        name: PathBuf,
    },

    /// A manifest named with `--manifest` has no line for the source.
    #[error(
        "{}: no entry for {}; a manifest named with --manifest must list the source (a pin \
         does not stand in for it)",
        shown(.path),
        shown(.name)
    )]
    GivenManifestNoEntry {
        /// The manifest.
        path: PathBuf,
        /// The source's file name, which no entry matched.
        name: PathBuf,
    },

    /// The file renamed into place is not the one that was verified: another user of the
    /// directory put theirs at the temporary name or at the destination meanwhile.
    #[error(
        "{}: {when}, the file there was not the one just verified (another user of the \
         directory replaced it); nothing installed",
        shown(.path)
    )]
    Replaced {
        /// The name that was replaced.
        path: PathBuf,
        /// When it was found out.
        when: &'static str,
    },

    /// The manifest lists the source twice with different digests.
    #[error(
        "{}: lines {first} and {second} give different digests for {}",
        shown(.path),
        shown(.name)
    )]
    ManifestConflict {
        /// The manifest.
        path: PathBuf,
        /// The source's file name.
        name: PathBuf,
        /// Line of the first entry.
        first: usize,
        /// Line of the disagreeing entry.
        second: usize,
    },

    /// The pin and the manifest entry name different binaries.
    #[error(
        "{}: the source's entry is {listed} but {origin} pins {pinned}; refusing to install \
         (the pod spec and the image disagree: update one of them)",
        shown(.manifest)
    )]
    PinMismatch {
        /// The manifest.
        manifest: PathBuf,
        /// Digest the manifest lists for the source.
        listed: Digest,
        /// Digest the pin demands.
        pinned: Digest,
        /// Where the pin came from (`--sha256` or the environment variable).
        origin: &'static str,
    },

    /// The bytes written to the temporary file do not hash to the expected digest.
    #[error(
        "{}: the copied bytes hash to {actual}, expected {expected}; nothing installed",
        shown(.source_path)
    )]
    DigestMismatch {
        /// The source the bytes came from.
        source_path: PathBuf,
        /// The digest the pin or manifest demands.
        expected: Digest,
        /// The digest of what was actually written.
        actual: Digest,
    },

    /// A system call failed.
    #[error("{}: {op}: {source}", shown(.path))]
    Io {
        /// The file the call was about.
        path: PathBuf,
        /// The operation, as short as a system call name.
        op: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },

    /// A symlink sits where we will not follow one.
    #[error("{}: is a symbolic link; refusing to follow it ({hint})", shown(.path))]
    Symlink {
        /// The symlink.
        path: PathBuf,
        /// What the user can do about it.
        hint: &'static str,
    },

    /// A directory, FIFO, device or socket sits where a regular file belongs.
    #[error("{}: is {kind}, not a regular file", shown(.path))]
    NotRegular {
        /// The offending file.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO", ...).
        kind: &'static str,
    },
}

impl Error {
    /// The process exit status documented in `--help` for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. }
            | Self::NothingToVerifyAgainst { .. }
            | Self::ManifestSyntax { .. }
            | Self::ManifestNoEntry { .. }
            | Self::GivenManifestNoEntry { .. }
            | Self::ManifestConflict { .. } => EXIT_USAGE,
            Self::PinMismatch { .. } | Self::DigestMismatch { .. } => EXIT_MISMATCH,
            Self::Io { .. }
            | Self::Symlink { .. }
            | Self::NotRegular { .. }
            | Self::Replaced { .. } => EXIT_IO,
        }
    }

    /// The file this failure is about, if it is about a file (structured logs carry it apart).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Usage { .. } => None,
            Self::NothingToVerifyAgainst { manifest, .. } | Self::PinMismatch { manifest, .. } => {
                Some(manifest)
            }
            Self::ManifestSyntax { path, .. }
            | Self::ManifestNoEntry { path, .. }
            | Self::GivenManifestNoEntry { path, .. }
            | Self::ManifestConflict { path, .. }
            | Self::Replaced { path, .. }
            | Self::Io { path, .. }
            | Self::Symlink { path, .. }
            | Self::NotRegular { path, .. } => Some(path),
            Self::DigestMismatch { source_path, .. } => Some(source_path),
        }
    }

    /// [`Error::NotRegular`] for a file whose `st_mode` is `mode`.
    pub(crate) fn not_regular(path: impl Into<PathBuf>, mode: u32) -> Self {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFDIR => "a directory",
            libc::S_IFLNK => "a symbolic link",
            libc::S_IFIFO => "a FIFO",
            libc::S_IFSOCK => "a socket",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "of an unknown type",
        };
        Self::NotRegular {
            path: path.into(),
            kind,
        }
    }

    /// Shorthand for [`Error::Io`], the most common failure.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
        source: impl Into<io::Error>,
    ) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source: source.into(),
        }
    }
}

/// Renders a path for a one-line message; see [`quoted`].
pub fn shown(path: &Path) -> String {
    quoted(&path.to_string_lossy())
}

/// Quotes and escapes `text` when it is empty or holds whitespace, quotes or control characters,
/// so a hostile file name can neither split a log line nor forge a `key=value` field.
pub fn quoted(text: &str) -> String {
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        format!("{text:?}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_shown_verbatim() {
        assert_eq!(
            shown(Path::new("/opt/openshell/bin/x")),
            "/opt/openshell/bin/x"
        );
    }

    #[test]
    fn paths_that_could_split_a_line_are_quoted() {
        assert_eq!(shown(Path::new("a\nb")), "\"a\\nb\"");
        assert_eq!(shown(Path::new("a b")), "\"a b\"");
        assert_eq!(shown(Path::new("")), "\"\"");
    }

    #[test]
    fn io_errors_name_file_op_and_cause() {
        let err = Error::io("/d/x", "write", io::Error::from_raw_os_error(28));
        assert_eq!(
            err.to_string(),
            "/d/x: write: No space left on device (os error 28)"
        );
        assert_eq!(err.exit_code(), EXIT_IO);
        assert_eq!(err.path(), Some(Path::new("/d/x")));
    }
}
