//! One connection's life: head → caller → decision → address check → dial → tunnel or
//! forwarded exchange (with keep-alive).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::Settings;
use super::budget::{Account, Budget, Buffered, OverBudget};
use super::caller::{CallerError, Identifier, PinError};
use super::decision::{self, Decision, Process, Via};
use super::dial::{self, DialFailure};
use super::http::{self, Body, Chunked, HttpError, Request, Target};
use super::l7;
use super::l7::credentials::tunnel::Ended;
use super::relay::{self, Activity, Pipe};
use crate::log::{self, Denial, Layer, RateLimit};
use crate::policy::{L7Endpoint, NetworkRule};
use crate::workers;

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The policy's rules.
    pub rules: Vec<NetworkRule>,
    /// Caller identification.
    pub identifier: Identifier,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Bounds denial log lines.
    pub limiter: RateLimit,
    /// One permit per open connection.
    pub permits: Arc<Semaphore>,
    /// What the connections' buffers may hold together.
    pub budget: Arc<Budget>,
    /// Splice pipes for reuse.
    pub pipes: relay::PipePool,
    /// L7 inspection, when the policy has L7 endpoints.
    pub l7: Option<Arc<l7::Engine>>,
    /// Credentials, when the policy has any.
    pub credentials: Option<Arc<l7::credentials::Credentials>>,
}

/// Serves one client connection until it closes, is denied, goes idle, or is made to give way
/// to older connections over the memory budget (then dropped with every buffer it holds; a
/// head it was reading is answered 503 first).
pub async fn serve(shared: &Arc<Shared>, client: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let account = shared.budget.open();
    let served = serve_requests(shared, &account, client, peer, local);
    if account.until_evicted(served).await.is_none() {
        tracing::debug!(layer = "proxy", %peer, "connection closed for the memory budget");
    }
}

async fn serve_requests(
    shared: &Arc<Shared>,
    account: &Account,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    let mut buf = Buffered::new(account);
    loop {
        let request = match read_request(&client, &mut buf, shared.settings.header_timeout).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(refusal) => {
                let _ = write_all(&client, &refusal).await;
                return;
            }
        };
        // The exchange's state (identification, dialling, relaying) is boxed: allocated for
        // a request whose head is complete, not carried by every connection reading one.
        let exchanged = Box::pin(exchange(
            shared,
            &mut client,
            peer,
            local,
            &request,
            &mut buf,
        ));
        let keep_alive = match exchanged.await {
            Ok(keep_alive) => keep_alive,
            Err(Refusal(response)) => {
                let _ = write_all(&client, &response).await;
                false
            }
        };
        if !keep_alive {
            return;
        }
    }
}

/// A response the proxy sends instead of relaying, after which it closes the connection.
struct Refusal(Vec<u8>);

