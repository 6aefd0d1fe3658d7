//! `protocol: tcp` endpoints: served only through the transparent path, to real clients that
//! speak no HTTP. Upstream's own fixture (transparent-tcp-redis_policy.yaml, unchanged) loads
//! and lets a redis client reach the redis server named in it, while the same destination
//! through the proxy is refused.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};

use openshell_tests::wait_until;

use crate::fixtures::fixture;
use crate::support::{
    HOST, HOST_PRIVATE, Lab, NAMESERVER, Nameserver, Side, require_kernel, transparent_on,
};

/// The dynamic loader under /lib (multiarch Debian).
const LOADER: &str = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

/// A server of the test host, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(lab: &Lab) -> Option<Server> {
    if !std::path::Path::new("/usr/bin/redis-server").exists() {
        require_kernel(
            false,
            "redis-server (Debian package redis-server; scripts/setup-host.sh installs it)",
        );
        return None;
    }
    let child = lab
        .net
        .command(Side::Host, "/usr/bin/redis-server")
        .args(["--port", "6379", "--bind", &HOST_PRIVATE.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let server = Server(child);
    answering(lab, (HOST_PRIVATE, 6379).into(), "redis-server");
    Some(server)
}

/// Waits until the test host's server at `address` answers from the pod.
fn answering(lab: &Lab, address: SocketAddr, server: &str) {
    wait_until(&format!("{server} to answer on {address}"), || {
        lab.net
            .enter(Side::Pod, || std::net::TcpStream::connect(address))
            .is_ok()
    });
}

fn redis_get(lab: &Lab, key: &str) -> String {
    let out = lab
        .net
        .command(Side::Pod, "/usr/bin/redis-cli")
        .args(["-h", &HOST_PRIVATE.to_string(), "GET", key])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_upstream_redis_fixture_behaves_as_written() {
    let Some(lab) = Lab::start() else { return };
    let Some(_redis) = redis_server(&lab) else {
        return;
    };
    let nameserver = Nameserver::start(&lab.net, Side::Host, IpAddr::V4(NAMESERVER));
    nameserver.set("redis.openshell.demo", &[IpAddr::V4(HOST_PRIVATE)]);
    let policy = fixture("transparent-tcp-redis_policy.yaml");
    // The fixture lists /lib but not /lib64, where Debian's binaries name their loader: the
    // loader is started by its /lib path, with redis-cli as its argument.
    let run = lab.sandbox(&policy).run(&[
        LOADER,
        "/usr/bin/redis-cli",
        "-h",
        "redis.openshell.demo",
        "-p",
        "6379",
        "SET",
        "written-by",
        "the-sandbox",
    ]);
    if !transparent_on(&run, "protocol: tcp") {
        return;
    }
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.stdout.trim(), "OK", "{run}");
    assert_eq!(redis_get(&lab, "written-by"), "the-sandbox");
    let allowed = run.events("allowed", "transparent");
    assert!(
        allowed.len() == 1 && allowed[0]["rule"] == "redis-native-tcp",
        "{run}"
    );
    // Through the proxy the same destination is refused: protocol: tcp is direct-only.
    let run = lab.sandbox(&policy).run(&[
        LOADER,
        "/usr/bin/python3",
        "agent.py",
        "batch",
        r#"[{"mode": "connect", "host": "redis.openshell.demo", "port": 6379, "path": "/"}]"#,
    ]);
    let response = &run.json()[0];
    assert_eq!(response["status"], 403, "{run}");
    assert!(
        response["body"]
            .as_str()
            .is_some_and(|b| b.contains("reachable only by connecting to it directly")),
        "{run}"
    );
}

/// An sshd on the test host (key login as root, on HOST:2222), with a bare git repository;
/// `None` after saying why when openssh-server is not installed.
fn sshd(lab: &Lab) -> Option<(Server, String)> {
    if !std::path::Path::new("/usr/sbin/sshd").exists() {
        require_kernel(
            false,
            "sshd (Debian package openssh-server; scripts/setup-host.sh installs it)",
        );
        return None;
    }
    let dir = lab.dir();
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .expect(program);
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    };
    let (host_key, key) = (dir.join("host_key"), dir.join("client_key"));
    for path in [&host_key, &key] {
        run(
            "/usr/bin/ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &path.to_string_lossy(),
            ],
        );
    }
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("keys");
    // The client runs as nobody, and ssh wants its key private to its user.
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).expect("chown key");
    run(
        "/usr/bin/git",
        &[
            "init",
            "-q",
            "--bare",
            &dir.join("repo.git").to_string_lossy(),
        ],
    );
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let config = lab.write(
        "sshd_config",
        &format!(
            "ListenAddress {HOST}:2222\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile none\n",
            host_key.display(),
            dir.join("authorized_keys").display()
        ),
    );
    let child = lab
        .net
        .command(Side::Host, "/usr/sbin/sshd")
        .args(["-D", "-e", "-f", &config.to_string_lossy()])
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd");
    let server = Server(child);
    answering(lab, (HOST, 2222).into(), "sshd");
    let ssh = format!(
        "/usr/bin/ssh -F /dev/null -i {} -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        key.display()
    );
    Some((server, ssh))
}

#[test]
fn ssh_and_git_over_ssh_through_a_protocol_tcp_endpoint() {
    let Some(lab) = Lab::start() else { return };
    let Some((_sshd, ssh)) = sshd(&lab) else {
        return;
    };
    let nameserver = Nameserver::start(&lab.net, Side::Host, IpAddr::V4(NAMESERVER));
    nameserver.set("git.test.example", &[IpAddr::V4(HOST)]);
    let ssh_exe = std::fs::canonicalize("/usr/bin/ssh")
        .expect("ssh")
        .to_string_lossy()
        .into_owned();
    let policy = lab.policy(
        "policy.yaml",
        &crate::support::rule(
            "git_ssh",
            "host: git.test.example, port: 2222, protocol: tcp",
            &[&ssh_exe],
        ),
    );
    let repo = lab.dir().join("repo.git");
    let script = format!(
        "{ssh} -p 2222 root@git.test.example echo hello-from-sshd && \
         GIT_SSH_COMMAND='{ssh}' git ls-remote ssh://root@git.test.example:2222{} && echo ls-remote-ok && \
         {ssh} -p 22 root@git.test.example true; echo \"port 22: $?\"",
        repo.display()
    );
    let run = lab.sandbox(&policy).run(&["/bin/sh", "-c", &script]);
    if !transparent_on(&run, "protocol: tcp") {
        return;
    }
    assert!(run.stdout.contains("hello-from-sshd"), "{run}");
    assert!(run.stdout.contains("ls-remote-ok"), "{run}");
    assert!(
        run.stdout.contains("port 22: 255"),
        "another port is refused: {run}"
    );
    let allowed = run.events("allowed", "transparent");
    assert!(
        allowed.len() == 2 && allowed.iter().all(|l| l["exe"] == ssh_exe.as_str()),
        "{run}"
    );
    assert_eq!(run.events("denied", "network").len(), 1, "{run}");
}
