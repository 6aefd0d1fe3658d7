//! HTTP/1.1 on an inspected connection: every request head parsed strictly, decided on its
//! own, and relayed or refused.
//!
//! One request at a time: the next head is read only once the previous response is complete,
//! so pipelined requests are decided and answered in order, and a denied request after
//! allowed ones never reaches the server (the connection closes with the 403). Request and
//! response bodies stream in both directions at once (`Expect: 100-continue` works: the
//! interim response reaches the client while its body waits), byte for byte in their own
//! framing; streaming responses (server-sent events, unframed bodies) are passed as they
//! arrive, under the proxy's idle timeout only. A websocket upgrade is decided as the GET it
//! is; after `101` the frames pass untouched.
//!
//! Refused before anything is decided, because proxies and servers could read them
//! differently (request smuggling): both `Content-Length` and `Transfer-Encoding`, differing
//! lengths, a transfer coding other than `chunked`, obs-folded headers, bare LF line ends,
//! `Connection` naming a framing header, an HTTP/1.1 request without exactly one `Host`, and
//! a `Host` (or absolute-form authority) other than the connection's destination (no domain
//! fronting). An h2c upgrade is refused; so is any upgrade but websocket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{fmt, io};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::canon::{self, CanonError, Canonical};
use super::credentials::body::{
    BUFFERED, Mode, PlaceholderFilter, Plan, RefusedError, Unservable, set_length,
};
use super::credentials::redact;
use super::credentials::websocket::{self, Direction};
use super::rules;
use super::stream::{Buffered, Decoder, Filter, Framing, Upstream, copy_body, copy_filtered};
use super::{Context, Refusal};
use crate::policy::l7::Enforcement;
use crate::policy::normalize_host;
use crate::proxy::budget::OverBudget;
use crate::proxy::http::{self, Body, HOP_BY_HOP, MAX_HEADERS};
use crate::proxy::relay::Activity;

/// Largest request or response head.
pub const MAX_HEAD: usize = 64 * 1024;

/// A request head, checked and with its target in canonical form: what the rules judge and,
/// encoded by [`RequestHead::encode`], exactly what the server receives. A stage that
/// rewrites requests (credential placeholders) edits this before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent.
    pub method: String,
    /// The canonical target.
    pub target: Canonical,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// End-to-end headers in order (hop-by-hop ones are dropped when encoding).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Where the body ends.
    pub framing: Body,
    /// A websocket upgrade.
    pub websocket: bool,
    /// Whether the client keeps the connection open afterwards.
    pub keep_alive: bool,
    /// Length of the head as received.
    pub head_len: usize,
}

impl RequestHead {
    /// The head as sent upstream: origin-form, hop-by-hop headers dropped (the upgrade kept
    /// for a websocket), `Host` as the client sent it (checked equal to the destination)
    /// or, for an HTTP/1.0 request without one, the destination's.
    pub fn encode(&self, authority: impl fmt::Display) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.target.path.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.path.as_bytes());
        if let Some(query) = &self.target.query {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(format!(" HTTP/1.{}\r\n", self.minor).as_bytes());
        if http::header(&self.headers, "host").next().is_none() {
            out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
        }
        let dropped = http::tokens(&self.headers, "connection");
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lower.as_str()) || dropped.contains(&lower) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.websocket {
            out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The destination a session is bound to, and how the client reached it.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// Host as requested (CONNECT or URL), any case.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Whether the client speaks TLS to us (the default port of a `Host` is then 443).
    pub tls: bool,
    /// Whether absolute-form (`http://host/...`) targets are expected: a forward-proxy
    /// request, rather than a request inside a tunnel.
    pub forward: bool,
}

/// `host:port` as a `Host` header writes it (an IPv6 address in brackets).
impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Why a head was refused before any decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed or ambiguous: 400, and the connection closes.
    Malformed(String),
    /// `Host` or the URL's authority names another server than the destination.
    Authority(String),
    /// An upgrade other than websocket.
    Upgrade(String),
    /// The target cannot be canonicalised.
    Target(CanonError),
    /// HTTP/2's connection preface: not spoken here yet.
    Http2,
}

