//! Placeholders in a request head: header values (the base64 of `Basic` included), path and
//! query, replaced in the [`RequestHead`] before it is encoded for the server.
//!
//! The rules judged the request as the agent wrote it (placeholders in place), so a policy
//! never matches on a secret; the server receives the canonical target with the values in,
//! percent-encoded. A target whose decoded form still spells a placeholder after this (a
//! spelling none of ours, like mixed-case escapes) is refused as unresolvable.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::scan::Patterns;
use super::{Credentials, Encoding, Refused};
use crate::policy::CredentialSet;
use crate::policy::credentials::{ALIAS_MARKER, PLACEHOLDER_PREFIX};
use crate::proxy::l7::rest::RequestHead;

/// The values for one head, found and checked, to be applied once the request is logged
/// (the log shows the agent's form, with `[CREDENTIAL]` where a value goes in the path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injection {
    headers: Vec<(usize, Vec<u8>)>,
    path: Option<(String, String)>,
    query: Option<String>,
}

impl Injection {
    /// Whether any value goes in.
    pub fn any(&self) -> bool {
        !self.headers.is_empty() || self.path.is_some() || self.query.is_some()
    }

    /// The path as logged, when a value goes into it.
    pub fn logged_path(&self) -> Option<&str> {
        self.path.as_ref().map(|(_, logged)| logged.as_str())
    }

    /// Puts the values into `head` (the one they were found in).
    pub fn apply(&self, head: &mut RequestHead) {
        for (i, value) in &self.headers {
            if let Some(header) = head.headers.get_mut(*i) {
                header.1.clone_from(value);
            }
        }
        if let Some((path, _)) = &self.path {
            head.target.path.clone_from(path);
        }
        if let Some(query) = &self.query {
            head.target.query = Some(query.clone());
        }
    }
}

impl Credentials {
    /// The values of `bound` credentials for the placeholders in `head`; refuses any other
    /// placeholder.
    pub fn inject(&self, head: &RequestHead, bound: CredentialSet) -> Result<Injection, Refused> {
        let mut headers = Vec::new();
        for (i, (_, value)) in head.headers.iter().enumerate() {
            if let Some(new) = self.header_value(value, bound)? {
                headers.push((i, new));
            }
        }
        let path = self.url_part(&head.target.path, bound, "path")?;
        let query = match &head.target.query {
            Some(query) => self.url_part(query, bound, "query")?.map(|(q, _)| q),
            None => None,
        };
        Ok(Injection {
            headers,
            path,
            query,
        })
    }

    /// A header value with the placeholders replaced (`None`: it has none).
    fn header_value(&self, value: &[u8], bound: CredentialSet) -> Result<Option<Vec<u8>>, Refused> {
        let patterns = self.placeholders();
        if patterns.any(value) {
            return self
                .replace_all(patterns, value, bound, Encoding::Raw, "headers")
                .map(|(out, _)| Some(out));
        }
        // `Basic base64(user:password)`: the placeholder is inside the base64.
        let Some(token) = basic_token(value) else {
            return Ok(None);
        };
        let Ok(decoded) = STANDARD.decode(token) else {
            return Ok(None);
        };
        if !patterns.any(&decoded) {
            return Ok(None);
        }
        let (credentials, _) = self.replace_all(
            patterns,
            &decoded,
            bound,
            Encoding::Raw,
            "Basic credentials",
        )?;
        let mut out = b"Basic ".to_vec();
        out.extend_from_slice(STANDARD.encode(credentials).as_bytes());
        Ok(Some(out))
    }

    /// The path or query with the placeholders replaced, and its form for logs (`None`: it has
    /// none).
    fn url_part(
        &self,
        text: &str,
        bound: CredentialSet,
        place: &'static str,
    ) -> Result<Option<(String, String)>, Refused> {
        let patterns = self.placeholders();
        let unresolved = Refused::Unresolved {
            credential: None,
            place,
        };
        if !patterns.any(text.as_bytes()) {
            return match spells_placeholder(text) {
                true => Err(unresolved),
                false => Ok(None),
            };
        }
        let (out, pieces) =
            self.replace_all(patterns, text.as_bytes(), bound, Encoding::Url, place)?;
        let out = String::from_utf8(out).map_err(|_| unresolved)?;
        if spells_placeholder(&out) {
            return Err(unresolved);
        }
        // The logged form: the agent's text with each replaced placeholder as [CREDENTIAL].
        let mut log = String::new();
        let mut done = 0;
        for (start, end) in pieces {
            log.push_str(&text[done..start]);
            log.push_str("[CREDENTIAL]");
            done = end;
        }
        log.push_str(&text[done..]);
        Ok(Some((out, log)))
    }

    /// `text` with every placeholder resolved; also the ranges replaced.
    fn replace_all(
        &self,
        patterns: &Patterns,
        text: &[u8],
        bound: CredentialSet,
        encoding: Encoding,
        place: &'static str,
    ) -> Result<(Vec<u8>, Vec<Range>), Refused> {
        let mut out = Vec::with_capacity(text.len() + 64);
        let mut ranges = Vec::new();
        let mut done = 0;
        for hit in patterns.find(text) {
            let value = self.resolve(text, hit, true, bound, encoding, place)?;
            out.extend_from_slice(&text[done..hit.start]);
            out.extend_from_slice(&value);
            ranges.push((hit.start, hit.end));
            done = hit.end;
        }
        out.extend_from_slice(&text[done..]);
        Ok((out, ranges))
    }
}

/// Where a placeholder was, in the text searched.
type Range = (usize, usize);

/// The token of a `Basic` authorization value.
fn basic_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    scheme
        .eq_ignore_ascii_case(b"basic ")
        .then(|| value[6..].trim_ascii())
}

/// Whether `text`, percent-decoded (`+` as a space), contains a placeholder's marker.
fn spells_placeholder(text: &str) -> bool {
    if !text.contains('%') {
        return false;
    }
    let mut decoded = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let contains = |marker: &str| {
        decoded
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    };
    contains(PLACEHOLDER_PREFIX) || contains(ALIAS_MARKER)
}
