//! The address guard: which resolved addresses the proxy may dial for an allowed endpoint.
//!
//! The proxy resolves names itself and dials only addresses that passed these checks (no
//! second lookup, so DNS rebinding between check and connect gains nothing). Loopback,
//! link-local (which includes the cloud metadata service at 169.254.169.254), unspecified,
//! multicast and reserved addresses are always refused: they reach the node or the pod, not
//! the internet. Private ranges (RFC 1918, CGNAT, benchmarking, ULA) are refused unless the
//! endpoint lists a matching `allowed_ips` CIDR or names its host exactly. IPv6 forms that
//! carry an IPv4 address (mapped, NAT64, 6to4) are judged by that IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::{Endpoint, canonical_ip};

/// How an address is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never dialled: the reason in words.
    Blocked(&'static str),
    /// Dialled only with an `allowed_ips` match or an exact host: the range in words.
    Private(&'static str),
    /// Dialled.
    Public,
}

/// Classifies one address.
pub fn classify(ip: IpAddr) -> Class {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => {
            Class::Blocked("the cloud metadata service")
        }
        (127, _, _) => Class::Blocked("loopback"),
        (169, 254, _) => Class::Blocked("link-local"),
        (0, _, _) => Class::Blocked("unspecified (this host)"),
        (224..=239, _, _) => Class::Blocked("multicast"),
        (240..=255, _, _) => Class::Blocked("reserved or broadcast"),
        (10, _, _) | (192, 168, _) => Class::Private("private (RFC 1918)"),
        (172, 16..=31, _) => Class::Private("private (RFC 1918)"),
        (100, 64..=127, _) => Class::Private("shared address space (CGNAT)"),
        (198, 18..=19, _) => Class::Private("benchmarking (RFC 2544)"),
        (192, 0, 0) => Class::Private("IETF protocol assignments"),
        _ => Class::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Class::Blocked("loopback")
    } else if ip.is_unspecified() {
        Class::Blocked("unspecified (this host)")
    } else if first & 0xffc0 == 0xfe80 {
        Class::Blocked("link-local")
    } else if first & 0xff00 == 0xff00 {
        Class::Blocked("multicast")
    } else if first & 0xfe00 == 0xfc00 {
        Class::Private("unique local (ULA)")
    } else if first & 0xffc0 == 0xfec0 {
        Class::Blocked("site-local (deprecated)")
    } else {
        Class::Public
    }
}

/// The IPv4 address inside a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

/// Whether `ip` may be dialled for a connection allowed through `endpoints`; the refusal
/// reason otherwise.
pub fn permit(ip: IpAddr, endpoints: &[&Endpoint]) -> Result<(), String> {
    match classify(ip) {
        Class::Public => Ok(()),
        Class::Blocked(what) => Err(format!("{ip} is {what}, which the proxy never dials")),
        Class::Private(what) => {
            let lifted = endpoints
                .iter()
                .any(|e| e.host.is_exact() || e.allowed_ips.iter().any(|c| c.contains(ip)));
            if lifted {
                Ok(())
            } else {
                Err(format!(
                    "{ip} is {what}; list it in the endpoint's allowed_ips to allow it"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{self, PolicyOrigin};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn always_blocked() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(matches!(classify(ip(a)), Class::Blocked(_)), "{a}");
        }
    }

    #[test]
    fn private() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "fd00::1",
            "fc12::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(matches!(classify(ip(a)), Class::Private(_)), "{a}");
        }
    }

    #[test]
    fn public() {
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(classify(ip(a)), Class::Public, "{a}");
        }
    }

    fn endpoints(yaml: &str) -> Vec<Endpoint> {
        let text = format!(
            "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{yaml}]\n    binaries: [{{path: /x}}]\n"
        );
        let origin = PolicyOrigin::BuiltinDefault;
        let p = policy::validate(
            policy::parse(&text, &origin).unwrap(),
            origin,
            Path::new("/w"),
        )
        .unwrap();
        p.network[0].endpoints.clone()
    }

    #[test]
    fn private_needs_allowed_ips_or_an_exact_host() {
        let glob = endpoints("{ host: \"*.corp.example\", port: 80 }");
        let refs: Vec<&Endpoint> = glob.iter().collect();
        assert!(
            permit(ip("10.0.0.5"), &refs)
                .unwrap_err()
                .contains("allowed_ips")
        );
        assert!(permit(ip("93.184.216.34"), &refs).is_ok());
        let lifted =
            endpoints("{ host: \"*.corp.example\", port: 80, allowed_ips: [10.0.0.0/24] }");
        let refs: Vec<&Endpoint> = lifted.iter().collect();
        assert!(permit(ip("10.0.0.5"), &refs).is_ok());
        assert!(permit(ip("10.0.1.5"), &refs).is_err());
        let exact = endpoints("{ host: db.corp.example, port: 5432 }");
        let refs: Vec<&Endpoint> = exact.iter().collect();
        assert!(permit(ip("10.9.9.9"), &refs).is_ok());
    }

    #[test]
    fn allowed_ips_never_lift_the_always_blocked() {
        let e = endpoints(
            "{ host: metadata.internal, port: 80, allowed_ips: [169.254.0.0/16, 127.0.0.0/8] }",
        );
        let refs: Vec<&Endpoint> = e.iter().collect();
        assert!(
            permit(ip("169.254.169.254"), &refs)
                .unwrap_err()
                .contains("metadata")
        );
        assert!(
            permit(ip("127.0.0.1"), &refs)
                .unwrap_err()
                .contains("loopback")
        );
    }
}
