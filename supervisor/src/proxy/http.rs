//! HTTP/1.x heads and message framing, as far as a forward proxy needs them.
//!
//! `httparse` parses the heads; this module decides what the proxy does with them: the
//! request target (CONNECT authority or absolute `http://` URL), where each body ends (so a
//! keep-alive client connection can carry the next request), and which hop-by-hop headers are
//! dropped. Ambiguous framing (both `Transfer-Encoding` and `Content-Length`, conflicting
//! lengths) is refused: it is how request smuggling starts.

use std::fmt::Write as _;

/// Most headers accepted in one head.
pub(crate) const MAX_HEADERS: usize = 100;

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus the proxy's own.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP/1.x or malformed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Something the proxy does not do, with a hint.
    #[error("{0}")]
    Unsupported(String),
}

/// What the client asked the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`.
    Connect {
        /// Host name or IP literal.
        host: String,
        /// Port.
        port: u16,
    },
    /// An absolute `http://` URL.
    Forward {
        /// Host name or IP literal.
        host: String,
        /// Port (80 by default).
        port: u16,
        /// Path and query, at least `/`.
        path: String,
    },
}

impl Target {
    /// Host and port.
    pub fn host_port(&self) -> (&str, u16) {
        match self {
            Target::Connect { host, port } | Target::Forward { host, port, .. } => (host, *port),
        }
    }
}

/// How long a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Target.
    pub target: Target,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Length of the head in bytes.
    pub head_len: usize,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Reason phrase.
    pub reason: String,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Length of the head in bytes.
    pub head_len: usize,
}

pub(crate) fn header<'h>(
    headers: &'h [(String, Vec<u8>)],
    name: &str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Comma-separated tokens of every `name` header, lower-cased.
pub(crate) fn tokens(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    header(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

pub(crate) fn owned(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_owned()))
        .collect()
}

/// Whether the bytes of `buf` from `from` on may have completed a head (a line end followed
/// by an empty line; the three bytes before `from` are looked at too, where it may have
/// begun). A head being read is parsed again only then: parsing it after every read would cost
/// the proxy time in the square of its length (a 64 KiB head dribbled in small pieces), which
/// thousands of such heads turn into seconds for every other client.
pub fn may_complete_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    memchr::memmem::find(tail, b"\n\r\n").is_some() || memchr::memmem::find(tail, b"\n\n").is_some()
}

/// Parses a request head from the start of `buf`; `Ok(None)` when incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let method = req.method.unwrap_or_default().to_owned();
    let raw_target = req.path.unwrap_or_default();
    let target = if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = authority(raw_target, None)?;
        Target::Connect { host, port }
    } else {
        forward_target(raw_target)?
    };
    Ok(Some(Request {
        method,
        target,
        minor: req.version.unwrap_or(1),
        headers: owned(req.headers),
        head_len,
    }))
}

fn forward_target(raw: &str) -> Result<Target, HttpError> {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(HttpError::Unsupported(
            "absolute-form https:// requests are not proxied: use CONNECT (set HTTPS_PROXY)".into(),
        ));
    }
    let Some(rest) = lower.starts_with("http://").then(|| &raw[7..]) else {
        return Err(HttpError::Unsupported(format!(
            "{raw:?}: this is a forward proxy; send CONNECT host:port or an absolute http:// URL"
        )));
    };
    let (auth, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.contains('@') {
        return Err(HttpError::Unsupported(
            "credentials in the URL are not forwarded; send them in a header".into(),
        ));
    }
    let (host, port) = authority(auth, Some(80))?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok(Target::Forward { host, port, path })
}

/// Whether an HTTP/1.`minor` message keeps its connection open, `says` telling whether its
/// connection options include a token: HTTP/1.0 only with `keep-alive`, later versions unless
/// `close` (RFC 9112 9.3).
fn persistent(minor: u8, says: impl Fn(&str) -> bool) -> bool {
    match minor {
        0 => says("keep-alive"),
        _ => !says("close"),
    }
}

