//! Whether this kernel has what the transparent path needs, probed without side effects.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::fence;
use super::socket;

/// The variable that chooses how the transparent path runs.
pub const SETTING_VAR: &str = "OPENSHELL_TRANSPARENT_EGRESS";

/// How the transparent path is asked to run ([`SETTING_VAR`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Setting {
    /// Direct where the kernel has the TCP fence, relayed where it has not (the default).
    #[default]
    Auto,
    /// Direct, or the sandbox does not start.
    Direct,
    /// Relayed, even where the kernel has the fence; or the sandbox does not start.
    Relay,
    /// No transparent path: only clients that use the proxy reach the network.
    Off,
}

impl Setting {
    /// The value that asks for it.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Auto => "auto",
            Setting::Direct => "direct",
            Setting::Relay => "relay",
            Setting::Off => "off",
        }
    }

    /// Whether the sandbox must not start without the mode asked for.
    pub fn is_required(self) -> bool {
        matches!(self, Setting::Direct | Setting::Relay)
    }

    /// The setting from the environment; an unknown value is an error naming the variable.
    pub fn from_env() -> Result<Setting, String> {
        match std::env::var(SETTING_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(Setting::Auto),
            Ok(value) => match value.as_str() {
                "" | "auto" => Ok(Setting::Auto),
                "direct" => Ok(Setting::Direct),
                "relay" => Ok(Setting::Relay),
                "off" => Ok(Setting::Off),
                _ => Err(format!(
                    "{SETTING_VAR}={value:?}: expected auto, direct, relay or off"
                )),
            },
            Err(e) => Err(format!("{SETTING_VAR}: {e}")),
        }
    }
}

/// How the transparent path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An allowed connection is dialled from the pod and handed to the agent: the agent then
    /// talks to the server itself. Needs the TCP fence.
    Direct,
    /// An allowed connection is dialled from the pod and relayed by the supervisor: the agent's
    /// socket stays in the sandbox's namespace, connected to the hand-off listener. For kernels
    /// without the TCP fence (Landlock ABI 4, Linux 6.7), where a handed-out socket of the
    /// pod could be reconnected elsewhere.
    Relay,
}

/// Why the transparent path does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Off {
    /// [`Setting::Off`].
    Asked,
    /// The kernel lacks these (for `Direct`, the fence among them).
    Missing(Vec<String>),
}

impl Off {
    /// In words, for a log line or a report.
    pub fn why(&self) -> String {
        match self {
            Off::Asked => format!("{SETTING_VAR}=off"),
            Off::Missing(missing) => format!("this kernel lacks {}", missing.join("; ")),
        }
    }
}

/// What the kernel lacks for the transparent path, in words (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// Missing features without which there is no transparent path, each with the kernel that
    /// brought it and why it is needed.
    pub missing: Vec<String>,
    /// Why there is no TCP fence, when there is none: the path can then only relay.
    pub no_fence: Option<String>,
    /// Why the supervisor cannot ask `sock_diag` about TCP sockets, when it cannot: the path
    /// can then not relay (a relayed connection must be proven to come from the socket the
    /// supervisor connected).
    pub no_diag: Option<String>,
    /// Whether `SECCOMP_IOCTL_NOTIF_ADDFD` takes the SEND flag (Linux 5.14); reported, not
    /// needed (SEND would make `connect()` return the fd number).
    pub addfd_send: bool,
}

