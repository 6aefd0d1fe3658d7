//! The supervisor's contract, through its command line: policy errors, `check`, exit statuses,
//! signals, timeouts, reaping, cleanup, stdio, identity, an unsupported kernel, logs and
//! interactive use.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openshell_tests::run::{self, Output, Pty, Setup, Stdin};
use openshell_tests::scratch::{RUN_AS_AGENT, Scratch, give_to_agent};
use openshell_tests::{FORWARDED_SIGNALS, bin, fetched_from, wait_until};
use serde_json::Value;

/// A scratch directory with `rw/` (the agent's workdir, read-write and its own) and a policy.
struct Sandbox {
    scratch: Scratch,
    policy: PathBuf,
}

impl Sandbox {
    /// The test policy plus `extra` YAML sections.
    fn new(extra: &str) -> Sandbox {
        let scratch = Scratch::new("behaviour");
        let rw = scratch.join("rw");
        std::fs::create_dir(&rw).expect("mkdir rw");
        give_to_agent(&rw);
        let policy = scratch.policy(&[], &[&rw], extra);
        Sandbox { scratch, policy }
    }

    fn rw(&self, name: &str) -> PathBuf {
        self.scratch.join("rw").join(name)
    }

    /// `openshell-sandbox --policy … --workdir rw --log-format json`, then `args`.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = run::sandbox(&self.policy, &self.scratch.join("rw"));
        command.args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        run::run(&mut self.command(args), Stdin::Null)
    }
}

fn probe() -> String {
    bin("escape-probe").display().to_string()
}

/// The one ERROR line of a JSON log.
fn error_line(out: &Output) -> String {
    let errors: Vec<String> = out
        .log()
        .into_iter()
        .filter(|line| line["level"] == "ERROR")
        .map(|line| line["message"].as_str().expect("a message").to_owned())
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line\n{out:#?}");
    errors[0].clone()
}

fn contents(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: a signal to a child of this test that has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn policy_errors_name_file_line_column_and_field() {
    let cases = [
        (
            "version: 1\nfilesystem_policy:\n  read_write:\n    - /tmp\n    - /\n",
            "5:7: filesystem_policy.read_write[1]: \"/\" cannot be read-write; list the \
             directories the agent needs",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_wrte: [/tmp]\n",
            "3:3: filesystem_policy.read_wrte: unknown field `read_wrte`, expected one of \
             include_workdir, read_only, read_write",
        ),
        (
            "version: 1\nprocess:\n  run_as_user: 0\n",
            "3:16: process.run_as_user: 0 (root) is refused; the agent never runs as root",
        ),
        (
            "version: 1\nnetwork_policies:\n  gh:\n    endpoints:\n      - host: api.github.com\n        \
             port: 443\n        protocol: rest\n",
            "7:19: network_policies.gh.endpoints[0].protocol: protocol \"rest\" needs rules or \
             access; without them the endpoint would allow nothing",
        ),
    ];
    for (text, expected) in cases {
        let scratch = Scratch::new("policy");
        let policy = scratch.join("bad.yaml");
        std::fs::write(&policy, text).expect("writing the policy");
        let marker = scratch.join("agent-ran");
        let mut command = Command::new(bin("openshell-sandbox"));
        command
            .arg("--policy")
            .arg(&policy)
            .args(["--", "/bin/touch"])
            .arg(&marker);
        let out = run::run(&mut command, Stdin::Null);
        assert_eq!(out.code(), 125, "{out:#?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one stderr line\n{out:#?}");
        let (_, message) = lines[0].split_once(" ERROR ").expect("an ERROR line");
        assert_eq!(message, format!("{}:{expected}", policy.display()));
        assert!(!marker.exists(), "the agent ran despite a bad policy");
    }
}

fn default_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.yaml")
}

fn check(launcher: &[&str]) -> Output {
    check_policy(launcher, &default_policy())
}

/// `openshell-sandbox check --policy POLICY`, started through `escape-probe LAUNCHER...` unless
/// `launcher` is empty.
fn check_policy(launcher: &[&str], policy: &Path) -> Output {
    let mut command = match launcher {
        [] => Command::new(bin("openshell-sandbox")),
        _ => {
            let mut command = Command::new(bin("escape-probe"));
            command.args(launcher).arg(bin("openshell-sandbox"));
            command
        }
    };
    command.arg("check").arg("--policy").arg(policy);
    run::run(&mut command, Stdin::Null)
}

/// Ways to take Landlock away from the supervisor (as a kernel without it, or a runtime's
/// seccomp profile that predates it, would), with the reason the supervisor must give.
const NO_LANDLOCK: [(&str, &str); 2] = [
    ("ENOSYS", "the kernel was built without Landlock (ENOSYS)"),
    ("EPERM", "landlock_create_ruleset is blocked (EPERM"),
];

/// The failure lines after "result: would fail:".
fn failures(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .skip_while(|l| *l != "result: would fail:")
        .skip(1)
        .collect()
}

/// A policy that lists one path below /proc instead of /proc: only Landlock can narrow the
/// sandbox's procfs to it.
fn narrow_proc_policy(scratch: &Scratch, rw: &Path, extra: &str) -> PathBuf {
    let system: Vec<&str> = openshell_tests::scratch::SYSTEM_READ_ONLY
        .iter()
        .copied()
        .filter(|p| *p != "/proc")
        .chain(["/proc/cpuinfo"])
        .collect();
    scratch.policy_with(&system, &[], &[rw], extra)
}

#[test]
fn check_passes_for_the_default_policy() {
    let mut command = Command::new(bin("openshell-sandbox"));
    command.arg("check").arg("--policy").arg(default_policy());
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 0, "{out:#?}");
    // The default policy needs nothing only Landlock can enforce: it runs on kernels without.
    let landlock = if openshell_tests::landlock_abi() > 0 {
        "  landlock: ABI "
    } else {
        "  landlock: not available ("
    };
    for expected in [
        "  view: ",
        landlock,
        "  memfd exec: ",
        "  seccomp: ",
        "  namespaces: pid, mount, ipc, uts, cgroup and network can be created",
        "  capabilities: every one the supervisor needs is present",
        "result: the policy can be enforced as written here",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?}\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("would fail"), "{}", out.stdout);
}

