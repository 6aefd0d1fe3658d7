//! L7 inspection: on endpoints with `protocol: rest` (or `websocket`), every HTTP request is
//! decided on its own by the endpoint's rules, with TLS terminated where the client speaks it.
//!
//! Only endpoints with L7 rules are inspected; every other connection stays a plain spliced
//! tunnel (upstream terminates TLS everywhere, which breaks pinned clients, gRPC and non-HTTP
//! protocols for no benefit). When an allowed caller's matching endpoints include L7 ones, the
//! connection is inspected under those (an L4 endpoint of the same host never widens them).
//!
//! - [`canon`]: the canonical request target, what is matched and what is forwarded;
//! - [`rules`]: the decision, a pure function;
//! - [`rest`]: HTTP/1.1 on an inspected connection (strict parsing, relay, websocket);
//! - [`tls`]: the in-memory CA, leaf certificates and upstream verification;
//! - [`trust`]: the files and variables that make the agent trust the CA;
//! - [`stream`]: the byte plumbing.
//!
//! Entry points, each for a caller already identified and allowed to reach the destination:
//! [`serve_tunnel`] (after a CONNECT was answered 200; also the way in for a transparently
//! intercepted connection: hand it the accepted client socket and the session, with no
//! CONNECT read), and [`serve_forward`] (one absolute-form `http://` request).

pub mod canon;
pub mod credentials;
pub mod rest;
pub mod rules;
pub mod stream;
pub mod tls;
pub mod trust;

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use self::rest::{Destination, Ending, HeadError, RequestHead};
use self::rules::Outcome;
use self::stream::{Buffered, Rewind, Upstream};
use self::tls::{HTTP1, Tls};
use super::budget::{Account, OverBudget};
use super::connection::Shared;
use super::decision::Process;
use super::dial::{self, DialFailure};
use crate::log::{self, Denial, Layer};
use crate::policy::{Endpoint, L7Endpoint, Policy, normalize_host};
use crate::view::ProvidedFile;

/// What start-up prepares when the policy has L7 endpoints: the engine for the proxy, and
/// the files and variables for the agent.
#[derive(Debug)]
pub struct Prepared {
    /// The CA and upstream TLS, for the proxy.
    pub engine: Arc<Engine>,
    /// Files for the agent's view (CA, bundle, trust store).
    pub files: Vec<ProvidedFile>,
    /// Variables for the agent's environment.
    pub environment: Vec<(&'static str, String)>,
}

/// Why L7 inspection could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// The roots for upstream verification.
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// The CA or a TLS configuration.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Makes the CA and loads the roots when `policy` has an L7 endpoint; `None` otherwise (the
/// agent then gets no CA and no variables). `java_options` is the `JAVA_TOOL_OPTIONS` the
/// agent would otherwise get.
pub fn prepare(policy: &Policy, java_options: Option<&str>) -> Result<Option<Prepared>, L7Error> {
    let hosts: Vec<_> = policy
        .network
        .iter()
        .flat_map(|rule| &rule.endpoints)
        .filter(|e| e.l7.is_some())
        .map(|e| &e.host)
        .collect();
    if hosts.is_empty() {
        return Ok(None);
    }
    let roots = trust::roots()?;
    let tls = Tls::new(&hosts, &roots.certs)?;
    tracing::info!(
        layer = "l7",
        "L7 inspection for {} endpoint(s): CA made in memory; upstream verified with {}",
        hosts.len(),
        roots.source
    );
    Ok(Some(Prepared {
        files: trust::agent_files(&tls, &roots.certs),
        environment: trust::agent_environment(java_options),
        engine: Arc::new(Engine { tls }),
    }))
}

/// What the proxy needs to inspect connections.
#[derive(Debug)]
pub struct Engine {
    tls: Tls,
}

/// One inspected connection: where it goes, on whose behalf, under which endpoints.
#[derive(Debug, Clone)]
pub struct Session<'p> {
    /// Destination host as requested.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// The calling process (socket owner), for logs and 403 bodies.
    pub caller: Option<Process>,
    /// The network rule that allowed the connection (named when no endpoint decides).
    pub policy: &'p str,
    /// The caller's L7 endpoints for this destination.
    pub l7: Vec<&'p L7Endpoint>,
    /// Every endpoint allowing the destination, for the address checks when dialling.
    pub endpoints: Vec<&'p Endpoint>,
    /// The connection's account of the proxy's memory budget: its buffers and TLS state are
    /// charged there.
    pub account: Account,
}

/// An answer the proxy sends instead of relaying, after which the connection closes.
#[derive(Debug)]
pub struct Refusal(Option<Vec<u8>>);