/// Parses and checks the request head at the start of `buf`; `Ok(None)` when incomplete.
/// `allow_encoded_slash`: whether any endpoint of the session allows `%2F` (the endpoint that
/// decides is checked again by the rules).
pub fn parse_head(
    buf: &[u8],
    destination: &Destination<'_>,
    allow_encoded_slash: bool,
) -> Result<Option<RequestHead>, HeadError> {
    if buf.starts_with(b"PRI * HTTP/2") {
        return Err(HeadError::Http2);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let malformed = |m: &str| Err(HeadError::Malformed(m.to_owned()));
    // httparse takes a lone LF as a line end; a server that does not would see one header
    // where we saw two.
    if buf[..head_len]
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
    {
        return malformed("bare LF line ending in the request head");
    }
    let method = req.method.unwrap_or_default().to_owned();
    let minor = req.version.unwrap_or(1);
    let raw_target = req.path.unwrap_or_default();
    let headers = http::owned(req.headers);
    let framing = http::framing(&headers, true).map_err(|e| HeadError::Malformed(e.to_string()))?;
    // Only `chunked` alone: a coding the proxy cannot read hides where the body ends.
    let codings = http::tokens(&headers, "transfer-encoding");
    if !codings.is_empty() && codings != ["chunked"] {
        return malformed("Transfer-Encoding other than chunked");
    }
    let connection = http::tokens(&headers, "connection");
    if connection
        .iter()
        .any(|c| c == "content-length" || c == "transfer-encoding" || c == "host")
    {
        return malformed("Connection names a framing header");
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        return malformed("CONNECT inside a tunnel");
    }
    let hosts: Vec<&[u8]> = http::header(&headers, "host").collect();
    if hosts.len() > 1 || (minor == 1 && hosts.is_empty()) {
        return malformed("an HTTP/1.1 request needs exactly one Host header");
    }
    let default_port = if destination.tls { 443 } else { 80 };
    let same = |host: &str, port: u16| {
        normalize_host(host) == normalize_host(destination.host) && port == destination.port
    };
    let origin_target = if let Some(rest) = strip_scheme(raw_target, destination.tls) {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = http::authority(authority, Some(default_port))
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        if !same(&host, port) {
            return Err(HeadError::Authority(format!(
                "request for {authority} on a connection to {destination}"
            )));
        }
        match path.starts_with('?') {
            true => format!("/{path}"),
            false => path.to_owned(),
        }
    } else if destination.forward {
        return malformed("expected an absolute http:// URL");
    } else {
        raw_target.to_owned()
    };
    if let Some(host) = hosts.first() {
        let text = std::str::from_utf8(host).unwrap_or("");
        let (name, port) = http::authority(text.trim(), Some(default_port))
            .map_err(|_| HeadError::Malformed("invalid Host header".into()))?;
        if !same(&name, port) {
            return Err(HeadError::Authority(format!(
                "Host {text:?} on a connection to {destination}"
            )));
        }
    }
    let upgrade = http::tokens(&headers, "upgrade");
    let websocket = match upgrade.as_slice() {
        [] => false,
        [one] if one == "websocket" && connection.iter().any(|c| c == "upgrade") => true,
        _ => {
            return Err(HeadError::Upgrade(format!(
                "upgrade to {} is not allowed through the L7 proxy (only websocket)",
                upgrade.join(", ")
            )));
        }
    };
    let target =
        canon::canonicalize(&origin_target, allow_encoded_slash).map_err(HeadError::Target)?;
    let keep_alive = match minor {
        0 => connection.iter().any(|c| c == "keep-alive"),
        _ => !connection.iter().any(|c| c == "close"),
    };
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        headers,
        framing,
        websocket,
        keep_alive,
        head_len,
    }))
}

/// The target without its scheme, when it is in absolute form with the scheme the client
/// speaks to us (`https://` inside TLS).
fn strip_scheme(target: &str, tls: bool) -> Option<&str> {
    let scheme = if tls { "https://" } else { "http://" };
    let prefix = target.get(..scheme.len())?;
    prefix
        .eq_ignore_ascii_case(scheme)
        .then(|| &target[scheme.len()..])
}

/// What became of the session: whether the client connection may carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Another request may follow on the client connection.
    KeepAlive,
    /// The client connection is done.
    Close,
}

