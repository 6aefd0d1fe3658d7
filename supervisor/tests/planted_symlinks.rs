//! Planted symlinks, end to end, as root: in an earlier session the agent, which owns its home
//! (a volume kept between sessions), replaced its workdir or a policy path there with a link
//! to a secret directory. The supervisor opens those paths as root: it must refuse to start
//! (exit 125, one error line naming the link) rather than chdir the agent into the secret or
//! grant it access there. Each attack has a baseline: the same run, with a real directory
//! where the link was, succeeds.
// Test code: failing loudly, with a message, is the point of every check here.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The agent's uid and gid (nobody / nogroup).
const AGENT: u32 = 65534;
/// What the agent prints when it runs at all.
const RAN: &str = "agent-ran";

/// `<tmp>/openshell-planted-<pid>-<n>` (root's, 0755) with `home/` (the agent's, where it plants
/// links) and `secret/` holding `token`; removed when dropped. The secret is open to everyone
/// as far as permissions go (a world-readable token, a 1777 directory like /var/tmp): only
/// Landlock keeps the agent out, so a run that wrongly gets in shows in it.
struct Lab {
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "these tests run the supervisor: run them as root");
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("openshell-planted-{}-{n}", std::process::id()));
        let lab = Lab { root };
        lab.dir("", 0o755);
        lab.dir("home", 0o755);
        lchown(lab.path("home"), Some(AGENT), Some(AGENT)).expect("chown home");
        lab.dir("secret", 0o1777);
        std::fs::write(lab.path("secret/token"), "s3cr3t").expect("write the token");
        std::fs::set_permissions(
            lab.path("secret/token"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod the token");
        lab
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn dir(&self, relative: &str, mode: u32) {
        let path = self.path(relative);
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// What the agent would have left behind: `home/<name>` as a link to `secret/`, its own.
    fn plant(&self, name: &str) -> PathBuf {
        let link = self.path("home").join(name);
        symlink(self.path("secret"), &link).expect("symlink");
        lchown(&link, Some(AGENT), Some(AGENT)).expect("lchown the link");
        link
    }

    /// The baseline: `home/<name>` as a real directory, the agent's.
    fn real(&self, name: &str) -> PathBuf {
        let dir = self.path("home").join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        lchown(&dir, Some(AGENT), Some(AGENT)).expect("chown");
        dir
    }

    /// A policy with the system read-only, `/dev/null` read-write and the workdir not added,
    /// plus `path` read-only or read-write.
    fn policy(&self, path: &Path, writable: bool) -> PathBuf {
        let mut read_only = "/usr, /bin, /sbin, /lib, /lib64, /etc, /proc".to_owned();
        let mut read_write = "/dev/null".to_owned();
        let list = if writable {
            &mut read_write
        } else {
            &mut read_only
        };
        list.push_str(&format!(", {}", path.display()));
        let text = format!(
            "version: 1\nfilesystem_policy:\n  include_workdir: false\n  \
             read_only: [{read_only}]\n  read_write: [{read_write}]\n\
             process:\n  run_as_user: {AGENT}\n  run_as_group: {AGENT}\n"
        );
        let file = self.path("policy.yaml");
        std::fs::write(&file, text).expect("write the policy");
        file
    }

    /// The secret directory holds its token and nothing else.
    fn assert_secret_untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.path("secret"))
            .expect("read the secret directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["token"], "the agent reached the secret directory");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("cleanup: cannot remove {}: {e}", self.root.display());
        }
    }
}

/// Runs the supervisor (`policy`: None for the built-in default) with `workdir` and a shell
/// script as the agent.
fn run(policy: Option<&Path>, workdir: &Path, script: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"));
    if let Some(policy) = policy {
        command.arg("--policy").arg(policy);
    }
    command
        .arg("--workdir")
        .arg(workdir)
        .args([
            "--log-format",
            "json",
            "--timeout",
            "30",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        // Only what this test sets: the default policy's identity comes from these.
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("OPENSHELL_SANDBOX_UID", AGENT.to_string())
        .env("OPENSHELL_SANDBOX_GID", AGENT.to_string())
        .output()
        .expect("start the supervisor")
}

/// The run was refused before the agent ran, with exactly one error line, naming the link
/// and its target.
fn assert_refused(out: &Output, link: &Path, target: &Path) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stdout}\n{stderr}");
    assert!(!stdout.contains(RAN), "the agent ran:\n{stdout}\n{stderr}");
    let errors: Vec<String> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["level"] == "ERROR")
        .map(|line| line["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{stderr}");
    let expected = format!(
        "refusing to follow the symlink {} -> {}: its directory {} is owned by uid {AGENT}, \
         not root, so the agent may have planted it",
        link.display(),
        target.display(),
        link.parent().expect("the link's directory").display()
    );
    assert!(
        errors[0].contains(&expected),
        "expected {expected:?} in {:?}",
        errors[0]
    );
}

fn assert_ran(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(RAN),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent's next session starts in a workdir it replaced with a link: under the built-in
/// default policy (which makes the workdir read-write) it would have been chdir'ed into the
/// secret directory and allowed to write there.
#[test]
fn planted_workdir_is_refused() {
    let lab = Lab::new();
    let workdir = lab.plant("project");
    let out = run(None, &workdir, &format!("echo {RAN}; echo pwned > marker"));
    assert_refused(&out, &workdir, &lab.path("secret"));
    lab.assert_secret_untouched();
}

#[test]
fn real_workdir_runs() {
    let lab = Lab::new();
    let workdir = lab.real("project");
    let out = run(
        None,
        &workdir,
        &format!(
            "echo {RAN}; [ \"$(pwd)\" = {} ] && echo pwned > marker",
            workdir.display()
        ),
    );
    assert_ran(&out);
    assert!(
        workdir.join("marker").exists(),
        "the agent wrote in its workdir"
    );
}

/// A read_write policy path in the agent's home, replaced with a link: Landlock would have
/// granted read-write access to the secret directory.
#[test]
fn planted_read_write_path_is_refused() {
    let lab = Lab::new();
    let cache = lab.plant("cache");
    let policy = lab.policy(&cache, true);
    let script = format!("echo {RAN}; echo pwned > {}/marker", cache.display());
    let out = run(Some(&policy), &lab.path("home"), &script);
    assert_refused(&out, &cache, &lab.path("secret"));
    lab.assert_secret_untouched();
}

/// Read-only is refused as well: reading the secret is the harm a planted link would do there.
#[test]
fn planted_read_only_path_is_refused() {
    let lab = Lab::new();
    let config = lab.plant("config");
    let policy = lab.policy(&config, false);
    let script = format!("echo {RAN}; cat {}/token", config.display());
    let out = run(Some(&policy), &lab.path("home"), &script);
    assert_refused(&out, &config, &lab.path("secret"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cr3t"));
}

#[test]
fn real_read_write_path_runs() {
    let lab = Lab::new();
    let cache = lab.real("cache");
    let policy = lab.policy(&cache, true);
    let script = format!("echo {RAN}; echo ok > {}/marker", cache.display());
    let out = run(Some(&policy), &lab.path("home"), &script);
    assert_ran(&out);
    assert!(
        cache.join("marker").exists(),
        "the agent wrote in the policy path"
    );
}
