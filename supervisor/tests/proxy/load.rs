//! Load and abuse: a thousand concurrent tunnels, slowloris clients, a supervisor out of file
//! descriptors, clients that give up, a connection cap. In each the proxy must keep serving
//! well-behaved clients, and say what happened truthfully.

use serde_json::Value;

use crate::support::{Lab, python, rule};

const PORT: u16 = 8080;

fn lab_with_rule() -> Option<(Lab, std::path::PathBuf)> {
    let lab = Lab::start()?;
    let endpoint = format!("host: api.test.example, port: {PORT}");
    let policy = lab.policy("policy.yaml", &rule("web", &endpoint, &[&python()]));
    Some((lab, policy))
}

fn seconds(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// 1,000 CONNECT tunnels opened at once by one asyncio client, all held open together, then a
/// request through each: every one is served, decided and logged.
#[test]
fn a_thousand_concurrent_tunnels() {
    const CLIENTS: usize = 1000;
    let Some((lab, policy)) = lab_with_rule() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let run = lab.sandbox(&policy).agent(&[
        "flood",
        &CLIENTS.to_string(),
        "api.test.example",
        &PORT.to_string(),
    ]);
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    assert_eq!(result["opened_at_once"], CLIENTS, "{result}");
    assert_eq!(result["served"], CLIENTS, "{result}");
    let mut paths = upstream.requests_on(PORT);
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), CLIENTS, "distinct requests the test host saw");
    assert_eq!(run.events("allowed", "proxy").len(), CLIENTS);
    eprintln!(
        "{CLIENTS} tunnels opened in {:.2} s, all served in {:.2} s",
        seconds(&result["open_seconds"]),
        seconds(&result["seconds"])
    );
}

/// Clients dribbling a request head that never ends get 408 once the header timeout expires,
/// silent ones are closed, and meanwhile other clients are served at normal speed.
#[test]
fn slowloris_clients_time_out_while_others_are_served() {
    const TIMEOUT: f64 = 1.0;
    let Some((lab, policy)) = lab_with_rule() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let run = lab
        .sandbox(&policy)
        .env("OPENSHELL_PROXY_HEADER_TIMEOUT", "1")
        .agent(&[
            "slowloris",
            "20",
            "5",
            "10",
            "api.test.example",
            &PORT.to_string(),
        ]);
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    let list = |key: &str| result[key].as_array().cloned().unwrap_or_default();
    let timely = |client: &Value| {
        let t = seconds(&client["closed_after"]);
        (TIMEOUT..TIMEOUT + 2.0).contains(&t)
    };
    for slow in list("slow") {
        let answer = slow["answer"].as_str().unwrap_or_default();
        let body: Value = answer
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or(Value::Null);
        assert!(
            answer.starts_with("HTTP/1.1 408 ") && body["error"] == "bad_request",
            "{slow}\n{run}"
        );
        assert!(timely(&slow), "closed at the header timeout: {slow}");
        assert!(
            slow["sent"].as_u64().unwrap_or(0) > 10,
            "it kept dribbling: {slow}"
        );
    }
    for silent in list("silent") {
        assert_eq!(silent["answer"], "", "closed without a word: {silent}");
        assert!(timely(&silent), "closed at the header timeout: {silent}");
    }
    let normal = list("normal");
    assert_eq!(normal.len(), 10);
    for response in &normal {
        assert_eq!(response["status"], 200, "{response}\n{run}");
        assert!(
            seconds(&response["seconds"]) < 0.5,
            "served slowly: {response}"
        );
    }
    let during = normal
        .iter()
        .filter(|r| r["while_slow_pending"] == true)
        .count();
    assert!(
        during >= 5,
        "most normal requests ran while slow clients waited: {during}"
    );
    let mut seen = upstream.requests_on(PORT);
    seen.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("GET /normal/{i} HTTP/1.1"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "only the normal requests went upstream");
}

