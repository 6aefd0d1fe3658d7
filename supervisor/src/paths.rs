//! Opening a path as root without following a symlink the agent could have planted.
//!
//! The supervisor opens the policy's Landlock paths and the agent's workdir as root, before it
//! drops privileges. Some of them live in volumes the agent wrote in an earlier session (its
//! home, its project): had it replaced such a directory with a symlink, a plain `open` would
//! have root grant the agent, or chdir it into, whatever the link names (a service-account
//! token, another tenant's files). [`open`] therefore walks the path one component at a time
//! with `O_NOFOLLOW` and follows a symlink only when nobody but root could have made it: the
//! link is root's, and so is its directory, which no one else can write. The image's own links
//! (`/lib64 -> usr/lib64` on merged-/usr systems, `/etc/resolv.conf`) pass; a link in `/tmp`,
//! in the agent's home, or owned by the agent does not.
//!
//! Each step is relative to the descriptor of the directory reached so far, never to a path
//! string again, so what is checked is what is opened, and renaming things meanwhile cannot
//! swap it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

/// The kernel's own limit (MAXSYMLINKS): a path needing more links than this is a loop.
const MAX_LINKS: usize = 40;

/// A path that [`open`] refused or could not open.
#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}", path.display())]
pub struct PathError {
    /// The path asked for.
    pub path: PathBuf,
    /// Why it was not opened.
    pub cause: Cause,
}

/// Why a path was not opened.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Only absolute paths have one meaning before and after the agent's chdir.
    #[error("not an absolute path")]
    Relative,
    /// A component is missing (ENOENT), not a directory, a loop, ...
    #[error("{0}")]
    Io(Errno),
    /// A symlink on the way that someone other than root could have made.
    #[error(
        "refusing to follow the symlink {} -> {}: {why}, so the agent may have planted it; \
         if the link is meant, name its target instead",
        link.display(),
        target.display()
    )]
    Untrusted {
        /// Where the link is.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
        /// Why it is not trusted.
        why: Distrust,
    },
}

