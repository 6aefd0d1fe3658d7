//! The proxy's memory budget against an agent that makes the supervisor hold its bytes: a head
//! must be held until it ends, so thousands of connections each sending most of a request head
//! that never ends once grew the supervisor past 300 MB and kept a well-behaved client waiting
//! for seconds. Now what the proxy buffers is bounded by its budget: the newest connections
//! over it are answered 503 and closed, the supervisor's resident set stays bounded, and both
//! a client connected before the flood and one connecting during it are served at once.

use serde_json::Value;

use crate::support::{Lab, Run, python, rule};

const PORT: u16 = 8080;
/// Connections flooding the proxy with heads, and the bytes of head each sends.
const FLOOD: usize = 4000;
const HEAD: usize = 60 * 1024;

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
    let run = lab.sandbox(&policy).env("MALLOC_ARENA_MAX", &std::env::var("ARENAS").unwrap_or("8".into())).env("OPENSHELL_PROXY_BUFFER_BUDGET_MIB", &std::env::var("BUDGET_MIB").unwrap_or("64".into())).agent(&[
        "heads",
        &FLOOD.to_string(),
        &std::env::var("HEAD").unwrap_or(HEAD.to_string()),
        "api.test.example",
        &PORT.to_string(),
        "plain",
    ]);
    assert_eq!(run.code, 0, "{run}");
    report("plain heads", &run);
    let result = run.json();
    let peak_mib = run.peak_rss_kib.expect("the supervisor's peak RSS") / 1024;
    assert!(peak_mib < 128, "the supervisor grew to {peak_mib} MiB");
    for client in [&result["old"]["during"], &result["new"]] {
        assert_eq!(client["status"], 200, "{result}");
        assert!(seconds(&client["seconds"]) < 1.0, "served slowly: {result}");
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
