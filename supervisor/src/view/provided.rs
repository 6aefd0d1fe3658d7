//! Files the supervisor provides to the agent (the L7 proxy's CA bundle, ...): placed
//! read-only under `/run/openshell` in the view, on a private filesystem written before fork
//! and sealed read-only. Nothing in the agent's image or the pod is touched, so this works
//! with a read-only root and a `FROM scratch` image.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmod, fchmodat, mkdirat};

use super::plan::PROVIDED_DIR;

/// A file for the agent: where under `/run/openshell`, what, and with which permission bits.
/// Owned by root; the agent reads it if `mode` lets others read (0o644 does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedFile {
    /// Absolute path below `/run/openshell`, e.g. `/run/openshell/tls/ca-bundle.pem`.
    pub path: PathBuf,
    /// Its contents.
    pub contents: Vec<u8>,
    /// Permission bits (at most 0o777: no setuid, setgid or sticky bit). The filesystem is
    /// `noexec`, so execute bits have no effect.
    pub mode: u32,
}

/// Why a provided file cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProvidedError {
    /// Not a plain absolute path below `/run/openshell`.
    #[error(
        "provided file {}: must be an absolute path below {PROVIDED_DIR}/ without . or ..",
        .0.display()
    )]
    Outside(PathBuf),
    /// Mode bits beyond 0o777.
    #[error("provided file {}: mode {:#o} has bits beyond 0o777", .0.display(), .1)]
    Mode(PathBuf, u32),
    /// The same path twice, or a file where another needs a directory.
    #[error("provided file {}: clashes with {}", .0.display(), .1.display())]
    Clash(PathBuf, PathBuf),
    /// Writing it failed.
    #[error("provided file {}: {}", .0.display(), .1)]
    Io(PathBuf, Errno),
}

/// The path below `/run/openshell`, checked.
fn relative(file: &ProvidedFile) -> Result<PathBuf, ProvidedError> {
    let outside = || ProvidedError::Outside(file.path.clone());
    let rest = file
        .path
        .strip_prefix(PROVIDED_DIR)
        .map_err(|_| outside())?;
    let plain = rest.components().all(|c| matches!(c, Component::Normal(_)));
    if !file.path.is_absolute() || rest.as_os_str().is_empty() || !plain {
        return Err(outside());
    }
    if file.mode & !0o777 != 0 {
        return Err(ProvidedError::Mode(file.path.clone(), file.mode));
    }
    Ok(rest.to_owned())
}

/// Checks every file: paths, modes, and that no two clash.
pub fn validate(files: &[ProvidedFile]) -> Result<(), ProvidedError> {
    for (i, file) in files.iter().enumerate() {
        relative(file)?;
        for other in &files[..i] {
            if file.path.starts_with(&other.path) || other.path.starts_with(&file.path) {
                return Err(ProvidedError::Clash(file.path.clone(), other.path.clone()));
            }
        }
    }
    Ok(())
}

/// Writes `files` into the filesystem whose root is `root` (validated first).
pub fn populate(root: BorrowedFd<'_>, files: &[ProvidedFile]) -> Result<(), ProvidedError> {
    validate(files)?;
    for file in files {
        let rest = relative(file)?;
        let io = |errno| ProvidedError::Io(file.path.clone(), errno);
        let mut dir = PathBuf::new();
        if let Some(parent) = rest.parent() {
            for component in parent.components() {
                dir.push(component);
                match mkdirat(root, &dir, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(io(errno)),
                }
                // Exact bits, whatever the supervisor's umask. (Nobody else can reach this
                // filesystem, so there is no link to fear.)
                fchmodat(
                    root,
                    &dir,
                    Mode::from_bits_truncate(0o755),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(io)?;
            }
        }
        write_file(root, &rest, file).map_err(io)?;
    }
    Ok(())
}

fn write_file(root: BorrowedFd<'_>, rest: &Path, file: &ProvidedFile) -> Result<(), Errno> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    let fd = openat(root, rest, flags, Mode::from_bits_truncate(0o600))?;
    let mut written = 0;
    while written < file.contents.len() {
        written += nix::unistd::write(fd.as_fd(), &file.contents[written..])?;
    }
    fchmod(fd.as_fd(), Mode::from_bits_truncate(file.mode))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::view::sys;

    fn file(path: &str, mode: u32) -> ProvidedFile {
        ProvidedFile {
            path: path.into(),
            contents: format!("contents of {path}\n").into_bytes(),
            mode,
        }
    }

    #[test]
    fn only_plain_paths_below_run_openshell_with_plain_modes() {
        for bad in [
            "/run/openshell",
            "/run/openshell/",
            "/run/openshellx/a",
            "/etc/passwd",
            "run/openshell/a",
            "/run/openshell/../etc/passwd",
            "/run/openshell/tls/../../../etc/passwd",
        ] {
            assert_eq!(
                validate(&[file(bad, 0o644)]),
                Err(ProvidedError::Outside(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            validate(&[file("/run/openshell/a", 0o4755)]),
            Err(ProvidedError::Mode("/run/openshell/a".into(), 0o4755))
        );
        assert_eq!(
            validate(&[
                file("/run/openshell/tls", 0o644),
                file("/run/openshell/tls/ca.pem", 0o644)
            ]),
            Err(ProvidedError::Clash(
                "/run/openshell/tls/ca.pem".into(),
                "/run/openshell/tls".into()
            ))
        );
        assert_eq!(
            validate(&[
                file("/run/openshell/tls/ca.pem", 0o644),
                file("/run/openshell/tls/truststore.p12", 0o600)
            ]),
            Ok(())
        );
    }

    #[test]
    fn files_are_written_with_their_modes_then_sealed_read_only() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root (creates a filesystem)");
            return;
        }
        let files = [
            file("/run/openshell/tls/ca-bundle.pem", 0o644),
            file("/run/openshell/tls/truststore.p12", 0o640),
            file("/run/openshell/resolv.conf", 0o444),
        ];
        let fs =
            sys::new_filesystem(c"tmpfs", &[(c"mode", c"0755")], sys::NOSUID).expect("a tmpfs");
        populate(fs.as_fd(), &files).expect("populate");
        sys::set_attributes(fs.as_fd(), sys::RDONLY | sys::NOSUID, false).expect("seal");
        for f in &files {
            let rest = f.path.strip_prefix(PROVIDED_DIR).expect("below");
            let stat = nix::sys::stat::fstatat(fs.as_fd(), rest, nix::fcntl::AtFlags::empty())
                .expect("stat");
            assert_eq!(stat.st_mode & 0o7777, f.mode, "{}", f.path.display());
            assert_eq!((stat.st_uid, stat.st_gid), (0, 0));
            let fd = openat(fs.as_fd(), rest, OFlag::O_RDONLY, Mode::empty()).expect("open");
            let mut buf = vec![0u8; 256];
            let n = nix::unistd::read(fd.as_fd(), &mut buf).expect("read");
            assert_eq!(&buf[..n], f.contents.as_slice());
            assert_eq!(
                openat(fs.as_fd(), rest, OFlag::O_WRONLY, Mode::empty()).map(|f| f.as_raw_fd()),
                Err(Errno::EROFS)
            );
        }
        let tls = nix::sys::stat::fstatat(fs.as_fd(), "tls", nix::fcntl::AtFlags::empty())
            .expect("stat tls");
        assert_eq!(tls.st_mode & 0o7777, 0o755);
    }
}
