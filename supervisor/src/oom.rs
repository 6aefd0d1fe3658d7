//! Out of memory: the agent, not the supervisor, is what the kernel kills, and each kill is
//! reported.
//!
//! The sandbox shares the supervisor's memory cgroup, and the OOM killer picks the process with
//! the largest resident set, adjusted by its `oom_score_adj`. Memory the agent holds outside any
//! process's resident set (a memfd, a tmpfs) is charged to the cgroup but not to the agent, so
//! when the agent exhausts the limit the largest process can be the supervisor: the sandbox
//! then loses its proxy, its seccomp answers and its status line. So the agent volunteers
//! (`oom_score_adj` 1000, the most preferred), and everything it starts inherits that.
//!
//! The supervisor sets it, on init, before init forks the agent, which inherits it; once the
//! agent exists, init goes back to the supervisor's own value. (Set from inside, the agent would
//! need `/proc`, which its filesystem view has only when the policy lists it.) Raising a score
//! needs no privilege, and going back down to where it was does not either.

use std::fs;
use std::io;
use std::time::Duration;

use nix::unistd::Pid;

use crate::cgroup::Cgroups;

/// The most preferred victim.
const MOST_PREFERRED: i32 = 1000;
/// How often the memory cgroup's OOM kill count is read.
pub const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Init, made the OOM killer's first choice until the agent it forks has inherited that.
#[derive(Debug)]
pub struct Preferred {
    init: Pid,
    original: i32,
}

fn path(pid: Pid) -> String {
    format!("/proc/{pid}/oom_score_adj")
}

fn read(pid: Pid) -> io::Result<i32> {
    fs::read_to_string(path(pid))?
        .trim()
        .parse()
        .map_err(io::Error::other)
}

fn write(pid: Pid, score: i32) -> io::Result<()> {
    fs::write(path(pid), score.to_string())?;
    match read(pid)? {
        found if found == score => Ok(()),
        found => Err(io::Error::other(format!(
            "oom_score_adj reads back as {found}, not {score}"
        ))),
    }
}

/// Makes `init` (not yet the agent's parent) the most preferred victim; read back.
pub fn prefer(init: Pid) -> io::Result<Preferred> {
    let original = read(init)?;
    write(init, MOST_PREFERRED)?;
    Ok(Preferred { init, original })
}

impl Preferred {
    /// Once the agent is forked (it keeps the score): init goes back to its own.
    pub fn agent_spawned(&self) {
        if let Err(e) = write(self.init, self.original) {
            tracing::warn!(
                "the sandbox's init keeps oom_score_adj {MOST_PREFERRED} (not {}): {e}",
                self.original
            );
        }
    }
}

/// The kernel's OOM kills in the supervisor's memory cgroup, which the sandbox shares: since the
/// agent's processes volunteer, these are the sandbox's processes, and each one is reported.
#[derive(Debug)]
pub struct Watch {
    cgroups: Cgroups,
    at_start: Option<u64>,
    seen: Option<u64>,
}

impl Watch {
    /// Counts from now.
    pub fn new(cgroups: Cgroups) -> Watch {
        let now = cgroups.oom_kills();
        Watch {
            cgroups,
            at_start: now,
            seen: now,
        }
    }

    /// Logs the kills since the last check.
    pub fn check(&mut self) {
        let (Some(seen), Some(now)) = (self.seen, self.cgroups.oom_kills()) else {
            return;
        };
        if now > seen {
            let limit = match self.cgroups.memory_limit() {
                Some(bytes) => format!("the memory limit is {} MiB", bytes >> 20),
                None => "its memory cgroup has no limit of its own".to_owned(),
            };
            tracing::warn!(
                event = "oom_kill",
                count = now - seen,
                "the kernel's OOM killer killed {} process(es) of the sandbox: {limit}",
                now - seen
            );
            self.seen = Some(now);
        }
    }

    /// Whether any process was killed since [`Watch::new`].
    pub fn killed_any(&self) -> bool {
        self.seen > self.at_start
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn a_child_forked_while_preferred_keeps_the_score_its_parent_gives_back() {
        // A stand-in for init: a shell that forks a child when told, then waits.
        let mut init = Command::new("/bin/sh")
            .args(["-c", "read go; sleep 30 & echo $!; read done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = Pid::from_raw(init.id() as i32);
        let original = read(pid).expect("read");
        let preferred = prefer(pid).expect("prefer");
        let mut stdin = init.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, b"go\n").expect("go");
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(init.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("the child's pid");
        let child = Pid::from_raw(line.trim().parse().expect("a pid"));
        preferred.agent_spawned();
        let scores = (read(child).expect("child"), read(pid).expect("parent"));
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = init.kill();
        let _ = init.wait();
        assert_eq!(scores, (MOST_PREFERRED, original));
    }
}
