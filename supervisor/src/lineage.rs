//! Which of a process's children it started while running its current program.
//!
//! The proxy credits a connection to the executable of the process that owns the socket or of
//! any ancestor (upstream's rule: allowing `claude` covers the `node` it runs). Taken alone,
//! that rule lets any process borrow an allowed binary: fork a child, then make the parent
//! `execve` the allowed program and keep it waiting; the child now has an allowed "ancestor".
//! So every `execve` in the sandbox is observed (the seccomp filter hands it to the supervisor,
//! which lets it continue), and while the caller is still frozen in the call its existing
//! children are recorded. An ancestor is then credited for a descendant only if the child on
//! that line was not among them, i.e. was started by the program it runs now.
//!
//! Limits, by construction: a thread of a multi-threaded process can still fork between the
//! record and the moment `execve` takes effect; and with no user notification on the kernel
//! nothing is recorded and every ancestor is credited, as upstream does.

use std::collections::HashMap;
use std::fs;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::procfs;

/// Most processes tracked; beyond it the oldest records go (their processes are likely gone).
const MAX_RECORDS: usize = 4096;

/// One process's children at its last exec, each with its start time (pid reuse guard).
#[derive(Debug, Clone)]
struct Exec {
    start: u64,
    children: Vec<(u32, u64)>,
}

/// The records, shared by the seccomp handler (writes) and the proxy (reads).
#[derive(Debug, Default)]
pub struct Lineage {
    execs: Mutex<HashMap<u32, Exec>>,
    /// Execs recorded so far: what was worked out from the records (or from a process's
    /// executable) before the count last changed may be out of date.
    recorded: AtomicU64,
}

impl Lineage {
    /// Records the children of `pid`, which is about to replace its program. Called while
    /// `pid` is frozen in `execve`.
    pub fn record_exec(&self, pid: u32) {
        self.record(pid);
        self.recorded.fetch_add(1, Ordering::AcqRel);
    }

    /// How many execs were recorded so far. Read before working something out from the
    /// sandbox's executables, a count that changed since says the result may be out of date;
    /// one that did not says no exec was recorded meanwhile, not that none is under way (an
    /// exec is recorded before it takes effect).
    pub fn generation(&self) -> u64 {
        self.recorded.load(Ordering::Acquire)
    }

    fn record(&self, pid: u32) {
        let Some(start) = start_time(pid) else {
            return;
        };
        let children = children(pid)
            .into_iter()
            .filter_map(|child| Some((child, start_time(child)?)))
            .collect();
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.len() >= MAX_RECORDS && !execs.contains_key(&pid) {
            execs.retain(|pid, exec| start_time(*pid) == Some(exec.start));
        }
        execs.insert(pid, Exec { start, children });
    }

    /// Whether `parent`'s current program started `child` (or `parent` never exec'd since
    /// its own start, so it runs the program that it and `child` were forked under).
    pub fn credits(&self, parent: u32, child: u32) -> bool {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(exec) = execs.get(&parent) else {
            return true;
        };
        if start_time(parent) != Some(exec.start) {
            // The record belongs to an earlier process with the same pid.
            return true;
        }
        let child_start = start_time(child);
        !exec
            .children
            .iter()
            .any(|&(pid, start)| pid == child && Some(start) == child_start)
    }
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn start_time(pid: u32) -> Option<u64> {
    procfs::stat(pid).map(|s| s.start)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn a_child_forked_before_the_exec_is_not_credited_one_after_is() {
        // sh forks `sleep 30` (child A), waits for a line, then execs a second sh that forks
        // child B; the record is taken in between, as the supervisor takes it at the exec.
        let mut sh = Command::new("/bin/sh")
            .args([
                "-c",
                "sleep 30 & echo $!; read go; exec /bin/sh -c 'sleep 30 & echo $!; wait'",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(sh.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let before: u32 = line.trim().parse().unwrap();
        let lineage = Lineage::default();
        // The record the supervisor would make at the second exec: A exists, B does not yet.
        lineage.record_exec(sh.id());
        std::io::Write::write_all(sh.stdin.as_mut().unwrap(), b"go\n").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let after: u32 = line.trim().parse().unwrap();
        assert!(!lineage.credits(sh.id(), before), "forked before the exec");
        assert!(
            lineage.credits(sh.id(), after),
            "forked by the current program"
        );
        assert!(lineage.credits(before, 1), "no record: credited");
        let _ = sh.kill();
        let _ = sh.wait();
        for pid in [before, after] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
