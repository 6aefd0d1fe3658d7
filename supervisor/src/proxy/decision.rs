//! The policy decision: may this caller connect to this host and port?
//!
//! A pure function of the rules, the destination and the callers' executables, so it is tested
//! as a table. Upstream's semantics: default deny; a connection is allowed only when ONE rule
//! matches both the endpoint and the calling binary, where the calling binary is the
//! executable of the process owning the socket or of any of its ancestors (so allowing
//! `/usr/local/bin/claude` also covers the `node` it runs). When several processes own the
//! socket, the same rule must allow every one of them.
//!
//! Both egress paths ask here: the proxy (CONNECT and forwarded requests) and the transparent
//! path (a direct `connect()` the supervisor intercepts, see `transparent`); they differ only
//! in which endpoints they may use (`protocol: tcp` endpoints are direct-only). The policy
//! resolver asks [`eligible`] which names it may answer at all.

use crate::policy::{Endpoint, NetworkRule, Reach, normalize_host};

/// Which egress path asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The proxy at 127.0.0.1:3128.
    Proxy,
    /// A direct connection, intercepted at `connect()`.
    Transparent,
}

impl Via {
    fn reaches(self, endpoint: &Endpoint) -> bool {
        match endpoint.reach {
            Reach::Any => true,
            Reach::Transparent => self == Via::Transparent,
        }
    }
}

/// One process in a caller's chain: the socket owner first, then its ancestors up to the
/// agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Pid in the supervisor's namespace.
    pub pid: u32,
    /// Its start time (clock ticks since boot): with the pid, names this process and no later
    /// one that reuses the pid.
    pub start: u64,
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

/// Decides for `host:port` requested over a socket owned by `owners` (each a chain), through
/// the path `via`.
pub fn decide<'p>(
    rules: &'p [NetworkRule],
    host: &str,
    port: u16,
    owners: &[Vec<Process>],
    via: Via,
) -> Decision<'p> {
    let host = normalize_host(host);
    let mut allowed: Option<(&NetworkRule, Vec<Process>)> = None;
    let mut endpoints = Vec::new();
    let mut wanted_by = Vec::new();
    let mut direct_only = Vec::new();
    for rule in rules {
        let (matching, elsewhere): (Vec<&Endpoint>, Vec<&Endpoint>) = rule
            .endpoints
            .iter()
            .filter(|e| e.ports.contains(&port) && e.host.matches(&host))
            .partition(|e| via.reaches(e));
        if !elsewhere.is_empty() {
            direct_only.push(rule.key.as_str());
        }
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
        None if wanted_by.is_empty() && !direct_only.is_empty() => Decision::Deny(format!(
            "{host}:{port} is a protocol: tcp endpoint of rule {}, reachable only by connecting \
             to it directly, not through the proxy",
            direct_only.join(", ")
        )),
        None if wanted_by.is_empty() => {
            Decision::Deny(format!("no network_policies rule allows {host}:{port}"))
        }
        None => Decision::Deny(format!(
            "{owner} (or its parents) is not among the binaries of rule {} for {host}:{port}",
            wanted_by.join(", ")
        )),
    }
}

/// The endpoints that could allow a connection to `name` on some port, for some binary,
/// through some path: the names the policy resolver answers. A rule without binaries allows
/// nothing, so its names are not among them.
pub fn eligible<'p>(rules: &'p [NetworkRule], name: &str) -> Vec<&'p Endpoint> {
    let name = normalize_host(name);
    rules
        .iter()
        .filter(|rule| !rule.binaries.is_empty())
        .flat_map(|rule| &rule.endpoints)
        .filter(|e| e.host.matches(&name))
        .collect()
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
  redis:
    endpoints: [{ host: redis.internal, port: 6379, protocol: tcp }]
    binaries: [{ path: "/**" }]
  nobody:
    endpoints: [{ host: unused.internal, port: 1 }]
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
                start: 1,
                exe: (*e).to_owned(),
            })
            .collect()
    }

    fn verdict(host: &str, port: u16, owners: &[&[&str]]) -> Result<(String, Vec<String>), String> {
        let rules = rules();
        let owners: Vec<Vec<Process>> = owners.iter().map(|o| chain(o)).collect();
        match decide(&rules, host, port, &owners, Via::Proxy) {
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
    fn protocol_tcp_endpoints_are_reached_only_directly() {
        let rules = rules();
        let owners = vec![chain(&["/usr/bin/redis-cli"])];
        let direct = decide(&rules, "redis.internal", 6379, &owners, Via::Transparent);
        assert!(matches!(direct, Decision::Allow { rule, .. } if rule.key == "redis"));
        let Decision::Deny(why) = decide(&rules, "redis.internal", 6379, &owners, Via::Proxy)
        else {
            panic!("a protocol: tcp endpoint through the proxy must be refused");
        };
        assert_eq!(
            why,
            "redis.internal:6379 is a protocol: tcp endpoint of rule redis, reachable only by \
             connecting to it directly, not through the proxy"
        );
        // Plain endpoints are reachable both ways.
        let claude = vec![chain(&["/usr/local/bin/claude"])];
        for via in [Via::Proxy, Via::Transparent] {
            let d = decide(&rules, "api.anthropic.com", 443, &claude, via);
            assert!(matches!(d, Decision::Allow { .. }), "{via:?}");
        }
    }

    #[test]
    fn eligible_names_are_those_some_rule_with_binaries_could_allow() {
        let rules = rules();
        let hosts = |name| {
            eligible(&rules, name)
                .iter()
                .map(|e| e.host.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hosts("API.anthropic.com."),
            ["api.anthropic.com", "*.anthropic.com"]
        );
        assert_eq!(hosts("x.y.github.com"), ["**.github.com"]);
        assert_eq!(hosts("redis.internal"), ["redis.internal"]);
        assert!(hosts("unused.internal").is_empty(), "rule without binaries");
        assert!(hosts("anthropic.com").is_empty());
        assert!(hosts("exfil-secret.example.com").is_empty());
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
        let Decision::Allow { endpoints, .. } =
            decide(&rules, "db.internal", 5432, &owners, Via::Proxy)
        else {
            panic!("psql to db.internal must be allowed");
        };
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].allowed_ips.len(), 1);
    }
}
