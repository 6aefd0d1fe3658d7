//! Running the supervisor (and unconfined baselines) with a deadline, a prepared process state,
//! and reading what they printed.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scratch::AGENT_ID;

/// How long any single run may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// The fd number a leaked file lands on in [`Setup::leak`].
pub const LEAKED_FD: RawFd = 42;

/// Variables that configure the supervisor; tests set them explicitly, never by inheritance.
const SUPERVISOR_ENV: &[&str] = &[
    "OPENSHELL_POLICY",
    "OPENSHELL_SANDBOX_UID",
    "OPENSHELL_SANDBOX_GID",
    "OPENSHELL_GRACE_PERIOD",
];

/// `openshell-sandbox --policy POLICY --workdir WORKDIR --log-format json` (append `--`,
/// then the agent), with none of the supervisor's variables inherited from the test.
pub fn sandbox(policy: &Path, workdir: &Path) -> Command {
    sandbox_via(&[], policy, workdir)
}

/// [`sandbox`], started through `launcher` (a program and its arguments, which then execs the
/// supervisor's command line that follows them).
pub fn sandbox_via(launcher: &[&OsStr], policy: &Path, workdir: &Path) -> Command {
    let supervisor = crate::bin("openshell-sandbox");
    let mut command = match launcher.split_first() {
        None => Command::new(supervisor),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(supervisor);
            command
        }
    };
    command
        .arg("--policy")
        .arg(policy)
        .arg("--workdir")
        .arg(workdir)
        .args(["--log-format", "json"]);
    for var in SUPERVISOR_ENV {
        command.env_remove(var);
    }
    command
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Output {
    /// The exit code; fails the test if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal instead of exiting: {self:#?}"))
    }

    /// Every stderr line as a JSON object; fails the test on any line that is not one.
    pub fn log(&self) -> Vec<Value> {
        self.stderr
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(value) if value.is_object() => value,
                _ => panic!("stderr line is not a JSON object: {line:?}\n{self:#?}"),
            })
            .collect()
    }

    /// The `event = "denied"` lines of the JSON log.
    pub fn denials(&self) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|line| line["event"] == "denied")
            .collect()
    }
}

