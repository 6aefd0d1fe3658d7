//! Scratch directories and test policies.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The confined agent's uid and gid in the tests (nobody / nogroup).
pub const AGENT_ID: u32 = 65534;
/// The policy section that makes [`AGENT_ID`] the agent's identity.
pub const RUN_AS_AGENT: &str = "process:\n  run_as_user: 65534\n  run_as_group: 65534\n";

/// What every test policy lets the agent read: the programs and libraries it runs, its
/// configuration and its own /proc (see policies/default.yaml).
pub const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/proc",
    "/dev/urandom",
    "/dev/zero",
];

/// A directory under the system's temporary directory, removed with everything in it when
/// dropped. It is searchable by everyone, so the agent's uid can reach what is inside.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<tmp>/openshell-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("openshell-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).expect("creating a scratch directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod of the scratch directory");
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    /// Writes `policy.yaml` here: the system paths and the directory of the workspace's
    /// binaries read-only, plus `read_only`; `read_write` and /dev/null read-write; the
    /// workdir not added; then `extra` (YAML sections such as `process:` or `landlock:`).
    pub fn policy(&self, read_only: &[&Path], read_write: &[&Path], extra: &str) -> PathBuf {
        self.policy_with(SYSTEM_READ_ONLY, read_only, read_write, extra)
    }

    /// [`policy`](Self::policy) with `system` instead of [`SYSTEM_READ_ONLY`].
    pub fn policy_with(
        &self,
        system: &[&str],
        read_only: &[&Path],
        read_write: &[&Path],
        extra: &str,
    ) -> PathBuf {
        let binaries = crate::bin("openshell-sandbox");
        let binaries = binaries.parent().expect("the binaries' directory");
        let list = |paths: Vec<&Path>| {
            paths
                .iter()
                .map(|p| format!("    - {}\n", p.display()))
                .collect::<String>()
        };
        let mut ro: Vec<&Path> = system.iter().map(Path::new).collect();
        ro.push(binaries);
        ro.extend(read_only);
        let mut rw = vec![Path::new("/dev/null")];
        rw.extend(read_write);
        let text = format!(
            "version: 1\nfilesystem_policy:\n  include_workdir: false\n  \
             read_only:\n{}  read_write:\n{}{extra}",
            list(ro),
            list(rw)
        );
        let path = self.join("policy.yaml");
        std::fs::write(&path, text).expect("writing the test policy");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes `path` belong to the agent's uid and gid.
pub fn give_to_agent(path: &Path) {
    std::os::unix::fs::lchown(path, Some(AGENT_ID), Some(AGENT_ID)).expect("chown to the agent");
}
