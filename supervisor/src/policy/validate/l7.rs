//! The L7 fields of an endpoint: upstream's errors kept, three of its silent mistakes made
//! errors (an allow or deny rule without `path`, an unknown `access` preset), and fields of
//! features not built yet refused by name.

use serde_saphyr::{Location, Spanned};

use super::Validator;
use crate::policy::file::{EndpointFile, QueryMatcherFile, RequestMatchFile};
use crate::policy::l7::{Access, Enforcement, Glob, L7Endpoint, Protocol, RequestRule, TlsMode};
use crate::policy::{Endpoint, PolicyError, Position};

/// Most allow rules on one endpoint.
const MAX_RULES: usize = 1024;

impl Validator {
    /// The endpoint's L7 settings: `None` for a plain tunnel.
    pub(super) fn l7(
        &self,
        raw: &Spanned<EndpointFile>,
        base: &str,
    ) -> Result<Option<L7Endpoint>, PolicyError> {
        let e = &raw.value;
        if let Some((name, value)) = e.unsupported().next() {
            return Err(self.err(
                value,
                format!("{base}.{name}"),
                "is a setting of a feature this version of openshell-sandbox does not have \
                 (credential rewriting, request signing, GraphQL, JSON-RPC, MCP); it is not \
                 supported by this version; refusing rather than ignoring it",
            ));
        }
        let tls = match &e.tls {
            None => TlsMode::Auto,
            Some(tls) => match tls.value.to_ascii_lowercase().as_str() {
                "skip" => TlsMode::Skip,
                // Upstream's deprecated spellings of "automatic".
                "terminate" | "passthrough" => TlsMode::Auto,
                other => {
                    return Err(self.err(
                        tls,
                        format!("{base}.tls"),
                        format!("unknown tls mode {other:?}; expected skip (or leave it out)"),
                    ));
                }
            },
        };
        let Some(protocol_raw) = &e.protocol else {
            self.refuse_l7_fields_without_protocol(e, base)?;
            return Ok(None);
        };
        let protocol = match protocol_raw.value.to_ascii_lowercase().as_str() {
            "rest" => Protocol::Rest,
            "websocket" => Protocol::Websocket,
            other @ ("graphql" | "sql" | "json-rpc" | "mcp") => {
                return Err(self.err(
                    protocol_raw,
                    format!("{base}.protocol"),
                    format!(
                        "protocol {other:?} is not supported by this version of \
                         openshell-sandbox (it inspects rest and websocket); refusing rather \
                         than allowing more than the policy says"
                    ),
                ));
            }
            other => {
                return Err(self.err(
                    protocol_raw,
                    format!("{base}.protocol"),
                    format!(
                        "unknown protocol {other:?}; expected rest or websocket (or leave it \
                         out for a plain tunnel)"
                    ),
                ));
            }
        };
        let (enforcement, enforcement_written) = match &e.enforcement {
            None => (Enforcement::Enforce, false),
            Some(value) => match value.value.to_ascii_lowercase().as_str() {
                "enforce" => (Enforcement::Enforce, true),
                "audit" => (Enforcement::Audit, true),
                other => {
                    return Err(self.err(
                        value,
                        format!("{base}.enforcement"),
                        format!("unknown enforcement {other:?}; expected enforce or audit"),
                    ));
                }
            },
        };
        let (rules, access) = match (&e.access, &e.rules) {
            (Some(_), Some(rules)) => {
                return Err(self.err(
                    rules,
                    format!("{base}.rules"),
                    "rules and access cannot be used together; use one or the other",
                ));
            }
            (None, None) => {
                return Err(self.err(
                    protocol_raw,
                    format!("{base}.protocol"),
                    format!(
                        "protocol {:?} needs rules or access; without them the endpoint \
                         would allow nothing",
                        protocol_raw.value
                    ),
                ));
            }
            (Some(access), None) => {
                let preset = Access::parse(&access.value).ok_or_else(|| {
                    self.err(
                        access,
                        format!("{base}.access"),
                        format!(
                            "unknown access preset {:?}; expected read-only, read-write or full",
                            access.value
                        ),
                    )
                })?;
                (preset_rules(preset), Some(preset))
            }
            (None, Some(rules)) => {
                if rules.value.is_empty() {
                    return Err(self.err(
                        rules,
                        format!("{base}.rules"),
                        "rules is empty; list at least one rule, or use access",
                    ));
                }
                let mut compiled = Vec::new();
                for (i, rule) in rules.value.iter().enumerate() {
                    let field = format!("{base}.rules[{i}].allow");
                    compiled.push(self.request_rule(
                        &rule.value.allow,
                        &field,
                        format!("rules[{i}]"),
                    )?);
                }
                (compiled, None)
            }
        };
        if rules.len() > MAX_RULES {
            return Err(self.err(
                raw,
                base,
                format!("{} rules; the limit is {MAX_RULES}", rules.len()),
            ));
        }
        let mut deny_rules = Vec::new();
        if let Some(denies) = &e.deny_rules {
            if denies.value.is_empty() {
                return Err(self.err(
                    denies,
                    format!("{base}.deny_rules"),
                    "deny_rules is empty; list at least one rule or leave it out",
                ));
            }
            for (i, deny) in denies.value.iter().enumerate() {
                let field = format!("{base}.deny_rules[{i}]");
                deny_rules.push(self.request_rule(deny, &field, format!("deny_rules[{i}]"))?);
            }
        }
        let path = match &e.path {
            None => None,
            Some(path) => Some(
                path_glob(&path.value).map_err(|m| self.err(path, format!("{base}.path"), m))?,
            ),
        };
        Ok(Some(L7Endpoint {
            // Set by the rule once its name is known.
            policy: String::new(),
            protocol,
            enforcement,
            enforcement_written,
            tls,
            path,
            allow_encoded_slash: e.allow_encoded_slash.as_ref().is_some_and(|a| a.value),
            rules,
            deny_rules,
            access,
        }))
    }

