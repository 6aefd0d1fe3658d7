//! The agent's side of the fork: every layer in order, each one read back, then `execve`.
//!
//! ```text
//! (init has made the view the root: view/)
//! the workdir entered (read back: the directory the supervisor vetted, nameable from the root)
//! → signals reset, own process group (and the terminal, if we had it)
//! → every inherited fd above 2 close-on-exec
//! → /proc Landlock rules (needs the sandbox's procfs)
//! → bounding + ambient sets emptied, securebits locked           (needs CAP_SETPCAP)
//! → setgroups / setresgid / setresuid                            (clears the other sets)
//! → effective, permitted, inheritable emptied; all five sets read back; setuid(0) must fail
//! → RLIMIT_CORE 0, not dumpable
//! → no_new_privs → Landlock enforced and proven
//! → seccomp last (its listener handed to the supervisor)
//! → wait until init has verified the view                        → execve
//! ```
//!
//! Everything here was prepared before fork; this code only makes system calls. A failure is
//! reported on the control channel and the child exits 125 without running the agent.

use std::ffi::{CString, c_char};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};

use crate::account::{Account, AccountFailure};
use crate::caps::{self, CapsFailure};
use crate::channel::Sender;
use crate::proxy::transparent::fence;
use crate::{landlock, seccomp, view};

/// Exit status when set-up failed (the supervisor reports the reason it was sent).
pub const SETUP_FAILED: i32 = 125;
/// Exit status when the command exists but cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// Exit status when the command does not exist.
pub const NOT_FOUND: i32 = 127;

