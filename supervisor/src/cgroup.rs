//! The supervisor's own cgroups, read (never written) for the two limits it shares with the
//! agent: the pod's pids limit and its memory limit. The sandbox stays in the supervisor's
//! cgroups (its cgroup namespace only hides the path), so the agent's forks and pages are
//! counted against the same limits as the supervisor's threads and memory.
//!
//! Both cgroup versions are read: v2 (`memory.events`, `pids.max`), and v1 hierarchies with the
//! controller mounted on their own (`memory.oom_control`), as on hosts whose controllers are
//! still on v1.

use std::fs;
use std::path::{Path, PathBuf};

use crate::view::mountinfo::{self, Line};

/// The directories of the supervisor's memory and pids cgroups, where they can be found.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl Cgroups {
    /// The calling process's cgroups, from `/proc/self/cgroup` and `/proc/self/mountinfo`.
    pub fn own() -> Cgroups {
        let memberships = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Cgroups {
            memory: locate(
                &memberships,
                &mounts,
                "memory",
                &["memory.events", "memory.oom_control"],
            ),
            pids: locate(&memberships, &mounts, "pids", &["pids.max"]),
        }
    }

    /// How many processes the kernel's OOM killer has killed in the memory cgroup (and its
    /// descendants) since it was created.
    pub fn oom_kills(&self) -> Option<u64> {
        // v2 counts in memory.events, v1 in memory.oom_control; the line reads the same.
        let text = read_first(
            self.memory.as_ref()?,
            &["memory.events", "memory.oom_control"],
        )?;
        field(&text, "oom_kill")
    }

    /// The memory cgroup's limit in bytes, if it has one.
    pub fn memory_limit(&self) -> Option<u64> {
        number(
            self.memory.as_ref()?,
            &["memory.max", "memory.limit_in_bytes"],
        )
        // v1 says "no limit" with a number near 2^63.
        .filter(|&limit| limit < 1 << 62)
    }

    /// How many more tasks (processes and threads) the pids cgroup admits; `None` without a
    /// limit.
    pub fn pids_left(&self) -> Option<u64> {
        let dir = self.pids.as_ref()?;
        let max = number(dir, &["pids.max"])?;
        Some(max.saturating_sub(number(dir, &["pids.current"])?))
    }
}

/// The first of `files` in the cgroup directory `dir` that can be read (the v2 name, then the
/// v1 one).
fn read_first(dir: &Path, files: &[&str]) -> Option<String> {
    files
        .iter()
        .find_map(|file| fs::read_to_string(dir.join(file)).ok())
}

/// The number in the first readable of `files` in `dir` (`None` for "max", no limit).
fn number(dir: &Path, files: &[&str]) -> Option<u64> {
    read_first(dir, files)?.trim().parse().ok()
}

/// `NAME VALUE` from a flat-keyed cgroup file.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The cgroup directories that may hold `controller`: on the v1 hierarchies mounting it, then
/// on the v2 hierarchy.
fn candidates(memberships: &str, mounts: &str, controller: &str) -> Vec<PathBuf> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in memberships.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2.extend(
                mount_of(mounts, |mount| mount.fstype == b"cgroup2")
                    .map(|(root, point)| join(&point, &root, path)),
            );
        } else if controllers.split(',').any(|c| c == controller) {
            v1.extend(
                mount_of(mounts, |mount| {
                    mount.fstype == b"cgroup"
                        && mountinfo::has_option(mount.super_options, controller.as_bytes())
                })
                .map(|(root, point)| join(&point, &root, path)),
            );
        }
    }
    v1.extend(v2);
    v1
}

/// The first of the candidate directories for `controller` that has one of `probes` (files
/// only that controller has).
fn locate(memberships: &str, mounts: &str, controller: &str, probes: &[&str]) -> Option<PathBuf> {
    candidates(memberships, mounts, controller)
        .into_iter()
        .find(|dir| probes.iter().any(|probe| dir.join(probe).exists()))
}

/// The (root, mount point) of the first mount whose file system type and super options match.
fn mount_of(mounts: &str, matches: impl Fn(&Line<'_>) -> bool) -> Option<(String, PathBuf)> {
    mounts.lines().find_map(|line| {
        let line = mountinfo::parse(line.as_bytes())?;
        matches(&line).then(|| {
            let text = |bytes| String::from_utf8_lossy(bytes).into_owned();
            (text(line.root), PathBuf::from(text(line.mount_point)))
        })
    })
}

/// The directory of cgroup `path` on a hierarchy mounted at `point` from its `root`.
fn join(point: &Path, root: &str, path: &str) -> PathBuf {
    let relative = path
        .strip_prefix(root)
        .filter(|rest| rest.is_empty() || rest.starts_with('/') || root == "/")
        .unwrap_or(path);
    point.join(relative.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,relatime shared:15 - cgroup cgroup rw,pids
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime shared:19 - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_come_before_v2() {
        let cgroups = "8:pids:/\n4:memory:/pod/a\n0::/pod/a\n";
        assert_eq!(
            candidates(cgroups, MOUNTS, "memory"),
            [
                PathBuf::from("/sys/fs/cgroup/memory/pod/a"),
                PathBuf::from("/sys/fs/cgroup/unified/pod/a")
            ]
        );
        assert_eq!(
            candidates(cgroups, MOUNTS, "pids"),
            [
                PathBuf::from("/sys/fs/cgroup/pids"),
                PathBuf::from("/sys/fs/cgroup/unified/pod/a")
            ]
        );
        assert_eq!(
            candidates("0::/\n", MOUNTS, "memory"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
    }

    #[test]
    fn a_mount_of_a_subtree_strips_its_root() {
        assert_eq!(
            join(
                Path::new("/sys/fs/cgroup"),
                "/kubepods/pod1",
                "/kubepods/pod1/c"
            ),
            PathBuf::from("/sys/fs/cgroup/c")
        );
        assert_eq!(
            join(Path::new("/sys/fs/cgroup"), "/", "/"),
            PathBuf::from("/sys/fs/cgroup")
        );
        // A path outside the mounted subtree (another namespace's view): the mount itself.
        assert_eq!(
            join(Path::new("/sys/fs/cgroup"), "/a", "/ab"),
            PathBuf::from("/sys/fs/cgroup/ab")
        );
    }

    #[test]
    fn flat_keyed_fields_are_read_by_exact_name() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(2));
        assert_eq!(field(events, "oom"), Some(3));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(field(v1, "oom_kill"), Some(5));
    }

    #[test]
    fn this_process_has_readable_cgroups_where_the_machine_has_them() {
        let own = Cgroups::own();
        if own.memory.is_some() {
            assert!(own.oom_kills().is_some(), "{own:?}");
        }
    }
}
