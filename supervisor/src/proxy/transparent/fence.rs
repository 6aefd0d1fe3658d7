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
//! when the transparent path does.

use std::os::fd::{AsRawFd, OwnedFd};

use landlock::{ABI, Access, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr};
use nix::errno::Errno;

/// The Landlock ABI that handles TCP bind and connect.
pub const MIN_ABI: i32 = 4;

/// The fence's ruleset, made before fork.
#[derive(Debug)]
pub struct Fence {
    ruleset: OwnedFd,
}

/// Builds the ruleset (no rule: every port refused).
pub fn prepare() -> Result<Fence, landlock::RulesetError> {
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))?
        .create()?;
    let ruleset = Option::<OwnedFd>::from(created).ok_or_else(|| {
        landlock::RulesetError::from(landlock::CreateRulesetError::MissingHandledAccess)
    })?;
    Ok(Fence { ruleset })
}

impl Fence {
    /// Enforces the fence on the calling thread and its future children (after
    /// no_new_privs), then proves it: a TCP connect to the sandbox's own loopback is refused
    /// by Landlock (EACCES), not by the network.
    pub fn apply(&self) -> Result<(), Errno> {
        // SAFETY: landlock_restrict_self takes the ruleset fd and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0u32,
            )
        };
        Errno::result(rc)?;
        // SAFETY: a plain TCP socket, closed below.
        let sock = Errno::result(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        })?;
        let port_one = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 1u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: connect reads the sockaddr_in on the stack; the socket is ours.
        let rc = unsafe {
            libc::connect(
                sock,
                (&port_one as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let errno = Errno::last();
        // SAFETY: closing the socket made above.
        unsafe { libc::close(sock) };
        match (rc, errno) {
            (-1, Errno::EACCES) => Ok(()),
            (-1, other) => Err(other),
            _ => Err(Errno::ENOTRECOVERABLE),
        }
    }
}
