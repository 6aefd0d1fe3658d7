//! Landlock: the policy's `read_only` / `read_write` paths, at the highest ABI the kernel has.
//!
//! `prepare` runs in the supervisor, as root, before any privilege is dropped: it opens every
//! path (so a directory the agent's user cannot search is still ruled correctly, upstream's bug
//! #803) and builds the ruleset. Each path is opened through [`paths::open`], which refuses a
//! symlink the agent could have planted in a directory it could write in an earlier session
//! (its workdir replaced by a link to a secret would otherwise be granted read-write by root),
//! and each rule is built from, and sized by, that one descriptor. Paths under `/proc` are the exception: the sandbox mounts a
//! fresh procfs for its PID namespace, whose inodes do not exist yet, so those rules are added
//! by `apply` in the child after the mount. `restrict` then enforces the ruleset and `verify`
//! proves it by opening a path outside every rule.
//!
//! Rights: `read_only` gives execute, read file, read directory; `read_write` gives everything
//! the ABI handles, including truncate (ABI 3), cross-directory rename/link (refer, ABI 2) and
//! device ioctls (ABI 5). Rules on files get only the rights that apply to files. ABI 6 scopes
//! stop the agent from signalling, or connecting to abstract unix sockets of, anything outside
//! its own Landlock domain.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use nix::errno::Errno;
use nix::sys::stat::{SFlag, fstat};

use crate::paths::{self, Cause, PathError};
use crate::policy::{Compatibility, Policy};

/// The ABI this build knows in full (Linux 6.15: audit logging of denials).
pub const KNOWN_ABI: i32 = 7;
/// The lowest ABI that enforces `read_only` as written: below 3, truncate(2) is not handled and
/// a "read-only" file the agent's user owns could be emptied.
pub const MIN_HARD_ABI: i32 = 3;

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock works, at this ABI.
    Abi(i32),
    /// Landlock cannot be used; the reason in words.
    Unavailable(String),
}

/// Asks the kernel for its Landlock ABI.
pub fn probe() -> Support {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the attribute pointer must be null and the
    // size 0; the call only returns a number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            landlock_version_flag(),
        )
    };
    if rc > 0 {
        return Support::Abi(rc as i32);
    }
    Support::Unavailable(match Errno::last() {
        Errno::ENOSYS => "the kernel was built without Landlock (ENOSYS)".to_owned(),
        Errno::EOPNOTSUPP => {
            "Landlock is disabled at boot (add landlock to the lsm= kernel parameter)".to_owned()
        }
        Errno::EPERM | Errno::EACCES => format!(
            "landlock_create_ruleset is blocked ({}), most likely by the container runtime's \
             seccomp profile",
            Errno::last()
        ),
        other => format!("landlock_create_ruleset failed: {other}"),
    })
}

const fn landlock_version_flag() -> u32 {
    1 // LANDLOCK_CREATE_RULESET_VERSION
}

/// Features missing from `abi` compared with [`KNOWN_ABI`], in words.
pub fn missing_features(abi: i32) -> Vec<&'static str> {
    [
        (
            2,
            "renaming and linking across rule boundaries (refer, ABI 2)",
        ),
        (3, "truncating files (ABI 3)"),
        (5, "ioctl on device files (ABI 5)"),
        (6, "scoping of signals and abstract unix sockets (ABI 6)"),
        (7, "audit logging of denials (ABI 7)"),
    ]
    .into_iter()
    .filter(|(needed, _)| abi < *needed)
    .map(|(_, what)| what)
    .collect()
}

/// Why Landlock cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// No Landlock and the policy requires it.
    #[error(
        "Landlock is required by the policy but not available: {0}; the filesystem policy \
         cannot be enforced (set landlock.compatibility: best_effort to run without it)"
    )]
    Unavailable(String),
    /// Landlock too old and the policy requires it.
    #[error(
        "Landlock ABI {abi} cannot enforce the filesystem policy as written (missing: {missing}); \
         ABI {MIN_HARD_ABI} (Linux 6.2) or later is required (or set landlock.compatibility: \
         best_effort)"
    )]
    TooOld {
        /// The kernel's ABI.
        abi: i32,
        /// What it lacks, in words.
        missing: String,
    },
    /// The landlock crate refused the ruleset.
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// A path's name cannot be passed to the kernel.
    #[error("{0}: path contains a NUL byte")]
    Nul(PathBuf),
    /// A policy path goes through a symlink someone other than root could have made.
    #[error("filesystem policy: {0}")]
    Untrusted(PathError),
}