/// Reads one request head. `Ok(None)`: the client closed between requests.
async fn read_request(
    client: &TcpStream,
    buf: &mut Buffered,
    limit: Duration,
) -> Result<Option<Request>, Vec<u8>> {
    let account = buf.account().clone();
    let read = async {
        // Parsed from the first bytes (garbage is refused at once), then again only when
        // what came since may have completed the head.
        let mut parsed: Option<usize> = None;
        loop {
            if parsed.is_none_or(|from| http::may_complete_head(&buf.bytes, from)) {
                match http::parse_request(&buf.bytes) {
                    Ok(Some(request)) => return Ok(Some(request)),
                    Ok(None) => parsed = (!buf.bytes.is_empty()).then_some(buf.bytes.len()),
                    Err(e) => return Err(bad_request(&e)),
                }
            }
            if buf.bytes.len() >= MAX_HEAD {
                return Err(http::error_response(
                    431,
                    "bad_request",
                    "",
                    "request head larger than 64 KiB",
                ));
            }
            match read_more(client, buf).await {
                Ok(0) if buf.bytes.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(bad_request(&HttpError::Malformed(
                        "incomplete request head".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Err(over_budget(&OverBudget::of(&account)));
                }
                Err(_) => return Ok(None),
            }
        }
    };
    // Made to give way to an older connection while the head is incomplete: 503.
    let read = async {
        tokio::select! {
            biased;
            read = read => read,
            () = account.evicted() => Err(over_budget(&OverBudget::of(&account))),
        }
    };
    match timeout(limit, read).await {
        Ok(result) => result,
        Err(_) if buf.bytes.is_empty() => Ok(None),
        Err(_) => Err(http::error_response(
            408,
            "bad_request",
            "",
            &format!("request head not complete within {limit:?}"),
        )),
    }
}

fn bad_request(e: &HttpError) -> Vec<u8> {
    http::error_response(400, "bad_request", "", &e.to_string())
}

/// Over the memory budget (the budget logs it): 503, and the connection closes.
fn over_budget(e: &OverBudget) -> Vec<u8> {
    http::error_response(503, "proxy_overloaded", "", &e.to_string())
}

/// Decides, dials and relays one request, whose head is at the start of `buf`. Returns
/// whether the client connection stays open.
async fn exchange(
    shared: &Arc<Shared>,
    client: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    request: &Request,
    buf: &mut Buffered,
) -> Result<bool, Refusal> {
    // A body the proxy cannot delimit is refused before anything is decided or dialled.
    request.body().map_err(|e| Refusal(bad_request(&e)))?;
    let (host, port) = request.target.host_port();
    let authority = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    let what = match &request.target {
        Target::Connect { .. } => format!("CONNECT {authority}"),
        Target::Forward { path, .. } => format!("{} http://{authority}{path}", request.method),
    };
    let denied = |callers: &[Vec<Process>], error: &str, reason: &str| {
        deny(shared, callers, &what, host, port, error, reason)
    };
    // Recorded at connect(), the caller is a table lookup (relayed, and one sock_diag
    // question, which the kernel answers at once). Without records, usually a few
    // dozen /proc reads, but proportional to the fds the sandbox holds: on a worker thread, so
    // a sandbox holding a million sockets slows only its own requests, not the runtime that
    // also forwards signals. The workers exist before the agent runs (an agent at its pids
    // limit leaves no room for a thread made now): a full queue is a 503.
    let identified = match shared.identifier.is_recorded() {
        true => shared.identifier.callers(peer, local),
        false => {
            let identifying = Arc::clone(shared);
            workers::identify(move || identifying.identifier.callers(peer, local))
                .await
                .unwrap_or_else(|e| Err(CallerError::Scan(e.into())))
        }
    };
    let callers = match identified {
        Ok(callers) => callers,
        Err(CallerError::Scan(e)) => return Err(overloaded(&what, &e)),
        Err(CallerError::Abandoned) => {
            tracing::debug!(layer = "proxy", what = %what, "client left before it was identified");
            return Ok(false);
        }
        Err(e) => return Err(denied(&[], "policy_denied", &e.to_string())),
    };
    let (rule, endpoints, matched) =
        match decision::decide(&shared.rules, host, port, &callers, Via::Proxy) {
            Decision::Allow {
                rule,
                endpoints,
                matched,
            } => (rule, endpoints, matched),
            Decision::Deny(reason) => return Err(denied(&callers, "policy_denied", &reason)),
        };
    for process in &matched {
        // Hashing a binary seen for the first time reads all of it (node is ~100 MB): only
        // then does it go to a worker thread.
        let pinned = match shared.identifier.pins.check_hashed(process) {
            Some(verdict) => verdict,
            None => {
                let (hashing, process) = (Arc::clone(shared), Process::clone(process));
                workers::identify(move || hashing.identifier.pins.check(&process))
                    .await
                    .unwrap_or_else(|e| Err(PinError::Resources(e.into())))
            }
        };
        match pinned {
            Ok(()) => {}
            Err(PinError::Resources(e)) => return Err(overloaded(&what, &e)),
            Err(e) => return Err(denied(&callers, "binary_changed", &e.to_string())),
        }
    }
    let inspected: Vec<&L7Endpoint> = endpoints.iter().filter_map(|e| e.l7.as_ref()).collect();
    if !inspected.is_empty() {
        let Some(engine) = shared.l7.as_deref() else {
            // Prepared whenever the policy has L7 endpoints; never a plain tunnel instead.
            return Err(denied(
                &callers,
                "policy_denied",
                "L7 inspection is unavailable",
            ));
        };
        let session = l7::Session {
            host: host.to_owned(),
            port,
            caller: callers.first().and_then(|c| c.first()).cloned(),
            policy: &rule.name,
            l7: inspected,
            endpoints,
            account: buf.account().clone(),
        };
        tracing::debug!(layer = "proxy", what = %what, rule = %rule.name, "inspecting {what}");
        // Inspection's state (TLS, both sides' heads) is boxed: allocated by the connections
        // that are inspected, not made part of every connection's task.
        return Ok(match &request.target {
            Target::Connect { .. } => {
                buf.consume(request.head_len);
                let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
                if write_all(client, established).await.is_ok() {
                    let early = buf.take();
                    Box::pin(l7::serve_tunnel(shared, engine, &session, client, early)).await;
                }
                false
            }
            Target::Forward { .. } => {
                Box::pin(l7::serve_forward(shared, engine, &session, client, buf)).await
            }
        });
    }
    buf.consume(request.head_len);
    // Both splice pipes exist before the client hears anything: out of file descriptors is a
    // 503 now, not a "200 Connection Established" for a tunnel that then dies.
    let pipes = match (shared.pipes.take(), shared.pipes.take()) {
        (Ok(up), Ok(down)) => [up, down],
        (Err(e), _) | (_, Err(e)) => return Err(overloaded(&what, &e)),
    };
    let upstream = dial::dial(shared.settings.connect_timeout, host, port, &endpoints)
        .await
        .map_err(|failure| match failure {
            DialFailure::Refused(reason) => denied(&callers, "ssrf_denied", &reason),
            DialFailure::Unreachable(reason) => {
                tracing::warn!(layer = "proxy", what = %what, "upstream unreachable: {reason}");
                Refusal(http::error_response(
                    502,
                    "upstream_unreachable",
                    &what,
                    &reason,
                ))
            }
            DialFailure::Overloaded(e) => overloaded(&what, &e),
        })?;
    let caller = callers.first().and_then(|c| c.first());
    super::log_allowed(
        "proxy",
        caller,
        (host, port, None),
        &rule.name,
        format_args!("{what}"),
    );
    let idle = shared.settings.idle_timeout;
    // Placeholders cannot be resolved in a plain tunnel: searched for, unless the policy
    // accepted uninspected credentials there.
    let searched = shared
        .credentials
        .as_deref()
        .filter(|_| !endpoints.iter().any(|e| e.allow_uninspected_credentials));
    let keep_alive = match &request.target {
        Target::Connect { .. } => {
            let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
            if let Some(credentials) = searched {
                if write_all(client, established).await.is_ok() {
                    let early = buf.take();
                    let ended = credentials
                        .tunnel(client, &upstream, &early, buf.account(), &pipes[1], idle)
                        .await;
                    if let Ended::Refused { refused, forwarded } = ended {
                        let why = credentials.describe(refused, &authority);
                        let Refusal(answer) = denied(&callers, refused.error(), &why);
                        // The client's own protocol is unknown; a 403 is only an answer when
                        // nothing of its message reached the server.
                        if forwarded == 0 {
                            let _ = write_all(client, &answer).await;
                        }
                    }
                }
            } else if write_all(client, established).await.is_ok()
                && write_all(&upstream, &buf.bytes).await.is_ok()
            {
                // A tunnel holds no buffer of the proxy's: it is spliced.
                buf.clear();
                let _ = relay::tunnel(client, &upstream, &pipes, idle).await;
            }
            false
        }
        Target::Forward { .. } => {
            let head = request.upstream_head();
            if let Some(refused) = searched.and_then(|c| c.search(&head, "request head")) {
                let why = searched
                    .map(|c| c.describe(refused, &authority))
                    .unwrap_or_default();
                return Err(denied(&callers, refused.error(), &why));
            }
            forward(client, &upstream, request, buf, &pipes, idle)
                .await
                .unwrap_or(false)
        }
    };
    for pipe in pipes {
        shared.pipes.give(pipe);
    }
    Ok(keep_alive)
}

/// The proxy itself ran out of something (file descriptors, /proc access): an operational
/// error, logged as one and answered 503, never reported as a policy denial.
fn overloaded(what: &str, e: &std::io::Error) -> Refusal {
    tracing::error!(layer = "proxy", what, "cannot serve {what}: {e}");
    Refusal(http::error_response(
        503,
        "proxy_overloaded",
        what,
        &e.to_string(),
    ))
}

/// Logs a denial and builds the 403 response.
fn deny(
    shared: &Shared,
    callers: &[Vec<Process>],
    what: &str,
    host: &str,
    port: u16,
    error: &str,
    reason: &str,
) -> Refusal {
    let caller = callers.first().and_then(|c| c.first());
    if shared.limiter.allow() {
        log::denied(&Denial {
            layer: Layer::Proxy,
            pid: caller.map_or(0, |p| p.pid),
            exe: caller.map_or("?", |p| p.exe.as_str()),
            what,
            why: reason,
            target: Some((host, port)),
        });
    }
    Refusal(http::error_response(403, error, what, reason))
}

/// One forwarded request: head and body up, response down, concurrently (so `Expect:
/// 100-continue` works). Returns whether the client connection stays open.
async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    request: &Request,
    buf: &mut Buffered,
    [up_pipe, down_pipe]: &[Pipe; 2],
    idle: Duration,
) -> io::Result<bool> {
    let body = request.body().map_err(io::Error::other)?;
    let activity = Activity::new();
    let mut response = Buffered::new(buf.account());
    let up = async {
        write_all(upstream, &request.upstream_head()).await?;
        send_body(client, upstream, body, buf, up_pipe, &activity).await
    };
    let down = relay_response(
        upstream,
        client,
        request,
        &mut response,
        down_pipe,
        &activity,
    );
    tokio::select! {
        result = async { tokio::try_join!(up, down) } => result.map(|((), keep)| keep),
        () = activity.idle_for(idle) => Ok(false),
    }
}

/// Sends a body of `framing` from `buffered` bytes and then `src`. Bytes past the body stay in
/// `buffered` (the start of the next message).
async fn send_body(
    src: &TcpStream,
    dst: &TcpStream,
    framing: Body,
    buffered: &mut Buffered,
    pipe: &Pipe,
    activity: &Activity,
) -> io::Result<()> {
    match framing {
        Body::Empty => Ok(()),
        Body::Length(length) => {
            let ready = (buffered.bytes.len() as u64).min(length) as usize;
            write_all(dst, &buffered.bytes[..ready]).await?;
            buffered.consume(ready);
            let rest = length - ready as u64;
            if rest > 0 {
                let moved = relay::copy(src, dst, pipe, Some(rest), activity).await?;
                if moved < rest {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body ended early",
                    ));
                }
            }
            Ok(())
        }
        Body::Chunked => {
            let mut scanner = Chunked::default();
            loop {
                let consumed = scanner.advance(&buffered.bytes).map_err(io::Error::other)?;
                write_all(dst, &buffered.bytes[..consumed]).await?;
                buffered.consume(consumed);
                activity.touch();
                if scanner == Chunked::Done {
                    return Ok(());
                }
                if read_more(src, buffered).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked body ended early",
                    ));
                }
            }
        }
        Body::UntilClose => relay::copy(src, dst, pipe, None, activity).await.map(drop),
    }
}