#[test]
fn check_without_landlock_says_the_view_enforces_the_policy_alone() {
    for (errno, reason) in NO_LANDLOCK {
        let out = check(&["run-with-landlock-blocked", errno, "--"]);
        assert_eq!(out.code(), 0, "{out:#?}");
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("  landlock: not available ("))
            .unwrap_or_else(|| panic!("no landlock line\n{}", out.stdout));
        assert!(
            line.contains(reason)
                && line.ends_with("; the view alone enforces every rule of this policy"),
            "{line}"
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("  view: ")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn check_names_the_rules_only_landlock_can_enforce_where_it_is_missing() {
    let scratch = Scratch::new("narrow");
    let policy = narrow_proc_policy(&scratch, Path::new("/tmp"), RUN_AS_AGENT);
    for (errno, reason) in NO_LANDLOCK {
        let out = check_policy(&["run-with-landlock-blocked", errno, "--"], &policy);
        assert_eq!(out.code(), 125, "{out:#?}");
        let failures = failures(&out);
        assert_eq!(failures.len(), 1, "{}", out.stdout);
        assert!(
            failures[0].starts_with(
                "  - the filesystem policy has rules only Landlock can enforce, and Landlock is \
                 not available ("
            ) && failures[0].contains(reason)
                && failures[0].contains("/proc/cpuinfo (narrower than /proc"),
            "{}",
            out.stdout
        );
    }
    // With Landlock, the same policy passes and says which layer enforces the rule.
    if !openshell_tests::require_kernel(openshell_tests::landlock_abi() >= 1, "Landlock") {
        return;
    }
    let out = check_policy(&[], &policy);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("  landlock alone enforces /proc/cpuinfo")),
        "{}",
        out.stdout
    );
}

#[test]
fn check_says_what_would_fail_without_cap_sys_admin() {
    let out = check(&["drop-bounding", "21", "--"]);
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("  - missing capability: CAP_SYS_ADMIN")),
        "{}",
        out.stdout
    );
}