/// A started process whose output is being collected.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a started process reads.
#[derive(Debug, Clone, Copy)]
pub enum Stdin<'a> {
    /// /dev/null.
    Null,
    /// These bytes, then end of file.
    Bytes(&'a [u8]),
    /// The slave side of this terminal.
    Terminal(&'a Pty),
}

/// Starts `command` with `stdin`, collecting stdout and stderr when they are piped.
pub fn start(command: &mut Command, stdin: Stdin<'_>) -> Running {
    command.stdin(match stdin {
        Stdin::Null => Stdio::null(),
        Stdin::Bytes(_) => Stdio::piped(),
        Stdin::Terminal(pty) => pty.slave_stdio(),
    });
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    if let (Some(mut pipe), Stdin::Bytes(bytes)) = (child.stdin.take(), stdin) {
        pipe.write_all(bytes).expect("writing stdin");
    }
    let stdout = child.stdout.take().map(|p| collect(Box::new(p)));
    let stderr = child.stderr.take().map(|p| collect(Box::new(p)));
    Running {
        child,
        stdout,
        stderr,
    }
}

/// What a reader collected. The pipe must reach its end soon after the process exits: a
/// process still holding it was left behind, which fails the test instead of hanging it.
fn finish(reader: JoinHandle<String>) -> String {
    let started = Instant::now();
    while !reader.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stdout or stderr still open 5 s after the process ended: something was left behind"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    reader.join().expect("output reader")
}

/// Reads a pipe to its end; bytes that are not UTF-8 show as U+FFFD.
fn collect(mut pipe: Box<dyn Read + Send>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Running {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the end, at most `DEADLINE`; past it, kills the process and fails the test.
    pub fn wait(mut self) -> Output {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let join = |handle: Option<JoinHandle<String>>| handle.map_or_else(String::new, finish);
        let status = status.unwrap_or_else(|| {
            let status = self.child.wait().expect("wait after kill");
            panic!(
                "still running after {DEADLINE:?}, killed ({status}); stdout {:?}, stderr {:?}",
                join(self.stdout.take()),
                join(self.stderr.take())
            )
        });
        Output {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    /// A test that fails half-way must not leave its process (a supervisor: its whole sandbox)
    /// running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` to the end (see [`start`] and [`Running::wait`]), stdout and stderr piped.
pub fn run(command: &mut Command, stdin: Stdin<'_>) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    start(command, stdin).wait()
}

/// Process state a command starts with, prepared between fork and exec with raw system calls
/// (async-signal-safe), in the order of the fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// A private mount namespace, so that a mount made by the command stays its own.
    pub private_mounts: bool,
    /// A new session whose controlling terminal is stdin (which must be a terminal).
    pub controlling_tty: bool,
    /// This fd, duplicated onto [`LEAKED_FD`] without close-on-exec, as a careless parent
    /// would leave it.
    pub leak: Option<RawFd>,
    /// This capability added to the inheritable set.
    pub inheritable: Option<u32>,
    /// Run as the agent's uid and gid, without supplementary groups.
    pub as_agent: bool,
}

impl Setup {
    /// Installs the setup on `command`.
    pub fn apply(self, command: &mut Command) {
        // SAFETY: the closure only makes system calls, which are async-signal-safe.
        unsafe { command.pre_exec(move || self.prepare()) };
    }

    fn prepare(self) -> std::io::Result<()> {
        let check = |rc: libc::c_long| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: raw system calls on constants, on fds the parent keeps open until the child
        // has started, and on structs on this stack frame.
        unsafe {
            if self.private_mounts {
                check(libc::unshare(libc::CLONE_NEWNS).into())?;
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let none = std::ptr::null();
                check(libc::mount(none, c"/".as_ptr(), none, flags, none.cast()).into())?;
            }
            if self.controlling_tty {
                check(libc::setsid().into())?;
                check(libc::ioctl(0, libc::TIOCSCTTY, 0).into())?;
            }
            if let Some(fd) = self.leak {
                check(libc::dup2(fd, LEAKED_FD).into())?;
            }
            if let Some(cap) = self.inheritable {
                check(crate::caps::raise(cap, &[crate::caps::Set::Inheritable]))?;
            }
            if self.as_agent {
                let id = libc::c_long::from(AGENT_ID);
                check(libc::syscall(
                    libc::SYS_setgroups,
                    0,
                    std::ptr::null::<u32>(),
                ))?;
                check(libc::syscall(libc::SYS_setresgid, id, id, id))?;
                check(libc::syscall(libc::SYS_setresuid, id, id, id))?;
            }
        }
        Ok(())
    }
}

/// A pseudo-terminal, both ends close-on-exec (a parallel test's child must not inherit them).
#[derive(Debug)]
pub struct Pty {
    /// The side a terminal emulator holds.
    pub master: OwnedFd,
    /// The side a shell holds.
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    pub fn open() -> Pty {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: opening a device with a constant path.
        let master = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) };
        assert!(
            master >= 0,
            "open /dev/ptmx: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the fd was just opened and is owned here.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER opens the slave with `flags`.
        let slave = unsafe {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock);
            libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags)
        };
        assert!(
            slave >= 0,
            "TIOCGPTPEER: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the fd was just opened and is owned here.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        Pty { master, slave }
    }

    /// Switches the terminal to raw mode: input is readable byte by byte, without echo.
    pub fn make_raw(&self) {
        // SAFETY: termios is plain data, filled by tcgetattr and read by tcsetattr.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut termios), 0);
            libc::cfmakeraw(&mut termios);
            assert_eq!(
                libc::tcsetattr(self.slave.as_raw_fd(), libc::TCSANOW, &termios),
                0
            );
        }
    }

    /// Bytes typed (or injected) into the terminal that no process has read yet.
    pub fn pending_input(&self) -> usize {
        let mut count: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        let rc = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::FIONREAD, &mut count) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        count as usize
    }

    /// A `Stdio` for the slave side.
    pub fn slave_stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup of the pty slave"))
    }
}
