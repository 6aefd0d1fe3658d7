//! Init: PID 1 of the sandbox's PID namespace, the way bubblewrap does it.
//!
//! Agents do not reap, and PID 1 must: every orphan in the sandbox is re-parented here and
//! reaped, so no zombie accumulates. Init also forwards the signals the supervisor passes on to
//! the agent's process group, and when the agent exits it reports the status and exits itself,
//! at which point the kernel kills whatever the agent left behind. The agent cannot signal or
//! trace init: different uid, no capabilities, Landlock's signal scope, and init is not
//! dumpable.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{ForkResult, Pid, fork};

use crate::channel::{Sender, StepFailure};
use crate::child::{self, SETUP_FAILED};
use crate::{memfd, namespaces, view};

/// The signals the supervisor forwards to the agent (through init).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// What init needs, prepared before fork.
#[derive(Debug)]
pub struct Plan {
    /// Namespaces to finish.
    pub namespaces: namespaces::Prepared,
    /// The agent's filesystem.
    pub view: view::Prepared,
    /// Executable memfds, refused for the sandbox's PID namespace.
    pub memfd: memfd::Prepared,
    /// The agent's side.
    pub agent: child::Plan,
}

/// Runs init. Never returns.
pub fn run(plan: &mut Plan, channel: Sender) -> ! {
    // Die with the supervisor: the kernel then kills everything in the namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if supervisor_gone(channel.0) {
        exit(SETUP_FAILED);
    }
    let _ = nix::sys::prctl::set_dumpable(false);
    or_exit(plan.namespaces.apply(), channel);
    let proc = build_view(plan, channel);
    // Blocked, the forwarded signals and SIGCHLD queue up for sigwaitinfo below. (Blocked
    // signals are never discarded, not even for a namespace's PID 1.)
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        waited.add(signal);
    }
    or_exit(
        waited
            .thread_block()
            .map_err(StepFailure::of("blocking signals in init")),
        channel,
    );
    // Every thread the supervisor will ever have exists before the agent can, and init is the
    // OOM killer's first choice, which the agent inherits at the fork: an agent that forks up
    // to the pod's pids limit must find the threads already there (workers.rs), and one that
    // exhausts its memory must be the one killed (oom.rs).
    if channel.wait_for_go().is_err() {
        exit(SETUP_FAILED);
    }
    // The agent's process sets itself up while init finishes the view; it runs the agent only
    // once init has written to this pipe.
    let (go_read, go_write) = or_exit(
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(StepFailure::of("creating the start pipe")),
        channel,
    );
    plan.agent.go = Some(go_read);
    // SAFETY: init is single-threaded (forked from a single-threaded supervisor).
    let agent = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Init's death must end the wait: only init may hold the write end.
            drop(go_write);
            child::run(&mut plan.agent, channel)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(channel, StepFailure::of("forking the agent")(e)),
    };
    plan.agent.go = None;
    finish_view(plan, &proc, channel);
    or_exit(
        nix::unistd::write(go_write.as_fd(), b"1").map_err(StepFailure::of("starting the agent")),
        channel,
    );
    drop(go_write);
    // After the agent is on its way: closing a procfs that is not in the view unmounts it,
    // which waits for the kernel (an RCU grace period).
    drop(proc);
    close_all_but(channel.0);
    channel.agent_spawned(agent.as_raw());
    loop {
        let Ok(signal) = waited.wait() else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            reap(agent, channel);
        } else {
            forward(agent, signal);
        }
    }
}

/// In the new mount namespace: the sandbox's procfs (for its PID namespace, so made here),
/// the memfd sysctl written through it, then the view as init's root. The agent inherits the
/// root. Returns the procfs, for [`finish_view`].
fn build_view(plan: &Plan, channel: Sender) -> OwnedFd {
    let proc = or_exit(plan.view.new_proc(), channel);
    or_exit(plan.memfd.apply(&proc), channel);
    or_exit(plan.view.apply(&proc), channel);
    proc
}

/// After the agent's process is forked (so the kernel's wait for the old root's detach
/// overlaps its set-up): the old root detached and the view read back.
fn finish_view(plan: &Plan, proc: &OwnedFd, channel: Sender) {
    or_exit(plan.view.detach_old_root(), channel);
    if let Err(u) = plan.view.verify(proc) {
        channel.unverified(u.as_str(), 0);
        exit(SETUP_FAILED);
    }
}

/// What a step that succeeded returned; a failed one is reported, and init exits.
fn or_exit<T>(result: Result<T, StepFailure<'_>>, channel: Sender) -> T {
    result.unwrap_or_else(|failure| fail(channel, failure))
}

fn fail(channel: Sender, failure: StepFailure<'_>) -> ! {
    channel.step_failed(failure);
    exit(SETUP_FAILED)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit skips the supervisor's atexit handlers and buffers.
    unsafe { libc::_exit(code) }
}

/// True when the supervisor died between fork and PR_SET_PDEATHSIG (its end of the channel
/// is then closed).
fn supervisor_gone(channel: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: channel,
        events: 0,
        revents: 0,
    };
    // SAFETY: polls one pollfd on the stack without waiting.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Init keeps only the channel: the supervisor's sockets and the Landlock ruleset stay out
/// of a process that lives as long as the sandbox.
fn close_all_but(keep: RawFd) {
    // SAFETY: close_range on ranges around `keep`; nothing else in init uses those fds.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// Reaps every exited child; reports and exits once the agent itself is gone.
fn reap(agent: Pid, channel: Sender) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if pid == agent.as_raw() {
            channel.exited(status);
            exit(0);
        }
    }
}

/// Passes a signal to the agent's process group, or to the agent alone if it left the group.
fn forward(agent: Pid, signal: Signal) {
    if kill(Pid::from_raw(-agent.as_raw()), signal) == Err(Errno::ESRCH) {
        let _ = kill(agent, signal);
    }
}
