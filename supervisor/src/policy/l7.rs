//! The L7 (HTTP) part of an endpoint: `protocol: rest`, its rules and how they are enforced.
//!
//! Upstream's schema and semantics (see `proxy::l7::rules` for matching); the values here are
//! checked and compiled by `validate`, so the proxy never sees a raw pattern. Globs follow
//! upstream's engine: in paths `/` separates segments (`*` and `?` stay within one, `**`
//! crosses them), `{a,b}` alternatives, `[..]` classes, `\` escapes; query globs have no
//! separator at all (upstream uses `.` by accident, so `v1.*` misses `v1.2.3` there: ours
//! matches, a documented difference).

use std::fmt;

/// Most alternatives one pattern may expand to (`{a,b}{c,d}` is four): a bound on the work
/// one rule costs per request.
const MAX_ALTERNATIVES: usize = 64;
/// Longest pattern accepted.
const MAX_PATTERN: usize = 1024;

/// The L7 settings of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Endpoint {
    /// The name of the network rule the endpoint belongs to (`policy` in logs and 403s).
    pub policy: String,
    /// What is inspected.
    pub protocol: Protocol,
    /// Whether a refusal blocks or is only logged.
    pub enforcement: Enforcement,
    /// True when the policy wrote `enforcement:`; false when it is our default.
    pub enforcement_written: bool,
    /// Whether TLS is terminated to inspect it.
    pub tls: TlsMode,
    /// `path:` on the endpoint: which requests this endpoint's rules speak for.
    pub path: Option<Glob>,
    /// Whether `%2F` may appear in a path (kept encoded, never decoded to `/`).
    pub allow_encoded_slash: bool,
    /// Allow rules (from `rules:` or expanded from `access:`).
    pub rules: Vec<RequestRule>,
    /// Deny rules, which win over allow rules.
    pub deny_rules: Vec<RequestRule>,
    /// The `access:` preset, when the rules came from one (for `check`).
    pub access: Option<Access>,
}

/// `protocol:` values this build inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 requests, each decided on its own.
    Rest,
    /// HTTP/1.1 whose upgrade to a websocket is allowed like a GET; frames then pass.
    Websocket,
}

/// `enforcement:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Refused requests get 403 and never reach upstream (our default).
    Enforce,
    /// Refused requests are forwarded and logged as `audited`.
    Audit,
}

/// `tls:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Terminate TLS to inspect it (also `terminate` and `passthrough`, upstream's deprecated
    /// spellings of automatic).
    Auto,
    /// Never terminate: only plain HTTP can be inspected; TLS on this endpoint is refused.
    Skip,
}

/// `access:` presets (upstream's method tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET, HEAD, OPTIONS on every path.
    ReadOnly,
    /// Those plus POST, PUT, PATCH (no DELETE).
    ReadWrite,
    /// Any method on every path.
    Full,
}

impl Access {
    /// Parses a preset name.
    pub fn parse(raw: &str) -> Option<Access> {
        match raw {
            "read-only" => Some(Access::ReadOnly),
            "read-write" => Some(Access::ReadWrite),
            "full" => Some(Access::Full),
            _ => None,
        }
    }

    /// The preset's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
            Access::Full => "full",
        }
    }

    /// The methods the preset allows on every path (`*`: any).
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Access::ReadOnly => &["GET", "HEAD", "OPTIONS"],
            Access::ReadWrite => &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"],
            Access::Full => &["*"],
        }
    }
}

/// One allow or deny rule: method, path and query must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRule {
    /// Where it was written, e.g. `rules[2]` or `access: read-only`, for logs and 403 bodies.
    pub source: String,
    /// The method, upper-cased, or `None` for `*`.
    pub method: Option<String>,
    /// The path glob.
    pub path: Glob,
    /// Query keys (decoded, as written) and the globs their values must match.
    pub query: Vec<(String, Vec<Glob>)>,
}

/// A compiled glob (see the module doc for the syntax).
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    separator: Option<u8>,
    alternatives: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes other than the separator.
    Star,
    /// `**`: any run of bytes.
    AnyDepth,
    /// `?`: one byte other than the separator.
    One,
    /// `[...]`: one byte (not the separator) in (or, negated, not in) the ranges.
    Class {
        ranges: Vec<(u8, u8)>,
        negated: bool,
    },
}

