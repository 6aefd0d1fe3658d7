//! Transparent egress: the agent's own `connect()` calls meet the policy, and allowed ones get
//! a real connection to the server, made from the pod's namespace.
//!
//! ```text
//! agent: getaddrinfo ─► policy resolver (dns/) on the nameserver address, made local
//!          └ eligible names only; answers remembered per sandbox (address → names)
//! agent: connect(fd, 203.0.113.2:443)  ─► seccomp user notification ─► supervisor:
//!   destination from the call, socket from pidfd_getfd, caller = the thread in the call
//!   names this sandbox resolved to the address (or the address itself, for IP endpoints)
//!   decide(Via::Transparent): endpoint × port × binary (exe now + credited lineage), pins
//!   address guard → dial from the pod's namespace, the agent's socket options copied
//!   SECCOMP_IOCTL_NOTIF_ADDFD: the connection replaces fd, connect() returns 0/EINPROGRESS
//! ```
//!
//! From then on the agent talks to the server directly: no relay, no copy (where the kernel
//! has the TCP fence; see "Relayed" below). A denial answers
//! ECONNREFUSED at once and is logged with pid, exe, destination, the names tried and why.
//! A connection to an inspected (L7) endpoint is not dialled: the agent's socket is connected
//! to the L7 engine instead, which decides each request as on the CONNECT path ([`handoff`]).
//! Connections to the sandbox's own addresses (loopback, the resolver, the proxy) are made by
//! the supervisor on the agent's socket itself; those to the proxy and the resolver are
//! recorded with their caller (caller/record.rs), which is whom the proxy then credits.
//!
//! Handed-out sockets belong to the pod's namespace, so the agent must be able to do nothing
//! with one but talk to its server: `listen()` and `bind()` on one are refused (both are made
//! by the supervisor, after looking at the socket), a second `connect()` gets what the kernel
//! would say of a connected socket, interface ioctls are refused by the filter, and the TCP
//! fence ([`fence`]) stops the races a let-through call would allow. `getsockname()` shows the
//! pod's address (any server the agent reaches can tell it that, too); `SO_BINDTODEVICE` can
//! only move the flow to another interface of the pod, towards the same server.
//!
//! Relayed ([`Mode::Relay`], for kernels without the fence): no socket of the pod is handed
//! out. An allowed connection goes the way of an inspected one, to the hand-off listener, and
//! the relay there dials the address the agent chose: the same decision, pins and address guard,
//! the bytes through the supervisor. Without the fence a process can slip a TCP connect of its
//! own past the supervisor, so the hand-off listener and the proxy take a connection only from
//! the very socket registered or recorded at `connect()` (its inode), not from its address.
//!
//! Limits: an agent socket bound before `connect()` loses its binding (the connection is a
//! new socket); an epoll registration made before `connect()` stays with the old socket (no
//! event loop we know does that, except Netty's native transport); options set after
//! `connect()` land on the real connection as usual; `SO_ATTACH_FILTER` programs are not
//! copied. UDP leaves only as DNS to the resolver.

pub mod fence;
pub mod handoff;
pub mod probe;
pub mod socket;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;

use super::caller::{PinError, pinning};
use super::connection::Shared;
use super::decision::{self, Decision, Process, Via};
use super::dns::config::{ResolvConf, parse_hosts};
use super::dns::names::Names;
use super::dns::{self, Resolver};
use super::{listener, ssrf};
use crate::log::{self, Denial, Layer, RateLimit};
use crate::policy::canonical_ip;
use crate::seccomp::{Notice, sockaddr, wait};
use handoff::{Handoff, Pending};
use nix::sys::socket::SockaddrStorage;
pub use probe::Mode;
use socket::{Kind, State};

/// What the transparent path reads before the sandbox's namespace exists: the pod's resolver
/// configuration and hosts file; whether the policy has inspected endpoints; and how it runs.
#[derive(Debug, Clone)]
pub struct Plan {
    resolv: ResolvConf,
    hosts: Vec<(IpAddr, Vec<String>)>,
    inspect: bool,
    mode: Mode,
}

impl Plan {
    /// Reads `/etc/resolv.conf` and `/etc/hosts` (either may be missing), for a path that
    /// runs in `mode`.
    pub fn read(mode: Mode) -> Plan {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        Plan {
            resolv: ResolvConf::parse(&read("/etc/resolv.conf")),
            hosts: parse_hosts(&read("/etc/hosts")),
            inspect: false,
            mode,
        }
    }

