//! `protocol: tcp`: upstream's transparent L4 endpoints, reachable only by a direct connection.
//!
//! Upstream's rules are kept: a DNS name (never an IP literal: a direct connection is
//! recognised by the names this sandbox resolved to the address it goes to), ports, and no L7
//! setting (nothing inspects the bytes). Whether the kernel can serve the path at all is
//! decided at start-up, not here, so that `check` can say what a machine lacks.

use serde_saphyr::Spanned;

use super::Validator;
use crate::policy::file::EndpointFile;
use crate::policy::{HostPattern, PolicyError, Position, Reach};

impl Validator {
    /// The paths the endpoint `raw` may be reached through.
    pub(super) fn reach(
        &self,
        raw: &Spanned<EndpointFile>,
        base: &str,
    ) -> Result<Reach, PolicyError> {
        let e = &raw.value;
        let Some(protocol) = &e.protocol else {
            return Ok(Reach::Any);
        };
        if !protocol.value.eq_ignore_ascii_case("tcp") {
            return Ok(Reach::Any);
        }
        for (name, at) in [
            ("enforcement", e.enforcement.as_ref().map(|v| &v.referenced)),
            ("access", e.access.as_ref().map(|v| &v.referenced)),
            ("rules", e.rules.as_ref().map(|v| &v.referenced)),
            ("deny_rules", e.deny_rules.as_ref().map(|v| &v.referenced)),
        ] {
            if let Some(at) = at {
                return Err(PolicyError::Invalid {
                    origin: self.origin.clone(),
                    position: Position::of(at),
                    field: format!("{base}.{name}"),
                    message: "is an L7 setting, and a protocol: tcp endpoint is never \
                              inspected; remove it, or use protocol: rest"
                        .to_owned(),
                });
            }
        }
        if let Ok(HostPattern::Ip(ip)) = HostPattern::parse(&e.host.value) {
            return Err(self.err(
                &e.host,
                format!("{base}.host"),
                format!(
                    "protocol: tcp needs a DNS name, not the address {ip}: a direct connection \
                     is matched by the names the sandbox resolved to its address (leave \
                     protocol out: an address endpoint is reachable both directly and through \
                     the proxy)"
                ),
            ));
        }
        Ok(Reach::Transparent)
    }
}
