//! The policy resolver: answers the agent's queries on the nameserver addresses, over UDP and
//! TCP, and forwards only what the policy could allow.
//!
//! For a name no endpoint could allow the answer is REFUSED and nothing leaves the pod: a
//! name is data (`<secret>.attacker.example`), and a resolver that forwards every query is an
//! exfiltration channel. A search-list expansion of such a name is answered NXDOMAIN instead,
//! so the agent's stub goes on to the next form of the name ([`ResolvConf::is_expansion`]).
//! For an eligible name, A and AAAA are answered from the hosts file, the cache, or the pod's
//! own nameservers (from the pod's namespace), keeping only addresses the address guard
//! permits for the name's endpoints (a name rebound to 127.0.0.1 or to the metadata service
//! answers without that address); other types get an empty answer. Every address answered is
//! remembered for the sandbox ([`Names`]), which is how a later direct connection to it is
//! matched to its name.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::timeout;

use super::config::ResolvConf;
use super::names::Names;
use super::wire::{self, Address, Query, Rcode, TYPE_A, TYPE_AAAA, WireError};
use crate::log::{self, Denial, Layer, RateLimit};
use crate::policy::Endpoint;
use crate::proxy::budget::Account;
use crate::proxy::caller::Identifier;
use crate::proxy::connection::Shared;
use crate::proxy::{decision, ssrf};

/// Queries answered at once; more wait (UDP: are dropped, and the client retries).
const MAX_INFLIGHT: usize = 512;
/// TCP connections served at once.
const MAX_TCP: usize = 64;
/// A TCP client must send a whole query within this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Time for one upstream nameserver to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers cached at once.
const MAX_CACHED: usize = 8192;
/// TTL of answers from the hosts file.
const HOSTS_TTL: u32 = 60;
/// Upstream sockets kept idle per nameserver.
const IDLE_UPSTREAMS: usize = 64;
/// Queries one upstream socket carries before it is replaced (a new random source port).
const UPSTREAM_USES: u32 = 128;

/// The resolver's state, shared by its UDP and TCP loops.
#[derive(Debug)]
pub struct Resolver {
    /// The proxy's state: the rules, and who connected each socket.
    shared: Arc<Shared>,
    conf: ResolvConf,
    hosts: Vec<(IpAddr, Vec<String>)>,
    names: Arc<Names>,
    cache: Mutex<HashMap<(String, u16), Cached>>,
    inflight: Arc<Semaphore>,
    limiter: RateLimit,
    upstreams: Upstreams,
    asking: Asking,
}

/// A forwarded answer.
type Answer = (Rcode, Vec<Address>);
/// A question: a name and a type.
type Question = (String, u16);

/// Questions being asked upstream, each with the identical questions that arrived meanwhile:
/// those wait for its answer instead of asking again (agents open a burst of connections to
/// one host, each looking it up first; answers with a TTL of 0 cannot be cached).
#[derive(Debug, Default)]
struct Asking {
    waiting: Mutex<HashMap<Question, Vec<oneshot::Sender<Answer>>>>,
}

/// The question this task asks upstream; dropped without an answer (the task ended early),
/// its waiters get SERVFAIL rather than wait forever.
struct Asked<'a> {
    asking: &'a Asking,
    key: Question,
    answer: Option<Answer>,
}

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        let waiters = self
            .asking
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key)
            .unwrap_or_default();
        let answer = self.answer.take().unwrap_or((Rcode::ServFail, Vec::new()));
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

impl Asking {
    /// `Ok`: this task asks (and answers the others through the guard); `Err`: the same
    /// question is being asked, its answer comes through the receiver.
    fn ask(&self, name: &str, qtype: u16) -> Result<Asked<'_>, oneshot::Receiver<Answer>> {
        let key = (name.to_owned(), qtype);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiters) = waiting.get_mut(&key) {
            let (sender, receiver) = oneshot::channel();
            waiters.push(sender);
            return Err(receiver);
        }
        waiting.insert(key.clone(), Vec::new());
        Ok(Asked {
            asking: self,
            key,
            answer: None,
        })
    }
}

/// Connected UDP sockets to the nameservers, kept for the next queries: making, binding,
/// connecting and registering a socket for each query was most of what a forwarded query
/// cost. Each has a random source port and carries at most [`UPSTREAM_USES`] queries, each
/// with a random id; an answer is matched by id, name and type, so a late answer to an
/// earlier query on the same socket is skipped, and a socket whose query failed is closed.
#[derive(Debug, Default)]
struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<(UdpSocket, u32)>>>,
}

