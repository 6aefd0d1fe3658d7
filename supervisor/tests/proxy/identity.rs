//! Identity at the system call: the two attacks of issue 10, each after its baseline.
//!
//! - Re-parenting: a process forks, then execs an allowed binary; its child makes a sibling
//!   with `clone(CLONE_PARENT)` (or the parent became a subreaper before its exec and adopts
//!   an orphaned grandchild), so that an unallowed `curl` appears as a child the allowed
//!   program started. Refused at the call (EPERM, logged); the server sees nothing.
//! - Socket lending: an unallowed process connects to the proxy, parks the socket in an
//!   SCM_RIGHTS message while an allowed binary that inherited it sends the CONNECT (or only
//!   uncorks the one the lender wrote with TCP_CORK), then takes it back. The proxy credits the
//!   process that connected the socket, so the CONNECT is refused and logged as its.

use std::path::{Path, PathBuf};

use crate::support::{EGRESS_SETTING, Lab, Upstream, python, rule, transparent_on};

const PORT: u16 = 9000;

/// A copy of `program` in the lab's `bin/` (an allowed binary no test tool shares).
fn copy(lab: &Lab, program: &str, name: &str) -> String {
    let bin = lab.dir().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let to = bin.join(name);
    std::fs::copy(program, &to).expect("copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to.to_string_lossy().into_owned()
}

/// A lab whose policy lets only `name`, a copy of `program`, reach api.test.example:PORT,
/// where a server listens: the lab, the server, the copy's path and the policy; `None` when
/// the kernel lacks what the lab needs.
fn allowing_a_copy_of(program: &str, name: &str) -> Option<(Lab, Upstream, String, PathBuf)> {
    let lab = Lab::start()?;
    let upstream = lab.upstream(&[PORT]);
    let allowed = copy(&lab, program, name);
    let network = rule(
        "allowed",
        &format!("host: api.test.example, port: {PORT}"),
        &[&allowed],
    );
    let policy = lab.policy("policy.yaml", &network);
    Some((lab, upstream, allowed, policy))
}

fn curl(path: &str) -> String {
    format!(
        "/usr/bin/curl -s -o /dev/null -w '%{{http_code}}\\n' http://api.test.example:{PORT}{path}"
    )
}

#[test]
fn re_parenting_with_clone_parent_is_refused() {
    let Some((lab, upstream, allowed, policy)) = allowing_a_copy_of("/bin/sh", "allowed-sh") else {
        return;
    };
    // Unconfined, the trick works: the clone's child has this shell as its parent, not python.
    let baseline = std::process::Command::new("/bin/sh")
        .current_dir(lab.dir())
        .args([
            "-c",
            "exec /usr/bin/python3 agent.py clone_parent_exec /bin/true; echo $$",
        ])
        .output()
        .expect("baseline");
    let text = String::from_utf8_lossy(&baseline.stdout);
    let cloned: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap_or_default();
    assert!(
        cloned["ppid"].is_u64() && cloned["ppid"] == cloned["my_parent"],
        "unconfined, CLONE_PARENT re-parents: {text}"
    );
    // In the sandbox: the allowed program's own child is served (the policy does credit a
    // child the allowed program started), then the re-parented curl is refused at clone().
    let script = format!(
        "( sleep 0.3; /usr/bin/python3 agent.py clone_parent_exec /bin/sh -c \"{}\" ) &
         exec {allowed} -c '{}; sleep 1'",
        curl("/re-parented"),
        curl("/own-child")
    );
    let run = lab.sandbox(&policy).run(&["/bin/sh", "-c", &script]);
    if !transparent_on(&run, "identity recorded at connect") {
        return;
    }
    assert!(
        run.stdout.contains("200"),
        "the allowed program's own child: {run}"
    );
    assert!(
        run.stdout.contains("\"EPERM\""),
        "clone(CLONE_PARENT) refused: {run}"
    );
    assert_eq!(
        upstream.requests_on(PORT),
        ["GET /own-child HTTP/1.1"],
        "{run}"
    );
    let refused = run.events("denied", "seccomp");
    assert!(
        refused.iter().any(|l| l["what"] == "clone"
            && l["exe"] == python().as_str()
            && l["why"]
                .as_str()
                .is_some_and(|w| w.contains("CLONE_PARENT"))),
        "{run}"
    );
}

#[test]
fn re_parenting_through_a_subreaper_is_refused() {
    let Some((lab, upstream, allowed, policy)) = allowing_a_copy_of("/bin/sh", "allowed-sh") else {
        return;
    };
    // Unconfined, the trick works (the baseline): the process becomes a subreaper, execs the
    // allowed program, and adopts the grandchild orphaned meanwhile, which then has the
    // allowed program for a parent. Confined, the prctl is refused, so the orphaned curl
    // goes to the sandbox's init and nobody lends it an identity. The baseline orphans the
    // grandchild only once the shell has become the allowed program (its command line says
    // so, within 10 s): a slow start of python must not make the baseline fail.
    let baseline = std::process::Command::new("/bin/sh")
        .current_dir(lab.dir())
        .args([
            "-c",
            "( i=0; until tr '\\0' ' ' < /proc/$$/cmdline | grep -q '^/bin/sh -c echo'; do \
                 i=$((i + 1)); [ $i -gt 200 ] && break; sleep 0.05; done; \
               ( sleep 0.2; read -r _ _ _ ppid _ < /proc/self/stat; \
               echo \"orphan's parent $ppid\" ) & ) &
             exec /usr/bin/python3 agent.py subreaper_then_exec /bin/sh -c \
               'echo \"subreaper $$\"; sleep 0.8'",
        ])
        .output()
        .expect("baseline");
    let text = String::from_utf8_lossy(&baseline.stdout);
    let reaper = text.lines().find_map(|l| l.strip_prefix("subreaper "));
    let parent = text
        .lines()
        .find_map(|l| l.strip_prefix("orphan's parent "));
    assert!(
        text.contains("\"ok\"") && reaper.is_some() && reaper == parent,
        "unconfined, the subreaper (then the allowed program) adopts the orphan: {text}"
    );
    let script = format!(
        "( sleep 0.3; ( sleep 0.3; {} ) & ) &
         exec /usr/bin/python3 agent.py subreaper_then_exec {allowed} -c 'sleep 1.5'",
        curl("/orphan")
    );
    let run = lab.sandbox(&policy).run(&["/bin/sh", "-c", &script]);
    if !transparent_on(&run, "identity recorded at connect") {
        return;
    }
    assert!(run.stdout.contains("\"EPERM\""), "{run}");
    assert!(run.stdout.contains("403"), "the orphan is refused: {run}");
    assert!(upstream.requests_on(PORT).is_empty(), "{run}");
    assert!(
        run.events("denied", "seccomp")
            .iter()
            .any(|l| l["what"] == "prctl"
                && l["why"].as_str().is_some_and(|w| w.contains("subreaper"))),
        "{run}"
    );
}

#[test]
fn a_lent_socket_is_credited_to_the_process_that_connected_it() {
    let Some((lab, upstream, allowed, policy)) =
        allowing_a_copy_of(&python_binary(), "allowed-python")
    else {
        return;
    };
    let target = format!("api.test.example:{PORT}");
    // Handed over where the kernel can, and relayed, where the proxy also checks that the
    // connection comes from the recorded socket.
    let rounds = [("auto", "0"), ("auto", "1"), ("relay", "0")];
    for (setting, cork) in rounds {
        let sandbox = lab.sandbox(&policy).env(EGRESS_SETTING, setting);
        // Baseline: the allowed binary lends to itself; the tunnel works.
        let run = sandbox.run(&[&allowed, "agent.py", "lend", &allowed, &target, cork]);
        if !transparent_on(&run, "identity recorded at connect") {
            return;
        }
        let result = run.json();
        assert_eq!(
            result["connect"]["status"], 200,
            "baseline, cork={cork}: {run}"
        );
        assert_eq!(
            result["tunnel"]["status"], 200,
            "baseline, cork={cork}: {run}"
        );
        // The attack: python (not allowed) connects, the allowed copy sends (or uncorks).
        let run = sandbox.agent(&["lend", &allowed, &target, cork]);
        let result = run.json();
        assert_eq!(result["connect"]["status"], 403, "cork={cork}: {run}");
        let denied = run.events("denied", "proxy");
        assert!(
            denied.len() == 1 && denied[0]["exe"] == python().as_str(),
            "credited to the connecting process: {run}"
        );
    }
    assert_eq!(
        upstream.requests_on(PORT),
        vec!["GET /lent HTTP/1.1"; rounds.len()],
        "only the baselines' tunnels carried a request"
    );
}

/// The python interpreter's real file (a copy must be of the file, not of a symlink).
fn python_binary() -> String {
    let python = python();
    assert!(Path::new(&python).is_file(), "{python}");
    python
}
