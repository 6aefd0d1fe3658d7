//! `openshell-sandbox check`: what would be enforced here, and what would fail, in plain words.

use std::fmt::Write as _;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use crate::landlock::{self, Support};
use crate::policy::{self, Compatibility, Policy};
use crate::preflight::{self, Kernel};
use crate::proxy::transparent::probe as transparent;
use crate::{account, seccomp};

/// Builds the report for the policy at `origin`; returns it and whether everything can be
/// enforced as written.
pub fn report(origin: policy::PolicyOrigin, workdir: &Path) -> (String, bool) {
    let mut out = String::new();
    let mut problems: Vec<String> = Vec::new();
    let _ = writeln!(out, "policy: {origin}");
    let policy = match policy::load(origin, workdir) {
        Ok(policy) => policy,
        Err(e) => {
            let _ = writeln!(out, "  invalid: {e}\nresult: the policy cannot be loaded");
            return (out, false);
        }
    };
    describe_policy(&mut out, &policy, workdir);
    let kernel = preflight::probe();
    let _ = writeln!(out, "this machine (kernel {}):", kernel.release);
    describe_landlock(&mut out, &mut problems, &policy, &kernel);
    describe_seccomp(&mut out, &kernel);
    transparent::describe(&mut out, &mut problems, &policy, &kernel.transparent);
    match probe_namespaces() {
        Ok(()) => {
            let _ = writeln!(
                out,
                "  namespaces: pid, mount, ipc, uts, cgroup and network can be created"
            );
        }
        Err(e) => problems.push(format!("namespaces cannot be created: {e}")),
    }
    if let Err(e) = kernel.require() {
        problems.push(e.to_string());
    } else {
        let _ = writeln!(
            out,
            "  capabilities: every one the supervisor needs is present"
        );
    }
    match account::resolve(&policy.run_as, Path::new("/")) {
        Ok(id) => {
            let name = id
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  agent identity: uid {}{name}, gid {} (from {})",
                id.uid, id.gid, id.source
            );
        }
        Err(e) => problems.push(e.to_string()),
    }
    if problems.is_empty() {
        let _ = writeln!(out, "result: the policy can be enforced as written here");
        (out, true)
    } else {
        let _ = writeln!(out, "result: would fail:");
        for p in &problems {
            let _ = writeln!(out, "  - {p}");
        }
        (out, false)
    }
}

fn describe_policy(out: &mut String, policy: &Policy, workdir: &Path) {
    let fs = &policy.filesystem;
    let _ = writeln!(out, "  valid; workdir {}", workdir.display());
    let list = |paths: &[std::path::PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(out, "  read-only:  {}", list(&fs.read_only));
    let _ = writeln!(out, "  read-write: {}", list(&fs.read_write));
    let _ = writeln!(
        out,
        "  landlock: {}",
        match policy.compatibility {
            Compatibility::HardRequirement => "hard_requirement (refuse to start without it)",
            Compatibility::BestEffort => "best_effort (run degraded, loudly, without it)",
        }
    );
    if policy.network.is_empty() {
        let _ = writeln!(
            out,
            "  network: none (no rules: every connection is refused)"
        );
    }
    for rule in &policy.network {
        let endpoints: Vec<String> = rule
            .endpoints
            .iter()
            .map(|e| {
                let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
                format!("{}:{}", e.host, ports.join(","))
            })
            .collect();
        let binaries: Vec<String> = rule.binaries.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  network rule {:?}: {} for {}",
            rule.name,
            endpoints.join(" "),
            if binaries.is_empty() {
                "no binary".to_owned()
            } else {
                binaries.join(" ")
            }
        );
    }
    for note in &policy.notes {
        let _ = writeln!(out, "  note: {note}");
    }
}

fn describe_landlock(
    out: &mut String,
    problems: &mut Vec<String>,
    policy: &Policy,
    kernel: &Kernel,
) {
    match landlock::prepare(policy, &kernel.landlock) {
        Err(e) => problems.push(e.to_string()),
        Ok(prepared) if !prepared.enforces() => {
            let _ = writeln!(
                out,
                "  landlock: NOT AVAILABLE; the agent would run without filesystem confinement"
            );
        }
        Ok(prepared) => {
            let missing = landlock::missing_features(prepared.abi);
            let _ = writeln!(
                out,
                "  landlock: ABI {}; read-only and read-write paths enforced{}",
                prepared.abi,
                if missing.is_empty() {
                    ", with truncate, refer, device ioctl, signal and abstract-socket scoping"
                        .to_owned()
                } else {
                    format!("; missing: {}", missing.join(", "))
                }
            );
            for (path, why) in &prepared.skipped {
                let _ = writeln!(out, "    skipped {} ({why})", path.display());
            }
        }
    }
    if let Support::Unavailable(why) = &kernel.landlock {
        let _ = writeln!(out, "    ({why})");
    }
}

fn describe_seccomp(out: &mut String, kernel: &Kernel) {
    let deny = if kernel.seccomp_notify {
        seccomp::Deny::Notify
    } else {
        seccomp::Deny::RuleErrno
    };
    let size = seccomp::prepare(deny).map(|p| p.len()).unwrap_or(0);
    let _ = writeln!(
        out,
        "  seccomp: {} rules, {size} BPF instructions; refusals {}",
        seccomp::rules::RULES.len(),
        if kernel.seccomp_notify {
            "logged by the supervisor (user notification)"
        } else {
            "not logged (no user notification on this kernel)"
        }
    );
    if kernel.runtime_seccomp {
        let _ = writeln!(
            out,
            "    the container runtime also filters the supervisor's own system calls"
        );
    }
}

/// Creates every namespace the sandbox uses in a throw-away child.
fn probe_namespaces() -> Result<(), String> {
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWNET;
    // SAFETY: `check` runs single-threaded; the child only calls unshare and _exit.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = match nix::sched::unshare(flags) {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: leaving the throw-away child without running any destructor.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, errno)) => Err(format!(
                "unshare: {} (needs CAP_SYS_ADMIN; the runtime's seccomp profile must allow it)",
                nix::errno::Errno::from_raw(errno).desc()
            )),
            other => Err(format!("probe ended with {other:?}")),
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}
