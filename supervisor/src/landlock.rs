//! Landlock: the second filesystem layer, over the same paths as the view, at the highest ABI
//! the kernel has; built and enforced with the `landlock` crate end to end.
//!
//! `prepare` runs in the supervisor, as root, before any privilege is dropped, on the
//! descriptors [`filesystem::resolve`] opened (so a directory the
//! agent's user cannot search is still ruled correctly, upstream's bug #803, and a symlink the
//! agent could have planted was refused) and on the view's own mounts (the private /tmp and
//! /dev/shm, devpts, the standard devices, the provided files). Paths under `/proc` are the
//! exception: they name the sandbox's own procfs, which init mounts after fork, so `apply` adds
//! them in the agent's process once the view is its root. `restrict` enforces the ruleset and
//! checks the status the crate reports; `verify` proves it by opening a path outside every
//! rule.
//!
//! Rights: `read_only` gives execute, read file, read directory; `read_write` gives everything
//! the ABI handles, including truncate (ABI 3), cross-directory rename/link (refer, ABI 2) and
//! device ioctls (ABI 5). Rules on files get only the rights that apply to files. ABI 6 scopes
//! stop the agent from signalling, or connecting to abstract unix sockets of, anything outside
//! its own Landlock domain. Whether a kernel without Landlock may run the policy at all is
//! decided in `filesystem.rs`: the view enforces most rules alone.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
    Scope,
};
use nix::errno::Errno;
use nix::sys::stat::{SFlag, fstat};

use crate::filesystem::{self, Resolved};
use crate::paths;

/// The ABI this build knows in full (Linux 6.15: audit logging of denials).
pub const KNOWN_ABI: i32 = 7;

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock works, at this ABI.
    Abi(i32),
    /// Landlock cannot be used; the reason in words.
    Unavailable(String),
}

impl Support {
    /// The ABI, 0 when Landlock is unavailable.
    pub fn abi(&self) -> i32 {
        match self {
            Support::Abi(abi) => *abi,
            Support::Unavailable(_) => 0,
        }
    }
}

/// Asks the kernel for its Landlock ABI.
pub fn probe() -> Support {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the attribute pointer must be null and the
    // size 0; the call only returns a number. (The crate only says whether an ABI is
    // supported, not why Landlock is not: the errno tells the operator what to fix.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
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

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

/// What Landlock at `abi` adds to the view, in words.
pub fn adds(abi: i32) -> Vec<&'static str> {
    [
        (1, "per-file rights inside the same paths"),
        (5, "ioctl control on device files (ABI 5)"),
        (6, "signal and abstract unix socket scoping (ABI 6)"),
        (7, "audit records of denials (ABI 7)"),
    ]
    .into_iter()
    .filter(|(needed, _)| abi >= *needed)
    .map(|(_, what)| what)
    .collect()
}

/// Why Landlock cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The landlock crate refused the ruleset.
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// A `/proc` rule added after the sandbox's procfs is mounted.
#[derive(Debug)]
struct Deferred {
    path: PathBuf,
    access: BitFlags<AccessFs>,
}

/// The ruleset, built and waiting to be enforced in the agent's process.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<RulesetCreated>,
    deferred: Vec<Deferred>,
    file_access: BitFlags<AccessFs>,
    canary: bool,
    /// The ABI in use (0 when Landlock is unavailable).
    pub abi: i32,
}

/// Why the agent's process could not apply or prove the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A step failed with an errno.
    Step(&'static str, Errno),
    /// The kernel did not enforce the whole ruleset.
    NotEnforced,
    /// A path outside every rule was still readable.
    CanaryReadable,
}

fn rights(abi: ABI, access: filesystem::Access) -> BitFlags<AccessFs> {
    match access {
        filesystem::Access::ReadOnly => AccessFs::from_read(abi),
        filesystem::Access::ReadWrite => AccessFs::from_all(abi),
    }
}

