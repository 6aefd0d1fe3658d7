//! `openshell-sandbox`: the start-up sequence.
//!
//! parse → load policy → preflight → prepare every layer → fork the confined sandbox →
//! supervise → exit with the agent's status. Anything that fails before the agent runs stops
//! here with one line naming the cause and exit status 125.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use openshell_sandbox::cli::{Cli, Command, PolicyArgs, RunArgs, parse_seconds};
use openshell_sandbox::supervise::{self, Outcome};
use openshell_sandbox::{check, credentials, log, policy, preflight, proxy, sandbox};

const SETUP_FAILED: u8 = 125;

fn main() -> ExitCode {
    // Until the supervisor's handlers exist, a TERM from the runtime would kill it with the
    // agent half started; held back, it is forwarded to the agent once supervision begins.
    supervise::hold_forwarded_signals();
    // The agent may take over the terminal; job control must never stop the supervisor
    // (a `stty tostop` agent could otherwise freeze it, timeout and all, by provoking a log
    // line). The agent starts with default dispositions again (child.rs).
    ignore_job_control();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { SETUP_FAILED } else { 0 });
        }
    };
    keep_standard_fds_open();
    let log = match &cli.command {
        Some(Command::Check(args)) => &args.log,
        None => &cli.run.log,
    };
    if let Err(e) = log::init(log.log_format, &log.log_level, log.log_file.as_deref()) {
        eprintln!("openshell-sandbox: {e}");
        return ExitCode::from(SETUP_FAILED);
    }
    let result = match cli.command {
        Some(Command::Check(args)) => check(&args.policy),
        None => run(cli.run),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", one_line(&e));
            SETUP_FAILED
        }
    };
    // The last summaries, and a bounded time for every line still queued.
    log::finish(log::DRAIN_TIMEOUT);
    ExitCode::from(code)
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let workdir = workdir(&args.policy)?;
    let policy = policy::load(policy::origin_for(args.policy.policy.as_deref()), &workdir)?;
    log_policy(&policy);
    let kernel = preflight::probe();
    kernel.require()?;
    let options = supervise::Options {
        timeout: args.timeout,
        grace: grace_period()?,
        proxy: proxy::Settings::from_env().map_err(anyhow::Error::msg)?,
    };
    // Before anything copies the environment: the values leave it here.
    let credentials = credentials::prepare(&policy, &reserved_variables())?;
    let java_options = std::env::var("JAVA_TOOL_OPTIONS").ok();
    let inspection = proxy::l7::prepare(&policy, java_options.as_deref())?;
    let provided = inspection.as_ref().map_or(&[][..], |i| &i.files[..]);
    let prepared = sandbox::prepare(
        &policy,
        &kernel,
        &workdir,
        &args.command,
        provided,
        inspection.as_ref(),
        Some(&credentials),
    )?;
    let running = sandbox::spawn(prepared)?;
    let outcome = supervise::run(running, policy.network, options);
    report(&outcome);
    Ok(outcome.code())
}

/// The variables the supervisor sets for the agent itself, which no credential may take.
fn reserved_variables() -> Vec<&'static str> {
    let mut names = vec!["HOME", "USER", "LOGNAME", "PATH"];
    names.extend(proxy::agent_environment().iter().map(|(name, _)| *name));
    names.extend(
        proxy::l7::trust::agent_environment(None)
            .iter()
            .map(|(name, _)| *name),
    );
    names
}

fn check(args: &PolicyArgs) -> anyhow::Result<u8> {
    let workdir = workdir(args)?;
    let (report, ok) = check::report(policy::origin_for(args.policy.as_deref()), &workdir);
    print!("{report}");
    Ok(if ok { 0 } else { SETUP_FAILED })
}

fn workdir(args: &PolicyArgs) -> anyhow::Result<std::path::PathBuf> {
    match &args.workdir {
        Some(dir) => Ok(dir.clone()),
        None => std::env::current_dir().context("cannot read the current directory"),
    }
}

/// The error and its causes on one line, skipping a cause the message already quotes (our
/// error types include their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn grace_period() -> anyhow::Result<std::time::Duration> {
    match std::env::var("OPENSHELL_GRACE_PERIOD") {
        Err(_) => Ok(std::time::Duration::from_secs(10)),
        // 0 is allowed here: no grace, KILL right after TERM.
        Ok(raw) if raw.trim() == "0" => Ok(std::time::Duration::ZERO),
        Ok(raw) => parse_seconds(&raw).map_err(|e| anyhow::anyhow!("OPENSHELL_GRACE_PERIOD: {e}")),
    }
}

fn log_policy(policy: &policy::Policy) {
    tracing::info!(
        policy = %policy.origin,
        read_only = policy.filesystem.read_only.len(),
        read_write = policy.filesystem.read_write.len(),
        network_rules = policy.network.len(),
        "policy loaded"
    );
    // Remarks about the policy itself are `check`'s to list; at every start they would only
    // repeat themselves over the agent's output.
    if !policy.notes.is_empty() {
        tracing::warn!(
            notes = policy.notes.len(),
            "{} warnings about the policy itself: `openshell-sandbox check` lists them",
            policy.notes.len()
        );
    }
}

fn report(outcome: &Outcome) {
    // What rate limits held back comes before the status line, which stays the last one.
    log::flush_summaries();
    tracing::debug!(
        peak_rss_kib = peak_rss_kib(),
        "supervisor peak resident memory (its own, not the agent's)"
    );
    match outcome {
        Outcome::Exited(code) => tracing::info!(status = code, "agent exited with status {code}"),
        Outcome::Signaled(signal) => tracing::info!(signal, "agent killed by signal {signal}"),
        Outcome::TimedOut => tracing::warn!("agent stopped: --timeout expired"),
        Outcome::OomKilled => tracing::error!(
            event = "oom_killed",
            signal = libc::SIGKILL,
            "agent killed by the kernel's OOM killer: the sandbox ran out of memory"
        ),
        Outcome::SetupFailed(message) | Outcome::ExecFailed { message, .. } => {
            tracing::error!("{message}");
        }
    }
}

fn ignore_job_control() {
    for signal in [libc::SIGTTOU, libc::SIGTTIN, libc::SIGTSTP] {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// The supervisor's own peak resident set, all threads, children excluded.
fn peak_rss_kib() -> i64 {
    // RUSAGE_SELF cannot fail.
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map_or(0, |usage| usage.max_rss())
}

/// Reopens fds 0-2 on /dev/null when the supervisor was started without them, so that none
/// of its own files can land there and be inherited by the agent as stdio.
fn keep_standard_fds_open() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries; open returns the lowest free fd, which is `fd`.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}
