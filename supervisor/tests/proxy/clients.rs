//! Who is asking: real clients (curl, a python interpreter and what it runs, a replaced
//! binary) and connections that carry several requests.

use serde_json::Value;

use crate::support::{self, Lab, Run, curl, python};

const PORT: u16 = 8080;
/// A port no rule allows, also served by the test host.
const OTHER_PORT: u16 = 8081;

/// Rule `key` allowing `binary` to reach api.test.example on `ports`.
fn rule(key: &str, ports: &[u16], binary: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let endpoint = format!("host: api.test.example, ports: [{}]", ports.join(", "));
    support::rule(key, &endpoint, &[binary])
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1")
}

/// The proxy log lines of `event` for `port`.
fn events<'r>(run: &'r Run, event: &str, port: u16) -> Vec<&'r Value> {
    run.events(event, "proxy")
        .into_iter()
        .filter(|l| l["port"] == port)
        .collect()
}

/// A 403 body printed by curl (absolute-form, so curl shows it), parsed.
fn refusal(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON refusal ({e}): {text:?}"))
}

/// curl's `--write-out`: each transfer's body is followed by a line with its status and how
/// many new connections it opened (0 when it reused one).
const WRITE_OUT: &str = "-w '\\n=%{http_code} %{num_connects}\\n'";

/// One transfer, from curl's output with [`WRITE_OUT`].
#[derive(Debug)]
struct Transfer {
    body: String,
    status: u16,
    connects: u32,
}

/// The transfers in `run`'s stdout; fails the test on output curl would not print.
fn transfers(run: &Run) -> Vec<Transfer> {
    let mut out = Vec::new();
    let mut body = String::new();
    for line in run.stdout.lines() {
        match line.strip_prefix('=').and_then(|l| l.split_once(' ')) {
            Some((status, connects)) => out.push(Transfer {
                body: std::mem::take(&mut body).trim_end().to_owned(),
                status: status.parse().unwrap_or_else(|_| panic!("{run}")),
                connects: connects.parse().unwrap_or_else(|_| panic!("{run}")),
            }),
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(
        body.trim().is_empty(),
        "output after the last transfer: {run}"
    );
    out
}

/// Whether `transfer` is the test host's 200 for `path`.
/// The run's two transfers, after checking the agent exited 0, the first (`/child`) was
/// served and the second refused with 403.
fn child_served_then_refused(run: &Run) -> Vec<Transfer> {
    assert_eq!(run.code, 0, "{run}");
    let t = transfers(run);
    assert!(
        t.len() == 2 && served(&t[0], "/child") && t[1].status == 403,
        "{run}"
    );
    t
}

fn served(transfer: &Transfer, path: &str) -> bool {
    transfer.status == 200 && transfer.body.starts_with(&format!("hello {path} from "))
}

/// curl through a CONNECT tunnel (`-p`) and in absolute form, two URLs in one invocation:
/// curl reuses its connection to the proxy for the second (`num_connects` 0), and the proxy
/// checks and logs each request.
#[test]
fn curl_through_connect_and_absolute_form() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let policy = lab.policy("policy.yaml", &rule("web", &[PORT], &curl()));
    let url = |path: &str| format!("http://api.test.example:{PORT}{path}");
    let script = format!(
        "curl -sS {WRITE_OUT} -p {} && curl -sS {WRITE_OUT} {} {}",
        url("/tunnel"),
        url("/one"),
        url("/two")
    );
    let run = lab.sandbox(&policy).run(&["sh", "-c", &script]);
    assert_eq!(run.code, 0, "{run}");
    let t = transfers(&run);
    assert!(t.len() == 3, "{run}");
    assert!(
        served(&t[0], "/tunnel") && served(&t[1], "/one") && served(&t[2], "/two"),
        "{run}"
    );
    assert_eq!(
        [t[1].connects, t[2].connects],
        [1, 0],
        "curl must reuse its proxy connection: {run}"
    );
    assert_eq!(
        upstream.requests_on(PORT),
        [get("/tunnel"), get("/one"), get("/two")]
    );
    let allowed = events(&run, "allowed", PORT);
    let messages: Vec<&str> = allowed
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        [
            format!("allowed CONNECT api.test.example:{PORT} by rule web"),
            format!("allowed GET {} by rule web", url("/one")),
            format!("allowed GET {} by rule web", url("/two")),
        ],
        "{run}"
    );
    assert!(allowed.iter().all(|l| l["exe"] == curl()), "{run}");
}