/// A `/proc` rule added after the fresh procfs is mounted.
#[derive(Debug)]
struct Deferred {
    path: CString,
    dir_access: u64,
}

/// The ruleset, built and waiting to be enforced in the child.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<OwnedFd>,
    deferred: Vec<Deferred>,
    file_mask: u64,
    restrict_flags: u32,
    canary: Option<CString>,
    /// The ABI in use (0 when Landlock is unavailable and the policy allows that).
    pub abi: i32,
    /// Paths that were skipped, with the reason (they grant nothing).
    pub skipped: Vec<(PathBuf, String)>,
    /// Number of rules added before fork.
    pub rules: usize,
}

/// Builds the ruleset for `policy` as root, before fork.
pub fn prepare(policy: &Policy, support: &Support) -> Result<Prepared, LandlockError> {
    let abi = match (support, policy.compatibility) {
        (Support::Unavailable(why), Compatibility::HardRequirement) => {
            return Err(LandlockError::Unavailable(why.clone()));
        }
        (Support::Unavailable(why), Compatibility::BestEffort) => {
            tracing::error!(
                layer = "landlock",
                "RUNNING WITHOUT FILESYSTEM CONFINEMENT: Landlock is not available ({why}) and \
                 the policy says best_effort; the agent can read and write everything its user \
                 can"
            );
            return Ok(Prepared::unconfined());
        }
        (Support::Abi(abi), Compatibility::HardRequirement) if *abi < MIN_HARD_ABI => {
            return Err(LandlockError::TooOld {
                abi: *abi,
                missing: missing_features(*abi).join(", "),
            });
        }
        (Support::Abi(abi), _) => *abi,
    };
    let missing = missing_features(abi);
    if !missing.is_empty() {
        let loud = abi < MIN_HARD_ABI;
        let message = format!(
            "Landlock ABI {abi} on this kernel lacks: {}",
            missing.join(", ")
        );
        if loud {
            tracing::error!(
                layer = "landlock",
                "DEGRADED FILESYSTEM CONFINEMENT (best_effort): {message}"
            );
        } else {
            tracing::warn!(layer = "landlock", "{message}");
        }
    }
    let version = ABI::from(abi);
    let read = AccessFs::from_read(version);
    let all = AccessFs::from_all(version);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)?;
    if abi >= 6 {
        ruleset = ruleset.scope(Scope::from_all(version))?;
    }
    let mut created = ruleset.create()?;
    let mut prepared = Prepared {
        ruleset: None,
        deferred: Vec::new(),
        file_mask: AccessFs::from_file(version).bits(),
        restrict_flags: if abi >= 7 { LOG_NEW_EXEC_ON } else { 0 },
        canary: None,
        abi,
        skipped: Vec::new(),
        rules: 0,
    };
    let fs = &policy.filesystem;
    let paths = fs
        .read_only
        .iter()
        .map(|p| (p, read))
        .chain(fs.read_write.iter().map(|p| (p, all)));
    for (path, access) in paths {
        if path.starts_with("/proc") {
            prepared.deferred.push(Deferred {
                path: cstring(path)?,
                dir_access: access.bits(),
            });
            continue;
        }
        let fd = match paths::open(path) {
            Ok(fd) => fd,
            // Fail closed, for read_only as much as read_write: skipping would run the agent
            // without a path it was promised, and following would grant it whatever the link
            // names (reading a token is as bad as writing one). Only an operator can tell
            // whether the link is meant, so the sandbox does not start until one decides.
            Err(
                e @ PathError {
                    cause: Cause::Untrusted { .. },
                    ..
                },
            ) => return Err(LandlockError::Untrusted(e)),
            // Missing (the default policy lists paths many images lack): it grants nothing.
            Err(e) => {
                prepared.skipped.push((path.clone(), e.cause.to_string()));
                continue;
            }
        };
        // The type of what was opened, not of whatever the path names by now.
        let is_dir = match fstat(&fd) {
            Ok(stat) => paths::has_type(&stat, SFlag::S_IFDIR),
            Err(errno) => {
                prepared.skipped.push((path.clone(), errno.to_string()));
                continue;
            }
        };
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(version)
        };
        created = created.add_rule(PathBeneath::new(fd, access))?;
        prepared.rules += 1;
    }
    // "/" denied proves enforcement; when the policy allows reading "/" there is no canary.
    if !fs
        .read_only
        .iter()
        .chain(&fs.read_write)
        .any(|p| p == Path::new("/"))
    {
        prepared.canary = Some(c"/".to_owned());
    }
    prepared.ruleset = Option::<OwnedFd>::from(created);
    Ok(prepared)
}

