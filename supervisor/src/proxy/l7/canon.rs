//! Request targets in canonical form: what rules are matched against, and what is forwarded.
//!
//! A rule written for `/repos/*/issues` must not be dodged by spelling the same resource
//! differently (`/repos/x/./issues`, `/repos/x//issues`, `/repos/%78/issues`,
//! `/public/../admin`, `/admin;x=1`), and the server must receive exactly the path that was
//! judged, so the canonical form is what goes upstream. Unreserved bytes are decoded, other
//! escapes upper-cased, dot segments resolved (escaping the root is refused), empty segments
//! collapsed and `;params` stripped. Refused outright: control bytes and raw non-ASCII (which
//! servers interpret differently), `#`, `\` and encoded slashes or backslashes (`%2F`, `%5C`:
//! servers disagree on whether they separate segments) unless the endpoint allows encoded
//! slashes, malformed escapes, and paths longer than 4 KiB. The query is kept as sent (its
//! bytes checked the same way) and decoded separately for matching.

use std::fmt::Write as _;

/// Longest request target accepted.
pub const MAX_TARGET: usize = 4096;

/// A canonical origin-form target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// The canonical path (always starts with `/`).
    pub path: String,
    /// The query as sent, without the `?`, when there was one.
    pub query: Option<String>,
    /// Whether the path kept an encoded slash or backslash (only when allowed).
    pub encoded_slash: bool,
}

impl Canonical {
    /// Path and query as forwarded.
    pub fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// Longer than [`MAX_TARGET`].
    #[error("request target longer than 4096 bytes")]
    TooLong,
    /// Not `/...` (asterisk-form, authority-form or garbage).
    #[error("request target is not an absolute path")]
    NotOriginForm,
    /// A control byte, raw or encoded.
    #[error("control character in the request target")]
    Control,
    /// A raw byte outside ASCII.
    #[error("raw non-ASCII byte in the request target")]
    NonAscii,
    /// A `#` (fragments are never sent).
    #[error("`#` in the request target")]
    Fragment,
    /// A raw backslash.
    #[error("backslash in the request path")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape in the request target")]
    BadEscape,
    /// `%2F` or `%5C` where the endpoint does not allow encoded slashes.
    #[error("encoded slash in the request path (allow_encoded_slash is off)")]
    EncodedSlash,
    /// `..` above the root.
    #[error("request path climbs above the root")]
    EscapesRoot,
}

/// Canonicalises an origin-form target (`/path?query`).
pub fn canonicalize(target: &str, allow_encoded_slash: bool) -> Result<Canonical, CanonError> {
    if target.len() > MAX_TARGET {
        return Err(CanonError::TooLong);
    }
    for &b in target.as_bytes() {
        match b {
            0..=0x1f | 0x7f => return Err(CanonError::Control),
            0x80.. => return Err(CanonError::NonAscii),
            b'#' => return Err(CanonError::Fragment),
            b' ' => return Err(CanonError::Control),
            _ => {}
        }
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !raw_path.starts_with('/') {
        return Err(CanonError::NotOriginForm);
    }
    if raw_path.contains('\\') {
        return Err(CanonError::Backslash);
    }
    if let Some(query) = query {
        check_escapes(query)?;
    }
    let mut segments: Vec<String> = Vec::new();
    let mut encoded_slash = false;
    let raw_segments: Vec<&str> = raw_path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        // `;params` belong to the segment: `/admin;x=1` is `/admin` to most servers.
        let raw = raw.split(';').next().unwrap_or("");
        let (segment, slash) = decode_segment(raw, allow_encoded_slash)?;
        encoded_slash |= slash;
        match segment.as_str() {
            "" => trailing_slash = i == last && !segments.is_empty(),
            "." => trailing_slash = i == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(CanonError::EscapesRoot);
                }
                trailing_slash = i == last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw_path.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(Canonical {
        path,
        query: query.map(str::to_owned),
        encoded_slash,
    })
}

/// Decodes the unreserved escapes of one segment and upper-cases the others. Returns the
/// segment and whether it kept an encoded slash.
fn decode_segment(raw: &str, allow_encoded_slash: bool) -> Result<(String, bool), CanonError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut slash = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let byte = escape_at(bytes, i)?;
        i += 3;
        match byte {
            b if unreserved(b) => {
                out.push(b as char);
            }
            0..=0x1f | 0x7f => return Err(CanonError::Control),
            b'/' | b'\\' if !allow_encoded_slash => return Err(CanonError::EncodedSlash),
            b => {
                slash |= matches!(b, b'/' | b'\\');
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    Ok((out, slash))
}

/// An unreserved character (RFC 3986 section 2.3): never needs a percent-escape.
pub fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn escape_at(bytes: &[u8], i: usize) -> Result<u8, CanonError> {
    let hex = |b: Option<&u8>| {
        b.and_then(|b| (*b as char).to_digit(16))
            .ok_or(CanonError::BadEscape)
    };
    Ok((hex(bytes.get(i + 1))? * 16 + hex(bytes.get(i + 2))?) as u8)
}

fn check_escapes(text: &str) -> Result<(), CanonError> {
    let bytes = text.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        escape_at(bytes, i)?;
    }
    Ok(())
}

/// The query's parameters, decoded (`+` is a space), every value of a repeated key kept.
pub fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_form(key), decode_form(value))
        })
        .collect()
}

