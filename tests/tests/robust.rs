//! A hostile agent against the supervisor itself: it cannot wedge it through the terminal or
//! blind it through the stderr they share, abort it from the pods limit, get it killed by the
//! OOM killer in its place, or make a refusal go unaccounted. Each attack is first shown to
//! take effect (the terminal really stopped, the shared description really non-blocking, the
//! pids limit really reached, a bystander really killed), then shown to fail against the
//! supervisor, judged by what the supervisor did and logged.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openshell_tests::cgroup::Cgroup;
use openshell_tests::run::{self, Output, Pty, Setup, Stdin};
use openshell_tests::scratch::{RUN_AS_AGENT, Scratch};
use openshell_tests::{bin, wait_until};
use serde_json::Value;

fn hostile() -> String {
    bin("hostile-agent").display().to_string()
}

/// A scratch workdir and the test policy (no network unless `extra` adds it).
fn sandbox_files(extra: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new("robust");
    let policy = scratch.policy(&[], &[], &format!("{RUN_AS_AGENT}{extra}"));
    (scratch, policy)
}

/// The denial lines (seccomp or proxy) of a JSON log text, and the sum of the suppressed
/// and dropped denials it reports.
fn accounting(log: &str) -> (Vec<Value>, u64) {
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim_start_matches('#')).ok())
        .collect();
    let count = |event: &str, field: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l["event"] == event)
            .map(|l| l[field].as_u64().expect("a count"))
            .sum()
    };
    let unreported = count("denials_suppressed", "count") + count("log_lines_dropped", "denials");
    let denials = lines
        .into_iter()
        .filter(|l| l["event"] == "denied")
        .collect();
    (denials, unreported)
}

fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned here.
    unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Whether `fd`'s open file description has O_NONBLOCK.
fn nonblocking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFL on an fd owned here.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags & libc::O_NONBLOCK != 0
}