/// Why a symlink is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum Distrust {
    /// The directory holding it belongs to someone else, who can create links in it.
    #[error("its directory {} is owned by uid {uid}, not root", dir.display())]
    DirOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The directory holding it can be written by a group or by everyone (sticky or not: the
    /// sticky bit stops deleting others' files, not creating one's own links).
    #[error("its directory {} is writable by non-root users (mode {mode:04o})", dir.display())]
    DirWritable {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The link itself was made by someone other than root (root may have moved it there).
    #[error("the link is owned by uid {0}, not root")]
    LinkOwner(u32),
}

/// Opens `path` as an `O_PATH | O_CLOEXEC` descriptor, following only the symlinks that root
/// alone could have made (see the module's documentation). `path` must be absolute.
pub fn open(path: &Path) -> Result<OwnedFd, PathError> {
    trace(path).map(|opened| opened.fd)
}

/// What [`trace`] opened, and the way there.
#[derive(Debug)]
pub struct Opened {
    /// The `O_PATH | O_CLOEXEC` descriptor.
    pub fd: OwnedFd,
    /// Where it is, without symlinks: the directories the walk went through.
    pub physical: PathBuf,
    /// Every symlink followed on the way, as (where the link is, its target as written), in
    /// order. Recreated in the sandbox's view, they make the path as written lead to the same
    /// file there.
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// [`open`], also returning the physical path and the links followed.
pub fn trace(path: &Path) -> Result<Opened, PathError> {
    let cause = if path.is_absolute() {
        match walk(path) {
            Ok(opened) => return Ok(opened),
            Err(cause) => cause,
        }
    } else {
        Cause::Relative
    };
    Err(PathError {
        path: path.to_owned(),
        cause,
    })
}

fn walk(path: &Path) -> Result<Opened, Cause> {
    // The directories from "/" down to `here`, so that `..` goes back to the directory the
    // walk actually came through (as the kernel's does), and `at` names `here` in messages.
    let mut ancestors: Vec<OwnedFd> = Vec::new();
    let mut here = open_root()?;
    let mut at = PathBuf::from("/");
    let mut pending = components(path);
    let mut followed = Vec::new();
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // "/.." is "/", as in the kernel.
            if let Some(parent) = ancestors.pop() {
                here = parent;
                at.pop();
            }
            continue;
        }
        let next = openat(
            &here,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(Cause::Io)?;
        let stat = fstat(&next).map_err(Cause::Io)?;
        if !has_type(&stat, SFlag::S_IFLNK) {
            // Not a link: descend (a non-directory fails the next openat with ENOTDIR).
            ancestors.push(std::mem::replace(&mut here, next));
            at.push(&name);
            continue;
        }
        if followed.len() >= MAX_LINKS {
            return Err(Cause::Io(Errno::ELOOP));
        }
        // Read through the link's own descriptor: the link checked is the link read.
        let target = PathBuf::from(readlinkat(&next, "").map_err(Cause::Io)?);
        if let Some(why) = distrust(&here, &at, &stat)? {
            return Err(Cause::Untrusted {
                link: at.join(&name),
                target,
                why,
            });
        }
        if target.as_os_str().is_empty() {
            // The kernel refuses an empty link the same way.
            return Err(Cause::Io(Errno::ENOENT));
        }
        followed.push((at.join(&name), target.clone()));
        if target.is_absolute() {
            ancestors.clear();
            here = open_root()?;
            at = PathBuf::from("/");
        }
        // A relative target continues from the directory holding the link.
        for component in components(&target).into_iter().rev() {
            pending.push_front(component);
        }
    }
    Ok(Opened {
        fd: here,
        physical: at,
        links: followed,
    })
}

fn open_root() -> Result<OwnedFd, Cause> {
    openat(
        AT_FDCWD,
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(Cause::Io)
}

/// The names to walk through, `..` kept (it means the walk's parent), "/" and `.` dropped.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Why the link `link` in the directory `dir` (named `at`) could be someone else's, if it
/// could: only root may own the link and its directory, and only root may write there.
fn distrust(dir: &OwnedFd, at: &Path, link: &FileStat) -> Result<Option<Distrust>, Cause> {
    let dir_stat = fstat(dir).map_err(Cause::Io)?;
    Ok(if dir_stat.st_uid != 0 {
        Some(Distrust::DirOwner {
            dir: at.to_owned(),
            uid: dir_stat.st_uid,
        })
    } else if dir_stat.st_mode & 0o022 != 0 {
        Some(Distrust::DirWritable {
            dir: at.to_owned(),
            mode: dir_stat.st_mode & 0o7777,
        })
    } else if link.st_uid != 0 {
        Some(Distrust::LinkOwner(link.st_uid))
    } else {
        None
    })
}

/// Whether `stat` is of the file type `kind`.
pub fn has_type(stat: &FileStat, kind: SFlag) -> bool {
    stat.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const NOBODY: u32 = 65534;

    /// A root-owned 0755 directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("openshell-paths-{}-{n}", std::process::id()));
            std::fs::create_dir(&path).expect("mkdir scratch");
            chmod(&path, 0o755);
            Scratch(path)
        }

        /// Creates the directory `name` with `mode` (chmod, so the umask does not interfere).
        fn dir(&self, name: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir(&path).expect("mkdir");
            chmod(&path, mode);
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipping: needs root (to own the links and directories under test)");
        false
    }

    /// The device and inode `fd` refers to.
    fn identity(fd: &OwnedFd) -> (u64, u64) {
        let stat = fstat(fd).expect("fstat");
        (stat.st_dev, stat.st_ino)
    }

    fn identity_of(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).expect("metadata");
        (meta.dev(), meta.ino())
    }

    fn refused(path: &Path) -> String {
        let e = open(path).expect_err("an untrusted link must be refused");
        assert!(
            matches!(e.cause, Cause::Untrusted { .. }),
            "{}: expected an untrusted link, got {e}",
            path.display()
        );
        e.to_string()
    }

    fn errno(path: &Path) -> Errno {
        match open(path).map_err(|e| e.cause) {
            Err(Cause::Io(errno)) => errno,
            other => panic!("{}: expected an errno, got {other:?}", path.display()),
        }
    }

    #[test]
    fn trusted_links_are_followed_relative_absolute_and_with_dotdot() {
        if !root() {
            return;
        }
        let s = Scratch::new();
        let target = s.dir("target", 0o755);
        std::fs::create_dir(target.join("sub")).expect("mkdir sub");
        let links = s.dir("links", 0o755);
        symlink("../target", links.join("relative")).expect("symlink");
        symlink(&target, links.join("absolute")).expect("symlink");
        // `..` inside a target, and a link whose target goes through another link.
        symlink("../target/sub/..", links.join("dotdot")).expect("symlink");
        symlink("relative/sub", links.join("chained")).expect("symlink");
        for (name, expected) in [
            ("relative", &target),
            ("absolute", &target),
            ("dotdot", &target),
            ("chained", &target.join("sub")),
        ] {
            let fd = open(&links.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(identity(&fd), identity_of(expected), "{name}");
        }
        // A link in the middle of the path, then `..` after it: the physical parent (the
        // kernel's rule), not the lexical one.
        let fd = open(&links.join("absolute/sub/../sub")).expect("through a link");
        assert_eq!(identity(&fd), identity_of(&target.join("sub")));
        let fd = open(&links.join("relative/..")).expect("parent of a link");
        assert_eq!(identity(&fd), identity_of(&s.0));
    }

    #[test]
    fn links_others_could_have_planted_are_refused() {
        if !root() {
            return;
        }
        let s = Scratch::new();
        let secret = s.dir("secret", 0o700);
        for (dir, mode) in [("open", 0o777), ("sticky", 0o1777), ("group", 0o775)] {
            let dir = s.dir(dir, mode);
            symlink(&secret, dir.join("link")).expect("symlink");
            let message = refused(&dir.join("link/file"));
            assert_eq!(
                message,
                format!(
                    "{}/link/file: refusing to follow the symlink {0}/link -> {}: its directory \
                     {0} is writable by non-root users (mode {mode:04o}), so the agent may have \
                     planted it; if the link is meant, name its target instead",
                    dir.display(),
                    secret.display()
                )
            );
        }
        let home = s.dir("home", 0o755);
        lchown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
        symlink(&secret, home.join("project")).expect("symlink");
        let message = refused(&home.join("project"));
        assert!(
            message.contains(&format!(
                "its directory {} is owned by uid {NOBODY}, not root",
                home.display()
            )),
            "{message}"
        );
        let safe = s.dir("safe", 0o755);
        symlink(&secret, safe.join("theirs")).expect("symlink");
        lchown(safe.join("theirs"), Some(NOBODY), Some(NOBODY)).expect("lchown");
        let message = refused(&safe.join("theirs"));
        assert!(
            message.contains(&format!("the link is owned by uid {NOBODY}, not root")),
            "{message}"
        );
        // A trusted link leading to an untrusted one is refused too.
        symlink(home.join("project"), safe.join("mine")).expect("symlink");
        let message = refused(&safe.join("mine"));
        assert!(
            message.contains(&format!("{}/project ->", home.display())),
            "{message}"
        );
    }

    #[test]
    fn loops_missing_components_and_relative_paths_fail_with_errno() {
        if !root() {
            return;
        }
        let s = Scratch::new();
        let d = s.dir("d", 0o755);
        symlink("b", d.join("a")).expect("symlink");
        symlink("a", d.join("b")).expect("symlink");
        assert_eq!(errno(&d.join("a")), Errno::ELOOP);
        assert_eq!(errno(&d.join("missing/deeper")), Errno::ENOENT);
        symlink("missing", d.join("dangling")).expect("symlink");
        assert_eq!(errno(&d.join("dangling")), Errno::ENOENT);
        std::fs::write(d.join("file"), "").expect("write");
        assert_eq!(errno(&d.join("file/below")), Errno::ENOTDIR);
        let e = open(Path::new("relative/path")).expect_err("relative");
        assert!(matches!(e.cause, Cause::Relative), "{e}");
    }

    #[test]
    fn the_systems_own_links_resolve() {
        // /bin and /lib64 are links into /usr on merged-/usr systems, real directories
        // elsewhere: either way they must open as what the kernel resolves them to.
        for path in ["/bin", "/lib64", "/", "/dev/null", "/etc/resolv.conf"] {
            let path = Path::new(path);
            if std::fs::metadata(path).is_err() {
                continue;
            }
            let fd = open(path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(identity(&fd), identity_of(path), "{}", path.display());
        }
    }
}
