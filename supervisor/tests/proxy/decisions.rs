//! The policy decision end to end, as a table: each row is a rule, one request through the
//! proxy, and the outcome. All rows run in one sandbox, one request after the other from the
//! same client; each row has its own port, so its rule, its log lines and what the servers
//! received are its own.
//!
//! For every row the test checks the response (status and JSON body), the supervisor's log
//! line (fields and the same reason as the body) and the side effect: an allowed request
//! reached the test host exactly once, a refused one reached no server at all, neither the
//! test host nor the pod's own loopback.

use serde_json::{Value, json};

use crate::support::{Lab, Side, Upstream, curl, python, rule};

/// Who the row's rule allows (the client is always python).
#[derive(Debug, Clone, Copy)]
enum Allows {
    Python,
    Curl,
}

/// What the row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 from the test host, which saw the request once.
    Allowed,
    /// The proxy answers `status` with JSON `error` and a reason containing `reason` (where
    /// `{host}` and `{port}` stand for the request's), and no server sees anything.
    Refused {
        status: u16,
        error: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    /// The endpoint's YAML (a flow mapping's entries), without its port.
    endpoint: &'static str,
    allows: Allows,
    /// connect, forward (absolute-form http://) or https-forward.
    mode: &'static str,
    host: &'static str,
    /// Request the port after the rule's (which no rule allows).
    other_port: bool,
    expect: Expect,
}

const fn row(
    name: &'static str,
    endpoint: &'static str,
    mode: &'static str,
    host: &'static str,
    expect: Expect,
) -> Case {
    Case {
        name,
        endpoint,
        allows: Allows::Python,
        mode,
        host,
        other_port: false,
        expect,
    }
}

const ALLOWED: Expect = Expect::Allowed;
const NO_RULE: Expect = Expect::Refused {
    status: 403,
    error: "policy_denied",
    reason: "no network_policies rule allows {host}:{port}",
};
const fn ssrf(reason: &'static str) -> Expect {
    Expect::Refused {
        status: 403,
        error: "ssrf_denied",
        reason,
    }
}

