//! Credentials the agent never holds: the real values taken from where Kubernetes puts them
//! (the supervisor's environment, a file the agent cannot see), kept where no forked process
//! finds them, and a placeholder given to the agent in their place. The proxy puts the real
//! value back on the way to the endpoints it is bound to (`proxy::l7::credentials`).
//!
//! Before fork ([`prepare`]): every source is checked (present; a file hidden from the agent)
//! and read; the values go into a [`Store`] of pages wiped in forked processes; each
//! environment source is overwritten in the supervisor's own environment block, so that the
//! sandbox's init, forked with that memory, has none of them (its `/proc/1/environ`) and the
//! agent's environment is built without them. The agent gets the credential's variable set to
//! its placeholder, and none of the source variables.

pub mod environ;
pub mod source;
pub mod store;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

pub use store::Store;

use self::source::SourceError;
use crate::policy::credentials::{Credential, Source};
use crate::policy::{CredentialSet, Policy};

/// Why the credentials could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A source cannot be used.
    #[error("credentials.{name}: its source, {source_name}, {error}")]
    Source {
        /// The credential.
        name: String,
        /// Its source, described.
        source_name: String,
        /// What is wrong.
        error: SourceError,
    },
    /// A variable the supervisor sets itself.
    #[error(
        "credentials.{name}: variable {variable} is one the supervisor sets for the agent \
         itself; name the variable the agent's client reads its key from"
    )]
    Reserved {
        /// The credential.
        name: String,
        /// The variable.
        variable: String,
    },
    /// The environment could not be scrubbed.
    #[error(transparent)]
    Environ(#[from] environ::EnvironError),
    /// The store could not be made.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The credentials, ready: values for the proxy, variables for the agent.
#[derive(Debug)]
pub struct Prepared {
    /// The policy's credentials, in order (the store's indices).
    pub credentials: Arc<Vec<Credential>>,
    /// The real values; an optional credential whose source was missing has none.
    pub store: Arc<Store>,
    /// What the agent's environment gets.
    pub agent: AgentVariables,
}

impl Prepared {
    /// The loaded credentials, by index.
    pub fn loaded(&self) -> CredentialSet {
        let mut set = CredentialSet::EMPTY;
        for i in (0..self.credentials.len()).filter(|i| self.store.has(*i)) {
            set.extend(CredentialSet::one(i));
        }
        set
    }
}

/// Changes to the agent's environment.
#[derive(Debug, Default, Clone)]
pub struct AgentVariables {
    /// Variables set to placeholders.
    pub set: Vec<(String, String)>,
    /// Source variables removed (scrubbed to empty, they must not reach the agent either).
    pub unset: Vec<String>,
}

impl AgentVariables {
    /// Applies the changes to `env`.
    pub fn apply(&self, env: &mut Vec<(std::ffi::OsString, std::ffi::OsString)>) {
        env.retain(|(k, _)| {
            !self.unset.iter().any(|u| k == u.as_str())
                && !self.set.iter().any(|(s, _)| k == s.as_str())
        });
        for (key, value) in &self.set {
            env.push((key.into(), value.into()));
        }
    }
}

/// Reads every source of `policy`'s credentials, scrubs the environment ones from this
/// process's environment block, and stores the values. `reserved` are the variables the
/// supervisor sets for the agent itself. Runs single-threaded, before the sandbox's fork.
pub fn prepare(policy: &Policy, reserved: &[&str]) -> Result<Prepared, CredentialError> {
    let credentials = &policy.credentials;
    for c in credentials {
        if reserved.contains(&c.variable.as_str()) {
            return Err(CredentialError::Reserved {
                name: c.name.clone(),
                variable: c.variable.clone(),
            });
        }
    }
    let mut files = Vec::with_capacity(credentials.len());
    for c in credentials {
        files.push(match &c.source {
            Source::Env(_) => None,
            Source::File(path) => usable(c, source::read_file(path, &policy.filesystem))?,
        });
    }
    let env_names: Vec<&str> = credentials
        .iter()
        .filter_map(|c| match &c.source {
            Source::Env(name) => Some(name.as_str()),
            Source::File(_) => None,
        })
        .collect();
    let store = environ::take(&env_names, |env_values| {
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(credentials.len());
        for (c, file) in credentials.iter().zip(&files) {
            let value = match &c.source {
                Source::File(_) => file.as_ref().map(source::FileValue::bytes),
                Source::Env(name) => {
                    let index = env_names.iter().position(|n| n == name);
                    let value = index.and_then(|i| env_values[i]);
                    let checked = value.ok_or(SourceError::Missing).and_then(|v| {
                        source::check_value(v)?;
                        Ok(v)
                    });
                    usable(c, checked)?
                }
            };
            values.push(value);
        }
        Ok::<_, CredentialError>(Store::new(&values)?)
    })??;
    drop(files);
    let mut agent = AgentVariables::default();
    for (i, c) in credentials.iter().enumerate() {
        if let Source::Env(name) = &c.source
            && !agent.unset.contains(name)
        {
            agent.unset.push(name.clone());
        }
        if store.has(i) {
            agent.set.push((c.variable.clone(), c.placeholder.clone()));
        } else if !agent.unset.contains(&c.variable) {
            agent.unset.push(c.variable.clone());
        }
    }
    for c in credentials.iter() {
        tracing::info!(
            layer = "credentials",
            credential = c.name,
            variable = c.variable,
            "credential {}: the agent's {} holds {}; the value ({}) goes only to {}",
            c.name,
            c.variable,
            c.placeholder,
            c.source,
            bound_to(policy, c)
        );
    }
    Ok(Prepared {
        credentials: Arc::new(credentials.clone()),
        store: Arc::new(store),
        agent,
    })
}

/// `Ok(Some(value))`; a missing optional source is `Ok(None)`, said loudly.
fn usable<T>(c: &Credential, result: Result<T, SourceError>) -> Result<Option<T>, CredentialError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(SourceError::Missing) if c.optional => {
            tracing::warn!(
                layer = "credentials",
                credential = c.name,
                "credential {}: its source, {}, is missing; optional, so the agent gets no {}",
                c.name,
                c.source,
                c.variable
            );
            Ok(None)
        }
        Err(error) => Err(CredentialError::Source {
            name: c.name.clone(),
            source_name: c.source.to_string(),
            error,
        }),
    }
}

