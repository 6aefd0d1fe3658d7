//! The proxy's memory budget against an agent that makes the supervisor hold its bytes: a head
//! must be held until it ends, so 4,000 connections each sending 60 KB of a request head that
//! never ends grew the supervisor past 380 MiB and kept a well-behaved client waiting for
//! seconds (in a small pod's memory cgroup, the OOM killer struck). Now what the proxy buffers
//! is bounded by its budget: the newest connections over it are answered 503 (or closed) and
//! let go, the supervisor's resident set stays bounded, and the clients that were there before
//! the flood (and, on the plain path, one connecting during it) are served at once.

use openshell_tests::cgroup::Cgroup;
use serde_json::Value;

use crate::support::echo::Identity;
use crate::support::{Lab, Run, python, rule};

const PORT: u16 = 8080;
const TLS_PORT: u16 = 8443;
/// Connections flooding the proxy with heads, and the bytes of head each sends.
const FLOOD: usize = 4000;
const HEAD: usize = 60 * 1024;
/// The budget the tests set (the default depends on the machine's memory cgroup), and the
/// most the supervisor may grow to with it: the budget (32), each flooding connection's floor
/// and task (the connection cap bounds the floors to 16), the allocator's slack from heads
/// grown side by side, and the supervisor's own few MiB (a debug build). Measured 79-106 MiB
/// depending on how fast the flood arrives; unbounded, it grew past 380 MiB.
const BUDGET_VAR: &str = "OPENSHELL_PROXY_BUFFER_BUDGET_MIB";
const BUDGET_MIB: &str = "32";
const MOST_RSS_MIB: u64 = 128;

