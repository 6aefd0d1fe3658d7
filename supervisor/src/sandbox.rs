//! Prepares every layer before fork and forks the sandbox's init.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{SFlag, fstat, fstatat};
use nix::unistd::{ForkResult, Pid};

use crate::account::{self, Account, AccountError};
use crate::channel::{self, Sender};
use crate::child::{self, CStringArray};
use crate::filesystem::{self, Enforcement, FilesystemError};
use crate::landlock::{self, LandlockError};
use crate::namespaces::{self, NamespaceError};
use crate::policy::Policy;
use crate::preflight::Kernel;
use crate::proxy::transparent::{self, fence, probe};
use crate::seccomp::{self, SeccompError};
use crate::view::{self, ViewError};
use crate::{caps, credentials, init, memfd, paths, proxy};

pub use crate::view::ProvidedFile;

/// Used when the environment has no `PATH`, as execvp does.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Variables with this prefix configure the supervisor and never reach the agent.
const SUPERVISOR_ENV_PREFIX: &str = "OPENSHELL_";

/// Why the sandbox could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The agent's account (uid, gid).
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The filesystem policy.
    #[error(transparent)]
    Filesystem(#[from] FilesystemError),
    /// The filesystem view.
    #[error(transparent)]
    View(#[from] ViewError),
    /// Landlock.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    /// Seccomp.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Namespaces.
    #[error(transparent)]
    Namespaces(#[from] NamespaceError),
    /// The working directory is unusable.
    #[error("--workdir {}: {reason}", path.display())]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An argument or variable contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// More threads than one at fork time would make the child's allocations unsafe.
    #[error("internal error: {0} threads running at fork time; refusing to fork")]
    Threads(usize),
    /// The control channel could not be created.
    #[error("control channel: {0}")]
    Channel(nix::errno::Errno),
    /// The proxy's sockets could not be created in the sandbox's network namespace.
    #[error("cannot start the egress proxy in the sandbox's network namespace: {0}")]
    Proxy(std::io::Error),
    /// Transparent egress is needed (the policy has `protocol: tcp` endpoints, or `direct`
    /// or `relay` was asked for) and cannot run.
    #[error("{}", transparent_needed(endpoints, *setting, why))]
    Transparent {
        /// The `protocol: tcp` endpoints, if any.
        endpoints: String,
        /// What was asked for.
        setting: probe::Setting,
        /// Why it cannot run.
        why: String,
    },
    /// The transparent path's setting is not one it knows.
    #[error("{0}")]
    Setting(String),
    /// The TCP fence could not be built.
    #[error("cannot build the transparent path's Landlock TCP fence: {0}")]
    Fence(#[from] ::landlock::RulesetError),
}

fn transparent_needed(endpoints: &str, setting: probe::Setting, why: &str) -> String {
    match endpoints.is_empty() {
        true => format!(
            "{}={}, and transparent egress cannot run: {why}",
            probe::SETTING_VAR,
            setting.name()
        ),
        false => format!(
            "the policy has protocol: tcp endpoints ({endpoints}), which need transparent \
             egress, and it cannot run: {why}"
        ),
    }
}

/// Everything needed to start the sandbox.
#[derive(Debug)]
pub struct Prepared {
    init: init::Plan,
    proxy: proxy::Bound,
    /// The agent's command.
    pub command: Command,
}

/// Prepares every layer for `command` (empty: the user's shell) under `policy`. `provided` are
/// the files the supervisor gives the agent, placed read-only under `/run/openshell` in its
/// view; `inspection` is the L7 engine and the variables that make the agent trust it, when
/// the policy has L7 endpoints; `credentials` give the agent placeholders and the proxy the
/// values.
pub fn prepare(
    policy: &Policy,
    kernel: &Kernel,
    workdir: &Path,
    command: &[OsString],
    provided: &[ProvidedFile],
    inspection: Option<&proxy::l7::Prepared>,
    credentials: Option<&credentials::Prepared>,
) -> Result<Prepared, SandboxError> {
    let transparent =
        transparent_plan(policy, kernel)?.map(|plan| plan.inspecting(inspection.is_some()));
    // Only a path that hands the agent sockets of the pod needs the fence around them.
    let tcp_fence = transparent
        .as_ref()
        .filter(|plan| plan.mode() == transparent::Mode::Direct)
        .map(|_| fence::prepare())
        .transpose()?;
    // The kernel takes a while to make a network namespace: its thread works while the other
    // layers are prepared here.
    let ports = if transparent.is_some() {
        namespaces::Ports::Unprivileged
    } else {
        namespaces::Ports::Privileged
    };
    let network = namespaces::start_network(ports, move || proxy::bind(transparent))?;
    let (workdir, workdir_opened) = open_workdir(workdir)?;
    let account = account::resolve(&policy.run_as, Path::new("/"))?;
    let resolved = filesystem::resolve(&policy.filesystem)?;
    if !resolved.skipped.is_empty() {
        tracing::warn!(
            layer = "view",
            "policy paths skipped, they grant nothing: {}",
            filesystem::listing(&resolved.skipped)
        );
    }
    let (view, view_workdir) = view::prepare(&resolved, &workdir_opened, provided)?;
    let enforcement = filesystem::decide(
        policy.compatibility,
        &resolved,
        &view.summary,
        &kernel.landlock,
    )?;
    log_enforcement(&enforcement);
    let landlock = landlock::prepare(&resolved, view.own_mounts(), &kernel.landlock)?;
    let memfd = memfd::prepare(&kernel.release);
    if memfd == memfd::Prepared::Refused {
        tracing::info!(layer = "memfd", "{}", memfd.describe());
    } else {
        tracing::warn!(layer = "memfd", "{}", memfd.describe());
    }
    if !kernel.seccomp_notify {
        tracing::warn!(
            layer = "seccomp",
            "this kernel cannot hand refused system calls to the supervisor; they are still \
             refused, but not logged"
        );
    }
    let seccomp = seccomp::prepare(kernel.seccomp_deny())?;
    let trust = inspection.map_or(&[][..], |i| &i.environment[..]);
    let mut env = environment(&account, &workdir, trust);
    if let Some(credentials) = credentials {
        credentials.agent.apply(&mut env);
    }
    let argv: Vec<OsString> = if command.is_empty() {
        vec![login_shell(&account)]
    } else {
        command.to_vec()
    };
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let candidates = candidates(&argv[0], &path_var, workdir_opened.fd.as_fd());
    let exists_outside = candidates
        .iter()
        .map(|c| fstatat(workdir_opened.fd.as_fd(), c.as_path(), AtFlags::empty()).is_ok())
        .collect();
    let (netns, bound) = network.finish()?;
    let mut proxy = bound.map_err(SandboxError::Proxy)?;
    if let Some(inspection) = inspection {
        proxy.inspect_with(inspection.engine.clone());
    }
    if let Some(credentials) = credentials {
        proxy
            .add_credentials(credentials)
            .map_err(SandboxError::Proxy)?;
    }
    let agent = child::Plan {
        argv: CStringArray::new(
            argv.iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
        ),
        envp: CStringArray::new(
            env.iter()
                .map(|(k, v)| {
                    let mut kv = k.clone();
                    kv.push("=");
                    kv.push(v);
                    cstring(&kv, "an environment variable")
                })
                .collect::<Result<_, _>>()?,
        ),
        candidates: candidates
            .iter()
            .map(|c| cstring(c.as_os_str(), "the command path"))
            .collect::<Result<_, _>>()?,
        exists_outside,
        workdir: view_workdir,
        go: None,
        account,
        caps: caps::prepare(),
        landlock,
        tcp_fence,
        seccomp,
        take_terminal: owns_terminal(),
    };
    Ok(Prepared {
        proxy,
        command: Command {
            argv: argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            candidates: candidates.iter().map(|c| c.display().to_string()).collect(),
        },
        init: init::Plan {
            namespaces: namespaces::Prepared::new(netns),
            view,
            memfd,
            agent,
        },
    })
}

/// The transparent path's plan, as [`probe::SETTING_VAR`] asks and the kernel allows; without
/// one the agent's direct connections fail as before (no route), which is refused outright for
/// a policy with `protocol: tcp` endpoints (reachable no other way) and when `direct` or
/// `relay` was asked for.
fn transparent_plan(
    policy: &Policy,
    kernel: &Kernel,
) -> Result<Option<transparent::Plan>, SandboxError> {
    let setting = probe::Setting::from_env().map_err(SandboxError::Setting)?;
    let off = match kernel.transparent.mode(setting) {
        Ok(mode) => {
            match (mode, &kernel.transparent.no_fence) {
                (transparent::Mode::Direct, _) => {}
                (transparent::Mode::Relay, Some(no_fence)) => tracing::warn!(
                    layer = "transparent",
                    "TRANSPARENT EGRESS RELAYED: this kernel lacks {no_fence}; the supervisor \
                     relays the agent's allowed direct connections instead of handing them over"
                ),
                (transparent::Mode::Relay, None) => tracing::info!(
                    layer = "transparent",
                    "transparent egress relayed, as {}=relay asks: the supervisor relays the \
                     agent's allowed direct connections instead of handing them over",
                    probe::SETTING_VAR
                ),
            }
            return Ok(Some(transparent::Plan::read(mode)));
        }
        Err(off) => off,
    };
    let direct_only = probe::direct_only(policy);
    if !direct_only.is_empty() || setting.is_required() {
        return Err(SandboxError::Transparent {
            endpoints: direct_only,
            setting,
            why: off.why(),
        });
    }
    tracing::warn!(
        layer = "transparent",
        "TRANSPARENT EGRESS OFF ({}): only clients that use the proxy (HTTP_PROXY/HTTPS_PROXY) \
         reach the network, and the sandbox has no DNS",
        off.why()
    );
    Ok(None)
}

/// Opens the workdir as root, refusing a symlink the agent could have planted (it may own the
/// parent, e.g. its home in a volume kept between sessions, and would otherwise be chdir'ed
/// into the link's target). The view then places the agent in this very directory, at its
/// physical path, and init checks it is the same one. (`check` opens it the same way.)
pub fn open_workdir(workdir: &Path) -> Result<(PathBuf, paths::Opened), SandboxError> {
    let fail = |reason: String| SandboxError::Workdir {
        path: workdir.to_owned(),
        reason,
    };
    let absolute = std::path::absolute(workdir).map_err(|e| fail(e.to_string()))?;
    let opened = paths::trace(&absolute).map_err(|e| fail(e.cause.to_string()))?;
    match fstat(&opened.fd) {
        Ok(stat) if paths::has_type(&stat, SFlag::S_IFDIR) => Ok((absolute, opened)),
        Ok(_) => Err(fail("not a directory".into())),
        Err(errno) => Err(fail(errno.to_string())),
    }
}

/// Says at start which layer enforces what of the filesystem policy; loudly when degraded.
fn log_enforcement(enforcement: &Enforcement) {
    for line in &enforcement.lines {
        if line.starts_with("DEGRADED") {
            tracing::error!(layer = "filesystem", "{line}");
        } else {
            tracing::info!(layer = "filesystem", "{line}");
        }
    }
}

fn cstring(s: &OsStr, what: &str) -> Result<CString, SandboxError> {
    CString::new(s.as_bytes()).map_err(|_| SandboxError::Nul(what.to_owned()))
}

/// The agent's environment: the supervisor's, without its own `OPENSHELL_*` settings, with
/// the account's HOME, USER and LOGNAME, the proxy variables (which replace any the pod set:
/// the proxy is the only way out), then `trust`, the variables that make the agent trust the
/// L7 engine.
fn environment(
    account: &Account,
    workdir: &Path,
    trust: &[(&str, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(SUPERVISOR_ENV_PREFIX.as_bytes()))
        .collect();
    let mut set = |key: &str, value: OsString| {
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value));
    };
    match (&account.home, std::env::var_os("HOME")) {
        (Some(home), _) => set("HOME", home.clone().into_os_string()),
        // The supervisor's own home (root's) is useless to the agent's user.
        (None, None) => set("HOME", workdir.as_os_str().to_owned()),
        (None, Some(h)) if h == "/root" => set("HOME", workdir.as_os_str().to_owned()),
        (None, Some(_)) => {}
    }
    if let Some(name) = &account.name {
        set("USER", name.into());
        set("LOGNAME", name.into());
    }
    if std::env::var_os("PATH").is_none() {
        set("PATH", DEFAULT_PATH.into());
    }
    for (key, value) in proxy::agent_environment() {
        set(key, value.into());
    }
    for (key, value) in trust {
        set(key, value.into());
    }
    env
}

/// The user's login shell from the image, or `/bin/sh`.
fn login_shell(account: &Account) -> OsString {
    account
        .shell
        .as_ref()
        .filter(|s| s.is_absolute() && s.is_file())
        .map_or_else(|| "/bin/sh".into(), |s| s.clone().into_os_string())
}

/// Where `execve` will look for `argv0`: itself if it names a path, else each `PATH` entry
/// that exists (as root sees it, before any privilege is dropped). A command that exists
/// nowhere is then "not found" (127), while one the sandbox cannot reach or run is refused by
/// `execve` itself (126, naming the path): a search through a directory the agent cannot
/// enter must not turn "not found" into "permission denied". Relative entries (an empty one
/// is ".") are looked up in `workdir`, where `execve` will resolve them.
fn candidates(argv0: &OsStr, path_var: &OsStr, workdir: BorrowedFd<'_>) -> Vec<PathBuf> {
    if argv0.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(argv0)];
    }
    path_search(argv0, path_var)
        .filter(|p| {
            // An absolute path ignores the directory descriptor.
            fstatat(workdir, p.as_path(), AtFlags::empty())
                .is_ok_and(|stat| !paths::has_type(&stat, SFlag::S_IFDIR))
        })
        .collect()
}