#[test]
fn exit_status_is_the_agents() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    for (agent, expected) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -USR1 $$", 128 + libc::SIGUSR1),
        ("kill -KILL $$", 128 + libc::SIGKILL),
    ] {
        let out = sandbox.run(&["--", "/bin/sh", "-c", agent]);
        assert_eq!(out.code(), expected, "{agent}\n{out:#?}");
    }
}

#[test]
fn command_not_executable_exits_126_naming_the_path() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let plain = sandbox.rw("plain-file");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").expect("write");
    // Executable by everyone, but outside every rule of the policy: Landlock refuses exec.
    let unlisted = sandbox.scratch.join("unlisted");
    std::fs::copy("/bin/true", &unlisted).expect("copy");
    for path in [&plain, &unlisted] {
        let out = sandbox.run(&["--", path.to_str().expect("UTF-8")]);
        assert_eq!(out.code(), 126, "{out:#?}");
        let error = error_line(&out);
        let expected = format!("{}: permission denied", path.display());
        assert!(error.starts_with(&expected), "{error}");
    }
}

#[test]
fn command_not_found_exits_127_naming_it() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    for command in ["/nonexistent/agent", "no-such-command-xyz"] {
        let out = sandbox.run(&["--", command]);
        assert_eq!(out.code(), 127, "{out:#?}");
        assert_eq!(error_line(&out), format!("{command}: command not found"));
    }
}

#[test]
fn missing_capability_exits_125_before_the_agent_runs() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let marker = sandbox.rw("agent-ran");
    let probe = probe();
    let launcher = [
        probe.as_ref(),
        "drop-bounding".as_ref(),
        "21".as_ref(),
        "--".as_ref(),
    ];
    let mut command = run::sandbox_via(&launcher, &sandbox.policy, &sandbox.scratch.join("rw"));
    command.args(["--", "/bin/touch"]).arg(&marker);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 125, "{out:#?}");
    assert!(
        error_line(&out).starts_with("missing capability: CAP_SYS_ADMIN"),
        "{out:#?}"
    );
    assert!(!marker.exists(), "the agent ran");
}

/// Pods add only the capabilities the supervisor needs, and CAP_NET_BIND_SERVICE is not one:
/// the transparent path's DNS answerer still binds port 53 on the sandbox's loopback.
#[test]
fn starts_without_cap_net_bind_service() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let marker = sandbox.rw("agent-ran");
    let probe = probe();
    let launcher = [
        probe.as_ref(),
        "drop-bounding".as_ref(),
        "10".as_ref(), // CAP_NET_BIND_SERVICE
        "--".as_ref(),
    ];
    let mut command = run::sandbox_via(&launcher, &sandbox.policy, &sandbox.scratch.join("rw"));
    command.args(["--", "/bin/touch"]).arg(&marker);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(marker.exists(), "the agent did not run");
    let transparent_off = out.log().iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("TRANSPARENT EGRESS OFF"))
    });
    if transparent_off {
        eprintln!("note: transparent egress is off on this kernel; port 53 was not needed");
    }
}

/// `run-with-landlock-blocked ERRNO --`, then the supervisor's command line.
fn without_landlock(errno: &str, policy: &Path, workdir: &Path) -> Command {
    let probe = probe();
    let launcher = [
        probe.as_ref(),
        "run-with-landlock-blocked".as_ref(),
        errno.as_ref(),
        "--".as_ref(),
    ];
    run::sandbox_via(&launcher, policy, workdir)
}

