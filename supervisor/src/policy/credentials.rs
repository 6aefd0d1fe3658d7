//! `credentials` (ours): values the agent never holds.
//!
//! Upstream's supervisor gets credential values from its gateway; standalone, ours takes them
//! from what Kubernetes gives the agent container: a variable of the supervisor's own
//! environment (`env: valueFrom: secretKeyRef`) or a file the agent cannot see (a Secret
//! volume at a path the policy does not list). The agent's variable holds a placeholder,
//! and the proxy swaps the real value in on the way to the endpoints the credential is bound
//! to, which must be inspected (L7) ones:
//!
//! ```yaml
//! credentials:
//!   anthropic:
//!     variable: ANTHROPIC_API_KEY           # what the agent sees, holding the placeholder
//!     source: { env: ANTHROPIC_API_KEY }     # or { file: /var/run/secrets/anthropic/key }
//!     placeholder: sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY   # optional alias
//!     endpoints: [{ host: api.anthropic.com, port: 443 }]
//! ```
//!
//! Upstream's endpoint fields keep their meaning: `credential_binding: {provider: NAME}` binds
//! the credentials whose `provider` (default: their key) is NAME to that endpoint;
//! `request_body_credential_rewrite` and `websocket_credential_rewrite` let the proxy replace
//! placeholders in request bodies and client websocket messages there;
//! `allow_uninspected_credentials` accepts a bound endpoint the proxy cannot inspect (where it
//! then adds nothing).

use std::fmt;
use std::path::PathBuf;

use super::HostPattern;

/// The placeholder every credential has unless it declares an alias: upstream's form.
pub const PLACEHOLDER_PREFIX: &str = "openshell:resolve:env:";
/// The marker inside a provider-shaped alias (`sk-ant-api03-OPENSHELL-RESOLVE-ENV-NAME`), as
/// upstream: an alias always contains it, so an alias nobody declared is still recognised.
pub const ALIAS_MARKER: &str = "OPENSHELL-RESOLVE-ENV-";
/// Most credentials in one policy (the proxy keeps the bound ones of a request in a bit set).
pub const MAX_CREDENTIALS: usize = 64;
/// Longest placeholder accepted.
const MAX_PLACEHOLDER: usize = 256;

/// One validated credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its key in `credentials`.
    pub name: String,
    /// The name `credential_binding.provider` uses.
    pub provider: String,
    /// The agent's variable.
    pub variable: String,
    /// Where the real value comes from.
    pub source: Source,
    /// What the agent's variable holds instead.
    pub placeholder: String,
    /// Destinations the value may be sent to.
    pub endpoints: Vec<CredentialEndpoint>,
    /// Whether a missing source only warns.
    pub optional: bool,
}

/// Where a real value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A variable of the supervisor's environment.
    Env(String),
    /// A file, read by the supervisor before the agent starts.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// One `endpoints` entry of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEndpoint {
    /// Host name or glob.
    pub host: HostPattern,
    /// Ports.
    pub ports: Vec<u16>,
}

impl CredentialEndpoint {
    /// Whether a request to `host` (normalised) and `port` may carry the credential.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.ports.contains(&port) && self.host.matches(host)
    }
}

impl fmt::Display for CredentialEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        write!(f, "{}:{}", self.host, ports.join(","))
    }
}

/// A set of credentials, by their index in [`super::Policy::credentials`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialSet(u64);

impl CredentialSet {
    /// The empty set.
    pub const EMPTY: CredentialSet = CredentialSet(0);

    /// The set holding only `index`.
    pub fn one(index: usize) -> CredentialSet {
        CredentialSet(1 << index)
    }

    /// Adds every member of `other`.
    pub fn extend(&mut self, other: CredentialSet) {
        self.0 |= other.0;
    }

    /// Whether `index` is in the set.
    pub fn contains(self, index: usize) -> bool {
        index < MAX_CREDENTIALS && self.0 & (1 << index) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_CREDENTIALS).filter(move |i| self.contains(*i))
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a variable name every shell and runtime accepts.
pub fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(is_key_byte)
        && name.len() <= 256
}

/// A byte of a variable name.
pub fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A byte of an alias token (upstream's: what API keys are made of).
pub fn is_alias_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~')
}

/// The default placeholder of `variable`.
pub fn default_placeholder(variable: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{variable}")
}

/// Checks a declared placeholder: upstream's `openshell:resolve:env:NAME`, or an alias
/// `PREFIX` + `OPENSHELL-RESOLVE-ENV-` + `NAME` whose prefix a client library's format check
/// accepts (`sk-ant-api03-`). Either way it is recognisable as a placeholder wherever it
/// turns up, declared or not.
pub fn check_placeholder(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_PLACEHOLDER {
        return Err(format!(
            "a placeholder has at most {MAX_PLACEHOLDER} characters"
        ));
    }
    if let Some(name) = raw.strip_prefix(PLACEHOLDER_PREFIX) {
        return match is_variable_name(name) {
            true => Ok(()),
            false => Err(format!(
                "{raw:?}: after {PLACEHOLDER_PREFIX} comes a variable name \
                 ([A-Za-z_][A-Za-z0-9_]*)"
            )),
        };
    }
    let Some((prefix, name)) = raw.split_once(ALIAS_MARKER) else {
        return Err(format!(
            "{raw:?} is not a placeholder: write {PLACEHOLDER_PREFIX}NAME, or an alias \
             PREFIX{ALIAS_MARKER}NAME (e.g. sk-ant-api03-{ALIAS_MARKER}ANTHROPIC_API_KEY) \
             where a client checks the key's format"
        ));
    };
    if prefix.is_empty() || !prefix.bytes().all(is_alias_byte) {
        return Err(format!(
            "{raw:?}: an alias starts with a non-empty prefix of letters, digits, '-', '_', \
             '.' or '~' before {ALIAS_MARKER}"
        ));
    }
    if !is_variable_name(name) {
        return Err(format!(
            "{raw:?}: after {ALIAS_MARKER} comes a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_upstreams_form_or_marked_aliases() {
        for good in [
            "openshell:resolve:env:ANTHROPIC_API_KEY",
            "sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY",
            "ghp_OPENSHELL-RESOLVE-ENV-GITHUB_TOKEN",
        ] {
            assert_eq!(check_placeholder(good), Ok(()), "{good}");
        }
        for bad in [
            "sk-ant-fake",
            "openshell:resolve:env:",
            "openshell:resolve:env:A-B",
            "OPENSHELL-RESOLVE-ENV-KEY",
            "sk ant OPENSHELL-RESOLVE-ENV-KEY",
            "sk-OPENSHELL-RESOLVE-ENV-",
        ] {
            assert!(check_placeholder(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sets_hold_indices() {
        let mut set = CredentialSet::one(3);
        set.extend(CredentialSet::one(63));
        assert!(set.contains(3) && set.contains(63) && !set.contains(4));
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, 63]);
        assert!(CredentialSet::EMPTY.is_empty() && !set.contains(64));
    }
}
