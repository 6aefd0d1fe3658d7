//! Capabilities: the agent ends with all five sets empty and securebits locked, verified.
//!
//! Order matters. The bounding set can only be emptied while we still hold CAP_SETPCAP, and
//! securebits must be locked before the uid change so that the change itself clears the
//! permitted and effective sets and nothing (a setuid-root binary, a later setuid(0)) can
//! ever give them back. After the uid change every set is read back bit by bit, as codex's
//! linux-sandbox does: the agent never starts if a single capability survived.
//!
//! Our own module rather than the `caps` crate: that crate has no securebits, and two ways of
//! reading the same sets would be one too many. [`effective`] and [`name`] serve the
//! supervisor's own preflight.

use nix::errno::Errno;

/// SECBIT_NOROOT: uid 0 no longer implies capabilities on exec.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
/// Lock NO_SETUID_FIXUP *off*: changing away from uid 0 must keep clearing capabilities.
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
/// Lock KEEP_CAPS *off*: capabilities never survive a uid change.
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
/// No capability can be raised into the ambient set, ever.
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// The securebits the agent runs with.
pub const SECUREBITS: libc::c_ulong = SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

// The capability numbers the supervisor itself needs (`include/uapi/linux/capability.h`).
/// `CAP_KILL`.
pub const KILL: u32 = 5;
/// `CAP_SETGID`.
pub const SETGID: u32 = 6;
/// `CAP_SETUID`.
pub const SETUID: u32 = 7;
/// `CAP_SETPCAP`.
pub const SETPCAP: u32 = 8;
/// `CAP_NET_ADMIN`.
pub const NET_ADMIN: u32 = 12;
/// `CAP_SYS_PTRACE`.
pub const SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;

/// Capability names by number (`include/uapi/linux/capability.h`), for messages.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The name of capability `cap` (`CAP_SYS_ADMIN`), or its number for one newer than this build.
pub fn name(cap: u32) -> String {
    NAMES
        .get(cap as usize)
        .map_or_else(|| format!("capability {cap}"), |n| (*n).to_owned())
}

/// The calling thread's effective set, one bit per capability number.
pub fn effective() -> Result<u64, Errno> {
    let data = capget()?;
    Ok(u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

fn capget() -> Result<[CapData; 2], Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data words into `data`, which is large enough.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(rc).map(|_| data)
}

/// A capability step that failed after fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsFailure {
    /// A system call failed.
    Syscall(&'static str, Errno),
    /// A set read back non-empty: the set, in words, and the first capability found in it.
    Survived(&'static str, u32),
    /// The securebits read back differ from what was set (the value read).
    Securebits(i32),
}

/// What the child needs to drop capabilities: the highest capability number of this kernel.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    last_cap: u32,
}

/// Reads the kernel's highest capability number before fork.
pub fn prepare() -> Prepared {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // Not readable: probe instead, PR_CAPBSET_READ fails with EINVAL past the last one.
        .unwrap_or_else(|| {
            (0..64)
                .take_while(|&c| capbset_read(c).is_ok())
                .last()
                .unwrap_or(40)
        });
    Prepared { last_cap }
}

fn capbset_read(cap: u32) -> Result<bool, Errno> {
    // SAFETY: PR_CAPBSET_READ takes a capability number, no pointers.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
    Errno::result(rc).map(|r| r == 1)
}

fn ambient_is_set(cap: u32) -> Result<bool, Errno> {
    // SAFETY: PR_CAP_AMBIENT_IS_SET takes a capability number, no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
            cap as libc::c_ulong,
            0,
            0,
        )
    };
    Errno::result(rc).map(|r| r == 1)
}

fn prctl(what: &'static str, option: libc::c_int, arg: libc::c_ulong) -> Result<(), CapsFailure> {
    // SAFETY: the options used here take scalar arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| CapsFailure::Syscall(what, e))
}

impl Prepared {
    /// Before the uid change, while CAP_SETPCAP is still held: empties the bounding and ambient
    /// sets and locks the securebits.
    pub fn drop_bounding_and_lock(&self) -> Result<(), CapsFailure> {
        for cap in 0..=self.last_cap {
            prctl(
                "PR_CAPBSET_DROP",
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
            )?;
        }
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        Errno::result(rc).map_err(|e| CapsFailure::Syscall("PR_CAP_AMBIENT_CLEAR_ALL", e))?;
        prctl("PR_SET_SECUREBITS", libc::PR_SET_SECUREBITS, SECUREBITS)
    }

    /// After the uid change: empties effective, permitted and inheritable, then reads back all
    /// five sets and the securebits.
    pub fn clear_and_verify(&self) -> Result<(), CapsFailure> {
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let empty = [CapData::default(); 2];
        // SAFETY: capset reads a v3 header and two data words, both valid for the call.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, empty.as_ptr()) };
        Errno::result(rc).map_err(|e| CapsFailure::Syscall("capset", e))?;
        self.verify()
    }

    /// Reads back every capability set and the securebits.
    pub fn verify(&self) -> Result<(), CapsFailure> {
        let data = capget().map_err(|e| CapsFailure::Syscall("capget", e))?;
        for (word, d) in data.iter().enumerate() {
            for (set, bits) in [
                ("capability survived in the effective set", d.effective),
                ("capability survived in the permitted set", d.permitted),
                ("capability survived in the inheritable set", d.inheritable),
            ] {
                if bits != 0 {
                    return Err(CapsFailure::Survived(
                        set,
                        word as u32 * 32 + bits.trailing_zeros(),
                    ));
                }
            }
        }
        for cap in 0..=self.last_cap {
            match capbset_read(cap) {
                Ok(false) => {}
                Ok(true) => {
                    return Err(CapsFailure::Survived(
                        "capability survived in the bounding set",
                        cap,
                    ));
                }
                Err(e) => return Err(CapsFailure::Syscall("PR_CAPBSET_READ", e)),
            }
            match ambient_is_set(cap) {
                Ok(false) => {}
                Ok(true) => {
                    return Err(CapsFailure::Survived(
                        "capability survived in the ambient set",
                        cap,
                    ));
                }
                Err(e) => return Err(CapsFailure::Syscall("PR_CAP_AMBIENT_IS_SET", e)),
            }
        }
        // SAFETY: PR_GET_SECUREBITS takes no arguments.
        let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        if bits < 0 || bits as libc::c_ulong & SECUREBITS != SECUREBITS {
            return Err(CapsFailure::Securebits(bits));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_the_kernel_numbering() {
        assert_eq!(super::name(0), "CAP_CHOWN");
        assert_eq!(super::name(21), "CAP_SYS_ADMIN");
        assert_eq!(super::name(40), "CAP_CHECKPOINT_RESTORE");
        assert_eq!(super::name(63), "capability 63");
    }
}