impl Refusal {
    async fn send<C: AsyncWrite + Unpin>(self, client: &mut C) {
        if let Some(bytes) = self.0 {
            let _ = client.write_all(&bytes).await;
            let _ = client.flush().await;
        }
        let _ = client.shutdown().await;
    }
}

/// Serves an established tunnel to an L7 destination: TLS (terminated) or plain HTTP,
/// told apart by the first byte; `early` holds bytes the client sent before the tunnel was
/// answered. Anything else is refused and the connection closed.
pub async fn serve_tunnel(
    shared: &Shared,
    engine: &Engine,
    session: &Session<'_>,
    client: &mut TcpStream,
    early: Vec<u8>,
) {
    let mut first = [0u8; 1];
    let peeked = match early.first() {
        Some(b) => Some(*b),
        None => match timeout(shared.settings.idle_timeout, client.peek(&mut first)).await {
            Ok(Ok(1)) => Some(first[0]),
            _ => None,
        },
    };
    let plain = Context::new(shared, engine, session, false, false);
    match peeked {
        None => {}
        // A TLS handshake record.
        Some(0x16) => serve_tls(shared, engine, session, client, early).await,
        Some(b) if b.is_ascii_alphabetic() => {
            let mut buffered = Buffered::adopt(early, &session.account);
            rest::serve(&plain, client, &mut buffered, false, None).await;
        }
        Some(_) => plain.refuse_connection("neither TLS nor HTTP on an inspected endpoint"),
    }
}

async fn serve_tls(
    shared: &Shared,
    engine: &Engine,
    session: &Session<'_>,
    client: &mut TcpStream,
    early: Vec<u8>,
) {
    let cx = Context::new(shared, engine, session, true, false);
    if session
        .l7
        .iter()
        .any(|e| e.tls == crate::policy::l7::TlsMode::Skip)
    {
        return cx.refuse_connection("TLS on an endpoint with tls: skip cannot be inspected");
    }
    // The client's TLS session lives as long as this call.
    let Ok(_state) = session.account.hold(tls::SESSION_STATE).await else {
        return tracing::debug!(
            layer = "l7",
            "no budget for a TLS session: connection closed"
        );
    };
    let limit = shared.settings.header_timeout;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        Rewind::new(early, &mut *client),
    );
    let start = match timeout(limit, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return tracing::debug!(layer = "l7", "TLS ClientHello: {e}"),
        Err(_) => return tracing::debug!(layer = "l7", "no TLS ClientHello in time"),
    };
    let hello = start.client_hello();
    // The certificate is the CONNECT host's; a different SNI is domain fronting.
    if let Some(sni) = hello.server_name()
        && normalize_host(sni) != normalize_host(&session.host)
    {
        return cx.refuse_connection(&format!(
            "TLS server name {sni:?} differs from the CONNECT host {:?}",
            session.host
        ));
    }
    let offers_http1 = hello.alpn().map(|mut offered| offered.any(|p| p == HTTP1));
    let host = normalize_host(&session.host);
    let mut config = match engine.tls.server(&host) {
        Ok(config) => config,
        Err(e) => {
            return tracing::error!(layer = "l7", host, "cannot make a certificate: {e}");
        }
    };
    // A client offering only protocols we do not speak (h2 alone) gets no ALPN answer
    // instead of a fatal alert; if it then speaks HTTP/2, it is refused with a log line.
    if offers_http1 == Some(false) {
        let mut without = (*config).clone();
        without.alpn_protocols.clear();
        config = Arc::new(without);
    }
    // Upstream's TCP and TLS handshakes run while the client's does: a new connection then
    // costs the longer of the two, not their sum. Only a handshake: no request goes upstream
    // before one is allowed.
    let (accepted, connected) =
        tokio::join!(timeout(limit, start.into_stream(config)), cx.connect());
    let mut stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return tracing::info!(
                layer = "l7",
                host,
                "TLS handshake with the client failed: {e}"
            );
        }
        Err(_) => return tracing::debug!(layer = "l7", "TLS handshake not complete in time"),
    };
    rest::serve(
        &cx,
        &mut stream,
        &mut Buffered::new(&session.account),
        false,
        Some(connected),
    )
    .await;
    let _ = stream.shutdown().await;
}

/// Serves one absolute-form `http://` request whose head (and any bytes after it) are in
/// `buffered`; what the client sent after the request stays there. Returns whether the client
/// connection may carry another request.
pub async fn serve_forward(
    shared: &Shared,
    engine: &Engine,
    session: &Session<'_>,
    client: &mut TcpStream,
    buffered: &mut Buffered,
) -> bool {
    let cx = Context::new(shared, engine, session, false, true);
    rest::serve(&cx, client, buffered, true, None).await == Ending::KeepAlive
}

/// Everything a request on an inspected connection is judged and logged with.
#[derive(Debug)]
pub struct Context<'a> {
    shared: &'a Shared,
    engine: &'a Engine,
    session: &'a Session<'a>,
    destination: Destination<'a>,
}