#[test]
fn without_landlock_the_view_alone_confines_the_agent() {
    let scratch = Scratch::new("no-landlock");
    let (ro, rw) = (scratch.join("ro"), scratch.join("rw"));
    for dir in [&ro, &rw] {
        std::fs::create_dir(dir).expect("mkdir");
        give_to_agent(dir);
    }
    let file = ro.join("file");
    std::fs::write(&file, "original\n").expect("write");
    give_to_agent(&file);
    let unlisted = scratch.join("unlisted");
    std::fs::write(&unlisted, "secret\n").expect("write");
    let policy = scratch.policy(&[&ro], &[&rw], RUN_AS_AGENT);
    // Plain permissions would allow both: the agent owns the file, everyone may read the other.
    let script = r#"cat "$1" 2>/dev/null && echo read-unlisted
        echo changed 2>/dev/null > "$2" && echo wrote-read-only
        echo done"#;
    // The baseline: unconfined, the agent's user does both.
    let mut baseline = Command::new("/bin/sh");
    baseline
        .args(["-c", script, "sh"])
        .arg(&unlisted)
        .arg(&file)
        .current_dir(&rw);
    Setup {
        as_agent: true,
        ..Setup::default()
    }
    .apply(&mut baseline);
    let out = run::run(&mut baseline, Stdin::Null);
    assert_eq!(
        out.stdout, "secret\nread-unlisted\nwrote-read-only\ndone\n",
        "unconfined: {out:#?}"
    );
    assert_eq!(contents(&file), "changed\n");
    std::fs::write(&file, "original\n").expect("restoring the file");
    for (errno, reason) in NO_LANDLOCK {
        let mut command = without_landlock(errno, &policy, &rw);
        command
            .args(["--", "/bin/sh", "-c", script, "sh"])
            .arg(&unlisted)
            .arg(&file);
        let out = run::run(&mut command, Stdin::Null);
        assert_eq!((out.code(), out.stdout.as_str()), (0, "done\n"), "{out:#?}");
        assert_eq!(contents(&file), "original\n");
        let said = out.log().into_iter().any(|l| {
            l["layer"] == "filesystem"
                && l["message"].as_str().is_some_and(|m| {
                    m.contains(reason)
                        && m.ends_with("the view alone enforces every rule of this policy")
                })
        });
        assert!(said, "{out:#?}");
    }
}

#[test]
fn rules_only_landlock_can_enforce_fail_closed_without_it() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let policy = narrow_proc_policy(&sandbox.scratch, &sandbox.scratch.join("rw"), RUN_AS_AGENT);
    let marker = sandbox.rw("agent-ran");
    for (errno, reason) in NO_LANDLOCK {
        let mut command = without_landlock(errno, &policy, &sandbox.scratch.join("rw"));
        command.args(["--", "/bin/touch"]).arg(&marker);
        let out = run::run(&mut command, Stdin::Null);
        assert_eq!(out.code(), 125, "{out:#?}");
        let error = error_line(&out);
        assert!(
            error.starts_with("the filesystem policy has rules only Landlock can enforce")
                && error.contains(reason)
                && error.contains("/proc/cpuinfo"),
            "{error}"
        );
        assert!(!marker.exists(), "the agent ran");
    }
}

#[test]
fn landlock_narrows_the_sandboxs_proc_to_the_listed_path() {
    if !openshell_tests::require_kernel(openshell_tests::landlock_abi() >= 1, "Landlock") {
        return;
    }
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let policy = narrow_proc_policy(&sandbox.scratch, &sandbox.scratch.join("rw"), RUN_AS_AGENT);
    let mut command = run::sandbox(&policy, &sandbox.scratch.join("rw"));
    command.args([
        "--",
        "/bin/sh",
        "-c",
        "head -c 9 /proc/cpuinfo; echo; cat /proc/self/status 2>&1 >/dev/null",
    ]);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 1, "{out:#?}");
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("processor"), "{out:#?}");
    assert!(
        lines
            .next()
            .is_some_and(|l| l.ends_with("Permission denied")),
        "{out:#?}"
    );
}

#[test]
fn best_effort_runs_without_landlock_and_says_so_loudly() {
    let sandbox = Sandbox::new("");
    let extra = format!("{RUN_AS_AGENT}landlock:\n  compatibility: best_effort\n");
    let policy = narrow_proc_policy(&sandbox.scratch, &sandbox.scratch.join("rw"), &extra);
    let mut command = without_landlock("ENOSYS", &policy, &sandbox.scratch.join("rw"));
    // Outside the one /proc path listed: readable only because Landlock is missing.
    command.args(["--", "/bin/sh", "-c", "grep -c ^Name: /proc/self/status"]);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!((out.code(), out.stdout.as_str()), (0, "1\n"), "{out:#?}");
    let error = error_line(&out);
    assert!(
        error.starts_with("DEGRADED (best_effort): Landlock is not available")
            && error.contains("not enforced: /proc/cpuinfo"),
        "{error}"
    );
    assert!(
        out.log()
            .iter()
            .any(|l| l["layer"] == "filesystem" && l["level"] == "ERROR")
    );
}