/// Serves requests from `client` (whose unread bytes so far are in `buffered`) until the
/// connection ends; with `once`, serves one request (a forward-proxy request). `connected` is
/// the upstream connection when it was opened ahead (while the client's TLS handshake ran);
/// otherwise it is opened for the first request that may pass.
pub async fn serve<C>(
    cx: &Context<'_>,
    client: &mut C,
    buffered: &mut Buffered,
    once: bool,
    mut connected: Option<Result<Upstream, Refusal>>,
) -> Ending
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let allow_encoded_slash = cx.session.l7.iter().any(|e| e.allow_encoded_slash);
    let mut upstream: Option<(Upstream, Buffered)> = None;
    loop {
        let head = match read_head(cx, client, buffered, allow_encoded_slash).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ending::Close,
            Err(refusal) => {
                refusal.send(client).await;
                return Ending::Close;
            }
        };
        buffered.consume(head.head_len);
        let query = head
            .target
            .query
            .as_deref()
            .map(canon::query_params)
            .unwrap_or_default();
        let verdict = rules::evaluate(
            &cx.session.l7,
            &rules::Request {
                method: &head.method,
                path: &head.target.path,
                query: &query,
                encoded_slash: head.target.encoded_slash,
            },
        );
        let outcome = &verdict.outcome;
        if !outcome.allowed() && verdict.enforcement == Enforcement::Enforce {
            cx.denied(&head, outcome).send(client).await;
            return Ending::Close;
        }
        // Placeholders in the head are checked before anything is logged as allowed; the
        // log shows the agent's request, never a value.
        let plan = match cx.shared.credentials.as_deref() {
            None => None,
            Some(credentials) => {
                match credentials.plan(&head, &cx.session.host, cx.session.port, outcome.endpoint())
                {
                    Ok(plan) => Some(plan),
                    Err(refused) => {
                        let path = &head.target.path;
                        cx.credential_denied(&head.method, path, credentials, refused)
                            .send(client)
                            .await;
                        return Ending::Close;
                    }
                }
            }
        };
        let logged = plan.as_ref().and_then(|p| p.injection.logged_path());
        match outcome.allowed() {
            true => cx.allowed(&head, logged, outcome),
            false => cx.audited(&head, outcome),
        }
        let mut head = head;
        if let Some(plan) = &plan {
            plan.apply(&mut head);
        }
        if upstream.is_none() {
            let attempt = match connected.take() {
                Some(attempt) => attempt,
                None => cx.connect().await,
            };
            match attempt {
                Ok(up) => upstream = Some((up, Buffered::new(&cx.session.account))),
                Err(refusal) => {
                    refusal.send(client).await;
                    return Ending::Close;
                }
            }
        }
        let Some((up, up_buffered)) = upstream.as_mut() else {
            return Ending::Close;
        };
        let exchanged = exchange(cx, client, buffered, &head, up, up_buffered, plan.as_ref()).await;
        match exchanged {
            Ok(Exchanged::Done {
                client_keep,
                upstream_keep,
            }) => {
                if !upstream_keep || !up_buffered.bytes.is_empty() {
                    upstream = None;
                }
                if !client_keep {
                    return Ending::Close;
                }
            }
            Ok(Exchanged::Upgraded) => return Ending::Close,
            Err(e) => {
                tracing::debug!(
                    layer = "l7",
                    host = cx.destination.host,
                    "exchange ended: {e}"
                );
                return Ending::Close;
            }
        }
        if once {
            return Ending::KeepAlive;
        }
    }
}

