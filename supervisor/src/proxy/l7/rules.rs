//! The L7 decision: may this request (method, canonical path, query) pass?
//!
//! A pure function of the L7 endpoints the connection's caller was allowed to reach and the
//! request, tested as a table. Upstream's semantics: the endpoints whose `path` selector
//! matches the request speak for it (none: refused); a request is allowed when one of their
//! allow rules matches it and none of their deny rules does (deny wins); methods ignore case,
//! `*` is any method and a GET rule also allows HEAD; an allow rule's query keys must all be
//! present with every value matching, while a deny rule fires when any value of each of its
//! keys matches. Enforcement (enforce or audit) comes from the most specific matching
//! selector, and when equally specific selectors disagree, enforce wins.

use crate::policy::l7::{Enforcement, L7Endpoint, RequestRule};

/// The request as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The canonical path.
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(String, String)],
    /// Whether the canonical path kept an encoded slash.
    pub encoded_slash: bool,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// Whether a refusal blocks.
    pub enforcement: Enforcement,
    /// Allowed, or why not.
    pub outcome: Outcome<'p>,
}

/// Allowed by a rule, or refused with the reason. Each names the endpoint that decided
/// (for the `policy` it belongs to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'p> {
    /// The first allow rule that matched.
    Allowed(&'p L7Endpoint, &'p RequestRule),
    /// A deny rule matched (it wins over any allow rule).
    DenyRule(&'p L7Endpoint, &'p RequestRule),
    /// No allow rule matched.
    NotPermitted(&'p L7Endpoint),
    /// No endpoint's `path` selector covers the request.
    NoEndpoint,
    /// The path has an encoded slash and the endpoint does not allow them.
    EncodedSlash(&'p L7Endpoint),
}

impl<'p> Outcome<'p> {
    /// True when the request may pass under enforcement.
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Allowed(..))
    }

    /// The rule named in logs and 403 bodies.
    pub fn rule(&self) -> Option<&'p str> {
        match self {
            Outcome::Allowed(_, rule) | Outcome::DenyRule(_, rule) => Some(&rule.source),
            _ => None,
        }
    }

    /// The network rule (policy) of the deciding endpoint.
    pub fn policy(&self) -> Option<&'p str> {
        match self {
            Outcome::Allowed(e, _)
            | Outcome::DenyRule(e, _)
            | Outcome::NotPermitted(e)
            | Outcome::EncodedSlash(e) => Some(&e.policy),
            Outcome::NoEndpoint => None,
        }
    }
}

/// Decides `request` against the L7 `endpoints` the caller may use on this connection.
pub fn evaluate<'p>(endpoints: &[&'p L7Endpoint], request: &Request<'_>) -> Verdict<'p> {
    let covering: Vec<&L7Endpoint> = endpoints
        .iter()
        .copied()
        .filter(|e| e.path.as_ref().is_none_or(|p| p.matches(request.path)))
        .collect();
    let specificity = |e: &L7Endpoint| e.path.as_ref().map_or(0, |p| p.specificity() + 1);
    let Some(most) = covering.iter().map(|e| specificity(e)).max() else {
        return Verdict {
            enforcement: Enforcement::Enforce,
            outcome: Outcome::NoEndpoint,
        };
    };
    let deciding: Vec<&L7Endpoint> = covering
        .iter()
        .copied()
        .filter(|e| specificity(e) == most)
        .collect();
    let enforcing = deciding
        .iter()
        .find(|e| e.enforcement == Enforcement::Enforce);
    let (first, enforcement) = match enforcing {
        Some(e) => (*e, Enforcement::Enforce),
        None => (deciding[0], Enforcement::Audit),
    };
    let no_encoded_slash = deciding
        .iter()
        .find(|e| request.encoded_slash && !e.allow_encoded_slash);
    let outcome = if let Some(e) = no_encoded_slash {
        Outcome::EncodedSlash(e)
    } else if let Some((e, deny)) =
        first_match(&covering, |e| &e.deny_rules, request, Quantifier::Any)
    {
        Outcome::DenyRule(e, deny)
    } else if let Some((e, allow)) =
        first_match(&covering, |e| &e.rules, request, Quantifier::Every)
    {
        Outcome::Allowed(e, allow)
    } else {
        Outcome::NotPermitted(first)
    };
    Verdict {
        enforcement,
        outcome,
    }
}

/// How the values of a rule's query key must match.
#[derive(Clone, Copy)]
enum Quantifier {
    /// Allow rules: every value of the key.
    Every,
    /// Deny rules: any value of the key (the stricter reading for a deny).
    Any,
}