/// The longest a run that should take `expected` may take: `expected`, plus what starting and
/// stopping a sandbox costs here (measured, so that an emulated CPU in the kernel matrix
/// stretches the bound with it), plus 3 s of slack.
fn at_most(sandbox: &Sandbox, expected: Duration) -> Duration {
    let started = Instant::now();
    let out = sandbox.run(&["--", "/bin/true"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    expected + 2 * started.elapsed() + Duration::from_secs(3)
}

#[test]
fn timeout_stops_the_agent_with_124() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let limit = at_most(&sandbox, Duration::from_secs(1));
    let started = Instant::now();
    let out = sandbox.run(&["--timeout", "1", "--", "/bin/sleep", "30"]);
    assert_eq!(out.code(), 124, "{out:#?}");
    assert!(
        started.elapsed() < limit,
        "{:?} (limit {limit:?})",
        started.elapsed()
    );
}

#[test]
fn timeout_kills_an_agent_that_ignores_term_after_the_grace_period() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let record = sandbox.rw("signals");
    let mut command = sandbox.command(&["--timeout", "1", "--", &probe(), "record-signals"]);
    command
        .arg(&record)
        .arg("none")
        .env("OPENSHELL_GRACE_PERIOD", "1");
    let limit = at_most(&sandbox, Duration::from_secs(2));
    let started = Instant::now();
    let out = run::run(&mut command, Stdin::Null);
    let elapsed = started.elapsed();
    assert_eq!(out.code(), 124, "{out:#?}");
    assert_eq!(contents(&record), "ready\nTERM\n");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < limit,
        "timeout 1 s + grace 1 s, took {elapsed:?} (limit {limit:?})"
    );
}

/// Whether `pid` has a handler for every forwarded signal.
fn catches_forwarded_signals(pid: u32) -> bool {
    let status = contents(Path::new(&format!("/proc/{pid}/status")));
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    FORWARDED_SIGNALS
        .iter()
        .all(|(signal, _)| caught & (1 << (signal - 1)) != 0)
}

/// Starts an agent that records the signals it receives in `rw/signals` (and exits after
/// `exit_on`, or never for `none`); returns once the agent and the supervisor's signal
/// handlers are in place.
fn start_recorder(sandbox: &Sandbox, exit_on: &str, grace: &str) -> (run::Running, PathBuf) {
    let record = sandbox.rw("signals");
    let mut command = sandbox.command(&["--", &probe(), "record-signals"]);
    command
        .arg(&record)
        .arg(exit_on)
        .env("OPENSHELL_GRACE_PERIOD", grace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let running = run::start(&mut command, Stdin::Null);
    wait_until("the agent to be ready", || contents(&record) == "ready\n");
    wait_until("the supervisor's signal handlers", || {
        catches_forwarded_signals(running.pid())
    });
    (running, record)
}

#[test]
fn signals_are_forwarded_to_the_agent() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let (running, record) = start_recorder(&sandbox, "TERM", "10");
    let mut expected = String::from("ready\n");
    for (sig, name) in FORWARDED_SIGNALS {
        signal(running.pid(), sig);
        expected.push_str(name);
        expected.push('\n');
        wait_until(name, || contents(&record) == expected);
    }
    let out = running.wait();
    assert_eq!(out.code(), 0, "the agent exits 0 after TERM\n{out:#?}");
}

#[test]
fn sigterm_to_the_supervisor_gives_a_grace_period_then_kill() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let limit = at_most(&sandbox, Duration::from_secs(1));
    let (running, record) = start_recorder(&sandbox, "none", "1");
    let started = Instant::now();
    signal(running.pid(), libc::SIGTERM);
    let out = running.wait();
    let elapsed = started.elapsed();
    assert_eq!(
        contents(&record),
        "ready\nTERM\n",
        "the agent got TERM first"
    );
    assert_eq!(out.code(), 128 + libc::SIGKILL, "{out:#?}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < limit,
        "grace period 1 s, took {elapsed:?} (limit {limit:?})"
    );
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    // The inner shell leaves a background sleep behind, which init inherits. Once it has
    // exited, it must be gone from the sandbox's /proc, and no zombie may be left anywhere.
    let script = r#"
        sh -c 'sleep 0.2 & echo $! > orphan'
        p=$(cat orphan)
        [ -n "$p" ] || exit 3
        [ -e /proc/$p ] || exit 4
        sleep 1
        if [ -e /proc/$p ]; then grep State /proc/$p/status; exit 5; fi
        grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null
        echo reaped
    "#;
    let out = sandbox.run(&["--", "/bin/sh", "-c", script]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "reaped\n"),
        "{out:#?}"
    );
}

