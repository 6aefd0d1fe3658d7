//! The escape suite: each test is one attack made by `escape-probe`, first unconfined (it must
//! work, or at least reach the kernel's own checks), then as the confined agent of
//! `openshell-sandbox` (it must fail with the expected errno, refused by the expected layer,
//! and leave no trace).
//!
//! Filesystem attacks run in a fixture where plain file permissions would allow them: the
//! files and directories belong to the agent's uid (or are world-writable), so only the sandbox
//! can be what refuses: its filesystem view, where unlisted paths do not exist and read-only
//! ones are read-only mounts, with Landlock behind it. Their errnos are the view's (ENOENT,
//! EROFS, EXDEV) on every kernel, Landlock or not, which is what lets the same suite run on
//! Linux 6.1 with and without Landlock (tests/kernels/). Seccomp refusals are identified by the
//! supervisor's JSON denial log line; every other refusal must come without one.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command};
use std::time::SystemTime;

use openshell_tests::run::{self, Output, Pty, Setup, Stdin};
use openshell_tests::scratch::{RUN_AS_AGENT, Scratch, give_to_agent};
use openshell_tests::{bin, require_kernel};

/// Who runs the unconfined baseline.
#[derive(Debug, Clone, Copy)]
enum By {
    /// Root, as the supervisor itself runs.
    Root,
    /// The agent's uid and gid, when the point is what an unprivileged process can do.
    Agent,
    /// The agent's uid where `dev.tty.legacy_tiocsti` lets unprivileged processes inject
    /// input into their terminal, else root (CAP_SYS_ADMIN always may).
    AgentIfLegacyTiocsti,
}

