//! The agent's filesystem view, through the supervisor's command line: private /tmp and
//! /dev/shm, nested read-only and read-write paths, a workdir inside a read-only path, mounts
//! that never reach the pod's namespace, the view gone with the agent, and `check`'s warnings
//! about paths the agent's user cannot use.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use openshell_tests::run::{self, Output, Setup, Stdin};
use openshell_tests::scratch::{RUN_AS_AGENT, Scratch, give_to_agent};
use openshell_tests::{bin, wait_until};

fn mkdir_for_agent(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).expect("mkdir");
    give_to_agent(path);
    path.to_owned()
}

/// Runs `script` (sh -c, with `args` as $1...) as the agent in `workdir` under `policy`.
fn agent(policy: &Path, workdir: &Path, script: &str, args: &[&Path]) -> Output {
    let mut command = run::sandbox(policy, workdir);
    command
        .args(["--", "/bin/sh", "-c", script, "sh"])
        .args(args);
    run::run(&mut command, Stdin::Null)
}

/// A name no other test or run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("openshell-{tag}-{}-{nanos}", std::process::id())
}

#[test]
fn tmp_and_dev_shm_are_private_to_the_sandbox() {
    let scratch = Scratch::new("private");
    let rw = mkdir_for_agent(&scratch.join("rw"));
    let policy = scratch.policy(&[], &[&rw], RUN_AS_AGENT);
    // The pod's files: world-readable, so only the view can hide them.
    let theirs = unique("theirs");
    let outside: Vec<PathBuf> = ["/tmp", "/dev/shm"]
        .iter()
        .map(|dir| Path::new(dir).join(&theirs))
        .collect();
    for path in &outside {
        std::fs::write(path, "the pod's\n").expect("writing outside");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    // The baseline: the agent's user sees them without the sandbox.
    let mut baseline = Command::new("/bin/cat");
    baseline.args(&outside);
    Setup {
        as_agent: true,
        ..Setup::default()
    }
    .apply(&mut baseline);
    let seen = run::run(&mut baseline, Stdin::Null);
    assert_eq!(seen.stdout, "the pod's\nthe pod's\n", "{seen:#?}");
    let mine = unique("mine");
    let script = r#"
        for f in "/tmp/$1" "/dev/shm/$1"; do [ -e "$f" ] && echo "sees $f"; done
        echo agent > "/tmp/$2" && echo agent > "/dev/shm/$2" && echo wrote
        cat "/tmp/$2" "/dev/shm/$2"
    "#;
    let mut command = run::sandbox(&policy, &rw);
    command.args(["--", "/bin/sh", "-c", script, "sh", &theirs, &mine]);
    let out = run::run(&mut command, Stdin::Null);
    for path in &outside {
        let _ = std::fs::remove_file(path);
    }
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "wrote\nagent\nagent\n"),
        "{out:#?}"
    );
    for dir in ["/tmp", "/dev/shm"] {
        assert!(
            !Path::new(dir).join(&mine).exists(),
            "the agent's file appeared in the real {dir}"
        );
    }
}

/// The tree of [`read_only_parent_with_read_write_child_and_the_reverse`] under `root`, all
/// the agent's: `locked` with a child `open` and an empty child, `open` with a child `locked`
/// holding a file. Returns (locked, its open child, open, its locked child).
fn nested(root: &Path) -> [PathBuf; 4] {
    let locked = mkdir_for_agent(&root.join("locked"));
    let open_child = mkdir_for_agent(&locked.join("open"));
    mkdir_for_agent(&locked.join("empty"));
    let open = mkdir_for_agent(&root.join("open"));
    let locked_child = mkdir_for_agent(&open.join("locked"));
    std::fs::write(locked_child.join("keep"), "kept\n").expect("write");
    give_to_agent(&locked_child.join("keep"));
    [locked, open_child, open, locked_child]
}

