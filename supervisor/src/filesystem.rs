//! The filesystem policy as the kernel will see it, and which layer enforces which rule.
//!
//! Each listed path is opened once, as root, before fork ([`resolve`]); the two layers that
//! enforce the policy are built from those descriptors:
//! - the **view** (`view/`): the agent's root is a fresh filesystem holding only the listed
//!   paths, each mounted at its place, read-only ones read-only. Unlisted paths do not exist;
//!   every change under a read-only path (write, truncation, creation, deletion, rename, link)
//!   fails with `EROFS` or `EXDEV`. It needs only mount namespaces, so it works on every
//!   kernel the supervisor supports, Landlock or not.
//! - **Landlock** (`landlock.rs`), a second layer over the same paths at the kernel's highest
//!   ABI, which adds what mounts cannot say: a path below `/proc` narrower than `/proc`
//!   itself, a device file that is read-only, ioctl on devices (ABI 5), signal and
//!   abstract-socket scoping (ABI 6), audit records of denials (ABI 7).
//!
//! `landlock.compatibility: hard_requirement` means that every rule is enforced by at least
//! one layer: the sandbox refuses to start only when a rule needs Landlock and the kernel has
//! none. `best_effort` then runs anyway, saying loudly what is not enforced.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::{SFlag, fstat};

use crate::landlock::{self, Support};
use crate::paths::{self, Cause, Opened, PathError};
use crate::policy::{Compatibility, Filesystem};
use crate::view;

/// The rights a policy path gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read and execute.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

impl Access {
    /// In words, for messages.
    pub fn words(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        }
    }
}

/// A listed path, opened.
#[derive(Debug)]
pub struct Entry {
    /// As the policy writes it.
    pub listed: PathBuf,
    /// Its rights.
    pub access: Access,
    /// The descriptor, physical path and links on the way.
    pub opened: Opened,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Whether it is a character or block device.
    pub is_device: bool,
}

/// The policy's paths, opened.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Every path that exists, `/proc` excepted.
    pub entries: Vec<Entry>,
    /// Paths at or below `/proc`: they name the sandbox's own procfs, which does not exist
    /// before fork, so they are resolved inside the sandbox.
    pub proc: Vec<(PathBuf, Access)>,
    /// Paths that do not exist (many images lack some of the default's), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Why the filesystem policy cannot be enforced.
#[derive(Debug, thiserror::Error)]
pub enum FilesystemError {
    /// A policy path goes through a symlink someone other than root could have made.
    #[error("filesystem policy: {0}")]
    Untrusted(PathError),
    /// Rules that only Landlock can enforce, on a kernel without it.
    #[error(
        "the filesystem policy has rules only Landlock can enforce, and Landlock is not \
         available ({why}): {}; remove them, or set landlock.compatibility: best_effort to run \
         without them",
        listing(rules)
    )]
    NeedsLandlock {
        /// Why Landlock is unavailable.
        why: String,
        /// The rules, with the reason each needs Landlock.
        rules: Vec<(PathBuf, &'static str)>,
    },
}