/// Out of file descriptors (RLIMIT_NOFILE 64 for the supervisor; each tunnel costs it six:
/// two sockets and two splice pipes, and the agent opens 40 at once and holds them), the proxy
/// answers what it cannot serve as an overload, never as a policy denial, announces only
/// tunnels that work, logs the condition, keeps running, and serves again as soon as the
/// tunnels close.
#[test]
fn fd_exhaustion_is_survived() {
    let Some((lab, policy)) = lab_with_rule() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let run = lab.sandbox(&policy).nofile(64).agent(&[
        "exhaust",
        "40",
        "api.test.example",
        &PORT.to_string(),
        "2",
    ]);
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    let served = result["tunnels"]["served"].as_u64().unwrap_or(0);
    assert!(served < 40, "the limit was never reached: {result}");
    assert_eq!(
        result["tunnels"]["dead"], 0,
        "a 200 for a tunnel that died: {result}"
    );
    assert_eq!(
        result["unanswered"], 0,
        "queued CONNECTs answered once fds were free: {result}"
    );
    let answers = result["answers"].as_object().cloned().unwrap_or_default();
    assert!(
        answers.contains_key("503 proxy_overloaded"),
        "overload answered as such: {result}"
    );
    // Out of descriptors for the upstream socket, the dial reports the errno as unreachable.
    let expected = ["200", "503 proxy_overloaded", "502 upstream_unreachable"];
    assert!(
        answers.keys().all(|a| expected.contains(&a.as_str())),
        "{result}"
    );
    assert!(
        run.events("denied", "proxy").is_empty(),
        "exhaustion logged as policy denials: {run}"
    );
    assert!(
        !run.messages("Too many open files").is_empty(),
        "the proxy logs the exhaustion: {run}"
    );
    assert_eq!(result["after"]["status"], 200, "served again: {run}");
    assert_eq!(result["after"]["tunnel"], true, "{run}");
    let seen = upstream.requests_on(PORT);
    assert_eq!(seen.last().map(String::as_str), Some("GET /after HTTP/1.1"));
}

/// A client that sends a request and closes its connection before the proxy has identified
/// it is not a policy denial: nobody waits for the answer, and a "pid 0, ?" denial would be
/// noise in the security log (the kernel reports such a socket orphaned, or gone). Clients
/// give up like this under load, or when the proxy is slow to accept.
#[test]
fn an_abandoned_request_is_not_logged_as_a_denial() {
    let Some((lab, policy)) = lab_with_rule() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let run = lab
        .sandbox(&policy)
        .agent(&["abandon", "20", "api.test.example", &PORT.to_string()]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.json()["after"]["status"], 200, "{run}");
    assert_eq!(
        upstream.requests_on(PORT),
        ["GET /after HTTP/1.1"],
        "no abandoned request sent anything upstream"
    );
    let denials = run.events("denied", "proxy");
    assert!(
        denials.is_empty(),
        "{} abandoned requests logged as denials, e.g. {:#}",
        denials.len(),
        denials[0]
    );
}

/// With a cap of one connection, clients are served one after another. (A permit taken
/// before accepting on each listener once let the idle [::1] listener hold the only permit,
/// and IPv4 clients waited forever.)
#[test]
fn a_connection_cap_of_one_serves_clients_in_turn() {
    let Some((lab, policy)) = lab_with_rule() else {
        return;
    };
    let upstream = lab.upstream(&[PORT]);
    let requests: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::json!({"mode": "connect", "host": "api.test.example", "port": PORT,
                "path": format!("/turn/{i}"), "timeout": 3})
        })
        .collect();
    let run = lab
        .sandbox(&policy)
        .env("OPENSHELL_PROXY_MAX_CONNECTIONS", "1")
        .agent(&["batch", &Value::from(requests).to_string()]);
    assert_eq!(run.code, 0, "{run}");
    let statuses: Vec<Value> = run
        .json()
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [200, 200, 200], "{run}");
    assert_eq!(upstream.requests_on(PORT).len(), 3);
}