/// Pids of host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("openshell-left-behind-{}-{nanos}", std::process::id())
}

/// The agent starts `escape-probe pause MARKER` in the background and, once it runs, writes
/// its command line to `started`.
const LEAVE_BEHIND: &str = r#""$0" pause "$1" & p=$!
    until tr '\0' ' ' < /proc/$p/cmdline | grep -q "pause $1"; do sleep 0.01; done
    tr '\0' ' ' < /proc/$p/cmdline > started"#;

/// Whether the agent's background process has started.
fn left_behind(sandbox: &Sandbox, marker: &str) -> bool {
    contents(&sandbox.rw("started")).contains(&format!("pause {marker}"))
}

#[test]
fn no_process_is_left_behind_when_the_agent_exits() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let marker = unique_marker();
    let out = sandbox.run(&["--", "/bin/sh", "-c", LEAVE_BEHIND, &probe(), &marker]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(left_behind(&sandbox, &marker), "the background process ran");
    assert_eq!(processes_with(&marker), Vec::<String>::new());
}

#[test]
fn no_process_is_left_behind_when_the_supervisor_is_killed() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let marker = unique_marker();
    let script = format!("{LEAVE_BEHIND}\n    sleep 60");
    let mut command = sandbox.command(&["--", "/bin/sh", "-c", &script, &probe(), &marker]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let running = run::start(&mut command, Stdin::Null);
    wait_until("the background process", || left_behind(&sandbox, &marker));
    signal(running.pid(), libc::SIGKILL);
    let out = running.wait();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:#?}");
    // The supervisor, init, the agent's shell and the background process all carried it.
    wait_until("every sandbox process to be gone", || {
        processes_with(&marker).is_empty()
    });
}

#[test]
fn stdio_is_passed_through_and_logs_stay_on_stderr() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let input = "line one\nline two\n\0 a NUL, ünïcödé, and no final newline";
    let mut command = sandbox.command(&["--", "/bin/sh", "-c", "cat; echo to-stderr >&2"]);
    let out = run::run(&mut command, Stdin::Bytes(input.as_bytes()));
    assert_eq!((out.code(), out.stdout.as_str()), (0, input), "{out:#?}");
    let (agent, logs): (Vec<&str>, Vec<&str>) = out.stderr.lines().partition(|l| *l == "to-stderr");
    assert_eq!(agent, ["to-stderr"], "{out:#?}");
    for line in logs {
        let value: Value = serde_json::from_str(line).expect("a supervisor log line");
        assert!(value.is_object(), "{line}");
    }
}

#[test]
fn json_log_is_one_object_per_stderr_line() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let out = sandbox.run(&["--", "/bin/true"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let log = out.log();
    for line in &log {
        for field in ["timestamp", "level", "message"] {
            assert!(line[field].is_string(), "{field} in {line}");
        }
    }
    let messages: Vec<&str> = log.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains(&"policy loaded"), "{messages:?}");
    assert!(
        messages.contains(&"agent exited with status 0"),
        "{messages:?}"
    );
}

