//! Executing memfds: refused through `vm.memfd_noexec` in the sandbox's PID namespace.
//!
//! A memfd is a file with no path: Landlock treats it as outside every rule, so an agent can
//! write any program into one and run it (`memfd_create` + `execveat(fd, "", AT_EMPTY_PATH)`,
//! or `execve("/proc/self/fd/N")`), programs the policy never listed. Refusing `memfd_create`
//! is not an option: Node/V8, CUDA and wasmtime use memfds, mapping them rather than
//! executing them. `vm.memfd_noexec` (Linux 6.3) is per PID namespace; at 2, a memfd is
//! created with `MFD_NOEXEC_SEAL` (not executable, and sealed so) and `MFD_EXEC` is refused,
//! for every process of the namespace and its children's namespaces, and it cannot be lowered
//! there. Linux 6.3 to 6.5 refused even a plain `memfd_create` at 2 (fixed in 6.6): there the
//! sandbox sets 1, which seals by default but lets a program ask for `MFD_EXEC`. Below 6.3
//! nothing stops memfd execution; `check` and the start-up log say so.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::channel::StepFailure;

/// The sysctl, below a procfs root.
const SYSCTL: &str = "sys/vm/memfd_noexec";

/// What the kernel allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// 2: memfds are never executable (Linux 6.6 and later).
    Refused,
    /// 1: memfds are sealed non-executable unless created with `MFD_EXEC` (Linux 6.3-6.5).
    SealedByDefault,
    /// No `vm.memfd_noexec` (before Linux 6.3): memfds can be executed.
    Unavailable,
}

/// Decides from the kernel's release and whether it has the sysctl.
pub fn prepare(release: &str) -> Prepared {
    choose(release, Path::new("/proc").join(SYSCTL).exists())
}

fn choose(release: &str, has_sysctl: bool) -> Prepared {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    match (has_sysctl, version >= (6, 6)) {
        (false, _) => Prepared::Unavailable,
        (true, true) => Prepared::Refused,
        (true, false) => Prepared::SealedByDefault,
    }
}

impl Prepared {
    /// In words, for `check` and the start-up log.
    pub fn describe(self) -> &'static str {
        match self {
            Prepared::Refused => {
                "memfd exec: refused (vm.memfd_noexec=2 in the sandbox's PID namespace)"
            }
            Prepared::SealedByDefault => {
                "memfd exec: sealed off by default (vm.memfd_noexec=1), but a program that asks \
                 for MFD_EXEC can still execute a memfd on this kernel (Linux 6.3-6.5)"
            }
            Prepared::Unavailable => {
                "memfd exec: POSSIBLE on this kernel (vm.memfd_noexec needs Linux 6.3): a program \
                 written into a memfd can be executed"
            }
        }
    }

    fn value(self) -> Option<&'static [u8]> {
        match self {
            Prepared::Refused => Some(b"2"),
            Prepared::SealedByDefault => Some(b"1"),
            Prepared::Unavailable => None,
        }
    }

    /// In init, through the sandbox's own procfs `proc` (a fresh one is writable; the pod's
    /// /proc/sys usually is not): sets the sysctl and reads it back. (Not proven by creating
    /// an executable memfd: the kernel logs every refusal, and the node's log would get a
    /// line per sandbox start; the escape suite proves it instead.)
    pub fn apply(self, proc: &OwnedFd) -> Result<(), StepFailure<'static>> {
        let Some(value) = self.value() else {
            return Ok(());
        };
        let fail = StepFailure::of;
        let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = openat(proc.as_fd(), SYSCTL, flags, Mode::empty())
            .map_err(fail("opening vm.memfd_noexec"))?;
        nix::unistd::write(fd.as_fd(), value).map_err(fail("setting vm.memfd_noexec"))?;
        let mut back = [0u8; 4];
        let n = nix::sys::uio::pread(fd.as_fd(), &mut back, 0)
            .map_err(fail("reading back vm.memfd_noexec"))?;
        if back[..n].trim_ascii() != value {
            return Err(StepFailure {
                what: "vm.memfd_noexec did not read back as set",
                errno: Errno::EINVAL,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_follows_the_kernel() {
        assert_eq!(choose("6.18.44-fc-v1252", true), Prepared::Refused);
        assert_eq!(choose("6.6.0", true), Prepared::Refused);
        assert_eq!(choose("6.5.13-1-amd64", true), Prepared::SealedByDefault);
        assert_eq!(choose("6.3.0", true), Prepared::SealedByDefault);
        assert_eq!(choose("6.1.0-53-cloud-amd64", false), Prepared::Unavailable);
        assert_eq!(
            choose("5.14.0-570.el9.x86_64", false),
            Prepared::Unavailable
        );
        // A backport: the sysctl decides, not the version alone.
        assert_eq!(
            choose("5.14.0-611.el9.x86_64", true),
            Prepared::SealedByDefault
        );
    }
}