/// Reads the next request head: `Ok(None)` when the client closed (or stayed idle) between
/// requests.
async fn read_head<C>(
    cx: &Context<'_>,
    client: &mut C,
    buffered: &mut Buffered,
    allow_encoded_slash: bool,
) -> Result<Option<RequestHead>, Refusal>
where
    C: AsyncRead + Unpin,
{
    let settings = &cx.shared.settings;
    let mut started: Option<Instant> = None;
    // Parsed from the first bytes, then again only when what came since may have completed
    // the head (see `http::may_complete_head`).
    let mut parsed: Option<usize> = None;
    loop {
        let complete = |from| http::may_complete_head(&buffered.bytes, from);
        if !buffered.bytes.is_empty() && parsed.is_none_or(complete) {
            match parse_head(&buffered.bytes, &cx.destination, allow_encoded_slash) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => parsed = Some(buffered.bytes.len()),
                Err(e) => return Err(cx.refuse_head(&e, &buffered.bytes)),
            }
        }
        if buffered.bytes.len() >= MAX_HEAD {
            return Err(cx.malformed("request head larger than 64 KiB"));
        }
        // Between requests a kept-alive connection may idle; once a head has begun, it
        // must be complete within the header timeout (slowloris).
        let limit = match started {
            None if buffered.bytes.is_empty() => settings.idle_timeout,
            _ => {
                let since = started.get_or_insert_with(Instant::now).elapsed();
                settings.header_timeout.saturating_sub(since)
            }
        };
        // Made to give way to an older connection while the head is incomplete: 503.
        let account = buffered.account().clone();
        let filled = tokio::select! {
            biased;
            filled = timeout(limit, buffered.fill(client)) => filled,
            () = account.evicted() => Ok(Err(OverBudget::of(&account).into())),
        };
        match filled {
            Ok(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => {
                return Err(cx.over_budget(&OverBudget::of(&account)));
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return match buffered.bytes.is_empty() {
                    true => Ok(None),
                    false => Err(cx.malformed("connection closed inside a request head")),
                };
            }
            Ok(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
            }
            Err(_) if buffered.bytes.is_empty() => return Ok(None),
            Err(_) => return Err(cx.malformed("request head not complete in time")),
        }
    }
}

/// How an exchange ended.
enum Exchanged {
    /// The response is complete.
    Done {
        /// The client connection may carry another request.
        client_keep: bool,
        /// The upstream connection may carry another request.
        upstream_keep: bool,
    },
    /// A websocket ran to its end.
    Upgraded,
}