#[test]
fn the_agent_runs_as_the_policy_or_environment_user_never_root() {
    // Policy section, environment, then the ids the agent reports or the one-line refusal.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Result<&'static str, &'static str>,
    );
    let cases: [Case; 5] = [
        (
            "process:\n  run_as_user: nobody\n",
            &[],
            Ok("65534 65534\n"),
        ),
        (
            "process:\n  run_as_user: 4242\n  run_as_group: 4343\n",
            &[],
            Ok("4242 4343\n"),
        ),
        (
            "process:\n  run_as_user: 4242\n",
            &[
                ("OPENSHELL_SANDBOX_UID", "5000"),
                ("OPENSHELL_SANDBOX_GID", "5001"),
            ],
            Ok("5000 5001\n"),
        ),
        (
            "process:\n  run_as_user: 0\n",
            &[],
            Err("process.run_as_user: 0 (root) is refused; the agent never runs as root"),
        ),
        (
            "",
            &[("OPENSHELL_SANDBOX_UID", "0")],
            Err(
                "OPENSHELL_SANDBOX_UID=\"0\": expected a number in 1-4294967294 (never 0: the \
                 agent never runs as root)",
            ),
        ),
    ];
    for (policy, env, expected) in cases {
        let sandbox = Sandbox::new(policy);
        let mut command = sandbox.command(&["--", "/bin/sh", "-c", "echo $(id -u) $(id -g)"]);
        command.envs(env.iter().copied());
        let out = run::run(&mut command, Stdin::Null);
        match expected {
            Ok(ids) => assert_eq!((out.code(), out.stdout.as_str()), (0, ids), "{out:#?}"),
            Err(message) => {
                assert_eq!(out.code(), 125, "{out:#?}");
                assert!(error_line(&out).ends_with(message), "{out:#?}");
            }
        }
    }
}

