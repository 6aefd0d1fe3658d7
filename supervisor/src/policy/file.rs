//! The policy file exactly as the user wrote it (upstream OpenShell v1 schema).
//!
//! Every struct refuses unknown keys, so a typo such as `read_wrte:` is an error instead of a
//! silently ignored rule. Values that need checking beyond their type keep their source
//! location ([`Spanned`]) so that [`super::validate`] can point at the offending line.
//! Fields that belong to inspection modes this build does not enforce are still parsed, only so
//! that validation can refuse them with a clear "not supported" message instead of the generic
//! "unknown field" one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// Root of a policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Schema version; only `1` exists.
    pub version: Spanned<i64>,
    /// What the agent may read and write.
    pub filesystem_policy: Option<FilesystemFile>,
    /// How strictly Landlock must be enforced.
    pub landlock: Option<LandlockFile>,
    /// Identity the agent runs as.
    pub process: Option<ProcessFile>,
    /// Egress rules, keyed by a rule id.
    pub network_policies: Option<BTreeMap<String, Spanned<NetworkRuleFile>>>,
    /// Upstream's L7 middleware chain: parsed only to be refused by name.
    pub network_middlewares: Option<Spanned<IgnoredAny>>,
}

/// `filesystem_policy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemFile {
    /// Adds the `--workdir` directory to `read_write`.
    pub include_workdir: Option<bool>,
    /// Paths the agent may read and execute.
    #[serde(default)]
    pub read_only: Vec<Spanned<String>>,
    /// Paths the agent may read, write, create in and execute.
    #[serde(default)]
    pub read_write: Vec<Spanned<String>>,
}

/// `landlock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockFile {
    /// `best_effort` or `hard_requirement`.
    pub compatibility: Option<CompatibilityFile>,
}

/// `landlock.compatibility`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompatibilityFile {
    /// Degrade (loudly) when the kernel lacks Landlock features.
    BestEffort,
    /// Refuse to start when the kernel lacks Landlock features.
    HardRequirement,
}

/// `process`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessFile {
    /// User name or number.
    pub run_as_user: Option<Spanned<PrincipalFile>>,
    /// Group name or number.
    pub run_as_group: Option<Spanned<PrincipalFile>>,
}

/// A user or group written either as a number or as a name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PrincipalFile {
    /// `run_as_user: 1000`.
    Number(i64),
    /// `run_as_user: sandbox` (or a quoted number).
    Name(String),
}

/// One entry of `network_policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRuleFile {
    /// Display name; defaults to the map key.
    pub name: Option<String>,
    /// Where the rule allows connections to.
    #[serde(default)]
    pub endpoints: Vec<Spanned<EndpointFile>>,
    /// Which executables the rule applies to.
    #[serde(default)]
    pub binaries: Vec<BinaryFile>,
}

/// One endpoint of a network rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    /// Host name, glob or IP literal.
    pub host: Spanned<String>,
    /// A single port.
    pub port: Option<Spanned<i64>>,
    /// Several ports.
    pub ports: Option<Vec<Spanned<i64>>>,
    /// CIDRs that lift the private-address block for this endpoint.
    #[serde(default)]
    pub allowed_ips: Vec<Spanned<String>>,
    /// Inspection mode; absent means a plain TCP tunnel.
    pub protocol: Option<Spanned<String>>,
    /// `skip`, or upstream's deprecated `terminate` / `passthrough` (both automatic).
    pub tls: Option<Spanned<String>>,
    /// L7: `enforce` or `audit`.
    pub enforcement: Option<Spanned<String>>,
    /// L7: `read-only`, `read-write` or `full`.
    pub access: Option<Spanned<String>>,
    /// L7 allow rules.
    pub rules: Option<Spanned<Vec<Spanned<AllowRuleFile>>>>,
    /// L7 deny rules.
    pub deny_rules: Option<Spanned<Vec<Spanned<RequestMatchFile>>>>,
    /// L7: the requests (by path glob) this endpoint's rules apply to.
    pub path: Option<Spanned<String>>,
    /// L7: whether `%2F` may appear in request paths.
    pub allow_encoded_slash: Option<Spanned<bool>>,
    // Features of later versions (credential rewriting, request signing, GraphQL, JSON-RPC,
    // MCP): parsed only to be refused by name, never ignored.
    /// Not supported by this version: refused by name.
    pub credential_binding: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub websocket_credential_rewrite: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub request_body_credential_rewrite: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub allow_uninspected_credentials: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub credential_signing: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub signing_service: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub signing_region: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub persisted_queries: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub graphql_persisted_queries: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub graphql_max_body_bytes: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub json_rpc: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub mcp: Option<Spanned<IgnoredAny>>,
}

impl EndpointFile {
    /// The fields of features this build does not have, by name, when present.
    pub fn unsupported(&self) -> impl Iterator<Item = (&'static str, &Spanned<IgnoredAny>)> {
        [
            ("credential_binding", &self.credential_binding),
            (
                "websocket_credential_rewrite",
                &self.websocket_credential_rewrite,
            ),
            (
                "request_body_credential_rewrite",
                &self.request_body_credential_rewrite,
            ),
            (
                "allow_uninspected_credentials",
                &self.allow_uninspected_credentials,
            ),
            ("credential_signing", &self.credential_signing),
            ("signing_service", &self.signing_service),
            ("signing_region", &self.signing_region),
            ("persisted_queries", &self.persisted_queries),
            ("graphql_persisted_queries", &self.graphql_persisted_queries),
            ("graphql_max_body_bytes", &self.graphql_max_body_bytes),
            ("json_rpc", &self.json_rpc),
            ("mcp", &self.mcp),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }
}

/// One entry of `rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRuleFile {
    /// What the rule allows.
    pub allow: Spanned<RequestMatchFile>,
}

/// A request matcher (`rules[].allow`, `deny_rules[]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatchFile {
    /// HTTP method or `*`.
    pub method: Option<Spanned<String>>,
    /// Path glob.
    pub path: Option<Spanned<String>>,
    /// Query keys and the glob (or `{any: [globs]}`) every value must match.
    pub query: Option<BTreeMap<String, Spanned<QueryMatcherFile>>>,
    // Matchers of protocols this build does not inspect (SQL, GraphQL, MCP): refused by name.
    /// Not supported by this version: refused by name.
    pub command: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub operation_type: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub operation_name: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub fields: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub tool: Option<Spanned<IgnoredAny>>,
    /// Not supported by this version: refused by name.
    pub params: Option<Spanned<IgnoredAny>>,
}

impl RequestMatchFile {
    /// The matchers of protocols this build does not inspect, by name, when present.
    pub fn unsupported(&self) -> impl Iterator<Item = (&'static str, &Spanned<IgnoredAny>)> {
        [
            ("command", &self.command),
            ("operation_type", &self.operation_type),
            ("operation_name", &self.operation_name),
            ("fields", &self.fields),
            ("tool", &self.tool),
            ("params", &self.params),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }
}

/// A query value matcher: a glob, or `{any: [globs]}` (upstream also accepts `{glob: g}`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a glob, {glob: GLOB} or {any: [GLOB, ...]}"
)]
pub enum QueryMatcherFile {
    /// One glob.
    Glob(String),
    /// An object form.
    Object(QueryObjectFile),
}

/// `{glob: ...}` or `{any: [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryObjectFile {
    /// One glob.
    pub glob: Option<String>,
    /// Any of these globs.
    pub any: Option<Vec<String>>,
}

/// One entry of a rule's `binaries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryFile {
    /// Absolute path or glob of the executable.
    pub path: Spanned<String>,
}