const CASES: &[Case] = &[
    row(
        "exact host, CONNECT",
        "host: api.test.example",
        "connect",
        "api.test.example",
        ALLOWED,
    ),
    row(
        "exact host, absolute-form",
        "host: api.test.example",
        "forward",
        "api.test.example",
        ALLOWED,
    ),
    row(
        "a trailing dot is ignored",
        "host: api.test.example",
        "connect",
        "api.test.example.",
        ALLOWED,
    ),
    row(
        "host is case-insensitive",
        "host: api.test.example",
        "connect",
        "API.Test.EXAMPLE",
        ALLOWED,
    ),
    row(
        "IPv6 by name",
        "host: v6.test.example",
        "connect",
        "v6.test.example",
        ALLOWED,
    ),
    row(
        "IPv6 literal",
        "host: \"2001:db8::2\"",
        "forward",
        "2001:db8::2",
        ALLOWED,
    ),
    Case {
        allows: Allows::Curl,
        ..row(
            "wrong binary",
            "host: api.test.example",
            "connect",
            "api.test.example",
            Expect::Refused {
                status: 403,
                error: "policy_denied",
                reason: "(or its parents) is not among the binaries of rule",
            },
        )
    },
    Case {
        other_port: true,
        ..row(
            "wrong port",
            "host: api.test.example",
            "connect",
            "api.test.example",
            NO_RULE,
        )
    },
    row(
        "wrong host",
        "host: api.test.example",
        "connect",
        "other.example",
        NO_RULE,
    ),
    row(
        "* matches one label",
        "host: \"*.test.example\"",
        "connect",
        "api.test.example",
        ALLOWED,
    ),
    row(
        "* is not the bare domain",
        "host: \"*.test.example\"",
        "connect",
        "test.example",
        NO_RULE,
    ),
    row(
        "* is not two labels",
        "host: \"*.test.example\"",
        "forward",
        "a.b.test.example",
        NO_RULE,
    ),
    row(
        "** matches two labels",
        "host: \"**.test.example\"",
        "connect",
        "a.b.test.example",
        ALLOWED,
    ),
    row(
        "** matches one label",
        "host: \"**.test.example\"",
        "forward",
        "api.test.example",
        ALLOWED,
    ),
    row(
        "** is not the bare domain",
        "host: \"**.test.example\"",
        "connect",
        "test.example",
        NO_RULE,
    ),
    row(
        "** needs a label boundary",
        "host: \"**.test.example\"",
        "connect",
        "nottest.example",
        NO_RULE,
    ),
    row(
        "loopback by name, even with allowed_ips",
        "host: loop.test.example, allowed_ips: [127.0.0.0/8]",
        "connect",
        "loop.test.example",
        ssrf("127.0.0.1 is loopback"),
    ),
    row(
        "loopback literal",
        "host: 127.0.0.1",
        "forward",
        "127.0.0.1",
        ssrf("is loopback"),
    ),
    row(
        "IPv6 loopback literal",
        "host: \"::1\"",
        "connect",
        "::1",
        ssrf("::1 is loopback"),
    ),
    row(
        "metadata by name, even with allowed_ips",
        "host: metadata.test.example, allowed_ips: [169.254.0.0/16]",
        "connect",
        "metadata.test.example",
        ssrf("169.254.169.254 is the cloud metadata service"),
    ),
    row(
        "metadata literal",
        "host: 169.254.169.254",
        "forward",
        "169.254.169.254",
        ssrf("the cloud metadata service"),
    ),
    row(
        "metadata as IPv4-mapped IPv6",
        "host: \"::ffff:169.254.169.254\"",
        "connect",
        "::ffff:169.254.169.254",
        ssrf("the cloud metadata service"),
    ),
    row(
        "private behind a glob",
        "host: \"*.test.example\"",
        "connect",
        "private.test.example",
        ssrf("10.20.0.2 is private (RFC 1918); list it in the endpoint's allowed_ips"),
    ),
    row(
        "private, allowed_ips elsewhere",
        "host: \"*.test.example\", allowed_ips: [192.168.0.0/16]",
        "forward",
        "private.test.example",
        ssrf("10.20.0.2 is private (RFC 1918)"),
    ),
    row(
        "private with allowed_ips",
        "host: \"*.test.example\", allowed_ips: [10.20.0.0/16]",
        "connect",
        "private.test.example",
        ALLOWED,
    ),
    // Upstream's rule: a host written out in full may be private without allowed_ips.
    row(
        "private, exact name",
        "host: db.test.example",
        "forward",
        "db.test.example",
        ALLOWED,
    ),
    row(
        "private, exact literal",
        "host: 10.20.0.2",
        "connect",
        "10.20.0.2",
        ALLOWED,
    ),
    row(
        "https:// absolute-form",
        "host: api.test.example",
        "https-forward",
        "api.test.example",
        Expect::Refused {
            status: 400,
            error: "bad_request",
            reason: "use CONNECT",
        },
    ),
    row(
        "allowed but unresolvable",
        "host: nx.test.example",
        "connect",
        "nx.test.example",
        Expect::Refused {
            status: 502,
            error: "upstream_unreachable",
            reason: "cannot resolve nx.test.example",
        },
    ),
];

const BASE_PORT: u16 = 20000;

impl Case {
    fn key(index: usize) -> String {
        format!("case{index}")
    }

    /// The rule's port; the row may request the next one.
    fn rule_port(index: usize) -> u16 {
        BASE_PORT + 2 * index as u16
    }

    fn port(&self, index: usize) -> u16 {
        Case::rule_port(index) + u16::from(self.other_port)
    }

    fn path(index: usize) -> String {
        format!("/case{index}")
    }

    /// What the proxy calls the request in `detail` and the log's `what`: an IPv6 literal in
    /// brackets, as in the request (`CONNECT [::1]:20034`).
    fn what(&self, index: usize) -> String {
        let port = self.port(index);
        let authority = match self.host.contains(':') {
            true => format!("[{}]:{port}", self.host),
            false => format!("{}:{port}", self.host),
        };
        match self.mode {
            "connect" => format!("CONNECT {authority}"),
            _ => format!("GET http://{authority}{}", Case::path(index)),
        }
    }
}