#[test]
fn an_interactive_shell_works_on_a_terminal() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let pty = Pty::open();
    let mut command = sandbox.command(&["--", "/bin/sh", "-i"]);
    command.stdout(pty.slave_stdio()).stderr(pty.slave_stdio());
    Setup {
        controlling_tty: true,
        ..Setup::default()
    }
    .apply(&mut command);
    let running = run::start(&mut command, Stdin::Terminal(&pty));
    drop(command);
    let Pty { master, slave } = pty;
    drop(slave);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        let mut master = File::from(master.try_clone().expect("dup of the pty master"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every process has closed the terminal.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                screen.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = || String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
    wait_until("the shell's prompt", || shown().contains("$ "));
    File::from(master)
        .write_all(b"echo hi; exit 3\n")
        .expect("typing into the terminal");
    let out = running.wait();
    reader.join().expect("terminal reader");
    assert_eq!(out.code(), 3, "{}", shown());
    assert!(shown().contains("\r\nhi\r\n"), "{}", shown());
}

/// Regression test (.lead-notes/from-escape.md, fixed in 249de2c): a supervisor that answered
/// a refused call before logging it could exit before the line was written. A log reader that
/// is slower than the agent (here: stderr is a full 4 KiB pipe for two seconds) lost the line
/// every time.
#[test]
fn denial_line_is_written_before_the_supervisor_exits() {
    let sandbox = Sandbox::new(RUN_AS_AGENT);
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned here.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ takes an int.
    let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
    let fill = r#"head -c 4096 /dev/zero >&2; exec "$0" ptrace-attach 1"#;
    let mut command = sandbox.command(&["--log-level", "warn", "--", "/bin/sh", "-c", fill]);
    command.arg(probe()).stdout(Stdio::null()).stderr(writer);
    let mut running = run::start(&mut command, Stdin::Null);
    drop(command);
    let started = Instant::now();
    while running.is_running() && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut stderr = Vec::new();
    File::from(reader)
        .read_to_end(&mut stderr)
        .expect("reading stderr");
    let out = running.wait();
    assert_eq!(out.code(), 1, "the probe's refusal");
    let text = String::from_utf8_lossy(&stderr);
    let denied = text
        .lines()
        .any(|l| l.contains(r#""event":"denied""#) && l.contains(r#""what":"ptrace""#));
    assert!(
        denied,
        "the denial line was lost: {:?}",
        text.trim_start_matches('\0')
    );
}

/// An address of the pod's network namespace that the sandbox's own namespace does not have:
/// a server there is outside the sandbox, as any server is.
const POD_ADDRESS: &str = "10.77.0.1";

/// A minimal HTTP server on `POD_ADDRESS:port` (in the calling thread's network namespace)
/// that answers 200 and keeps each request line.
fn http_server(port: u16) -> Arc<Mutex<Vec<String>>> {
    let listener = std::net::TcpListener::bind((POD_ADDRESS, port)).expect("bind the server");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let line = head.lines().next().unwrap_or("").to_owned();
            kept.lock().expect("requests").push(line);
            let _ = client.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    seen
}

/// The agent's own connections meet the policy on this kernel: handed over where it has the
/// TCP fence (Landlock ABI 4), relayed where it has not (the kernel matrix's 6.1, with and
/// without Landlock). A program without proxy support reaches the allowed port of a server in
/// the pod's namespace; the other port, which it reaches unconfined, sees nothing, and the
/// refusal is logged with the program.
#[test]
fn the_agents_own_connections_meet_the_policy_handed_over_or_relayed() {
    // On a thread of its own, in a network namespace of its own (the pod's); what it starts
    // (`ip`, the supervisor, the baseline) starts there too.
    let outcome = std::thread::spawn(|| {
        // SAFETY: unshare with a constant flag, on this thread only (a network namespace may
        // be left by one thread of a multithreaded process).
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{POD_ADDRESS}/32"), "dev", "lo"],
        ] {
            let status = Command::new("ip").args(args).status().expect("ip");
            assert!(status.success(), "ip {args:?}");
        }
        own_connections_in_this_namespace();
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn own_connections_in_this_namespace() {
    let (allowed, other) = (8080, 8081);
    let (to_allowed, to_other) = (http_server(allowed), http_server(other));
    let client = bin("fetch-direct").display().to_string();
    let fetch = |port: u16, path: &str| {
        vec![
            client.clone(),
            POD_ADDRESS.to_owned(),
            port.to_string(),
            path.to_owned(),
        ]
    };
    // Unconfined, the other port answers too.
    let baseline = fetch(other, "/baseline");
    let out = Command::new(&baseline[0])
        .args(&baseline[1..])
        .output()
        .expect("the baseline");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200 OK"),
        "unconfined: {out:?}"
    );
    assert_eq!(
        *to_other.lock().expect("requests"),
        ["GET /baseline HTTP/1.1"]
    );
    let sandbox = Sandbox::new(&format!(
        "network_policies:\n  pod_server:\n    endpoints:\n      - {{ host: \"{POD_ADDRESS}\", \
         port: {allowed}, allowed_ips: [\"{POD_ADDRESS}/32\"] }}\n    binaries:\n      - {{ \
         path: {client} }}\n"
    ));
    for (round, setting) in ["auto", "relay"].into_iter().enumerate() {
        let run = |argv: &[String]| {
            let mut command = sandbox.command(&["--"]);
            command
                .args(argv)
                .env("OPENSHELL_TRANSPARENT_EGRESS", setting);
            run::run(&mut command, Stdin::Null)
        };
        let out = run(&fetch(allowed, "/allowed"));
        let said = |text: &str| {
            out.log()
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
        };
        let off = said("TRANSPARENT EGRESS OFF");
        if !openshell_tests::require_kernel(!off, "transparent egress (seccomp ADDFD, pidfd_getfd)")
        {
            return;
        }
        let relayed = said("TRANSPARENT EGRESS RELAYED") || said("transparent egress relayed");
        assert_eq!(out.code(), 0, "{setting}: {out:?}");
        let server = format!("{POD_ADDRESS}:{allowed}");
        assert!(
            out.stdout.starts_with(&fetched_from(&server, relayed)),
            "{setting}: {out:?}"
        );
        assert_eq!(
            *to_allowed.lock().expect("requests"),
            vec!["GET /allowed HTTP/1.1"; round + 1]
        );
        let out = run(&fetch(other, "/refused"));
        assert_eq!(out.code(), 1, "{setting}: {out:?}");
        assert!(
            out.stdout.contains("Connection refused"),
            "{setting}: {out:?}"
        );
        let denials = out.denials();
        assert!(
            denials.len() == 1
                && denials[0]["layer"] == "network"
                && denials[0]["exe"] == client.as_str(),
            "{setting}: {out:?}"
        );
        assert_eq!(
            *to_other.lock().expect("requests"),
            ["GET /baseline HTTP/1.1"],
            "only the baseline reached the other port"
        );
    }
}