fn decode_form(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Ok(b) = escape_at(bytes, i) {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every trick a client could use to make a path look different from the resource it
    /// names, and what the proxy makes of it.
    #[test]
    fn canonical_forms() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("/repos/x", "/repos/x"),
            ("/repos/x/", "/repos/x/"),
            ("/repos//x", "/repos/x"),
            ("//repos///x//", "/repos/x/"),
            ("/repos/./x", "/repos/x"),
            ("/repos/x/.", "/repos/x/"),
            ("/public/../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/%2e%2e/x", ""),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/re%70os/x", "/repos/x"),
            ("/%7Euser", "/~user"),
            ("/a%2bb", "/a%2Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/admin;x", "/admin"),
            ("/a%3Bb", "/a%3Bb"),
            ("/x?a=1&b=%2F", "/x"),
            ("/a/..?q", "/"),
            ("/..;/admin", ""),
        ];
        for (raw, expected) in ok {
            let got = canonicalize(raw, false);
            if expected.is_empty() {
                assert_eq!(got, Err(CanonError::EscapesRoot), "{raw}");
            } else {
                assert_eq!(got.map(|c| c.path).as_deref(), Ok(*expected), "{raw}");
            }
        }
    }

    #[test]
    fn refusals() {
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        let cases: &[(&str, CanonError)] = &[
            ("/a\u{1}b", CanonError::Control),
            ("/a%00b", CanonError::Control),
            ("/a%0d%0aHost:x", CanonError::Control),
            ("/a b", CanonError::Control),
            ("/café", CanonError::NonAscii),
            ("/a#frag", CanonError::Fragment),
            ("/a\\..\\admin", CanonError::Backslash),
            ("/a%2Fb", CanonError::EncodedSlash),
            ("/a%2fb", CanonError::EncodedSlash),
            ("/a%5Cb", CanonError::EncodedSlash),
            ("/a%zz", CanonError::BadEscape),
            ("/a%2", CanonError::BadEscape),
            ("/x?q=%g1", CanonError::BadEscape),
            ("/x?q=\u{7f}", CanonError::Control),
            ("/..", CanonError::EscapesRoot),
            ("/a/../../b", CanonError::EscapesRoot),
            ("*", CanonError::NotOriginForm),
            ("example.com:443", CanonError::NotOriginForm),
            (&long, CanonError::TooLong),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalize(raw, false), Err(*expected), "{raw:?}");
        }
    }

    #[test]
    fn encoded_slashes_stay_encoded_when_allowed() {
        let c = canonicalize("/pkgs/%2fscope%2Fname/x", true).unwrap();
        assert_eq!(c.path, "/pkgs/%2Fscope%2Fname/x");
        assert!(c.encoded_slash);
        assert!(!canonicalize("/pkgs/x", true).unwrap().encoded_slash);
    }

    #[test]
    fn the_query_is_kept_and_decoded_for_matching() {
        let c = canonicalize("/search?q=a+b&tag=x&tag=%79&empty&=v", false).unwrap();
        assert_eq!(c.query.as_deref(), Some("q=a+b&tag=x&tag=%79&empty&=v"));
        assert_eq!(c.target(), "/search?q=a+b&tag=x&tag=%79&empty&=v");
        let params = query_params(c.query.as_deref().unwrap());
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("q", "a b"),
                ("tag", "x"),
                ("tag", "y"),
                ("empty", ""),
                ("", "v")
            ]
        );
    }
}