    /// Upstream refuses deny rules without a protocol; the other L7 fields mean nothing
    /// without one either, so writing them is a mistake worth stopping on.
    fn refuse_l7_fields_without_protocol(
        &self,
        e: &EndpointFile,
        base: &str,
    ) -> Result<(), PolicyError> {
        let written: [(&str, Option<&Location>); 6] = [
            ("rules", e.rules.as_ref().map(|v| &v.referenced)),
            ("deny_rules", e.deny_rules.as_ref().map(|v| &v.referenced)),
            ("access", e.access.as_ref().map(|v| &v.referenced)),
            ("enforcement", e.enforcement.as_ref().map(|v| &v.referenced)),
            ("path", e.path.as_ref().map(|v| &v.referenced)),
            (
                "allow_encoded_slash",
                e.allow_encoded_slash.as_ref().map(|v| &v.referenced),
            ),
        ];
        match written
            .into_iter()
            .find_map(|(name, at)| at.map(|at| (name, at)))
        {
            None => Ok(()),
            Some((name, at)) => Err(PolicyError::Invalid {
                origin: self.origin.clone(),
                position: Position::of(at),
                field: format!("{base}.{name}"),
                message: format!(
                    "{name} applies only to inspected endpoints; add protocol: rest (or remove \
                     {name})"
                ),
            }),
        }
    }

