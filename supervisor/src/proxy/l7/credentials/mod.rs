//! Credentials on inspected connections: placeholders replaced by real values on the way to
//! the endpoints they are bound to, refused everywhere else, and real values echoed back
//! replaced by placeholders before the agent sees them.
//!
//! Where the proxy looks, on the way out (each request, after its rules allowed it):
//! - header values (`Authorization: Bearer …`, `x-api-key`, and the base64 inside `Basic`),
//!   the path and the query: on every inspected request ([`head`]);
//! - request bodies and client websocket messages: where the deciding endpoint opts in
//!   (`request_body_credential_rewrite`, `websocket_credential_rewrite`), placeholders are
//!   replaced; where no credential is bound, they are refused; on a bound endpoint that did
//!   not opt in, a body is passed as written, because it is the agent's conversation with
//!   the API the credential pays for, and an agent that once printed its environment quotes
//!   the placeholders in every later request (upstream refuses those requests and the
//!   session can never recover: its issues 2904 and 3237). A placeholder reveals nothing.
//!
//! A placeholder of a credential not bound to the request's destination is refused with 403
//! `credential_endpoint_mismatch`, one that resolves to nothing (undeclared, a longer name,
//! or an optional credential whose source was missing) with 403 `credential_unresolved`;
//! neither reaches the server. On the way back, wherever a credential is bound, response
//! headers, bodies and server websocket messages are searched for the real values
//! ([`redact`]). Logs and 403 bodies name the credential, never its value (`[CREDENTIAL]`).
//!
//! Bound, for a request: the credentials whose `endpoints` match its host and port, and
//! those the deciding endpoint names in `credential_binding`.

pub mod body;
pub mod head;
pub mod redact;
pub mod scan;
pub mod tunnel;
pub mod websocket;

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use self::scan::{BuildError, Hit, Kind, Patterns, Spelling, stands_alone};
use super::canon;
use crate::credentials::{Prepared, Store};
use crate::policy::credentials::Credential;
use crate::policy::{CredentialSet, L7Endpoint, normalize_host};

/// The credentials, as the proxy uses them.
#[derive(Debug)]
pub struct Credentials {
    list: Arc<Vec<Credential>>,
    store: Arc<Store>,
    /// Placeholders, built before fork (they are no secret).
    placeholders: Patterns,
    /// The real values: built on first use, in the supervisor after the sandbox was forked,
    /// so that no automaton holding them is in the sandbox's init.
    values: OnceLock<Option<Patterns>>,
}

/// Why a request (or message) carrying a placeholder was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The credential is not bound to the destination.
    Mismatch {
        /// The credential.
        credential: usize,
        /// Where the placeholder was.
        place: &'static str,
    },
    /// Nothing resolves it.
    Unresolved {
        /// The credential, when it is a declared one without a value.
        credential: Option<usize>,
        /// Where the placeholder was.
        place: &'static str,
    },
}

impl Refused {
    /// The `error` of the 403.
    pub fn error(&self) -> &'static str {
        match self {
            Refused::Mismatch { .. } => "credential_endpoint_mismatch",
            Refused::Unresolved { .. } => "credential_unresolved",
        }
    }
}

/// How a value is written where its placeholder was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As it is (headers, text).
    Raw,
    /// Percent-encoded (path, query, form bodies).
    Url,
    /// Inside a JSON string.
    Json,
}

