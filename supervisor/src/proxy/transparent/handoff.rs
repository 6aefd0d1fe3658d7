//! Direct connections to inspected endpoints: handed to the L7 engine instead of dialled; and,
//! on a relaying path (no TCP fence), every other allowed direct connection, relayed to the
//! address the agent chose ([`Route::Relay`]).
//!
//! A connection handed out directly carries whatever the agent sends, so an endpoint with L7
//! rules is never reached that way. The agent's `connect()` instead connects its own socket
//! to the hand-off listener, a loopback listener of the sandbox's namespace, after noting
//! under the socket's address where it was going and on whose behalf:
//!
//! ```text
//! agent: connect(fd, 203.0.113.2:443)  ─► seccomp notification ─► transparent::remote():
//!   decide every name this sandbox resolved to the address: some allowed one is inspected
//!   pending[127.0.0.1:P] = { 203.0.113.2:443, allowed names, the caller's chain }
//!   the agent's socket: bound to 127.0.0.1:P, connected to 127.0.0.1:L (the hand-off listener)
//! hand-off listener (proxy runtime): accept, peer 127.0.0.1:P ─► pending entry (removed)
//!   the name: the only allowed one, or the one the client's TLS server name / Host gives
//!   decide again for that name ─► l7::serve_tunnel (TLS terminated with the sandbox's CA,
//!   each request decided, credited to the caller) ─► upstream dialled by name, as CONNECT
//! ```
//!
//! What makes the entry trustworthy: the destination is the one the supervisor read from the
//! call and the chain is the thread in the call, never anything the agent sends. Only the
//! supervisor connects to the listener (the agent's own `connect()` to it is refused by the
//! transparent path, and the TCP fence refuses any TCP connect made in the agent's context),
//! an entry is made only for a local address no other entry holds, and the kernel keeps at
//! most one connection per address pair: so the connection accepted from an address is the
//! agent socket registered under it. Without the fence (a relaying path) a process can slip a
//! connect of its own past the supervisor, so there the connection claiming an entry must
//! also come from the very socket registered (its inode, asked of `sock_diag`): no other
//! socket or process can claim an entry, fence or no fence. Entries are removed when claimed
//! or when the connect fails; the table is bounded (stale entries, whose connection never
//! arrived, go first when it is full).
//!
//! The caller's binaries are pinned at `connect()`, as for a connection dialled directly, and
//! the engine dials upstream by name with the address guard, as for a CONNECT.
//!
//! Which name: when the agent connected to an address, the names it may have meant are those
//! this sandbox resolved to that address (or the address itself, for an IP endpoint), as far
//! as the policy allows them to this caller on this port. With one, the connection is that
//! name's, and the engine refuses a different TLS server name or `Host` as on the CONNECT
//! path. With several (a CDN address), the client's own TLS server name or `Host` header picks
//! one, which must be among them; an allowed name without L7 rules then gets a plain tunnel,
//! so a client of an L4 endpoint sharing an address with an inspected one still works, and
//! none can reach the inspected name around its rules. A connection that names no server
//! when several are possible is refused (the server's default site could be any of them).
//!
//! Limits: the agent's `getpeername()` on such a connection shows the hand-off listener, not
//! the server; a protocol in which the server speaks first stalls when several names share
//! the address (the name is read from the client's first bytes).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::log::{self, Denial, Layer};
use crate::policy::{Endpoint, L7Endpoint, canonical_ip, normalize_host};
use crate::proxy::caller::CallerError;
use crate::proxy::connection::Shared;
use crate::proxy::decision::{self, Decision, Process, Via};
use crate::proxy::dial::{self, DialFailure};
use crate::proxy::{http, l7, relay};

/// Most connections on their way to the listener at once (as many as its backlog holds).
const MAX_PENDING: usize = 4096;
/// When the table is full, entries older than this go: their connection never arrived.
const STALE: Duration = Duration::from_secs(60);
/// Most bytes read to find the name a connection gives (a TLS ClientHello, an HTTP head).
const MAX_NAMING: usize = 64 * 1024;

/// What serves a handed-off connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The L7 engine (or a plain tunnel, for an allowed name without rules sharing the
    /// address): the connection goes to the name it gives.
    Inspect,
    /// The relay of a path without the TCP fence: a tunnel to the very address the agent
    /// connected to, which the policy allowed at `connect()` (and the allowed line logged).
    Relay,
}

