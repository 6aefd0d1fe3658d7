//! The policy decision: may this caller connect to this host and port?
//!
//! A pure function of the rules, the destination and the callers' executables, so it is tested
//! as a table. Upstream's semantics: default deny; a connection is allowed only when ONE rule
//! matches both the endpoint and the calling binary, where the calling binary is the
//! executable of the process owning the socket or of any of its ancestors (so allowing
//! `/usr/local/bin/claude` also covers the `node` it runs). When several processes own the
//! socket, the same rule must allow every one of them.

use crate::policy::{Endpoint, NetworkRule, normalize_host};

/// One process in a caller's chain: the socket owner first, then its ancestors up to the
/// agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Pid in the supervisor's namespace.
    pub pid: u32,
    /// `/proc/PID/exe`.
    pub exe: String,
}

/// The verdict.
#[derive(Debug, Clone)]
pub enum Decision<'p> {
    /// Allowed by `rule`.
    Allow {
        /// The first rule that allows it (for the log).
        rule: &'p NetworkRule,
        /// Every endpoint of every allowing rule that matched, for the address checks.
        endpoints: Vec<&'p Endpoint>,
        /// For each owner, the process whose executable the rule names (pinned on first use).
        matched: Vec<Process>,
    },
    /// Refused, with the reason in words.
    Deny(String),
}