/// Probes the kernel; `notify`: seccomp user notification works; `landlock_abi`: 0 when none.
pub fn probe(notify: bool, landlock_abi: i32) -> Probe {
    let mut missing = Vec::new();
    let mut addfd_send = false;
    if !notify {
        missing.push(
            "seccomp user notification (Linux 5.0): connect() cannot be intercepted".to_owned(),
        );
    } else {
        match std::thread::spawn(addfd).join() {
            Ok(Ok(send)) => addfd_send = send,
            _ => missing.push(
                "SECCOMP_IOCTL_NOTIF_ADDFD (Linux 5.9): a connection cannot be handed to the agent"
                    .to_owned(),
            ),
        }
    }
    // SAFETY: pidfd_getfd on an invalid pidfd only reports an error.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0u32) };
    if rc < 0 && Errno::last() == Errno::ENOSYS {
        missing.push("pidfd_getfd (Linux 5.6): the agent's socket cannot be read".to_owned());
    }
    if socket::current_netns().is_err() {
        missing.push(
            "SO_NETNS_COOKIE (Linux 5.14): handed-out connections cannot be told apart".to_owned(),
        );
    }
    let no_fence = (landlock_abi < fence::MIN_ABI).then(|| {
        format!(
            "Landlock ABI {} (Linux 6.7; this kernel has {landlock_abi}): TCP bind and connect \
             control, which keeps handed-out connections from being reconnected elsewhere",
            fence::MIN_ABI
        )
    });
    let no_diag = crate::proxy::caller::sock_diag::tcp_available()
        .err()
        .map(|e| {
            format!(
                "sock_diag for TCP sockets (inet_diag and tcp_diag; {e}), which tells which \
                 socket made a connection"
            )
        });
    Probe {
        missing,
        no_fence,
        no_diag,
        addfd_send,
    }
}

impl Probe {
    /// How the path runs under `setting` on this kernel, or why it does not.
    pub fn mode(&self, setting: Setting) -> Result<Mode, Off> {
        if setting == Setting::Off {
            return Err(Off::Asked);
        }
        if !self.missing.is_empty() {
            let mut missing = self.missing.clone();
            if setting == Setting::Direct {
                missing.extend(self.no_fence.clone());
            }
            return Err(Off::Missing(missing));
        }
        let relay = || match &self.no_diag {
            None => Ok(Mode::Relay),
            Some(no_diag) => {
                let no_fence = self.no_fence.iter().filter(|_| setting == Setting::Auto);
                Err(Off::Missing(no_fence.chain([no_diag]).cloned().collect()))
            }
        };
        match (setting, &self.no_fence) {
            (Setting::Relay, _) | (Setting::Auto, Some(_)) => relay(),
            (Setting::Direct, Some(no_fence)) => Err(Off::Missing(vec![no_fence.clone()])),
            _ => Ok(Mode::Direct),
        }
    }
}

/// On a throw-away thread: a listener from an allow-all filter, asked to add an fd to a
/// notification that does not exist (ENOENT: the ioctl and the flag are known).
fn addfd() -> Result<bool, Errno> {
    // No new privileges for this thread only, which ends right after.
    nix::sys::prctl::set_no_new_privs()?;
    let allow = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: allow.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the one-instruction program; the filter dies with the thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    // SAFETY: NEW_LISTENER returned a new fd nothing else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(Errno::result(rc)? as i32) };
    let ask = |flags: u64| {
        let addfd = libc::seccomp_notif_addfd {
            id: 0,
            flags: flags as u32,
            srcfd: 0,
            newfd: 0,
            newfd_flags: 0,
        };
        // SAFETY: ADDFD reads a correctly sized struct; no notification 0 exists.
        let rc = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                &addfd,
            )
        };
        (rc < 0).then(Errno::last)
    };
    match ask(libc::SECCOMP_ADDFD_FLAG_SETFD) {
        Some(Errno::ENOENT) => {}
        Some(e) => return Err(e),
        None => return Err(Errno::EINVAL),
    }
    Ok(ask(libc::SECCOMP_ADDFD_FLAG_SEND) == Some(Errno::ENOENT))
}