#[test]
fn read_only_parent_with_read_write_child_and_the_reverse() {
    let scratch = Scratch::new("nested");
    // Every step prints what happened; the agent owns everything, so only the view decides.
    let script = r#"
        try() { if "$@" 2>/dev/null; then echo "yes: $*"; else echo "no: $*"; fi; }
        try touch "$1/new"
        try touch "$1/open/new"
        try touch "$2/new"
        try touch "$2/locked/new"
        try rm "$2/locked/keep"
        try mv "$2/locked" "$2/moved"
        try rmdir "$1/empty"
    "#;
    let outcomes = |out: &Output, [l, o]: [&Path; 2], answers: [&str; 7]| {
        let (l, o) = (l.display(), o.display());
        let steps = [
            format!("touch {l}/new"),
            format!("touch {l}/open/new"),
            format!("touch {o}/new"),
            format!("touch {o}/locked/new"),
            format!("rm {o}/locked/keep"),
            format!("mv {o}/locked {o}/moved"),
            format!("rmdir {l}/empty"),
        ];
        let expected: String = answers
            .iter()
            .zip(steps)
            .map(|(answer, step)| format!("{answer}: {step}\n"))
            .collect();
        assert_eq!(
            (out.code(), out.stdout.as_str()),
            (0, expected.as_str()),
            "{out:#?}"
        );
    };
    // Unconfined, as the agent's user on a tree of its own: every step succeeds.
    let [locked, _, open, _] = nested(&mkdir_for_agent(&scratch.join("baseline")));
    let mut baseline = Command::new("/bin/sh");
    Setup {
        as_agent: true,
        ..Setup::default()
    }
    .apply(&mut baseline);
    baseline
        .args(["-c", script, "sh"])
        .args([&locked, &open])
        .current_dir(&open);
    let out = run::run(&mut baseline, Stdin::Null);
    outcomes(&out, [&locked, &open], ["yes"; 7]);
    // Confined: the read-only ones refuse, whatever the nesting.
    let [locked, open_child, open, locked_child] = nested(&mkdir_for_agent(&scratch.join("view")));
    let policy = scratch.policy(
        &[&locked, &locked_child],
        &[&open_child, &open],
        RUN_AS_AGENT,
    );
    let out = agent(&policy, &open, script, &[&locked, &open]);
    outcomes(
        &out,
        [&locked, &open],
        ["no", "yes", "yes", "no", "no", "no", "no"],
    );
    assert!(open_child.join("new").exists() && open.join("new").exists());
    assert!(!locked.join("new").exists() && !locked_child.join("new").exists());
    assert!(locked_child.join("keep").exists() && locked.join("empty").exists());
}

#[test]
fn a_workdir_inside_a_read_only_path() {
    let scratch = Scratch::new("workdir");
    let project = mkdir_for_agent(&scratch.join("project"));
    let workdir = mkdir_for_agent(&project.join("src"));
    std::fs::write(workdir.join("main.c"), "int main;\n").expect("write");
    let policy = scratch.policy(&[&project], &[], RUN_AS_AGENT);
    let script = r#"pwd; cat main.c; touch new 2>/dev/null || echo read-only"#;
    let out = agent(&policy, &workdir, script, &[]);
    let expected = format!("{}\nint main;\nread-only\n", workdir.display());
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, expected.as_str()),
        "{out:#?}"
    );
    // Listed read-write as well (include_workdir): writable there, the rest stays read-only.
    let policy = scratch.policy(&[&project], &[&workdir], RUN_AS_AGENT);
    let script = r#"touch new && echo wrote; touch ../new 2>/dev/null || echo parent-read-only"#;
    let out = agent(&policy, &workdir, script, &[]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "wrote\nparent-read-only\n"),
        "{out:#?}"
    );
    assert!(workdir.join("new").exists() && !project.join("new").exists());
}

#[test]
fn an_unlisted_workdir_is_empty_in_the_view() {
    let scratch = Scratch::new("unlisted-workdir");
    let workdir = mkdir_for_agent(&scratch.join("elsewhere"));
    std::fs::write(workdir.join("secret"), "secret\n").expect("write");
    let policy = scratch.policy(&[], &[], RUN_AS_AGENT);
    let out = agent(
        &policy,
        &workdir,
        "pwd; ls -A; cat secret 2>&1 || true",
        &[],
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], workdir.display().to_string(), "{out:#?}");
    assert!(
        lines[1].contains("secret") && lines[1].ends_with("No such file or directory"),
        "{out:#?}"
    );
}

/// The mount points, under `dir`, of the mount namespace of `pid`.
fn mounts_under(pid: u32, dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| Path::new(mp).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// Seconds since boot, as /proc/uptime says.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    text.split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime")
}

