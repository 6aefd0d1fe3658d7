//! The sandbox policy: what the agent may touch on disk, who it runs as, where it may connect.
//!
//! The upstream OpenShell v1 YAML schema loads unchanged. A raw [`PolicyFile`] (serde, unknown
//! keys refused) becomes a [`Policy`] only through [`validate`], so every later step works on
//! checked values: absolute paths without `..`, known host patterns, ports in range, a non-root
//! identity. Every error names the file, line, column and field.

mod cidr;
mod error;
mod file;
mod glob;
mod host;
pub mod l7;
mod validate;

use std::path::{Path, PathBuf};

pub use cidr::{Cidr, canonical as canonical_ip};
pub use error::{PolicyError, PolicyOrigin, Position};
pub use file::PolicyFile;
pub use glob::PathGlob;
pub use host::{HostPattern, Label, normalize as normalize_host};
pub use l7::L7Endpoint;
pub use validate::validate;

/// Where `openshell-sandbox` looks for a policy when none is given.
pub const DEFAULT_POLICY_PATH: &str = "/etc/openshell/policy.yaml";

/// The restrictive policy used when no policy file exists: system paths read-only, `/tmp` and
/// the workdir writable, no network. It is also shipped as `policies/default.yaml`.
pub const BUILTIN_DEFAULT: &str = include_str!("../../../policies/default.yaml");

/// Largest policy file accepted; real policies are a few KiB.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it was loaded from.
    pub origin: PolicyOrigin,
    /// Landlock rules.
    pub filesystem: Filesystem,
    /// Whether missing Landlock features stop the sandbox.
    pub compatibility: Compatibility,
    /// The identity the agent runs as, before environment overrides.
    pub run_as: RunAs,
    /// Egress rules; empty means no network at all.
    pub network: Vec<NetworkRule>,
    /// Things worth telling the user that do not make the policy invalid.
    pub notes: Vec<String>,
}

/// Paths the agent may use. A path listed in neither list is inaccessible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filesystem {
    /// Read and execute.
    pub read_only: Vec<PathBuf>,
    /// Read, execute, write, create, remove, truncate.
    pub read_write: Vec<PathBuf>,
}

/// `landlock.compatibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    /// Run with whatever Landlock the kernel has, warning loudly about what is missing.
    BestEffort,
    /// Refuse to start unless the filesystem policy can be enforced as written (our default).
    HardRequirement,
}

/// A user or group, by number or by name (resolved in the agent image's `/etc/passwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A numeric id, never 0.
    Id(u32),
    /// A name to look up.
    Name(String),
}

/// `process.run_as_user` / `run_as_group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAs {
    /// The user.
    pub user: Option<Principal>,
    /// The group; defaults to the user's primary group.
    pub group: Option<Principal>,
}

/// One entry of `network_policies`: connections to any of `endpoints`, made by any of
/// `binaries`.
#[derive(Debug, Clone)]
pub struct NetworkRule {
    /// The rule's key in the map, used in logs.
    pub key: String,
    /// Display name (`name:`, defaulting to the key).
    pub name: String,
    /// Allowed destinations.
    pub endpoints: Vec<Endpoint>,
    /// Executables the rule applies to.
    pub binaries: Vec<PathGlob>,
}

/// One allowed destination.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name, glob or IP literal.
    pub host: HostPattern,
    /// Allowed ports.
    pub ports: Vec<u16>,
    /// Private ranges this endpoint may resolve to.
    pub allowed_ips: Vec<Cidr>,
    /// HTTP inspection (`protocol: rest`); `None`: a plain tunnel.
    pub l7: Option<L7Endpoint>,
    /// Which egress paths may reach it.
    pub reach: Reach,
}

/// The egress paths an endpoint can be reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The proxy (CONNECT, absolute-form HTTP) and direct connections alike: a plain endpoint.
    Any,
    /// Direct connections only (`protocol: tcp`, upstream's transparent L4): the agent
    /// connects to the address its DNS lookup returned and the supervisor hands it the
    /// connection; the proxy refuses it.
    Transparent,
}

