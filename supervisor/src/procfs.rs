//! `/proc/PID/stat`, read in one place: its second field, the command name, is the process's
//! to choose and may hold spaces and parentheses, so fields are counted from the last `)`.
//!
//! These files are read for every connection the agent makes, so each is read with one
//! `read()` into a buffer on the stack: open, read, close (`fs::read_to_string` adds a
//! `statx` for its size hint and two more reads to find the end).

use std::fs;
use std::io::Read;

/// Reads a small `/proc` file that the kernel writes in one go (`stat`, `status`, `fdinfo`:
/// one read returns all of it when it fits in a page) and hands its text to `parse`; `None`
/// when it cannot be read or fills the page.
pub fn with_small<T>(path: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; 4096];
    let len = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    if len == buf.len() {
        return None;
    }
    parse(std::str::from_utf8(&buf[..len]).ok()?)
}

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
    with_stat_fields(&format!("/proc/{pid}/stat"), |mut fields| {
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Stat {
            state,
            ppid,
            start: fields.nth(17)?.parse().ok()?,
        })
    })
}

/// Where this process's environment block lies (`env_start`, `env_end`: fields 50 and 51 of
/// `/proc/self/stat`).
pub fn env_block() -> Option<(usize, usize)> {
    with_stat_fields("/proc/self/stat", |mut fields| {
        let start = fields.nth(47)?.parse().ok()?;
        let end = fields.next()?.parse().ok()?;
        (start <= end).then_some((start, end))
    })
}

/// The fields of the stat file at `path` after the command name (field 3 first), to `parse`.
fn with_stat_fields<T>(
    path: &str,
    parse: impl FnOnce(std::str::SplitAsciiWhitespace<'_>) -> Option<T>,
) -> Option<T> {
    with_small(path, |text| {
        parse(text[text.rfind(')')? + 1..].split_ascii_whitespace())
    })
}

/// The number after `name` (e.g. `Threads:`) in the text of a status file.
fn status_field<T: std::str::FromStr>(status: &str, name: &str) -> Option<T> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .parse()
        .ok()
}

/// The threads of this process (0 when unreadable). Read whole, not with [`with_small`]: the
/// status file's CPU and node masks grow with the machine, and a count of 0 refuses the fork.
pub fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_field(&status, "Threads:"))
        .unwrap_or(0)
}

/// The thread count once joined threads are gone: a joined thread wakes its joiner as it
/// exits (the kernel clears its tid), a moment before the kernel stops counting it, and on a
/// slow machine (an emulated CPU) that moment is seen. A thread still running after this
/// wait (up to a second) is a real second thread.
pub fn settled_thread_count() -> usize {
    let mut threads = thread_count();
    for _ in 0..1000 {
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = thread_count();
    }
    threads
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
    with_small(&format!("/proc/{tid}/status"), |status| {
        status_field(status, "Tgid:")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let me = super::stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start > 0 && "RSD".contains(me.state), "{me:?}");
        assert_eq!(super::tgid(std::process::id()), Some(std::process::id()));
        let (start, end) = super::env_block().unwrap();
        assert!(start > 0 && start <= end);
        // A thread's group is read from its status.
        let tid = std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            (
                unsafe { libc::gettid() } as u32,
                super::tgid(unsafe { libc::gettid() } as u32),
            )
        })
        .join()
        .unwrap();
        assert_eq!(tid.1, Some(std::process::id()), "thread {}", tid.0);
    }
}
