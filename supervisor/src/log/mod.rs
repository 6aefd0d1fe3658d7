//! Logging: `tracing` events, as one readable text line or one JSON object per event, written
//! by a thread of their own so that no log line can stop supervision (see [`sink`]).
//!
//! Every denial the supervisor can see goes through [`denied`], so that all of them carry the
//! same fields whichever layer refused: `layer` (seccomp, proxy, network), `pid` and `exe` of
//! the process that tried, `what` it tried and `why` it was refused (the rule). Denials a
//! [`RateLimit`] holds back are counted and summarised (`denials_suppressed`), and lines the
//! queue could not take are counted and reported (`log_lines_dropped`): the denial lines plus
//! both counts add up to every refusal made.

mod limit;
pub mod sink;
mod text;

use std::path::Path;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

pub use limit::{RateLimit, flush_summaries};
pub use sink::{DRAIN_TIMEOUT, finish, start_writer};

/// The `tracing` target of denial events (a child of this module's own target, so that a
/// filter naming the module still covers it). The queue counts dropped denials by it.
pub const DENIAL_TARGET: &str = "openshell_sandbox::log::denied";
/// The `tracing` target of the log's own accounting lines (suppressed and dropped counts),
/// which the queue never drops: they are what makes the other counts add up.
pub const ACCOUNTING_TARGET: &str = "openshell_sandbox::log::accounting";

/// Output format of the supervisor's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per event: time, level, message, then only the fields the
    /// message does not already say.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing to `file`, or to the supervisor's stderr when
/// `None`. `level` is a tracing filter (`info`, `debug`, `openshell_sandbox::proxy=trace`...).
/// Lines are queued until [`start_writer`] starts the thread that writes them (or [`finish`]
/// writes them itself).
pub fn init(format: Format, level: &str, file: Option<&Path>) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let destination = match file {
        Some(path) => sink::Destination::open_file(path)
            .map_err(|e| format!("--log-file {}: {e}", path.display()))?,
        None => sink::Destination::stderr()
            .map_err(|e| format!("cannot open stderr for the log: {e}"))?,
    };
    let writer = sink::install(destination).map_err(|e| format!("cannot set up the log: {e}"))?;
    // The writer never fails (a line it cannot write is counted, not reported by panicking).
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false);
    let result = match format {
        Format::Text => builder.event_format(text::Line).try_init(),
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
        target: DENIAL_TARGET,
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
/// name holding a newline would otherwise forge whole log lines in the text format.
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

/// The executable of `pid` as the kernel resolved it, for logs; `?` when unreadable.
pub fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// How often the writer flushes rate-limit summaries (and reports dropped lines).
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(1);

/// What a test subscriber wrote, collected for the log modules' tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut captured = self.0.lock().unwrap_or_else(|p| p.into_inner());
        captured.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