/// Paths with the reason for each, as `path (reason), ...`, for messages.
pub fn listing(paths: &[(PathBuf, impl std::fmt::Display)]) -> String {
    paths
        .iter()
        .map(|(path, why)| format!("{} ({why})", path.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens every path of `fs` as root, refusing symlinks the agent could have planted.
pub fn resolve(fs: &Filesystem) -> Result<Resolved, FilesystemError> {
    let mut resolved = Resolved::default();
    let listed = fs
        .read_only
        .iter()
        .map(|p| (p, Access::ReadOnly))
        .chain(fs.read_write.iter().map(|p| (p, Access::ReadWrite)));
    for (path, access) in listed {
        if path.starts_with("/proc") {
            resolved.proc.push((path.clone(), access));
            continue;
        }
        let opened = match paths::trace(path) {
            Ok(opened) => opened,
            // Fail closed, for read_only as much as read_write: skipping would run the agent
            // without a path it was promised, and following would grant it whatever the link
            // names. Only an operator can tell whether the link is meant.
            Err(
                e @ PathError {
                    cause: Cause::Untrusted { .. },
                    ..
                },
            ) => return Err(FilesystemError::Untrusted(e)),
            Err(e) => {
                resolved.skipped.push((path.clone(), e.cause.to_string()));
                continue;
            }
        };
        // The type of what was opened, not of whatever the path names by now.
        let stat = match fstat(opened.fd.as_fd()) {
            Ok(stat) => stat,
            Err(errno) => {
                resolved.skipped.push((path.clone(), errno.to_string()));
                continue;
            }
        };
        resolved.entries.push(Entry {
            listed: path.clone(),
            access,
            is_dir: paths::has_type(&stat, SFlag::S_IFDIR),
            is_device: paths::has_type(&stat, SFlag::S_IFCHR)
                || paths::has_type(&stat, SFlag::S_IFBLK),
            opened,
        });
    }
    Ok(resolved)
}

/// The rules the view cannot enforce, with the reason: only Landlock can.
pub fn needs_landlock(resolved: &Resolved) -> Vec<(PathBuf, &'static str)> {
    let proc = resolved
        .proc
        .iter()
        .filter(|(p, _)| p != Path::new("/proc"))
        .map(|(p, _)| {
            (
                p.clone(),
                "narrower than /proc, and the view shows the sandbox's whole /proc",
            )
        });
    let devices = resolved
        .entries
        .iter()
        .filter(|e| e.is_device && e.access == Access::ReadOnly)
        .filter(|e| !view::is_standard_device(&e.opened.physical))
        .map(|e| {
            (
                e.listed.clone(),
                "a read-only device file, and a read-only mount does not stop writes to a device",
            )
        });
    proc.chain(devices).collect()
}

/// What enforces the filesystem policy here, in words (for `check` and the start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// One line per layer or caveat.
    pub lines: Vec<String>,
    /// Whether something the policy asks for is not enforced (only with best_effort).
    pub degraded: bool,
}

/// Decides whether the policy can run here, and says which layer enforces what.
pub fn decide(
    compatibility: Compatibility,
    resolved: &Resolved,
    view: &view::Summary,
    landlock: &Support,
) -> Result<Enforcement, FilesystemError> {
    let mut lines = vec![view.describe()];
    let needs = needs_landlock(resolved);
    let mut degraded = false;
    match landlock {
        Support::Abi(abi) => {
            let adds = landlock::adds(*abi);
            lines.push(format!(
                "landlock: ABI {abi}, a second layer over the same paths{}",
                if adds.is_empty() {
                    String::new()
                } else {
                    format!("; adds {}", adds.join(", "))
                }
            ));
            for (path, why) in &needs {
                lines.push(format!(
                    "landlock alone enforces {} ({why})",
                    path.display()
                ));
            }
        }
        Support::Unavailable(why) => {
            if needs.is_empty() {
                lines.push(format!(
                    "landlock: not available ({why}); the view alone enforces every rule of \
                     this policy"
                ));
            } else if compatibility == Compatibility::HardRequirement {
                return Err(FilesystemError::NeedsLandlock {
                    why: why.clone(),
                    rules: needs,
                });
            } else {
                degraded = true;
                lines.push(format!(
                    "DEGRADED (best_effort): Landlock is not available ({why}); not enforced: {}",
                    listing(&needs)
                ));
            }
        }
    }
    for (child, parent) in &view.view_only {
        lines.push(format!(
            "the view alone keeps {} read-only under the writable {} (Landlock rights add up \
             down a tree)",
            child.display(),
            parent.display()
        ));
    }
    Ok(Enforcement { lines, degraded })
}

/// Listed paths the agent's user cannot use as listed because of ownership and modes (plain
/// permission bits; ACLs are not read): a tool under root's 0700 home, a root-owned
/// read-write workdir. The mounts decide which directories the agent walks through: those
/// the view makes are open to all; inside a mounted path, the pod's own modes apply.
pub fn unusable(
    resolved: &Resolved,
    mounted: &[(PathBuf, Access)],
    uid: u32,
    gid: u32,
) -> Vec<String> {
    let from_pod = |dir: &Path| mounted.iter().any(|(m, _)| dir.starts_with(m));
    let mut problems = Vec::new();
    for entry in &resolved.entries {
        let path = &entry.opened.physical;
        let blocked = path
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find_map(|dir| {
                let stat = nix::sys::stat::lstat(dir).ok()?;
                (from_pod(dir) && !permitted(&stat, uid, gid, SEARCH))
                    .then(|| (dir.to_owned(), stat))
            });
        if let Some((dir, stat)) = blocked {
            problems.push(format!(
                "the agent (uid {uid}, gid {gid}) cannot reach {}: {} is {}",
                entry.listed.display(),
                dir.display(),
                owner_and_mode(&stat)
            ));
            continue;
        }
        let Ok(stat) = fstat(entry.opened.fd.as_fd()) else {
            continue;
        };
        let mut want = READ;
        if entry.is_dir {
            want |= SEARCH;
        }
        if entry.access == Access::ReadWrite && !entry.is_device {
            want |= WRITE;
        }
        if !permitted(&stat, uid, gid, want) {
            problems.push(format!(
                "the agent (uid {uid}, gid {gid}) cannot {} the {} {}: it is {}",
                if want & WRITE != 0 { "write" } else { "read" },
                entry.access.words(),
                entry.listed.display(),
                owner_and_mode(&stat)
            ));
        }
    }
    problems
}

const READ: u32 = 4;
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

/// Whether the permission bits of `stat` give `uid`/`gid` every right in `want`.
fn permitted(stat: &nix::sys::stat::FileStat, uid: u32, gid: u32, want: u32) -> bool {
    let mode = stat.st_mode;
    let bits = if stat.st_uid == uid {
        mode >> 6
    } else if stat.st_gid == gid {
        mode >> 3
    } else {
        mode
    } & 7;
    bits & want == want
}

fn owner_and_mode(stat: &nix::sys::stat::FileStat) -> String {
    format!(
        "mode {:04o}, owned by uid {} gid {}",
        stat.st_mode & 0o7777,
        stat.st_uid,
        stat.st_gid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> view::Summary {
        view::Summary::default()
    }

    fn with_proc(paths: &[&str]) -> Resolved {
        Resolved {
            proc: paths
                .iter()
                .map(|p| (PathBuf::from(p), Access::ReadOnly))
                .collect(),
            ..Resolved::default()
        }
    }

    #[test]
    fn without_landlock_the_view_alone_suffices_unless_a_rule_needs_landlock() {
        let none = Support::Unavailable("disabled at boot".into());
        for compatibility in [Compatibility::HardRequirement, Compatibility::BestEffort] {
            let ok = decide(compatibility, &with_proc(&["/proc"]), &summary(), &none)
                .expect("the view enforces /proc as a whole");
            assert!(!ok.degraded);
            assert!(
                ok.lines
                    .iter()
                    .any(|l| l.contains("the view alone enforces every rule")),
                "{ok:?}"
            );
        }
        let narrow = with_proc(&["/proc/cpuinfo"]);
        let e = decide(Compatibility::HardRequirement, &narrow, &summary(), &none)
            .expect_err("only Landlock can narrow /proc");
        assert!(
            e.to_string().contains("/proc/cpuinfo (narrower than /proc"),
            "{e}"
        );
        let degraded = decide(Compatibility::BestEffort, &narrow, &summary(), &none)
            .expect("best_effort runs");
        assert!(degraded.degraded);
        let with = decide(
            Compatibility::HardRequirement,
            &narrow,
            &summary(),
            &Support::Abi(2),
        )
        .expect("Landlock enforces it");
        assert!(
            with.lines
                .iter()
                .any(|l| l.starts_with("landlock alone enforces /proc/cpuinfo")),
            "{with:?}"
        );
    }
}
