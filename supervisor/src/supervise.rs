//! Supervision: messages from the sandbox, signals in, timeout, exit status out.
//!
//! The supervisor stays the sandbox's parent for its whole life. It forwards TERM, INT, HUP,
//! QUIT, USR1, USR2 and WINCH to init, which passes them to the agent's process group. On its
//! own TERM, and when `--timeout` expires, it gives the agent a grace period and then kills
//! init, which makes the kernel kill every process of the sandbox: nothing is left behind.
//!
//! Before init may fork the agent, the supervisor has every thread it needs (log writer,
//! workers, seccomp, runtime) and has made the sandbox the OOM killer's first choice: what the
//! agent does to the pod's pids and memory limits afterwards cannot take them away. Nothing
//! here waits for a log line to be written (see `log/sink.rs`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::cgroup::Cgroups;
use crate::channel::{self, Message};
use crate::child::{CANNOT_EXECUTE, NOT_FOUND, SETUP_FAILED};
use crate::init::FORWARDED;
use crate::lineage::Lineage;
use crate::policy::NetworkRule;
use crate::sandbox::{Command, Running};
use crate::{caps, log, oom, proxy, seccomp, workers};

/// Exit status when `--timeout` expired.
pub const TIMED_OUT: u8 = 124;

/// How the sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent exited with this code.
    Exited(i32),
    /// The agent was killed by this signal.
    Signaled(i32),
    /// `--timeout` expired.
    TimedOut,
    /// The kernel's OOM killer killed the agent.
    OomKilled,
    /// Set-up failed before the agent ran.
    SetupFailed(String),
    /// The command could not be executed.
    ExecFailed {
        /// 126 or 127.
        code: i32,
        /// What went wrong, naming the path.
        message: String,
    },
}

impl Outcome {
    /// The supervisor's exit status.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Exited(code) => *code as u8,
            Outcome::Signaled(signal) => (128 + signal) as u8,
            Outcome::TimedOut => TIMED_OUT,
            Outcome::OomKilled => (128 + libc::SIGKILL) as u8,
            Outcome::SetupFailed(_) => SETUP_FAILED as u8,
            Outcome::ExecFailed { code, .. } => *code as u8,
        }
    }
}

/// Timeout, grace period and proxy settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stop the agent after this long.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL.
    pub grace: Duration,
    /// The egress proxy's limits.
    pub proxy: proxy::Settings,
}

/// What the supervisor has learnt so far.
#[derive(Debug, Default)]
struct State {
    status: Option<i32>,
    failure: Option<Outcome>,
    timed_out: bool,
    kill_at: Option<Instant>,
}

/// Blocks the forwarded signals on the calling thread (and on every thread and process it
/// creates later) until [`run`] has its handlers and unblocks them.
pub fn hold_forwarded_signals() {
    let _ = forwarded_set().thread_block();
}

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        set.add(signal);
    }
    set
}

/// Serves the egress proxy for `network` and supervises `running` to the end; returns how it
/// ended.
pub fn run(running: Running, network: Vec<NetworkRule>, options: Options) -> Outcome {
    let lineage = Arc::new(Lineage::default());
    let cgroups = Cgroups::own();
    let started = start_threads(&cgroups)
        .map_err(|e| format!("cannot start the supervisor's threads: {e}"))
        .and_then(|threads| {
            let preferred = oom::prefer(running.init).map_err(|e| {
                format!("cannot make the sandbox the OOM killer's first choice: {e}")
            })?;
            Ok((threads, preferred))
        });
    match started {
        Ok(((runtime, seccomp), preferred)) => {
            // Init waits for this before it forks the agent. It fails only when init is gone
            // already, having said why on the channel: supervision reports that.
            if let Err(e) = channel::go(&running.channel) {
                tracing::debug!("init did not wait for the start signal: {e}");
            }
            let context = Context {
                lineage,
                seccomp: Some(seccomp),
                cgroups,
                preferred,
            };
            let outcome = runtime.block_on(supervise(running, network, options, context));
            // Open tunnels and pending lookups end with the agent.
            runtime.shutdown_background();
            outcome
        }
        Err(e) => {
            let _ = kill(running.init, Signal::SIGKILL);
            let _ = waitpid(running.init, None);
            Outcome::SetupFailed(e)
        }
    }
}

/// Threads of tokio's runtime.
const RUNTIME_THREADS: u64 = 2;

