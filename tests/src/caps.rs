//! Raising a capability with raw capget/capset, usable between fork and exec (no allocation).

/// A capability set of the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// Effective.
    Effective,
    /// Permitted.
    Permitted,
    /// Inheritable.
    Inheritable,
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Adds capability number `cap` to each of `sets` of the calling thread. Returns the raw
/// result of the last system call (-1 with errno set on failure), as the callers report it.
pub fn raise(cap: u32, sets: &[Set]) -> libc::c_long {
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two data words into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc < 0 {
        return rc;
    }
    let word = &mut data[(cap / 32) as usize];
    let bit = 1 << (cap % 32);
    for set in sets {
        match set {
            Set::Effective => word.effective |= bit,
            Set::Permitted => word.permitted |= bit,
            Set::Inheritable => word.inheritable |= bit,
        }
    }
    // SAFETY: capset reads the header and two data words.
    unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }
}