/// A direct connection on its way to the L7 engine or the relay.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Where the agent connected.
    pub to: SocketAddr,
    /// The names (or the address itself) the policy allows this caller to reach there; the
    /// connection is one of them.
    pub hosts: Vec<String>,
    /// The caller (the thread in the `connect()` call) and the ancestors credited with it.
    pub chain: Vec<Process>,
    /// Without the TCP fence, the inode of the agent's socket: only a connection from that
    /// very socket claims the entry.
    socket: Option<u64>,
    route: Route,
    at: Instant,
}

impl Pending {
    /// An entry made now for the agent's socket, whose inode `socket` is to be checked.
    pub fn new(
        to: SocketAddr,
        hosts: Vec<String>,
        chain: Vec<Process>,
        socket: Option<u64>,
        route: Route,
    ) -> Pending {
        Pending {
            to,
            hosts,
            chain,
            socket,
            route,
            at: Instant::now(),
        }
    }
}

/// The hand-off listener's addresses and the connections on their way to it.
#[derive(Debug)]
pub struct Handoff {
    /// IPv4 first, then IPv6 when the sandbox has `::1`.
    listeners: Vec<SocketAddr>,
    pending: Mutex<HashMap<SocketAddr, Pending>>,
}

/// Binds the hand-off listener on the loopback of the calling thread's namespace (the
/// sandbox's), on a port the kernel picks: `127.0.0.1`, and `::1` when there is one.
pub fn bind() -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = vec![std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?];
    if let Ok(v6) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        listeners.push(v6);
    }
    for listener in &listeners {
        listener.set_nonblocking(true)?;
        // Listening already: this only raises the backlog. Raw, not nix's `listen`: its
        // `Backlog` refuses anything over libc's SOMAXCONN, which is 128 in the musl build (the
        // one shipped) although the kernel takes 4096 and clamps the rest.
        // SAFETY: listen on a bound socket we own, with scalar arguments.
        unsafe {
            libc::listen(
                std::os::fd::AsRawFd::as_raw_fd(listener),
                MAX_PENDING as i32,
            )
        };
    }
    Ok(listeners)
}

fn key(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(address.ip()), address.port())
}

impl Handoff {
    /// The table for the listeners `bind` made.
    pub fn new(listeners: &[std::net::TcpListener]) -> io::Result<Handoff> {
        Ok(Handoff {
            listeners: listeners
                .iter()
                .map(std::net::TcpListener::local_addr)
                .collect::<io::Result<_>>()?,
            pending: Mutex::default(),
        })
    }

    /// The listener a socket of `domain` connects to: `::1` for IPv6 when there is one
    /// (an IPv6-only socket cannot reach a v4-mapped address), else `127.0.0.1`.
    pub fn listener_for(&self, domain: i32) -> SocketAddr {
        match (domain, self.listeners.get(1)) {
            (libc::AF_INET6, Some(v6)) => *v6,
            _ => self.listeners[0],
        }
    }

    /// Whether a connection to `to` (a local address of the sandbox) would reach the
    /// listener: the agent's own connections there are refused, so that every connection
    /// the listener accepts is one the supervisor made.
    pub fn is_listener(&self, to: SocketAddr) -> bool {
        let ip = canonical_ip(to.ip());
        self.listeners
            .iter()
            .any(|l| l.port() == to.port() && (ip == canonical_ip(l.ip()) || ip.is_unspecified()))
    }

    /// Notes that the socket bound to `local` is on its way to the listener. Refused
    /// (EADDRNOTAVAIL, what the kernel would answer) when another socket of that address is
    /// on its way already, and (ENOBUFS) when the table is full of live entries.
    pub fn register(&self, local: SocketAddr, pending: Pending) -> Result<(), Errno> {
        let mut table = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if table.contains_key(&key(local)) {
            return Err(Errno::EADDRNOTAVAIL);
        }
        if table.len() >= MAX_PENDING {
            table.retain(|_, p| p.at.elapsed() < STALE);
            if table.len() >= MAX_PENDING {
                return Err(Errno::ENOBUFS);
            }
        }
        table.insert(key(local), pending);
        Ok(())
    }

    /// Forgets the entry of `local` (its connect failed).
    pub fn cancel(&self, local: SocketAddr) {
        let mut table = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&key(local));
    }

    /// Takes the entry of the connection accepted from `peer`.
    fn claim(&self, peer: SocketAddr) -> Option<Pending> {
        let mut table = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&key(peer))
    }
}