/// Several absolute-form requests on one client connection: each is decided on its own. The
/// connection stays open after allowed requests and is closed after a refused one.
#[test]
fn keep_alive_checks_each_request() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT, OTHER_PORT]);
    let policy = lab.policy("policy.yaml", &rule("web", &[PORT], &python()));
    let allowed = |path: &str| format!("api.test.example:{PORT}{path}");
    let refused = format!("api.test.example:{OTHER_PORT}/refused");
    let script = format!(
        "/usr/bin/python3 agent.py session {} {}; /usr/bin/python3 agent.py session {} {} {}",
        allowed("/one"),
        allowed("/two"),
        allowed("/three"),
        refused,
        allowed("/after-refusal")
    );
    let run = lab.sandbox(&policy).run(&["sh", "-c", &script]);
    assert_eq!(run.code, 0, "{run}");
    let sessions = run.json_lines();
    assert_eq!(sessions.len(), 2, "{run}");
    let statuses = |s: &Value| -> Vec<Value> {
        s["responses"]
            .as_array()
            .expect("responses")
            .iter()
            .map(|r| r["status"].clone())
            .collect()
    };
    assert_eq!(statuses(&sessions[0]), [200, 200], "{run}");
    assert_eq!(sessions[0]["open_at_end"], true, "keep-alive: {run}");
    // The third request is never answered: the proxy closed the connection after the 403.
    assert_eq!(
        statuses(&sessions[1]),
        [Value::from(200), Value::from(403), Value::Null],
        "{run}"
    );
    assert_eq!(sessions[1]["open_at_end"], false, "{run}");
    let body = refusal(
        sessions[1]["responses"][1]["body"]
            .as_str()
            .unwrap_or_default(),
    );
    assert_eq!(body["error"], "policy_denied");
    assert_eq!(
        body["detail"],
        format!("GET http://{refused}").as_str(),
        "{run}"
    );
    assert_eq!(
        upstream.requests_on(PORT),
        [get("/one"), get("/two"), get("/three")]
    );
    assert!(upstream.seen_on(OTHER_PORT).is_empty(), "{run}");
    assert_eq!(events(&run, "allowed", PORT).len(), 3, "{run}");
    let denied = events(&run, "denied", OTHER_PORT);
    assert!(
        denied.len() == 1 && denied[0]["why"] == body["reason"],
        "{run}"
    );
}

/// A rule naming only the interpreter covers the curl it runs (an ancestor matches), and the
/// interpreter is what gets pinned; the same curl run by sh alone is refused.
#[test]
fn an_allowed_interpreter_covers_what_it_runs() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT, OTHER_PORT]);
    let (python, curl) = (python(), curl());
    let policy = lab.policy("policy.yaml", &rule("interp", &[PORT, OTHER_PORT], &python));
    let curl_args = |port: u16, path: &str| {
        format!("curl -sS {WRITE_OUT} http://api.test.example:{port}{path}")
    };
    let script = format!(
        "/usr/bin/python3 agent.py spawn {}; {}",
        curl_args(PORT, "/child"),
        curl_args(OTHER_PORT, "/alone")
    );
    let run = lab.sandbox(&policy).run(&["sh", "-c", &script]);
    let t = child_served_then_refused(&run);
    let body = refusal(&t[1].body);
    assert_eq!(body["error"], "policy_denied", "{run}");
    assert_eq!(
        body["reason"],
        format!(
            "{curl} (or its parents) is not among the binaries of rule interp for \
             api.test.example:{OTHER_PORT}"
        )
        .as_str()
    );
    assert_eq!(upstream.requests_on(PORT), [get("/child")]);
    assert!(upstream.seen_on(OTHER_PORT).is_empty(), "{run}");
    // The socket's owner is curl; the rule matched its parent, the interpreter.
    let allowed = events(&run, "allowed", PORT);
    assert!(
        allowed.len() == 1 && allowed[0]["exe"] == curl.as_str(),
        "{run}"
    );
    let pinned = run.messages("binary pinned on first use");
    assert!(
        pinned.len() == 1 && pinned[0]["exe"] == python.as_str(),
        "only the interpreter is pinned: {run}"
    );
    let denied = events(&run, "denied", OTHER_PORT);
    assert!(
        denied.len() == 1
            && denied[0]["exe"] == curl.as_str()
            && denied[0]["why"] == body["reason"],
        "{run}"
    );
}

