//! `credentials` and the endpoints' credential fields.
//!
//! A credential may only be bound where the proxy can put it in: an endpoint it inspects
//! (`protocol: rest` or `websocket`, TLS terminated), unless the endpoint says
//! `allow_uninspected_credentials` (upstream's escape hatch, with its meaning: the proxy then
//! adds nothing there). A binding that names nothing, or a credential bound nowhere, is a
//! mistake worth stopping on: the agent would hold a placeholder that resolves nowhere.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::{Validator, check_path};
use crate::policy::credentials::{
    self, Credential, CredentialEndpoint, CredentialSet, MAX_CREDENTIALS, Source,
};
use crate::policy::file::{CredentialEndpointFile, CredentialFile, EndpointFile};
use crate::policy::l7::{L7Endpoint, Protocol, TlsMode};
use crate::policy::{Endpoint, HostPattern, PolicyError, Position};

/// A credential's endpoint and where it was written.
pub(super) struct Placed {
    field: String,
    position: Option<Position>,
}

/// The validated section, with what the cross-checks need.
#[derive(Default)]
pub(super) struct Section {
    /// The credentials, in key order.
    pub credentials: Vec<Credential>,
    /// Where each credential and each of its endpoints was written.
    places: Vec<(Placed, Vec<Placed>)>,
    /// Provider name → its credentials.
    providers: BTreeMap<String, CredentialSet>,
    /// Credentials some endpoint binds by `credential_binding`.
    pub bound_by_binding: CredentialSet,
}

/// The credential fields of one endpoint.
#[derive(Debug, Default)]
pub(super) struct EndpointCredentials {
    pub allow_uninspected: bool,
    pub binding: CredentialSet,
    pub body: bool,
    pub websocket: bool,
}

impl Validator {
    /// The `credentials` section.
    pub(super) fn credentials(
        &self,
        raw: Option<&Spanned<BTreeMap<String, Spanned<CredentialFile>>>>,
    ) -> Result<Section, PolicyError> {
        let mut section = Section::default();
        let Some(raw) = raw else {
            return Ok(section);
        };
        if raw.value.len() > MAX_CREDENTIALS {
            return Err(self.err(
                raw,
                "credentials",
                format!(
                    "{} credentials; the limit is {MAX_CREDENTIALS}",
                    raw.value.len()
                ),
            ));
        }
        for (index, (name, entry)) in raw.value.iter().enumerate() {
            let base = format!("credentials.{name}");
            let (credential, endpoints) = self.credential(name, entry, &base)?;
            for (other, earlier) in section.credentials.iter().enumerate() {
                let clash = |what: &str, field: &str, at: &Spanned<String>| {
                    self.err(
                        at,
                        format!("{base}.{field}"),
                        format!(
                            "the same {what} as credentials.{}; each credential needs its own",
                            section.credentials[other].name
                        ),
                    )
                };
                if earlier.variable == credential.variable {
                    return Err(clash("variable", "variable", &entry.value.variable));
                }
                if earlier.placeholder == credential.placeholder {
                    let at = entry
                        .value
                        .placeholder
                        .as_ref()
                        .unwrap_or(&entry.value.variable);
                    return Err(clash("placeholder", "placeholder", at));
                }
            }
            section
                .providers
                .entry(credential.provider.clone())
                .or_default()
                .extend(CredentialSet::one(index));
            section.places.push((
                Placed {
                    field: base,
                    position: Position::of(&entry.referenced),
                },
                endpoints,
            ));
            section.credentials.push(credential);
        }
        Ok(section)
    }

    fn credential(
        &self,
        name: &str,
        entry: &Spanned<CredentialFile>,
        base: &str,
    ) -> Result<(Credential, Vec<Placed>), PolicyError> {
        let c = &entry.value;
        let variable = &c.variable;
        if !credentials::is_variable_name(&variable.value) {
            return Err(self.err(
                variable,
                format!("{base}.variable"),
                format!(
                    "{:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    variable.value
                ),
            ));
        }
        if variable.value.starts_with("OPENSHELL_") {
            return Err(self.err(
                variable,
                format!("{base}.variable"),
                "OPENSHELL_ variables configure the supervisor and never reach the agent; \
                 name the variable the agent reads",
            ));
        }
        let source = match &c.source {
            None => Source::Env(variable.value.clone()),
            Some(source) => self.source(source, base)?,
        };
        let placeholder = match &c.placeholder {
            None => credentials::default_placeholder(&variable.value),
            Some(raw) => {
                credentials::check_placeholder(&raw.value)
                    .map_err(|m| self.err(raw, format!("{base}.placeholder"), m))?;
                raw.value.clone()
            }
        };
        let provider = match &c.provider {
            None => name.to_owned(),
            Some(raw) if raw.value.trim().is_empty() => {
                return Err(self.err(raw, format!("{base}.provider"), "provider is empty"));
            }
            Some(raw) => raw.value.clone(),
        };
        let mut endpoints = Vec::new();
        let mut places = Vec::new();
        for (i, raw) in c.endpoints.iter().enumerate() {
            let field = format!("{base}.endpoints[{i}]");
            endpoints.push(self.credential_endpoint(raw, &field)?);
            places.push(Placed {
                field,
                position: Position::of(&raw.referenced),
            });
        }
        Ok((
            Credential {
                name: name.to_owned(),
                provider,
                variable: variable.value.clone(),
                source,
                placeholder,
                endpoints,
                optional: c.optional.as_ref().is_some_and(|o| o.value),
            },
            places,
        ))
    }