fn path_search<'a>(argv0: &'a OsStr, path_var: &'a OsStr) -> impl Iterator<Item = PathBuf> + 'a {
    path_var.as_bytes().split(|&b| b == b':').map(move |dir| {
        // An empty entry means the current directory, as in execvp.
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        PathBuf::from(OsString::from_vec(dir.to_vec())).join(argv0)
    })
}

/// True when stdin is a terminal whose foreground group is ours.
fn owns_terminal() -> bool {
    // SAFETY: isatty/tcgetpgrp/getpgrp take scalar arguments.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// The agent's command, for messages.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its command line.
    pub argv: Vec<String>,
    /// The paths `execve` tries, in order.
    pub candidates: Vec<String>,
}

/// The started sandbox, as the supervisor holds it.
#[derive(Debug)]
pub struct Running {
    /// Init's pid, in the supervisor's namespace.
    pub init: Pid,
    /// The supervisor's end of the control channel.
    pub channel: OwnedFd,
    /// The agent's command.
    pub command: Command,
    /// The proxy's sockets, to serve from the supervisor.
    pub proxy: proxy::Bound,
}

/// Forks init. The process must be single-threaded: the child allocates and takes locks, which
/// is only safe when no other thread could have held them at fork time.
pub fn spawn(prepared: Prepared) -> Result<Running, SandboxError> {
    let threads = crate::procfs::settled_thread_count();
    if threads != 1 {
        return Err(SandboxError::Threads(threads));
    }
    let (supervisor_end, sandbox_end) = channel::pair().map_err(SandboxError::Channel)?;
    match namespaces::fork_pid1()? {
        ForkResult::Child => {
            drop(supervisor_end);
            let channel = Sender(sandbox_end.as_raw_fd());
            let mut prepared = prepared;
            init::run(&mut prepared.init, channel)
        }
        ForkResult::Parent { child } => Ok(Running {
            init: child,
            channel: supervisor_end,
            command: prepared.command,
            proxy: prepared.proxy,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_dir() -> OwnedFd {
        crate::paths::open(Path::new("/")).expect("open /")
    }

    #[test]
    fn candidates_follow_path_like_execvp() {
        let all: Vec<PathBuf> =
            path_search(OsStr::new("git"), OsStr::new("/usr/local/bin::/usr/bin")).collect();
        assert_eq!(
            all,
            [
                PathBuf::from("/usr/local/bin/git"),
                PathBuf::from("./git"),
                PathBuf::from("/usr/bin/git")
            ]
        );
        let root = root_dir();
        let path = OsStr::new("/nonexistent:/usr/bin:/bin");
        assert_eq!(
            candidates(OsStr::new("env"), path, root.as_fd()),
            [PathBuf::from("/usr/bin/env"), PathBuf::from("/bin/env")]
        );
        assert!(candidates(OsStr::new("no-such-command-xyz"), path, root.as_fd()).is_empty());
        assert_eq!(
            candidates(OsStr::new("./run.sh"), OsStr::new("/bin"), root.as_fd()),
            [PathBuf::from("./run.sh")]
        );
    }

    #[test]
    fn relative_path_entries_are_looked_up_in_the_workdir() {
        let workdir = std::env::temp_dir().join(format!("openshell-cand-{}", std::process::id()));
        std::fs::create_dir_all(workdir.join("bin/tool-xyz")).expect("mkdir");
        std::fs::write(workdir.join("tool-xyz"), "").expect("write");
        std::fs::write(workdir.join("bin/other-xyz"), "").expect("write");
        let fd = crate::paths::open(&workdir).expect("open the workdir");
        // "." (the empty entry) and "bin" are the workdir's, not the test's current directory;
        // bin/tool-xyz is a directory, which execve would not run.
        let path = OsStr::new(":bin:/nonexistent");
        let found = candidates(OsStr::new("tool-xyz"), path, fd.as_fd());
        let other = candidates(OsStr::new("other-xyz"), path, fd.as_fd());
        let elsewhere = candidates(OsStr::new("tool-xyz"), path, root_dir().as_fd());
        let _ = std::fs::remove_dir_all(&workdir);
        assert_eq!(found, [PathBuf::from("./tool-xyz")]);
        assert_eq!(other, [PathBuf::from("bin/other-xyz")]);
        assert!(elsewhere.is_empty(), "{elsewhere:?}");
    }
}
