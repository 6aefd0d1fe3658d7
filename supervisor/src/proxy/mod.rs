//! The egress proxy: the agent's only way out of its network namespace.
//!
//! The listening sockets are created inside the agent's network namespace (`127.0.0.1:3128` and
//! `[::1]:3128`), which holds nothing else but loopback, while the proxy dials upstream from the
//! pod's own namespace. So there is no route, firewall or address plan to get wrong: the agent
//! can reach the proxy and nothing else of the pod, and a direct connection fails at once.
//! Each connection is allowed only when one `network_policies` rule matches both the
//! destination and the calling executable (see [`decision`]), the resolved address passes the
//! guard (see [`ssrf`]), and the executable still has the content it had on first use.

pub mod budget;
pub mod caller;
pub(crate) mod connection;
pub mod decision;
pub mod dial;
pub mod dns;
pub mod http;
pub mod l7;
mod listener;
pub mod relay;
pub mod ssrf;
pub mod transparent;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::cgroup::Cgroups;
use crate::lineage::Lineage;
use crate::log::RateLimit;
use crate::policy::NetworkRule;

/// The port the proxy listens on inside the sandbox.
pub const PORT: u16 = 3128;
/// The proxy URL given to the agent.
pub const URL: &str = "http://127.0.0.1:3128";
/// Pending connections the kernel queues for the proxy (capped by net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// Limits and timeouts, each overridable by an `OPENSHELL_PROXY_*` variable (seconds or a
/// count).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (slowloris).
    pub header_timeout: Duration,
    /// A connection with no traffic in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Time to establish the upstream connection.
    pub connect_timeout: Duration,
    /// Bytes the connections' buffers may hold beyond each one's first few KiB, together
    /// (see [`budget`]).
    pub buffer_budget: usize,
}

impl Settings {
    /// Defaults, overridden by `OPENSHELL_PROXY_MAX_CONNECTIONS`,
    /// `OPENSHELL_PROXY_HEADER_TIMEOUT`, `OPENSHELL_PROXY_IDLE_TIMEOUT`,
    /// `OPENSHELL_PROXY_CONNECT_TIMEOUT` and `OPENSHELL_PROXY_BUFFER_BUDGET_MIB` (whose default
    /// is an eighth of the pod's memory limit, between 4 and 64 MiB).
    pub fn from_env() -> Result<Settings, String> {
        let number = |var: &str, default: u64| match std::env::var(var) {
            Err(_) => Ok(default),
            Ok(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{var}={raw:?}: expected a positive whole number")),
        };
        Ok(Settings {
            max_connections: number("OPENSHELL_PROXY_MAX_CONNECTIONS", 4096)? as usize,
            header_timeout: Duration::from_secs(number("OPENSHELL_PROXY_HEADER_TIMEOUT", 10)?),
            idle_timeout: Duration::from_secs(number("OPENSHELL_PROXY_IDLE_TIMEOUT", 300)?),
            connect_timeout: Duration::from_secs(number("OPENSHELL_PROXY_CONNECT_TIMEOUT", 10)?),
            buffer_budget: match std::env::var_os("OPENSHELL_PROXY_BUFFER_BUDGET_MIB") {
                Some(_) => number("OPENSHELL_PROXY_BUFFER_BUDGET_MIB", 0)?
                    .checked_mul(1 << 20)
                    .and_then(|bytes| usize::try_from(bytes).ok())
                    .ok_or("OPENSHELL_PROXY_BUFFER_BUDGET_MIB: too large")?,
                None => budget::default_for(Cgroups::own().memory_limit()),
            },
        })
    }
}

/// The proxy's sockets (and the transparent path's, when it is on), created inside the
/// agent's network namespace before fork.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<std::net::TcpListener>,
    diag: OwnedFd,
    transparent: Option<transparent::Bound>,
    l7: Option<Arc<l7::Engine>>,
    credentials: Option<Arc<l7::credentials::Credentials>>,
}

impl Bound {
    /// Inspects connections to L7 endpoints with `engine`.
    pub fn inspect_with(&mut self, engine: Arc<l7::Engine>) {
        self.l7 = Some(engine);
    }

    /// Puts `credentials`' values in place of their placeholders where they are bound, and
    /// refuses their placeholders elsewhere.
    pub fn add_credentials(
        &mut self,
        credentials: &crate::credentials::Prepared,
    ) -> io::Result<()> {
        self.credentials = l7::credentials::Credentials::new(credentials)
            .map_err(io::Error::other)?
            .map(Arc::new);
        Ok(())
    }
}