/// Splits `host:port` (IPv6 in brackets); `default` applies when the port is absent.
pub(crate) fn authority(raw: &str, default: Option<u16>) -> Result<(String, u16), HttpError> {
    let bad = || HttpError::Malformed(format!("{raw:?} is not host:port"));
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !valid {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Parses a response head; `Ok(None)` when incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(format!("upstream response: {e}"))),
    };
    Ok(Some(Response {
        status: res.code.unwrap_or(0),
        minor: res.version.unwrap_or(1),
        reason: res.reason.unwrap_or_default().to_owned(),
        headers: owned(res.headers),
        head_len,
    }))
}

/// Content-Length / Transfer-Encoding to a [`Body`]. `request` selects the RFC 9112 rule for
/// a missing length (none for requests, until-close for responses).
pub(crate) fn framing(headers: &[(String, Vec<u8>)], request: bool) -> Result<Body, HttpError> {
    let encodings = tokens(headers, "transfer-encoding");
    let lengths: Vec<&[u8]> = header(headers, "content-length").collect();
    if !encodings.is_empty() {
        if !lengths.is_empty() {
            return Err(HttpError::Malformed(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        return match encodings.last().map(String::as_str) {
            Some("chunked") => Ok(Body::Chunked),
            _ if request => Err(HttpError::Malformed(
                "request body without chunked Transfer-Encoding".into(),
            )),
            _ => Ok(Body::UntilClose),
        };
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let n = std::str::from_utf8(value)
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| HttpError::Malformed("invalid Content-Length".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::Malformed(
                "conflicting Content-Length values".into(),
            ));
        }
        length = Some(n);
    }
    Ok(match (length, request) {
        (Some(0), _) | (None, true) => Body::Empty,
        (Some(n), _) => Body::Length(n),
        (None, false) => Body::UntilClose,
    })
}

impl Request {
    /// Where the request body ends.
    pub fn body(&self) -> Result<Body, HttpError> {
        framing(&self.headers, true)
    }

    /// Whether the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self) -> bool {
        let connection = tokens(&self.headers, "connection");
        let proxy = tokens(&self.headers, "proxy-connection");
        persistent(self.minor, |t| {
            connection.iter().chain(&proxy).any(|c| c == t)
        })
    }

    /// The head to send upstream: origin-form target, hop-by-hop headers dropped, `Host` from
    /// the URL, and `Connection: close` (each request gets its own upstream connection, so
    /// each is checked against the policy on its own).
    pub fn upstream_head(&self) -> Vec<u8> {
        let Target::Forward { host, port, path } = &self.target else {
            return Vec::new();
        };
        let mut head = format!("{} {} HTTP/1.{}\r\n", self.method, path, self.minor);
        let authority = match (host.contains(':'), *port) {
            (true, 80) => format!("[{host}]"),
            (true, p) => format!("[{host}]:{p}"),
            (false, 80) => host.clone(),
            (false, p) => format!("{host}:{p}"),
        };
        let _ = write!(head, "Host: {authority}\r\n");
        let mut bytes = head.into_bytes();
        let dropped = tokens(&self.headers, "connection");
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "host" || HOP_BY_HOP.contains(&lower.as_str()) || dropped.contains(&lower) {
                continue;
            }
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"Connection: close\r\n\r\n");
        bytes
    }
}

impl Response {
    /// Where the response body ends, given the request method.
    pub fn body(&self, method: &str) -> Result<Body, HttpError> {
        if method.eq_ignore_ascii_case("HEAD") || matches!(self.status, 100..=199 | 204 | 304) {
            return Ok(Body::Empty);
        }
        framing(&self.headers, false)
    }