/// An allowed ancestor is credited only for what its current program started: a process that
/// forks first and then makes its parent exec the allowed interpreter borrows nothing (the
/// reviewer's bypass), while the interpreter's own child, in the same run, is allowed.
#[test]
fn an_ancestor_that_became_allowed_after_the_fork_is_not_credited() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    let python = python();
    let policy = lab.policy("policy.yaml", &rule("interp", &[PORT], &python));
    let curl = |path: &str| format!("curl -sS {WRITE_OUT} http://api.test.example:{PORT}{path}");
    let script = format!(
        "/usr/bin/python3 agent.py spawn {}; \
         ( (sleep 0.5; {}) & exec /usr/bin/python3 -c 'import time; time.sleep(2)' )",
        curl("/child"),
        curl("/borrowed")
    );
    let run = lab.sandbox(&policy).run(&["sh", "-c", &script]);
    let t = child_served_then_refused(&run);
    assert_eq!(refusal(&t[1].body)["error"], "policy_denied", "{run}");
    assert_eq!(upstream.requests_on(PORT), [get("/child")], "{run}");
}

/// Trust on first use: an allowed copy of curl is pinned by its first request; replaced by a
/// different file under the same path (within the same sandbox run) it is refused; with the
/// original content written back into the replacement, it is allowed again.
#[test]
fn a_replaced_binary_is_refused() {
    let Some(lab) = Lab::start() else { return };
    let upstream = lab.upstream(&[PORT]);
    // A directory the agent may change: the copy is replaced from inside the sandbox.
    let bin = lab.dir().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let mode = |path: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    mode(&bin, 0o777);
    for (name, m) in [("curl", 0o755), ("curl.orig", 0o644)] {
        std::fs::copy("/usr/bin/curl", bin.join(name)).expect("copy curl");
        mode(&bin.join(name), m);
    }
    let copy = bin.join("curl").to_string_lossy().into_owned();
    let policy = lab.policy("policy.yaml", &rule("pinned", &[PORT], &copy));
    let script = format!(
        "fetch() {{ ./bin/curl -sS {WRITE_OUT} http://api.test.example:{PORT}/$1; }}
         fetch first
         # Replaced by a different file: the original plus one byte (it still runs).
         cat bin/curl > bin/curl.new && printf x >> bin/curl.new && chmod 755 bin/curl.new
         mv bin/curl.new bin/curl && fetch second
         # The original content, written into the replacement (new inode, size, times).
         cat bin/curl.orig > bin/curl && fetch third"
    );
    let run = lab.sandbox(&policy).run(&["sh", "-c", &script]);
    assert_eq!(run.code, 0, "{run}");
    let t = transfers(&run);
    assert!(
        t.len() == 3 && served(&t[0], "/first") && served(&t[2], "/third"),
        "{run}"
    );
    assert_eq!(t[1].status, 403, "{run}");
    let body = refusal(&t[1].body);
    assert_eq!(body["error"], "binary_changed", "{run}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{copy} changed since first use (sha256 ")),
        "{run}"
    );
    assert_eq!(upstream.requests_on(PORT), [get("/first"), get("/third")]);
    let denied = events(&run, "denied", PORT);
    assert!(
        denied.len() == 1 && denied[0]["exe"] == copy.as_str() && denied[0]["why"] == reason,
        "{run}"
    );
    let pinned = run.messages("binary pinned on first use");
    assert!(
        pinned.len() == 1 && pinned[0]["exe"] == copy.as_str(),
        "{run}"
    );
}
