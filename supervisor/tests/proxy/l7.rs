//! L7 inspection end to end: a TLS test host with its own CA (trusted by the supervisor
//! through `OPENSHELL_UPSTREAM_CA_FILE`) records every request it receives; the agent sends
//! raw HTTP through CONNECT tunnels, or over direct connections (the transparent path hands
//! them to the same engine). Every refusal is checked on the server's side: a denied request
//! never arrives.

use serde_json::{Value, json};

use crate::support::echo::{EchoHost, Identity};
use crate::support::{Lab, Run, curl, python, rule, transparent_on};

const TLS_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 8080;
const HOST: &str = "api.test.example";

/// `rest` rules on api.test.example: GET under /repos, POST of issues, the secret subtree
/// denied.
const RULES: &str = "protocol: rest, rules: [\
    { allow: { method: GET, path: \"/repos/**\" } }, \
    { allow: { method: POST, path: \"/repos/*/issues\" } }, \
    { allow: { method: GET, path: \"/ws\" } }, \
    { allow: { method: GET, path: \"/sse\" } }], \
    deny_rules: [{ method: \"*\", path: \"/repos/secret/**\" }]";

struct World {
    lab: Lab,
    host: EchoHost,
}

fn world(extra: &str) -> Option<World> {
    let lab = Lab::start()?;
    let identity = Identity::new();
    let host = lab.echo(&identity, &[TLS_PORT], &[PLAIN_PORT], None);
    let endpoint = format!("host: {HOST}, ports: [{TLS_PORT}, {PLAIN_PORT}], {RULES}{extra}");
    lab.policy(
        "policy.yaml",
        &rule("api", &endpoint, &[&python(), &curl()]),
    );
    Some(World { lab, host })
}

impl World {
    fn run(&self, command: &str, spec: &Value) -> Run {
        let policy = self.lab.dir().join("policy.yaml");
        let ca = self.lab.dir().join("upstream-ca.pem");
        self.lab
            .sandbox(&policy)
            .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
            .run(&["/usr/bin/python3", "l7agent.py", command, &spec.to_string()])
    }

    /// Runs the sessions `specs` (which must end well); `None` when some go `direct` and the
    /// kernel has no transparent path for them (the test then has nothing to check).
    fn sessions(&self, specs: &Value, direct: bool) -> Option<Run> {
        let run = self.run("sessions", specs);
        assert_eq!(run.code, 0, "{run}");
        if direct && !transparent_on(&run, "L7 inspection of direct connections") {
            return None;
        }
        Some(run)
    }

    /// Each request alone on its own TLS connection; the responses' statuses.
    fn singles(&self, requests: &[String]) -> (Run, Vec<Value>) {
        self.singles_via(requests, Path::Connect)
    }

    /// [`World::singles`] through the proxy or over direct connections.
    fn singles_via(&self, requests: &[String], path: Path) -> (Run, Vec<Value>) {
        let specs: Vec<Value> = requests
            .iter()
            .map(|r| json!({"host": HOST, "port": TLS_PORT, "requests": [r], "direct": path == Path::Direct}))
            .collect();
        let run = self.run("sessions", &json!(specs));
        assert_eq!(run.code, 0, "{run}");
        let results = run.json().as_array().expect("array").clone();
        (run, results)
    }
}

/// How the agent reaches the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A CONNECT tunnel through the proxy.
    Connect,
    /// A plain `connect()` to the server, with no proxy (the transparent path).
    Direct,
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}:{TLS_PORT}\r\n\r\n")
}

fn post(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: {HOST}:{TLS_PORT}\r\nContent-Length: 2\r\n\r\nhi")
}

fn status(result: &Value) -> Option<u64> {
    result["responses"][0]["status"].as_u64()
}

/// Each request on its own connection: the status it got and what the server must have
/// received for it (`None`: nothing). Every canonicalisation trick spells an allowed or a
/// denied resource differently; the server receives the canonical form or nothing.
#[test]
fn each_request_is_decided_on_its_canonical_form() {
    decided_on_the_canonical_form(Path::Connect);
}

/// The same table over direct connections (no proxy, no CONNECT): the transparent path hands
/// them to the engine, which gives the same answers, bodies and log lines.
#[test]
fn direct_connections_are_decided_like_connect_tunnels() {
    decided_on_the_canonical_form(Path::Direct);
}