impl Credentials {
    /// The proxy's view of `prepared`; `None` when the policy has no credentials.
    pub fn new(prepared: &Prepared) -> Result<Option<Credentials>, BuildError> {
        if prepared.credentials.is_empty() {
            return Ok(None);
        }
        let placeholders = Patterns::placeholders(
            prepared
                .credentials
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.placeholder.as_str())),
        )?;
        Ok(Some(Credentials {
            list: prepared.credentials.clone(),
            store: prepared.store.clone(),
            placeholders,
            values: OnceLock::new(),
        }))
    }

    /// The credentials bound to a request to `host`:`port` decided by `deciding`.
    pub fn bound(&self, host: &str, port: u16, deciding: Option<&L7Endpoint>) -> CredentialSet {
        let host = normalize_host(host);
        let mut set = deciding.map_or(CredentialSet::EMPTY, |e| e.credentials);
        for (i, c) in self.list.iter().enumerate() {
            if c.endpoints.iter().any(|e| e.matches(&host, port)) {
                set.extend(CredentialSet::one(i));
            }
        }
        set
    }

    /// The placeholder patterns.
    pub fn placeholders(&self) -> &Patterns {
        &self.placeholders
    }

    /// The value patterns (built on first use); `None` only if they cannot be built, which
    /// callers treat as a response they cannot clean (and so refuse).
    pub fn values(&self) -> Option<&Patterns> {
        self.values
            .get_or_init(|| {
                let mut patterns = Vec::new();
                for i in 0..self.list.len() {
                    let Some(value) = self.store.value(i) else {
                        continue;
                    };
                    patterns.push((value.to_vec(), Kind::Value(i, Spelling::Raw)));
                    let encoded = encode(value, Encoding::Url);
                    if encoded != value {
                        patterns.push((encoded, Kind::Value(i, Spelling::Percent)));
                    }
                }
                Patterns::new(patterns)
                    .map_err(|e| tracing::error!(layer = "credentials", "{e}"))
                    .ok()
            })
            .as_ref()
    }

    /// What replaces the placeholder `hit` found in `text` (`at_end`: nothing follows `text`)
    /// on a request whose bound credentials are `bound`, written with `encoding`.
    pub fn resolve(
        &self,
        text: &[u8],
        hit: Hit,
        at_end: bool,
        bound: CredentialSet,
        encoding: Encoding,
        place: &'static str,
    ) -> Result<Vec<u8>, Refused> {
        let Kind::Placeholder(index, spelling) = hit.kind else {
            return Err(Refused::Unresolved {
                credential: None,
                place,
            });
        };
        if stands_alone(text, hit.start, hit.end, at_end) != Some(true) {
            return Err(Refused::Unresolved {
                credential: None,
                place,
            });
        }
        if !bound.contains(index) {
            return Err(Refused::Mismatch {
                credential: index,
                place,
            });
        }
        let value = self.store.value(index).ok_or(Refused::Unresolved {
            credential: Some(index),
            place,
        })?;
        let encoding = match spelling {
            Spelling::Percent => Encoding::Url,
            Spelling::Raw => encoding,
        };
        Ok(encode(value, encoding))
    }

    /// What replaces the real value `hit` (found on the way back): its placeholder.
    pub fn redaction(&self, hit: Hit) -> Vec<u8> {
        match hit.kind {
            Kind::Value(index, spelling) => {
                let placeholder = self.list[index].placeholder.as_bytes();
                match spelling {
                    Spelling::Raw => placeholder.to_vec(),
                    Spelling::Percent => encode(placeholder, Encoding::Url),
                }
            }
            _ => b"[CREDENTIAL]".to_vec(),
        }
    }

    /// Whether any credential in `set` has a value (only those can be echoed back).
    pub fn any_loaded(&self, set: CredentialSet) -> bool {
        set.iter().any(|i| self.store.has(i))
    }

    /// The refusal in words, for the log and the 403: names the credential, never its value.
    pub fn describe(&self, refused: Refused, destination: &str) -> String {
        let mut out = String::new();
        match refused {
            Refused::Mismatch { credential, place } => {
                let c = &self.list[credential];
                let _ = write!(
                    out,
                    "the placeholder of credential {} ({}) in the {place} is not bound to \
                     {destination}; it is sent only to {}",
                    c.name,
                    c.variable,
                    self.destinations(credential)
                );
            }
            Refused::Unresolved {
                credential: Some(credential),
                place,
            } => {
                let c = &self.list[credential];
                let _ = write!(
                    out,
                    "the placeholder of credential {} ({}) in the {place} has no value: its \
                     source ({}) was missing at start",
                    c.name, c.variable, c.source
                );
            }
            Refused::Unresolved {
                credential: None,
                place,
            } => {
                let _ = write!(
                    out,
                    "a credential placeholder in the {place} matches no credential of the \
                     policy, so it cannot be resolved"
                );
            }
        }
        out
    }

    fn destinations(&self, credential: usize) -> String {
        let c = &self.list[credential];
        let own: Vec<String> = c.endpoints.iter().map(ToString::to_string).collect();
        match own.is_empty() {
            true => format!("the endpoints binding provider {}", c.provider),
            false => own.join(", "),
        }
    }
}

/// `value` written with `encoding`.
pub fn encode(value: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Raw => value.to_vec(),
        Encoding::Url => {
            let mut out = Vec::with_capacity(value.len());
            for &b in value {
                if canon::unreserved(b) {
                    out.push(b);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            out
        }
        Encoding::Json => {
            let mut out = Vec::with_capacity(value.len());
            for &b in value {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    _ => out.push(b),
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests;