/// Who is expected to refuse the confined attempt.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// The seccomp filter, logged by the supervisor with this `what`.
    Seccomp(&'static str),
    /// The sandbox's network namespace (no route), logged by the supervisor with this `what`.
    Network(&'static str),
    /// The seccomp filter itself, without a log line (clone3's ENOSYS).
    SeccompUnlogged,
    /// The filesystem view; why.
    View(&'static str),
    /// The kernel's own checks, once the sandbox has taken away what the attack needs; why.
    Kernel(&'static str),
    /// Nobody: the call is allowed on purpose.
    Allowed,
}

/// The trace a successful attack leaves, checked after each run: it must be there exactly
/// when the probe reported success.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// This fixture file's content or modification time changed.
    Changed(&'static str),
    /// This fixture path exists.
    Exists(&'static str),
    /// This fixture path is gone.
    Missing(&'static str),
    /// The baseline's target process was killed by the probe. (The confined targets are init
    /// and the supervisor: the supervisor returning the probe's own status proves both alive.)
    TargetKilled,
    /// Input was injected into the terminal.
    TtyInput,
    /// The fixture's listening unix socket at this path accepted a connection.
    Connected(&'static str),
}

/// Extra fixture content or process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    /// `ro/setuid-probe`: a copy of the probe, setuid root.
    SetuidCopy,
    /// `ro/filecap-probe`: a copy of the probe with the file capability cap_setuid+ep.
    FileCapCopy,
    /// `out/probe`: a copy of the probe outside the policy.
    OutsideCopy,
    /// Both runs have a pty as stdin and controlling terminal.
    Tty,
    /// Both runs inherit an fd of `out/secret` without close-on-exec.
    LeakedFd,
    /// Both runs start with CAP_NET_RAW in the inheritable set.
    InheritableNetRaw,
    /// The baseline runs in a private mount namespace, so its mounts stay its own.
    PrivateMounts,
    /// A unix socket listening at this fixture path, connectable by everyone (as a runtime's
    /// or a sidecar's socket often is).
    Listener(&'static str),
}

/// A kernel feature the attempt needs, and the baseline results that mean it is missing.
#[derive(Debug, Clone, Copy)]
struct Needs {
    feature: &'static str,
    missing: &'static [&'static str],
}

/// A kernel feature the sandbox needs to refuse the attempt at all, and how to tell it is
/// there. Where it is missing the attack works confined too, which the test reports as the
/// kernel lacking the means rather than as a pass.
#[derive(Debug, Clone, Copy)]
struct Requires {
    feature: &'static str,
    present: fn() -> bool,
}

/// One attack.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// The probe's subcommand and arguments; `{ro}`, `{rw}` and `{out}` are the fixture's
    /// read-only, read-write and unlisted directories, `{init}` is init (pid 1 of the
    /// sandbox) and `{supervisor}` the supervisor's pid, both a root `sleep` in the baseline.
    args: &'static [&'static str],
    by: By,
    /// Acceptable baseline results.
    baseline: &'static [&'static str],
    /// The confined result.
    confined: &'static str,
    layer: Layer,
    effect: Option<Effect>,
    prep: &'static [Prep],
    needs: Option<Needs>,
    requires: Option<Requires>,
}

fn probe(args: &'static [&'static str]) -> Attempt {
    Attempt {
        args,
        by: By::Root,
        baseline: &["ok"],
        confined: "ok",
        layer: Layer::Allowed,
        effect: None,
        prep: &[],
        needs: None,
        requires: None,
    }
}

impl Attempt {
    fn by(self, by: By) -> Attempt {
        Attempt { by, ..self }
    }

    /// For calls whose success is impossible or harmful: the unconfined results that show the
    /// call reached the kernel's own checks, past where the sandbox refuses it.
    fn baseline(self, baseline: &'static [&'static str]) -> Attempt {
        Attempt { baseline, ..self }
    }

    fn refused(self, confined: &'static str, layer: Layer) -> Attempt {
        Attempt {
            confined,
            layer,
            ..self
        }
    }

    fn effect(self, effect: Effect) -> Attempt {
        Attempt {
            effect: Some(effect),
            ..self
        }
    }

    fn prep(self, prep: &'static [Prep]) -> Attempt {
        Attempt { prep, ..self }
    }

    fn needs(self, feature: &'static str, missing: &'static [&'static str]) -> Attempt {
        Attempt {
            needs: Some(Needs { feature, missing }),
            ..self
        }
    }

    fn requires(self, feature: &'static str, present: fn() -> bool) -> Attempt {
        Attempt {
            requires: Some(Requires { feature, present }),
            ..self
        }
    }

    fn has(&self, prep: Prep) -> bool {
        self.prep.contains(&prep)
    }

    fn check(self, name: &str) {
        if let Some(requires) = self.requires
            && !(requires.present)()
        {
            // The sandbox cannot refuse it here: show what the attack does confined, then
            // skip (or fail, where the kernel is expected to have the feature).
            let (line, _) = self.run_confined(name);
            eprintln!(
                "{name}: confined, this kernel gives {line:?} (it lacks {})",
                requires.feature
            );
            require_kernel(false, requires.feature);
            return;
        }
        let Some(baseline) = self.unconfined(name) else {
            return;
        };
        assert!(
            self.baseline.contains(&baseline.as_str()),
            "{name}: unconfined, expected {:?}, got {baseline:?}",
            self.baseline
        );
        // A refusal the supervisor logs is told apart by its denial line; any other must differ
        // from the baseline in its result.
        let logged = matches!(self.layer, Layer::Seccomp(_) | Layer::Network(_));
        if self.confined != "ok" && !logged {
            assert_ne!(
                baseline, self.confined,
                "{name}: the unconfined result cannot be told apart from the confined one"
            );
        }
        self.confined(name);
    }

    /// The baseline's result line, or None when the kernel lacks the feature (skipped).
    fn unconfined(&self, name: &str) -> Option<String> {
        let fixture = Fixture::new(self);
        let target = self
            .args
            .iter()
            .any(|a| a.contains("{init}") || a.contains("{supervisor}"))
            .then(Target::start);
        let pid = target.as_ref().map_or(0, |t| t.0.id()).to_string();
        let mut command = Command::new(bin("escape-probe"));
        command.args(fixture.args(self.args, &pid, &pid));
        let mut setup = fixture.setup(self);
        setup.private_mounts = self.has(Prep::PrivateMounts);
        setup.as_agent = match self.by {
            By::Root => false,
            By::Agent => true,
            By::AgentIfLegacyTiocsti => std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti")
                .is_ok_and(|v| v.trim() == "1"),
        };
        setup.apply(&mut command);
        let out = run::run(&mut command, fixture.stdin());
        let line = result_line(name, "unconfined", &out);
        let killed = target.is_some_and(Target::killed_by_probe);
        if let Some(needs) = self.needs
            && needs.missing.contains(&line.as_str())
        {
            require_kernel(false, needs.feature);
            return None;
        }
        self.check_effect(name, &fixture, &line, killed);
        Some(line)
    }

    fn confined(&self, name: &str) {
        let (line, out) = self.run_confined(name);
        assert_eq!(line, self.confined, "{name}: confined\n{out:#?}");
        self.check_denials(name, &out);
    }

    /// Runs the attempt as the confined agent; returns its result line and the run, once the
    /// trace of the attack was checked against the result.
    fn run_confined(&self, name: &str) -> (String, Output) {
        let fixture = Fixture::new(self);
        let probe = bin("escape-probe");
        let policy = fixture.scratch.policy(
            &[&fixture.scratch.join("ro")],
            &[&fixture.scratch.join("rw")],
            RUN_AS_AGENT,
        );
        let launcher = [
            probe.as_os_str(),
            OsStr::new("exec-with-pid"),
            OsStr::new("--"),
        ];
        let mut command = run::sandbox_via(&launcher, &policy, &fixture.scratch.join("rw"));
        command
            .arg("--")
            .arg(&probe)
            .args(fixture.args(self.args, "1", "{pid}"));
        fixture.setup(self).apply(&mut command);
        let out = run::run(&mut command, fixture.stdin());
        let line = result_line(name, "confined", &out);
        self.check_effect(name, &fixture, &line, false);
        (line, out)
    }

    /// A refusal by seccomp, or by the network namespace, comes with exactly one denial line
    /// naming the call and the probe; any other refusal with none.
    fn check_denials(&self, name: &str, out: &Output) {
        let denials = out.denials();
        let (logged_by, expected) = match self.layer {
            Layer::Seccomp(what) => (Some("seccomp"), what),
            Layer::Network(what) => (Some("network"), what),
            Layer::SeccompUnlogged => (None, "the seccomp filter's own answer"),
            Layer::View(why) => (None, why),
            Layer::Kernel(why) => (None, why),
            Layer::Allowed => (None, "no refusal at all"),
        };
        let Some(layer) = logged_by else {
            assert!(
                denials.is_empty(),
                "{name}: expected {expected}, but the supervisor logged {denials:?}"
            );
            return;
        };
        assert_eq!(denials.len(), 1, "{name}: one denial line\n{out:#?}");
        let denial = &denials[0];
        let probe = bin("escape-probe");
        assert_eq!(denial["layer"], layer, "{name}: {denial}");
        assert_eq!(denial["what"], expected, "{name}: {denial}");
        assert_eq!(denial["exe"], probe.to_str().expect("UTF-8 path"), "{name}");
        assert!(
            denial["pid"].as_u64().is_some_and(|p| p > 1),
            "{name}: {denial}"
        );
        assert!(
            denial["why"].as_str().is_some_and(|w| !w.is_empty()),
            "{name}"
        );
    }

    /// The trace of the attack must be there exactly when the probe reported success.
    fn check_effect(&self, name: &str, fixture: &Fixture, line: &str, target_killed: bool) {
        if let Some(effect) = self.effect {
            assert_eq!(
                fixture.shows(effect, target_killed),
                line == "ok",
                "{name}: result {line:?}, but the trace of the attack ({effect:?}) says otherwise"
            );
        }
    }
}

/// The probe's one result line, checked against its exit status (through the supervisor, the
/// agent's own). Anything else, a crash, a usage error or a missing binary, fails the test.
fn result_line(name: &str, phase: &str, out: &Output) -> String {
    let line = out.stdout.strip_suffix('\n').unwrap_or_default();
    let expected_code = match line {
        "ok" => 0,
        _ if line.starts_with("err E") && !line.contains('\n') => 1,
        _ => panic!("{name}: {phase} run gave no probe result\n{out:#?}"),
    };
    assert_eq!(
        out.code(),
        expected_code,
        "{name}: {phase} exit status\n{out:#?}"
    );
    line.to_owned()
}

/// The baseline's stand-in for init and the supervisor: a root process outside any sandbox.
struct Target(Child);

impl Target {
    fn start() -> Target {
        let child = Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .expect("starting the target process");
        Target(child)
    }

    /// Stops the target; true when the probe had killed it. (Our own signal is TERM, so a KILL
    /// status can only be the probe's, even if it had not been reaped yet.)
    fn killed_by_probe(mut self) -> bool {
        self.terminate() == Some(libc::SIGKILL)
    }

    /// Sends TERM and returns the signal the target died of.
    fn terminate(&mut self) -> Option<i32> {
        let pid = libc::pid_t::try_from(self.0.id()).expect("pid");
        // SAFETY: a signal to our own child, which is not reaped before the wait below.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.0.wait().expect("waiting for the target");
        std::os::unix::process::ExitStatusExt::signal(&status)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

const CAP_SETUID: u32 = 7;
const CAP_NET_RAW: u32 = 13;

/// Files of the fixture: path, content, mode, whether the agent's uid owns it.
const FILES: &[(&str, &str, u32, bool)] = &[
    ("ro/file", "original\n", 0o644, true),
    ("rw/own", "mine\n", 0o644, true),
    ("out/secret", "secret\n", 0o600, true),
    ("out/shared", "shared\n", 0o666, false),
];

/// A fresh directory tree per run: `ro/` (read-only in the policy), `rw/` (read-write, the
/// workdir) and `out/` (not in the policy), all owned by the agent's uid.
struct Fixture {
    scratch: Scratch,
    originals: Vec<(&'static str, Vec<u8>, SystemTime)>,
    pty: Option<Pty>,
    leaked: Option<File>,
    listeners: Vec<(&'static str, UnixListener)>,
}

impl Fixture {
    fn new(attempt: &Attempt) -> Fixture {
        let scratch = Scratch::new("escape");
        for dir in ["ro", "rw", "out"] {
            std::fs::create_dir(scratch.join(dir)).expect("mkdir");
            give_to_agent(&scratch.join(dir));
        }
        let mut originals = Vec::new();
        for &(path, content, mode, agent_owned) in FILES {
            let full = scratch.join(path);
            std::fs::write(&full, content).expect("writing a fixture file");
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if agent_owned {
                give_to_agent(&full);
            }
            let mtime = full.metadata().and_then(|m| m.modified()).expect("mtime");
            originals.push((path, content.as_bytes().to_vec(), mtime));
        }
        std::os::unix::fs::symlink("../out/secret", scratch.join("rw/secret-link"))
            .expect("symlink");
        // cp, not std::fs::copy: a file this multi-threaded test process had open for writing
        // could be inherited by a child another test forks at that moment, and executing the
        // copy would then fail with ETXTBSY.
        let copy = |to: &str, mode: u32| {
            let path = scratch.join(to);
            let status = Command::new("/bin/cp")
                .arg(bin("escape-probe"))
                .arg(&path)
                .status()
                .expect("running cp");
            assert!(status.success(), "copying the probe: {status}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("chmod of the probe's copy");
            path
        };
        if attempt.has(Prep::SetuidCopy) {
            copy("ro/setuid-probe", 0o4755);
        }
        if attempt.has(Prep::FileCapCopy) {
            set_file_capability(&copy("ro/filecap-probe", 0o755), CAP_SETUID);
        }
        if attempt.has(Prep::OutsideCopy) {
            copy("out/probe", 0o755);
        }
        let pty = attempt.has(Prep::Tty).then(|| {
            let pty = Pty::open();
            pty.make_raw();
            pty
        });
        let leaked = attempt
            .has(Prep::LeakedFd)
            .then(|| File::open(scratch.join("out/secret")).expect("opening the leaked file"));
        let listeners = attempt
            .prep
            .iter()
            .filter_map(|p| match p {
                Prep::Listener(path) => {
                    let full = scratch.join(path);
                    let listener = UnixListener::bind(&full).expect("binding the unix socket");
                    listener
                        .set_nonblocking(true)
                        .expect("non-blocking listener");
                    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o777))
                        .expect("chmod of the socket");
                    Some((*path, listener))
                }
                _ => None,
            })
            .collect();
        Fixture {
            scratch,
            originals,
            pty,
            leaked,
            listeners,
        }
    }

    /// The probe's arguments with the placeholders filled in.
    fn args(&self, args: &[&str], target: &str, supervisor: &str) -> Vec<String> {
        let dir = |d: &str| self.scratch.join(d).display().to_string();
        args.iter()
            .map(|a| {
                a.replace("{scratch}", &self.scratch.path().display().to_string())
                    .replace("{ro}", &dir("ro"))
                    .replace("{rw}", &dir("rw"))
                    .replace("{out}", &dir("out"))
                    .replace("{init}", target)
                    .replace("{supervisor}", supervisor)
            })
            .collect()
    }

    /// The process state both runs start with.
    fn setup(&self, attempt: &Attempt) -> Setup {
        Setup {
            controlling_tty: self.pty.is_some(),
            leak: self.leaked.as_ref().map(AsRawFd::as_raw_fd),
            inheritable: attempt.has(Prep::InheritableNetRaw).then_some(CAP_NET_RAW),
            ..Setup::default()
        }
    }

    fn stdin(&self) -> Stdin<'_> {
        self.pty.as_ref().map_or(Stdin::Null, Stdin::Terminal)
    }

    /// Whether the trace of the attack is there.
    fn shows(&self, effect: Effect, target_killed: bool) -> bool {
        match effect {
            Effect::Changed(path) => {
                let (_, content, mtime) = self
                    .originals
                    .iter()
                    .find(|(p, _, _)| *p == path)
                    .expect("a fixture file");
                let full = self.scratch.join(path);
                let now = std::fs::read(&full).expect("reading a fixture file");
                let modified = full.metadata().and_then(|m| m.modified()).expect("mtime");
                now != *content || modified != *mtime
            }
            Effect::Exists(path) => self.scratch.join(path).symlink_metadata().is_ok(),
            Effect::Missing(path) => self.scratch.join(path).symlink_metadata().is_err(),
            Effect::TargetKilled => target_killed,
            Effect::TtyInput => self.pty.as_ref().expect("a pty").pending_input() > 0,
            Effect::Connected(path) => {
                let (_, listener) = self
                    .listeners
                    .iter()
                    .find(|(p, _)| *p == path)
                    .expect("a listener at that path");
                listener.accept().is_ok()
            }
        }
    }
}

/// Sets `security.capability` on `path` to grant `cap` in the permitted set, effective
/// (what `setcap cap_xxx+ep` writes).
fn set_file_capability(path: &std::path::Path, cap: u32) {
    // struct vfs_cap_data, revision 2: magic_etc, then permitted/inheritable for two words.
    let mut value = [0u32; 5];
    value[0] = 0x0200_0000 | 1; // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    value[1 + 2 * (cap / 32) as usize] = 1 << (cap % 32);
    let bytes: Vec<u8> = value.iter().flat_map(|w| w.to_le_bytes()).collect();
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: both strings are NUL-terminated and the value buffer outlives the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

macro_rules! attempts {
    ($($name:ident: $attempt:expr;)+) => {
        $(
            #[test]
            fn $name() {
                $attempt.check(stringify!($name));
            }
        )+
    };
}

use By::{Agent, AgentIfLegacyTiocsti};
use Effect::{Changed, Connected, Exists, Missing, TargetKilled, TtyInput};
use Layer::{Kernel, Network, Seccomp, SeccompUnlogged, View};

/// Unlisted paths do not exist in the agent's filesystem.
const ABSENT: Layer = View("not in the view: the policy does not list it");
/// Read-only paths are read-only mounts.
const READ_ONLY: Layer = View("a read-only mount of the view");
/// Each listed path is its own mount: nothing is renamed or linked across.
const OTHER_MOUNT: Layer = View("another mount of the view");
const HIDDEN: Layer = Kernel("the sandbox's PID namespace does not contain the supervisor");
const NOT_ROOT: Layer = Kernel("the agent has no uid 0 and no capabilities");
const NO_NEW_PRIVS: Layer = Kernel("no_new_privs: exec cannot grant privileges");
/// Executable memfds, refused by the kernel at the sandbox's request.
const MEMFD_NOEXEC: Layer = Kernel("vm.memfd_noexec=2 in the sandbox's PID namespace");
/// What refusing memfd execution needs: the sysctl, with Linux 6.6's meaning of 2 (on 6.3-6.5
/// it refused every plain memfd_create, so the sandbox can only set 1 there).
const MEMFD_NOEXEC_KERNEL: &str = "vm.memfd_noexec=2 (Linux 6.6)";

fn memfd_noexec_present() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() && version >= (6, 6)
}

/// READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE.
const MITIGATIONS_OFF: &str = "4456448";
/// CLONE_NEWUTS, for the 32-bit and x32 unshare calls.
const NEWUTS: &str = "67108864";

attempts! {
    // Files: the view, where ownership and modes would allow each attack.
    read_outside_policy:
        probe(&["read", "{out}/secret"]).by(Agent).refused("err ENOENT", ABSENT);
    read_through_symlink_in_read_write_dir:
        probe(&["read", "{rw}/secret-link"]).by(Agent).refused("err ENOENT", ABSENT);
    write_outside_policy:
        probe(&["write", "{out}/shared"]).by(Agent).refused("err ENOENT", ABSENT)
            .effect(Changed("out/shared"));
    create_outside_policy:
        probe(&["create", "{out}/new"]).by(Agent).refused("err ENOENT", ABSENT)
            .effect(Exists("out/new"));
    write_read_only_file:
        probe(&["write", "{ro}/file"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Changed("ro/file"));
    truncate_read_only_file:
        probe(&["truncate", "{ro}/file"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Changed("ro/file"));
    create_in_read_only_dir:
        probe(&["create", "{ro}/new"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Exists("ro/new"));
    mkdir_in_read_only_dir:
        probe(&["mkdir", "{ro}/dir"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Exists("ro/dir"));
    unlink_in_read_only_dir:
        probe(&["unlink", "{ro}/file"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Missing("ro/file"));
    symlink_in_read_only_dir:
        probe(&["symlink", "/etc/passwd", "{ro}/link"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Exists("ro/link"));
    hardlink_read_only_file_into_read_write_dir:
        probe(&["link", "{ro}/file", "{rw}/file-link"]).by(Agent)
            .refused("err EXDEV", OTHER_MOUNT).effect(Exists("rw/file-link"));
    hardlink_unlisted_file_into_read_write_dir:
        probe(&["link", "{out}/secret", "{rw}/secret-hardlink"]).by(Agent)
            .refused("err ENOENT", ABSENT).effect(Exists("rw/secret-hardlink"));
    rename_read_only_file_into_read_write_dir:
        probe(&["rename", "{ro}/file", "{rw}/moved"]).by(Agent).refused("err EXDEV", OTHER_MOUNT)
            .effect(Exists("rw/moved"));
    rename_into_read_only_dir:
        probe(&["rename", "{rw}/own", "{ro}/planted"]).by(Agent).refused("err EXDEV", OTHER_MOUNT)
            .effect(Exists("ro/planted"));
    rename_out_of_the_policy:
        probe(&["rename", "{rw}/own", "{out}/exfiltrated"]).by(Agent)
            .refused("err ENOENT", ABSENT).effect(Missing("rw/own"));
    exec_outside_policy:
        probe(&["exec", "{out}/probe", "noop"]).by(Agent).refused("err ENOENT", ABSENT)
            .prep(&[Prep::OutsideCopy]);
    open_truncate_read_only_file:
        probe(&["open-trunc", "{ro}/file"]).by(Agent).refused("err EROFS", READ_ONLY)
            .effect(Changed("ro/file"));
    stat_outside_policy:
        probe(&["stat", "{out}/secret"]).by(Agent).refused("err ENOENT", ABSENT);
    listing_shows_no_unlisted_path:
        probe(&["list-has", "{scratch}", "out"]).by(Agent).refused("err ENOENT", ABSENT);
    // A runtime's or a sidecar's socket (docker.sock): Landlock below ABI 9 does not mediate
    // connect, the view has no such file.
    unix_connect_outside_policy:
        probe(&["unix-connect", "{out}/socket"]).by(Agent).prep(&[Prep::Listener("out/socket")])
            .effect(Connected("out/socket")).refused("err ENOENT", ABSENT);
    create_in_read_write_dir_still_works:
        probe(&["create", "{rw}/new"]).by(Agent).effect(Exists("rw/new"));

    // Other processes: init is PID 1 of the sandbox; the supervisor is outside it.
    ptrace_init:
        probe(&["ptrace-attach", "{init}"]).refused("err EPERM", Seccomp("ptrace"));
    ptrace_supervisor:
        probe(&["ptrace-attach", "{supervisor}"]).refused("err EPERM", Seccomp("ptrace"));
    process_vm_readv_init:
        probe(&["process-vm-readv", "{init}"])
            .refused("err EPERM", Seccomp("process_vm_readv"));
    process_vm_readv_supervisor:
        probe(&["process-vm-readv", "{supervisor}"])
            .refused("err EPERM", Seccomp("process_vm_readv"));
    proc_mem_init:
        probe(&["proc-mem", "{init}"])
            .refused("err EACCES", Kernel("init is root's and not dumpable"));
    proc_mem_supervisor:
        probe(&["proc-mem", "{supervisor}"]).refused("err ENOENT", HIDDEN);
    kill_init:
        probe(&["kill", "{init}", "9"]).effect(TargetKilled)
            .refused("err EPERM", Kernel("init is root's, and outside the Landlock signal scope"));
    kill_supervisor:
        probe(&["kill", "{supervisor}", "9"]).effect(TargetKilled).refused("err ESRCH", HIDDEN);
    pidfd_getfd_init:
        probe(&["pidfd-getfd", "{init}", "0"]).refused("err EPERM", Seccomp("pidfd_getfd"));

    // Mounts and namespaces.
    mount_tmpfs:
        probe(&["mount-tmpfs", "{rw}"]).prep(&[Prep::PrivateMounts])
            .refused("err EPERM", Seccomp("mount"));
    umount_proc:
        probe(&["umount", "/proc"]).prep(&[Prep::PrivateMounts])
            .refused("err EPERM", Seccomp("umount2"));
    unshare_user:
        probe(&["unshare", "user"]).by(Agent).refused("err EPERM", Seccomp("unshare"));
    unshare_mount:
        probe(&["unshare", "mount"]).refused("err EPERM", Seccomp("unshare"));
    unshare_pid:
        probe(&["unshare", "pid"]).refused("err EPERM", Seccomp("unshare"));
    unshare_net:
        probe(&["unshare", "net"]).refused("err EPERM", Seccomp("unshare"));
    unshare_uts:
        probe(&["unshare", "uts"]).refused("err EPERM", Seccomp("unshare"));
    unshare_ipc:
        probe(&["unshare", "ipc"]).refused("err EPERM", Seccomp("unshare"));
    unshare_cgroup:
        probe(&["unshare", "cgroup"]).refused("err EPERM", Seccomp("unshare"));
    unshare_time:
        probe(&["unshare", "time"]).refused("err EPERM", Seccomp("unshare"))
            .needs("time namespaces (CONFIG_TIME_NS)", &["err EINVAL"]);
    clone_new_user_namespace:
        probe(&["clone-newuser"]).by(Agent).refused("err EPERM", Seccomp("clone"));
    setns:
        probe(&["setns", "/proc/self/ns/uts"]).refused("err EPERM", Seccomp("setns"));
    // The new root is no mount point: the kernel's own check (after its permission check,
    // which says EPERM), short of changing the host's root.
    pivot_root:
        probe(&["pivot-root", "{rw}", "{rw}"]).baseline(&["err EBUSY", "err EINVAL"])
            .refused("err EPERM", Seccomp("pivot_root"));
    chroot:
        probe(&["chroot", "{rw}"]).refused("err EPERM", Seccomp("chroot"));
    fsopen:
        probe(&["fsopen", "tmpfs"]).refused("err EPERM", Seccomp("fsopen"));
    open_tree:
        probe(&["open-tree", "{rw}"]).refused("err EPERM", Seccomp("open_tree"));
    // No mount fd to move: the kernel's own check, short of moving a host mount.
    move_mount:
        probe(&["move-mount", "{rw}"]).baseline(&["err EBADF"])
            .refused("err EPERM", Seccomp("move_mount"));

    // Sockets and the network.
    raw_ip_socket:
        probe(&["socket", "inet", "raw", "1"]).refused("err EPERM", Seccomp("socket"));
    packet_socket:
        probe(&["socket", "packet", "raw", "0"]).refused("err EAFNOSUPPORT", Seccomp("socket"));
    netlink_audit_socket:
        probe(&["socket", "netlink", "raw", "9"]).refused("err EAFNOSUPPORT", Seccomp("socket"));
    netlink_uevent_socket:
        probe(&["socket", "netlink", "dgram", "15"])
            .refused("err EAFNOSUPPORT", Seccomp("socket"));
    // A kernel without AF_ALG (CONFIG_CRYPTO_USER_API) or vsock answers EAFNOSUPPORT itself:
    // the call then reached the kernel's own check, and the supervisor's denial line is what
    // shows the filter refusing it in the sandbox.
    alg_socket:
        probe(&["socket", "alg", "seqpacket", "0"]).baseline(&["ok", "err EAFNOSUPPORT"])
            .refused("err EAFNOSUPPORT", Seccomp("socket"));
    vsock_socket:
        probe(&["socket", "vsock", "stream", "0"]).baseline(&["ok", "err EAFNOSUPPORT"])
            .refused("err EAFNOSUPPORT", Seccomp("socket"));
    route_netlink_socket_still_works:
        probe(&["socket", "netlink", "raw", "0"]);
    connect_around_the_sandbox_network:
        probe(&["udp-connect", "203.0.113.1", "443"])
            .refused("err ENETUNREACH", Network("connect to 203.0.113.1:443"));

    // Kernel attack surface.
    io_uring_setup:
        probe(&["io-uring-setup"]).refused("err EPERM", Seccomp("io_uring_setup"))
            .needs("io_uring (CONFIG_IO_URING, kernel.io_uring_disabled)",
                &["err ENOSYS", "err EPERM"]);
    bpf:
        probe(&["bpf-map-create"]).refused("err EPERM", Seccomp("bpf"));
    perf_event_open:
        probe(&["perf-event-open"]).refused("err EPERM", Seccomp("perf_event_open"));
    userfaultfd:
        probe(&["userfaultfd"]).refused("err EPERM", Seccomp("userfaultfd"));
    keyctl:
        probe(&["keyctl"]).refused("err EPERM", Seccomp("keyctl"));
    add_key:
        probe(&["add-key"]).refused("err EPERM", Seccomp("add_key"));
    // The key does not exist: the kernel searched for it.
    request_key:
        probe(&["request-key"]).baseline(&["err ENOKEY"])
            .refused("err EPERM", Seccomp("request_key"));
    // Loading modules and kernels is harmful even when it fails late: the baselines stop at
    // the kernel's own checks (ENOSYS where the kernel has no module or kexec support).
    init_module:
        probe(&["init-module"]).baseline(&["err ENOEXEC", "err ENOSYS"])
            .refused("err EPERM", Seccomp("init_module"));
    finit_module:
        probe(&["finit-module"]).baseline(&["err EBADF", "err ENOSYS"])
            .refused("err EPERM", Seccomp("finit_module"));
    delete_module:
        probe(&["delete-module"]).baseline(&["err ENOENT", "err ENOSYS"])
            .refused("err EPERM", Seccomp("delete_module"));
    kexec_load:
        probe(&["kexec-load"]).baseline(&["err EINVAL", "err ENOSYS"])
            .refused("err EPERM", Seccomp("kexec_load"));
    name_to_handle_at:
        probe(&["name-to-handle", "/etc/passwd"])
            .refused("err EPERM", Seccomp("name_to_handle_at"));
    // Where /usr is not ext4 (tmpfs in the kernel matrix's VMs), the forged handle names
    // nothing: the kernel's own check, past the permission check that matters.
    open_by_handle_at:
        probe(&["open-by-handle", "/usr"]).baseline(&["ok", "err ESTALE"])
            .refused("err EPERM", Seccomp("open_by_handle_at"));

    // Other system call ABIs. x32 is off on this kernel, so its baselines reach only the
    // kernel's own ENOSYS ("ok" where x32 is on); the sandbox answers EPERM.
    int80_getpid:
        probe(&["int80", "20", "0"]).refused("err EPERM", Seccomp("i386 (int 0x80) syscall 20"))
            .needs("IA32 emulation (int 0x80)", &["err ENOSYS"]);
    int80_unshare:
        probe(&["int80", "310", NEWUTS])
            .refused("err EPERM", Seccomp("i386 (int 0x80) syscall 310"))
            .needs("IA32 emulation (int 0x80)", &["err ENOSYS"]);
    x32_getpid:
        probe(&["x32", "39", "0"]).baseline(&["err ENOSYS", "ok"])
            .refused("err EPERM", Seccomp("x32 syscall 39"));
    x32_unshare:
        probe(&["x32", "272", NEWUTS]).baseline(&["err ENOSYS", "ok"])
            .refused("err EPERM", Seccomp("x32 syscall 272"));

    // Identity and capabilities.
    setuid_root:
        probe(&["setuid", "0"]).refused("err EPERM", NOT_ROOT);
    setgid_root:
        probe(&["setgid", "0"]).refused("err EPERM", NOT_ROOT);
    capset_raise_sys_admin:
        probe(&["capset-raise", "21"]) // CAP_SYS_ADMIN
           .refused("err EPERM", NOT_ROOT);
    ambient_raise_net_raw:
        probe(&["ambient-raise", "13"]) // CAP_NET_RAW
           .prep(&[Prep::InheritableNetRaw])
            .refused("err EPERM", NOT_ROOT);
    exec_setuid_root_copy:
        probe(&["exec", "{ro}/setuid-probe", "setuid", "0"]).by(Agent)
            .prep(&[Prep::SetuidCopy]).refused("err EPERM", NO_NEW_PRIVS);
    exec_file_capability_copy:
        probe(&["exec", "{ro}/filecap-probe", "setuid", "0"]).by(Agent)
            .prep(&[Prep::FileCapCopy]).refused("err EPERM", NO_NEW_PRIVS);

    // The terminal and inherited fds.
    tiocsti:
        probe(&["tiocsti"]).by(AgentIfLegacyTiocsti).prep(&[Prep::Tty]).effect(TtyInput)
            .refused("err EPERM", Seccomp("ioctl"));
    inherited_fd:
        probe(&["find-inherited-fd"]).by(Agent).prep(&[Prep::LeakedFd])
            .refused("err EBADF", Kernel("every fd above 2 is close-on-exec"));

    // Programs from memory, which no Landlock rule covers.
    memfd_exec_by_descriptor:
        probe(&["memfd-exec", "fd"]).by(Agent).refused("err EACCES", MEMFD_NOEXEC)
            .requires(MEMFD_NOEXEC_KERNEL, memfd_noexec_present);
    memfd_exec_by_proc_path:
        probe(&["memfd-exec", "path"]).by(Agent).refused("err EACCES", MEMFD_NOEXEC)
            .requires(MEMFD_NOEXEC_KERNEL, memfd_noexec_present);
    memfd_create_executable:
        probe(&["memfd-create-exec"]).by(Agent).refused("err EACCES", MEMFD_NOEXEC)
            .requires(MEMFD_NOEXEC_KERNEL, memfd_noexec_present);
    personality_mitigations_off:
        probe(&["personality", MITIGATIONS_OFF]).by(Agent)
            .refused("err EPERM", Seccomp("personality"));

    // Allowed on purpose.
    memfd_create_still_works:
        probe(&["memfd"]);
    memfd_mapped_executable_still_works:
        probe(&["memfd-jit"]).by(Agent);
    unix_connect_inside_policy_still_works:
        probe(&["unix-connect", "{rw}/socket"]).by(Agent).prep(&[Prep::Listener("rw/socket")])
            .effect(Connected("rw/socket"));
    personality_query_still_works:
        probe(&["personality", "4294967295"]).by(Agent);
    personality_linux_still_works:
        probe(&["personality", "0"]).by(Agent);
    clone3_answers_enosys:
        probe(&["clone3"]).refused("err ENOSYS", SeccompUnlogged);
    threads_still_start:
        probe(&["thread"]);
}