/// Where a credential may be sent, in words: its own endpoints and the endpoints that bind
/// its provider.
pub fn bound_to(policy: &Policy, credential: &Credential) -> String {
    let index = policy
        .credentials
        .iter()
        .position(|c| c == credential)
        .unwrap_or(usize::MAX);
    let mut places: Vec<String> = credential
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect();
    for rule in &policy.network {
        for e in &rule.endpoints {
            if e.l7
                .as_ref()
                .is_some_and(|l7| l7.credentials.contains(index))
            {
                let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
                places.push(format!(
                    "{}:{} (credential_binding in rule {})",
                    e.host,
                    ports.join(","),
                    rule.name
                ));
            }
        }
    }
    places.join(", ")
}

/// For `check`: each credential, its placeholder, its source (never its value) and where it
/// may go; a source that is missing (and not optional) or that the agent could read is a
/// problem.
pub fn describe(out: &mut String, problems: &mut Vec<String>, policy: &Policy) {
    if policy.credentials.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  credentials (the agent holds placeholders; the proxy adds the values):"
    );
    for c in &policy.credentials {
        let status = match &c.source {
            Source::Env(name) => match std::env::var_os(name) {
                Some(v) if !v.is_empty() => Ok(()),
                _ => Err(SourceError::Missing),
            },
            Source::File(path) => source::check_file(Path::new(path), &policy.filesystem),
        };
        let state = match (&status, c.optional) {
            (Ok(()), _) => "present".to_owned(),
            (Err(SourceError::Missing), true) => {
                "missing; optional, so the agent gets no variable".to_owned()
            }
            (Err(e), _) => {
                problems.push(format!(
                    "credentials.{}: its source, {}, {e}",
                    c.name, c.source
                ));
                format!("UNUSABLE: {e}")
            }
        };
        let _ = writeln!(
            out,
            "    {}: {}={} from {} ({state}); sent only to {}",
            c.name,
            c.variable,
            c.placeholder,
            c.source,
            bound_to(policy, c)
        );
    }
}