    /// How the path runs.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// With `inspect` (the policy has L7 endpoints), direct connections to inspected
    /// endpoints are handed to the L7 engine, through a listener bound with the others.
    pub fn inspecting(mut self, inspect: bool) -> Plan {
        self.inspect = inspect;
        self
    }
}

/// The transparent path's sockets, made inside the sandbox's namespace.
#[derive(Debug)]
pub struct Bound {
    plan: Plan,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    handoff: Vec<std::net::TcpListener>,
    netns: u64,
}

impl Bound {
    /// How the path runs.
    pub fn mode(&self) -> Mode {
        self.plan.mode
    }
}

/// In the sandbox's namespace (on the thread that made it): makes the nameserver addresses
/// local and binds the resolver on each, UDP and TCP, port 53; and the hand-off listener
/// when the policy has inspected endpoints or the path relays.
pub fn bind(plan: Plan) -> io::Result<Bound> {
    dns::local::add_to_loopback(&dns::local::to_add(&plan.resolv.nameservers))?;
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for server in &plan.resolv.nameservers {
        let address = SocketAddr::new(*server, 53);
        let socket = std::net::UdpSocket::bind(address)?;
        socket.set_nonblocking(true)?;
        udp.push(socket);
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        tcp.push(listener);
    }
    let handoff = match plan.inspect || plan.mode == Mode::Relay {
        true => handoff::bind()?,
        false => Vec::new(),
    };
    Ok(Bound {
        plan,
        udp,
        tcp,
        handoff,
        netns: socket::current_netns()?,
    })
}

/// The network calls the transparent path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `connect(fd, addr, len)`.
    Connect,
    /// `bind(fd, addr, len)`.
    Bind,
    /// `listen(fd, backlog)`.
    Listen,
    /// `sendto(fd, buf, len, flags, addr, len)` with an address.
    SendTo,
}

impl Call {
    /// The call for an x86_64 system call number.
    pub fn of(nr: libc::c_long) -> Option<Call> {
        match nr {
            libc::SYS_connect => Some(Call::Connect),
            libc::SYS_bind => Some(Call::Bind),
            libc::SYS_listen => Some(Call::Listen),
            libc::SYS_sendto => Some(Call::SendTo),
            _ => None,
        }
    }
}

/// The transparent path of one sandbox.
#[derive(Debug)]
pub struct Transparent {
    shared: Arc<Shared>,
    names: Arc<Names>,
    /// The sandbox's network namespace (sockets elsewhere were handed out by us).
    netns: u64,
    /// Addresses local to the sandbox besides loopback: the nameservers.
    local: Vec<IpAddr>,
    limiter: RateLimit,
    /// The options of a new TCP socket, IPv4 and IPv6 (read once: see [`socket::Defaults`]).
    defaults: [std::sync::OnceLock<socket::Defaults>; 2],
    /// Where connections to inspected endpoints go, when the policy has any, and every
    /// allowed connection when the path relays.
    handoff: Option<Arc<Handoff>>,
    /// Whether the policy has inspected endpoints.
    inspect: bool,
    mode: Mode,
    /// The callers' pidfds, kept (in the serving threads' descriptor table, the only one
    /// this handler runs in).
    threads: socket::Threads,
}

/// Starts the policy resolver on the current runtime and returns the path's handler.
pub fn start(bound: Bound, shared: Arc<Shared>) -> io::Result<Arc<Transparent>> {
    let names = Arc::new(Names::default());
    let udp = bound
        .udp
        .into_iter()
        .map(tokio::net::UdpSocket::from_std)
        .collect::<io::Result<Vec<_>>>()?;
    let tcp = bound
        .tcp
        .into_iter()
        .map(tokio::net::TcpListener::from_std)
        .collect::<io::Result<Vec<_>>>()?;
    let local: Vec<IpAddr> = bound
        .plan
        .resolv
        .nameservers
        .iter()
        .map(|ip| canonical_ip(*ip))
        .collect();
    let resolver = Resolver::new(
        shared.clone(),
        bound.plan.resolv,
        bound.plan.hosts,
        names.clone(),
    );
    Arc::new(resolver).serve(udp, tcp);
    let handoff = match bound.handoff.is_empty() {
        true => None,
        false => {
            let handoff = Arc::new(Handoff::new(&bound.handoff)?);
            let listeners = bound
                .handoff
                .into_iter()
                .map(tokio::net::TcpListener::from_std)
                .collect::<io::Result<Vec<_>>>()?;
            let serving = handoff.clone();
            tokio::spawn(listener::accept_loop(
                listeners,
                shared.clone(),
                move |shared, client, peer| handoff::serve(shared, serving.clone(), client, peer),
            ));
            Some(handoff)
        }
    };
    Ok(Arc::new(Transparent {
        shared,
        names,
        netns: bound.netns,
        local,
        limiter: RateLimit::new(50, Duration::from_secs(1)),
        defaults: Default::default(),
        handoff,
        inspect: bound.plan.inspect,
        mode: bound.plan.mode,
        threads: socket::Threads::default(),
    }))
}