    fn source(
        &self,
        raw: &Spanned<crate::policy::file::SourceFile>,
        base: &str,
    ) -> Result<Source, PolicyError> {
        match (&raw.value.env, &raw.value.file) {
            (Some(env), None) => match credentials::is_variable_name(&env.value) {
                true => Ok(Source::Env(env.value.clone())),
                false => Err(self.err(
                    env,
                    format!("{base}.source.env"),
                    format!("{:?} is not a variable name", env.value),
                )),
            },
            (None, Some(file)) => check_path(&file.value, false)
                .map(Source::File)
                .map_err(|m| self.err(file, format!("{base}.source.file"), m)),
            _ => Err(self.err(
                raw,
                format!("{base}.source"),
                "write exactly one of env (a variable of the supervisor's environment) and \
                 file (a path the policy does not list)",
            )),
        }
    }

    fn credential_endpoint(
        &self,
        raw: &Spanned<CredentialEndpointFile>,
        field: &str,
    ) -> Result<CredentialEndpoint, PolicyError> {
        let e = &raw.value;
        let host = HostPattern::parse(&e.host.value)
            .map_err(|m| self.err(&e.host, format!("{field}.host"), m))?;
        let ports = self.ports(raw, field, e.port.as_ref(), e.ports.as_deref())?;
        Ok(CredentialEndpoint { host, ports })
    }

    /// The credential fields of a network endpoint; `l7` is its inspection, when it has one.
    pub(super) fn endpoint_credentials(
        &self,
        raw: &Spanned<EndpointFile>,
        base: &str,
        l7: Option<&L7Endpoint>,
        section: &mut Section,
    ) -> Result<EndpointCredentials, PolicyError> {
        let e = &raw.value;
        let flag = |f: &Option<Spanned<bool>>| f.as_ref().is_some_and(|f| f.value);
        let allow_uninspected = flag(&e.allow_uninspected_credentials);
        let inspected = l7.is_some_and(|l7| l7.tls != TlsMode::Skip);
        if let Some(body) = &e.request_body_credential_rewrite
            && l7.is_none_or(|l7| l7.protocol != Protocol::Rest)
        {
            return Err(self.err(
                body,
                format!("{base}.request_body_credential_rewrite"),
                "applies to protocol: rest endpoints only (the proxy reads the bodies of \
                 inspected requests)",
            ));
        }
        if let Some(websocket) = &e.websocket_credential_rewrite
            && l7.is_none()
        {
            return Err(self.err(
                websocket,
                format!("{base}.websocket_credential_rewrite"),
                "applies to protocol: rest or websocket endpoints only (the proxy reads the \
                 messages of inspected websockets)",
            ));
        }
        let mut binding = CredentialSet::EMPTY;
        if let Some(bind) = &e.credential_binding {
            let provider = &bind.value.provider;
            binding = *section.providers.get(&provider.value).ok_or_else(|| {
                let known: Vec<&str> = section.providers.keys().map(String::as_str).collect();
                self.err(
                    provider,
                    format!("{base}.credential_binding.provider"),
                    format!(
                        "no credential has provider {:?} (known: {}); name a key of \
                         credentials, or a credential's provider",
                        provider.value,
                        if known.is_empty() {
                            "none: the policy has no credentials section".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
            if !inspected && !allow_uninspected {
                return Err(self.err(
                    bind,
                    format!("{base}.credential_binding"),
                    uninspected_message("this endpoint"),
                ));
            }
            section.bound_by_binding.extend(binding);
        }
        Ok(EndpointCredentials {
            allow_uninspected,
            binding,
            body: flag(&e.request_body_credential_rewrite),
            websocket: flag(&e.websocket_credential_rewrite),
        })
    }

    /// Every credential is bound somewhere, each of its endpoints is allowed by a network
    /// rule, and every network endpoint it speaks of is inspected.
    pub(super) fn bind_credentials(
        &self,
        section: &Section,
        endpoints: &[(String, Option<Position>, &Endpoint)],
    ) -> Result<(), PolicyError> {
        for (index, (credential, (place, places))) in
            section.credentials.iter().zip(&section.places).enumerate()
        {
            if credential.endpoints.is_empty() && !section.bound_by_binding.contains(index) {
                return Err(PolicyError::Invalid {
                    origin: self.origin.clone(),
                    position: place.position,
                    field: place.field.clone(),
                    message: format!(
                        "is bound to no endpoint, so its placeholder would resolve nowhere: \
                         list endpoints, or bind provider {:?} with an endpoint's \
                         credential_binding",
                        credential.provider
                    ),
                });
            }
            for (target, at) in credential.endpoints.iter().zip(places) {
                let covering: Vec<_> = endpoints
                    .iter()
                    .filter(|(_, _, e)| {
                        e.host.overlaps(&target.host)
                            && e.ports.iter().any(|p| target.ports.contains(p))
                    })
                    .collect();
                if covering.is_empty() {
                    return Err(PolicyError::Invalid {
                        origin: self.origin.clone(),
                        position: at.position,
                        field: at.field.clone(),
                        message: format!(
                            "no network rule allows {target}, so the credential could never \
                             be sent there; add the endpoint to a rule (with protocol: rest)"
                        ),
                    });
                }
                for (field, position, e) in covering {
                    let inspected = e.l7.as_ref().is_some_and(|l7| l7.tls != TlsMode::Skip);
                    if !inspected && !e.allow_uninspected_credentials {
                        return Err(PolicyError::Invalid {
                            origin: self.origin.clone(),
                            position: *position,
                            field: field.clone(),
                            message: format!(
                                "credentials.{} is bound to {target} ({}); {}",
                                credential.name,
                                at.field,
                                uninspected_message("this endpoint")
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn uninspected_message(what: &str) -> String {
    format!(
        "{what} is not inspected (no protocol: rest, or tls: skip), so the proxy could not add \
         the credential to its requests; inspect it (protocol: rest with rules or access), or \
         write allow_uninspected_credentials: true to accept that the proxy adds nothing there"
    )
}
