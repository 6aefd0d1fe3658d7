//! `openshell-sandbox check`: what would be enforced here, and what would fail, in plain words.

use std::fmt::Write as _;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use crate::account::Account;
use crate::policy::{self, Compatibility, Policy};
use crate::preflight::{self, Kernel};
use crate::proxy::transparent::probe as transparent;
use crate::{account, credentials, filesystem, landlock, memfd, sandbox, seccomp, view};

/// Builds the report for the policy at `origin`; returns it and whether everything can be
/// enforced as written.
pub fn report(origin: policy::PolicyOrigin, workdir: &Path) -> (String, bool) {
    let mut out = String::new();
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let _ = writeln!(out, "policy: {origin}");
    let policy = match policy::load(origin, workdir) {
        Ok(policy) => policy,
        Err(e) => {
            let _ = writeln!(out, "  invalid: {e}\nresult: the policy cannot be loaded");
            return (out, false);
        }
    };
    describe_policy(&mut out, &policy, workdir);
    credentials::describe(&mut out, &mut problems, &policy);
    let kernel = preflight::probe();
    let _ = writeln!(out, "this machine (kernel {}):", kernel.release);
    let account = match account::resolve(&policy.run_as, Path::new("/")) {
        Ok(id) => Some(id),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    describe_filesystem(
        &mut out,
        &mut problems,
        &mut warnings,
        &policy,
        &kernel,
        workdir,
        account.as_ref(),
    );
    let _ = writeln!(out, "  {}", memfd::prepare(&kernel.release).describe());
    describe_seccomp(&mut out, &kernel);
    match transparent::Setting::from_env() {
        Ok(setting) => {
            transparent::describe(
                &mut out,
                &mut problems,
                &policy,
                &kernel.transparent,
                setting,
            );
        }
        Err(e) => problems.push(e),
    }
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
    if let Some(id) = &account {
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
    for warning in &warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    if problems.is_empty() {
        let _ = writeln!(
            out,
            "result: the policy can be enforced as written here{}",
            match warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warning{} above)", if n == 1 { "" } else { "s" }),
            }
        );
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
        "  compatibility: {}",
        match policy.compatibility {
            Compatibility::HardRequirement => {
                "hard_requirement (every filesystem rule enforced by the view or Landlock, or no \
                 start)"
            }
            Compatibility::BestEffort => {
                "best_effort (run degraded, loudly, where neither layer can enforce a rule)"
            }
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

/// Which layer enforces what: the view is prepared for real (without being attached), the
/// Landlock ruleset built, and the paths checked against the agent's permissions.
fn describe_filesystem(
    out: &mut String,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
    policy: &Policy,
    kernel: &Kernel,
    workdir: &Path,
    account: Option<&Account>,
) {
    let resolved = match filesystem::resolve(&policy.filesystem) {
        Ok(resolved) => resolved,
        Err(e) => return problems.push(e.to_string()),
    };
    let workdir = match sandbox::open_workdir(workdir) {
        Ok((_, opened)) => opened,
        Err(e) => return problems.push(e.to_string()),
    };
    let view = match view::prepare(&resolved, &workdir, &[]) {
        Ok((view, _)) => view,
        Err(e) => return problems.push(e.to_string()),
    };
    match filesystem::decide(
        policy.compatibility,
        &resolved,
        &view.summary,
        &kernel.landlock,
    ) {
        Ok(enforcement) => {
            for line in &enforcement.lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = landlock::prepare(&resolved, view.own_mounts(), &kernel.landlock) {
        problems.push(e.to_string());
    }
    for (path, why) in &resolved.skipped {
        let _ = writeln!(out, "    skipped {} ({why})", path.display());
    }
    if let Some(id) = account {
        warnings.extend(filesystem::unusable(
            &resolved,
            &view.summary.mounted,
            id.uid,
            id.gid,
        ));
    }
}

fn describe_seccomp(out: &mut String, kernel: &Kernel) {
    let size = seccomp::prepare(kernel.seccomp_deny())
        .map(|p| p.len())
        .unwrap_or(0);
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
