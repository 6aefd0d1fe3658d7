//! The pod's resolver configuration (`/etc/resolv.conf`) and static names (`/etc/hosts`), as
//! the supervisor reads them at start-up.
//!
//! The agent keeps reading the same files: its stub resolver sends queries to the same
//! nameserver addresses (which the sandbox makes local, see [`super::local`]) with the same
//! search list and options, and finds the same static names, which the supervisor counts as
//! resolved (Kubernetes `hostAliases` are written there).

use std::net::IpAddr;

/// The resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameserver addresses, in order (link-local ones with a zone are left out: they name an
    /// interface of the pod, which the sandbox does not have).
    pub nameservers: Vec<IpAddr>,
    /// The search list (lower-case, no trailing dot).
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text; unknown lines are ignored, as the C library does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
                        && !conf.nameservers.contains(&ip)
                    {
                        conf.nameservers.push(ip);
                    }
                }
                // The last of `search` and `domain` wins, as in glibc.
                Some("search") | Some("domain") => {
                    conf.search = words
                        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|w| !w.is_empty())
                        .collect();
                }
                _ => {}
            }
        }
        conf
    }

    /// Whether `name` is one of the search list's expansions of a shorter name (`api.example.com`
    /// tried as `api.example.com.default.svc.cluster.local`): such a name is answered
    /// NXDOMAIN, never REFUSED, so that the agent's stub goes on to the next form (glibc stops
    /// searching at a REFUSED answer, musl waits for its timeout).
    pub fn is_expansion(&self, name: &str) -> bool {
        self.search.iter().any(|domain| {
            name.len() > domain.len() + 1
                && name.ends_with(domain.as_str())
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
        })
    }
}

/// Static names: `(address, names)` pairs of a hosts file, names lower-cased.
pub fn parse_hosts(text: &str) -> Vec<(IpAddr, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            let names: Vec<String> = words
                .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                .collect();
            (!names.is_empty()).then_some((ip, names))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_resolv_conf() {
        let conf = ResolvConf::parse(
            "# generated\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver 10.96.0.10\n\
             options ndots:5\n",
        );
        assert_eq!(conf.nameservers, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert!(conf.is_expansion("api.example.com.default.svc.cluster.local"));
        assert!(conf.is_expansion("redis.default.svc.cluster.local"));
        assert!(!conf.is_expansion("cluster.local"));
        assert!(!conf.is_expansion("evilcluster.local"));
        assert!(!conf.is_expansion("api.example.com"));
    }

    #[test]
    fn hosts_lines() {
        let hosts = parse_hosts(
            "127.0.0.1 localhost\n# comment\n10.1.2.3 Db.Internal. db # alias\nbad line\n",
        );
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].1, ["db.internal", "db"]);
    }
}