/// Where a call's address points.
enum Target {
    /// IPv4 or IPv6.
    Inet(SocketAddr),
    /// `AF_UNSPEC` (for `connect`, a disconnect).
    Unspec,
    /// Any other family (unix, netlink...).
    Other,
}

/// The caller: the thread in the call, its process (known once its socket is taken, the
/// thread until then), and the socket fd it named.
#[derive(Debug, Clone, Copy)]
struct Caller {
    tid: u32,
    tgid: u32,
    /// Its process's parent, when the kernel says (known with the process).
    ppid: Option<u32>,
    fd: i32,
}

impl Caller {
    /// The caller's process and its executable, for a log line.
    fn who(self) -> (u32, String) {
        (self.tgid, log::exe_of(self.tid))
    }
}

impl Transparent {
    /// Answers `notice`, a `call` of the agent (now, or later from the waiter's threads).
    pub fn handle(self: &Arc<Self>, call: Call, notice: Notice) {
        let caller = Caller {
            tid: notice.call.pid,
            tgid: notice.call.pid,
            ppid: None,
            fd: notice.call.args[0] as i32,
        };
        match call {
            Call::Connect => self.connect(notice, caller),
            Call::Bind => self.bind(notice, caller),
            Call::Listen => self.listen(notice, caller),
            Call::SendTo => self.sendto(notice, caller),
        }
    }

    /// The address argument `index` (with its length after it) of the call.
    fn target(notice: &Notice, index: usize) -> Result<(Target, Vec<u8>), i32> {
        let (address, len) = (
            notice.call.args[index],
            notice.call.args[index + 1] as usize,
        );
        if len < 2 {
            return Err(libc::EINVAL);
        }
        let raw = notice.read(address, len.min(128)).ok_or(libc::EFAULT)?;
        let family = i32::from(u16::from_ne_bytes([raw[0], raw[1]]));
        let target = match family {
            libc::AF_INET | libc::AF_INET6 => Target::Inet(sockaddr(&raw).ok_or(libc::EINVAL)?),
            libc::AF_UNSPEC => Target::Unspec,
            _ => Target::Other,
        };
        Ok((target, raw))
    }