impl Upstreams {
    async fn take(&self, server: SocketAddr) -> io::Result<(UdpSocket, u32)> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&server)
            .and_then(Vec::pop);
        if let Some(reused) = reused {
            return Ok(reused);
        }
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        Ok((socket, 0))
    }

    fn give(&self, server: SocketAddr, socket: UdpSocket, uses: u32) {
        if uses >= UPSTREAM_USES {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.entry(server).or_default();
        if kept.len() < IDLE_UPSTREAMS {
            kept.push((socket, uses));
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    rcode: Rcode,
    addresses: Vec<Address>,
    until: Instant,
}

impl Resolver {
    /// A resolver for the rules of `shared`, forwarding to `conf`'s nameservers, answering
    /// `hosts` names from the hosts file; `names` receives what it answers.
    pub fn new(
        shared: Arc<Shared>,
        conf: ResolvConf,
        hosts: Vec<(IpAddr, Vec<String>)>,
        names: Arc<Names>,
    ) -> Resolver {
        // Hosts-file names the policy could allow count as resolved from the start: the
        // agent's C library reads the file itself and connects without asking anyone.
        for (ip, list) in &hosts {
            for name in list {
                let endpoints = decision::eligible(&shared.rules, name);
                if !endpoints.is_empty() && ssrf::permit(*ip, &endpoints).is_ok() {
                    names.remember_static(name, *ip);
                }
            }
        }
        Resolver {
            shared,
            conf,
            hosts,
            names,
            cache: Mutex::new(HashMap::new()),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            limiter: RateLimit::new(50, Duration::from_secs(1)),
            upstreams: Upstreams::default(),
            asking: Asking::default(),
        }
    }

    /// Serves `udp` sockets and `tcp` listeners (bound in the sandbox's namespace) forever.
    pub fn serve(self: Arc<Self>, udp: Vec<UdpSocket>, tcp: Vec<TcpListener>) {
        for socket in udp {
            tokio::spawn(self.clone().udp_loop(Arc::new(socket)));
        }
        let connections = Arc::new(Semaphore::new(MAX_TCP));
        for listener in tcp {
            tokio::spawn(self.clone().tcp_loop(listener, connections.clone()));
        }
    }

    async fn udp_loop(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    if self.limiter.allow() {
                        tracing::warn!(layer = "dns", "receiving a query: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Most answers need no upstream (refusals, the hosts file, the cache): answered
            // here, without a task.
            let query = match wire::parse_query(&buf[..n]) {
                Ok(query) => query,
                Err(WireError::Malformed { id, rcode, .. }) => {
                    let _ = socket.try_send_to(&bare(id, rcode), peer);
                    continue;
                }
                Err(_) => continue,
            };
            if let Some((rcode, addresses)) = self.answer_now(&query, peer) {
                let reply = wire::answer(&query, rcode, &addresses, query.udp_limit);
                if socket.try_send_to(&reply, peer).is_err() {
                    let _ = socket.send_to(&reply, peer).await;
                }
                continue;
            }
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                continue;
            };
            let (resolver, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let (rcode, addresses) = resolver.ask_upstream(&query).await;
                let reply = wire::answer(&query, rcode, &addresses, query.udp_limit);
                let _ = socket.send_to(&reply, peer).await;
            });
        }
    }

    async fn tcp_loop(self: Arc<Self>, listener: TcpListener, connections: Arc<Semaphore>) {
        loop {
            let Ok(permit) = connections.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let resolver = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = resolver.tcp_connection(stream, peer).await;
                resolver
                    .shared
                    .identifier
                    .records
                    .forget(peer, Instant::now());
            });
        }
    }

    /// Serves one TCP client.
    async fn tcp_connection(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        // Made to give way to an older connection over the proxy's memory budget: closed.
        let account = self.shared.budget.open();
        let queries = self.tcp_queries(stream, peer, &account);
        account.until_evicted(queries).await.unwrap_or(Ok(()))
    }

    /// Length-prefixed queries, one after the other, until the client closes or idles.
    async fn tcp_queries(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        account: &Account,
    ) -> io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return Ok(()),
            }
            // A message is held whole (up to 64 KiB, its length announced before it comes):
            // charged to the proxy's memory budget first.
            let length = usize::from(u16::from_be_bytes(len));
            let _charge = account.hold(length).await?;
            let mut message = vec![0u8; length];
            timeout(TCP_IDLE, stream.read_exact(&mut message))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            let Some(reply) = self.reply(&message, peer, Some(u16::MAX as usize)).await else {
                return Ok(());
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
    }

    /// The reply to one message from `peer`, at most `limit` bytes (UDP: the client's).
    async fn reply(
        &self,
        message: &[u8],
        peer: SocketAddr,
        limit: Option<usize>,
    ) -> Option<Vec<u8>> {
        let query = match wire::parse_query(message) {
            Ok(query) => query,
            Err(WireError::Malformed { id, rcode, .. }) => return Some(bare(id, rcode)),
            Err(_) => return None,
        };
        let (rcode, addresses) = self.resolve(&query, peer).await;
        let limit = limit.unwrap_or(query.udp_limit);
        Some(wire::answer(&query, rcode, &addresses, limit))
    }

    /// The answer for `query`, asked by `peer`, when it needs no upstream nameserver.
    fn answer_now(&self, query: &Query, peer: SocketAddr) -> Option<(Rcode, Vec<Address>)> {
        let name = query.name.as_str();
        let endpoints = decision::eligible(&self.shared.rules, name);
        if endpoints.is_empty() {
            if self.conf.is_expansion(name) {
                tracing::debug!(
                    layer = "dns",
                    name,
                    "search-list expansion answered NXDOMAIN"
                );
                return Some((Rcode::NxDomain, Vec::new()));
            }
            self.refused(query, peer);
            return Some((Rcode::Refused, Vec::new()));
        }
        if query.qclass != wire::CLASS_IN || !matches!(query.qtype, TYPE_A | TYPE_AAAA) {
            return Some((Rcode::NoError, Vec::new()));
        }
        if let Some(found) = self.hosts_file(name, query.qtype) {
            return Some((Rcode::NoError, self.permitted(name, found, &endpoints)));
        }
        self.cached(name, query.qtype)
    }

    /// The answer for `query`, asked by `peer`.
    async fn resolve(&self, query: &Query, peer: SocketAddr) -> (Rcode, Vec<Address>) {
        match self.answer_now(query, peer) {
            Some(now) => now,
            None => self.ask_upstream(query).await,
        }
    }

    /// The answer for `query`, an eligible question that [`Resolver::answer_now`] could not
    /// answer: from the pod's nameservers, or from the identical question asked already.
    async fn ask_upstream(&self, query: &Query) -> (Rcode, Vec<Address>) {
        let name = query.name.as_str();
        let mut asked = match self.asking.ask(name, query.qtype) {
            Ok(asked) => asked,
            Err(answer) => return answer.await.unwrap_or((Rcode::ServFail, Vec::new())),
        };
        let endpoints = decision::eligible(&self.shared.rules, name);
        let (rcode, found) = self.forward(name, query.qtype).await;
        let permitted = self.permitted(name, found, &endpoints);
        if rcode != Rcode::ServFail {
            self.cache(name, query.qtype, rcode, &permitted);
        }
        asked.answer = Some((rcode, permitted.clone()));
        (rcode, permitted)
    }

    /// The hosts file's addresses of the asked family, if the file names `name` at all.
    fn hosts_file(&self, name: &str, qtype: u16) -> Option<Vec<Address>> {
        let mut listed = false;
        let mut found = Vec::new();
        for (ip, names) in &self.hosts {
            if names.iter().any(|n| n == name) {
                listed = true;
                if ip.is_ipv4() == (qtype == TYPE_A) {
                    found.push(Address {
                        ip: *ip,
                        ttl: HOSTS_TTL,
                    });
                }
            }
        }
        listed.then_some(found)
    }

    /// Keeps the addresses the guard permits for `endpoints`, remembering them for the
    /// sandbox; the others are logged (a name resolving to loopback, the metadata service or
    /// an unlisted private range is what rebinding attacks look like).
    fn permitted(&self, name: &str, found: Vec<Address>, endpoints: &[&Endpoint]) -> Vec<Address> {
        found
            .into_iter()
            .filter(|a| match ssrf::permit(a.ip, endpoints) {
                Ok(()) => {
                    self.names.remember(name, a.ip, a.ttl);
                    true
                }
                Err(reason) => {
                    if self.limiter.allow() {
                        tracing::warn!(
                            layer = "dns",
                            name,
                            address = %a.ip,
                            "address left out of the answer for {name}: {reason}"
                        );
                    }
                    false
                }
            })
            .collect()
    }

    fn cached(&self, name: &str, qtype: u16) -> Option<(Rcode, Vec<Address>)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache.get(&(name.to_owned(), qtype))?;
        let left = hit.until.checked_duration_since(Instant::now())?;
        let ttl = left.as_secs() as u32;
        Some((
            hit.rcode,
            hit.addresses
                .iter()
                .map(|a| Address { ip: a.ip, ttl })
                .collect(),
        ))
    }

    fn cache(&self, name: &str, qtype: u16, rcode: Rcode, addresses: &[Address]) {
        // Negative answers are cached briefly; positive ones for their smallest TTL.
        let ttl = addresses.iter().map(|a| a.ttl).min().unwrap_or(5);
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            (name.to_owned(), qtype),
            Cached {
                rcode,
                addresses: addresses.to_vec(),
                until: Instant::now() + Duration::from_secs(u64::from(ttl)),
            },
        );
    }

    /// Asks the pod's nameservers in order (UDP, then TCP when truncated).
    async fn forward(&self, name: &str, qtype: u16) -> (Rcode, Vec<Address>) {
        for server in &self.conf.nameservers {
            let server = SocketAddr::new(*server, 53);
            match self.ask(server, name, qtype).await {
                Ok(response) if matches!(response.rcode, Rcode::NoError | Rcode::NxDomain) => {
                    return (response.rcode, response.addresses);
                }
                Ok(response) => tracing::debug!(
                    layer = "dns",
                    %server,
                    name,
                    "nameserver answered {:?}",
                    response.rcode
                ),
                Err(e) => {
                    if self.limiter.allow() {
                        tracing::warn!(layer = "dns", %server, name, "nameserver failed: {e}");
                    }
                }
            }
        }
        (Rcode::ServFail, Vec::new())
    }

    fn refused(&self, query: &Query, peer: SocketAddr) {
        if !self.limiter.allow() {
            return;
        }
        let caller = self.shared.identifier.records.get(peer);
        let process = caller.as_ref().and_then(|c| c.chain.first());
        let exe = process.map_or_else(|| "?".to_owned(), Identifier::exe_of);
        let what = format!("DNS query for {}", query.name);
        log::denied(&Denial {
            layer: Layer::Dns,
            pid: process.map_or(0, |p| p.pid),
            exe: &exe,
            what: &what,
            why: "no network_policies endpoint could allow this name, so it is not resolved \
                  (and never leaves the sandbox)",
            target: Some((query.name.as_str(), 53)),
        });
    }
}

