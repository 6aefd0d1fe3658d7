//! Who the agent runs as: never root.
//!
//! Resolved before fork from, in order: `OPENSHELL_SANDBOX_UID` / `OPENSHELL_SANDBOX_GID`
//! (set by the Kubernetes driver from OpenShift's namespace range), the policy's
//! `process.run_as_user` / `run_as_group`, the image's `sandbox` user, and finally 65534
//! (nobody). Names are looked up in the agent image's own `/etc/passwd` and `/etc/group`,
//! read as files: a static binary has no NSS, and the image's NSS modules are not ours to run.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use crate::policy::{Principal, RunAs};

/// Environment variable overriding the agent's uid.
pub const ENV_UID: &str = "OPENSHELL_SANDBOX_UID";
/// Environment variable overriding the agent's gid.
pub const ENV_GID: &str = "OPENSHELL_SANDBOX_GID";
/// The conventional sandbox user of upstream's images.
const DEFAULT_USER: &str = "sandbox";
/// nobody / nogroup.
const NOBODY: u32 = 65534;

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// User id, never 0.
    pub uid: u32,
    /// Group id, never 0.
    pub gid: u32,
    /// User name, when the image knows the uid.
    pub name: Option<String>,
    /// Home directory from the image's passwd entry.
    pub home: Option<PathBuf>,
    /// Login shell from the image's passwd entry.
    pub shell: Option<PathBuf>,
    /// How the identity was chosen, for logs and `check`.
    pub source: &'static str,
}

/// Why the identity cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The environment override is not a valid id.
    #[error(
        "{var}={value:?}: expected a number in 1-4294967294 (never 0: the agent never runs as root)"
    )]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A name from the policy is not in the image.
    #[error("{field} {name:?} is not in {file} of the agent image; use a number or add the entry")]
    UnknownName {
        /// `process.run_as_user` or `process.run_as_group`.
        field: &'static str,
        /// The name.
        name: String,
        /// `/etc/passwd` or `/etc/group`.
        file: String,
    },
    /// A name resolved to 0.
    #[error(
        "{field} {name:?} resolves to id 0 (root) in the agent image; the agent never runs as root"
    )]
    Root {
        /// `process.run_as_user` or `process.run_as_group`.
        field: &'static str,
        /// The name.
        name: String,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    shell: PathBuf,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry> + '_ {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && !line.starts_with('#')).then_some(())?;
        Some(PasswdEntry {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
            shell: PathBuf::from(f[6]),
        })
    })
}

fn group_id(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

fn env_id(var: &'static str) -> Result<Option<u32>, AccountError> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(value) => match value.trim().parse::<u32>() {
            Ok(id) if id != 0 && id != u32::MAX => Ok(Some(id)),
            _ => Err(AccountError::BadEnv { var, value }),
        },
    }
}

/// Resolves the identity from the environment, the policy and the image at `root` (normally
/// `/`, where the agent image is mounted).
pub fn resolve(run_as: &RunAs, root: &Path) -> Result<Account, AccountError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_with(run_as, env_id(ENV_UID)?, env_id(ENV_GID)?, &passwd, &group)
}

fn resolve_with(
    run_as: &RunAs,
    env_uid: Option<u32>,
    env_gid: Option<u32>,
    passwd: &str,
    group: &str,
) -> Result<Account, AccountError> {
    let by_uid = |uid: u32| passwd_entries(passwd).find(|e| e.uid == uid);
    let (uid, source) = match (env_uid, &run_as.user) {
        (Some(uid), _) => (uid, ENV_UID),
        (None, Some(Principal::Id(uid))) => (*uid, "process.run_as_user"),
        (None, Some(Principal::Name(name))) => {
            let entry = passwd_entries(passwd)
                .find(|e| &e.name == name)
                .ok_or_else(|| AccountError::UnknownName {
                    field: "process.run_as_user",
                    name: name.clone(),
                    file: "/etc/passwd".to_owned(),
                })?;
            (entry.uid, "process.run_as_user")
        }
        (None, None) => match passwd_entries(passwd).find(|e| e.name == DEFAULT_USER) {
            Some(entry) => (entry.uid, "the image's sandbox user"),
            None => (NOBODY, "default (nobody)"),
        },
    };
    let entry = by_uid(uid);
    if uid == 0 {
        return Err(AccountError::Root {
            field: "process.run_as_user",
            name: entry.map_or_else(|| "0".to_owned(), |e| e.name),
        });
    }
    let gid = match (env_gid, &run_as.group) {
        (Some(gid), _) => gid,
        (None, Some(Principal::Id(gid))) => *gid,
        (None, Some(Principal::Name(name))) => {
            group_id(group, name).ok_or_else(|| AccountError::UnknownName {
                field: "process.run_as_group",
                name: name.clone(),
                file: "/etc/group".to_owned(),
            })?
        }
        // No group anywhere: the user's primary group, else a private group equal to the uid.
        (None, None) => entry.as_ref().map_or(uid, |e| e.gid),
    };
    if gid == 0 {
        return Err(AccountError::Root {
            field: "process.run_as_group",
            name: "0".to_owned(),
        });
    }
    Ok(Account {
        uid,
        gid,
        name: entry.as_ref().map(|e| e.name.clone()),
        home: entry.as_ref().map(|e| e.home.clone()),
        shell: entry.map(|e| e.shell),
        source,
    })
}