/// Chooses the policy source: the explicit one, else [`DEFAULT_POLICY_PATH`] when it exists,
/// else the built-in default.
pub fn origin_for(explicit: Option<&Path>) -> PolicyOrigin {
    match explicit {
        Some(path) => PolicyOrigin::File(path.to_owned()),
        None if Path::new(DEFAULT_POLICY_PATH).exists() => {
            PolicyOrigin::File(PathBuf::from(DEFAULT_POLICY_PATH))
        }
        None => PolicyOrigin::BuiltinDefault,
    }
}

/// Reads, parses and validates a policy. `workdir` is the agent's working directory, added to
/// `read_write` when `include_workdir` asks for it.
pub fn load(origin: PolicyOrigin, workdir: &Path) -> Result<Policy, PolicyError> {
    let text = match &origin {
        PolicyOrigin::BuiltinDefault => BUILTIN_DEFAULT.to_owned(),
        PolicyOrigin::File(path) => read_bounded(path).map_err(|e| match e {
            ReadError::Io(source) => PolicyError::Read {
                origin: origin.clone(),
                source,
            },
            ReadError::TooLarge(size) => PolicyError::TooLarge {
                origin: origin.clone(),
                size,
                limit: MAX_POLICY_BYTES,
            },
        })?,
    };
    let file = parse(&text, &origin)?;
    validate(file, origin, workdir)
}

enum ReadError {
    Io(std::io::Error),
    TooLarge(u64),
}

fn read_bounded(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut text = String::new();
    let read = file
        .take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(ReadError::Io)?;
    if read as u64 > MAX_POLICY_BYTES {
        return Err(ReadError::TooLarge(read as u64));
    }
    Ok(text)
}

/// Parses policy text into the raw file structure, with the failing field's path and position
/// in the error.
pub fn parse(text: &str, origin: &PolicyOrigin) -> Result<PolicyFile, PolicyError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut field = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = without_spans(&e.path().to_string());
            e.into_inner()
        })
    });
    parsed.map_err(|err| PolicyError::Invalid {
        origin: origin.clone(),
        position: err.location().as_ref().and_then(Position::of),
        // serde_path_to_error says "." for the root and "?" where it lost track.
        field: if field == "." || field == "?" {
            String::new()
        } else {
            field
        },
        message: yaml_message(&err),
    })
}

/// A field path without the `.value` steps that [`serde_saphyr::Spanned`] wrappers add
/// (`network_policies.api.value.endpoints[0].value.port` is `...api.endpoints[0].port`).
fn without_spans(path: &str) -> String {
    path.replace(".value[", "[")
        .replace(".value.", ".")
        .trim_end_matches(".value")
        .to_owned()
}

/// The YAML error's own words, without the position (which [`PolicyError`] prints itself).
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let mut message = yaml_message_with_position(err);
    if let Some((words, place)) = message.rsplit_once(" at line ")
        && place.contains(", column ")
    {
        message = words.to_owned();
    }
    // The parser's hint is meant for developers embedding it, not for policy authors.
    match message.strip_suffix(", set DuplicateKeyPolicy in Options if acceptable") {
        Some(m) => m.replace("duplicate mapping key: ", "duplicate key: "),
        None => message,
    }
}

fn yaml_message_with_position(err: &serde_saphyr::Error) -> String {
    match err.without_snippet() {
        serde_saphyr::Error::Message { msg, .. }
        | serde_saphyr::Error::ExternalMessage { msg, .. } => msg.clone(),
        serde_saphyr::Error::Unexpected { expected, .. } => format!("expected {expected}"),
        serde_saphyr::Error::Eof { .. } => "unexpected end of file".to_owned(),
        other => {
            let text = other.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            // "line N column M: message" -> "message"
            match text.split_once(": ") {
                Some((place, rest)) if place.starts_with("line ") => rest.to_owned(),
                _ => text.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
