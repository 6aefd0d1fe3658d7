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
    // /tmp is not listed: the sandbox's own is private (the view makes it).
    assert_eq!(
        policy.filesystem.read_write,
        [
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

/// The upstream policies users will bring (tests/fixtures/upstream-policies, unchanged):
/// every one loads, L7 and transparent ones included.
#[test]
fn upstream_fixtures_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-policies");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = load(PolicyOrigin::File(path.clone()), Path::new("/sandbox")) {
                panic!("{} should load: {e}", path.display());
            }
            loaded += 1;
        }
    }
    assert_eq!(loaded, 8, "the eight upstream fixtures");
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

/// A policy with one rule `api` whose one endpoint is the block `endpoint` (YAML lines at
/// six spaces, after `- host: api.example.com` and `port: 443`).
fn l7_policy(endpoint: &str) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        \
         port: 443\n{endpoint}    binaries: [{{ path: /usr/bin/curl }}]\n"
    )
}

/// Upstream's L7 validation errors, and ours for the mistakes upstream lets through silently,
/// each with its position.
#[test]
fn l7_mistakes_give_exact_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "        protocol: rest\n        access: read-only\n        rules: [{ allow: { method: GET, path: /x } }]\n",
            "policy.yaml:9:16: network_policies.api.endpoints[0].rules: rules and access cannot be used together; use one or the other",
        ),
        (
            "        protocol: rest\n",
            "policy.yaml:7:19: network_policies.api.endpoints[0].protocol: protocol \"rest\" needs rules or access; without them the endpoint would allow nothing",
        ),
        (
            "        protocol: rest\n        rules: []\n",
            "policy.yaml:8:16: network_policies.api.endpoints[0].rules: rules is empty; list at least one rule, or use access",
        ),
        (
            "        protocol: rest\n        access: full\n        deny_rules: []\n",
            "policy.yaml:9:21: network_policies.api.endpoints[0].deny_rules: deny_rules is empty; list at least one rule or leave it out",
        ),
        (
            "        deny_rules: [{ method: POST, path: /x }]\n",
            "policy.yaml:7:21: network_policies.api.endpoints[0].deny_rules: deny_rules applies only to inspected endpoints; add protocol: rest (or remove deny_rules)",
        ),
        (
            "        access: read-only\n",
            "policy.yaml:7:17: network_policies.api.endpoints[0].access: access applies only to inspected endpoints; add protocol: rest (or remove access)",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: GET, path: repos/* } }]\n",
            "policy.yaml:8:47: network_policies.api.endpoints[0].rules[0].allow.path: \"repos/*\" does not start with `/`; request paths always do (use \"/**\" for all)",
        ),
        (
            "        protocol: rest\n        path: v1\n        access: full\n",
            "policy.yaml:8:15: network_policies.api.endpoints[0].path: \"v1\" does not start with `/`; request paths always do (use \"/**\" for all)",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: GET } }]\n",
            "policy.yaml:8:26: network_policies.api.endpoints[0].rules[0].allow: a rule needs path (use \"/**\" for every path); upstream silently lets such a rule match nothing",
        ),
        (
            "        protocol: rest\n        access: full\n        deny_rules: [{ method: DELETE }]\n",
            "policy.yaml:9:22: network_policies.api.endpoints[0].deny_rules[0]: a rule needs path (use \"/**\" for every path); upstream silently lets such a rule match nothing",
        ),
        (
            "        protocol: rest\n        access: read-mostly\n",
            "policy.yaml:8:17: network_policies.api.endpoints[0].access: unknown access preset \"read-mostly\"; expected read-only, read-write or full",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { path: /x } }]\n",
            "policy.yaml:8:26: network_policies.api.endpoints[0].rules[0].allow: a rule needs method (an HTTP method, or \"*\" for any); upstream silently matches nothing here",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: \"GET /x\", path: /x } }]\n",
            "policy.yaml:8:36: network_policies.api.endpoints[0].rules[0].allow.method: \"GET /x\" is not an HTTP method; write e.g. GET or \"*\"",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: GET, path: \"/a{b\" } }]\n",
            "policy.yaml:8:47: network_policies.api.endpoints[0].rules[0].allow.path: unclosed `{`",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: GET, path: /x, query: { q: { all: [a] } } } }]\n",
            "policy.yaml:8:63: network_policies.api.endpoints[0].rules[0].allow.query.q: expected a glob, {glob: GLOB} or {any: [GLOB, ...]}",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: GET, path: /x, query: { q: { any: [] } } } }]\n",
            "policy.yaml:8:63: network_policies.api.endpoints[0].rules[0].allow.query.q: expected a glob, {glob: GLOB} or {any: [GLOB, ...]} with at least one glob",
        ),
        (
            "        protocol: rest\n        enforcement: block\n        access: full\n",
            "policy.yaml:8:22: network_policies.api.endpoints[0].enforcement: unknown enforcement \"block\"; expected enforce or audit",
        ),
        (
            "        protocol: rest\n        tls: mitm\n        access: full\n",
            "policy.yaml:8:14: network_policies.api.endpoints[0].tls: unknown tls mode \"mitm\"; expected skip (or leave it out)",
        ),
        (
            "        protocol: graphql\n        access: full\n",
            "policy.yaml:7:19: network_policies.api.endpoints[0].protocol: protocol \"graphql\" is not supported by this version of openshell-sandbox (it inspects rest and websocket); refusing rather than allowing more than the policy says",
        ),
        (
            "        protocol: ftp\n        access: full\n",
            "policy.yaml:7:19: network_policies.api.endpoints[0].protocol: unknown protocol \"ftp\"; expected rest or websocket (or leave it out for a plain tunnel)",
        ),
        (
            "        protocol: rest\n        access: full\n        credential_binding: { provider: github }\n",
            "policy.yaml:9:41: network_policies.api.endpoints[0].credential_binding.provider: no credential has provider \"github\" (known: none: the policy has no credentials section)",
        ),
        (
            "        protocol: rest\n        rules: [{ allow: { method: POST, path: /graphql, operation_type: query } }]\n",
            "policy.yaml:8:74: network_policies.api.endpoints[0].rules[0].allow.operation_type: operation_type matches requests of a protocol this version of openshell-sandbox does not inspect (it inspects rest and websocket); not supported by this version",
        ),
        (
            "        protocol: websocket\n        rules: [{ allow: { method: WEBSOCKET_TEXT, path: /ws } }]\n",
            "policy.yaml:8:36: network_policies.api.endpoints[0].rules[0].allow.method: WEBSOCKET_TEXT (websocket frame rules) is not supported by this version",
        ),
        (
            "        protocol: rest\n        access: full\n        retries: 3\n",
            "policy.yaml:9:9: network_policies.api.endpoints[0].retries: unknown field `retries`, expected one of",
        ),
    ];
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|(endpoint, expected)| {
            let text = l7_policy(endpoint);
            let actual = error(&text);
            (!actual.starts_with(expected))
                .then(|| format!("policy:\n{text}\nexpected: {expected}\nactual:   {actual}\n"))
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn overlapping_l7_endpoints_must_agree() {
    let text = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      \
         - { host: api.example.com, port: 443, protocol: rest, access: full }\n    \
         binaries: [{ path: /usr/bin/curl }]\n  b:\n    endpoints:\n      \
         - { host: api.example.com, port: 443, protocol: rest, access: read-only, enforcement: audit }\n    \
         binaries: [{ path: /usr/bin/git }]\n";
    assert_eq!(
        error(text),
        "policy.yaml:9:9: network_policies.b.endpoints[0]: overlaps network_policies.a.endpoints[0] \
         (same host, port and path) but differs in enforcement; make them agree"
    );
    // Different endpoint paths select different requests: no conflict.
    let paths = text.replace("enforcement: audit", "enforcement: audit, path: \"/v2/**\"");
    load_text(&paths).unwrap();
}

#[test]
fn l7_endpoints_compile_presets_and_rules() {
    let policy = load_text(&l7_policy(
        "        protocol: REST\n        rules:\n          - allow: { method: get, path: \"/repos/**\", query: { per_page: \"1*\", state: { any: [open, closed] } } }\n        deny_rules: [{ method: \"*\", path: /repos/secret/** }]\n        allow_encoded_slash: true\n",
    ))
    .unwrap();
    let l7 = policy.network[0].endpoints[0].l7.as_ref().unwrap();
    assert_eq!(l7.protocol, l7::Protocol::Rest);
    assert_eq!(l7.enforcement, l7::Enforcement::Enforce);
    assert!(!l7.enforcement_written && l7.allow_encoded_slash);
    assert_eq!(l7.rules[0].method.as_deref(), Some("GET"));
    assert_eq!(l7.rules[0].query.len(), 2);
    assert_eq!(l7.deny_rules[0].method, None);
    let read_only = load_text(&l7_policy(
        "        protocol: rest\n        access: read-only\n        enforcement: audit\n",
    ))
    .unwrap();
    let l7 = read_only.network[0].endpoints[0].l7.as_ref().unwrap();
    let methods: Vec<_> = l7.rules.iter().map(|r| r.method.clone().unwrap()).collect();
    assert_eq!(methods, ["GET", "HEAD", "OPTIONS"]);
    assert_eq!(l7.rules[0].source, "access: read-only");
    assert_eq!(l7.enforcement, l7::Enforcement::Audit);
    let plain = load_text(&l7_policy("")).unwrap();
    assert!(plain.network[0].endpoints[0].l7.is_none());
}

/// A policy with a credentials section (`credentials`, YAML indented by two) and one rule
/// whose endpoint has the flow-mapping entries `endpoint`.
fn credential_policy(credentials: &str, endpoint: &str) -> String {
    format!(
        "version: 1\ncredentials:\n{credentials}network_policies:\n  api:\n    endpoints:\n      \
         - {{ {endpoint} }}\n    binaries: [{{ path: /usr/bin/curl }}]\n"
    )
}

const ANTHROPIC: &str = "  anthropic:\n    variable: ANTHROPIC_API_KEY\n    \
     endpoints: [{ host: api.anthropic.com, port: 443 }]\n";

const INSPECTED: &str = "host: api.anthropic.com, port: 443, protocol: rest, access: full";

#[test]
fn credentials_load_with_their_defaults_and_bindings() {
    let policy = load_text(&credential_policy(ANTHROPIC, INSPECTED)).unwrap();
    let c = &policy.credentials[0];
    assert_eq!(c.name, "anthropic");
    assert_eq!(c.provider, "anthropic");
    assert_eq!(c.variable, "ANTHROPIC_API_KEY");
    assert_eq!(
        c.source,
        credentials::Source::Env("ANTHROPIC_API_KEY".into())
    );
    assert_eq!(c.placeholder, "openshell:resolve:env:ANTHROPIC_API_KEY");
    assert!(c.endpoints[0].matches("api.anthropic.com", 443));
    assert!(!c.endpoints[0].matches("api.anthropic.com", 8443));
    assert!(!c.optional);
    // Upstream's fields: bound by provider, body and websocket rewriting opted in.
    let github = "  gh:\n    variable: GH_TOKEN\n    provider: github\n    \
         source: { file: /var/run/secrets/github/token }\n    \
         placeholder: ghp_OPENSHELL-RESOLVE-ENV-GH_TOKEN\n    optional: true\n";
    let policy = load_text(&credential_policy(
        github,
        "host: api.github.com, port: 443, protocol: rest, access: full, \
         credential_binding: { provider: github }, request_body_credential_rewrite: true, \
         websocket_credential_rewrite: true",
    ))
    .unwrap();
    let c = &policy.credentials[0];
    assert_eq!(
        c.source,
        credentials::Source::File("/var/run/secrets/github/token".into())
    );
    assert!(c.optional && c.endpoints.is_empty());
    let l7 = policy.network[0].endpoints[0].l7.as_ref().unwrap();
    assert_eq!(l7.credentials, CredentialSet::one(0));
    assert!(l7.body_credentials && l7.websocket_credentials);
    // An uninspected endpoint is accepted when the policy says so.
    let policy = load_text(&credential_policy(
        ANTHROPIC,
        "host: api.anthropic.com, port: 443, allow_uninspected_credentials: true",
    ))
    .unwrap();
    assert!(policy.network[0].endpoints[0].allow_uninspected_credentials);
}

/// Every mistake in a credentials section, with its place.
#[test]
fn credential_mistakes_give_exact_messages() {
    let cases: &[(&str, &str, &str)] = &[
        (
            ANTHROPIC,
            "host: api.anthropic.com, port: 443",
            "policy.yaml:9:9: network_policies.api.endpoints[0]: credentials.anthropic is bound to api.anthropic.com:443 (credentials.anthropic.endpoints[0]); this endpoint is not inspected",
        ),
        (
            ANTHROPIC,
            "host: \"*.anthropic.com\", port: 443, protocol: rest, access: full, tls: skip",
            "policy.yaml:9:9: network_policies.api.endpoints[0]: credentials.anthropic is bound to api.anthropic.com:443",
        ),
        (
            ANTHROPIC,
            "host: api.anthropic.com, port: 8443, protocol: rest, access: full",
            "policy.yaml:5:17: credentials.anthropic.endpoints[0]: no network rule allows api.anthropic.com:443, so the credential could never be sent there",
        ),
        (
            "  anthropic:\n    variable: ANTHROPIC_API_KEY\n",
            INSPECTED,
            "policy.yaml:4:5: credentials.anthropic: is bound to no endpoint, so its placeholder would resolve nowhere",
        ),
        (
            "  a:\n    variable: ANTHROPIC-KEY\n    endpoints: []\n",
            INSPECTED,
            "policy.yaml:4:15: credentials.a.variable: \"ANTHROPIC-KEY\" is not a variable name",
        ),
        (
            "  a:\n    variable: OPENSHELL_KEY\n",
            INSPECTED,
            "policy.yaml:4:15: credentials.a.variable: OPENSHELL_ variables configure the supervisor",
        ),
        (
            "  a:\n    variable: KEY\n    source: { env: KEY, file: /run/key }\n",
            INSPECTED,
            "policy.yaml:5:13: credentials.a.source: write exactly one of env",
        ),
        (
            "  a:\n    variable: KEY\n    source: { file: run/key }\n",
            INSPECTED,
            "policy.yaml:5:21: credentials.a.source.file: \"run/key\" is not an absolute path",
        ),
        (
            "  a:\n    variable: KEY\n    placeholder: sk-ant-fake\n",
            INSPECTED,
            "policy.yaml:5:18: credentials.a.placeholder: \"sk-ant-fake\" is not a placeholder",
        ),
        (
            "  a:\n    variable: KEY\n    endpoints: [{ host: api.anthropic.com }]\n",
            INSPECTED,
            "policy.yaml:5:17: credentials.a.endpoints[0]: an endpoint needs `port` or `ports`",
        ),
        (
            "  a:\n    variable: KEY\n    endpoints: [{ host: \"*.com\", port: 443 }]\n",
            INSPECTED,
            "policy.yaml:5:25: credentials.a.endpoints[0].host: \"*.com\" would match every name under a top-level domain",
        ),
        (
            "  a:\n    variable: KEY\n  b:\n    variable: KEY\n",
            INSPECTED,
            "policy.yaml:6:15: credentials.b.variable: the same variable as credentials.a",
        ),
        (
            "  a:\n    variable: KEY\n    secret: x\n",
            INSPECTED,
            "policy.yaml:5:5: credentials.a.secret: unknown field `secret`",
        ),
        (
            ANTHROPIC,
            "host: api.anthropic.com, port: 443, protocol: rest, access: full, credential_binding: { provider: openai }",
            "policy.yaml:9:109: network_policies.api.endpoints[0].credential_binding.provider: no credential has provider \"openai\" (known: anthropic)",
        ),
        (
            "  a:\n    variable: KEY\n",
            "host: api.anthropic.com, port: 443, credential_binding: { provider: a }",
            "policy.yaml:8:67: network_policies.api.endpoints[0].credential_binding: this endpoint is not inspected",
        ),
        (
            ANTHROPIC,
            "host: api.anthropic.com, port: 443, protocol: websocket, access: full, request_body_credential_rewrite: true",
            "policy.yaml:9:115: network_policies.api.endpoints[0].request_body_credential_rewrite: applies to protocol: rest endpoints only",
        ),
        (
            ANTHROPIC,
            "host: api.anthropic.com, port: 443, allow_uninspected_credentials: true, websocket_credential_rewrite: true",
            "policy.yaml:9:114: network_policies.api.endpoints[0].websocket_credential_rewrite: applies to protocol: rest or websocket endpoints only",
        ),
    ];
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|(credentials, endpoint, expected)| {
            let text = credential_policy(credentials, endpoint);
            let actual = error(&text);
            (!actual.starts_with(expected))
                .then(|| format!("policy:\n{text}\nexpected: {expected}\nactual:   {actual}\n"))
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