/// An identity step that failed after fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountFailure {
    /// A system call failed.
    Syscall(&'static str, Errno),
    /// A read-back did not match: which check.
    Mismatch(&'static str),
}

impl Account {
    /// After fork, with securebits already locked: drops supplementary groups, then gid, then
    /// uid (the uid last, since changing groups needs the privilege the uid change removes).
    pub fn apply(&self) -> Result<(), AccountFailure> {
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: setgroups with a count of 0 reads no memory.
        let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
        Errno::result(rc).map_err(|e| AccountFailure::Syscall("setgroups", e))?;
        // SAFETY: scalar arguments.
        let rc = unsafe { libc::setresgid(gid, gid, gid) };
        Errno::result(rc).map_err(|e| AccountFailure::Syscall("setresgid", e))?;
        // SAFETY: scalar arguments.
        let rc = unsafe { libc::setresuid(uid, uid, uid) };
        Errno::result(rc).map_err(|e| AccountFailure::Syscall("setresuid", e))?;
        Ok(())
    }

    /// Reads back the ids and proves root cannot be regained.
    pub fn verify(&self) -> Result<(), AccountFailure> {
        let (mut r, mut e, mut s) = (0, 0, 0);
        // SAFETY: getresuid writes three ids into locals.
        unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
        if [r, e, s] != [self.uid; 3] {
            return Err(AccountFailure::Mismatch("getresuid"));
        }
        // SAFETY: getresgid writes three ids into locals.
        unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
        if [r, e, s] != [self.gid; 3] {
            return Err(AccountFailure::Mismatch("getresgid"));
        }
        // SAFETY: getgroups with size 0 only returns the count.
        if unsafe { libc::getgroups(0, std::ptr::null_mut()) } != 0 {
            return Err(AccountFailure::Mismatch("getgroups"));
        }
        if nix::unistd::setuid(Uid::from_raw(0)) != Err(Errno::EPERM) {
            return Err(AccountFailure::Mismatch(
                "setuid(0) did not fail with EPERM",
            ));
        }
        if nix::unistd::setgid(Gid::from_raw(0)) != Err(Errno::EPERM) {
            return Err(AccountFailure::Mismatch(
                "setgid(0) did not fail with EPERM",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        sandbox:x:1000:1001::/sandbox:/bin/bash\n\
        app:x:2000:2000::/home/app:/bin/sh\n\
        # comment\n\
        broken:x:notanumber:1::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nsandbox:x:1001:\ndev:x:3000:app\n";

    fn resolve(run_as: RunAs, uid: Option<u32>, gid: Option<u32>) -> Result<Account, AccountError> {
        resolve_with(&run_as, uid, gid, PASSWD, GROUP)
    }

    #[test]
    fn defaults_to_the_images_sandbox_user_then_nobody() {
        let id = resolve(RunAs::default(), None, None).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.name.as_deref()),
            (1000, 1001, Some("sandbox"))
        );
        assert_eq!(id.home, Some(PathBuf::from("/sandbox")));
        let id = resolve_with(&RunAs::default(), None, None, "", "").unwrap();
        assert_eq!((id.uid, id.gid, id.name), (65534, 65534, None));
    }

    #[test]
    fn policy_names_and_numbers() {
        let run_as = RunAs {
            user: Some(Principal::Name("app".into())),
            group: Some(Principal::Name("dev".into())),
        };
        let id = resolve(run_as, None, None).unwrap();
        assert_eq!((id.uid, id.gid), (2000, 3000));
        let run_as = RunAs {
            user: Some(Principal::Id(4242)),
            group: None,
        };
        let id = resolve(run_as, None, None).unwrap();
        assert_eq!((id.uid, id.gid, id.name), (4242, 4242, None));
    }

    #[test]
    fn environment_overrides_the_policy() {
        let run_as = RunAs {
            user: Some(Principal::Name("app".into())),
            group: None,
        };
        let id = resolve(run_as, Some(1_000_650_000), Some(1_000_650_000)).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.source),
            (1_000_650_000, 1_000_650_000, ENV_UID)
        );
    }

    #[test]
    fn root_and_unknown_names_are_refused() {
        let run_as = |u: &str| RunAs {
            user: Some(Principal::Name(u.into())),
            group: None,
        };
        let err = resolve(run_as("ghost"), None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "process.run_as_user \"ghost\" is not in /etc/passwd of the agent image; use a number or add the entry"
        );
        let err = resolve(run_as("root"), None, None).unwrap_err().to_string();
        assert!(err.contains("resolves to id 0"), "{err}");
        let group = RunAs {
            user: None,
            group: Some(Principal::Name("root".into())),
        };
        assert!(
            resolve(group, None, None)
                .unwrap_err()
                .to_string()
                .contains("never runs as root")
        );
    }
}