/// Sends the head, the body (concurrently with the response, so that interim responses
/// reach a client waiting to send its body), and relays the response. With credentials, the
/// body and the response pass through their filters, and a request refused for a
/// placeholder in its body is answered 403 when no response has begun.
async fn exchange<C>(
    cx: &Context<'_>,
    client: &mut C,
    buffered: &mut Buffered,
    head: &RequestHead,
    upstream: &mut Upstream,
    up_buffered: &mut Buffered,
    plan: Option<&Plan<'_>>,
) -> io::Result<Exchanged>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let idle = cx.shared.settings.idle_timeout;
    let answered = AtomicBool::new(false);
    let work = async {
        let mut decoder = Decoder::new(head.framing);
        let upload = send_head(cx, client, buffered, head, upstream, plan, &mut decoder).await?;
        if let Upload::Sent = upload {
            let exchanged = relay_response(
                client,
                head,
                upstream,
                up_buffered,
                &activity,
                plan,
                &answered,
            )
            .await?;
            // A websocket upgrade continues as a relay of frames.
            if let Exchanged::Upgraded = exchanged {
                frames(
                    cx,
                    client,
                    buffered,
                    head,
                    upstream,
                    up_buffered,
                    &activity,
                    plan,
                )
                .await;
            }
            return Ok(exchanged);
        }
        let (mut client_read, mut client_write) = tokio::io::split(&mut *client);
        let (mut up_read, mut up_write) = tokio::io::split(&mut *upstream);
        let body = async {
            match upload {
                Upload::Sent => Ok(()),
                Upload::Plain => {
                    copy_body(
                        head.framing,
                        buffered,
                        &mut client_read,
                        &mut up_write,
                        &activity,
                    )
                    .await
                }
                Upload::Filtered {
                    mut filter,
                    first,
                    framing,
                } => {
                    copy_filtered(
                        &mut decoder,
                        first,
                        false,
                        buffered,
                        &mut client_read,
                        &mut up_write,
                        framing,
                        &activity,
                        &mut filter,
                    )
                    .await
                }
            }
        };
        let response = relay_response(
            &mut client_write,
            head,
            &mut up_read,
            up_buffered,
            &activity,
            plan,
            &answered,
        );
        tokio::pin!(body, response);
        let mut body_done = false;
        loop {
            tokio::select! {
                sent = &mut body, if !body_done => {
                    sent?;
                    body_done = true;
                }
                answered = &mut response => {
                    // A response before the whole body (e.g. 413) ends the exchange; the
                    // rest of the body would be read as the next request, so close.
                    return answered.map(|exchanged| match exchanged {
                        Exchanged::Done { .. } if !body_done => Exchanged::Done {
                            client_keep: false,
                            upstream_keep: false,
                        },
                        other => other,
                    });
                }
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = activity.idle_for(idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    };
    if let (Err(e), Some(plan)) = (&result, plan)
        && !answered.load(Ordering::Relaxed)
    {
        if let Some(refused) = RefusedError::of(e) {
            let path = plan.logged_path(head);
            cx.credential_denied(&head.method, path, plan.credentials, refused)
                .send(client)
                .await;
        } else if let Some(u) = Unservable::of(e) {
            cx.unavailable(u.status, u.error, u.why).send(client).await;
        }
    }
    result
}

/// How the request body goes after the head.
enum Upload<'p> {
    /// Nothing left to send (no body, or a rewritten one sent whole with the head).
    Sent,
    /// Byte for byte.
    Plain,
    /// Through a credential filter (the bytes in `first` already read), in `framing`.
    Filtered {
        filter: PlaceholderFilter<'p>,
        first: Vec<u8>,
        framing: Framing,
    },
}

/// Sends the head, and with it the body when the credentials rewrite a short one whole.
async fn send_head<'p, C>(
    cx: &Context<'_>,
    client: &mut C,
    buffered: &mut Buffered,
    head: &RequestHead,
    upstream: &mut Upstream,
    plan: Option<&'p Plan<'_>>,
    decoder: &mut Decoder,
) -> io::Result<Upload<'p>>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let plain = match head.framing {
        Body::Empty => Upload::Sent,
        _ => Upload::Plain,
    };
    let (plan, mode) = match plan {
        Some(plan) if head.framing != Body::Empty && plan.body != Mode::Pass => (plan, plan.body),
        _ => {
            upstream.write_all(&head.encode(cx.destination)).await?;
            upstream.flush().await?;
            return Ok(plain);
        }
    };
    let mut filter = plan.placeholder_filter(mode, "body");
    if mode == Mode::Scan {
        // What came with the head is searched before the head goes: a refused request
        // whose body arrived with it never reaches the server at all.
        let ready = match head.framing {
            Body::Length(n) => (buffered.bytes.len() as u64).min(n) as usize,
            _ => buffered.bytes.len(),
        };
        plan.placeholder_filter(Mode::Scan, "body")
            .pass(&buffered.bytes[..ready], true)?;
        upstream.write_all(&head.encode(cx.destination)).await?;
        upstream.flush().await?;
        let framing = match head.framing {
            Body::Length(n) => Framing::Length(n),
            _ => Framing::Chunked,
        };
        return Ok(Upload::Filtered {
            filter,
            first: Vec::new(),
            framing,
        });
    }
    // Rewritten: read up to the bound first, so a short body goes with its new length.
    let mut sent = head.clone();
    if http::tokens(&head.headers, "expect")
        .iter()
        .any(|e| e == "100-continue")
    {
        // The client waits for a 100 before its body, which is needed before the head can
        // go: the proxy answers it, and the server is not asked.
        sent.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("expect"));
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        client.flush().await?;
    }
    let (first, ended) = decoder.read_up_to(buffered, client, BUFFERED).await?;
    if ended {
        let body = filter.pass(&first, true)?.bytes().to_vec();
        set_length(&mut sent.headers, Some(body.len()));
        let mut bytes = sent.encode(cx.destination);
        bytes.extend_from_slice(&body);
        upstream.write_all(&bytes).await?;
        upstream.flush().await?;
        return Ok(Upload::Sent);
    }
    if head.minor == 0 {
        return Err(Unservable {
            status: 413,
            error: "credential_body_too_large",
            why: "an HTTP/1.0 request body over 256 KiB cannot have credentials put in (its \
                  length would change, and HTTP/1.0 has no chunked bodies)",
        }
        .error());
    }
    set_length(&mut sent.headers, None);
    upstream.write_all(&sent.encode(cx.destination)).await?;
    upstream.flush().await?;
    Ok(Upload::Filtered {
        filter,
        first,
        framing: Framing::Chunked,
    })
}