/// When `pid` started, in seconds since boot (field 22 of /proc/PID/stat, in clock ticks).
fn started_at(pid: &Path) -> Option<f64> {
    let stat = std::fs::read_to_string(pid.join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let ticks: f64 = after_name.split(' ').nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// Pids of processes in the mount namespace `ns` (as /proc/PID/ns/mnt names it) that started
/// before `before` (seconds since boot): a namespace made later may reuse the number.
fn processes_in(ns: &str, before: f64) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l == Path::new(ns)))
        .filter(|e| started_at(&e.path()).is_some_and(|t| t <= before))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn nothing_the_view_mounts_reaches_the_pod_and_the_view_goes_with_the_agent() {
    let scratch = Scratch::new("propagation");
    let shared = mkdir_for_agent(&scratch.join("shared"));
    let inner = mkdir_for_agent(&shared.join("inner"));
    let rw = mkdir_for_agent(&scratch.join("rw"));
    // The view mounts `inner` on top of a clone of `shared`: had the clone stayed a peer of
    // the pod's mount, that mount would propagate back into the pod.
    let policy = scratch.policy(&[&shared], &[&inner, &rw], RUN_AS_AGENT);
    let script = r#"readlink /proc/self/ns/mnt > ns.tmp && mv ns.tmp ns
        while [ ! -e go ]; do sleep 0.02; done"#;
    let probe = bin("escape-probe");
    let launcher = [
        probe.as_os_str(),
        "share-mount".as_ref(),
        shared.as_os_str(),
        "--".as_ref(),
    ];
    let mut command = run::sandbox_via(&launcher, &policy, &rw);
    command
        .args(["--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The supervisor's own mount namespace stands for the pod's, with `shared` a shared mount.
    Setup {
        private_mounts: true,
        ..Setup::default()
    }
    .apply(&mut command);
    let mut running = run::start(&mut command, Stdin::Null);
    wait_until("the agent", || {
        rw.join("ns").exists() || !running.is_running()
    });
    if !rw.join("ns").exists() {
        panic!("the sandbox did not start: {:#?}", running.wait());
    }
    let pod = mounts_under(running.pid(), scratch.path());
    let ns = std::fs::read_to_string(rw.join("ns")).expect("ns");
    // Every process of this view exists by now; the namespace lives on until after "go".
    let ready = uptime();
    // While the agent waits, the same check finds the view's processes: an empty list after
    // "go" means they are gone, not that the check cannot see them.
    assert_ne!(
        processes_in(ns.trim(), ready),
        Vec::<String>::new(),
        "no process found in the agent's mount namespace {ns:?} while it runs"
    );
    std::fs::write(rw.join("go"), "").expect("go");
    let out = running.wait();
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(
        pod,
        [shared.display().to_string()],
        "only the pod's own mount"
    );
    assert_eq!(
        processes_in(ns.trim(), ready),
        Vec::<String>::new(),
        "the view outlived the agent"
    );
}

#[test]
fn check_warns_about_paths_the_agents_user_cannot_use() {
    let scratch = Scratch::new("dac");
    // A tool under a 0700 directory of root's, and a read-write directory root owns.
    let private = scratch.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let listed_private = private.join("tool");
    std::fs::create_dir(&listed_private).expect("mkdir");
    let roots = scratch.join("roots");
    std::fs::create_dir(&roots).expect("mkdir");
    let fine = mkdir_for_agent(&scratch.join("fine"));
    let policy = scratch.policy(&[&private], &[&roots, &fine], RUN_AS_AGENT);
    let mut command = Command::new(bin("openshell-sandbox"));
    command
        .arg("check")
        .arg("--policy")
        .arg(&policy)
        .arg("--workdir")
        .arg(&fine);
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!(out.code(), 0, "{out:#?}");
    let warnings: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("  warning: "))
        .collect();
    assert_eq!(
        warnings,
        [
            format!(
                "  warning: the agent (uid 65534, gid 65534) cannot read the read-only {}: it \
                 is mode 0700, owned by uid 0 gid 0",
                private.display()
            ),
            format!(
                "  warning: the agent (uid 65534, gid 65534) cannot write the read-write {}: \
                 it is mode 0755, owned by uid 0 gid 0",
                roots.display()
            ),
        ],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("result: the policy can be enforced as written here (2 warnings above)"),
        "{}",
        out.stdout
    );
    // Listed below the private directory instead: the view's own directories lead there, so
    // only the tool's own modes count, and those are fine.
    let policy = scratch.policy(&[&listed_private], &[&fine], RUN_AS_AGENT);
    let mut command = Command::new(bin("openshell-sandbox"));
    command.arg("check").arg("--policy").arg(&policy);
    let out = run::run(&mut command, Stdin::Null);
    assert!(!out.stdout.contains("warning:"), "{}", out.stdout);
}
