//! Credential sources: checked (present, hidden from the agent) and, for files, read.
//!
//! A file source is meant to be a Secret volume mounted at a path the policy does not list:
//! the agent's filesystem view then has no such path at all. A file under a listed path (or
//! reached through one by a symlink, as a Secret volume's `..data` links are) would be
//! readable by the agent, which defeats the point, so it is refused.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::store::wipe;
use crate::policy::Filesystem;

/// Largest credential value accepted (a key, a token, a small JSON document).
pub const MAX_VALUE: usize = 64 * 1024;

/// Why a source cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Not there (or empty).
    #[error("is not set (or empty)")]
    Missing,
    /// The file cannot be read by the supervisor.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// The agent could read it too.
    #[error(
        "lies under {listed}, which the policy lets the agent read; mount it at a path the \
         policy does not list"
    )]
    Exposed {
        /// The listed path.
        listed: PathBuf,
    },
    /// Not a usable value.
    #[error("{0}")]
    Value(&'static str),
}

/// A value read from a file, zeroed when dropped.
pub struct FileValue(Vec<u8>);

impl FileValue {
    /// The value.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for FileValue {
    fn drop(&mut self) {
        let len = self.0.capacity();
        // The whole allocation, not just the value: the trailing newline went there too.
        self.0.resize(len, 0);
        wipe(&mut self.0);
    }
}

impl std::fmt::Debug for FileValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileValue([CREDENTIAL])")
    }
}

/// The listed path (read-only or read-write) through which the agent could reach `path`, if
/// any: `path` as written or as its symlinks resolve.
pub fn exposed(path: &Path, filesystem: &Filesystem) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok();
    let listed = filesystem.read_only.iter().chain(&filesystem.read_write);
    for dir in listed {
        let real_dir = std::fs::canonicalize(dir).ok();
        let under =
            |p: &Path| p.starts_with(dir) || real_dir.as_ref().is_some_and(|d| p.starts_with(d));
        if under(path) || real.as_deref().is_some_and(under) {
            return Some(dir.clone());
        }
    }
    None
}

/// Checks a file source without reading it: there, a regular file, hidden from the agent.
pub fn check_file(path: &Path, filesystem: &Filesystem) -> Result<(), SourceError> {
    if let Some(listed) = exposed(path, filesystem) {
        return Err(SourceError::Exposed { listed });
    }
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::Missing,
        _ => SourceError::Unreadable(e.to_string()),
    })?;
    if !meta.is_file() {
        return Err(SourceError::Unreadable("not a regular file".into()));
    }
    Ok(())
}

/// Reads a file source (checked as [`check_file`] does). One trailing newline is dropped: a
/// Secret made from `echo KEY > file` has one, and no API key ends in one.
pub fn read_file(path: &Path, filesystem: &Filesystem) -> Result<FileValue, SourceError> {
    check_file(path, filesystem)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| SourceError::Unreadable(e.to_string()))?;
    // Room for the largest value and one more byte, so the buffer never grows (a grown
    // buffer would leave a copy behind in freed memory).
    let mut value = FileValue(Vec::with_capacity(MAX_VALUE + 2));
    file.take(MAX_VALUE as u64 + 2)
        .read_to_end(&mut value.0)
        .map_err(|e| SourceError::Unreadable(e.to_string()))?;
    for end in [&b"\r\n"[..], b"\n"] {
        if value.0.ends_with(end) {
            let keep = value.0.len() - end.len();
            wipe(&mut value.0[keep..]);
            value.0.truncate(keep);
            break;
        }
    }
    check_value(&value.0)?;
    Ok(value)
}

/// A value the proxy can put in a header, a URL or a body: non-empty, bounded, with no
/// control characters (a CR or LF would split the request it is put into).
pub fn check_value(value: &[u8]) -> Result<(), SourceError> {
    if value.is_empty() {
        return Err(SourceError::Missing);
    }
    if value.len() > MAX_VALUE {
        return Err(SourceError::Value("is longer than 64 KiB"));
    }
    if value.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(SourceError::Value(
            "contains a control character (CR, LF, NUL, ...), which would split the request \
             it is put into",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("openshell-src-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn files_are_read_without_their_newline_and_checked() {
        let dir = scratch("read");
        let fs = Filesystem {
            read_only: vec![PathBuf::from("/usr")],
            read_write: vec![],
        };
        std::fs::write(dir.join("key"), "sk-file-value\n").unwrap();
        std::fs::write(dir.join("crlf"), "sk-crlf\r\n").unwrap();
        std::fs::write(dir.join("bad"), "sk-a\nsk-b\n").unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let read = |name: &str| read_file(&dir.join(name), &fs).map(|v| v.bytes().to_vec());
        assert_eq!(read("key"), Ok(b"sk-file-value".to_vec()));
        assert_eq!(read("crlf"), Ok(b"sk-crlf".to_vec()));
        assert!(matches!(read("bad"), Err(SourceError::Value(_))));
        assert_eq!(read("empty"), Err(SourceError::Missing));
        assert_eq!(read("absent"), Err(SourceError::Missing));
        assert!(
            format!("{:?}", read_file(&dir.join("key"), &fs).unwrap()).contains("[CREDENTIAL]")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A Secret volume's layout: the key is a symlink through `..data` into a timestamped
    /// directory. Reached through a listed path, as written or through the links, it is the
    /// agent's to read.
    #[test]
    fn a_file_the_agent_could_read_is_refused() {
        let dir = scratch("exposed");
        std::fs::create_dir_all(dir.join("secret/..2026_01_01")).unwrap();
        std::fs::write(dir.join("secret/..2026_01_01/key"), "sk").unwrap();
        let _ = std::os::unix::fs::symlink("..2026_01_01", dir.join("secret/..data"));
        let _ = std::os::unix::fs::symlink("..data/key", dir.join("secret/key"));
        let _ = std::os::unix::fs::symlink(dir.join("secret"), dir.join("link"));
        let key = dir.join("secret/key");
        let hidden = Filesystem {
            read_only: vec![PathBuf::from("/usr")],
            read_write: vec![PathBuf::from("/tmp-not-there")],
        };
        assert_eq!(check_file(&key, &hidden), Ok(()));
        let listed = Filesystem {
            read_only: vec![],
            read_write: vec![dir.join("secret")],
        };
        assert_eq!(
            check_file(&key, &listed),
            Err(SourceError::Exposed {
                listed: dir.join("secret")
            })
        );
        // Listed through a symlink to the directory, and the key named through another.
        let through_link = Filesystem {
            read_only: vec![dir.join("link")],
            read_write: vec![],
        };
        assert!(check_file(&key, &through_link).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
