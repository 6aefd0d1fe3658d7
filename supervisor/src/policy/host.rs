//! Endpoint host patterns: exact names, IP literals and label globs.
//!
//! Upstream's rules, kept exactly so that existing policies mean the same thing: `*` stands for
//! exactly one DNS label, `**` is allowed only as the whole first label and stands for one or
//! more labels; matching ignores case and a trailing dot. Patterns that could match a whole
//! top-level domain (`*`, `**`, `*.com`, `api.*.com`) are refused, because one such line would
//! open most of the internet.

use std::fmt;
use std::net::IpAddr;

/// Longest DNS name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// One label of a host glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A label written out, lower-cased.
    Literal(String),
    /// `*`: exactly one label.
    One,
    /// `**` as the first label: one or more labels.
    Many,
}

/// A validated `host:` of a network endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// A DNS name, lower-cased, without trailing dot.
    Exact(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A name with `*` / `**` labels.
    Glob(Vec<Label>),
}

/// Lower-cases a requested host and drops a trailing dot, the form patterns are matched in.
pub fn normalize(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

impl HostPattern {
    /// Parses a `host:` value, or explains what is wrong with it.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let trimmed = raw.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
        if let Ok(ip) = trimmed.unwrap_or(raw).parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        let name = normalize(raw);
        if name.is_empty() {
            return Err("host is empty".into());
        }
        if name.len() > MAX_NAME {
            return Err(format!(
                "host is {} characters; a DNS name has at most {MAX_NAME}",
                name.len()
            ));
        }
        let mut labels = Vec::new();
        for (index, label) in name.split('.').enumerate() {
            labels.push(parse_label(label, index, raw)?);
        }
        let wildcard = labels.iter().any(|l| !matches!(l, Label::Literal(_)));
        if !wildcard {
            return Ok(HostPattern::Exact(name));
        }
        let literal_suffix = labels
            .iter()
            .rev()
            .take_while(|l| matches!(l, Label::Literal(_)))
            .count();
        if literal_suffix < 2 {
            return Err(format!(
                "{raw:?} would match every name under a top-level domain; \
                 name at least the registered domain literally (e.g. \"*.example.com\")"
            ));
        }
        Ok(HostPattern::Glob(labels))
    }

    /// True for a host written out in full (a name or an IP literal), which upstream trusts
    /// to resolve to private addresses without `allowed_ips`.
    pub fn is_exact(&self) -> bool {
        !matches!(self, HostPattern::Glob(_))
    }

    /// Does this pattern cover `host` (already [`normalize`]d, or an IP literal)?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
            HostPattern::Glob(labels) => {
                if host.parse::<IpAddr>().is_ok() {
                    return false;
                }
                glob_matches(labels, &host.split('.').collect::<Vec<_>>())
            }
        }
    }
}

impl HostPattern {
    /// Whether some host could match both patterns (used to find the network endpoints a
    /// credential's endpoint speaks of).
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Glob(a), HostPattern::Glob(b)) => {
                // Label by label from the right: two literals must agree; a `**` (always
                // the first label, so the last one compared) covers whatever is left.
                let (mut a, mut b) = (a.iter().rev(), b.iter().rev());
                loop {
                    match (a.next(), b.next()) {
                        (None, None) => return true,
                        (Some(Label::Many), Some(_)) | (Some(_), Some(Label::Many)) => {
                            return true;
                        }
                        (Some(Label::Literal(x)), Some(Label::Literal(y))) if x != y => {
                            return false;
                        }
                        (Some(_), Some(_)) => {}
                        _ => return false,
                    }
                }
            }
            (HostPattern::Glob(_), exact) => self.matches(&exact.to_string()),
            (exact, _) => other.matches(&exact.to_string()),
        }
    }
}

fn parse_label(label: &str, index: usize, raw: &str) -> Result<Label, String> {
    match label {
        "*" => Ok(Label::One),
        "**" if index == 0 => Ok(Label::Many),
        "**" => Err(format!(
            "{raw:?}: `**` is allowed only as the whole first label (e.g. \"**.example.com\")"
        )),
        "" => Err(format!("{raw:?} has an empty label")),
        _ if label.contains('*') => Err(format!(
            "{raw:?}: `*` must be a whole label (\"*.example.com\"), not part of one"
        )),
        _ if label.len() > MAX_LABEL => Err(format!(
            "{raw:?}: label {label:?} is longer than {MAX_LABEL} characters"
        )),
        _ if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Err(format!(
                "{raw:?}: label {label:?} may contain only letters, digits, '-' and '_' \
                 (write internationalised names in their xn-- form)"
            ))
        }
        _ => Ok(Label::Literal(label.to_owned())),
    }
}