#[test]
fn policy_decisions_table() {
    let Some(lab) = Lab::start() else { return };
    let (python, curl) = (python(), curl());
    let network: String = CASES
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let binary = match case.allows {
                Allows::Python => &python,
                Allows::Curl => &curl,
            };
            let endpoint = format!("{}, port: {}", case.endpoint, Case::rule_port(i));
            rule(&Case::key(i), &endpoint, &[binary])
        })
        .collect();
    let policy = lab.policy("policy.yaml", &network);
    // Both ports of every row, on the test host and on the pod's own loopback (where a
    // loopback dial by the proxy would land).
    let ports: Vec<u16> = (0..CASES.len())
        .flat_map(|i| [Case::rule_port(i), Case::rule_port(i) + 1])
        .collect();
    let host = lab.upstream(&ports);
    let pod = lab.upstream_in(Side::Pod, &ports);
    let requests: Vec<Value> = CASES
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"mode": c.mode, "host": c.host, "port": c.port(i), "path": Case::path(i)}))
        .collect();
    let run = lab
        .sandbox(&policy)
        .agent(&["batch", &Value::from(requests).to_string()]);
    assert_eq!(run.code, 0, "{run}");
    let responses = run.json();
    let responses = responses.as_array().expect("a list of responses");
    assert_eq!(responses.len(), CASES.len(), "{run}");
    let failures: Vec<String> = CASES
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            check(i, case, &responses[i], &run, &host, &pod, &python)
                .err()
                .map(|e| format!("row {i} \"{}\": {e}", case.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}\n\n{run}", failures.join("\n"));
    // One client made every request: every proxy log line names the same process.
    let pids: std::collections::BTreeSet<String> = run
        .log
        .iter()
        .filter(|l| l["layer"] == "proxy" && l.get("pid").is_some())
        .map(|l| l["pid"].to_string())
        .collect();
    assert_eq!(pids.len(), 1, "one client, one pid: {pids:?}\n{run}");
}

/// Checks one row; the error says what differs.
fn check(
    i: usize,
    case: &Case,
    response: &Value,
    run: &crate::support::Run,
    host: &Upstream,
    pod: &Upstream,
    python: &str,
) -> Result<(), String> {
    let port = case.port(i);
    let path = Case::path(i);
    let requested = |field: &str, value: &Value| -> Result<(), String> {
        match value.get(field) {
            Some(v) if *v == json!(case.host) || *v == json!(case.host.to_ascii_lowercase()) => {
                Ok(())
            }
            _ => Err(format!("log {field} is not {:?}: {value}", case.host)),
        }
    };
    match case.expect {
        Expect::Allowed => {
            let body = response["body"].as_str().unwrap_or_default();
            if response["status"] != 200 || !body.starts_with(&format!("hello {path} from ")) {
                return Err(format!("expected 200 from the test host, got {response}"));
            }
            let seen = host.requests_on(port);
            if seen != [format!("GET {path} HTTP/1.1")] {
                return Err(format!(
                    "the test host saw {seen:?}, expected GET {path} once"
                ));
            }
            let allowed: Vec<&Value> = run
                .events("allowed", "proxy")
                .into_iter()
                .filter(|l| l["port"] == port)
                .collect();
            let [line] = allowed[..] else {
                return Err(format!("expected one allowed log line, got {allowed:?}"));
            };
            if line["rule"] != Case::key(i).as_str() || line["exe"] != python {
                return Err(format!("allowed line names the wrong rule or exe: {line}"));
            }
            requested("host", line)
        }
        Expect::Refused {
            status,
            error,
            reason,
        } => {
            let reason = reason
                .replace("{host}", &case.host.to_ascii_lowercase())
                .replace("{port}", &port.to_string());
            let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or_default())
                .map_err(|e| format!("body is not JSON ({e}): {response}"))?;
            let what = case.what(i);
            // A request refused as malformed has no target to name.
            let detail = if status == 400 { "" } else { what.as_str() };
            if response["status"] != status
                || body["error"] != error
                || body["detail"] != detail
                || !body["reason"].as_str().is_some_and(|r| r.contains(&reason))
            {
                return Err(format!(
                    "expected {status} {{error: {error}, detail: {detail:?}, reason containing \
                     {reason:?}}}, got {response}"
                ));
            }
            let touched: Vec<_> = host
                .seen_on(port)
                .into_iter()
                .chain(pod.seen_on(port))
                .collect();
            if !touched.is_empty() {
                return Err(format!("refused, yet a server saw {touched:?}"));
            }
            let denied: Vec<&Value> = run
                .events("denied", "proxy")
                .into_iter()
                .filter(|l| l["port"] == port)
                .collect();
            if status != 403 {
                // Not a policy decision: no denial is logged.
                return match denied.is_empty() {
                    true => Ok(()),
                    false => Err(format!("unexpected denial lines {denied:?}")),
                };
            }
            let [line] = denied[..] else {
                return Err(format!("expected one denied log line, got {denied:?}"));
            };
            let pid_ok = line["pid"].as_u64().is_some_and(|p| p > 1);
            if !pid_ok || line["exe"] != python || line["what"] != what.as_str() {
                return Err(format!("denied line lacks pid/exe/what: {line}"));
            }
            if line["why"] != body["reason"] {
                return Err(format!(
                    "log why differs from the response's reason: {line}"
                ));
            }
            requested("host", line)
        }
    }
}
