//! `protocol: tcp` endpoints: served only through the transparent path, to real clients that
//! speak no HTTP. Upstream's own fixture (transparent-tcp-redis_policy.yaml, unchanged) loads
//! and lets a redis client reach the redis server named in it, while the same destination
//! through the proxy is refused.

use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures::fixture;
use crate::support::{HOST_PRIVATE, Lab, NAMESERVER, Nameserver, Side, require_kernel};

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
        require_kernel(false, "redis-server (Debian package redis-server; scripts/setup-host.sh installs it)");
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
    // Ready when it answers from the pod.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab
        .net
        .enter(Side::Pod, || std::net::TcpStream::connect((HOST_PRIVATE, 6379)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
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
    let Some(_redis) = redis_server(&lab) else { return };
    let nameserver = Nameserver::start(&lab.net, Side::Host, IpAddr::V4(NAMESERVER));
    nameserver.set("redis.openshell.demo", &[IpAddr::V4(HOST_PRIVATE)]);
    let policy = fixture("transparent-tcp-redis_policy.yaml");
    let run = lab.sandbox(&policy).run(&[
        "/usr/bin/redis-cli",
        "-h",
        "redis.openshell.demo",
        "-p",
        "6379",
        "SET",
        "written-by",
        "the-sandbox",
    ]);
    if !require_kernel(
        run.messages("TRANSPARENT EGRESS OFF").is_empty() && run.code != 125,
        "transparent egress (protocol: tcp)",
    ) {
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
    let run = lab.sandbox(&policy).agent(&[
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