/// Creates every thread the supervisor will have, before the agent runs (init waits for
/// [`channel::go`]): the agent shares the pod's pids limit, and one that forks up to it must
/// not leave the supervisor unable to log, answer refused calls or serve the proxy. Nothing
/// after this needs a new thread (see `workers.rs`). Returns the runtime and the seccomp
/// threads' inbox for the listener the agent sends just before it runs.
fn start_threads(cgroups: &Cgroups) -> io::Result<(tokio::runtime::Runtime, seccomp::Serving)> {
    log::start_writer()?;
    workers::start()?;
    let seccomp = seccomp::start_serving()?;
    // tokio aborts the process when it cannot create its worker threads (it panics, and the
    // release build aborts on panic): make sure the pids limit leaves room for them first.
    if let Some(left) = cgroups.pids_left()
        && left < RUNTIME_THREADS
    {
        return Err(io::Error::other(format!(
            "the pids cgroup admits only {left} more tasks; the runtime needs {RUNTIME_THREADS}"
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS as usize)
        .enable_all()
        .build()?;
    Ok((runtime, seccomp))
}

/// What supervision shares with the threads started before it.
#[derive(Debug)]
struct Context {
    lineage: Arc<Lineage>,
    /// The seccomp serving threads until the listener is delivered to them.
    seccomp: Option<seccomp::Serving>,
    cgroups: Cgroups,
    preferred: oom::Preferred,
}

async fn supervise(
    running: Running,
    network: Vec<NetworkRule>,
    options: Options,
    mut context: Context,
) -> Outcome {
    let Running {
        init,
        channel,
        command,
        proxy,
    } = running;
    let mut state = State::default();
    let mut oom = oom::Watch::new(context.cgroups.clone());
    let transparent = match proxy::start(
        proxy,
        network,
        init.as_raw() as u32,
        options.proxy,
        context.lineage.clone(),
    ) {
        Ok(transparent) => transparent,
        Err(e) => {
            // Without the proxy the agent has no network at all: still confined, so keep
            // going.
            tracing::error!(
                layer = "proxy",
                "egress proxy not started: {e}; the agent has no network"
            );
            None
        }
    };
    let services = seccomp::Services {
        lineage: context.lineage.clone(),
        transparent,
    };
    let (forward_tx, mut forwarded) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        match signal(SignalKind::from_raw(sig as i32)) {
            Ok(mut stream) => {
                let tx = forward_tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(sig).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("cannot forward {sig}: {e}"),
        }
    }
    let mut sigchld = signal(SignalKind::child()).ok();
    // The handlers exist: signals held back since start-up are delivered (to this thread, the
    // only one not blocking them) and forwarded.
    let _ = forwarded_set().thread_unblock();
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same until it drops.
    let registered = unsafe { AsyncFd::register_with_interest(channel, Interest::READABLE) };
    let channel = match registered {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::error!("cannot watch the control channel: {e}");
            None
        }
    };
    let timeout_at = options.timeout.map(|t| Instant::now() + t);
    let mut oom_check = tokio::time::interval(oom::CHECK_PERIOD);
    // Checked once after the SIGCHLD handler exists, in case init exited before that.
    let mut exited = reap(init);
    while exited.is_none() {
        tokio::select! {
            ready = async { channel.as_ref()?.readable().await.ok() }, if channel.is_some() => {
                if let (Some(mut guard), Some(fd)) = (ready, channel.as_ref()) {
                    let closed = drain(fd.get_ref(), &command, &mut context, &services, &mut state);
                    guard.clear_ready();
                    if closed {
                        // Every sandbox end is closed: init is gone or going.
                        exited = wait_blocking(init);
                    }
                }
            }
            Some(sig) = forwarded.recv() => {
                tracing::info!(signal = %sig, "forwarding {sig} to the agent");
                let _ = kill(init, sig);
                if sig == Signal::SIGTERM && state.kill_at.is_none() {
                    state.kill_at = Some(Instant::now() + options.grace);
                }
            }
            _ = async { sigchld.as_mut()?.recv().await }, if sigchld.is_some() => {
                exited = reap(init);
            }
            _ = sleep_until(timeout_at.unwrap_or_else(Instant::now)), if timeout_at.is_some() && !state.timed_out => {
                tracing::warn!(timeout = ?options.timeout, "timeout reached: sending SIGTERM to the agent");
                state.timed_out = true;
                let _ = kill(init, Signal::SIGTERM);
                state.kill_at.get_or_insert(Instant::now() + options.grace);
            }
            _ = sleep_until(state.kill_at.unwrap_or_else(Instant::now)), if state.kill_at.is_some() => {
                tracing::warn!(grace = ?options.grace, "the agent did not exit within the grace period: killing the sandbox");
                let _ = kill(init, Signal::SIGKILL);
                state.kill_at = None;
            }
            _ = oom_check.tick() => oom.check(),
        }
    }
    if let Some(fd) = &channel {
        drain(fd.get_ref(), &command, &mut context, &services, &mut state);
    }
    oom.check();
    // The agent's own status (init's report), not init's: init killed is not the agent.
    let agent_killed = state
        .status
        .is_some_and(|s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGKILL);
    match outcome(state, exited) {
        Outcome::Signaled(libc::SIGKILL) if agent_killed && oom.killed_any() => Outcome::OomKilled,
        outcome => outcome,
    }
}

/// Handles every message waiting on the channel. Returns true at end of stream.
fn drain(
    fd: &OwnedFd,
    command: &Command,
    context: &mut Context,
    services: &seccomp::Services,
    state: &mut State,
) -> bool {
    loop {
        match channel::receive(fd) {
            Ok(Some(message)) => handle(message, command, context, services, state),
            Ok(None) => return true,
            Err(Errno::EAGAIN) => return false,
            Err(e) => {
                tracing::error!("control channel: {e}");
                return true;
            }
        }
    }
}

fn handle(
    message: Message,
    command: &Command,
    context: &mut Context,
    services: &seccomp::Services,
    state: &mut State,
) {
    match message {
        Message::AgentSpawned(pid) => {
            tracing::debug!(sandbox_pid = pid, "agent process created");
            context.preferred.agent_spawned();
        }
        Message::Confined => {
            tracing::info!(command = ?command.argv, "agent confined, starting it");
        }
        Message::SeccompListener(listener) => {
            // To the thread started for it before the agent ran.
            let delivered = match context.seccomp.take() {
                Some(serving) => serving.deliver(listener, services.clone()),
                None => Err(Errno::EEXIST),
            };
            if let Err(e) = delivered {
                tracing::error!(
                    layer = "seccomp",
                    "a second seccomp listener, or none to serve it ({e}): refused calls it \
                     would report fail with ENOSYS"
                );
            }
        }
        Message::Failed { step, errno } => {
            state.failure.get_or_insert(Outcome::SetupFailed(format!(
                "sandbox set-up failed: {step}: {}",
                errno.desc()
            )));
        }
        Message::Unverified { check, value } => {
            state.failure.get_or_insert(Outcome::SetupFailed(format!(
                "sandbox set-up failed verification: {check} ({value})"
            )));
        }
        Message::CapabilitySurvived { set, cap } => {
            state.failure.get_or_insert(Outcome::SetupFailed(format!(
                "sandbox set-up failed verification: {set} ({})",
                caps::name(cap)
            )));
        }
        Message::ExecFailed { errno, candidate } => {
            let name = command.argv.first().map_or("", String::as_str);
            let path = command
                .candidates
                .get(candidate)
                .map_or(name, String::as_str);
            let (code, message) = match errno {
                Errno::ENOENT | Errno::ENOTDIR => (NOT_FOUND, format!("{name}: command not found")),
                Errno::EACCES => (
                    CANNOT_EXECUTE,
                    format!(
                        "{path}: permission denied (is it executable, and under a read_only or \
                         read_write path of the policy?)"
                    ),
                ),
                other => (
                    CANNOT_EXECUTE,
                    format!("{path}: cannot execute: {}", other.desc()),
                ),
            };
            state
                .failure
                .get_or_insert(Outcome::ExecFailed { code, message });
        }
        Message::Exited(status) => state.status = Some(status),
    }
}

fn reap(init: Pid) -> Option<WaitStatus> {
    match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(status) => Some(status),
        Err(_) => Some(WaitStatus::Exited(init, SETUP_FAILED)),
    }
}

fn wait_blocking(init: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(init, None) {
            Err(Errno::EINTR) => continue,
            Ok(status) => return Some(status),
            Err(_) => return Some(WaitStatus::Exited(init, SETUP_FAILED)),
        }
    }
}

fn outcome(state: State, init: Option<WaitStatus>) -> Outcome {
    if state.timed_out {
        return Outcome::TimedOut;
    }
    if let Some(failure) = state.failure {
        return failure;
    }
    if let Some(status) = state.status {
        return if libc::WIFSIGNALED(status) {
            Outcome::Signaled(libc::WTERMSIG(status))
        } else {
            Outcome::Exited(libc::WEXITSTATUS(status))
        };
    }
    match init {
        Some(WaitStatus::Signaled(_, signal, _)) => Outcome::Signaled(signal as i32),
        other => Outcome::SetupFailed(format!(
            "the sandbox's init ended without a report ({other:?})"
        )),
    }
}