    /// The caller's socket and what it is (and the caller's process, in `caller`); the
    /// errno to answer when there is none.
    fn socket(&self, caller: &mut Caller) -> Result<(OwnedFd, Kind), i32> {
        let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EBADF);
        let (thread, fd) = self.threads.take(caller.tid, caller.fd).map_err(errno)?;
        caller.tgid = thread.tgid;
        caller.ppid = thread.ppid;
        let kind = Kind::of(fd.as_fd()).map_err(errno)?;
        Ok((fd, kind))
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_loopback() || ip.is_unspecified() || self.local.contains(&ip)
    }

    /// The proxy's listeners and the resolver: local services whose callers are recorded.
    fn is_recorded_service(&self, to: SocketAddr) -> bool {
        let ip = canonical_ip(to.ip());
        (to.port() == super::PORT && ip.is_loopback())
            || (to.port() == 53 && (self.local.contains(&ip) || ip.is_loopback()))
    }

    fn connect(self: &Arc<Self>, notice: Notice, mut caller: Caller) {
        let (target, _) = match Self::target(&notice, 1) {
            Ok(target) => target,
            Err(errno) => return notice.fail(errno),
        };
        if let Target::Other = target {
            // Unix sockets and the like: the kernel resolves their path as the agent.
            return notice.proceed();
        }
        let (fd, kind) = match self.socket(&mut caller) {
            Ok(socket) => socket,
            Err(errno) => return notice.fail(errno),
        };
        let ours = kind.netns != self.netns;
        let to = match target {
            Target::Inet(to) => to,
            Target::Unspec if ours => {
                return self.refuse(
                    notice,
                    caller,
                    "disconnecting a connection the sandbox was handed",
                );
            }
            Target::Unspec | Target::Other => {
                return answer(notice, socket::disconnect(fd.as_fd()));
            }
        };
        if kind.is_tcp() && (to.is_ipv4() != (kind.domain == libc::AF_INET)) && !is_mapped(to) {
            return notice.fail(libc::EAFNOSUPPORT);
        }
        if ours {
            // A handed-out connection asked to connect again: never let the kernel connect it
            // (that would be from the pod's namespace); `remote` says what the kernel would.
            return self.remote(notice, caller, fd, kind, to);
        }
        if kind.kind == libc::SOCK_DGRAM && self.is_local(to.ip()) {
            return self.local_datagram(notice, caller, fd, kind, to);
        }
        if !kind.is_tcp() {
            self.log_direct(&notice, caller, "connect", to, kind);
            return notice.fail(libc::ENETUNREACH);
        }
        if self.is_local(to.ip()) {
            if self.handoff.as_ref().is_some_and(|h| h.is_listener(to)) {
                // Every connection the hand-off listener accepts must be one the supervisor
                // made for a registered caller (handoff.rs).
                return self.refuse_handoff(notice, caller, to);
            }
            self.local_stream(notice, caller, fd, kind, to);
        } else {
            self.remote(notice, caller, fd, kind, to);
        }
    }

    /// A UDP `connect()` to the sandbox's own addresses (the resolver): made on the agent's
    /// socket, its caller recorded for the resolver's logs.
    fn local_datagram(
        &self,
        notice: Notice,
        caller: Caller,
        fd: OwnedFd,
        kind: Kind,
        to: SocketAddr,
    ) {
        let result = socket::connect(fd.as_fd(), &socket::for_domain(to, kind.domain));
        if result.is_ok()
            && to.port() == 53
            && let Some(local) = socket::local_address(fd.as_fd())
        {
            self.record_asker(local, caller);
        }
        answer(notice, result);
    }

    /// Records who asked the resolver from the socket whose address is `local`: the process
    /// alone (the resolver only names who asked).
    fn record_asker(&self, local: SocketAddr, caller: Caller) {
        let identifier = &self.shared.identifier;
        let process = identifier.process(caller.tgid);
        identifier.records.record(local, process, None);
    }

    /// Records who connected the socket `fd`, whose address is `local`, to the proxy: the
    /// whole chain the policy credits. Relaying (no TCP fence), the proxy credits a connection
    /// only if it comes from this very socket (see handoff.rs).
    fn record_caller(
        &self,
        local: SocketAddr,
        caller: Caller,
        fd: BorrowedFd<'_>,
    ) -> Result<(), Errno> {
        let identifier = &self.shared.identifier;
        let socket = self.proven_socket(fd)?;
        identifier
            .records
            .record(local, identifier.chain(caller.tgid), socket);
        Ok(())
    }

    /// A TCP `connect()` to the sandbox's own addresses, made on the agent's socket. For the
    /// proxy and the resolver the socket is bound first, so that its caller is recorded
    /// before the service can see the connection.
    fn local_stream(
        self: &Arc<Self>,
        notice: Notice,
        caller: Caller,
        fd: OwnedFd,
        kind: Kind,
        to: SocketAddr,
    ) {
        let address = socket::for_domain(to, kind.domain);
        if self.is_recorded_service(to) {
            let local = match socket::source_toward(fd.as_fd(), to.ip(), kind.domain) {
                Ok(local) => local,
                Err(e) => return notice.fail(e as i32),
            };
            if to.port() != super::PORT {
                self.record_asker(local, caller);
            } else if let Err(e) = self.record_caller(local, caller, fd.as_fd()) {
                return notice.fail(e as i32);
            }
        }
        self.connect_here(notice, fd, address, || ());
    }

    /// Connects the agent's socket `fd` to `address` in the sandbox's namespace and answers
    /// with the outcome, as the agent's own `connect()` would have ended; `failed` runs when
    /// the connection is not made.
    fn connect_here(
        self: &Arc<Self>,
        notice: Notice,
        fd: OwnedFd,
        address: SockaddrStorage,
        failed: impl FnOnce() + Send + 'static,
    ) {
        let flags = socket::status_flags(fd.as_fd());
        let blocking = flags & libc::O_NONBLOCK == 0;
        // Never block this thread: connect without waiting, then wait (if the agent would
        // have) on the waiter's thread.
        socket::set_status_flags(fd.as_fd(), flags | libc::O_NONBLOCK);
        let result = socket::connect(fd.as_fd(), &address);
        socket::set_status_flags(fd.as_fd(), flags);
        match result {
            Err(Errno::EINPROGRESS) if blocking => {
                let Some(waiter) = wait::current() else {
                    failed();
                    return notice.fail(libc::EAGAIN);
                };
                waiter.when_writable(fd, notice, move |fd, notice| {
                    // The attempt is over: connect again reports its outcome, and resets the
                    // socket after a failure, as a blocking connect would have.
                    let result = socket::connect(fd.as_fd(), &address);
                    if result.is_err() {
                        failed();
                    }
                    answer(notice, result);
                });
            }
            Ok(()) | Err(Errno::EINPROGRESS) => answer(notice, result),
            Err(e) => {
                failed();
                notice.fail(e as i32);
            }
        }
    }

    /// A connection out of the sandbox: decided, then dialled from the pod and handed over
    /// (relaying: connected to the relay), or, for an inspected endpoint, handed to the L7
    /// engine; unless the socket is connected or connecting already.
    fn remote(
        self: &Arc<Self>,
        notice: Notice,
        caller: Caller,
        agent: OwnedFd,
        kind: Kind,
        to: SocketAddr,
    ) {
        // Connected or connecting already (relayed, to the hand-off listener; handed out, to
        // its server): what the kernel says of such a socket, and no second decision.
        match socket::tcp_state(agent.as_fd()) {
            State::Established => return notice.fail(libc::EISCONN),
            State::Connecting => return notice.fail(libc::EALREADY),
            State::Idle => {}
        }
        let identifier = &self.shared.identifier;
        let key = pinning::exe_key(caller.tgid);
        let chain = identifier.chain_in_call(caller.tgid, caller.ppid, key.as_ref());
        let names = self.names.names_for(to.ip());
        let address = canonical_ip(to.ip()).to_string();
        let owners = [chain];
        let mut reasons = Vec::new();
        let mut allowed = Vec::new();
        for host in names.iter().map(String::as_str).chain([address.as_str()]) {
            match decision::decide(
                &self.shared.rules,
                host,
                to.port(),
                &owners,
                Via::Transparent,
            ) {
                Decision::Allow {
                    rule,
                    endpoints,
                    matched,
                } => {
                    allowed.push((host.to_owned(), rule, endpoints, matched));
                    // Without inspected endpoints the first allowed name decides; with them,
                    // every allowed name counts (one sharing the address may be inspected).
                    if !self.inspect {
                        break;
                    }
                }
                Decision::Deny(reason) => reasons.push(reason),
            }
        }
        let [chain] = owners;
        let Some((host, rule, endpoints, _)) = allowed.first() else {
            let why = match names.is_empty() {
                true => format!(
                    "no name this sandbox resolved points to {address}, and {}",
                    reasons.join("; ")
                ),
                false => reasons.join("; "),
            };
            return self.deny(notice, &chain, to, &names, &why);
        };
        let inspected = allowed
            .iter()
            .any(|(_, _, endpoints, _)| endpoints.iter().any(|e| e.l7.is_some()));
        let (host, rule) = (host.clone(), rule.name.clone());
        let mut matched: Vec<Process> = Vec::new();
        for (_, _, _, processes) in &allowed {
            for process in processes {
                if !matched.contains(process) {
                    matched.push(process.clone());
                }
            }
        }
        let next = if inspected {
            // Dialled by the engine, by name, its addresses checked then.
            let hosts = allowed.into_iter().map(|(host, ..)| host).collect();
            Next::Inspect(hosts)
        } else {
            if let Err(reason) = ssrf::permit(to.ip(), endpoints) {
                return self.deny(notice, &chain, to, &names, &reason);
            }
            Next::Dial { host, rule }
        };
        // Binaries already hashed are checked here; hashing one seen for the first time reads
        // all of it: not on this thread.
        let pins = &identifier.pins;
        let mut unhashed = Vec::new();
        let mut notice = notice;
        for process in matched {
            // The caller's own process cannot be replaced while its thread waits for this.
            let verdict = match (process.pid == caller.tgid, &key) {
                (true, Some(key)) => pins.check_hashed_in_call(&process, key, || notice.valid()),
                (true, None) => None,
                (false, _) => pins.check_hashed(&process),
            };
            match verdict {
                None => unhashed.push(process),
                Some(verdict) => match self.pinned(notice, verdict, &chain, to, &names) {
                    Some(passed) => notice = passed,
                    None => return,
                },
            }
        }
        let hashed = unhashed.is_empty();
        let this = self.clone();
        let admitted = move |mut notice: Notice| {
            for process in &unhashed {
                let verdict = this.shared.identifier.pins.check(process);
                match this.pinned(notice, verdict, &chain, to, &names) {
                    Some(passed) => notice = passed,
                    None => return,
                }
            }
            match (next, this.mode) {
                (Next::Dial { host, rule }, Mode::Relay) => {
                    log_allowed(chain.first(), &host, to, &rule);
                    let route = handoff::Route::Relay;
                    this.hand_off(notice, agent, kind, to, vec![host], chain, route);
                }
                (Next::Dial { host, rule }, Mode::Direct) => {
                    this.dial(notice, caller, agent, kind, to, &chain, &host, &rule);
                }
                (Next::Inspect(hosts), _) => {
                    let route = handoff::Route::Inspect;
                    this.hand_off(notice, agent, kind, to, hosts, chain, route);
                }
            }
        };
        if hashed {
            return admitted(notice);
        }
        match wait::current() {
            // A job that cannot be queued is dropped with the notice it owns: EIO.
            Some(waiter) => drop(waiter.blocking(move || admitted(notice))),
            None => notice.fail(libc::EAGAIN),
        }
    }

    /// Passes `notice` on when a binary's pin held; otherwise answers it (a denial, or
    /// ENOBUFS when the supervisor could not check) and returns `None`.
    fn pinned(
        &self,
        notice: Notice,
        verdict: Result<(), PinError>,
        chain: &[Process],
        to: SocketAddr,
        names: &[String],
    ) -> Option<Notice> {
        match verdict {
            Ok(()) => Some(notice),
            Err(PinError::Resources(e)) => {
                tracing::error!(layer = "transparent", "cannot pin a binary: {e}");
                notice.fail(libc::ENOBUFS);
                None
            }
            Err(e) => {
                self.deny(notice, chain, to, names, &e.to_string());
                None
            }
        }
    }

    /// Connects the agent's socket to the hand-off listener, its destination, caller and
    /// (relaying) inode noted under its local address: the L7 engine or the relay serves it
    /// from there, as `route` says (handoff.rs).
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        self: &Arc<Self>,
        notice: Notice,
        agent: OwnedFd,
        kind: Kind,
        to: SocketAddr,
        hosts: Vec<String>,
        chain: Vec<Process>,
        route: handoff::Route,
    ) {
        let Some(handoff) = self.handoff.clone() else {
            let why = "an inspected (L7) endpoint, and L7 inspection is unavailable";
            return self.deny(notice, &chain, to, &hosts, why);
        };
        if kind.netns != self.netns {
            let why = "a connection handed out for another destination cannot be reused for \
                       an inspected (L7) endpoint";
            return self.deny(notice, &chain, to, &hosts, why);
        }
        let listener = handoff.listener_for(kind.domain);
        // The address the listener will see the connection from.
        let local = match socket::source_toward(agent.as_fd(), listener.ip(), kind.domain) {
            Ok(local) => local,
            Err(e) => return notice.fail(e as i32),
        };
        // Without the fence, the connection must be proven to come from this very socket.
        let socket = match self.proven_socket(agent.as_fd()) {
            Ok(socket) => socket,
            Err(e) => return notice.fail(e as i32),
        };
        let pending = Pending::new(to, hosts, chain, socket, route);
        if let Err(e) = handoff.register(local, pending) {
            return notice.fail(e as i32);
        }
        let address = socket::for_domain(listener, kind.domain);
        self.connect_here(notice, agent, address, move || handoff.cancel(local));
    }

    /// Without the TCP fence (relaying), the inode of the agent's socket `fd`, which a
    /// connection said to come from it must prove it does; with the fence, nothing to prove.
    fn proven_socket(&self, fd: BorrowedFd<'_>) -> Result<Option<u64>, Errno> {
        match self.mode {
            Mode::Direct => Ok(None),
            Mode::Relay => nix::sys::stat::fstat(fd).map(|st| Some(st.st_ino)),
        }
    }

    /// Dials `to` from the pod's namespace with the agent's socket options, and hands the
    /// connection over in place of the agent's socket.
    #[allow(clippy::too_many_arguments)]
    fn dial(
        self: &Arc<Self>,
        notice: Notice,
        caller: Caller,
        agent: OwnedFd,
        kind: Kind,
        to: SocketAddr,
        chain: &[Process],
        host: &str,
        rule: &str,
    ) {
        let ours = match socket::new_like(&kind) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(layer = "transparent", "cannot make a socket: {e}");
                return notice.fail(e.raw_os_error().unwrap_or(libc::ENOBUFS));
            }
        };
        let defaults = self.defaults[usize::from(kind.domain == libc::AF_INET6)]
            .get_or_init(|| socket::Defaults::of(ours.as_fd()));
        defaults.copy(agent.as_fd(), ours.as_fd());
        let flags = socket::status_flags(agent.as_fd());
        let blocking = flags & libc::O_NONBLOCK == 0;
        let cloexec = socket::cloexec(caller.tid, caller.fd);
        log_allowed(chain.first(), host, to, rule);
        let result = socket::connect(ours.as_fd(), &socket::for_domain(to, kind.domain));
        let target = caller.fd as u32;
        match result {
            Ok(()) => {
                socket::set_status_flags(ours.as_fd(), flags);
                notice.install(ours.as_fd(), target, cloexec, 0);
            }
            Err(Errno::EINPROGRESS) if !blocking => {
                notice.install(ours.as_fd(), target, cloexec, libc::EINPROGRESS);
            }
            // A nearby server (the same host, its network) has often answered by now: then
            // no wait.
            Err(Errno::EINPROGRESS) if socket::writable_now(ours.as_fd()) => {
                connected(notice, ours.as_fd(), target, cloexec, flags);
            }
            Err(Errno::EINPROGRESS) => match wait::current() {
                Some(waiter) => waiter.when_writable(ours, notice, move |ours, notice| {
                    connected(notice, ours.as_fd(), target, cloexec, flags);
                }),
                None => notice.fail(libc::EAGAIN),
            },
            Err(e) => notice.fail(e as i32),
        }
    }

    fn bind(&self, notice: Notice, mut caller: Caller) {
        let (target, raw) = match Self::target(&notice, 1) {
            Ok(target) => target,
            Err(errno) => return notice.fail(errno),
        };
        if let Target::Other = target {
            // A unix socket's path is created as the agent, under its Landlock rules.
            return notice.proceed();
        }
        let (fd, kind) = match self.socket(&mut caller) {
            Ok(socket) => socket,
            Err(errno) => return notice.fail(errno),
        };
        if kind.netns != self.netns {
            return self.refuse(
                notice,
                caller,
                "binding a connection the sandbox was handed",
            );
        }
        // The agent's own namespace: bind its socket to the address as it passed it.
        // SAFETY: bind reads `raw.len()` bytes of the address copied from the caller.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                raw.as_ptr().cast(),
                raw.len() as libc::socklen_t,
            )
        };
        answer(notice, Errno::result(rc).map(drop));
    }

    fn listen(&self, notice: Notice, mut caller: Caller) {
        let (fd, kind) = match self.socket(&mut caller) {
            Ok(socket) => socket,
            Err(errno) => return notice.fail(errno),
        };
        if kind.netns != self.netns {
            return self.refuse(
                notice,
                caller,
                "listening on a connection the sandbox was handed",
            );
        }
        let backlog = notice.call.args[1] as i32;
        // SAFETY: listen with scalar arguments on a socket we hold.
        let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), backlog) };
        answer(notice, Errno::result(rc).map(drop));
    }

    /// A datagram with an address: to the resolver, its caller is recorded (the socket is
    /// bound first if it is not yet); anywhere else it is logged and fails for want of a
    /// route. The kernel then sends it as the agent asked: a datagram swapped to another
    /// socket meanwhile reaches nothing more (UDP only leaves through the resolver, and TCP
    /// ignores the address without `MSG_FASTOPEN`, which the filter refuses).
    fn sendto(&self, notice: Notice, mut caller: Caller) {
        let Ok((Target::Inet(to), _)) = Self::target(&notice, 4) else {
            return notice.proceed();
        };
        if self.is_local(to.ip()) {
            if to.port() == 53
                && let Ok((fd, kind)) = self.socket(&mut caller)
                && kind.netns == self.netns
                && let Ok(local) = socket::source_toward(fd.as_fd(), to.ip(), kind.domain)
            {
                self.record_asker(local, caller);
            }
            return notice.proceed();
        }
        let kind = self.socket(&mut caller).map(|(_, kind)| kind).ok();
        if let Some(kind) = kind {
            self.log_direct(&notice, caller, "sendto", to, kind);
        }
        notice.fail(libc::ENETUNREACH);
    }

    /// A direct attempt the transparent path does not carry (UDP other than DNS): logged.
    fn log_direct(&self, notice: &Notice, caller: Caller, call: &str, to: SocketAddr, kind: Kind) {
        let why = if to.port() == 53 {
            "direct DNS: the sandbox's resolver is the nameserver in /etc/resolv.conf"
        } else if kind.kind == libc::SOCK_DGRAM {
            "UDP leaves the sandbox only as DNS to its resolver (QUIC clients fall back to TCP)"
        } else {
            "only TCP leaves the sandbox"
        };
        let what = || format!("{call} to {to}");
        self.log_refusal(notice, || caller.who(), what, why, Some(to));
    }

    /// The agent's own connection to the hand-off listener: refused (ECONNREFUSED, as if
    /// nothing listened there) and logged.
    fn refuse_handoff(&self, notice: Notice, caller: Caller, to: SocketAddr) {
        let why = "the supervisor's hand-off listener only takes the connections the \
                   supervisor makes for the agent's calls";
        let what = || format!("connect to {to}");
        self.log_refusal(&notice, || caller.who(), what, why, Some(to));
        notice.fail(libc::ECONNREFUSED);
    }

    /// A call on a handed-out connection that would use it for anything but talking to its
    /// server: refused (EPERM) and logged.
    fn refuse(&self, notice: Notice, caller: Caller, what: &str) {
        let why = "a connection handed out by the supervisor belongs to the pod's network and \
                   can only talk to its server";
        self.log_refusal(&notice, || caller.who(), || what.to_owned(), why, None);
        notice.fail(libc::EPERM);
    }

    /// A refused connection: ECONNREFUSED at once, logged with who, where, the names tried
    /// and why.
    fn deny(&self, notice: Notice, chain: &[Process], to: SocketAddr, names: &[String], why: &str) {
        let who = || match chain.first() {
            Some(process) => (process.pid, process.exe.clone()),
            None => (notice.call.pid, "?".to_owned()),
        };
        let what = || match names.is_empty() {
            true => format!("connect to {to} (no resolved name)"),
            false => format!("connect to {to} (names tried: {})", names.join(", ")),
        };
        self.log_refusal(&notice, who, what, why, Some(to));
        notice.fail(libc::ECONNREFUSED);
    }

    /// Logs a refusal of the network layer: rate-limited, and only while the caller still
    /// waits (its pid then still names it). Who (pid and executable) and what are worked out
    /// only for a line that is written.
    fn log_refusal(
        &self,
        notice: &Notice,
        who: impl FnOnce() -> (u32, String),
        what: impl FnOnce() -> String,
        why: &str,
        to: Option<SocketAddr>,
    ) {
        if !self.limiter.allow() || !notice.valid() {
            return;
        }
        let ((pid, exe), what) = (who(), what());
        let host = to.map(|to| to.ip().to_string());
        log::denied(&Denial {
            layer: Layer::Network,
            pid,
            exe: &exe,
            what: &what,
            why,
            target: host.as_deref().zip(to.map(|to| to.port())),
        });
    }
}