fn glob_matches(pattern: &[Label], host: &[&str]) -> bool {
    let label_matches = |p: &Label, h: &str| match p {
        Label::Literal(l) => l == h,
        Label::One => !h.is_empty(),
        Label::Many => false,
    };
    match pattern.split_first() {
        Some((Label::Many, rest)) => {
            host.len() > rest.len()
                && host[host.len() - rest.len()..]
                    .iter()
                    .zip(rest)
                    .all(|(h, p)| label_matches(p, h))
                && host[..host.len() - rest.len()]
                    .iter()
                    .all(|h| !h.is_empty())
        }
        _ => {
            host.len() == pattern.len()
                && host.iter().zip(pattern).all(|(h, p)| label_matches(p, h))
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
            HostPattern::Glob(labels) => {
                for (i, label) in labels.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    match label {
                        Label::Literal(l) => f.write_str(l)?,
                        Label::One => f.write_str("*")?,
                        Label::Many => f.write_str("**")?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, host: &str) -> bool {
        HostPattern::parse(pattern)
            .unwrap()
            .matches(&normalize(host))
    }

    #[test]
    fn exact_names_ignore_case_and_trailing_dot() {
        assert!(matches("API.github.com", "api.GitHub.com."));
        assert!(matches("api.github.com.", "api.github.com"));
        assert!(!matches("api.github.com", "github.com"));
        assert!(!matches("github.com", "api.github.com"));
    }

    #[test]
    fn single_star_is_exactly_one_label() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(matches("api.*.example.com", "api.eu.example.com"));
        assert!(!matches("api.*.example.com", "api.example.com"));
    }

    #[test]
    fn double_star_is_one_or_more_leading_labels() {
        assert!(matches("**.example.com", "a.example.com"));
        assert!(matches("**.example.com", "a.b.c.example.com"));
        assert!(!matches("**.example.com", "example.com"));
        assert!(!matches("**.example.com", "example.org"));
        assert!(!matches("**.example.com", "notexample.com"));
    }

    #[test]
    fn ip_literals_match_only_the_same_address() {
        assert!(matches("10.0.0.5", "10.0.0.5"));
        assert!(!matches("10.0.0.5", "10.0.0.6"));
        assert!(matches("[::1]", "::1"));
        assert!(!matches("*.example.com", "10.0.0.5"));
    }

    #[test]
    fn refuses_patterns_that_open_a_whole_tld() {
        for bad in ["*", "**", "*.com", "**.com", "api.*.com", "example.*"] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.contains("top-level domain"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_malformed_globs_and_names() {
        assert!(
            HostPattern::parse("a.**.example.com")
                .unwrap_err()
                .contains("first label")
        );
        assert!(
            HostPattern::parse("api-*.example.com")
                .unwrap_err()
                .contains("whole label")
        );
        assert!(
            HostPattern::parse("a..example.com")
                .unwrap_err()
                .contains("empty label")
        );
        assert!(HostPattern::parse("").unwrap_err().contains("empty"));
        assert!(
            HostPattern::parse("bücher.de")
                .unwrap_err()
                .contains("xn--")
        );
        assert!(
            HostPattern::parse(&"a".repeat(64))
                .unwrap_err()
                .contains("longer than 63")
        );
    }

    #[test]
    fn overlapping_patterns() {
        let overlaps = |a: &str, b: &str| {
            let (a, b) = (
                HostPattern::parse(a).unwrap(),
                HostPattern::parse(b).unwrap(),
            );
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "symmetric");
            a.overlaps(&b)
        };
        assert!(overlaps("api.example.com", "API.example.com"));
        assert!(overlaps("api.example.com", "*.example.com"));
        assert!(overlaps("a.b.example.com", "**.example.com"));
        assert!(overlaps("*.example.com", "**.example.com"));
        assert!(overlaps("api.*.example.com", "*.eu.example.com"));
        assert!(overlaps("10.0.0.1", "10.0.0.1"));
        assert!(!overlaps("api.example.com", "*.example.org"));
        assert!(!overlaps("example.com", "**.example.com"));
        assert!(!overlaps("*.example.com", "*.*.example.com"));
        assert!(!overlaps("10.0.0.1", "*.example.com"));
    }

    #[test]
    fn only_globs_are_inexact() {
        assert!(HostPattern::parse("db.internal").unwrap().is_exact());
        assert!(HostPattern::parse("10.1.2.3").unwrap().is_exact());
        assert!(!HostPattern::parse("*.internal.example").unwrap().is_exact());
    }

    #[test]
    fn display_round_trips() {
        for p in [
            "**.example.com",
            "api.*.example.com",
            "example.com",
            "10.0.0.1",
        ] {
            assert_eq!(HostPattern::parse(p).unwrap().to_string(), p);
        }
    }
}
