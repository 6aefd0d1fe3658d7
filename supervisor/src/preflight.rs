//! What this kernel and this process allow, probed without side effects, before anything is
//! prepared. `openshell-sandbox check` prints the same facts.

use crate::proxy::transparent::probe::{self as transparent, Probe};
use crate::{caps, landlock, seccomp};

/// Capabilities the supervisor needs, with the reason shown when one is missing.
pub const REQUIRED: [(u32, &str); 7] = [
    (
        caps::SYS_ADMIN,
        "creating the sandbox's namespaces and mounting its /proc",
    ),
    (
        caps::NET_ADMIN,
        "bringing up loopback in the sandbox's network namespace",
    ),
    (caps::SETUID, "switching the agent to its own user"),
    (caps::SETGID, "switching the agent to its own group"),
    (
        caps::SETPCAP,
        "emptying the agent's bounding set and locking its securebits",
    ),
    (
        caps::SYS_PTRACE,
        "reading which executable made a connection or a refused system call",
    ),
    (
        caps::KILL,
        "forwarding signals to the agent, which runs as another user",
    ),
];

/// The probed facts.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// Landlock availability and ABI.
    pub landlock: landlock::Support,
    /// Whether refused system calls can be handed to the supervisor.
    pub seccomp_notify: bool,
    /// Required capabilities missing from our effective set.
    pub missing_caps: Vec<(u32, &'static str)>,
    /// Whether the runtime already runs the supervisor under a seccomp filter.
    pub runtime_seccomp: bool,
    /// What the transparent egress path lacks here (nothing: it is on).
    pub transparent: Probe,
}

/// Probes the kernel and our capabilities.
pub fn probe() -> Kernel {
    let effective = caps::effective().unwrap_or(0);
    let missing_caps = REQUIRED
        .into_iter()
        .filter(|(cap, _)| effective & (1 << cap) == 0)
        .collect();
    // SAFETY: PR_GET_SECCOMP takes no arguments (mode 2 = filter).
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    let landlock = landlock::probe();
    let seccomp_notify = seccomp::user_notification_available();
    Kernel {
        release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".to_owned()),
        transparent: transparent::probe(seccomp_notify, landlock.abi()),
        landlock,
        seccomp_notify,
        missing_caps,
        runtime_seccomp: mode == libc::SECCOMP_MODE_FILTER as i32,
    }
}

/// A requirement the pod does not meet.
#[derive(Debug, thiserror::Error)]
#[error(
    "missing capabilit{plural}: {list}; add {names} to the container's \
     securityContext.capabilities.add",
    plural = if missing.len() == 1 { "y" } else { "ies" },
    list = missing.iter().map(|(c, why)| format!("{} (needed for {why})", caps::name(*c))).collect::<Vec<_>>().join(", "),
    names = missing.iter().map(|(c, _)| caps::name(*c).trim_start_matches("CAP_").to_owned()).collect::<Vec<_>>().join(", "),
)]
pub struct MissingCapabilities {
    missing: Vec<(u32, &'static str)>,
}

impl Kernel {
    /// How the seccomp filter refuses here: handed to the supervisor (and logged) when the
    /// kernel has user notification, else with the rule's errno alone.
    pub fn seccomp_deny(&self) -> seccomp::Deny {
        if self.seccomp_notify {
            seccomp::Deny::Notify
        } else {
            seccomp::Deny::RuleErrno
        }
    }

    /// Fails when a required capability is missing.
    pub fn require(&self) -> Result<(), MissingCapabilities> {
        if self.missing_caps.is_empty() {
            Ok(())
        } else {
            Err(MissingCapabilities {
                missing: self.missing_caps.clone(),
            })
        }
    }
}
