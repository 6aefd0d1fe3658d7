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
    /// `skip` (we never terminate TLS) or `terminate`.
    pub tls: Option<Spanned<String>>,
    /// L7 enforcement mode.
    pub enforcement: Option<Spanned<IgnoredAny>>,
    /// L7 access preset.
    pub access: Option<Spanned<IgnoredAny>>,
    /// L7 allow rules.
    pub rules: Option<Spanned<IgnoredAny>>,
    /// L7 deny rules.
    pub deny_rules: Option<Spanned<IgnoredAny>>,
}

/// One entry of a rule's `binaries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryFile {
    /// Absolute path or glob of the executable.
    pub path: Spanned<String>,
}
