//! What the credentials do to one exchange: the [`Plan`] made from the request head and its
//! deciding endpoint, and the [`Filter`]s its bodies pass through.
//!
//! Request bodies are rewritten only where the endpoint opts in, and only JSON, form and text
//! ones (a value goes in escaped for its syntax); a body of another type there, or any body
//! sent where no credential is bound, is searched and refused if it carries a placeholder.
//! A compressed body cannot be searched and is passed as written (a placeholder in it reaches
//! the server unresolved, which leaks nothing). A rewritten body of at most [`BUFFERED`]
//! bytes is sent with its new `Content-Length`; a longer one is sent chunked as it streams.

use std::io;

use super::head::Injection;
use super::scan::{Patterns, Stream};
use super::{Credentials, Encoding, Refused};
use crate::policy::{CredentialSet, L7Endpoint};
use crate::proxy::http::{self, Body};
use crate::proxy::l7::rest::RequestHead;
use crate::proxy::l7::stream::{Filter, Passed};

/// Largest body rewritten in memory (upstream's bound); longer ones stream.
pub const BUFFERED: usize = 256 * 1024;

/// What happens to a request body (or to client websocket messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passed as written.
    Pass,
    /// Searched; a placeholder refuses the request.
    Scan,
    /// Placeholders of bound credentials replaced, written with this encoding; others
    /// refused.
    Rewrite(Encoding),
}

/// The credentials' part in one exchange.
#[derive(Debug)]
pub struct Plan<'c> {
    /// The credentials.
    pub credentials: &'c Credentials,
    /// Bound to this request.
    pub bound: CredentialSet,
    /// Values for the head.
    pub injection: Injection,
    /// The request body.
    pub body: Mode,
    /// Client websocket messages, after an upgrade.
    pub frames: Mode,
    /// Whether responses (and server messages) are searched for real values.
    pub redact: bool,
}

impl Credentials {
    /// The plan for `head`, a request to `host`:`port` decided by `deciding`; refuses a
    /// placeholder in the head that may not go there.
    pub fn plan<'c>(
        &'c self,
        head: &RequestHead,
        host: &str,
        port: u16,
        deciding: Option<&L7Endpoint>,
    ) -> Result<Plan<'c>, Refused> {
        let bound = self.bound(host, port, deciding);
        let injection = self.inject(head, bound)?;
        let opted = |flag: fn(&L7Endpoint) -> bool| deciding.is_some_and(flag);
        let compressed = http::tokens(&head.headers, "content-encoding")
            .iter()
            .any(|c| c != "identity");
        let body = match head.framing {
            Body::Empty => Mode::Pass,
            _ if compressed => Mode::Pass,
            _ if opted(|e| e.body_credentials) => match content_encoding(head) {
                Some(encoding) => Mode::Rewrite(encoding),
                None => Mode::Scan,
            },
            _ if bound.is_empty() => Mode::Scan,
            _ => Mode::Pass,
        };
        let frames = match head.websocket {
            false => Mode::Pass,
            true if opted(|e| e.websocket_credentials) => Mode::Rewrite(Encoding::Json),
            true if bound.is_empty() => Mode::Scan,
            true => Mode::Pass,
        };
        Ok(Plan {
            credentials: self,
            bound,
            injection,
            body,
            frames,
            redact: self.any_loaded(bound),
        })
    }
}

impl Plan<'_> {
    /// Applies the plan to the head the server will get: the values in; where responses are
    /// searched, `Accept-Encoding: identity` (an echo inside gzip could not be found); where
    /// websocket messages are read, no extension (compressed frames could not be).
    pub fn apply(&self, head: &mut RequestHead) {
        self.injection.apply(head);
        if self.redact {
            head.headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("accept-encoding"));
            head.headers
                .push(("Accept-Encoding".to_owned(), b"identity".to_vec()));
        }
        if head.websocket && (self.redact || self.frames != Mode::Pass) {
            head.headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("sec-websocket-extensions"));
        }
    }

    /// The path of `head` (the request this plan is for) as logs show it.
    pub fn logged_path<'h>(&'h self, head: &'h RequestHead) -> &'h str {
        self.injection.logged_path().unwrap_or(&head.target.path)
    }

    /// The filter for the request body or client messages in `mode`.
    pub fn placeholder_filter(&self, mode: Mode, place: &'static str) -> PlaceholderFilter<'_> {
        let (bound, encoding) = match mode {
            Mode::Rewrite(encoding) => (self.bound, encoding),
            Mode::Scan | Mode::Pass => (CredentialSet::EMPTY, Encoding::Raw),
        };
        PlaceholderFilter {
            credentials: self.credentials,
            bound,
            encoding,
            place,
            stream: Stream::default(),
        }
    }

    /// The filter for responses and server messages.
    pub fn redact_filter(&self) -> io::Result<RedactFilter<'_>> {
        Ok(RedactFilter {
            credentials: self.credentials,
            patterns: self.credentials.values().ok_or_else(cannot_redact)?,
            stream: Stream::default(),
        })
    }
}

