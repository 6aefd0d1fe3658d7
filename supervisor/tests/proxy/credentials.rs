//! Credentials end to end: the supervisor gets two real values, one in its environment (as
//! Kubernetes passes a Secret with `env: valueFrom: secretKeyRef`) and one in a file outside
//! every path the policy lists (a Secret volume); the agent holds placeholders and real
//! clients (curl, python requests, node) send them to a TLS test host that records every
//! request. Each test checks the far side: the server received the real value where it was
//! bound and nothing where it was not, and the agent never saw a real value, in its
//! environment, its files, or any response.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::support::echo::{EchoHost, Identity, Received};
use crate::support::{FILESYSTEM, Lab, Run, curl, installed, python};

const TLS_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 8080;
/// The value in the supervisor's environment, as `API_KEY`.
const REAL_API: &str = "sk-real-api-4c8e1f0b7a93d265";
/// The value in the Secret-like file, for `BODY_TOKEN`.
const REAL_BODY: &str = "tok-real-body-9e2d41b07c5a38f6";
const API_PLACEHOLDER: &str = "openshell:resolve:env:API_KEY";
const BODY_PLACEHOLDER: &str = "tok-OPENSHELL-RESOLVE-ENV-BODY_TOKEN";

/// The secret file's directory, beside the lab's scratch directory and outside every path
/// the policy lists; removed on drop.
struct Secrets(PathBuf);

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    lab: Lab,
    host: EchoHost,
    policy: PathBuf,
    secret: PathBuf,
    _secrets: Secrets,
}

fn world() -> Option<World> {
    let lab = Lab::start()?;
    let host = lab.echo(&Identity::new(), &[TLS_PORT], &[PLAIN_PORT], None);
    let secrets = Secrets(PathBuf::from(format!("{}-secrets", lab.dir().display())));
    std::fs::create_dir_all(&secrets.0).expect("secrets directory");
    let secret = secrets.0.join("body-token");
    std::fs::write(&secret, format!("{REAL_BODY}\n")).expect("secret file");
    let mut binaries = vec![curl(), python(), "/usr/bin/dash".to_owned()];
    binaries.extend(installed("/usr/bin/node"));
    let binaries: Vec<String> = binaries
        .iter()
        .map(|b| format!("{{ path: \"{b}\" }}"))
        .collect();
    let binaries = binaries.join(", ");
    let policy = lab.write(
        "policy.yaml",
        &format!(
            "{FILESYSTEM}\
             credentials:\n  \
               api:\n    variable: API_KEY\n    \
                 endpoints: [{{ host: api.test.example, port: {TLS_PORT} }}]\n  \
               body:\n    variable: BODY_TOKEN\n    \
                 source: {{ file: {} }}\n    \
                 placeholder: {BODY_PLACEHOLDER}\n    \
                 endpoints: [{{ host: api.test.example, port: {TLS_PORT} }}]\n\
             network_policies:\n  \
               api:\n    endpoints: [{{ host: api.test.example, port: {TLS_PORT}, protocol: rest, \
                 access: full, request_body_credential_rewrite: true, \
                 websocket_credential_rewrite: true }}]\n    binaries: [{binaries}]\n  \
               other:\n    endpoints: [{{ host: other.example, port: {TLS_PORT}, protocol: rest, \
                 access: full }}]\n    binaries: [{binaries}]\n  \
               plain:\n    endpoints: [{{ host: test.example, port: {PLAIN_PORT} }}]\n    \
                 binaries: [{binaries}]\n",
            secret.display()
        ),
    );
    Some(World {
        lab,
        host,
        policy,
        secret,
        _secrets: secrets,
    })
}

