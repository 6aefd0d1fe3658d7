//! Cgroups made for one test: uniquely named, nested in the test process's own cgroup for the
//! controller (cgroup v1 hierarchies or v2), given a limit, and removed when dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A cgroup of one controller, removed on drop (after its processes are gone).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A new cgroup with `controller` (`pids`, `memory`) under this process's own cgroup of
    /// that controller. `None`, having printed why, when the machine has no hierarchy with the
    /// controller (with `OPENSHELL_REQUIRE_KERNEL=1`, the test fails instead).
    pub fn new(controller: &str, tag: &str) -> Option<Cgroup> {
        let Some(parent) = own_dir(controller) else {
            crate::require_kernel(
                false,
                &format!("a cgroup hierarchy with the {controller} controller"),
            );
            return None;
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "openshell-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating the cgroup {}: {e}", dir.display()));
        Some(Cgroup { dir })
    }

    /// A new memory cgroup (as [`Cgroup::new`]) limited to `limit_mib` MiB, without swap.
    pub fn memory(tag: &str, limit_mib: u64) -> Option<Cgroup> {
        let cgroup = Cgroup::new("memory", tag)?;
        let limit = (limit_mib << 20).to_string();
        if cgroup.is_v1() {
            cgroup.set("memory.limit_in_bytes", &limit);
        } else {
            cgroup.set("memory.max", &limit);
            cgroup.set("memory.swap.max", "0");
        }
        Some(cgroup)
    }

    /// The most memory the cgroup has used, in bytes (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`).
    pub fn peak_memory(&self) -> u64 {
        let file = match self.is_v1() {
            true => "memory.max_usage_in_bytes",
            false => "memory.peak",
        };
        self.read(file)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// The file a process writes `0` to to join the cgroup.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Writes `value` to the cgroup's `file` (e.g. `pids.max`).
    pub fn set(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value} to {file}: {e}"));
    }

    /// Reads the cgroup's `file`.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    /// Whether the cgroup is on a v1 hierarchy (file names differ: `memory.limit_in_bytes`
    /// for v2's `memory.max`).
    pub fn is_v1(&self) -> bool {
        !self.dir.join("cgroup.controllers").exists()
    }

    /// A launcher (see `run::sandbox_via`) that moves itself into this cgroup, then runs the
    /// command that follows it: what it starts is counted here from its first instruction.
    pub fn launcher(&self) -> Vec<OsString> {
        let procs = self.procs();
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo $$ > '{}' && exec \"$@\"", procs.display()).into(),
            "sh".into(),
        ]
    }

    fn processes(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    /// Kills what is left inside (a failed test's sandbox), then removes the directory.
    fn drop(&mut self) {
        let started = Instant::now();
        loop {
            let left = self.processes();
            if left.is_empty() || started.elapsed() > Duration::from_secs(10) {
                break;
            }
            for pid in left {
                // SAFETY: kill with integer arguments.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove the test cgroup {}: {e}", self.dir.display());
        }
    }
}

/// This process's cgroup directory for `controller`: on the v1 hierarchy mounting it, or on
/// the v2 hierarchy when the controller is enabled there.
fn own_dir(controller: &str) -> Option<PathBuf> {
    let memberships = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // (mount root, mount point) of each cgroup file system, v1 with its controllers.
    let mounted = |v2: bool| {
        mounts.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fits = match (v2, right.first()?) {
                (true, &"cgroup2") => true,
                (false, &"cgroup") => right.get(2)?.split(',').any(|o| o == controller),
                _ => false,
            };
            fits.then(|| (left.get(3).copied(), left.get(4).copied()))
        })
    };
    for line in memberships.lines() {
        let fields: Vec<&str> = line.splitn(3, ':').collect();
        let [id, controllers, path] = fields[..] else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == controller) {
            continue;
        }
        let Some((Some(root), Some(point))) = mounted(v2) else {
            continue;
        };
        let relative = path
            .strip_prefix(root)
            .unwrap_or(path)
            .trim_start_matches('/');
        let dir = Path::new(point).join(relative);
        let enabled = !v2
            || std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == controller));
        if enabled {
            return Some(dir);
        }
    }
    None
}