/// Builds the ruleset for `resolved` and the view's own mounts, as root, before fork.
pub fn prepare<'a>(
    resolved: &'a Resolved,
    view_mounts: impl Iterator<Item = (BorrowedFd<'a>, filesystem::Access, bool)>,
    support: &Support,
) -> Result<Prepared, LandlockError> {
    let abi = match support {
        Support::Unavailable(_) => return Ok(Prepared::unconfined()),
        Support::Abi(abi) => *abi,
    };
    let version = ABI::from(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(version))?;
    if abi >= 6 {
        ruleset = ruleset.scope(Scope::from_all(version))?;
    }
    let mut created = ruleset.create()?.no_new_privs(false);
    if abi >= 7 {
        // Denials are audited after `execve` too, which is when the agent runs (the kernel
        // default only audits the process that called restrict_self).
        created = created.log_new_exec(true)?;
    }
    let mut prepared = Prepared {
        ruleset: None,
        deferred: resolved
            .proc
            .iter()
            .map(|(path, access)| Deferred {
                path: path.clone(),
                access: rights(version, *access),
            })
            .collect(),
        file_access: AccessFs::from_file(version),
        // "/" denied proves enforcement; a policy that allows reading "/" has no canary.
        canary: !resolved
            .entries
            .iter()
            .any(|e| e.opened.physical == Path::new("/")),
        abi,
    };
    let listed = resolved
        .entries
        .iter()
        .map(|e| (e.opened.fd.as_fd(), e.access, e.is_dir));
    for (fd, access, is_dir) in listed.chain(view_mounts) {
        let access = for_type(is_dir, rights(version, access), prepared.file_access);
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    prepared.ruleset = Some(created);
    Ok(prepared)
}

impl Prepared {
    fn unconfined() -> Prepared {
        Prepared {
            ruleset: None,
            deferred: Vec::new(),
            file_access: BitFlags::EMPTY,
            canary: false,
            abi: 0,
        }
    }

    /// In the agent's process, once the view is its root and still as root: adds the `/proc`
    /// rules. A path that does not exist there is skipped, as before fork.
    pub fn apply(&mut self) -> Result<(), Failure> {
        let Some(ruleset) = self.ruleset.as_mut() else {
            return Ok(());
        };
        for rule in &self.deferred {
            let Ok(fd) = PathFd::new(&rule.path) else {
                continue;
            };
            let stat = fstat(fd.as_fd()).map_err(|e| Failure::Step("fstat of a /proc rule", e))?;
            let is_dir = paths::has_type(&stat, SFlag::S_IFDIR);
            let access = for_type(is_dir, rule.access, self.file_access);
            ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| Failure::Step("adding a /proc Landlock rule", errno(&e)))?;
        }
        Ok(())
    }

    /// Enforces the ruleset on the calling thread and its future children, and checks that
    /// the kernel enforces all of it. Needs no_new_privs (or CAP_SYS_ADMIN, which the agent no
    /// longer has).
    pub fn restrict(&mut self) -> Result<(), Failure> {
        match self.ruleset.take() {
            Some(ruleset) => enforce(ruleset, "landlock_restrict_self"),
            None => Ok(()),
        }
    }

    /// Proves enforcement: "/", outside every rule, must be refused with EACCES.
    pub fn verify(&self) -> Result<(), Failure> {
        if self.abi == 0 || !self.canary {
            return Ok(());
        }
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_CLOEXEC;
        match nix::fcntl::open("/", flags, nix::sys::stat::Mode::empty()) {
            Ok(_) => Err(Failure::CanaryReadable),
            Err(Errno::EACCES) => Ok(()),
            Err(other) => Err(Failure::Step("probing a path outside every rule", other)),
        }
    }
}

/// The rights of `access` that apply to a directory or a file (a file gets none of the
/// directory rights in `access`; `file` are the rights that apply to files).
fn for_type(
    is_dir: bool,
    access: BitFlags<AccessFs>,
    file: BitFlags<AccessFs>,
) -> BitFlags<AccessFs> {
    if is_dir { access } else { access & file }
}

/// The errno behind a crate error (EINVAL when it carries none).
/// Enforces `ruleset` on the calling thread and its future children, and checks that the
/// kernel enforces all of it; `step` names the call in an error.
pub(crate) fn enforce(ruleset: RulesetCreated, step: &'static str) -> Result<(), Failure> {
    match ruleset.restrict_self() {
        Ok(RestrictionStatus {
            ruleset: RulesetStatus::FullyEnforced,
            ..
        }) => Ok(()),
        Ok(_) => Err(Failure::NotEnforced),
        Err(e) => Err(Failure::Step(step, errno(&e))),
    }
}

fn errno(error: &(dyn std::error::Error + 'static)) -> Errno {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(raw) = io.raw_os_error()
        {
            return Errno::from_raw(raw);
        }
        cause = e.source();
    }
    Errno::EINVAL
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::{Access, Entry};

    /// The second layer on its own: a ruleset over one read-only directory, enforced on one
    /// thread, refuses what is outside it and a write inside it, and allows a read.
    #[test]
    fn the_ruleset_alone_refuses_outside_and_writes_and_allows_reads() {
        let support = probe();
        if !openshell_tests::require_kernel(matches!(support, Support::Abi(_)), "Landlock") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("openshell-landlock-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("inside")).expect("mkdir");
        std::fs::write(dir.join("inside/file"), "x").expect("write");
        std::fs::write(dir.join("outside"), "x").expect("write");
        let resolved = Resolved {
            entries: vec![Entry {
                listed: dir.join("inside"),
                access: Access::ReadOnly,
                is_dir: true,
                is_device: false,
                opened: paths::trace(&dir.join("inside")).expect("open"),
            }],
            ..Resolved::default()
        };
        let mut prepared = prepare(&resolved, std::iter::empty(), &support).expect("a ruleset");
        let (inside, outside) = (dir.join("inside/file"), dir.join("outside"));
        // Landlock and no_new_privs apply to the calling thread only: the test's other threads
        // stay unconfined.
        let results = std::thread::spawn(move || {
            // SAFETY: prctl with scalar arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let restricted = prepared.restrict().and_then(|()| prepared.verify());
            let read = std::fs::read(&inside)
                .map(drop)
                .map_err(|e| e.raw_os_error());
            let write = std::fs::OpenOptions::new()
                .write(true)
                .open(&inside)
                .map(drop)
                .map_err(|e| e.raw_os_error());
            let out = std::fs::read(&outside)
                .map(drop)
                .map_err(|e| e.raw_os_error());
            (restricted, read, write, out)
        })
        .join()
        .expect("the confined thread");
        let _ = std::fs::remove_dir_all(&dir);
        let eacces = Err(Some(libc::EACCES));
        assert_eq!(results, (Ok(()), Ok(()), eacces, eacces));
    }
}