impl World {
    fn sandbox(&self) -> crate::support::Sandbox<'_> {
        let ca = self.lab.dir().join("upstream-ca.pem");
        self.lab
            .sandbox(&self.policy)
            .env("OPENSHELL_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8"))
            .env("API_KEY", REAL_API)
    }

    fn agent(&self, command: &str, arg: &str) -> Run {
        let run = self
            .sandbox()
            .run(&["/usr/bin/python3", "creds_agent.py", command, arg]);
        assert_eq!(run.code, 0, "{run}");
        no_real_value_in(&run);
        run
    }

    /// The requests the host received whose target starts with `prefix`.
    fn received(&self, prefix: &str) -> Vec<Received> {
        self.host
            .received()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect()
    }

    fn one(&self, target: &str) -> Received {
        let all = self.received(target);
        assert_eq!(all.len(), 1, "{target}: {all:?}");
        all.into_iter().next().expect("one request")
    }
}

/// Nothing the agent printed (every response it received, whole), nothing it wrote to
/// stderr and no log line of the supervisor holds a real value.
fn no_real_value_in(run: &Run) {
    for value in [REAL_API, REAL_BODY] {
        assert!(!run.stdout.contains(value), "the agent saw {value}:\n{run}");
        assert!(
            !run.stderr.iter().any(|l| l.contains(value)),
            "the agent's stderr has {value}:\n{run}"
        );
        assert!(
            !run.log.iter().any(|l| l.to_string().contains(value)),
            "a log line has {value}:\n{run}"
        );
    }
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Headers, Bearer, Basic, query, path and (opted-in) JSON and form bodies, from curl,
/// python requests and node: the server receives the real values, the agent holds and
/// gets back only placeholders.
#[test]
fn real_clients_send_placeholders_and_the_server_gets_the_values() {
    let Some(w) = world() else { return };
    let run = w.agent("inject", "");
    let out = run.json();
    assert_eq!(out["environment"]["API_KEY"], API_PLACEHOLDER, "{run}");
    assert_eq!(out["environment"]["BODY_TOKEN"], BODY_PLACEHOLDER, "{run}");
    let answered: Vec<(&String, &Value)> = out
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| *k != "environment")
        .collect();
    for (name, result) in &answered {
        assert_eq!(result["status"], 200, "{name}: {result}\n{run}");
    }
    // What the server received.
    assert_eq!(w.one("/curl/header").header("x-api-key"), Some(REAL_API));
    let bearer = format!("Bearer {REAL_API}");
    assert_eq!(
        w.one("/curl/bearer").header("authorization"),
        Some(bearer.as_str())
    );
    assert_eq!(
        w.one("/node/bearer").header("authorization"),
        Some(bearer.as_str())
    );
    let basic = basic("user", REAL_API);
    assert_eq!(
        w.one("/curl/basic").header("authorization"),
        Some(basic.as_str())
    );
    assert_eq!(
        w.one("/requests/basic").header("authorization"),
        Some(basic.as_str())
    );
    assert_eq!(
        w.one("/curl/query").target,
        format!("/curl/query?key={REAL_API}&x=1")
    );
    assert_eq!(
        w.one("/requests/query").target,
        format!("/requests/query?key={REAL_API}")
    );
    assert_eq!(
        w.one("/curl/path").target,
        format!("/curl/path/{REAL_API}/end")
    );
    assert_eq!(
        w.one("/requests/header").header("x-api-key"),
        Some(REAL_API)
    );
    let json = format!("{{\"token\": \"{REAL_BODY}\"}}");
    for target in ["/curl/json", "/requests/json"] {
        let received = w.one(target);
        assert_eq!(String::from_utf8_lossy(&received.body), json, "{target}");
        assert_eq!(
            received.header("content-length"),
            Some(json.len().to_string().as_str())
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&w.one("/requests/form").body),
        format!("token={REAL_BODY}")
    );
    // No placeholder ever reached the server.
    for r in w.host.received() {
        let seen = format!(
            "{} {:?} {}",
            r.target,
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !seen.contains("RESOLVE") && !seen.contains("resolve"),
            "{seen}"
        );
    }
    // The echoes of targets holding a value came back with the placeholder instead.
    assert!(
        out["curl_path"]["text"]
            .as_str()
            .is_some_and(|t| t.contains(API_PLACEHOLDER)),
        "{run}"
    );
    // Logged with [CREDENTIAL] where a value went into the path.
    let logged: Vec<&Value> = run.events("allowed", "l7");
    assert!(
        logged
            .iter()
            .any(|l| l["path"] == "/curl/path/[CREDENTIAL]/end"),
        "{run}"
    );
}