fn decided_on_the_canonical_form(path: Path) {
    let Some(w) = world("") else { return };
    let cases: &[(String, u64, Option<&str>)] = &[
        (get("/repos/a"), 200, Some("GET /repos/a")),
        (get("/repos/a/./b//c"), 200, Some("GET /repos/a/b/c")),
        (get("/other/../repos/a"), 200, Some("GET /repos/a")),
        (
            get("/repos/%61/x?q=1&token=s3cret"),
            200,
            Some("GET /repos/a/x?q=1&token=s3cret"),
        ),
        (get("/repos/a;jsessionid=1/b"), 200, Some("GET /repos/a/b")),
        (post("/repos/a/issues"), 200, Some("POST /repos/a/issues")),
        (post("/repos/a"), 403, None),
        (
            format!("DELETE /repos/a HTTP/1.1\r\nHost: {HOST}:{TLS_PORT}\r\n\r\n"),
            403,
            None,
        ),
        (get("/admin"), 403, None),
        (get("/repos/secret/key"), 403, None),
        (get("/repos/%73ecret/key"), 403, None),
        (get("/repos/x/../secret/key"), 403, None),
        (get("/repos/secret;x=1/key"), 403, None),
        (get("/repos//secret/key"), 403, None),
        (get("/repos/a/..%2f..%2fsecret"), 400, None),
        (get("/%2e%2e/etc/passwd"), 400, None),
        (get("/repos/a%00b"), 400, None),
        (get("/repos/a#frag"), 400, None),
        (get("/repos/caf\u{e9}"), 400, None),
        (get(&format!("/repos/{}", "a".repeat(4090))), 400, None),
    ];
    let requests: Vec<String> = cases.iter().map(|(r, _, _)| r.clone()).collect();
    let (run, results) = w.singles_via(&requests, path);
    if path == Path::Direct && !transparent_on(&run, "L7 inspection of direct connections") {
        return;
    }
    let wrong: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter(|((_, expected, _), result)| status(result) != Some(*expected))
        .map(|((request, expected, _), result)| {
            let line = request.lines().next().unwrap_or("");
            format!(
                "{:.80} expected {expected}, got {:.300}",
                line,
                result.to_string()
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    let arrived: Vec<&str> = cases.iter().filter_map(|(_, _, line)| *line).collect();
    assert_eq!(w.host.lines(TLS_PORT), arrived, "{run}");
    // The 403 body says why, for the agent to read.
    let denied = &results[6]["responses"][0]["json"];
    assert_eq!(denied["error"], "policy_denied", "{denied}");
    assert_eq!(denied["policy"], "api");
    assert_eq!(denied["method"], "POST");
    assert_eq!(denied["path"], "/repos/a");
    assert_eq!(denied["host"], HOST);
    assert_eq!(denied["port"], TLS_PORT);
    assert_eq!(denied["layer"], "l7");
    assert!(
        denied["binary"]
            .as_str()
            .is_some_and(|b| b.contains("python")),
        "{denied}"
    );
    assert_eq!(
        denied["detail"],
        "POST /repos/a not permitted by policy api"
    );
    let by_deny_rule = &results[9]["responses"][0]["json"];
    assert_eq!(by_deny_rule["rule"], "deny_rules[0]", "{by_deny_rule}");
    assert_eq!(
        results[6]["responses"][0]["headers"]["connection"], "close",
        "{run}"
    );
    // One event per request, the path without its query (it may carry secrets).
    let allowed = run.events("allowed", "l7");
    assert_eq!(allowed.len(), 6, "{run}");
    let with_query = &allowed[3];
    assert_eq!(with_query["path"], "/repos/a/x", "{with_query}");
    assert_eq!(with_query["method"], "GET");
    assert_eq!(with_query["rule"], "rules[0]");
    assert!(with_query["pid"].as_u64().is_some() && with_query["exe"].is_string());
    let l7_lines = run.log.iter().filter(|l| l["layer"] == "l7");
    assert!(
        !l7_lines.map(Value::to_string).any(|l| l.contains("s3cret")),
        "{run}"
    );
    let denials = run.events("denied", "l7");
    assert_eq!(denials.len(), cases.len() - 6, "{run}");
    assert_eq!(denials[0]["what"], "POST /repos/a");
    assert_eq!(
        denials[0]["why"],
        "POST /repos/a not permitted by policy api"
    );
}

/// Several requests on one connection, pipelined: each is decided on its own, in order; the
/// denied one ends the connection and nothing after it is read.
#[test]
fn a_denied_request_after_allowed_ones_on_one_connection() {
    denied_after_allowed_on_one_connection(Path::Connect);
}

/// The same on one direct connection.
#[test]
fn a_denied_request_after_allowed_ones_on_one_direct_connection() {
    denied_after_allowed_on_one_connection(Path::Direct);
}

fn denied_after_allowed_on_one_connection(path: Path) {
    let Some(w) = world("") else { return };
    let requests = [
        get("/repos/1"),
        get("/repos/2"),
        post("/repos/3"),
        get("/repos/4"),
    ];
    let direct = path == Path::Direct;
    let specs = json!([
        {"host": HOST, "port": TLS_PORT, "requests": requests, "pipeline": true, "direct": direct},
        {"host": HOST, "port": TLS_PORT, "requests": [get("/repos/5"), get("/repos/6"), post("/repos/7/issues")], "direct": direct},
    ]);
    let Some(run) = w.sessions(&specs, direct) else {
        return;
    };
    let results = run.json();
    let statuses = |i: usize| -> Vec<u64> {
        results[i]["responses"]
            .as_array()
            .expect("responses")
            .iter()
            .filter_map(|r| r["status"].as_u64())
            .collect()
    };
    assert_eq!(statuses(0), [200, 200, 403], "{run}");
    assert_eq!(results[0]["closed"], true, "{run}");
    assert_eq!(statuses(1), [200, 200, 200], "{run}");
    assert_eq!(results[1]["closed"], false, "kept alive: {run}");
    assert_eq!(
        w.host.lines(TLS_PORT),
        [
            "GET /repos/1",
            "GET /repos/2",
            "GET /repos/5",
            "GET /repos/6",
            "POST /repos/7/issues"
        ],
        "{run}"
    );
}

/// Shapes that let a proxy and a server disagree on where a request ends: refused before any
/// decision, and the server sees nothing (not even the request smuggled behind).
#[test]
fn smuggling_shapes_never_reach_the_server() {
    let Some(w) = world("") else { return };
    let h = format!("Host: {HOST}:{TLS_PORT}");
    let smuggled = format!("GET /repos/secret/key HTTP/1.1\r\n{h}\r\n\r\n");
    let cases = [
        format!(
            "POST /repos/a/issues HTTP/1.1\r\n{h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /repos/a/issues HTTP/1.1\r\n{h}\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /repos/a/issues HTTP/1.1\r\n{h}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        ),
        format!("POST /repos/a/issues HTTP/1.1\r\n{h}\r\nTransfer-Encoding: identity\r\n\r\n"),
        format!("GET /repos/a HTTP/1.1\n{h}\n\n"),
        format!("GET /repos/a HTTP/1.1\r\n{h}\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"),
        format!(
            "GET /repos/a HTTP/1.1\r\n{h}\r\nConnection: Content-Length\r\nContent-Length: 44\r\n\r\n{smuggled}"
        ),
        format!(
            "GET /repos/a HTTP/1.1\r\n{h}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        ),
        format!("GET /repos/a HTTP/2.0\r\n{h}\r\n\r\n"),
        "GET /repos/a HTTP/1.1\r\n\r\n".to_owned(),
    ];
    let (run, results) = w.singles(&cases);
    for (request, result) in cases.iter().zip(&results) {
        let got = status(result);
        assert!(
            got == Some(400) || got == Some(403),
            "{request:?}: {result}\n{run}"
        );
        assert_eq!(result["closed"], true, "{request:?}: {result}");
    }
    assert_eq!(w.host.lines(TLS_PORT), Vec::<String>::new(), "{run}");
    assert_eq!(run.events("denied", "l7").len(), cases.len(), "{run}");
}

/// No domain fronting: the TLS server name and the `Host` header must both name the CONNECT
/// host; the certificate is made for that host only.
#[test]
fn sni_and_host_must_name_the_connect_host() {
    let Some(w) = world("") else { return };
    let specs = json!([
        {"host": HOST, "port": TLS_PORT, "sni": "other.example", "requests": [get("/repos/a")]},
        {"host": HOST, "port": TLS_PORT, "requests": [format!("GET /repos/a HTTP/1.1\r\nHost: other.example:{TLS_PORT}\r\n\r\n")]},
        {"host": HOST, "port": TLS_PORT, "requests": [format!("GET https://other.example:{TLS_PORT}/repos/a HTTP/1.1\r\nHost: {HOST}:{TLS_PORT}\r\n\r\n")]},
        {"host": HOST, "port": TLS_PORT, "alpn": ["h2", "http/1.1"], "requests": [get("/repos/alpn")]},
        {"host": HOST, "port": TLS_PORT, "alpn": ["h2"], "requests": ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]},
    ]);
    let run = w.run("sessions", &specs);
    assert_eq!(run.code, 0, "{run}");
    let r = run.json();
    assert!(
        r[0]["error"].is_string() || r[0]["responses"] == json!([]),
        "{run}"
    );
    assert_eq!(r[1]["responses"][0]["status"], 403, "{run}");
    assert_eq!(
        r[1]["responses"][0]["json"]["error"],
        "request_authority_mismatch"
    );
    assert_eq!(r[2]["responses"][0]["status"], 403, "{run}");
    // h2 and http/1.1 offered: http/1.1 chosen. h2 alone: no fatal alert, no ALPN, and the
    // HTTP/2 preface is then refused.
    assert_eq!(r[3]["alpn"], "http/1.1", "{run}");
    assert_eq!(r[3]["responses"][0]["status"], 200, "{run}");
    assert!(r[4]["error"].is_null(), "{run}");
    assert!(r[4]["alpn"].is_null(), "{run}");
    assert_eq!(r[4]["closed"], true, "{run}");
    assert_eq!(w.host.lines(TLS_PORT), ["GET /repos/alpn"], "{run}");
    let why: Vec<String> = run
        .events("denied", "l7")
        .iter()
        .map(|d| d["why"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        why[0].contains("TLS server name \"other.example\""),
        "{why:?}"
    );
    assert!(why.iter().any(|w| w.contains("HTTP/2")), "{why:?}");
}

/// `enforcement: audit` forwards what it would refuse, and logs it as `audited`.
#[test]
fn audit_mode_forwards_and_logs() {
    let Some(w) = world(", enforcement: audit") else {
        return;
    };
    let (run, results) = w.singles(&[post("/repos/a?x=1"), get("/repos/a")]);
    assert_eq!(status(&results[0]), Some(200), "{run}");
    assert_eq!(status(&results[1]), Some(200), "{run}");
    assert_eq!(
        w.host.lines(TLS_PORT),
        ["POST /repos/a?x=1", "GET /repos/a"]
    );
    let audited = run.events("audited", "l7");
    assert_eq!(audited.len(), 1, "{run}");
    assert_eq!(audited[0]["level"], "WARN");
    assert_eq!(audited[0]["method"], "POST");
    assert_eq!(audited[0]["path"], "/repos/a");
    assert_eq!(run.events("allowed", "l7").len(), 1, "{run}");
}

/// A websocket upgrade is allowed like the GET it is, and its frames then pass; an event
/// stream's events arrive as they are sent, across an idle gap longer than the proxy's
/// header timeout (1 s here), chunked and unframed.
#[test]
fn websockets_and_event_streams() {
    let Some(w) = world("") else { return };
    let policy = w.lab.dir().join("policy.yaml");
    let ca = w.lab.dir().join("upstream-ca.pem");
    let script = format!(
        "python3 l7agent.py websocket '{ws}' && python3 l7agent.py websocket '{denied}' && \
         python3 l7agent.py stream '{sse}' && python3 l7agent.py stream '{unframed}'",
        ws = json!({"host": HOST, "port": TLS_PORT, "path": "/ws"}),
        denied = json!({"host": HOST, "port": TLS_PORT, "path": "/chat"}),
        sse = json!({"host": HOST, "port": TLS_PORT, "path": "/sse?gap_ms=2500"}),
        unframed =
            json!({"host": HOST, "port": TLS_PORT, "path": "/sse?gap_ms=2500&framing=close"}),
    );
    let run = w
        .lab
        .sandbox(&policy)
        .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
        .env("OPENSHELL_PROXY_HEADER_TIMEOUT", "1")
        .run(&["/bin/sh", "-c", &script]);
    assert_eq!(run.code, 0, "{run}");
    let lines = run.json_lines();
    assert_eq!(lines[0]["upgrade"]["status"], 101, "{run}");
    assert_eq!(lines[0]["echoed"], true, "{run}");
    assert_eq!(lines[1]["upgrade"]["status"], 403, "{run}");
    for stream in &lines[2..4] {
        let events = stream["events"].as_array().expect("events");
        assert_eq!(events.len(), 2, "{run}");
        let first = events[0]["seconds"].as_f64().expect("seconds");
        let second = events[1]["seconds"].as_f64().expect("seconds");
        assert!(
            first < 1.5,
            "the first event waited for the second: {stream}"
        );
        assert!(second >= 2.4, "{stream}");
    }
    assert_eq!(
        w.host.lines(TLS_PORT),
        [
            "GET /ws",
            "GET /sse?gap_ms=2500",
            "GET /sse?gap_ms=2500&framing=close"
        ]
    );
}

/// Absolute-form `http://` requests through the forward proxy meet the same rules, and so
/// does plain HTTP inside a CONNECT tunnel; curl's `Expect: 100-continue` gets its interim
/// response and the final one.
#[test]
fn forward_and_plain_requests_meet_the_same_rules() {
    let Some(w) = world("") else { return };
    let policy = w.lab.dir().join("policy.yaml");
    let ca = w.lab.dir().join("upstream-ca.pem");
    let base = format!("http://{HOST}:{PLAIN_PORT}");
    std::fs::write(w.lab.dir().join("big"), vec![b'x'; 2 << 20]).expect("body");
    let script = format!(
        "curl -sS -w ' %{{http_code}}\\n' {base}/repos/a && \
         curl -sS -w ' %{{http_code}}\\n' -X DELETE {base}/repos/a && \
         curl -sS -w ' %{{http_code}}\\n' -p {base}/repos/b && \
         curl -sS -o /dev/null -w '%{{http_code}}\\n' -H 'Expect: 100-continue' --data-binary @big {base}/repos/c/issues"
    );
    let run = w
        .lab
        .sandbox(&policy)
        .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
        .run(&["/bin/sh", "-c", &script]);
    assert_eq!(run.code, 0, "{run}");
    let out: Vec<&str> = run.stdout.lines().collect();
    assert!(out[0].ends_with(" 200"), "{run}");
    assert!(
        out[1].ends_with(" 403") && out[1].contains("\"policy_denied\""),
        "{run}"
    );
    assert!(out[2].ends_with(" 200"), "{run}");
    assert_eq!(out[3], "200", "{run}");
    let received = w.host.received();
    let lines: Vec<String> = received.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        ["GET /repos/a", "GET /repos/b", "POST /repos/c/issues"],
        "{run}"
    );
    assert_eq!(received[2].body_len, 2 << 20);
}

/// A direct connection to an inspected endpoint cannot go around its rules or its name:
/// plain HTTP is decided like HTTPS; a TLS server name or `Host` naming another host that
/// resolved to the same address (here other.example, which the policy does not allow) is
/// refused; the certificate the client gets is the sandbox CA's, for the host's name. Only
/// the allowed requests arrive, each logged with the client's pid and exe.
#[test]
fn a_direct_connection_meets_the_rules_of_its_name() {
    let Some(w) = world("") else { return };
    let plain = |request: String| json!({"host": HOST, "port": PLAIN_PORT, "tls": false, "direct": true, "requests": [request]});
    let h = format!("Host: {HOST}:{PLAIN_PORT}");
    let specs = json!([
        plain(format!("GET /repos/plain HTTP/1.1\r\n{h}\r\n\r\n")),
        plain(format!("POST /repos/plain HTTP/1.1\r\n{h}\r\nContent-Length: 2\r\n\r\nhi")),
        plain(format!("GET /repos/fronted HTTP/1.1\r\nHost: other.example:{PLAIN_PORT}\r\n\r\n")),
        {"host": HOST, "port": TLS_PORT, "direct": true, "sni": "other.example", "requests": [get("/repos/fronted")]},
        {"host": HOST, "port": TLS_PORT, "direct": true, "requests": [format!("GET /repos/fronted HTTP/1.1\r\nHost: other.example:{TLS_PORT}\r\n\r\n")]},
        {"host": HOST, "port": TLS_PORT, "direct": true, "verify": "/run/openshell/tls/ca-bundle.pem", "requests": [get("/repos/verified")]},
    ]);
    let Some(run) = w.sessions(&specs, true) else {
        return;
    };
    let r = run.json();
    assert_eq!(r[0]["responses"][0]["status"], 200, "{run}");
    assert_eq!(r[1]["responses"][0]["status"], 403, "{run}");
    let body = &r[1]["responses"][0]["json"];
    assert_eq!(body["error"], "policy_denied", "{run}");
    assert_eq!(
        body["detail"],
        "POST /repos/plain not permitted by policy api"
    );
    assert_eq!(body["port"], PLAIN_PORT);
    assert_eq!(
        r[2]["responses"][0]["json"]["error"],
        "request_authority_mismatch"
    );
    assert!(
        r[3]["error"].is_string() || r[3]["responses"] == json!([]),
        "a forged TLS server name: {run}"
    );
    assert_eq!(
        r[4]["responses"][0]["json"]["error"],
        "request_authority_mismatch"
    );
    assert_eq!(
        r[5]["responses"][0]["status"], 200,
        "verified with the sandbox CA: {run}"
    );
    assert_eq!(w.host.lines(PLAIN_PORT), ["GET /repos/plain"], "{run}");
    assert_eq!(w.host.lines(TLS_PORT), ["GET /repos/verified"], "{run}");
    let allowed = run.events("allowed", "l7");
    assert_eq!(allowed.len(), 2, "{run}");
    let denied = run.events("denied", "l7");
    assert_eq!(denied.len(), 4, "{run}");
    for event in allowed.iter().chain(&denied) {
        assert_eq!(event["exe"], python().as_str(), "{event}");
        assert!(event["pid"].as_u64().is_some_and(|p| p > 1), "{event}");
    }
    assert_eq!(denied[0]["what"], "POST /repos/plain");
    assert!(
        run.events("denied", "network").is_empty(),
        "nothing refused at connect(): {run}"
    );
}

/// Names sharing an address (a CDN): the name the client gives picks the rules. An allowed
/// name without L7 rules gets a plain tunnel (the server's own certificate reaches the
/// client), the inspected one is inspected (the sandbox's certificate), a name the policy
/// does not allow and a connection naming none are refused; nothing of those arrives.
#[test]
fn names_sharing_an_address_each_keep_their_rules() {
    let Some(w) = world("") else { return };
    let network = [
        rule(
            "api",
            &format!("host: {HOST}, port: {TLS_PORT}, {RULES}"),
            &[&python()],
        ),
        rule(
            "plain",
            &format!("host: test.example, port: {TLS_PORT}"),
            &[&python()],
        ),
    ]
    .concat();
    // In place of the world's policy, which `World::run` uses.
    w.lab.policy("policy.yaml", &network);
    let upstream_ca = w.lab.dir().join("upstream-ca.pem");
    let upstream_ca = upstream_ca.to_str().expect("utf-8");
    let bundle = "/run/openshell/tls/ca-bundle.pem";
    // By address: the agent connects to 203.0.113.2, which both names (and others the policy
    // does not allow) resolved to.
    let direct = |sni: &str, verify: &str, request: String| {
        json!({"host": crate::support::HOST.to_string(), "port": TLS_PORT, "direct": true,
               "sni": sni, "verify": verify, "requests": [request]})
    };
    let plain_get = format!("GET /plain HTTP/1.1\r\nHost: test.example:{TLS_PORT}\r\n\r\n");
    let specs = json!([
        direct("test.example", upstream_ca, plain_get.clone()),
        direct(HOST, bundle, get("/repos/inspected")),
        direct(HOST, bundle, post("/repos/inspected")),
        direct("other.example", upstream_ca, plain_get.clone()),
        direct("", upstream_ca, plain_get),
    ]);
    let Some(run) = w.sessions(&specs, true) else {
        return;
    };
    let r = run.json();
    assert_eq!(r[0]["responses"][0]["status"], 200, "a plain tunnel: {run}");
    assert_eq!(r[1]["responses"][0]["status"], 200, "inspected: {run}");
    assert_eq!(r[2]["responses"][0]["status"], 403, "inspected: {run}");
    for refused in [&r[3], &r[4]] {
        assert!(
            refused["error"].is_string() || refused["responses"] == json!([]),
            "{refused}\n{run}"
        );
    }
    assert_eq!(
        w.host.lines(TLS_PORT),
        ["GET /plain", "GET /repos/inspected"],
        "{run}"
    );
    let refused: Vec<String> = run
        .events("denied", "network")
        .iter()
        .map(|d| d["why"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(refused.len(), 2, "{run}");
    assert!(refused[0].contains("\"other.example\""), "{refused:?}");
    assert!(refused[1].contains("names no server"), "{refused:?}");
    let tunnels = run.events("allowed", "transparent");
    assert!(
        tunnels.len() == 1 && tunnels[0]["host"] == "test.example",
        "{run}"
    );
}

/// The hand-off listener takes only the connections the supervisor makes for the agent's
/// calls: the agent finds it in /proc/net/tcp, and its own connection there is refused and
/// logged (a connection of its own could otherwise claim another socket's destination).
#[test]
fn the_agent_cannot_connect_to_the_handoff_listener() {
    let Some(w) = world("") else { return };
    let script = "import json, socket\n\
        found = {}\n\
        for table, family in (('/proc/net/tcp', socket.AF_INET), ('/proc/net/tcp6', socket.AF_INET6)):\n\
        \x20   for line in open(table).read().splitlines()[1:]:\n\
        \x20       local, state = line.split()[1], line.split()[3]\n\
        \x20       port = int(local.split(':')[1], 16)\n\
        \x20       if state != '0A' or port in (53, 3128):\n\
        \x20           continue\n\
        \x20       host = '127.0.0.1' if family == socket.AF_INET else '::1'\n\
        \x20       s = socket.socket(family, socket.SOCK_STREAM)\n\
        \x20       try:\n\
        \x20           s.connect((host, port))\n\
        \x20           found[f'{host}:{port}'] = 'connected'\n\
        \x20       except OSError as e:\n\
        \x20           found[f'{host}:{port}'] = e.strerror\n\
        print(json.dumps(found))\n";
    w.lab.write("probe.py", script);
    let policy = w.lab.dir().join("policy.yaml");
    let run = w
        .lab
        .sandbox(&policy)
        .run(&["/usr/bin/python3", "probe.py"]);
    assert_eq!(run.code, 0, "{run}");
    if !transparent_on(&run, "L7 inspection of direct connections") {
        return;
    }
    let found = run.json();
    let found = found.as_object().expect("listeners");
    assert!(!found.is_empty(), "the hand-off listener is listed: {run}");
    for (address, outcome) in found {
        assert_eq!(outcome, "Connection refused", "{address}: {run}");
    }
    let denied = run.events("denied", "network");
    assert_eq!(denied.len(), found.len(), "{run}");
    assert!(
        denied[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("hand-off listener")),
        "{run}"
    );
}

/// An IPv6 client socket is handed over through the IPv6 side of the hand-off listener and
/// decided the same way (the name resolves to IPv6 only): its GET arrives, its POST does not.
#[test]
fn an_ipv6_direct_connection_is_inspected_too() {
    let Some(w) = world("") else { return };
    let v6 = "v6.test.example";
    let endpoint = format!("host: {v6}, port: {PLAIN_PORT}, {RULES}");
    // In place of the world's policy, which `World::run` uses.
    w.lab
        .policy("policy.yaml", &rule("api", &endpoint, &[&python()]));
    let request = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {v6}:{PLAIN_PORT}\r\nContent-Length: 0\r\n\r\n")
    };
    let spec = |r: String| json!({"host": v6, "port": PLAIN_PORT, "tls": false, "direct": true, "requests": [r]});
    let specs = json!([
        spec(request("GET", "/repos/v6")),
        spec(request("POST", "/repos/v6")),
    ]);
    let Some(run) = w.sessions(&specs, true) else {
        return;
    };
    let r = run.json();
    assert_eq!(r[0]["responses"][0]["status"], 200, "{run}");
    assert_eq!(r[1]["responses"][0]["status"], 403, "{run}");
    let received = w.host.received();
    assert_eq!(received.len(), 1, "{run}");
    assert_eq!(received[0].line(), "GET /repos/v6");
    assert_eq!(received[0].header("host"), Some("v6.test.example:8080"));
}