/// Serves one connection accepted by the hand-off listener: its entry says where it goes and
/// for whom; the L7 engine serves it (or a plain tunnel, for an allowed name without rules).
pub async fn serve(
    shared: Arc<Shared>,
    handoff: Arc<Handoff>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let Some(pending) = handoff.claim(peer) else {
        // An entry removed already belongs to a connect that failed (and was answered so)
        // while the kernel still completed it; without the fence, it may also be a connect
        // slipped past the supervisor.
        tracing::debug!(layer = "transparent", %peer, "hand-off connection with no entry");
        return;
    };
    if let Some(socket) = pending.socket
        && let Err(why) = same_socket(&shared, socket, &client, peer)
    {
        return refuse(&shared, &pending, None, &why);
    }
    let _ = client.set_nodelay(true);
    let mut early = Vec::new();
    let host = match pending.hosts.as_slice() {
        // The engine checks the TLS server name and Host against it, as for CONNECT.
        [only] => only.clone(),
        hosts => {
            let limit = shared.settings.header_timeout;
            let named = match timeout(limit, named(&client, &mut early)).await {
                Ok(Ok(named)) => named,
                Ok(Err(why)) => return refuse(&shared, &pending, None, &why),
                Err(_) => {
                    let why = format!("no TLS ClientHello or HTTP request head within {limit:?}");
                    return refuse(&shared, &pending, None, &why);
                }
            };
            match choose(hosts, named.as_deref()) {
                Ok(host) => host,
                Err(why) => return refuse(&shared, &pending, named.as_deref(), &why),
            }
        }
    };
    let port = pending.to.port();
    let owners = [pending.chain.clone()];
    let (rule, endpoints) =
        match decision::decide(&shared.rules, &host, port, &owners, Via::Transparent) {
            Decision::Allow {
                rule, endpoints, ..
            } => (rule, endpoints),
            Decision::Deny(why) => return refuse(&shared, &pending, Some(&host), &why),
        };
    let caller = pending.chain.first().cloned();
    let inspected: Vec<&L7Endpoint> = endpoints.iter().filter_map(|e| e.l7.as_ref()).collect();
    let engine = shared.l7.clone();
    match (inspected.is_empty(), engine) {
        (false, Some(engine)) => {
            let session = l7::Session {
                host,
                port,
                caller,
                policy: &rule.name,
                l7: inspected,
                endpoints,
                account: shared.budget.open(),
            };
            tracing::debug!(
                layer = "transparent",
                host = session.host,
                port,
                rule = %rule.name,
                "direct connection to {} handed to L7 inspection",
                pending.to
            );
            // Over the memory budget, the newest connections give way (budget.rs), these too.
            let served = l7::serve_tunnel(&shared, &engine, &session, &mut client, early);
            if session.account.until_evicted(served).await.is_none() {
                tracing::debug!(layer = "transparent", %peer, "closed for the memory budget");
            }
        }
        (false, None) => refuse(
            &shared,
            &pending,
            Some(&host),
            "L7 inspection is unavailable",
        ),
        (true, _) => {
            let target = Target {
                host: &host,
                port,
                rule: &rule.name,
                caller: caller.as_ref(),
            };
            tunnel(&shared, &pending, client, &target, &endpoints, &early).await;
        }
    }
}