/// Decides for `host:port` requested over a socket owned by `owners` (each a chain).
pub fn decide<'p>(
    rules: &'p [NetworkRule],
    host: &str,
    port: u16,
    owners: &[Vec<Process>],
) -> Decision<'p> {
    let host = normalize_host(host);
    let mut allowed: Option<(&NetworkRule, Vec<Process>)> = None;
    let mut endpoints = Vec::new();
    let mut wanted_by = Vec::new();
    for rule in rules {
        let matching: Vec<&Endpoint> = rule
            .endpoints
            .iter()
            .filter(|e| e.ports.contains(&port) && e.host.matches(&host))
            .collect();
        if matching.is_empty() {
            continue;
        }
        wanted_by.push(rule.key.as_str());
        let matched: Option<Vec<Process>> = owners
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .find(|p| rule.binaries.iter().any(|b| b.matches(&p.exe)))
                    .cloned()
            })
            .collect();
        if let Some(matched) = matched.filter(|m| !m.is_empty()) {
            allowed.get_or_insert((rule, matched));
            endpoints.extend(matching);
        }
    }
    let owner = owners
        .first()
        .and_then(|chain| chain.first())
        .map_or("an unknown process", |p| p.exe.as_str());
    match allowed {
        Some((rule, matched)) => Decision::Allow {
            rule,
            endpoints,
            matched,
        },
        None if wanted_by.is_empty() => {
            Decision::Deny(format!("no network_policies rule allows {host}:{port}"))
        }
        None => Decision::Deny(format!(
            "{owner} (or its parents) is not among the binaries of rule {} for {host}:{port}",
            wanted_by.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{self, PolicyOrigin};

    fn rules() -> Vec<NetworkRule> {
        let text = r#"
version: 1
network_policies:
  claude:
    endpoints:
      - { host: api.anthropic.com, port: 443 }
      - { host: "*.anthropic.com", ports: [443, 8443] }
    binaries: [{ path: /usr/local/bin/claude }]
  github:
    endpoints: [{ host: "**.github.com", port: 443 }, { host: github.com, port: 443 }]
    binaries: [{ path: /usr/bin/git }, { path: "/usr/lib/git-core/*" }]
  local:
    endpoints: [{ host: db.internal, port: 5432, allowed_ips: [10.0.0.0/8] }]
    binaries: [{ path: /usr/bin/psql }]
"#;
        let origin = PolicyOrigin::BuiltinDefault;
        policy::validate(
            policy::parse(text, &origin).unwrap(),
            origin,
            Path::new("/w"),
        )
        .unwrap()
        .network
    }

    fn chain(exes: &[&str]) -> Vec<Process> {
        exes.iter()
            .enumerate()
            .map(|(i, e)| Process {
                pid: 100 + i as u32,
                exe: (*e).to_owned(),
            })
            .collect()
    }

    fn verdict(host: &str, port: u16, owners: &[&[&str]]) -> Result<(String, Vec<String>), String> {
        let rules = rules();
        let owners: Vec<Vec<Process>> = owners.iter().map(|o| chain(o)).collect();
        match decide(&rules, host, port, &owners) {
            Decision::Allow { rule, matched, .. } => Ok((
                rule.key.clone(),
                matched.into_iter().map(|p| p.exe).collect(),
            )),
            Decision::Deny(reason) => Err(reason),
        }
    }

    /// Host, port, owners' chains, expected rule key or denial reason.
    type Case<'a> = (&'a str, u16, &'a [&'a [&'a str]], Result<&'a str, &'a str>);

    #[test]
    fn table() {
        let node_under_claude: &[&str] = &["/usr/bin/node", "/usr/local/bin/claude", "/bin/bash"];
        let cases: &[Case<'_>] = &[
            (
                "api.anthropic.com",
                443,
                &[&["/usr/local/bin/claude"]],
                Ok("claude"),
            ),
            (
                "API.Anthropic.com.",
                443,
                &[&["/usr/local/bin/claude"]],
                Ok("claude"),
            ),
            ("api.anthropic.com", 443, &[node_under_claude], Ok("claude")),
            (
                "statsig.anthropic.com",
                8443,
                &[&["/usr/local/bin/claude"]],
                Ok("claude"),
            ),
            (
                "api.anthropic.com",
                80,
                &[&["/usr/local/bin/claude"]],
                Err("no network_policies rule allows api.anthropic.com:80"),
            ),
            (
                "api.anthropic.com",
                443,
                &[&["/usr/bin/curl", "/bin/bash"]],
                Err(
                    "/usr/bin/curl (or its parents) is not among the binaries of rule claude for api.anthropic.com:443",
                ),
            ),
            (
                "anthropic.com",
                443,
                &[&["/usr/local/bin/claude"]],
                Err("no network_policies rule allows anthropic.com:443"),
            ),
            (
                "a.b.anthropic.com",
                443,
                &[&["/usr/local/bin/claude"]],
                Err("no network_policies rule allows a.b.anthropic.com:443"),
            ),
            (
                "github.com",
                443,
                &[&["/usr/lib/git-core/git-remote-https", "/usr/bin/git"]],
                Ok("github"),
            ),
            (
                "codeload.github.com",
                443,
                &[&["/usr/bin/git"]],
                Ok("github"),
            ),
            ("x.y.github.com", 443, &[&["/usr/bin/git"]], Ok("github")),
            (
                "evilgithub.com",
                443,
                &[&["/usr/bin/git"]],
                Err("no network_policies rule allows evilgithub.com:443"),
            ),
            (
                "github.com",
                443,
                &[&["/usr/bin/git"], &["/usr/bin/python3"]],
                Err(
                    "/usr/bin/git (or its parents) is not among the binaries of rule github for github.com:443",
                ),
            ),
            (
                "github.com",
                443,
                &[&["/usr/bin/git"], &["/usr/bin/git"]],
                Ok("github"),
            ),
            (
                "github.com",
                443,
                &[],
                Err(
                    "an unknown process (or its parents) is not among the binaries of rule github for github.com:443",
                ),
            ),
        ];
        for (host, port, owners, expected) in cases {
            let got = verdict(host, *port, owners).map(|(rule, _)| rule);
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                *expected,
                "{host}:{port} by {owners:?}"
            );
        }
    }

    #[test]
    fn the_matching_ancestor_is_reported_for_pinning() {
        let (_, matched) = verdict(
            "api.anthropic.com",
            443,
            &[&["/usr/bin/node", "/usr/local/bin/claude"]],
        )
        .unwrap();
        assert_eq!(matched, ["/usr/local/bin/claude"]);
    }

    #[test]
    fn allowing_endpoints_carry_their_address_exceptions() {
        let rules = rules();
        let owners = vec![chain(&["/usr/bin/psql"])];
        let Decision::Allow { endpoints, .. } = decide(&rules, "db.internal", 5432, &owners) else {
            panic!("psql to db.internal must be allowed");
        };
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].allowed_ips.len(), 1);
    }
}
