//! Files the supervisor provides to the agent (`sandbox::prepare`'s `provided`), end to end:
//! they appear under /run/openshell in the agent's view with their contents and modes, owned by
//! root, and the agent can change nothing there, whatever the modes say.
//!
//! The supervisor forks, which is only safe from a single-threaded process: this test is its
//! own `main` (no test harness and its threads), run by `cargo test` like any other.
// Test code: failing loudly, with a message, is the point of every check here.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openshell_sandbox::policy::{self, PolicyOrigin};
use openshell_sandbox::sandbox::{self, ProvidedFile};
use openshell_sandbox::supervise::{self, Outcome};
use openshell_sandbox::{preflight, proxy};

const AGENT: u32 = 65534;

/// What the agent runs: each check prints one line into `report` in its workdir.
const SCRIPT: &str = r#"
exec > report 2>&1
cat /run/openshell/tls/ca-bundle.pem
stat -c '%a %u %g %n' /run/openshell/tls/ca-bundle.pem /run/openshell/tls/truststore.p12 /run/openshell/tls
cat /run/openshell/tls/truststore.p12 >/dev/null 2>&1 || echo "truststore unreadable"
(echo evil > /run/openshell/tls/ca-bundle.pem) 2>/dev/null || echo "bundle unchanged"
touch /run/openshell/planted 2>/dev/null || echo "nothing planted"
echo done
"#;

fn main() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs the sandbox (namespaces and mounts): run it as root"
    );
    let scratch = std::env::temp_dir().join(format!("openshell-provided-{}", std::process::id()));
    let workdir = scratch.join("rw");
    std::fs::create_dir_all(&workdir).expect("mkdir");
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&workdir, Some(AGENT), Some(AGENT)).expect("chown");
    let result = std::panic::catch_unwind(|| {
        run_listing_run_whole(&workdir);
        run(&workdir);
    });
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    println!("provided files: ok");
}

/// The test policy, with `extra` read-only paths.
fn test_policy(workdir: &Path, extra: &str) -> policy::Policy {
    let text = format!(
        "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/usr, /bin, \
         /lib, /lib64, /etc, /proc{extra}]\n  read_write: [/dev/null]\nprocess:\n  \
         run_as_user: {AGENT}\n  run_as_group: {AGENT}\n"
    );
    let origin = PolicyOrigin::File(PathBuf::from("provided-files.yaml"));
    let file = policy::parse(&text, &origin).expect("the test policy parses");
    policy::validate(file, origin, workdir).expect("the test policy is valid")
}

/// A policy that lists /run whole mounts the pod's /run, where the supervisor cannot add
/// /run/openshell (the pod's files are never changed): the sandbox refuses to start, saying
/// what to do, unless the image has an empty /run/openshell.
fn run_listing_run_whole(workdir: &Path) {
    if Path::new("/run/openshell").exists() {
        println!("provided files: /run/openshell exists here, so listing /run is fine");
        return;
    }
    let policy = test_policy(workdir, ", /run");
    let files = [ProvidedFile {
        path: "/run/openshell/tls/ca-bundle.pem".into(),
        contents: b"bundle".to_vec(),
        mode: 0o644,
    }];
    let command: Vec<OsString> = vec!["/bin/true".into()];
    let kernel = preflight::probe();
    let e = sandbox::prepare(&policy, &kernel, workdir, &command, &files, None, None)
        .expect_err("/run/openshell cannot be placed inside the pod's /run");
    assert_eq!(
        e.to_string(),
        "filesystem view: /run/openshell must exist inside /run (which the policy lists whole) \
         to mount /run/openshell (the supervisor's files) there; list the entries of the parent \
         the agent needs instead of the whole parent, or create an empty /run/openshell in the \
         image"
    );
}

fn run(workdir: &Path) {
    let policy = test_policy(workdir, "");
    let bundle = b"-----BEGIN CERTIFICATE-----\nMIIB test\n-----END CERTIFICATE-----\n";
    let provided = [
        ProvidedFile {
            path: "/run/openshell/tls/ca-bundle.pem".into(),
            contents: bundle.to_vec(),
            mode: 0o666,
        },
        ProvidedFile {
            path: "/run/openshell/tls/truststore.p12".into(),
            contents: vec![0x30, 0x82, 0x01, 0x00],
            mode: 0o600,
        },
    ];
    let command: Vec<OsString> = ["/bin/sh", "-c", SCRIPT].iter().map(Into::into).collect();
    let kernel = preflight::probe();
    let prepared = sandbox::prepare(&policy, &kernel, workdir, &command, &provided, None, None)
        .expect("the sandbox prepares");
    let running = sandbox::spawn(prepared).expect("the sandbox starts");
    let options = supervise::Options {
        timeout: Some(Duration::from_secs(30)),
        grace: Duration::from_secs(1),
        proxy: proxy::Settings::from_env().expect("proxy settings"),
    };
    let outcome = supervise::run(running, policy.network, options);
    let report = std::fs::read_to_string(workdir.join("report")).unwrap_or_default();
    assert!(
        matches!(outcome, Outcome::Exited(0)),
        "{outcome:?}\n{report}"
    );
    // Mode 0666 written, yet the filesystem is read-only; 0600 keeps the agent out.
    let expected = format!(
        "{}666 0 0 /run/openshell/tls/ca-bundle.pem\n600 0 0 /run/openshell/tls/truststore.p12\n\
         755 0 0 /run/openshell/tls\ntruststore unreadable\nbundle unchanged\nnothing planted\n\
         done\n",
        String::from_utf8_lossy(bundle)
    );
    assert_eq!(report, expected);
}