/// Whether the connection accepted from `peer` comes from the agent's socket whose inode is
/// `socket`. Without the TCP fence (a relaying path) a process of the sandbox can slip a
/// TCP connect of its own past the supervisor (in the instant between the check and the
/// kernel's second read of a let-through unix `connect()`), from an address that it shares
/// with the registered socket (`SO_REUSEADDR`, `SO_REUSEPORT`) or that the registered socket
/// just gave up: the address alone would then hand it another caller's destination and
/// credit. The socket's inode cannot be shared.
fn same_socket(
    shared: &Shared,
    socket: u64,
    client: &TcpStream,
    peer: SocketAddr,
) -> Result<(), String> {
    let listener = client.local_addr().map_err(|e| e.to_string())?;
    match shared.identifier.comes_from(peer, listener, socket) {
        Ok(()) => Ok(()),
        Err(CallerError::Impostor) => Err(format!(
            "the connection to the hand-off listener came from {peer} but not from the socket \
             the supervisor connected there (another socket took over its address)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The name the client's first bytes give: the server name of a TLS ClientHello, or the host
/// of an HTTP request's `Host`; `None` when they give none. Whatever was read stays in
/// `early`, for the engine.
async fn named(client: &TcpStream, early: &mut Vec<u8>) -> Result<Option<String>, String> {
    if read_more(client, early).await? == 0 {
        return Err("closed before sending anything".into());
    }
    match early[0] {
        // A TLS handshake record.
        0x16 => {
            let mut acceptor = rustls::server::Acceptor::default();
            let mut fed = 0;
            loop {
                while fed < early.len() {
                    match acceptor.read_tls(&mut &early[fed..]) {
                        Ok(0) => break,
                        Ok(n) => fed += n,
                        Err(e) => return Err(format!("malformed TLS ClientHello: {e}")),
                    }
                }
                match acceptor.accept() {
                    Ok(Some(hello)) => {
                        return Ok(hello.client_hello().server_name().map(str::to_owned));
                    }
                    Ok(None) => {}
                    Err((e, _)) => return Err(format!("malformed TLS ClientHello: {e}")),
                }
                more(client, early).await?;
            }
        }
        b if b.is_ascii_alphabetic() => loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(early) {
                Ok(httparse::Status::Complete(_)) => {
                    let host = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("host"))
                        .and_then(|h| std::str::from_utf8(h.value).ok());
                    return Ok(host
                        .and_then(|h| http::authority(h.trim(), Some(80)).ok())
                        .map(|(name, _)| name));
                }
                Ok(httparse::Status::Partial) => more(client, early).await?,
                Err(e) => return Err(format!("malformed HTTP request head: {e}")),
            }
        },
        _ => Ok(None),
    }
}

/// Reads more of what names the connection, within [`MAX_NAMING`].
async fn more(client: &TcpStream, early: &mut Vec<u8>) -> Result<(), String> {
    if early.len() >= MAX_NAMING {
        return Err(format!("no server name within {MAX_NAMING} bytes"));
    }
    match read_more(client, early).await? {
        0 => Err("closed before naming a server".into()),
        _ => Ok(()),
    }
}

async fn read_more(client: &TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    buf.reserve(16 * 1024);
    loop {
        client.readable().await.map_err(|e| e.to_string())?;
        match client.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Which of `hosts` (the names allowed at the address) a connection naming `named` is for.
fn choose(hosts: &[String], named: Option<&str>) -> Result<String, String> {
    let list = hosts.join(", ");
    match named {
        Some(name) => hosts
            .iter()
            .find(|h| normalize_host(h) == normalize_host(name))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "the connection names {name:?}, which is not among the names this sandbox \
                     resolved to the address that the policy allows here ({list})"
                )
            }),
        None => match hosts {
            [only] => Ok(only.clone()),
            _ => Err(format!(
                "the connection names no server (no TLS server name or Host), and several \
                 allowed names share the address ({list})"
            )),
        },
    }
}

/// A connection refused after its hand-off (it is closed): logged with who, where (the name
/// the connection asked for, when it named one), why.
fn refuse(shared: &Shared, pending: &Pending, named: Option<&str>, why: &str) {
    if !shared.limiter.allow() {
        return;
    }
    let process = pending.chain.first();
    let what = format!(
        "connection to {} (names allowed there: {})",
        pending.to,
        pending.hosts.join(", ")
    );
    let host = named.map_or_else(|| pending.to.ip().to_string(), str::to_owned);
    log::denied(&Denial {
        layer: Layer::Network,
        pid: process.map_or(0, |p| p.pid),
        exe: process.map_or("?", |p| p.exe.as_str()),
        what: &what,
        why,
        target: Some((&host, pending.to.port())),
    });
}

/// An allowed name without L7 rules: relayed, or reached through an address it shares with an
/// inspected one.
struct Target<'a> {
    host: &'a str,
    port: u16,
    rule: &'a str,
    caller: Option<&'a Process>,
}

/// A plain tunnel to `target` (dialled by name, or relayed to the address the agent connected
/// to, the addresses checked, as for CONNECT), with the bytes read to name it sent first.
async fn tunnel(
    shared: &Shared,
    pending: &Pending,
    client: TcpStream,
    target: &Target<'_>,
    endpoints: &[&Endpoint],
    early: &[u8],
) {
    let (host, port) = (target.host, target.port);
    let timeout = shared.settings.connect_timeout;
    // Relayed, the address the agent connected to (the one the policy resolver gave it,
    // allowed at connect(); a v4-mapped one as IPv4); inspected, the name the connection gives.
    let address = canonical_ip(pending.to.ip()).to_string();
    let dialled = match pending.route {
        Route::Relay => address.as_str(),
        Route::Inspect => host,
    };
    let upstream = match dial::dial(timeout, dialled, port, endpoints).await {
        Ok(upstream) => upstream,
        Err(failure) => {
            // Relayed, the agent's connect() succeeded already: a reset, not a clean end,
            // says the server was never reached.
            if pending.route == Route::Relay {
                let _ = client.set_zero_linger();
            }
            return match failure {
                DialFailure::Refused(why) => refuse(shared, pending, Some(target.host), &why),
                DialFailure::Unreachable(why) => {
                    tracing::warn!(layer = "transparent", host, port, "{why}");
                }
                DialFailure::Overloaded(e) => {
                    tracing::error!(layer = "transparent", "cannot dial {host}: {e}");
                }
            };
        }
    };
    if pending.route == Route::Inspect {
        super::log_allowed(target.caller, host, pending.to, target.rule);
    }
    carry(shared, client, upstream, early).await;
}