    /// Interim (1xx) responses precede the final one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The head to send to the client, hop-by-hop headers dropped and the client's
    /// connection declared kept alive or closed.
    pub fn client_head(&self, keep_alive: bool) -> Vec<u8> {
        let mut bytes = self.head_without_hop_by_hop();
        if !self.is_interim() {
            let connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
            bytes.extend_from_slice(b"Connection: ");
            bytes.extend_from_slice(connection);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    /// The head of a `101 Switching Protocols` to a websocket upgrade, for the client: the
    /// upgrade itself kept, other hop-by-hop headers dropped.
    pub fn switching_head(&self) -> Vec<u8> {
        let mut bytes = self.head_without_hop_by_hop();
        bytes.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        bytes
    }

    /// Whether the server keeps the connection open after this response.
    pub fn keep_alive(&self) -> bool {
        let connection = tokens(&self.headers, "connection");
        persistent(self.minor, |t| connection.iter().any(|c| c == t))
    }

    fn head_without_hop_by_hop(&self) -> Vec<u8> {
        let mut bytes =
            format!("HTTP/1.{} {} {}\r\n", self.minor, self.status, self.reason).into_bytes();
        let dropped = tokens(&self.headers, "connection");
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lower.as_str()) || dropped.contains(&lower) {
                continue;
            }
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes
    }
}

/// An error response from the proxy itself, with a JSON body
/// `{"error":..., "detail":..., "reason":...}`, always closing the connection.
pub fn error_response(status: u16, error: &str, detail: &str, reason: &str) -> Vec<u8> {
    let body =
        serde_json::json!({ "error": error, "detail": detail, "reason": reason }).to_string();
    let phrase = reason_phrase(status);
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-OpenShell-Error: {error}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The reason phrase of a status the proxy answers with itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Follows a chunked body as its bytes pass, to find where it ends (RFC 9112 7.1), without
/// changing them. Works across any split of the bytes into reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// In the hex digits of a chunk-size line.
    Size {
        /// Value so far.
        value: u64,
        /// Whether a digit was seen.
        digits: bool,
    },
    /// After the digits (extensions, whitespace), until LF.
    Extension(u64),
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// In the trailer section, at the start of a line.
    TrailerStart,
    /// After CR at the start of a trailer line: the final CRLF.
    TrailerCr,
    /// Inside a trailer line.
    Trailer,
    /// The body is complete.
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            value: 0,
            digits: false,
        }
    }
}

impl Chunked {
    /// Advances over `bytes`; returns how many belong to the body (fewer than given only
    /// when the body ended), or an error for invalid framing.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, HttpError> {
        let bad = || HttpError::Malformed("invalid chunked encoding".into());
        let mut i = 0;
        while i < bytes.len() && *self != Chunked::Done {
            if let Chunked::Data(left) = *self {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                *self = if take == left {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunked::Size { value, .. }, _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or_else(bad)?;
                    Chunked::Size {
                        value,
                        digits: true,
                    }
                }
                (
                    Chunked::Size {
                        value,
                        digits: true,
                    },
                    b'\n',
                ) => end_of_size(value),
                (
                    Chunked::Size {
                        value,
                        digits: true,
                    },
                    b'\r' | b';' | b' ' | b'\t',
                ) => Chunked::Extension(value),
                (Chunked::Size { .. }, _) => return Err(bad()),
                (Chunked::Extension(value), b'\n') => end_of_size(value),
                (Chunked::Extension(value), _) => Chunked::Extension(value),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataCr | Chunked::DataLf, b'\n') => Chunked::default(),
                (Chunked::DataCr | Chunked::DataLf, _) => return Err(bad()),
                (Chunked::TrailerStart, b'\r') => Chunked::TrailerCr,
                (Chunked::TrailerStart | Chunked::TrailerCr, b'\n') => Chunked::Done,
                (Chunked::TrailerCr, _) => return Err(bad()),
                (Chunked::Trailer, b'\n') => Chunked::TrailerStart,
                (Chunked::TrailerStart | Chunked::Trailer, _) => Chunked::Trailer,
                (Chunked::Data(_) | Chunked::Done, _) => *self,
            };
        }
        Ok(i)
    }
}

fn end_of_size(value: u64) -> Chunked {
    if value == 0 {
        Chunked::TrailerStart
    } else {
        Chunked::Data(value)
    }
}

#[cfg(test)]
mod tests;