fn seconds(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// How a flooding connection that was let go may end on the client's side: answered 503, or
/// closed under it (before its TLS handshake, or while it was still sending, after the 503).
fn let_go(state: &str) -> bool {
    state.starts_with("answered HTTP/1.1 503 ")
        || state == "closed"
        || ["connecting", "sending", "held"].iter().any(|phase| {
            state == format!("failed while {phase}: ConnectionResetError")
                || state == format!("failed while {phase}: BrokenPipeError")
        })
}

/// The flood's connections answered 503, and the states that are neither held nor let go.
fn outcome(result: &Value) -> (u64, Vec<String>) {
    let states = result["states"].as_object().cloned().unwrap_or_default();
    let refused = states
        .iter()
        .filter(|(state, _)| state.starts_with("answered HTTP/1.1 503 "))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let other = states
        .keys()
        .filter(|s| *s != "held" && !let_go(s))
        .cloned()
        .collect();
    (refused, other)
}

fn report(what: &str, run: &Run, result: &Value) {
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

/// What every flood must come to: the supervisor stayed small and said why it refused, the
/// newest were let go, and the client that was there first was served at once.
fn assert_bounded(run: &Run, result: &Value) {
    let peak_mib = run.peak_rss_kib.expect("the supervisor's peak RSS") / 1024;
    assert!(
        peak_mib < MOST_RSS_MIB,
        "the supervisor grew to {peak_mib} MiB"
    );
    assert!(!run.events("over_budget", "proxy").is_empty(), "{run}");
    let (refused, other) = outcome(result);
    assert!(refused > 0, "nothing was refused: {result}");
    assert!(other.is_empty(), "{other:?}: {result}");
    let old = &result["old"]["during"];
    assert_eq!(old["status"], 200, "{result}");
    assert!(seconds(&old["seconds"]) < 0.5, "served slowly: {result}");
}

/// Of the request lines the server received, no flood request; and the server did record
/// what it received: the client that was there before the flood got through.
fn assert_no_flood_arrived(lines: &[String]) {
    assert!(
        lines.iter().all(|r| !r.contains("/flood")),
        "no flood request reached the server: {lines:?}"
    );
    assert!(lines.iter().any(|r| r.contains("/old/during")), "{lines:?}");
}

fn plain_lab() -> Option<(Lab, std::path::PathBuf)> {
    let lab = Lab::start()?;
    let endpoint = format!("host: api.test.example, port: {PORT}");
    let policy = lab.policy("policy.yaml", &rule("web", &endpoint, &[&python()]));
    Some((lab, policy))
}

fn flood_args(command: &'static str, port: u16, mode: &'static str) -> Vec<String> {
    let args = [
        command,
        &FLOOD.to_string(),
        &HEAD.to_string(),
        "api.test.example",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend([port.to_string(), mode.to_owned()]);
    args
}

fn agent(sandbox: &crate::support::Sandbox<'_>, args: &[String]) -> Run {
    sandbox.agent(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// 4,000 connections each send 60 KB of a forward-proxy request head that never ends, and
/// hold. The supervisor stays small, refuses the newest heads with 503, and serves a client
/// that was there before and one that connects during the flood at once; no flooding request
/// reaches the server.
#[test]
fn unterminated_heads_cannot_grow_the_supervisor() {
    let Some((lab, policy)) = plain_lab() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let sandbox = lab.sandbox(&policy).env(BUDGET_VAR, BUDGET_MIB);
    let run = agent(&sandbox, &flood_args("heads", PORT, "plain"));
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    report("plain heads", &run, &result);
    assert_bounded(&run, &result);
    let new = &result["new"];
    assert_eq!(new["status"], 200, "{result}");
    assert!(seconds(&new["seconds_with_connect"]) < 0.5, "{result}");
    assert_no_flood_arrived(&upstream.requests_on(PORT));
}

/// The same through L7 inspection: 1,000 TLS tunnels to an inspected endpoint, each sending
/// 60 KB of a request head that never ends inside its TLS session (held by the proxy with the
/// session's state). The supervisor stays small, the newest are refused (503 inside TLS, or
/// closed before their handshake), and the client that was there before the flood is served at
/// once through its tunnel. A client that connects during the flood is the newest: refused at
/// once, never left waiting.
#[test]
fn unterminated_heads_over_tls_cannot_grow_the_supervisor() {
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
    let sandbox = lab
        .sandbox(&policy)
        .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
        .env(BUDGET_VAR, BUDGET_MIB);
    let mut args = flood_args("heads", TLS_PORT, "tls");
    args[1] = "1000".to_owned();
    let run = agent(&sandbox, &args);
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    report("heads over TLS", &run, &result);
    assert_bounded(&run, &result);
    assert!(
        seconds(&result["new"]["seconds_with_connect"]) < 0.5,
        "a new client was left waiting: {result}"
    );
    assert_no_flood_arrived(&host.lines(TLS_PORT));
}

/// In a memory cgroup of 200 MiB (a small pod; the supervisor's default budget is then an
/// eighth of it, 25 MiB), the agent floods the proxy as above. Unbounded, the supervisor's
/// buffers alone filled the cgroup and the OOM killer struck in the middle of the flood (once,
/// before the agent volunteered as its first choice, it took the supervisor). Now the flood is
/// refused within the budget, nothing is killed for it, and the well-behaved clients are
/// served. When the agent's own memory then fills the cgroup, the OOM killer takes the agent,
/// and the supervisor says so and exits 137.
#[test]
fn the_agent_not_the_supervisor_pays_for_a_flood() {
    let Some(cgroup) = Cgroup::memory("budget", 200) else {
        return;
    };
    let Some((lab, policy)) = plain_lab() else {
        return;
    };
    let _upstream = lab.upstream(&[PORT]);
    let sandbox = lab.sandbox(&policy).cgroup(&cgroup);
    let run = agent(&sandbox, &flood_args("heads_then_hog", PORT, "plain"));
    eprintln!(
        "in a 200 MiB cgroup: supervisor peak RSS {} MiB, the cgroup's peak {} MiB",
        run.peak_rss_kib.unwrap_or(0) / 1024,
        cgroup.peak_memory() >> 20
    );
    let lines = run.json_lines();
    let flood = lines
        .first()
        .filter(|l| l.get("states").is_some())
        .unwrap_or_else(|| panic!("the agent was killed during the flood: {run}"));
    assert!(
        run.log.iter().any(|l| l["buffer_budget_mib"] == 25),
        "the default budget is an eighth of the cgroup's limit: {run}"
    );
    report("heads in a 200 MiB cgroup", &run, flood);
    assert_bounded(&run, flood);
    assert_eq!(flood["new"]["status"], 200, "{flood}");
    // Then the agent's own memory grew, and the agent is what was killed.
    let hogged = lines
        .last()
        .map_or(0, |l| l["hogged_mib"].as_u64().unwrap_or(0));
    assert!(hogged > 0, "{run}");
    assert!(lines.iter().all(|l| l.get("not_killed").is_none()), "{run}");
    assert_eq!(run.code, 128 + libc::SIGKILL, "{run}");
    assert!(run.log.iter().any(|l| l["event"] == "oom_kill"), "{run}");
    assert_eq!(
        run.log.last().map(|l| &l["event"]),
        Some(&Value::from("oom_killed")),
        "the final status line is the last one: {run}"
    );
}