/// Carries bytes between `client` and `upstream` until either ends, `early` (what was read
/// from the client already) sent first.
async fn carry(shared: &Shared, mut client: TcpStream, mut upstream: TcpStream, early: &[u8]) {
    let pipes = match (shared.pipes.take(), shared.pipes.take()) {
        (Ok(up), Ok(down)) => [up, down],
        (Err(e), _) | (_, Err(e)) => {
            return tracing::error!(layer = "transparent", "cannot relay a connection: {e}");
        }
    };
    if upstream.write_all(early).await.is_ok() {
        let idle = shared.settings.idle_timeout;
        let _ = relay::tunnel(&client, &upstream, &pipes, idle).await;
    }
    let _ = client.shutdown().await;
    for pipe in pipes {
        shared.pipes.give(pipe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff {
            listeners: vec![
                "127.0.0.1:40000".parse().unwrap(),
                "[::1]:40001".parse().unwrap(),
            ],
            pending: Mutex::default(),
        }
    }

    fn entry() -> Pending {
        Pending::new(
            "203.0.113.2:443".parse().unwrap(),
            vec!["api.example.com".into()],
            Vec::new(),
            None,
            Route::Inspect,
        )
    }

    #[test]
    fn an_address_holds_one_entry_claimed_once() {
        let h = handoff();
        let local: SocketAddr = "[::ffff:127.0.0.1]:50000".parse().unwrap();
        h.register(local, entry()).unwrap();
        // A second socket bound to the same address (SO_REUSEADDR) cannot take it over.
        assert_eq!(h.register(local, entry()), Err(Errno::EADDRNOTAVAIL));
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert_eq!(h.claim(peer).unwrap().hosts, ["api.example.com"]);
        assert!(h.claim(peer).is_none());
        h.register(local, entry()).unwrap();
        h.cancel(peer);
        assert!(h.claim(peer).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_stale_entries_go_first() {
        let h = handoff();
        for port in 0..MAX_PENDING as u16 {
            let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port + 1);
            h.register(local, entry()).unwrap();
        }
        let next: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(h.register(next, entry()), Err(Errno::ENOBUFS));
        let stale = Instant::now().checked_sub(STALE * 2).unwrap();
        h.pending
            .lock()
            .unwrap()
            .values_mut()
            .take(10)
            .for_each(|p| p.at = stale);
        h.register(next, entry()).unwrap();
        assert_eq!(h.pending.lock().unwrap().len(), MAX_PENDING - 9);
    }

    #[test]
    fn the_listener_is_recognised_however_it_is_written() {
        let h = handoff();
        for to in [
            "127.0.0.1:40000",
            "[::ffff:127.0.0.1]:40000",
            "0.0.0.0:40000",
            "[::1]:40001",
            "[::]:40001",
        ] {
            assert!(h.is_listener(to.parse().unwrap()), "{to}");
        }
        for to in [
            "127.0.0.1:40001",
            "127.0.0.2:40000",
            "[::1]:40000",
            "127.0.0.1:3128",
        ] {
            assert!(!h.is_listener(to.parse().unwrap()), "{to}");
        }
        assert_eq!(h.listener_for(libc::AF_INET).port(), 40000);
        assert_eq!(h.listener_for(libc::AF_INET6).port(), 40001);
    }

    #[test]
    fn the_name_is_the_only_one_or_the_one_given() {
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let one = hosts(&["api.example.com"]);
        let cdn = hosts(&["api.example.com", "www.example.com", "203.0.113.2"]);
        let table: &[(&[String], Option<&str>, Option<&str>)] = &[
            (&one, None, Some("api.example.com")),
            (&one, Some("API.example.com."), Some("api.example.com")),
            (&one, Some("other.example.com"), None),
            (&cdn, Some("www.example.com"), Some("www.example.com")),
            (&cdn, Some("203.0.113.2"), Some("203.0.113.2")),
            (&cdn, Some("evil.example.com"), None),
            (&cdn, None, None),
        ];
        for (hosts, named, expected) in table {
            let got = choose(hosts, *named).ok();
            assert_eq!(got.as_deref(), *expected, "{hosts:?} named {named:?}");
        }
    }
}