/// `check`'s lines about the transparent path under `setting`; a policy with `protocol: tcp`
/// endpoints where the path cannot run is a problem (the sandbox would not start), and so is
/// `direct` asked of a kernel without the fence.
pub fn describe(
    out: &mut String,
    problems: &mut Vec<String>,
    policy: &crate::policy::Policy,
    probe: &Probe,
    setting: Setting,
) {
    use std::fmt::Write as _;
    let send = if probe.addfd_send {
        "present (not needed)"
    } else {
        "absent (not needed)"
    };
    let off = match probe.mode(setting) {
        Ok(Mode::Direct) => {
            let _ = writeln!(
                out,
                "  transparent egress: direct (seccomp user notification with ADDFD, \
                 pidfd_getfd, SO_NETNS_COOKIE, Landlock TCP fence): direct connections and DNS \
                 lookups meet the policy, and allowed connections are handed to the agent; \
                 ADDFD's SEND flag: {send}"
            );
            return;
        }
        Ok(Mode::Relay) => {
            let why = match &probe.no_fence {
                Some(no_fence) => format!("this kernel lacks {no_fence}"),
                None => format!("{SETTING_VAR}=relay"),
            };
            let _ = writeln!(
                out,
                "  transparent egress: relayed ({why}): direct connections and DNS lookups meet \
                 the policy, and the supervisor relays allowed connections (the agent's \
                 getpeername() shows the supervisor's hand-off listener)"
            );
            return;
        }
        Err(off) => off,
    };
    let _ = writeln!(
        out,
        "  transparent egress: OFF ({}); only clients that use the proxy reach the network, \
         the sandbox has no DNS, and protocol: tcp endpoints are refused",
        off.why()
    );
    if setting.is_required() {
        problems.push(format!(
            "{SETTING_VAR}={}, and transparent egress cannot run here ({})",
            setting.name(),
            off.why()
        ));
        return;
    }
    let direct_only = direct_only(policy);
    if !direct_only.is_empty() {
        problems.push(format!(
            "protocol: tcp endpoints ({direct_only}) need transparent egress, which is off here"
        ));
    }
    // Without the records of the transparent path, the proxy finds its callers among the
    // holders of the client's socket, which only sock_diag names.
    if let Some(no_diag) = &probe.no_diag
        && !policy.network.is_empty()
    {
        problems.push(format!(
            "the proxy cannot identify its callers without {no_diag}: it would refuse every \
             request"
        ));
    }
}