/// Relays interim responses and the final response, read through `buf`. Returns whether the
/// client connection may stay open.
async fn relay_response(
    upstream: &TcpStream,
    client: &TcpStream,
    request: &Request,
    buf: &mut Buffered,
    pipe: &Pipe,
    activity: &Activity,
) -> io::Result<bool> {
    loop {
        let response = loop {
            match http::parse_response(&buf.bytes) {
                Ok(Some(response)) => break response,
                Ok(None) if buf.bytes.len() >= MAX_HEAD => {
                    return Err(io::Error::other("upstream response head too large"));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
            if read_more(upstream, buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed",
                ));
            }
        };
        buf.consume(response.head_len);
        if response.is_interim() {
            write_all(client, &response.client_head(false)).await?;
            continue;
        }
        let body = response.body(&request.method).map_err(io::Error::other)?;
        let keep_alive = request.keep_alive() && body != Body::UntilClose;
        write_all(client, &response.client_head(keep_alive)).await?;
        send_body(upstream, client, body, buf, pipe, activity).await?;
        return Ok(keep_alive);
    }
}

/// Reads what is available into `buf`; 0 at end of stream. Room is made only once there is
/// something to read (an idle connection holds no buffer), and over the memory budget it is
/// an error of kind `OutOfMemory`.
pub(crate) async fn read_more(stream: &TcpStream, buf: &mut Buffered) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        buf.make_room().await?;
        match stream.try_read_buf(&mut buf.bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `bytes`.
pub(crate) async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
