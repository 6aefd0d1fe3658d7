//! Shared helpers for the end-to-end tests: where the workspace's binaries are, whether a
//! missing kernel feature may skip a test, and how to run the supervisor and read its logs.
// Test support: failing loudly, with a message, is the point of every check here.
#![allow(clippy::expect_used, clippy::panic)]

pub mod caps;
pub mod cgroup;
pub mod fake_api;
pub mod run;
pub mod scratch;

use std::path::PathBuf;

/// The signals the supervisor forwards to the agent, with the names the probe records them
/// by; TERM last, since an agent usually ends on it.
pub const FORWARDED_SIGNALS: [(libc::c_int, &str); 7] = [
    (libc::SIGINT, "INT"),
    (libc::SIGHUP, "HUP"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGWINCH, "WINCH"),
    (libc::SIGTERM, "TERM"),
];

/// Path of a binary built by this workspace (`openshell-sandbox`, `openshell-copier`, or one
/// of this crate's own), next to the running test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// Skips a test whose kernel feature is missing, printing why; with
/// `OPENSHELL_REQUIRE_KERNEL=1` (set in CI) a missing feature fails the test instead, unless
/// `OPENSHELL_KERNEL_LACKS` (a `|`-separated list of features, set by the kernel matrix for the
/// kernels it boots) says this kernel is known to lack it.
pub fn require_kernel(available: bool, feature: &str) -> bool {
    if available {
        return true;
    }
    let known = std::env::var("OPENSHELL_KERNEL_LACKS")
        .is_ok_and(|lacks| lacks.split('|').any(|f| f == feature));
    if known {
        eprintln!("skipping: this kernel lacks {feature} (as expected)");
        return false;
    }
    if std::env::var_os("OPENSHELL_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
        panic!("kernel feature missing and OPENSHELL_REQUIRE_KERNEL=1: {feature}");
    }
    eprintln!("skipping: kernel feature missing: {feature}");
    false
}

/// The kernel's Landlock ABI version, 0 when Landlock cannot be used.
pub fn landlock_abi() -> i64 {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION (1) the attribute must be null and the size
    // 0; the call only returns a number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    abi.max(0)
}

/// Polls `ready` every 10 ms until it holds; fails the test, naming `what` it waited for,
/// after 10 seconds.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The start of what `fetch-direct` prints for a 200 from `server` (`HOST:PORT`): the peer it
/// saw, which is the server, or on a relaying path the supervisor's hand-off listener on the
/// sandbox's loopback (any port).
pub fn fetched_from(server: &str, relayed: bool) -> String {
    match relayed {
        false => format!("HTTP/1.1 200 OK from {server}"),
        true => "HTTP/1.1 200 OK from 127.0.0.1:".to_owned(),
    }
}