/// The policy's `protocol: tcp` endpoints (reachable only through the transparent path), as
/// a list in words; empty when it has none.
pub fn direct_only(policy: &crate::policy::Policy) -> String {
    let hosts: Vec<String> = policy
        .network
        .iter()
        .flat_map(|rule| &rule.endpoints)
        .filter(|e| e.reach == crate::policy::Reach::Transparent)
        .map(|e| e.host.to_string())
        .collect();
    hosts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{self, PolicyOrigin};

    #[test]
    fn the_mode_follows_the_setting_and_the_kernel() {
        let fence = "Landlock ABI 4 (Linux 6.7; this kernel has 2)".to_owned();
        let addfd = "SECCOMP_IOCTL_NOTIF_ADDFD (Linux 5.9)".to_owned();
        let new = Probe::default();
        let no_fence = Probe {
            no_fence: Some(fence.clone()),
            ..Probe::default()
        };
        let old = Probe {
            missing: vec![addfd.clone()],
            no_fence: Some(fence.clone()),
            ..Probe::default()
        };
        let diag = "sock_diag for TCP sockets".to_owned();
        let no_diag = Probe {
            no_diag: Some(diag.clone()),
            ..Probe::default()
        };
        let neither = Probe {
            no_fence: Some(fence.clone()),
            no_diag: Some(diag.clone()),
            ..Probe::default()
        };
        use Setting::{Auto, Direct, Relay};
        let missing = |m: &[&String]| Err(Off::Missing(m.iter().map(|s| (*s).clone()).collect()));
        let table: &[(&Probe, Setting, Result<Mode, Off>)] = &[
            (&new, Auto, Ok(Mode::Direct)),
            (&new, Direct, Ok(Mode::Direct)),
            (&new, Relay, Ok(Mode::Relay)),
            (&new, Setting::Off, Err(Off::Asked)),
            (&no_fence, Auto, Ok(Mode::Relay)),
            (&no_fence, Direct, missing(&[&fence])),
            (&no_fence, Relay, Ok(Mode::Relay)),
            (&no_fence, Setting::Off, Err(Off::Asked)),
            (&old, Auto, missing(&[&addfd])),
            (&old, Direct, missing(&[&addfd, &fence])),
            (&old, Relay, missing(&[&addfd])),
            // Relaying needs sock_diag; handing over does not.
            (&no_diag, Auto, Ok(Mode::Direct)),
            (&no_diag, Relay, missing(&[&diag])),
            (&neither, Auto, missing(&[&fence, &diag])),
            (&neither, Direct, missing(&[&fence])),
            (&neither, Relay, missing(&[&diag])),
        ];
        for (probe, setting, expected) in table {
            assert_eq!(&probe.mode(*setting), expected, "{probe:?} {setting:?}");
        }
    }

    #[test]
    fn check_says_how_the_path_runs_and_refuses_protocol_tcp_without_it() {
        let origin = PolicyOrigin::BuiltinDefault;
        let text = "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{ host: redis.example, \
                    port: 6379, protocol: tcp }]\n    binaries: [{ path: /usr/bin/redis-cli }]\n";
        let policy = policy::validate(
            policy::parse(text, &origin).unwrap(),
            origin,
            Path::new("/w"),
        )
        .unwrap();
        let no_fence = Probe {
            no_fence: Some("Landlock ABI 4 (Linux 6.7; this kernel has 2)".to_owned()),
            addfd_send: true,
            ..Probe::default()
        };
        let old = Probe {
            missing: vec!["pidfd_getfd (Linux 5.6)".to_owned()],
            ..no_fence.clone()
        };
        let describe = |probe: &Probe, setting| {
            let (mut out, mut problems) = (String::new(), Vec::new());
            describe(&mut out, &mut problems, &policy, probe, setting);
            (out, problems)
        };
        let (out, problems) = describe(&Probe::default(), Setting::Auto);
        assert!(out.contains("transparent egress: direct ("), "{out}");
        assert!(problems.is_empty(), "{problems:?}");
        let (out, problems) = describe(&no_fence, Setting::Auto);
        assert!(
            out.contains("transparent egress: relayed (this kernel lacks Landlock ABI 4"),
            "{out}"
        );
        assert!(problems.is_empty(), "{problems:?}");
        let (out, problems) = describe(&Probe::default(), Setting::Relay);
        assert!(
            out.contains(&format!(
                "transparent egress: relayed ({SETTING_VAR}=relay)"
            )),
            "{out}"
        );
        assert!(problems.is_empty(), "{problems:?}");
        let (out, problems) = describe(&old, Setting::Auto);
        assert!(
            out.contains("transparent egress: OFF (this kernel lacks pidfd_getfd"),
            "{out}"
        );
        assert_eq!(
            problems,
            ["protocol: tcp endpoints (redis.example) need transparent egress, which is off here"]
        );
        let (_, problems) = describe(&Probe::default(), Setting::Off);
        assert_eq!(problems.len(), 1, "{problems:?}");
        // Off, the proxy needs sock_diag to find its callers.
        let no_diag = Probe {
            no_diag: Some("sock_diag for TCP sockets".to_owned()),
            ..old.clone()
        };
        let (_, problems) = describe(&no_diag, Setting::Auto);
        assert_eq!(
            problems.last().map(String::as_str),
            Some(
                "the proxy cannot identify its callers without sock_diag for TCP sockets: it \
                 would refuse every request"
            ),
            "{problems:?}"
        );
        let (out, problems) = describe(&no_fence, Setting::Direct);
        assert!(out.contains("transparent egress: OFF (this kernel lacks Landlock ABI 4"));
        assert_eq!(
            problems,
            [format!(
                "{SETTING_VAR}=direct, and transparent egress cannot run here (this kernel \
                 lacks Landlock ABI 4 (Linux 6.7; this kernel has 2))"
            )]
        );
    }
}