/// The agent stops the terminal's output (`tcflow(TCOOFF)`), which blocks every write to it,
/// then makes the supervisor want to log. The supervisor's log lines wait; `--timeout` still
/// stops the agent on time and the supervisor exits (its pending lines get a bounded time).
#[test]
fn a_stopped_terminal_cannot_wedge_the_supervisor() {
    let (scratch, policy) = sandbox_files("");
    let pty = Pty::open();
    let mut command = run::sandbox(&policy, scratch.path());
    command
        .env("OPENSHELL_GRACE_PERIOD", "1")
        .args(["--timeout", "2", "--", &hostile(), "tcooff"])
        .stdout(pty.slave_stdio())
        .stderr(pty.slave_stdio());
    Setup {
        controlling_tty: true,
        ..Setup::default()
    }
    .apply(&mut command);
    let started = Instant::now();
    let running = run::start(&mut command, Stdin::Terminal(&pty));
    drop(command);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        let mut master = File::from(pty.master.try_clone().expect("dup of the pty master"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buf) {
                screen.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = || String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
    while !shown().contains("stopping the terminal's output") {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", shown());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The attack took effect: a write of our own, through a description of our own (so that
    // O_NONBLOCK is ours alone), finds the terminal stopped.
    let ours = format!("/proc/self/fd/{}", pty.slave.as_raw_fd());
    let stopped = Instant::now();
    let mut refused = false;
    while !refused && stopped.elapsed() < Duration::from_secs(5) {
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&ours)
            .expect("reopening the terminal");
        refused = std::io::Write::write(&mut &probe, b"x")
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused, "the terminal's output was never stopped");
    let out = running.wait();
    let took = started.elapsed();
    let Pty { master, slave } = pty;
    drop((master, slave));
    let _ = reader.join();
    assert_eq!(out.code(), 124, "{out:#?}\n{}", shown());
    // 2 s timeout, 1 s grace, at most 5 s for the lines that cannot get out, and slack.
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

/// The agent sets O_NONBLOCK on the stderr it shares with the supervisor (one open file
/// description, so one set of flags), fills the pipe, and gets refused five times while the
/// log's reader is slow. Every one of the five denial lines arrives once the reader reads.
#[test]
fn o_nonblock_on_the_shared_stderr_loses_no_line() {
    let (scratch, policy) = sandbox_files("");
    let (mut reader, writer) = pipe();
    let shared = writer.try_clone().expect("dup of the pipe's write end");
    let mut command = run::sandbox(&policy, scratch.path());
    command
        .args([
            "--log-level",
            "warn",
            "--",
            &hostile(),
            "nonblock-flood",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(writer);
    let running = run::start(&mut command, Stdin::Null);
    drop(command);
    // The reader is slow: the agent has filled the pipe and been refused meanwhile.
    wait_until("the agent to set O_NONBLOCK on the shared stderr", || {
        nonblocking(&shared)
    });
    std::thread::sleep(Duration::from_secs(1));
    // The attack took effect on the description the supervisor was started with.
    assert!(nonblocking(&shared));
    drop(shared);
    let mut log = Vec::new();
    reader.read_to_end(&mut log).expect("reading stderr");
    let out = running.wait();
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.contains("refused 5"), "{out:#?}");
    let log = String::from_utf8_lossy(&log);
    let (denials, unreported) = accounting(&log);
    let refused = denials.iter().filter(|d| d["what"] == "unshare").count();
    assert_eq!((refused, unreported), (5, 0), "{log}");
}

/// In a pids cgroup of 100, the agent forks until `fork` fails with EAGAIN, then asks the
/// proxy for a connection its policy allows (the request goes through caller identification,
/// binary pinning and name resolution, all work done on threads). The supervisor answers,
/// logs, and reports the agent's exit: it made every thread it needs before the agent ran.
#[test]
fn an_agent_at_the_pids_limit_cannot_abort_the_supervisor() {
    let Some(cgroup) = Cgroup::new("pids", "pids") else {
        return;
    };
    cgroup.set("pids.max", "100");
    // localhost is allowed by the rule, then refused by the address guard (loopback is never
    // dialled): every step of an allowed request runs, and nothing leaves the machine.
    let rule = format!(
        "network_policies:\n  local:\n    name: local\n    endpoints:\n      - {{ host: localhost, \
         port: 443 }}\n    binaries:\n      - {{ path: {} }}\n",
        hostile()
    );
    let (scratch, policy) = sandbox_files(&rule);
    let launcher = cgroup.launcher();
    let launcher: Vec<&OsStr> = launcher.iter().map(|a| a.as_os_str()).collect();
    let mut command = run::sandbox_via(&launcher, &policy, scratch.path());
    command.args(["--", &hostile(), "fork-then-connect", "localhost:443"]);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 0, "{out:#?}");
    // The limit was reached: fork itself was refused with EAGAIN.
    assert!(
        out.stdout
            .contains(&format!("fork refused {}\n", libc::EAGAIN)),
        "{out:#?}"
    );
    let forked: u32 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("forked "))
        .and_then(|n| n.parse().ok())
        .expect("the fork count");
    assert!(forked > 50, "{out:#?}");
    assert!(
        out.stdout.contains("proxy answered HTTP/1.1 403"),
        "{out:#?}"
    );
    let log = out.log();
    let refusal = log
        .iter()
        .find(|l| l["event"] == "denied" && l["layer"] == "proxy")
        .unwrap_or_else(|| panic!("no proxy denial: {out:#?}"));
    assert_eq!(refusal["what"], "CONNECT localhost:443", "{out:#?}");
    assert!(
        refusal["why"]
            .as_str()
            .is_some_and(|why| why.contains("127.0.0.1") || why.contains("::1")),
        "the address guard refused it: {refusal}"
    );
    assert_eq!(
        log.last().and_then(|l| l["message"].as_str()),
        Some("agent exited with status 0"),
        "{out:#?}"
    );
}

/// With too few pids for the supervisor's own threads (some of them, or all but the runtime's),
/// it stops before the agent runs, with one clear line and 125: no abort.
#[test]
fn too_few_pids_for_the_supervisors_threads_is_a_clean_failure() {
    let (scratch, policy) = sandbox_files("");
    for limit in ["4", "10"] {
        let Some(cgroup) = Cgroup::new("pids", "few") else {
            return;
        };
        cgroup.set("pids.max", limit);
        let launcher = cgroup.launcher();
        let launcher: Vec<&OsStr> = launcher.iter().map(|a| a.as_os_str()).collect();
        let mut command = run::sandbox_via(&launcher, &policy, scratch.path());
        command.args(["--", "/bin/echo", "the agent ran"]);
        let out = run::run(&mut command, Stdin::Null);
        assert_eq!(out.code(), 125, "pids.max {limit}: {out:#?}");
        assert!(!out.stdout.contains("the agent ran"), "{out:#?}");
        let log = out.log();
        let errors: Vec<&Value> = log.iter().filter(|l| l["level"] == "ERROR").collect();
        assert_eq!(errors.len(), 1, "pids.max {limit}: {out:#?}");
        assert!(
            errors[0]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot start the supervisor's threads")),
            "pids.max {limit}: {out:#?}"
        );
    }
}

fn in_cgroup(cgroup: &Cgroup, program: &str, args: &[&str]) -> Command {
    let launcher = cgroup.launcher();
    let mut command = Command::new(&launcher[0]);
    command.args(&launcher[1..]).arg(program).args(args);
    command
}

/// The agent fills a memfd past the memory cgroup's limit. Memory a memfd holds is charged to
/// the cgroup but shows in no process's resident set, so the OOM killer's usual choice (the
/// largest resident set) misses the process that holds it. Unconfined, next to a bystander with
/// a larger resident set, the bystander is what the OOM killer kills. Confined, the bystander
/// is the supervisor: the agent, which volunteered (`oom_score_adj` 1000), is killed instead,
/// and the supervisor says so and exits 137.
#[test]
fn the_oom_killer_takes_the_agent_not_the_supervisor() {
    // The baseline: the bystander dies for the memfd's owner.
    let Some(cgroup) = Cgroup::memory("memory", 96) else {
        return;
    };
    let mut bystander = in_cgroup(&cgroup, &hostile(), &["hold", "48"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the bystander");
    let mut line = [0u8; 64];
    let n = bystander
        .stdout
        .as_mut()
        .expect("its stdout")
        .read(&mut line)
        .expect("reading");
    assert!(line[..n].starts_with(b"holding 48"));
    let filler = in_cgroup(&cgroup, &hostile(), &["fill-memfd", "256"])
        .stdout(Stdio::null())
        .status()
        .expect("running the filler");
    let bystander = bystander.wait().expect("the bystander's end");
    assert_eq!(
        bystander.signal(),
        Some(libc::SIGKILL),
        "the bystander was the victim (filler: {filler})"
    );
    drop(cgroup);

    let Some(cgroup) = Cgroup::memory("memory", 96) else {
        return;
    };
    let (scratch, policy) = sandbox_files("");
    let launcher = cgroup.launcher();
    let launcher: Vec<&OsStr> = launcher.iter().map(|a| a.as_os_str()).collect();
    let mut command = run::sandbox_via(&launcher, &policy, scratch.path());
    command.args(["--", &hostile(), "fill-memfd", "256"]);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "the supervisor exits with the agent's status: {out:#?}"
    );
    assert!(!out.stdout.contains("memfd filled"), "{out:#?}");
    let log = out.log();
    assert!(
        log.iter().any(|l| l["event"] == "oom_kill"),
        "the kill is reported as it happens: {out:#?}"
    );
    assert_eq!(
        log.last().map(|l| (&l["event"], &l["message"])),
        Some((
            &Value::from("oom_killed"),
            &Value::from("agent killed by the kernel's OOM killer: the sandbox ran out of memory")
        )),
        "{out:#?}"
    );
}

/// Two ways refusals went uncounted: the ones at the end of a rate-limit window, when the
/// agent then goes quiet (reported only if the source logged again), and those of a flood.
/// Now the denial lines plus the summaries' counts add up to the refusals made, and a quiet
/// agent's summary comes on a timer, not at the next refusal or at exit.
#[test]
fn every_refusal_is_logged_or_counted() {
    let (scratch, policy) = sandbox_files("");
    for (made, quiet_ms) in [(60u64, 2500u64), (30_000, 0)] {
        let mut command = run::sandbox(&policy, scratch.path());
        command.args([
            "--",
            &hostile(),
            "refuse",
            &made.to_string(),
            &quiet_ms.to_string(),
        ]);
        let out = run::run(&mut command, Stdin::Null);
        assert_eq!(out.code(), 0, "{out:#?}");
        let (denials, unreported) = accounting(&out.stderr);
        assert!(
            denials
                .iter()
                .all(|d| d["layer"] == "seccomp" && d["what"] == "unshare"),
            "{denials:?}"
        );
        assert_eq!(
            denials.len() as u64 + unreported,
            made,
            "{} lines, {unreported} counted",
            denials.len()
        );
        if quiet_ms > 0 {
            // The summary of the last window was logged while the agent was quiet.
            let log = out.log();
            let at = |event: &str| {
                log.iter()
                    .position(|l| l["event"] == event || l["message"] == event)
                    .unwrap_or_else(|| panic!("no {event}: {out:#?}"))
            };
            assert!(
                at("denials_suppressed") < at("agent exited with status 0"),
                "{out:#?}"
            );
            let time = |i: usize| seconds(log[i]["timestamp"].as_str().expect("a timestamp"));
            let before_exit =
                time(at("agent exited with status 0")) - time(at("denials_suppressed"));
            assert!(
                before_exit > 1.0,
                "{before_exit} s before the exit: {out:#?}"
            );
        }
    }
}

/// `--log-file`: the supervisor's lines go to the file, none to the stderr it shares with the
/// agent (an interactive agent's terminal stays its own).
#[test]
fn the_log_file_keeps_the_agents_stderr_its_own() {
    let (scratch, policy) = sandbox_files("");
    let file = scratch.join("supervisor.log");
    let mut command = run::sandbox(&policy, scratch.path());
    command.arg("--log-file").arg(&file).args([
        "--",
        "/bin/sh",
        "-c",
        "echo from-the-agent >&2; unshare -U true",
    ]);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stderr.starts_with("from-the-agent\n") && !out.stderr.contains("\"level\""),
        "{out:#?}"
    );
    let logged = Output {
        status: out.status,
        stdout: String::new(),
        stderr: std::fs::read_to_string(&file).expect("the log file"),
    };
    assert_eq!(logged.denials().len(), 1, "{logged:#?}");
    assert!(
        logged
            .log()
            .iter()
            .any(|l| l["message"] == "agent exited with status 1"),
        "{logged:#?}"
    );
    assert_eq!(file_mode(&file) & 0o777, 0o640);
}

/// Seconds into the day of an RFC 3339 UTC timestamp (`2026-12-05T12:41:49.003284Z`).
fn seconds(timestamp: &str) -> f64 {
    let time = timestamp
        .split_once('T')
        .and_then(|(_, time)| time.strip_suffix('Z'))
        .expect("an RFC 3339 UTC timestamp");
    time.split(':')
        .map(|part| part.parse::<f64>().expect("a number"))
        .fold(0.0, |total, part| total * 60.0 + part)
}

fn file_mode(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(path).expect("metadata"))
}
