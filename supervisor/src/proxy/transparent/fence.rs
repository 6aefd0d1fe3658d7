//! The TCP fence: a Landlock layer (ABI 4) that forbids the agent every TCP `bind()` and
//! `connect()` of its own.
//!
//! With the transparent path the agent holds sockets of the pod's network namespace (the
//! connections handed to it). The supervisor makes every TCP connect and bind on the agent's
//! behalf, on the agent's own socket, with an address it read and checked, so the agent never
//! needs either call itself. But some calls must be let through for the kernel to run in the
//! agent's context (a unix socket's `connect()` resolves its path as the agent, under its
//! Landlock rules); for those the kernel reads the fd and the address again, and a second
//! thread could swap in a handed-out socket and an outside address in between. This layer
//! makes that swap useless: in the agent's context any TCP connect or bind is refused, in
//! whatever namespace the socket lives. Disconnecting (`AF_UNSPEC`) stays possible, and
//! `listen()` is always made by the supervisor, so a disconnected socket cannot be turned
//! into a listener in the pod either; `MSG_FASTOPEN` (a connect Landlock does not see) is
//! refused by the seccomp filter.
//!
//! A second ruleset rather than rights added to the filesystem one: it can be checked on
//! its own (a TCP connect to the sandbox's loopback must fail with EACCES) and exists only
//! when the transparent path hands connections over (`Mode::Direct`); a relaying path hands out
//! no socket of the pod, and checks the socket behind each connection instead (handoff.rs).

use std::os::fd::AsRawFd;

use landlock::{
    ABI, Access, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr,
};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};

use crate::landlock::{Failure, enforce};

/// The Landlock ABI that handles TCP bind and connect.
pub const MIN_ABI: i32 = 4;

/// The fence's ruleset, made before fork.
#[derive(Debug)]
pub struct Fence {
    ruleset: RulesetCreated,
}

/// Builds the ruleset (no rule: every port refused).
pub fn prepare() -> Result<Fence, landlock::RulesetError> {
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))?
        .create()?
        // child.rs sets it once, before every Landlock layer: no second prctl.
        .no_new_privs(false);
    Ok(Fence { ruleset })
}

impl Fence {
    /// Enforces the fence on the calling thread and its future children (after
    /// no_new_privs), checks that the kernel enforces all of it, then proves it: a TCP
    /// connect to the sandbox's own loopback is refused by Landlock (EACCES), not by the
    /// network.
    pub fn apply(self) -> Result<(), Failure> {
        enforce(self.ruleset, "enforcing the Landlock TCP fence")?;
        let proving = |e| Failure::Step("proving the Landlock TCP fence", e);
        let sock = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(proving)?;
        match connect(sock.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 1)) {
            Err(Errno::EACCES) => Ok(()),
            Err(other) => Err(proving(other)),
            Ok(()) => Err(Failure::NotEnforced),
        }
    }
}
