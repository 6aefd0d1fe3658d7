//! `/proc/PID/stat`, read in one place: its second field, the command name, is the process's
//! to choose and may hold spaces and parentheses, so fields are counted from the last `)`.

use std::fs;

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: R, S, D, Z (zombie), X (dead)...
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 22: when the process started, in clock ticks since boot (tells a reused pid apart).
    pub start: u64,
}

/// The stat of `pid`, or `None` when it is gone or unreadable.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The thread group (process) of the thread `tid`: `tid` itself when it leads its group (a
/// pidfd opens only for a leader: two system calls for the common single-threaded case),
/// else from `/proc/TID/status`.
pub fn tgid(tid: u32) -> Option<u32> {
    // SAFETY: pidfd_open takes a pid and flags; the fd is closed at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, 0u32) };
    if pidfd >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(pidfd as i32) };
        return Some(tid);
    }
    fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let me = super::stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start > 0 && "RSD".contains(me.state), "{me:?}");
        assert_eq!(super::tgid(std::process::id()), Some(std::process::id()));
    }
}