/// A header-only reply with `rcode`, for a query that could not be read.
fn bare(id: u16, rcode: Rcode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out[2..4].copy_from_slice(&(0x8080u16 | rcode as u16).to_be_bytes());
    out
}

impl Resolver {
    /// One question to one nameserver, from the pod's namespace.
    async fn ask(&self, server: SocketAddr, name: &str, qtype: u16) -> io::Result<wire::Response> {
        let id = random_id();
        let message = wire::query(id, name, qtype);
        let (socket, uses) = self.upstreams.take(server).await?;
        let response = timeout(UPSTREAM_TIMEOUT, async {
            socket.send(&message).await?;
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).await?;
                // A stray datagram is not the answer; keep waiting for ours.
                if let Ok(response) = wire::parse_response(&buf[..n], id, name, qtype) {
                    return Ok::<_, io::Error>(response);
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
        self.upstreams.give(server, socket, uses + 1);
        if !response.truncated {
            return Ok(response);
        }
        ask_tcp(server, &message, id, name, qtype).await
    }
}

/// A question again over TCP (its UDP answer was truncated).
async fn ask_tcp(
    server: SocketAddr,
    message: &[u8],
    id: u16,
    name: &str,
    qtype: u16,
) -> io::Result<wire::Response> {
    let mut stream = timeout(UPSTREAM_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TCP connection"))??;
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    timeout(UPSTREAM_TIMEOUT, async {
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await?;
        wire::parse_response(&reply, id, name, qtype).map_err(io::Error::other)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TCP answer"))?
}

/// A query id an off-path attacker cannot guess (with the random source port).
fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into the array.
    unsafe { libc::getrandom(id.as_mut_ptr().cast(), 2, 0) };
    u16::from_ne_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_questions_in_flight_share_one_answer() {
        let asking = Asking::default();
        let mut first = asking.ask("api.example.com", TYPE_A).expect("asks");
        let Err(mut second) = asking.ask("api.example.com", TYPE_A) else {
            panic!("the same question is asked once");
        };
        let Ok(other) = asking.ask("api.example.com", TYPE_AAAA) else {
            panic!("another type is another question");
        };
        let answer = vec![Address {
            ip: "203.0.113.2".parse().unwrap(),
            ttl: 0,
        }];
        first.answer = Some((Rcode::NoError, answer.clone()));
        drop(first);
        assert_eq!(second.try_recv().unwrap(), (Rcode::NoError, answer));
        // Asked again once answered.
        assert!(asking.ask("api.example.com", TYPE_A).is_ok());
        // A task that ends without an answer does not leave its waiters waiting.
        let Err(mut waiter) = asking.ask("api.example.com", TYPE_AAAA) else {
            panic!("in flight");
        };
        drop(other);
        assert_eq!(waiter.try_recv().unwrap(), (Rcode::ServFail, Vec::new()));
    }
}
