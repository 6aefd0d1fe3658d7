//! Real clients without proxy support through the transparent path: Node 20's built-in
//! `fetch()` (which ignores the proxy variables), a Rust program started with no proxy
//! variables at all (blocking `connect()`), and the socket state an event loop relies on:
//! a non-blocking connect completed by poll, options set before it, the peer, IPv4 and IPv6.

use std::path::Path;

use openshell_tests::fetched_from;

use crate::support::{
    EGRESS_SETTING, HOST, HOST_V6, Lab, executable, python, relayed, require_kernel, rule,
    transparent_direct, transparent_on,
};

const PORT: u16 = 9000;

#[test]
fn node_fetch_without_proxy_support_reaches_an_allowed_host_by_name() {
    if !Path::new("/usr/bin/node").exists() {
        require_kernel(false, "node (Node.js 20, the machine's own)");
        return;
    }
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let node = executable("/usr/bin/node");
    let policy = lab.policy(
        "policy.yaml",
        &rule(
            "node",
            &format!("host: api.test.example, port: {PORT}"),
            &[&node],
        ),
    );
    let script = format!(
        "fetch('http://api.test.example:{PORT}/from-node')\
           .then(async r => console.log(JSON.stringify({{status: r.status, body: await r.text()}})))\
           .catch(e => console.log(JSON.stringify({{error: String(e.cause || e)}})))"
    );
    // Handed over where the kernel can, and relayed (what a kernel without the TCP fence gets).
    for (round, setting) in ["auto", "relay"].into_iter().enumerate() {
        let sandbox = lab.sandbox(&policy).env(EGRESS_SETTING, setting);
        let run = sandbox.run(&["/usr/bin/node", "-e", &script]);
        if !transparent_on(&run, "clients without proxy support") {
            return;
        }
        let result = run.json();
        assert_eq!(result["status"], 200, "{setting}: {run}");
        assert_eq!(
            upstream.requests_on(PORT),
            vec!["GET /from-node HTTP/1.1"; round + 1]
        );
        // Not through the proxy: the transparent path allowed it, crediting node.
        let allowed = run.events("allowed", "transparent");
        assert!(
            allowed.len() == 1 && allowed[0]["exe"] == node.as_str(),
            "{setting}: {run}"
        );
        assert!(run.events("allowed", "proxy").is_empty(), "{run}");
    }
}

#[test]
fn a_rust_program_without_proxy_variables_connects_blocking() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let built = openshell_tests::bin("fetch-direct");
    let client = lab.dir().join("fetch-direct");
    std::fs::copy(&built, &client).expect("copy fetch-direct");
    let client = client.to_string_lossy().into_owned();
    let policy = lab.policy(
        "policy.yaml",
        &rule(
            "rust",
            &format!("host: api.test.example, port: {PORT}"),
            &[&client],
        ),
    );
    for (round, setting) in ["auto", "relay"].into_iter().enumerate() {
        let run = lab.sandbox(&policy).env(EGRESS_SETTING, setting).run(&[
            "/usr/bin/env",
            "-i",
            &client,
            "api.test.example",
            &PORT.to_string(),
            "/from-rust",
        ]);
        if !transparent_on(&run, "clients without proxy support") {
            return;
        }
        assert_eq!(run.code, 0, "{setting}: {run}");
        let server = format!("{HOST}:{PORT}");
        assert!(
            run.stdout
                .starts_with(&fetched_from(&server, relayed(&run))),
            "{setting}: {run}"
        );
        assert_eq!(
            upstream.requests_on(PORT),
            vec!["GET /from-rust HTTP/1.1"; round + 1]
        );
    }
}

#[test]
fn socket_state_survives_the_hand_over() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let network = [
        rule(
            "v4",
            &format!("host: \"{HOST}\", port: {PORT}"),
            &[&python()],
        ),
        rule(
            "v6",
            &format!("host: \"{HOST_V6}\", port: {PORT}"),
            &[&python()],
        ),
    ]
    .concat();
    let policy = lab.policy("policy.yaml", &network);
    let sandbox = lab.sandbox(&policy);
    for (family, host) in [("4", HOST.to_string()), ("6", HOST_V6.to_string())] {
        let run = sandbox.agent(&["fidelity", &host, &PORT.to_string(), family]);
        if !transparent_direct(&run, "the connection handed over") {
            return;
        }
        let r = run.json();
        assert_eq!(r["connect"], "EINPROGRESS", "non-blocking: {run}");
        assert_eq!(r["writable"], true, "{run}");
        assert_eq!(r["so_error"], 0, "{run}");
        assert_eq!(r["nodelay"], 1, "TCP_NODELAY set before connect: {run}");
        assert_eq!(r["keepalive"], 1, "SO_KEEPALIVE set before connect: {run}");
        assert_eq!(r["nonblocking"], true, "{run}");
        assert_eq!(r["peer"][0], host.as_str(), "getpeername: {run}");
        assert_eq!(r["peer"][1], PORT, "{run}");
        assert_eq!(r["response"]["status"], 200, "{run}");
    }
    // A connect timeout (30 s) longer than the dial takes: connected at once, not at the
    // timeout.
    let run = sandbox.agent(&[
        "direct_get",
        &HOST.to_string(),
        &PORT.to_string(),
        "/timeout",
        "30",
    ]);
    let r = run.json();
    assert_eq!(r["status"], 200, "{run}");
    assert!(r["ms"].as_f64().is_some_and(|ms| ms < 2000.0), "{run}");
    assert_eq!(upstream.requests_on(PORT).len(), 3);
}