/// Binds the listeners and opens the `sock_diag` socket, and with `transparent` the policy
/// resolver's sockets. Runs on the thread that created the agent's network namespace, so all
/// of them belong to it.
pub fn bind(transparent: Option<transparent::Plan>) -> io::Result<Bound> {
    let transparent = transparent.map(transparent::bind).transpose()?;
    let v4 = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)))?;
    let mut listeners = vec![v4];
    match std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, PORT))) {
        Ok(v6) => listeners.push(v6),
        Err(e) => tracing::info!(
            layer = "proxy",
            "no IPv6 listener ({e}); the agent uses 127.0.0.1"
        ),
    }
    for listener in &listeners {
        listener.set_nonblocking(true)?;
        // std listens with a backlog of 128: a burst of connections (an agent opening a
        // thousand at once) would overflow it and wait for SYN retransmits (1 s, 3 s).
        // SAFETY: listen on a bound socket we own; it only raises the backlog.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(listener), BACKLOG) };
    }
    Ok(Bound {
        listeners,
        diag: caller::sock_diag::diag_socket()?,
        transparent,
        l7: None,
        credentials: None,
    })
}

/// Logs a connection the policy allowed, one line per connection on every path (`layer`):
/// who (`caller`), where (`host`, `port`, and the address when the agent named one), by which
/// rule, and what it was (`what`, for the message, formatted only when the line is written).
pub(crate) fn log_allowed(
    layer: &'static str,
    caller: Option<&decision::Process>,
    (host, port, address): (&str, u16, Option<std::net::IpAddr>),
    rule: &str,
    what: std::fmt::Arguments<'_>,
) {
    tracing::info!(
        event = "allowed",
        layer,
        pid = caller.map(|p| p.pid),
        exe = caller.map(|p| p.exe.as_str()),
        host,
        address = address.map(tracing::field::display),
        port,
        rule,
        "allowed {what} by rule {rule}"
    );
}

/// Variables that point the agent's HTTP clients at the proxy.
pub fn agent_environment() -> Vec<(&'static str, &'static str)> {
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((name, URL));
    }
    for name in ["http_proxy", "https_proxy", "all_proxy", "grpc_proxy"] {
        env.push((name, URL));
    }
    env.push(("NO_PROXY", "127.0.0.1,localhost,::1"));
    env.push(("no_proxy", "127.0.0.1,localhost,::1"));
    // Node 24+ honours HTTP(S)_PROXY in fetch and http only when asked to.
    env.push(("NODE_USE_ENV_PROXY", "1"));
    env
}

/// Starts serving on the current tokio runtime, for the sandbox whose init is `init`;
/// `lineage` says which ancestors may be credited for a caller. Returns the transparent
/// path's handler when it is on (the seccomp notifications go there).
pub fn start(
    bound: Bound,
    rules: Vec<NetworkRule>,
    init: u32,
    settings: Settings,
    lineage: Arc<Lineage>,
) -> io::Result<Option<Arc<transparent::Transparent>>> {
    tracing::info!(
        layer = "proxy",
        max_connections = settings.max_connections,
        buffer_budget_mib = settings.buffer_budget >> 20,
        "proxy: at most {} connections; what they buffer beyond {} KiB each shares {} MiB \
         (the newest give way beyond it)",
        settings.max_connections,
        budget::FLOOR >> 10,
        settings.buffer_budget >> 20
    );
    let callers = match bound.transparent.as_ref().map(transparent::Bound::mode) {
        None => caller::Callers::Holders,
        Some(transparent::Mode::Direct) => caller::Callers::Recorded,
        Some(transparent::Mode::Relay) => caller::Callers::RecordedSockets,
    };
    let shared = Arc::new(connection::Shared {
        rules,
        identifier: caller::Identifier::new(bound.diag, init, lineage, callers)?,
        settings,
        limiter: RateLimit::new(50, Duration::from_secs(1)),
        permits: Arc::new(Semaphore::new(settings.max_connections)),
        budget: budget::Budget::new(settings.buffer_budget),
        pipes: relay::PipePool::default(),
        l7: bound.l7,
        credentials: bound.credentials,
    });
    let listeners = bound
        .listeners
        .into_iter()
        .map(tokio::net::TcpListener::from_std)
        .collect::<io::Result<Vec<_>>>()?;
    tokio::spawn(listener::accept_loop(
        listeners,
        shared.clone(),
        listener::serve_proxy,
    ));
    bound
        .transparent
        .map(|bound| transparent::start(bound, shared))
        .transpose()
}