impl<'a> Context<'a> {
    fn new(
        shared: &'a Shared,
        engine: &'a Engine,
        session: &'a Session<'a>,
        tls: bool,
        forward: bool,
    ) -> Context<'a> {
        Context {
            shared,
            engine,
            session,
            destination: Destination {
                host: &session.host,
                port: session.port,
                tls,
                forward,
            },
        }
    }

    fn caller(&self) -> (u32, &str) {
        self.session
            .caller
            .as_ref()
            .map_or((0, "?"), |p| (p.pid, p.exe.as_str()))
    }

    /// `host:port` as a `Host` header writes it.
    fn authority(&self) -> String {
        self.destination.to_string()
    }

    /// Logs an allowed request; `logged_path` replaces the path when a credential value goes
    /// into it (`[CREDENTIAL]` there).
    fn allowed(&self, head: &RequestHead, logged_path: Option<&str>, outcome: &Outcome<'_>) {
        let path = logged_path.unwrap_or(&head.target.path);
        let (pid, exe) = self.caller();
        let rule = outcome.rule().unwrap_or("");
        let policy = outcome.policy().unwrap_or(self.session.policy);
        tracing::info!(
            event = "allowed",
            layer = "l7",
            pid,
            exe,
            host = self.session.host,
            port = self.session.port,
            method = head.method,
            path,
            rule,
            policy,
            "allowed {} {} on {} by {rule} of policy {policy}",
            head.method,
            log::printable(path),
            self.authority()
        );
    }

    /// Logs a request (or websocket message) refused for a credential placeholder and makes
    /// its 403; `path` is the agent's (never one a value went into).
    fn credential_denied(
        &self,
        method: &str,
        path: &str,
        credentials: &credentials::Credentials,
        refused: credentials::Refused,
    ) -> Refusal {
        let why = credentials.describe(refused, &self.authority());
        self.deny(
            method,
            path,
            403,
            refused.error(),
            &why,
            self.session.policy,
            None,
        )
    }

    fn audited(&self, head: &RequestHead, outcome: &Outcome<'_>) {
        let (pid, exe) = self.caller();
        let why = self.reason(head, outcome);
        tracing::warn!(
            event = "audited",
            layer = "l7",
            pid,
            exe,
            host = self.session.host,
            port = self.session.port,
            method = head.method,
            path = head.target.path,
            rule = outcome.rule(),
            policy = outcome.policy().unwrap_or(self.session.policy),
            why,
            "audited (forwarded, enforcement: audit): {}",
            log::printable(&why)
        );
    }

    /// Logs the refusal and builds the 403.
    fn denied(&self, head: &RequestHead, outcome: &Outcome<'_>) -> Refusal {
        let why = self.reason(head, outcome);
        let policy = outcome.policy().unwrap_or(self.session.policy);
        self.deny(
            &head.method,
            &head.target.path,
            403,
            "policy_denied",
            &why,
            policy,
            outcome.rule(),
        )
    }

    fn reason(&self, head: &RequestHead, outcome: &Outcome<'_>) -> String {
        let request = format!("{} {}", head.method, head.target.path);
        match outcome {
            Outcome::Allowed(..) => format!("{request} allowed"),
            Outcome::DenyRule(e, rule) => {
                format!(
                    "{request} blocked by deny rule {} of policy {}",
                    rule.source, e.policy
                )
            }
            Outcome::NotPermitted(e) => format!("{request} not permitted by policy {}", e.policy),
            Outcome::NoEndpoint => format!(
                "{request} is outside every endpoint path of policy {} for {}",
                self.session.policy,
                self.authority()
            ),
            Outcome::EncodedSlash(e) => format!(
                "{request} has an encoded slash, which policy {} does not allow \
                 (allow_encoded_slash)",
                e.policy
            ),
        }
    }

    /// Logs one L7 denial and makes its JSON answer.
    #[allow(clippy::too_many_arguments)]
    fn deny(
        &self,
        method: &str,
        path: &str,
        status: u16,
        error: &str,
        why: &str,
        policy: &str,
        rule: Option<&str>,
    ) -> Refusal {
        let (pid, exe) = self.caller();
        let what = format!("{method} {path}");
        if self.shared.limiter.allow() {
            log::denied(&Denial {
                layer: Layer::L7,
                pid,
                exe,
                what: &what,
                why,
                target: Some((&self.session.host, self.session.port)),
            });
        }
        let body = serde_json::json!({
            "error": error,
            "policy": policy,
            "rule": rule,
            "detail": why,
            "layer": "l7",
            "protocol": "rest",
            "method": method,
            "path": path,
            "host": self.session.host,
            "port": self.session.port,
            "binary": exe,
        })
        .to_string();
        let phrase = crate::proxy::http::reason_phrase(status);
        Refusal(Some(
            format!(
                "HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\nX-OpenShell-Policy: {}\r\n\
                 X-OpenShell-Error: {error}\r\n\r\n{body}",
                body.len(),
                header_safe(policy),
            )
            .into_bytes(),
        ))
    }

    /// A head refused before any decision.
    fn refuse_head(&self, error: &HeadError, raw: &[u8]) -> Refusal {
        // The method and path as far as they can be read, for the log.
        let line = raw.split(|b| *b == b'\n').next().unwrap_or(raw);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_ascii_whitespace();
        let method = words.next().unwrap_or("?").to_owned();
        let path = words
            .next()
            .map(|t| t.split('?').next().unwrap_or(t).to_owned())
            .unwrap_or_default();
        let (status, code, why) = match error {
            HeadError::Http2 => {
                self.refuse_connection(
                    "HTTP/2 on an inspected endpoint (this version speaks HTTP/1.1)",
                );
                return Refusal(None);
            }
            HeadError::Malformed(why) => (
                400,
                "bad_request",
                format!("malformed or ambiguous request: {why}"),
            ),
            HeadError::Target(why) => (400, "bad_request", why.to_string()),
            HeadError::Authority(why) => (403, "request_authority_mismatch", why.clone()),
            HeadError::Upgrade(why) => (403, "upgrade_refused", why.clone()),
        };
        self.deny(
            &method,
            &path,
            status,
            code,
            &why,
            self.session.policy,
            None,
        )
    }

    fn malformed(&self, why: &str) -> Refusal {
        self.refuse_head(&HeadError::Malformed(why.to_owned()), b"")
    }

    /// Logs a connection refused before any request could be read.
    fn refuse_connection(&self, why: &str) {
        let (pid, exe) = self.caller();
        if self.shared.limiter.allow() {
            log::denied(&Denial {
                layer: Layer::L7,
                pid,
                exe,
                what: &format!("connection to {}", self.authority()),
                why,
                target: Some((&self.session.host, self.session.port)),
            });
        }
    }

    /// Dials upstream (the address checked, as for any connection) and, for a TLS client,
    /// opens verified TLS to it.
    async fn connect(&self) -> Result<Upstream, Refusal> {
        let settings = &self.shared.settings;
        let (host, port) = (&self.session.host, self.session.port);
        let tcp = dial::dial(
            settings.connect_timeout,
            host,
            port,
            &self.session.endpoints,
        )
        .await
        .map_err(|failure| match failure {
            DialFailure::Refused(why) => self.deny(
                "CONNECT",
                "",
                403,
                "ssrf_denied",
                &why,
                self.session.policy,
                None,
            ),
            DialFailure::Unreachable(why) => self.unavailable(502, "upstream_unreachable", &why),
            DialFailure::Overloaded(e) => self.unavailable(503, "proxy_overloaded", &e.to_string()),
        })?;
        if !self.destination.tls {
            return Ok(Upstream::Plain(tcp));
        }
        let name = tls::server_name(&normalize_host(host)).ok_or_else(|| {
            self.unavailable(
                502,
                "upstream_tls",
                &format!("{host:?} is not a TLS server name"),
            )
        })?;
        let state = self
            .session
            .account
            .hold(tls::SESSION_STATE)
            .await
            .map_err(|e| self.over_budget(&e))?;
        let connector = tokio_rustls::TlsConnector::from(self.engine.tls.client());
        match timeout(settings.connect_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(Upstream::Tls(Box::new(stream), state)),
            Ok(Err(e)) => Err(self.unavailable(
                502,
                "upstream_tls",
                &format!("TLS with {} failed: {e}", self.authority()),
            )),
            Err(_) => Err(self.unavailable(
                502,
                "upstream_tls",
                &format!("TLS with {} not complete in time", self.authority()),
            )),
        }
    }

    /// The proxy's memory budget is spent (the budget logs it): 503, and the connection
    /// closes.
    fn over_budget(&self, e: &OverBudget) -> Refusal {
        Refusal(Some(super::http::error_response(
            503,
            "proxy_overloaded",
            &self.authority(),
            &e.to_string(),
        )))
    }

    /// Upstream could not be reached: not a policy decision, logged as a warning.
    fn unavailable(&self, status: u16, error: &str, why: &str) -> Refusal {
        tracing::warn!(
            layer = "l7",
            host = self.session.host,
            port = self.session.port,
            "{why}"
        );
        Refusal(Some(super::http::error_response(
            status,
            error,
            &self.authority(),
            why,
        )))
    }
}

/// A policy name as a header value: printable ASCII only (names are the policy author's,
/// but a header must never be split by one).
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