impl Glob {
    /// A path glob (`/` separates segments).
    pub fn path(raw: &str) -> Result<Glob, String> {
        Glob::compile(raw, Some(b'/'))
    }

    /// `**`: every path (what the `access` presets allow).
    pub fn everything() -> Glob {
        Glob {
            text: "**".to_owned(),
            separator: Some(b'/'),
            alternatives: vec![vec![Token::AnyDepth]],
        }
    }

    /// A query-value glob (no separator).
    pub fn value(raw: &str) -> Result<Glob, String> {
        Glob::compile(raw, None)
    }

    fn compile(raw: &str, separator: Option<u8>) -> Result<Glob, String> {
        if raw.len() > MAX_PATTERN {
            return Err(format!("pattern longer than {MAX_PATTERN} bytes"));
        }
        let mut alternatives = vec![Vec::new()];
        let rest = parse_sequence(raw.as_bytes(), &mut alternatives, false)?;
        if !rest.is_empty() {
            return Err(format!("{raw:?}: unmatched `}}`"));
        }
        Ok(Glob {
            text: raw.to_owned(),
            separator,
            alternatives,
        })
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.alternatives
            .iter()
            .any(|tokens| matches_tokens(tokens, text.as_bytes(), self.separator))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How specific the pattern is, for choosing among endpoint `path`s that all match: the
    /// count of bytes before its first wildcard.
    pub fn specificity(&self) -> usize {
        self.text
            .find(['*', '?', '[', '{', '\\'])
            .unwrap_or(self.text.len())
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `raw` up to an unnested `,` or `}` (when `in_braces`), appending what it reads to
/// every alternative in `out`; returns the unparsed rest (starting at that `,` or `}`).
fn parse_sequence<'r>(
    mut raw: &'r [u8],
    out: &mut Vec<Vec<Token>>,
    in_braces: bool,
) -> Result<&'r [u8], String> {
    while let Some((&b, rest)) = raw.split_first() {
        match b {
            b',' | b'}' if in_braces => return Ok(raw),
            b'}' => return Ok(raw),
            b'*' if rest.first() == Some(&b'*') => {
                push(out, Token::AnyDepth);
                raw = &rest[1..];
                // `***` is `**` then `*`: the same as `**`.
                while raw.first() == Some(&b'*') {
                    raw = &raw[1..];
                }
            }
            b'*' => {
                push(out, Token::Star);
                raw = rest;
            }
            b'?' => {
                push(out, Token::One);
                raw = rest;
            }
            b'\\' => {
                let (&escaped, after) = rest
                    .split_first()
                    .ok_or_else(|| "a pattern cannot end with `\\`".to_owned())?;
                push(out, Token::Byte(escaped));
                raw = after;
            }
            b'[' => {
                let (class, after) = parse_class(rest)?;
                push(out, class);
                raw = after;
            }
            b'{' => {
                let mut combined = Vec::new();
                let mut inner = rest;
                loop {
                    let mut branch = out.clone();
                    inner = parse_sequence(inner, &mut branch, true)?;
                    combined.extend(branch);
                    if combined.len() > MAX_ALTERNATIVES {
                        return Err(format!(
                            "more than {MAX_ALTERNATIVES} alternatives; split the rule"
                        ));
                    }
                    match inner.split_first() {
                        Some((b',', after)) => inner = after,
                        Some((b'}', after)) => {
                            inner = after;
                            break;
                        }
                        _ => return Err("unclosed `{`".to_owned()),
                    }
                }
                *out = combined;
                raw = inner;
            }
            _ => {
                push(out, Token::Byte(b));
                raw = rest;
            }
        }
    }
    if in_braces {
        return Err("unclosed `{`".to_owned());
    }
    Ok(raw)
}

fn push(out: &mut [Vec<Token>], token: Token) {
    for alternative in out {
        alternative.push(token.clone());
    }
}

fn parse_class(mut raw: &[u8]) -> Result<(Token, &[u8]), String> {
    let negated = matches!(raw.first(), Some(b'!' | b'^'));
    if negated {
        raw = &raw[1..];
    }
    let mut ranges = Vec::new();
    loop {
        match raw {
            [b']', rest @ ..] if !ranges.is_empty() => {
                return Ok((Token::Class { ranges, negated }, rest));
            }
            [lo, b'-', hi, rest @ ..] if *hi != b']' => {
                if lo > hi {
                    return Err(format!(
                        "class range {}-{} is reversed",
                        *lo as char, *hi as char
                    ));
                }
                ranges.push((*lo, *hi));
                raw = rest;
            }
            [b, rest @ ..] => {
                ranges.push((*b, *b));
                raw = rest;
            }
            [] => return Err("unclosed `[`".to_owned()),
        }
    }
}

/// Walks the set of reachable text positions token by token: linear in tokens × text, so no
/// pattern can make a request cost exponential time.
fn matches_tokens(tokens: &[Token], text: &[u8], separator: Option<u8>) -> bool {
    let is_sep = |b: u8| separator == Some(b);
    let mut reachable = vec![false; text.len() + 1];
    reachable[0] = true;
    let mut next = vec![false; text.len() + 1];
    for token in tokens {
        next.iter_mut().for_each(|n| *n = false);
        match token {
            Token::Byte(want) => {
                for i in 0..text.len() {
                    next[i + 1] = reachable[i] && text[i] == *want;
                }
            }
            Token::One => {
                for i in 0..text.len() {
                    next[i + 1] = reachable[i] && !is_sep(text[i]);
                }
            }
            Token::Class { ranges, negated } => {
                for i in 0..text.len() {
                    let b = text[i];
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b));
                    next[i + 1] = reachable[i] && !is_sep(b) && inside != *negated;
                }
            }
            Token::Star => {
                next[0] = reachable[0];
                for i in 1..=text.len() {
                    next[i] = reachable[i] || (next[i - 1] && !is_sep(text[i - 1]));
                }
            }
            Token::AnyDepth => {
                next[0] = reachable[0];
                for i in 1..=text.len() {
                    next[i] = reachable[i] || next[i - 1];
                }
            }
        }
        std::mem::swap(&mut reachable, &mut next);
        if !reachable.contains(&true) {
            return false;
        }
    }
    reachable[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pattern, text, expected: upstream's glob semantics with `/` as separator.
    #[test]
    fn path_globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("/repos/*", "/repos/a", true),
            ("/repos/*", "/repos/a/b", false),
            ("/repos/*", "/repos/", true),
            ("/v1/**", "/v1/a/b/c", true),
            ("/v1/**", "/v1/", true),
            ("/v1/**", "/v1", false),
            ("**", "/anything/at/all", true),
            ("/**/info/refs*", "/org/repo.git/info/refs", true),
            ("/**/info/refs*", "/a/b/info/refs?x", true),
            ("/**/git-upload-pack", "/org/repo.git/git-upload-pack", true),
            (
                "/**/git-upload-pack",
                "/org/repo.git/git-receive-pack",
                false,
            ),
            ("/a?c", "/abc", true),
            ("/a?c", "/a/c", false),
            ("/{users,orgs}/*", "/orgs/x", true),
            ("/{users,orgs}/*", "/teams/x", false),
            ("/{a,b}{c,d}", "/bd", true),
            ("/v[0-9]/x", "/v2/x", true),
            ("/v[!0-9]/x", "/v2/x", false),
            ("/v[!0-9]/x", "/vb/x", true),
            ("/Repos", "/repos", false),
            ("/repos/", "/repos", false),
            ("/repos", "/repos/", false),
            ("/a\\*b", "/a*b", true),
            ("/a\\*b", "/axb", false),
        ];
        for (pattern, text, expected) in cases {
            let glob = Glob::path(pattern).unwrap();
            assert_eq!(glob.matches(text), *expected, "{pattern} on {text}");
        }
    }

    #[test]
    fn value_globs_have_no_separator() {
        assert!(Glob::value("v1.*").unwrap().matches("v1.2.3"));
        assert!(Glob::value("*").unwrap().matches("a/b.c"));
        assert!(!Glob::value("abc").unwrap().matches("abcd"));
    }

    #[test]
    fn malformed_globs_are_refused() {
        for bad in ["/a{b", "/a[b", "/a\\", "/a}", "/[z-a]"] {
            assert!(Glob::path(bad).is_err(), "{bad}");
        }
        let many = "/{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}";
        assert!(Glob::path(many).unwrap_err().contains("alternatives"));
    }

    #[test]
    fn many_stars_stay_linear() {
        let glob = Glob::path(&"**a".repeat(30)).unwrap();
        let text = format!("/{}", "a/".repeat(2000));
        let started = std::time::Instant::now();
        assert!(!glob.matches(&(text + "b")));
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }
}