/// `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON`: denials are audited after `execve` too, which is
/// when the agent runs (the kernel default only audits the process that called restrict_self).
const LOG_NEW_EXEC_ON: u32 = 2;

fn cstring(path: &Path) -> Result<CString, LandlockError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| LandlockError::Nul(path.to_owned()))
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: RawFd,
}

const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

impl Prepared {
    fn unconfined() -> Prepared {
        Prepared {
            ruleset: None,
            deferred: Vec::new(),
            file_mask: 0,
            restrict_flags: 0,
            canary: None,
            abi: 0,
            skipped: Vec::new(),
            rules: 0,
        }
    }

    /// Whether a ruleset will be enforced.
    pub fn enforces(&self) -> bool {
        self.ruleset.is_some()
    }

    /// After fork, in the child, once the sandbox's procfs is mounted and still as root: adds
    /// the `/proc` rules. A path that does not exist there is skipped, as before fork.
    pub fn apply(&self) -> Result<(), Errno> {
        let Some(ruleset) = &self.ruleset else {
            return Ok(());
        };
        for rule in &self.deferred {
            // SAFETY: `rule.path` is a valid C string; O_PATH opens without reading.
            let fd = unsafe { libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                continue;
            }
            // SAFETY: `fd` was just opened and is owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fstat fills a stat buffer on the stack.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above, `st` is a valid buffer.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
                return Err(Errno::last());
            }
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let access = if is_dir {
                rule.dir_access
            } else {
                rule.dir_access & self.file_mask
            };
            let attr = PathBeneathAttr {
                allowed_access: access,
                parent_fd: fd.as_raw_fd(),
            };
            // SAFETY: `attr` is a valid packed path-beneath attribute for the duration of the
            // call; the ruleset fd is open.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd(),
                    LANDLOCK_RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0u32,
                )
            };
            if rc < 0 {
                return Err(Errno::last());
            }
        }
        Ok(())
    }

    /// Enforces the ruleset on the calling thread and its future children. Needs
    /// no_new_privs (or CAP_SYS_ADMIN, which the agent no longer has).
    pub fn restrict(&self) -> Result<(), Errno> {
        let Some(ruleset) = &self.ruleset else {
            return Ok(());
        };
        // SAFETY: landlock_restrict_self takes the ruleset fd and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_restrict_self,
                ruleset.as_raw_fd(),
                self.restrict_flags,
            )
        };
        if rc < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// Proves enforcement: the canary, a directory outside every rule, must be refused with
    /// EACCES. `Err(None)` means it was readable; `Err(Some(e))` an unexpected error.
    pub fn verify(&self) -> Result<(), Option<Errno>> {
        let (Some(_), Some(canary)) = (&self.ruleset, &self.canary) else {
            return Ok(());
        };
        // SAFETY: valid C string; a successful fd is closed at once.
        let fd = unsafe {
            libc::open(
                canary.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
            return Err(None);
        }
        match Errno::last() {
            Errno::EACCES => Ok(()),
            other => Err(Some(other)),
        }
    }
}
