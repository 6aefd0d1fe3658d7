//! The proxy's memory budget against an agent that makes the supervisor hold its bytes: a head
//! must be held until it ends, so thousands of connections each sending most of a request head
//! that never ends once grew the supervisor past 300 MB and kept a well-behaved client waiting
//! for seconds. Now what the proxy buffers is bounded by its budget: the newest connections
//! over it are answered 503 and closed, the supervisor's resident set stays bounded, and both
//! a client connected before the flood and one connecting during it are served at once.

use serde_json::Value;

use crate::support::echo::Identity;
use crate::support::{Lab, Run, python, rule};

const PORT: u16 = 8080;
/// Connections flooding the proxy with heads, and the bytes of head each sends.
const FLOOD: usize = 4000;
const HEAD: usize = 60 * 1024;
/// The budget the tests set (the default depends on the machine's memory cgroup), and the
/// most the supervisor may grow to with it: the budget, each flooding connection's floor and
/// task, and the supervisor's own few MiB. Unbounded, it grew past 380 MiB.
const BUDGET_VAR: &str = "OPENSHELL_PROXY_BUFFER_BUDGET_MIB";
const BUDGET_MIB: &str = "32";
const MOST_RSS_MIB: u64 = 96;

fn seconds(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// What the flood's connections got: how many were answered with `status`, and how many
/// ended otherwise than held or answered so.
fn ended(result: &Value, status: &str) -> (u64, Vec<String>) {
    let states = result["states"].as_object().cloned().unwrap_or_default();
    let answered = states
        .iter()
        .filter(|(state, _)| state.starts_with(&format!("answered HTTP/1.1 {status} ")))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let other = states
        .keys()
        .filter(|s| *s != "held" && !s.starts_with(&format!("answered HTTP/1.1 {status} ")))
        .cloned()
        .collect();
    (answered, other)
}

fn report(what: &str, run: &Run) {
    let result = run.json();
    eprintln!(
        "{what}: supervisor peak RSS {} MiB; flood sent in {:.2} s; old client {:.3} s, new \
         client {:.3} s ({:.3} s with its connection); states {}",
        run.peak_rss_kib.unwrap_or(0) / 1024,
        seconds(&result["flood_seconds"]),
        seconds(&result["old"]["during"]["seconds"]),
        seconds(&result["new"]["seconds"]),
        seconds(&result["new"]["seconds_with_connect"]),
        result["states"]
    );
}

/// 4,000 connections each send 60 KB of a forward-proxy request head that never ends, and
/// hold. The supervisor stays small, refuses the newest heads with 503, and serves a client
/// that was there before and one that connects during the flood at once.
#[test]
fn unterminated_heads_cannot_grow_the_supervisor() {
    let Some(lab) = Lab::start() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let endpoint = format!("host: api.test.example, port: {PORT}");
    let policy = lab.policy("policy.yaml", &rule("web", &endpoint, &[&python()]));
    let run = lab.sandbox(&policy).env(BUDGET_VAR, BUDGET_MIB).agent(&[
        "heads",
        &FLOOD.to_string(),
        &HEAD.to_string(),
        "api.test.example",
        &PORT.to_string(),
        "plain",
    ]);
    assert_eq!(run.code, 0, "{run}");
    report("plain heads", &run);
    let result = run.json();
    let peak_mib = run.peak_rss_kib.expect("the supervisor's peak RSS") / 1024;
    assert!(
        peak_mib < MOST_RSS_MIB,
        "the supervisor grew to {peak_mib} MiB"
    );
    assert!(!run.events("over_budget", "proxy").is_empty(), "{run}");
    for client in [&result["old"]["during"], &result["new"]] {
        assert_eq!(client["status"], 200, "{result}");
        assert!(seconds(&client["seconds"]) < 0.5, "served slowly: {result}");
    }
    let (refused, other) = ended(&result, "503");
    assert!(refused > 0, "nothing was refused: {result}");
    assert!(other.is_empty(), "{other:?}: {result}");
    let seen = upstream.requests_on(PORT);
    assert!(
        seen.iter().all(|r| !r.contains("/flood")),
        "no flood request reached the server: {seen:?}"
    );
}

/// The same through L7 inspection: 1,000 TLS tunnels to an inspected endpoint, each sending
/// 60 KB of a request head that never ends inside its TLS session (held by the proxy with the
/// session's state). The supervisor stays small, the newest are refused (503 inside TLS, or
/// closed before their handshake), and the client that was there before the flood is served at
/// once through its tunnel. A client that connects during the flood is the newest: refused at
/// once, never left waiting.
#[test]
fn unterminated_heads_over_tls_cannot_grow_the_supervisor() {
    const TLS_PORT: u16 = 8443;
    const FLOOD_TLS: usize = 1000;
    let Some(lab) = Lab::start() else {
        return;
    };
    let host = lab.echo(&Identity::new(), &[TLS_PORT], &[], None);
    let endpoint = format!(
        "host: api.test.example, port: {TLS_PORT}, protocol: rest, \
         rules: [{{ allow: {{ method: GET, path: \"/**\" }} }}]"
    );
    let policy = lab.policy("policy.yaml", &rule("api", &endpoint, &[&python()]));
    let ca = lab.dir().join("upstream-ca.pem");
    let run = lab
        .sandbox(&policy)
        .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
        .env(BUDGET_VAR, BUDGET_MIB)
        .agent(&[
            "heads",
            &FLOOD_TLS.to_string(),
            &HEAD.to_string(),
            "api.test.example",
            &TLS_PORT.to_string(),
            "tls",
        ]);
    assert_eq!(run.code, 0, "{run}");
    report("heads over TLS", &run);
    let result = run.json();
    let peak_mib = run.peak_rss_kib.expect("the supervisor's peak RSS") / 1024;
    assert!(
        peak_mib < MOST_RSS_MIB,
        "the supervisor grew to {peak_mib} MiB"
    );
    assert!(!run.events("over_budget", "proxy").is_empty(), "{run}");
    let old = &result["old"]["during"];
    assert_eq!(old["status"], 200, "{result}");
    assert!(seconds(&old["seconds"]) < 0.5, "served slowly: {result}");
    assert!(
        seconds(&result["new"]["seconds_with_connect"]) < 0.5,
        "a new client was left waiting: {result}"
    );
    // Refused with a 503 inside TLS, or closed before it (the client then sees its TLS
    // handshake reset, or its head's write fail).
    let (refused, other) = ended(&result, "503");
    assert!(refused > 0, "nothing was refused: {result}");
    let closed = |s: &String| {
        s == "closed"
            || s.starts_with("failed while connecting: ConnectionReset")
            || s.starts_with("failed while held: BrokenPipe")
            || s.starts_with("failed while held: ConnectionReset")
    };
    assert!(other.iter().all(closed), "{other:?}: {result}");
    let lines = host.lines(TLS_PORT);
    assert!(
        lines.iter().all(|r| !r.contains("/flood")),
        "no flood request reached the server: {lines:?}"
    );
    assert!(lines.iter().any(|r| r.contains("/old/during")), "{lines:?}");
}