/// What an allowed connection becomes.
enum Next {
    /// Dialled and handed over: the first allowed name, and its rule.
    Dial { host: String, rule: String },
    /// Handed to the L7 engine, with every allowed name.
    Inspect(Vec<String>),
}

/// Logs a direct connection the policy allowed: who, where, by which rule.
fn log_allowed(process: Option<&Process>, host: &str, to: SocketAddr, rule: &str) {
    let destination = (host, to.port(), Some(to.ip()));
    let what = format_args!("connect to {host} ({to})");
    super::log_allowed("transparent", process, destination, rule, what);
}

fn is_mapped(to: SocketAddr) -> bool {
    matches!(to.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// The end of a blocking connect made for the agent: the connection is installed in place
/// of its socket (with the socket's status flags), or the connect's error answered.
fn connected(notice: Notice, ours: BorrowedFd<'_>, target: u32, cloexec: bool, flags: i32) {
    match socket::take_error(ours) {
        0 => {
            socket::set_status_flags(ours, flags);
            notice.install(ours, target, cloexec, 0);
        }
        errno => notice.fail(errno),
    }
}

/// Answers a call the supervisor made on the agent's socket with its outcome.
fn answer(notice: Notice, result: Result<(), Errno>) {
    match result {
        Ok(()) => notice.succeed(),
        Err(e) => notice.fail(e as i32),
    }
}
