//! Logging: `tracing` to stderr, as text or one JSON object per line.
//!
//! Every denial the supervisor can see goes through [`denied`], so that all of them carry the
//! same fields whichever layer refused: `layer` (seccomp, proxy, network, landlock), `pid` and
//! `exe` of the process that tried, `what` it tried and `why` it was refused (the rule).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Output format of the supervisor's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is a tracing filter (`info`, `debug`,
/// `openshell_sandbox::proxy=trace`...); an invalid one is reported by the caller.
pub fn init(format: Format, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?;
    // A failed write (stderr closed, or EIO once the agent owns the terminal) must not make
    // the logger report it with eprintln!, which panics on the same failure.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false);
    let result = match format {
        Format::Text => builder.with_ansi(false).try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// The layer that refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A system call stopped by the seccomp filter.
    Seccomp,
    /// A connection refused by the egress proxy.
    Proxy,
    /// An HTTP request refused by L7 inspection.
    L7,
    /// A direct connection of the agent (refused by the transparent path, or with no route
    /// out of the sandbox).
    Network,
    /// A name the policy resolver refused.
    Dns,
}

impl Layer {
    /// The name used in log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Seccomp => "seccomp",
            Layer::Proxy => "proxy",
            Layer::L7 => "l7",
            Layer::Network => "network",
            Layer::Dns => "dns",
        }
    }
}

/// One refused action.
#[derive(Debug, Clone)]
pub struct Denial<'a> {
    /// Which layer refused.
    pub layer: Layer,
    /// The acting process, as the supervisor sees it.
    pub pid: u32,
    /// Its executable (`/proc/PID/exe`), or `?` when it is already gone.
    pub exe: &'a str,
    /// What it tried, e.g. `ptrace` or `CONNECT example.com:443`.
    pub what: &'a str,
    /// Which rule refused it, in words.
    pub why: &'a str,
    /// Destination host and port, for network denials.
    pub target: Option<(&'a str, u16)>,
}

/// Logs a denial at `warn` with the common fields.
pub fn denied(d: &Denial<'_>) {
    tracing::warn!(
        event = "denied",
        layer = d.layer.as_str(),
        pid = d.pid,
        exe = d.exe,
        what = d.what,
        why = d.why,
        host = d.target.map(|(host, _)| host),
        port = d.target.map(|(_, port)| port),
        "denied {} by {}: {} (pid {}, {})",
        printable(d.what),
        d.layer.as_str(),
        printable(d.why),
        d.pid,
        printable(d.exe)
    );
}

/// `text` with control characters escaped. Executable names are the agent's to choose, and a
/// name holding a newline would otherwise forge whole log lines in the text format (the
/// structured fields are escaped by the formatter; the message is not).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// Bounds how many lines a noisy source can log: `burst` lines per `period`, then one summary
/// line per period saying how many were dropped. A sandboxed process looping on a refused
/// call must not be able to flood the pod's log.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    period: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    dropped: u64,
}

impl RateLimit {
    /// A limiter allowing `burst` lines per `period`.
    pub fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit {
            burst,
            period,
            state: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                dropped: 0,
            }),
        }
    }

    /// True when the caller may log now. Reports the count dropped in the previous window.
    pub fn allow(&self) -> bool {
        let Ok(mut w) = self.state.lock() else {
            return true;
        };
        if w.start.elapsed() >= self.period {
            if w.dropped > 0 {
                tracing::warn!(
                    event = "denials_suppressed",
                    count = w.dropped,
                    "{} more denials in the last {:?} were not logged",
                    w.dropped,
                    self.period
                );
            }
            *w = Window {
                start: Instant::now(),
                logged: 0,
                dropped: 0,
            };
        }
        if w.logged < self.burst {
            w.logged += 1;
            true
        } else {
            w.dropped += 1;
            false
        }
    }
}

/// The executable of `pid` as the kernel resolved it, for logs; `?` when unreadable.
pub fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_cannot_forge_lines() {
        assert_eq!(super::printable("/usr/bin/curl"), "/usr/bin/curl");
        assert_eq!(
            super::printable("/tmp/x\n2026 INFO allowed"),
            "/tmp/x\\u{a}2026 INFO allowed"
        );
    }
}