/// A NULL-terminated array of C strings for `execve`.
#[derive(Debug)]
pub struct CStringArray {
    /// Owns the buffers `ptrs` points into; never read, only kept alive.
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStringArray {
    /// Builds the array; the pointers stay valid because each CString owns its heap buffer.
    pub fn new(strings: Vec<CString>) -> CStringArray {
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        CStringArray {
            _strings: strings,
            ptrs,
        }
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// Everything the agent's side of the fork needs, prepared before fork.
#[derive(Debug)]
pub struct Plan {
    /// `argv` of the agent.
    pub argv: CStringArray,
    /// Its environment.
    pub envp: CStringArray,
    /// Paths to try for `argv[0]`, in `PATH` order.
    pub candidates: Vec<CString>,
    /// For each candidate, whether it exists outside the sandbox: missing in the view, it lies
    /// outside the policy, which is a refusal rather than "not found".
    pub exists_outside: Vec<bool>,
    /// Its working directory in the view.
    pub workdir: view::Workdir,
    /// The read end of init's start pipe (set by init before it forks the agent's process).
    pub go: Option<OwnedFd>,
    /// Who it runs as.
    pub account: Account,
    /// Capability dropping.
    pub caps: caps::Prepared,
    /// The Landlock ruleset.
    pub landlock: landlock::Prepared,
    /// The transparent path's TCP fence (a second Landlock layer), when the path is on.
    pub tcp_fence: Option<fence::Fence>,
    /// The seccomp filter.
    pub seccomp: seccomp::Prepared,
    /// Whether the supervisor owned the terminal, which the agent then takes over.
    pub take_terminal: bool,
}

/// A failed step, as reported to the supervisor.
enum Failure {
    Step(&'static str, Errno),
    Unverified(&'static str, i64),
    CapabilitySurvived(&'static str, u32),
}

fn step(what: &'static str) -> impl FnOnce(Errno) -> Failure {
    move |e| Failure::Step(what, e)
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), Failure> {
    Errno::result(rc).map(drop).map_err(step(what))
}

/// Runs the agent's side of the fork. Never returns.
pub fn run(plan: &mut Plan, channel: Sender) -> ! {
    if let Err(failure) = confine(plan, channel) {
        match failure {
            Failure::Step(what, errno) => channel.failed(what, errno),
            Failure::Unverified(what, value) => channel.unverified(what, value),
            Failure::CapabilitySurvived(set, cap) => channel.capability_survived(set, cap),
        }
        exit(SETUP_FAILED);
    }
    channel.confined();
    exec(plan, channel)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio buffers that belong to the supervisor.
    unsafe { libc::_exit(code) }
}

fn confine(plan: &mut Plan, channel: Sender) -> Result<(), Failure> {
    plan.workdir
        .enter()
        .map_err(|f| Failure::Step(f.what, f.errno))?;
    verify_cwd_reachable()?;
    reset_signals()?;
    process_group(plan.take_terminal)?;
    close_inherited_on_exec()?;
    plan.landlock.apply().map_err(landlock_failure)?;
    plan.caps.drop_bounding_and_lock().map_err(caps_failure)?;
    plan.account.apply().map_err(account_failure)?;
    plan.caps.clear_and_verify().map_err(caps_failure)?;
    plan.account.verify().map_err(account_failure)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(step("setrlimit(RLIMIT_CORE)"))?;
    prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
    // no_new_privs before Landlock (which requires it without CAP_SYS_ADMIN) and seccomp:
    // from here on no execve can gain privileges, setuid bits and file capabilities included.
    prctl::set_no_new_privs().map_err(step("PR_SET_NO_NEW_PRIVS"))?;
    if prctl::get_no_new_privs() != Ok(true) {
        return Err(Failure::Unverified(
            "no_new_privs did not read back as set",
            0,
        ));
    }
    plan.landlock.restrict().map_err(landlock_failure)?;
    plan.landlock.verify().map_err(landlock_failure)?;
    if let Some(fence) = plan.tcp_fence.take() {
        fence.apply().map_err(landlock_failure)?;
    }
    // Seccomp is the very last layer: loaded earlier it would police the calls above.
    let listener = plan
        .seccomp
        .apply()
        .map_err(step("loading the seccomp filter"))?;
    if let Some(listener) = listener {
        channel
            .seccomp_listener(std::os::fd::AsRawFd::as_raw_fd(&listener))
            .map_err(step("handing the seccomp listener to the supervisor"))?;
    }
    seccomp::verify()
        .map_err(|_| Failure::Unverified("seccomp mode did not read back as filter", 0))?;
    wait_for_init(plan)
}

/// Blocks until init has detached the old root and verified the view. End of file means init
/// died (it reported why), and nothing may run.
fn wait_for_init(plan: &Plan) -> Result<(), Failure> {
    let Some(go) = &plan.go else {
        return Ok(());
    };
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(Failure::Step("waiting for init", Errno::EPIPE)),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(Failure::Step("waiting for init", errno)),
        }
    }
}

/// The working directory init entered (the workdir, read back in the view) must be nameable
/// from the root: getcwd fails, and `pwd`, git and most runtimes with it, in a directory
/// outside the process's mount tree.
fn verify_cwd_reachable() -> Result<(), Failure> {
    let mut buf = [0u8; libc::PATH_MAX as usize];
    // SAFETY: getcwd writes at most `buf.len()` bytes into the buffer on the stack. The raw
    // call, because libc wrappers differ in how they report an unreachable directory.
    let rc = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    match Errno::result(rc) {
        // Longer than PATH_MAX: reachable or not, the agent's own getcwd has the same limit.
        Err(Errno::ERANGE) => Ok(()),
        Err(errno) => Err(Failure::Step("getcwd in the workdir", errno)),
        // The kernel prefixes "(unreachable)" to a directory outside the root's mount tree.
        Ok(_) if buf[0] != b'/' => Err(Failure::Unverified(
            "the workdir is outside the sandbox's mount namespace",
            0,
        )),
        Ok(_) => Ok(()),
    }
}

fn landlock_failure(f: landlock::Failure) -> Failure {
    match f {
        landlock::Failure::Step(what, errno) => Failure::Step(what, errno),
        landlock::Failure::NotEnforced => {
            Failure::Unverified("the kernel did not enforce the whole Landlock ruleset", 0)
        }
        landlock::Failure::CanaryReadable => {
            Failure::Unverified("a path outside every Landlock rule is still readable", 0)
        }
    }
}

fn caps_failure(f: CapsFailure) -> Failure {
    match f {
        CapsFailure::Syscall(what, errno) => Failure::Step(what, errno),
        CapsFailure::Survived(set, cap) => Failure::CapabilitySurvived(set, cap),
        CapsFailure::Securebits(bits) => {
            Failure::Unverified("securebits did not read back as locked", i64::from(bits))
        }
    }
}

fn account_failure(f: AccountFailure) -> Failure {
    match f {
        AccountFailure::Syscall(what, errno) => Failure::Step(what, errno),
        AccountFailure::Mismatch(what) => Failure::Unverified(what, 0),
    }
}

/// Init blocks the signals it forwards; the agent starts with the defaults, as after a login.
fn reset_signals() -> Result<(), Failure> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: restoring the default disposition; failures (invalid numbers) are harmless.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty set on the stack.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialising and installing the set on the stack.
    check(unsafe { libc::sigemptyset(&mut empty) }, "sigemptyset")?;
    // SAFETY: as above.
    check(
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) },
        "sigprocmask",
    )
}

/// The agent leads its own process group, so signals the supervisor forwards reach the agent
/// and its children together. If the supervisor ran in the terminal's foreground, the agent
/// takes the foreground over (for an interactive shell, and so Ctrl-C reaches it directly).
fn process_group(take_terminal: bool) -> Result<(), Failure> {
    // SAFETY: scalar arguments.
    check(unsafe { libc::setpgid(0, 0) }, "setpgid")?;
    if take_terminal {
        // A background group changing the foreground gets SIGTTOU unless it is blocked.
        // SAFETY: sets on the stack; tcsetpgrp on fd 0, which is a terminal (checked before).
        unsafe {
            let mut ttou: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut ttou);
            libc::sigaddset(&mut ttou, libc::SIGTTOU);
            libc::sigprocmask(libc::SIG_BLOCK, &ttou, &mut old);
            let rc = libc::tcsetpgrp(0, libc::getpid());
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            check(rc, "tcsetpgrp")?;
        }
    }
    Ok(())
}

/// Only 0, 1 and 2 survive `execve`: every other inherited fd (the supervisor's sockets, the
/// Landlock ruleset, the control channel) is closed by the kernel at exec.
fn close_inherited_on_exec() -> Result<(), Failure> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: mark each possible fd.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct on the stack.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    check(rc, "getrlimit")?;
    for fd in 3..limit.rlim_cur.min(1 << 20) as i32 {
        // SAFETY: F_SETFD on a possibly closed fd fails with EBADF, which is fine.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Tries each candidate like `execvp`: a missing file moves on, a permission error is
/// remembered (and wins over "not found"), anything else stops.
fn exec(plan: &Plan, channel: Sender) -> ! {
    let mut reported = (Errno::ENOENT, 0);
    for (index, candidate) in plan.candidates.iter().enumerate() {
        // SAFETY: the path and both arrays are NULL-terminated and live until exec or return.
        unsafe { libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
        let errno = match Errno::last() {
            // There outside the sandbox but not in its view: outside the policy.
            Errno::ENOENT if plan.exists_outside.get(index) == Some(&true) => Errno::EACCES,
            other => other,
        };
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => {
                if reported.0 != Errno::EACCES {
                    reported = (errno, index);
                }
            }
            other => {
                reported = (other, index);
                break;
            }
        }
    }
    channel.exec_failed(reported.0, reported.1);
    exit(match reported.0 {
        Errno::ENOENT | Errno::ENOTDIR => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    })
}
