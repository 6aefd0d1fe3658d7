//! Upstream OpenShell's own policy files (tests/fixtures/upstream-policies, unchanged) behave
//! as upstream documents them: the plain L4 ones load and allow nothing beyond what they say.
//! (The `protocol: tcp` one is served: tcp_endpoints.rs; the quickstart's L7 rule:
//! l7_clients.rs.)

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{Lab, python};

/// The test host serves the fixtures' api.anthropic.com on its HTTPS port (plain HTTP inside
/// the tunnel: the proxy never looks inside).
const PORT: u16 = 443;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream-policies")
        .join(name)
}

fn read(name: &str) -> String {
    let path = fixture(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const FETCH: [&str; 2] = [
    "batch",
    r#"[{"mode": "connect", "host": "api.anthropic.com", "port": 443, "path": "/v1/messages"}]"#,
];

/// Loadable fixtures: the refusal's reason, and the note `check` prints about the file.
const LOADABLE: &[(&str, &str, &str)] = &[
    (
        "policy-advisor_sandbox-policy.yaml",
        "(or its parents) is not among the binaries of rule anthropic for api.anthropic.com:443",
        "network rule \"anthropic\" lists no binaries, so it allows nothing",
    ),
    (
        "openshell-prover_testdata_empty-policy.yaml",
        "no network_policies rule allows api.anthropic.com:443",
        "no filesystem_policy: using the built-in default's paths",
    ),
];

#[test]
fn plain_upstream_policies_load_and_allow_nothing_else() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    // The control: policy-advisor's rule with a binary added does reach the test host, so
    // the refusals below are the policy's doing, not a broken set-up.
    let with_binary = format!(
        "{}    binaries: [{{ path: \"{}\" }}]\n",
        read(LOADABLE[0].0),
        python()
    );
    let control = lab.write("advisor-with-binary.yaml", &with_binary);
    let run = lab.sandbox(&control).agent(&FETCH);
    assert_eq!(run.json()[0]["status"], 200, "control: {run}");
    assert_eq!(upstream.requests_on(PORT), ["GET /v1/messages HTTP/1.1"]);

    for (name, reason, note) in LOADABLE {
        let run = lab.sandbox(&fixture(name)).agent(&FETCH);
        assert_eq!(run.code, 0, "{name}: {run}");
        let response = &run.json()[0];
        let body: Value =
            serde_json::from_str(response["body"].as_str().unwrap_or_default()).unwrap_or_default();
        assert_eq!(response["status"], 403, "{name}: {run}");
        assert_eq!(body["error"], "policy_denied", "{name}: {run}");
        let why = body["reason"].as_str().unwrap_or_default();
        assert!(why.ends_with(reason), "{name}: {why:?}");
        let denied = run.events("denied", "proxy");
        assert!(
            denied.len() == 1 && denied[0]["why"] == why && denied[0]["port"] == PORT,
            "{name}: {run}"
        );
        // The note itself is `check`'s to print; a start says only that there are notes.
        assert!(
            !run.messages("about the policy itself").is_empty(),
            "{name}: the notes' one line: {run}"
        );
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"))
            .arg("check")
            .arg("--policy")
            .arg(fixture(name))
            .output()
            .expect("running check");
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(report.contains(note), "{name}: the loader's note: {report}");
    }
    assert_eq!(
        upstream.requests_on(PORT).len(),
        1,
        "only the control got through"
    );
    assert_eq!(
        upstream.seen().len(),
        2,
        "the control's connection and request only"
    );
}
