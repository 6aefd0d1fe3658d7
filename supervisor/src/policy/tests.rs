//! Whole-file tests: bad policies and the exact one-line error each produces, and the upstream
//! fixtures loading (or being refused) as the notes say.

use std::path::{Path, PathBuf};

use super::*;

fn load_text(text: &str) -> Result<Policy, PolicyError> {
    let origin = PolicyOrigin::File(PathBuf::from("policy.yaml"));
    validate(parse(text, &origin)?, origin, Path::new("/sandbox"))
}

fn error(text: &str) -> String {
    load_text(text).unwrap_err().to_string()
}

#[test]
fn bad_policies_give_exact_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "version: 1\nfilesystem_policy:\n  read_write:\n    - /tmp\n    - /sandbox\n    - /\n",
            "policy.yaml:6:7: filesystem_policy.read_write[2]: \"/\" cannot be read-write; list the directories the agent needs",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_wrte: [/tmp]\n",
            "policy.yaml:3:3: filesystem_policy.read_wrte: unknown field `read_wrte`, expected one of include_workdir, read_only, read_write",
        ),
        (
            "version: 2\n",
            "policy.yaml:1:10: version: version 2 is not supported; this build reads version 1",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_only: [usr]\n",
            "policy.yaml:3:15: filesystem_policy.read_only[0]: \"usr\" is not an absolute path",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_only: [/usr/../etc]\n",
            "policy.yaml:3:15: filesystem_policy.read_only[0]: \"/usr/../etc\" contains `..`; write the path it stands for",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_only: [/data]\n  read_write: [/data/]\n",
            "policy.yaml:4:16: filesystem_policy.read_write[0]: /data is also listed in read_only; list each path once",
        ),
        (
            "version: 1\nprocess:\n  run_as_user: 0\n",
            "policy.yaml:3:16: process.run_as_user: 0 (root) is refused; the agent never runs as root",
        ),
        (
            "version: 1\nprocess:\n  run_as_group: root\n",
            "policy.yaml:3:17: process.run_as_group: root is refused; the agent never runs as root",
        ),
        (
            "version: 1\nprocess:\n  run_as_user: 4294967295\n",
            "policy.yaml:3:16: process.run_as_user: 4294967295 is not an id in 1-4294967294",
        ),
        (
            "version: 1\nlandlock:\n  compatibility: strict\n",
            "policy.yaml:3:18: landlock.compatibility: unknown variant `strict`, expected one of best_effort, hard_requirement",
        ),
        (
            "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 70000\n    binaries: [{path: /usr/bin/curl}]\n",
            "policy.yaml:6:15: network_policies.api.endpoints[0].port: port 70000 is not in 1-65535",
        ),
        (
            "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n    binaries: [{path: /usr/bin/curl}]\n",
            "policy.yaml:5:9: network_policies.api.endpoints[0]: an endpoint needs `port` or `ports`",
        ),
        (
            "version: 1\nnetwork_policies:\n  all:\n    endpoints:\n      - { host: \"*.com\", port: 443 }\n",
            "policy.yaml:5:17: network_policies.all.endpoints[0].host: \"*.com\" would match every name under a top-level domain; name at least the registered domain literally (e.g. \"*.example.com\")",
        ),
        (
            "version: 1\nnetwork_policies:\n  gh:\n    endpoints:\n      - host: api.github.com\n        port: 443\n        protocol: rest\n",
            "policy.yaml:7:19: network_policies.gh.endpoints[0].protocol: protocol \"rest\" (L7 inspection) is not supported by this version of openshell-sandbox, which enforces host, port and binary only; refusing rather than allowing more than the policy says",
        ),
        (
            "version: 1\nnetwork_policies:\n  gh:\n    endpoints:\n      - { host: github.com, port: 443, access: read-only }\n",
            "policy.yaml:5:48: network_policies.gh.endpoints[0].access: is an L7 inspection setting, which this version of openshell-sandbox does not enforce; refusing rather than ignoring it",
        ),
        (
            "version: 1\nnetwork_policies:\n  r:\n    endpoints:\n      - { host: db.internal, port: 5432, allowed_ips: [10.0.0.0/40] }\n",
            "policy.yaml:5:56: network_policies.r.endpoints[0].allowed_ips[0]: \"10.0.0.0/40\": prefix length must be 0 to 32",
        ),
        (
            "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{ host: a.example.com, port: 1 }]\n    binaries: [{ path: curl }]\n",
            "policy.yaml:5:24: network_policies.r.binaries[0].path: \"curl\" is not absolute; binaries are matched by their full path",
        ),
        (
            "version: 1\nnetwork_middlewares: [x]\n",
            "policy.yaml:2:22: network_middlewares: L7 middlewares are not supported by this version of openshell-sandbox",
        ),
        (
            "filesystem_policy: {}\n",
            "policy.yaml:1:1: missing field `version`",
        ),
        (
            "version: 1\nversion: 1\n",
            "policy.yaml:2:1: duplicate key: version",
        ),
        (
            "version: 1\nfilesystem_policy:\n  read_only: /usr\n",
            "policy.yaml:3:14: filesystem_policy.read_only: expected sequence start",
        ),
    ];
    let mismatches: Vec<String> = cases
        .iter()
        .filter(|(text, expected)| error(text) != *expected)
        .map(|(text, expected)| {
            format!(
                "policy:\n{text}\nexpected: {expected}\nactual:   {}\n",
                error(text)
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn errors_are_one_line() {
    let err = error("version: 1\nfilesystem_policy:\n  read_only: [\n");
    assert!(!err.contains('\n'), "{err}");
    assert!(err.starts_with("policy.yaml:"), "{err}");
}

#[test]
fn a_good_policy_validates_into_checked_values() {
    let policy = load_text(
        "version: 1\n\
         filesystem_policy:\n  include_workdir: true\n  read_only: [/usr, /etc/]\n  read_write: [/tmp]\n\
         landlock:\n  compatibility: best_effort\n\
         process:\n  run_as_user: sandbox\n  run_as_group: \"1000\"\n\
         network_policies:\n  pypi:\n    name: PyPI\n    endpoints:\n      - { host: PyPI.org., ports: [443, 443, 80] }\n    binaries: [{ path: /usr/bin/python3* }]\n",
    )
    .unwrap();
    assert_eq!(
        policy.filesystem.read_only,
        [Path::new("/usr"), Path::new("/etc")]
    );
    assert_eq!(
        policy.filesystem.read_write,
        [Path::new("/tmp"), Path::new("/sandbox")]
    );
    assert_eq!(policy.compatibility, Compatibility::BestEffort);
    assert_eq!(policy.run_as.user, Some(Principal::Name("sandbox".into())));
    assert_eq!(policy.run_as.group, Some(Principal::Id(1000)));
    let rule = &policy.network[0];
    assert_eq!((rule.key.as_str(), rule.name.as_str()), ("pypi", "PyPI"));
    assert_eq!(rule.endpoints[0].host.to_string(), "pypi.org");
    assert_eq!(rule.endpoints[0].ports, [443, 80]);
    assert!(rule.binaries[0].matches("/usr/bin/python3.11"));
    assert!(policy.notes.is_empty(), "{:?}", policy.notes);
}

#[test]
fn compatibility_defaults_to_hard_requirement() {
    let policy = load_text("version: 1\n").unwrap();
    assert_eq!(policy.compatibility, Compatibility::HardRequirement);
    assert!(policy.network.is_empty());
}

#[test]
fn workdir_root_is_refused_only_when_asked_for_explicitly() {
    let origin = PolicyOrigin::File(PathBuf::from("p.yaml"));
    let explicit = parse(
        "version: 1\nfilesystem_policy:\n  include_workdir: true\n",
        &origin,
    )
    .unwrap();
    let err = validate(explicit, origin.clone(), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "p.yaml: filesystem_policy.include_workdir: the workdir cannot be made read-write: \
         \"/\" cannot be read-write; list the directories the agent needs; pass --workdir DIR \
         or set include_workdir: false"
    );
    let implicit = parse(
        "version: 1\nfilesystem_policy:\n  read_only: [/usr]\n",
        &origin,
    )
    .unwrap();
    let policy = validate(implicit, origin, Path::new("/")).unwrap();
    assert!(policy.filesystem.read_write.is_empty());
    assert!(
        policy.notes[0].contains("workdir not added"),
        "{:?}",
        policy.notes
    );
}

#[test]
fn builtin_default_is_restrictive() {
    let policy = load(PolicyOrigin::BuiltinDefault, Path::new("/work")).unwrap();
    assert!(policy.network.is_empty());
    assert_eq!(policy.compatibility, Compatibility::HardRequirement);
    assert!(policy.filesystem.read_only.contains(&PathBuf::from("/usr")));
    assert_eq!(
        policy.filesystem.read_write,
        [
            Path::new("/tmp"),
            Path::new("/dev/null"),
            Path::new("/dev/tty"),
            Path::new("/work")
        ]
    );
}

#[test]
fn network_only_policies_get_the_default_filesystem() {
    let policy = load_text(
        "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{ host: api.anthropic.com, port: 443 }]\n",
    )
    .unwrap();
    assert!(policy.filesystem.read_only.contains(&PathBuf::from("/usr")));
    assert!(
        policy
            .notes
            .iter()
            .any(|n| n.contains("no filesystem_policy"))
    );
    assert!(
        policy.notes.iter().any(|n| n.contains("lists no binaries")),
        "{:?}",
        policy.notes
    );
}

/// The upstream policies users will bring (../shared/fixtures/upstream-policies, read-only
/// and absent from a user's clone).
#[test]
fn upstream_fixtures_load_or_are_refused_by_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/upstream-policies");
    if !dir.is_dir() {
        eprintln!(
            "skipping: {} not present (only on the project's machines)",
            dir.display()
        );
        return;
    }
    let expect: &[(&str, Option<&str>)] = &[
        ("openshell-prover_testdata_empty-policy.yaml", None),
        ("policy-advisor_sandbox-policy.yaml", None),
        ("transparent-tcp-redis_policy.yaml", None),
        (
            "governance-interceptor_policy.yaml",
            Some("endpoints[0].protocol: protocol \"rest\""),
        ),
        (
            "local-inference_sandbox-policy.yaml",
            Some("nvidia_direct.endpoints[0].protocol"),
        ),
        (
            "openshell-prover_testdata_policy.yaml",
            Some("github_api.endpoints[0].protocol"),
        ),
        (
            "sandbox-policy-quickstart_policy.yaml",
            Some("github_api.endpoints[0].protocol"),
        ),
        (
            "openshell-supervisor-network_testdata_sandbox-policy.yaml",
            Some("github_ssh_over_https.endpoints[0].protocol"),
        ),
    ];
    for (name, refusal) in expect {
        let result = load(PolicyOrigin::File(dir.join(name)), Path::new("/sandbox"));
        match (refusal, result) {
            (None, Ok(_)) => {}
            (Some(needle), Err(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains(needle) && e.contains("not supported"),
                    "{name}: {e}"
                );
            }
            (None, Err(e)) => panic!("{name} should load: {e}"),
            (Some(_), Ok(_)) => panic!("{name} should be refused"),
        }
    }
}

#[test]
fn protocol_tcp_endpoints_are_direct_only_named_and_uninspected() {
    let policy = load_text(
        "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{ host: redis.example, port: 6379, \
         protocol: TCP, allowed_ips: [10.0.0.0/8] }, { host: a.example, port: 443 }]\n    \
         binaries: [{ path: /usr/bin/redis-cli }]\n",
    )
    .unwrap();
    let reach: Vec<Reach> = policy.network[0]
        .endpoints
        .iter()
        .map(|e| e.reach)
        .collect();
    assert_eq!(reach, [Reach::Transparent, Reach::Any]);
    let cases: &[(&str, &str)] = &[
        (
            "version: 1\nnetwork_policies:\n  r:\n    endpoints:\n      - { host: 10.0.0.5, port: 6379, protocol: tcp }\n",
            "policy.yaml:5:17: network_policies.r.endpoints[0].host: protocol: tcp needs a DNS name, not the address 10.0.0.5: a direct connection is matched by the names the sandbox resolved to its address (leave protocol out: an address endpoint is reachable both directly and through the proxy)",
        ),
        (
            "version: 1\nnetwork_policies:\n  r:\n    endpoints:\n      - { host: r.example, port: 6379, protocol: tcp, access: full }\n",
            "policy.yaml:5:63: network_policies.r.endpoints[0].access: is an L7 setting, and a protocol: tcp endpoint is never inspected; remove it, or use protocol: rest",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text), *expected, "{text}");
    }
}

#[test]
fn binaries_the_agent_can_write_are_pointed_out() {
    let policy = load_text(
        "version: 1\nfilesystem_policy:\n  read_only: [/usr]\n  read_write: [/tmp]\n\
         network_policies:\n  r:\n    endpoints: [{ host: a.example.com, port: 443 }]\n    \
         binaries: [{ path: /usr/bin/curl }, { path: \"/tmp/tools/*\" }]\n",
    )
    .unwrap();
    let notes: Vec<&String> = policy
        .notes
        .iter()
        .filter(|n| n.contains("read-write"))
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", policy.notes);
    assert!(notes[0].contains("/tmp/tools/*") && notes[0].contains("first one to connect"));
}