/// Node's `fetch()` ignores the proxy variables: its direct connections reach the inspected
/// endpoints through transparent egress, where the same credentials apply.
#[test]
fn node_fetch_over_transparent_egress_gets_the_value_where_bound() {
    let Some(w) = world() else { return };
    if installed("/usr/bin/node").is_none() {
        crate::support::require_kernel(false, "node (Node.js 20, the machine's own)");
        return;
    }
    let run = w.agent("fetch", "");
    let out = run.json();
    assert_eq!(out["bound"]["status"], 200, "{run}");
    assert_eq!(w.one("/fetch/header").header("x-api-key"), Some(REAL_API));
    assert_eq!(out["other"]["status"], 403, "{run}");
    assert!(w.received("/fetch/leak").is_empty());
}

/// A placeholder sent where its credential is not bound (another inspected host, a plain
/// tunnel, a websocket there, a body there), or one that resolves to nothing: refused with
/// the reason, logged, and the server saw nothing of it.
#[test]
fn placeholders_elsewhere_are_refused_and_never_arrive() {
    let Some(w) = world() else { return };
    let run = w.agent("refuse", "");
    let out = run.json();
    let error = |name: &str| -> String {
        let text = out[name]["text"].as_str().unwrap_or("");
        text.split("\"error\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    for (name, expected) in [
        ("other_host", "credential_endpoint_mismatch"),
        ("other_body", "credential_endpoint_mismatch"),
        ("undeclared", "credential_unresolved"),
        ("longer_name", "credential_unresolved"),
    ] {
        assert_eq!(out[name]["status"], 403, "{name}\n{run}");
        assert_eq!(error(name), expected, "{name}\n{run}");
    }
    let tunnel = &out["tunnel"]["responses"][0];
    assert_eq!(tunnel["status"], 403, "{run}");
    assert_eq!(
        tunnel["json"]["error"], "credential_endpoint_mismatch",
        "{run}"
    );
    // The websocket: upgraded, then its message refused with a close frame.
    let ws = &out["other_websocket"];
    assert_eq!(ws["upgrade"]["status"], 101, "{run}");
    let frames = ws["frames"].as_array().expect("frames");
    assert!(
        frames.iter().any(|f| f["opcode"] == 8 && f["code"] == 1008),
        "{run}"
    );
    // A body without a placeholder to the same unbound host passes.
    assert_eq!(out["other_plain_body"]["status"], 200, "{run}");
    // The server's side: nothing of any of them.
    assert!(w.received("/leak").is_empty(), "{:?}", w.host.received());
    assert!(w.received("/undeclared").is_empty());
    assert!(w.received("/longer").is_empty());
    assert!(w.received("/tunnel").is_empty());
    for r in w.host.received() {
        let seen = format!("{} {:?} {}", r.target, r.headers, unmasked(&r.body));
        assert!(
            !seen.contains("API_KEY"),
            "the server saw a placeholder: {seen}"
        );
    }
    // Each refusal is one log line naming the credential (never its value).
    let denied: Vec<String> = run
        .log
        .iter()
        .filter(|l| l["event"] == "denied")
        .map(|l| l["why"].as_str().unwrap_or("").to_owned())
        .collect();
    let naming = denied
        .iter()
        .filter(|w| w.contains("credential api (API_KEY)"))
        .count();
    assert!(naming >= 4, "{denied:#?}");
}

/// A server echoing the key back, in a header, a JSON body or split across two chunks,
/// and a websocket echoing a message that carried it: the agent gets the placeholder.
#[test]
fn echoed_values_come_back_as_placeholders() {
    let Some(w) = world() else { return };
    let run = w.agent("echo", "");
    let out = run.json();
    for name in ["header", "json", "split", "curl_split"] {
        assert_eq!(out[name]["status"], 401, "{name}\n{run}");
        let text = out[name]["text"].as_str().expect("text");
        assert!(text.contains(API_PLACEHOLDER), "{name}: {text}");
    }
    for r in w.received("/reflect") {
        let key = r.header("x-api-key").or(r.header("authorization"));
        assert!(key.is_some_and(|k| k.ends_with(REAL_API)), "{r:?}");
    }
    // The message reached the server with the value in it; the echo came back without.
    let ws = &out["websocket"];
    let frames = ws["frames"].as_array().expect("frames");
    assert_eq!(
        frames[0]["text"],
        format!("{{\"auth\": \"{API_PLACEHOLDER}\"}}"),
        "{run}"
    );
    let frames = w.host.websocket_frames();
    assert_eq!(
        unmasked(&frames[0]),
        format!("{{\"auth\": \"{REAL_API}\"}}")
    );
}

/// The agent's environment, every file it can read, every process it can see: no value.
/// Outside the sandbox, as root: neither the sandbox's init (forked from the supervisor)
/// nor the supervisor itself keeps a value in its environment block, where the pod put it.
/// The same search first finds what is there (the placeholder in the environment, a file
/// in the workdir), so that "nothing found" is a finding.
#[test]
fn the_agent_holds_no_value_anywhere() {
    let Some(w) = world() else { return };
    const CANARY: &str = "canary-5e0b8d27c4a1";
    std::fs::write(w.lab.dir().join("canary.txt"), CANARY).expect("canary file");
    let xored =
        |value: &str| -> String { value.bytes().map(|b| format!("{:02x}", b ^ 0x5a)).collect() };
    let searches = [API_PLACEHOLDER, CANARY, REAL_API, REAL_BODY]
        .map(|value| format!("python3 creds_agent.py search {}; ", xored(value)))
        .concat();
    let script = format!(
        "sleep 3; {searches}cat {} 2>&1 | head -c 200; echo",
        w.secret.display()
    );
    let lab_dir = w.lab.dir().to_owned();
    let watcher = std::thread::spawn(move || inspect_processes(&lab_dir));
    let run = w.sandbox().run(&["/bin/sh", "-c", &script]);
    let environs = watcher.join().expect("the watcher");
    assert_eq!(run.code, 0, "{run}");
    no_real_value_in(&run);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let found = |line: &str| -> Vec<String> {
        let result: Value = serde_json::from_str(line).expect("search result");
        serde_json::from_value(result["found"].clone()).expect("found")
    };
    // The controls: the placeholder in the agent's environment and in its processes'
    // environment blocks; the canary in its file.
    let placeholder = found(lines[0]);
    assert!(
        placeholder.iter().any(|f| f == "os.environ")
            && placeholder.iter().any(|f| f.ends_with("/environ")),
        "the search misses the placeholder the agent holds: {placeholder:?}\n{run}"
    );
    let canary = found(lines[1]);
    assert!(
        canary.iter().any(|f| f.ends_with("/canary.txt")),
        "the search misses a file the agent can read: {canary:?}\n{run}"
    );
    for line in &lines[2..4] {
        let result: Value = serde_json::from_str(line).expect("search result");
        assert_eq!(result["found"], serde_json::json!([]), "{run}");
        let fds = result["fds"].to_string();
        assert!(
            !fds.contains("secrets"),
            "the agent holds the secret file open: {fds}"
        );
    }
    assert!(
        lines[4].contains("No such file") || lines[4].contains("Permission denied"),
        "the agent could read the secret file: {run}"
    );
    // (supervisor, init, agent) environment blocks, read from outside.
    let [supervisor, init, agent] = environs;
    for (who, block) in [
        ("supervisor", &supervisor),
        ("init", &init),
        ("agent", &agent),
    ] {
        let text = String::from_utf8_lossy(block);
        assert!(
            !text.contains(REAL_API),
            "{who}'s environment holds the value"
        );
        assert!(
            !text.contains(REAL_BODY),
            "{who}'s environment holds the value"
        );
    }
    // Scrubbed where it lay: init still has the variable, empty (the agent's shell was found
    // by its placeholder).
    assert!(String::from_utf8_lossy(&init).contains("API_KEY=\0"));
}

/// Finds this lab's supervisor, its init and the agent's shell (while it sleeps, at its
/// start) and returns their `/proc/PID/environ`.
fn inspect_processes(lab: &Path) -> [Vec<u8>; 3] {
    let policy = lab.join("policy.yaml").display().to_string();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sandbox's processes never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
        let Some(supervisor) = processes().find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("openshell-sandbox") && cmdline.contains(&policy)
        }) else {
            continue;
        };
        let Some(init) = child(supervisor) else {
            continue;
        };
        let Some(agent) = child(init) else { continue };
        let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).ok();
        // The agent's shell has exec'd once its environment shows the placeholder (before,
        // it is init's fork, with init's block).
        let placeholder = format!("API_KEY={API_PLACEHOLDER}\0");
        match (environ(supervisor), environ(init), environ(agent)) {
            (Some(s), Some(i), Some(a)) if String::from_utf8_lossy(&a).contains(&placeholder) => {
                return [s, i, a];
            }
            _ => continue,
        }
    }
}

fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// The first child of `pid`, from its threads' `children` lists.
fn child(pid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|t| {
            let text = std::fs::read_to_string(t.ok()?.path().join("children")).ok()?;
            text.split_whitespace().next()?.parse().ok()
        })
        .next()
}

/// The payloads of the client frames in `bytes` (masked, as a client sends them), joined.
fn unmasked(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut data = bytes;
    while data.len() >= 2 {
        let (mut len, mut at) = (usize::from(data[1] & 0x7f), 2);
        if len == 126 {
            len = usize::from(u16::from_be_bytes([data[2], data[3]]));
            at = 4;
        }
        let key = match data[1] & 0x80 != 0 {
            true => {
                let key = [data[at], data[at + 1], data[at + 2], data[at + 3]];
                at += 4;
                Some(key)
            }
            false => None,
        };
        let end = (at + len).min(data.len());
        let payload = &data[at..end];
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4])),
        );
        data = &data[end..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `check` lists each credential, its placeholder, its source and its endpoints, never the
/// value; a missing source, or a file the agent could read, fails the check and the start.
#[test]
fn check_describes_credentials_and_refuses_unusable_sources() {
    let Some(w) = world() else { return };
    let check = |env: &[(&str, &str)], policy: &Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"));
        command
            .args(["check", "--policy"])
            .arg(policy)
            .arg("--workdir")
            .arg(w.lab.dir())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().copied());
        let out = command.output().expect("check runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = check(&[("API_KEY", REAL_API)], &w.policy);
    assert!(
        !text.contains(REAL_API) && !text.contains(REAL_BODY),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "api: API_KEY={API_PLACEHOLDER} from environment variable API_KEY (present); sent \
             only to api.test.example:{TLS_PORT}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "body: BODY_TOKEN={BODY_PLACEHOLDER} from file {} (present)",
            w.secret.display()
        )),
        "{text}"
    );
    let _ = code;
    // Without the variable: the check fails, and so does a start, naming it.
    let (code, text) = check(&[], &w.policy);
    assert_eq!(code, Some(125), "{text}");
    assert!(
        text.contains("credentials.api: its source, environment variable API_KEY, is not set"),
        "{text}"
    );
    let run = w.lab.sandbox(&w.policy).run(&["/bin/true"]);
    assert_eq!(run.code, 125, "{run}");
    // The secret file moved under the workdir (read-write for the agent): refused.
    let exposed = w.lab.write("exposed-token", REAL_BODY);
    let text = std::fs::read_to_string(&w.policy).expect("policy").replace(
        &w.secret.display().to_string(),
        &exposed.display().to_string(),
    );
    let policy = w.lab.write("exposed.yaml", &text);
    let (code, text) = check(&[("API_KEY", REAL_API)], &policy);
    assert_eq!(code, Some(125), "{text}");
    assert!(text.contains("lies under"), "{text}");
    let run = w
        .lab
        .sandbox(&policy)
        .env("API_KEY", REAL_API)
        .run(&["/bin/true"]);
    assert_eq!(run.code, 125, "{run}");
    assert!(
        run.log.iter().any(|l| l.to_string().contains("lies under")),
        "{run}"
    );
}