fn first_match<'p>(
    endpoints: &[&'p L7Endpoint],
    rules: impl Fn(&'p L7Endpoint) -> &'p Vec<RequestRule>,
    request: &Request<'_>,
    quantifier: Quantifier,
) -> Option<(&'p L7Endpoint, &'p RequestRule)> {
    endpoints.iter().find_map(|e| {
        rules(e)
            .iter()
            .find(|rule| rule_matches(rule, request, quantifier))
            .map(|rule| (*e, rule))
    })
}

fn rule_matches(rule: &RequestRule, request: &Request<'_>, quantifier: Quantifier) -> bool {
    method_matches(rule.method.as_deref(), request.method)
        && rule.path.matches(request.path)
        && rule.query.iter().all(|(key, globs)| {
            let mut values = request
                .query
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .peekable();
            let present = values.peek().is_some();
            let value_matches = |v: &str| globs.iter().any(|g| g.matches(v));
            present
                && match quantifier {
                    Quantifier::Every => values.all(value_matches),
                    Quantifier::Any => values.any(value_matches),
                }
        })
}

/// `None` is `*`. A GET rule also allows HEAD (RFC 9110: the same request without a body).
fn method_matches(rule: Option<&str>, method: &str) -> bool {
    match rule {
        None => true,
        Some(want) => {
            method.eq_ignore_ascii_case(want)
                || (want == "GET" && method.eq_ignore_ascii_case("HEAD"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{self, PolicyOrigin};
    use crate::proxy::l7::canon::query_params;

    /// Each endpoint block of `yaml` (one rule, endpoints on api.example.com:443).
    fn endpoints(yaml: &str) -> Vec<L7Endpoint> {
        let text = format!(
            "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n{yaml}    binaries: [{{ path: /usr/bin/curl }}]\n"
        );
        let origin = PolicyOrigin::BuiltinDefault;
        let policy = policy::validate(
            policy::parse(&text, &origin).unwrap(),
            origin,
            Path::new("/w"),
        )
        .unwrap();
        policy.network[0]
            .endpoints
            .iter()
            .filter_map(|e| e.l7.clone())
            .collect()
    }

    /// Method, target (path?query), expected: `Ok(rule source)`, or `Err` with the outcome's
    /// name.
    type Case<'a> = (&'a str, &'a str, Result<&'a str, &'a str>);

    fn run(endpoints: &[L7Endpoint], cases: &[Case<'_>]) {
        let refs: Vec<&L7Endpoint> = endpoints.iter().collect();
        for (method, target, expected) in cases {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let query = query_params(query);
            let verdict = evaluate(
                &refs,
                &Request {
                    method,
                    path,
                    query: &query,
                    encoded_slash: path.contains("%2F"),
                },
            );
            let got = match &verdict.outcome {
                Outcome::Allowed(_, rule) => Ok(rule.source.as_str()),
                Outcome::DenyRule(_, rule) => Err(format!("deny {}", rule.source)),
                Outcome::NotPermitted(_) => Err("not permitted".to_owned()),
                Outcome::NoEndpoint => Err("no endpoint".to_owned()),
                Outcome::EncodedSlash(_) => Err("encoded slash".to_owned()),
            };
            assert_eq!(
                got.as_ref().map(|s| *s).map_err(String::as_str),
                *expected,
                "{method} {target}"
            );
        }
    }

    #[test]
    fn read_only_preset() {
        let e = endpoints(
            "      - { host: api.example.com, port: 443, protocol: rest, access: read-only }\n",
        );
        run(
            &e,
            &[
                ("GET", "/repos/x", Ok("access: read-only")),
                ("get", "/", Ok("access: read-only")),
                ("HEAD", "/x", Ok("access: read-only")),
                ("OPTIONS", "/x", Ok("access: read-only")),
                ("POST", "/repos/x/issues", Err("not permitted")),
                ("DELETE", "/repos/x", Err("not permitted")),
                ("PUT", "/x", Err("not permitted")),
            ],
        );
    }

    #[test]
    fn read_write_and_full_presets() {
        let rw = endpoints(
            "      - { host: api.example.com, port: 443, protocol: rest, access: read-write }\n",
        );
        run(
            &rw,
            &[
                ("PATCH", "/x", Ok("access: read-write")),
                ("POST", "/x", Ok("access: read-write")),
                ("DELETE", "/x", Err("not permitted")),
            ],
        );
        let full = endpoints(
            "      - { host: api.example.com, port: 443, protocol: rest, access: full }\n",
        );
        run(
            &full,
            &[
                ("DELETE", "/x", Ok("access: full")),
                ("PROPFIND", "/x", Ok("access: full")),
            ],
        );
    }

    #[test]
    fn explicit_rules_deny_rules_and_queries() {
        let e = endpoints(
            "      - host: api.example.com\n        port: 443\n        protocol: rest\n        rules:\n\
             \x20         - allow: { method: GET, path: \"/repos/*/issues\" }\n\
             \x20         - allow: { method: POST, path: \"/repos/*/issues\", query: { label: \"bug*\" } }\n\
             \x20         - allow: { method: \"*\", path: \"/search/**\", query: { q: { any: [\"a*\", \"b*\"] } } }\n\
             \x20         - allow: { method: GET, path: \"/repos/**\" }\n\
             \x20       deny_rules:\n\
             \x20         - { method: GET, path: \"/repos/secret/**\" }\n\
             \x20         - { method: \"*\", path: \"/search/**\", query: { q: \"*password*\" } }\n",
        );
        run(
            &e,
            &[
                ("GET", "/repos/x/issues", Ok("rules[0]")),
                ("HEAD", "/repos/x/issues", Ok("rules[0]")),
                ("GET", "/repos/x/issues/", Ok("rules[3]")),
                ("GET", "/repos/a/b/c", Ok("rules[3]")),
                ("GET", "/repos", Err("not permitted")),
                ("GET", "/Repos/x/issues", Err("not permitted")),
                ("GET", "/repos/secret/x", Err("deny deny_rules[0]")),
                ("HEAD", "/repos/secret/x", Err("deny deny_rules[0]")),
                ("POST", "/repos/x/issues?label=bugfix", Ok("rules[1]")),
                (
                    "POST",
                    "/repos/x/issues?label=bug&label=feature",
                    Err("not permitted"),
                ),
                ("POST", "/repos/x/issues", Err("not permitted")),
                ("POST", "/repos/x/issues?other=1", Err("not permitted")),
                ("PUT", "/search/code?q=abc", Ok("rules[2]")),
                ("GET", "/search/code?q=bcd&q=axe", Ok("rules[2]")),
                ("GET", "/search/code?q=cde", Err("not permitted")),
                (
                    "GET",
                    "/search/code?q=a&q=my+password+x",
                    Err("deny deny_rules[1]"),
                ),
                (
                    "GET",
                    "/search/code?q=my%20passwords",
                    Err("deny deny_rules[1]"),
                ),
            ],
        );
    }

    #[test]
    fn endpoint_paths_select_the_endpoint_and_its_enforcement() {
        let e = endpoints(
            "      - { host: api.example.com, port: 443, protocol: rest, access: read-only }\n\
             \x20     - { host: api.example.com, port: 443, protocol: rest, path: \"/v2/**\", access: full, enforcement: audit }\n\
             \x20     - { host: api.example.com, port: 443, protocol: rest, path: \"/admin/**\", access: read-only, allow_encoded_slash: true }\n",
        );
        let refs: Vec<&L7Endpoint> = e.iter().collect();
        let verdict = |method, path| {
            evaluate(
                &refs,
                &Request {
                    method,
                    path,
                    query: &[],
                    encoded_slash: path.contains("%2F"),
                },
            )
        };
        // /v2 is audited, and its full access adds to what the path-less endpoint allows.
        let v2 = verdict("DELETE", "/v2/x");
        assert_eq!(
            (v2.enforcement, v2.outcome.rule()),
            (Enforcement::Audit, Some("access: full"))
        );
        let other = verdict("DELETE", "/v1/x");
        assert_eq!(
            (other.enforcement, &other.outcome),
            (Enforcement::Enforce, &Outcome::NotPermitted(&e[0]))
        );
        assert_eq!(other.outcome.policy(), Some("api"));
        assert!(verdict("GET", "/admin/a%2Fb").outcome.allowed());
        assert_eq!(
            verdict("GET", "/v1/a%2Fb").outcome,
            Outcome::EncodedSlash(&e[0])
        );
        let only_paths = endpoints(
            "      - { host: api.example.com, port: 443, protocol: rest, path: \"/v2/**\", access: full }\n",
        );
        run(
            &only_paths,
            &[
                ("GET", "/v2/x", Ok("access: full")),
                ("GET", "/v1/x", Err("no endpoint")),
            ],
        );
    }

    /// The rules of the upstream fixture that allows git clone over smart HTTP and nothing
    /// else (push is `git-receive-pack`).
    #[test]
    fn git_smart_http_fixture_rules() {
        let e = endpoints(
            "      - host: github.com\n        port: 443\n        protocol: rest\n        enforcement: enforce\n        rules:\n\
             \x20         - allow: { method: GET, path: \"/**/info/refs*\" }\n\
             \x20         - allow: { method: POST, path: \"/**/git-upload-pack\" }\n",
        );
        run(
            &e,
            &[
                (
                    "GET",
                    "/org/repo.git/info/refs?service=git-upload-pack",
                    Ok("rules[0]"),
                ),
                ("POST", "/org/repo.git/git-upload-pack", Ok("rules[1]")),
                (
                    "GET",
                    "/org/repo.git/info/refs?service=git-receive-pack",
                    Ok("rules[0]"),
                ),
                (
                    "POST",
                    "/org/repo.git/git-receive-pack",
                    Err("not permitted"),
                ),
                ("GET", "/org/repo.git/HEAD", Err("not permitted")),
            ],
        );
    }
}
