//! The server side of HTTP/1.1 and WebSocket (RFC 6455), as much as the agents' API clients
//! use: requests with Content-Length or chunked bodies on kept-alive connections, streamed
//! (chunked) responses, and an upgrade to text messages.

use std::io::{self, BufRead, Read, Write};

use base64::Engine;
use sha1::{Digest, Sha1};

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body or WebSocket message accepted (agents send their whole context).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from its transfer framing.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Whether this is a WebSocket upgrade request.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads the next request; `None` when the client closed the connection between requests.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return match head.is_empty() {
                true => Ok(None),
                false => Err(invalid("connection closed inside a request head")),
            };
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        // The empty line ending the head (a lone CRLF; leading empty lines are skipped).
        if head[before..] == *b"\r\n" {
            if before == 0 {
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete request head")),
        Err(e) => return Err(invalid(format!("bad request head: {e}"))),
    }
    let mut request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        target: parsed.path.unwrap_or_default().to_owned(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| invalid("bad Content-Length"))?;
        if length > MAX_BODY {
            return Err(invalid("request body too large"));
        }
        request.body = vec![0; length];
        reader.read_exact(&mut request.body)?;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if body.len() + size > MAX_BODY {
            return Err(invalid("request body too large"));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// Writes a complete response with a Content-Length.
pub fn respond(
    out: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        reason(status),
        body.len()
    )?;
    out.write_all(body)?;
    out.flush()
}

/// Writes a `200` whose body arrives as `parts`, each one chunk flushed on its own: what a
/// model API's event stream looks like on the wire.
pub fn respond_streaming(
    out: &mut impl Write,
    content_type: &str,
    parts: &[String],
) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )?;
    out.flush()?;
    for part in parts {
        write!(out, "{:x}\r\n{part}\r\n", part.len())?;
        out.flush()?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Status",
    }
}

/// Accepts a WebSocket upgrade (no extensions, no subprotocol).
pub fn accept_websocket(out: &mut impl Write, request: &Request) -> io::Result<()> {
    let key = request
        .header("sec-websocket-key")
        .ok_or_else(|| invalid("WebSocket upgrade without Sec-WebSocket-Key"))?;
    let accept = websocket_accept(key);
    write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )?;
    out.flush()
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455, section 4.2.2).
fn websocket_accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What the client sent on a WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A complete message.
    Text(String),
    /// A ping, to be answered with this payload.
    Ping(Vec<u8>),
    /// The client closed the socket (a close frame or the end of the stream).
    Close,
}

/// Reads a client's messages, joining fragments across the control frames that may come
/// between them.
#[derive(Debug, Default)]
pub struct MessageReader {
    partial: Vec<u8>,
}

impl MessageReader {
    /// Reads the next message (a binary one as lossy text); pongs are skipped.
    pub fn read(&mut self, reader: &mut impl Read) -> io::Result<Message> {
        loop {
            let mut head = [0; 2];
            match reader.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Message::Close),
                Err(e) => return Err(e),
            }
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let length = match head[1] & 0x7f {
                126 => {
                    let mut n = [0; 2];
                    reader.read_exact(&mut n)?;
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0; 8];
                    reader.read_exact(&mut n)?;
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let length = usize::try_from(length)
                .ok()
                .filter(|n| self.partial.len() + n <= MAX_BODY)
                .ok_or_else(|| invalid("WebSocket message too large"))?;
            let mut mask = [0; 4];
            if head[1] & 0x80 != 0 {
                reader.read_exact(&mut mask)?;
            }
            let mut payload = vec![0; length];
            reader.read_exact(&mut payload)?;
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            match opcode {
                0x8 => return Ok(Message::Close),
                0x9 => return Ok(Message::Ping(payload)),
                0xa => continue,
                // Text (0x1), binary (0x2) or a continuation (0x0) of either.
                _ => self.partial.extend_from_slice(&payload),
            }
            if fin {
                let text = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                return Ok(Message::Text(text));
            }
        }
    }
}

/// Writes one unmasked frame (servers do not mask): `opcode` 0x1 text, 0x8 close, 0xa pong.
pub fn write_frame(out: &mut impl Write, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    out.write_all(&frame)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn requests_with_both_framings_on_one_connection() {
        let wire =
            b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\
            POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut reader = io::BufReader::new(&wire[..]);
        let first = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(first.path(), "/v1/messages");
        assert_eq!(first.header("HOST"), Some("a"));
        assert_eq!(first.body, b"hi");
        let second = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(second.body, b"abcde");
        assert_eq!(read_request(&mut reader).unwrap(), None);
    }

    #[test]
    fn masked_fragmented_text_is_joined() {
        let mask = [1, 2, 3, 4];
        let masked = |data: &[u8]| -> Vec<u8> {
            data.iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect()
        };
        let mut wire = vec![0x01, 0x80 | 3];
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"abc"));
        wire.extend([0x89, 0x00]);
        wire.extend([0x80, 0x80 | 2]);
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"de"));
        let (mut reader, mut messages) = (&wire[..], MessageReader::default());
        // The RFC allows control frames between fragments: the ping comes first, then the
        // whole text.
        assert_eq!(messages.read(&mut reader).unwrap(), Message::Ping(vec![]));
        assert_eq!(
            messages.read(&mut reader).unwrap(),
            Message::Text("abcde".into())
        );
        assert_eq!(messages.read(&mut reader).unwrap(), Message::Close);
    }
}