/// Relays interim responses and the final one to `client` (through the credentials'
/// redaction when the plan asks for it); `answered` is set once anything was sent.
async fn relay_response<W, R>(
    client: &mut W,
    head: &RequestHead,
    upstream: &mut R,
    up_buffered: &mut Buffered,
    activity: &Activity,
    plan: Option<&Plan<'_>>,
    answered: &AtomicBool,
) -> io::Result<Exchanged>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let redact = plan.filter(|p| p.redact);
    loop {
        let mut response = loop {
            match http::parse_response(&up_buffered.bytes) {
                Ok(Some(response)) => break response,
                Ok(None) if up_buffered.bytes.len() >= MAX_HEAD => {
                    return Err(io::Error::other("upstream response head too large"));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
            if up_buffered.fill(upstream).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed before a response",
                ));
            }
        };
        up_buffered.consume(response.head_len);
        activity.touch();
        if let Some(plan) = redact {
            redact::headers(&plan.redact_filter()?, &mut response.headers);
        }
        if response.status == 101 {
            if !head.websocket {
                return Err(io::Error::other("101 without an upgrade request"));
            }
            answered.store(true, Ordering::Relaxed);
            client.write_all(&response.switching_head()).await?;
            client.flush().await?;
            return Ok(Exchanged::Upgraded);
        }
        if response.is_interim() {
            answered.store(true, Ordering::Relaxed);
            client.write_all(&response.client_head(false)).await?;
            client.flush().await?;
            continue;
        }
        let body = response.body(&head.method).map_err(io::Error::other)?;
        if let Some(plan) = redact {
            let (client_keep, upstream_keep) = redact::relay(
                plan,
                client,
                head,
                response,
                body,
                upstream,
                up_buffered,
                activity,
                answered,
            )
            .await?;
            return Ok(Exchanged::Done {
                client_keep,
                upstream_keep,
            });
        }
        let client_keep = head.keep_alive && body != Body::UntilClose;
        answered.store(true, Ordering::Relaxed);
        client.write_all(&response.client_head(client_keep)).await?;
        copy_body(body, up_buffered, upstream, client, activity).await?;
        return Ok(Exchanged::Done {
            client_keep,
            upstream_keep: response.keep_alive() && body != Body::UntilClose,
        });
    }
}

/// After `101`: frames both ways until either side ends (its end passed on as a half-close)
/// or nothing moves for the idle timeout; untouched, or through the credentials' filters
/// when the plan reads them. A message refused for a placeholder ends the connection, with
/// a close frame (1008, policy violation) to the client.
#[allow(clippy::too_many_arguments)]
async fn frames<C>(
    cx: &Context<'_>,
    client: &mut C,
    buffered: &mut Buffered,
    head: &RequestHead,
    upstream: &mut Upstream,
    up_buffered: &mut Buffered,
    activity: &Activity,
    plan: Option<&Plan<'_>>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let idle: Duration = cx.shared.settings.idle_timeout;
    let ended = {
        let (client_read, client_write) = tokio::io::split(&mut *client);
        let (up_read, up_write) = tokio::io::split(&mut *upstream);
        let up = async {
            match plan.filter(|p| p.frames != Mode::Pass) {
                Some(plan) => {
                    let direction = Direction::Outbound;
                    websocket::relay(plan, direction, buffered, client_read, up_write, activity)
                        .await
                }
                None => one_way(buffered, client_read, up_write, activity).await,
            }
        };
        let down = async {
            match plan.filter(|p| p.redact) {
                Some(plan) => {
                    let direction = Direction::Inbound;
                    websocket::relay(
                        plan,
                        direction,
                        up_buffered,
                        up_read,
                        client_write,
                        activity,
                    )
                    .await
                }
                None => one_way(up_buffered, up_read, client_write, activity).await,
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Err(e) = r { break Some(e); }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if let Err(e) = r { break Some(e); }
                }
                () = activity.idle_for(idle) => break None,
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    let (Some(e), Some(plan)) = (ended, plan) else {
        return;
    };
    let close = match RefusedError::of(&e) {
        Some(refused) => {
            let path = plan.logged_path(head);
            let _ = cx.credential_denied("WEBSOCKET", path, plan.credentials, refused);
            websocket::close_frame(1008, refused.error())
        }
        None if e.get_ref().is_some_and(|i| i.is::<websocket::FrameError>()) => {
            tracing::warn!(
                layer = "l7",
                host = cx.destination.host,
                "websocket ended: {e}"
            );
            websocket::close_frame(1008, "unreadable frame")
        }
        None => return,
    };
    let _ = client.write_all(&close).await;
    let _ = client.shutdown().await;
}

/// One direction of an upgraded connection; `src`'s end becomes `dst`'s half-close.
async fn one_way<R, W>(
    buffered: &mut Buffered,
    mut src: R,
    mut dst: W,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = copy_body(Body::UntilClose, buffered, &mut src, &mut dst, activity).await;
    let _ = dst.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