/// How values are written into a body of this type, when it is one that is rewritten.
fn content_encoding(head: &RequestHead) -> Option<Encoding> {
    let value = http::header(&head.headers, "content-type")
        .next()
        .unwrap_or(b"");
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Some(Encoding::Json)
    } else if essence == "application/x-www-form-urlencoded" {
        Some(Encoding::Url)
    } else if essence.starts_with("text/") {
        Some(Encoding::Raw)
    } else {
        None
    }
}

/// A refusal carried through the body plumbing's `io::Error`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a credential placeholder was refused")]
pub struct RefusedError(pub Refused);

impl RefusedError {
    /// The refusal inside `e`, when it is one.
    pub fn of(e: &io::Error) -> Option<Refused> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RefusedError>())
            .map(|r| r.0)
    }
}

fn refused(r: Refused) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, RefusedError(r))
}

/// An exchange the credentials cannot serve safely, answered with `status` when nothing was
/// sent to the client yet.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct Unservable {
    /// The status of the answer.
    pub status: u16,
    /// Its `error`.
    pub error: &'static str,
    /// Why, in words.
    pub why: &'static str,
}

impl Unservable {
    /// As an `io::Error`, to end the exchange.
    pub fn error(self) -> io::Error {
        io::Error::other(self)
    }

    /// The one inside `e`, when it is one.
    pub fn of(e: &io::Error) -> Option<&Unservable> {
        e.get_ref()?.downcast_ref::<Unservable>()
    }
}

fn cannot_redact() -> io::Error {
    Unservable {
        status: 502,
        error: "upstream_response_refused",
        why: "the credential values cannot be searched for in the response",
    }
    .error()
}

/// Placeholders replaced (those bound) or refused (any other), as the bytes stream.
#[derive(Debug)]
pub struct PlaceholderFilter<'c> {
    credentials: &'c Credentials,
    bound: CredentialSet,
    encoding: Encoding,
    place: &'static str,
    stream: Stream,
}

impl Filter for PlaceholderFilter<'_> {
    fn pass<'d>(&mut self, data: &'d [u8], at_end: bool) -> io::Result<Passed<'d>> {
        let (credentials, bound, encoding, place) =
            (self.credentials, self.bound, self.encoding, self.place);
        self.stream
            .pass(
                credentials.placeholders(),
                data,
                at_end,
                true,
                |text, hit| credentials.resolve(text, hit, at_end, bound, encoding, place),
            )
            .map_err(refused)
    }
}

/// Real values replaced by their placeholders, as the bytes stream.
#[derive(Debug)]
pub struct RedactFilter<'c> {
    credentials: &'c Credentials,
    patterns: &'c Patterns,
    stream: Stream,
}

impl Filter for RedactFilter<'_> {
    fn pass<'d>(&mut self, data: &'d [u8], at_end: bool) -> io::Result<Passed<'d>> {
        let credentials = self.credentials;
        self.stream
            .pass(self.patterns, data, at_end, false, |_, hit| {
                Ok::<_, io::Error>(credentials.redaction(hit))
            })
    }
}

impl RedactFilter<'_> {
    /// `text` with every value replaced (a whole header value, say).
    pub fn whole(&self, text: &[u8]) -> Option<Vec<u8>> {
        if !self.patterns.any(text) {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut done = 0;
        for hit in self.patterns.find(text) {
            out.extend_from_slice(&text[done..hit.start]);
            out.extend_from_slice(&self.credentials.redaction(hit));
            done = hit.end;
        }
        out.extend_from_slice(&text[done..]);
        Some(out)
    }
}

/// Sets a message's framing headers to `length` (`None`: chunked), dropping the others.
pub fn set_length(headers: &mut Vec<(String, Vec<u8>)>, length: Option<usize>) {
    headers.retain(|(name, _)| {
        !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("transfer-encoding")
    });
    match length {
        Some(n) => headers.push(("Content-Length".to_owned(), n.to_string().into_bytes())),
        None => headers.push(("Transfer-Encoding".to_owned(), b"chunked".to_vec())),
    }
}