    fn request_rule(
        &self,
        raw: &Spanned<RequestMatchFile>,
        field: &str,
        source: String,
    ) -> Result<RequestRule, PolicyError> {
        let m = &raw.value;
        if let Some((name, value)) = m.unsupported().next() {
            return Err(self.err(
                value,
                format!("{field}.{name}"),
                format!(
                    "{name} matches requests of a protocol this version of openshell-sandbox \
                     does not inspect (it inspects rest and websocket); not supported by this \
                     version"
                ),
            ));
        }
        let method = match &m.method {
            None => {
                return Err(self.err(
                    raw,
                    field,
                    "a rule needs method (an HTTP method, or \"*\" for any); upstream \
                     silently matches nothing here",
                ));
            }
            Some(method) if method.value == "*" => None,
            // Upstream's websocket frame rules: frames are not inspected by this build.
            Some(method) if method.value.eq_ignore_ascii_case("WEBSOCKET_TEXT") => {
                return Err(self.err(
                    method,
                    format!("{field}.method"),
                    "WEBSOCKET_TEXT (websocket frame rules) is not supported by this version: \
                     the upgrade is decided as its GET, and frames then pass uninspected",
                ));
            }
            Some(method) => {
                let valid = !method.value.is_empty()
                    && method.value.len() <= 32
                    && method
                        .value
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'-');
                if !valid {
                    return Err(self.err(
                        method,
                        format!("{field}.method"),
                        format!(
                            "{:?} is not an HTTP method; write e.g. GET or \"*\"",
                            method.value
                        ),
                    ));
                }
                Some(method.value.to_ascii_uppercase())
            }
        };
        let path = match &m.path {
            None => {
                return Err(self.err(
                    raw,
                    field,
                    "a rule needs path (use \"/**\" for every path); upstream silently lets \
                     such a rule match nothing",
                ));
            }
            Some(path) => {
                path_glob(&path.value).map_err(|e| self.err(path, format!("{field}.path"), e))?
            }
        };
        let mut query = Vec::new();
        for (key, matcher) in m.query.iter().flatten() {
            let at = format!("{field}.query.{key}");
            let patterns: Vec<&String> = match &matcher.value {
                QueryMatcherFile::Glob(glob) => vec![glob],
                QueryMatcherFile::Object(object) => match (&object.glob, &object.any) {
                    (Some(glob), None) => vec![glob],
                    (None, Some(any)) if !any.is_empty() => any.iter().collect(),
                    _ => {
                        return Err(self.err(
                            matcher,
                            at,
                            "expected a glob, {glob: GLOB} or {any: [GLOB, ...]} with at least \
                             one glob",
                        ));
                    }
                },
            };
            let globs = patterns
                .into_iter()
                .map(|p| Glob::value(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(matcher, &at, e))?;
            query.push((key.clone(), globs));
        }
        Ok(RequestRule {
            source,
            method,
            path,
            query,
        })
    }
}

/// A rule or endpoint path: absolute (or upstream's bare `**`), compiled.
fn path_glob(raw: &str) -> Result<Glob, String> {
    if !(raw.starts_with('/') || raw == "**") {
        return Err(format!(
            "{raw:?} does not start with `/`; request paths always do (use \"/**\" for all)"
        ));
    }
    Glob::path(raw)
}

fn preset_rules(access: Access) -> Vec<RequestRule> {
    access
        .methods()
        .iter()
        .map(|method| RequestRule {
            source: format!("access: {}", access.as_str()),
            method: (*method != "*").then(|| (*method).to_owned()),
            path: Glob::everything(),
            query: Vec::new(),
        })
        .collect()
}

/// Endpoints that can serve the same request must agree on how it is handled: upstream
/// refuses such a policy, and so do we (otherwise which one applied would depend on order).
pub(super) fn conflicts(
    endpoints: &[(String, Option<Position>, &Endpoint)],
) -> Option<(String, Option<Position>, String)> {
    for (i, (field_a, _, a)) in endpoints.iter().enumerate() {
        for (field_b, position_b, b) in &endpoints[i + 1..] {
            let shared_port = a.ports.iter().any(|p| b.ports.contains(p));
            if !shared_port || a.host.to_string() != b.host.to_string() {
                continue;
            }
            let (Some(la), Some(lb)) = (&a.l7, &b.l7) else {
                continue;
            };
            let same_selector =
                la.path.as_ref().map(Glob::as_str) == lb.path.as_ref().map(Glob::as_str);
            let mut differ = Vec::new();
            if la.tls != lb.tls {
                differ.push("tls");
            }
            if same_selector {
                if la.protocol != lb.protocol {
                    differ.push("protocol");
                }
                if la.enforcement != lb.enforcement {
                    differ.push("enforcement");
                }
                if la.allow_encoded_slash != lb.allow_encoded_slash {
                    differ.push("allow_encoded_slash");
                }
            }
            if !differ.is_empty() {
                return Some((
                    field_b.clone(),
                    *position_b,
                    format!(
                        "overlaps {field_a} (same host, port and path) but differs in {}; \
                         make them agree",
                        differ.join(", ")
                    ),
                ));
            }
        }
    }
    None
}
