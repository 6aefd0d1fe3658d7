//! The log's way out: a bounded queue in front of one writer thread that owns its own open file
//! description of the destination. Supervision (timeouts, signal forwarding, reaping, exit)
//! only ever queues a line; it never waits for a write.
//!
//! Why: stderr is usually shared with the agent, and written directly it lets a hostile agent
//! stop or blind the supervisor. On a shared terminal, `tcflow(2, TCOOFF)` makes every write
//! block, and with it the timeout and signal forwarding waiting behind a log line; on a shared
//! pipe, setting O_NONBLOCK (a flag of the open file description, which the agent shares)
//! makes the supervisor's writes fail with EAGAIN and its lines vanish. So:
//! - pipes, FIFOs and terminals are reopened through `/proc/self/fd/2`, which gives the
//!   supervisor an open file description of its own: its flags are ours (O_NONBLOCK, so that
//!   even the writer thread waits in `poll`, with a deadline at exit) and the agent's are its;
//! - a socket is written with `MSG_DONTWAIT`, per call, so the shared flags do not matter;
//! - a regular file stays shared (an append-mode copy would let the agent's own writes, at its
//!   offset, overwrite our lines), as does anything that cannot be reopened; an EAGAIN there
//!   (the agent's O_NONBLOCK) is waited out with `poll`, not taken as a failure;
//! - `--log-file` (or `OPENSHELL_LOG_FILE`) sends the lines somewhere the agent does not write
//!   at all, which also keeps them off an interactive agent's terminal.
//!
//! The queue holds at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes. A line that does not
//! fit is dropped and counted, and the count (with how many of them were denials) is reported
//! as soon as the destination takes lines again: a lost line is never a silent one. At exit,
//! [`finish`] gives the pending lines [`DRAIN_TIMEOUT`] to get out.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::{Mode, SFlag, fstat};
use tracing_subscriber::fmt::MakeWriter;

use super::{ACCOUNTING_TARGET, DENIAL_TARGET, SUMMARY_PERIOD, flush_summaries};

/// Most lines the queue holds; more are dropped and counted.
pub const MAX_LINES: usize = 4096;
/// Most bytes the queue holds; more are dropped and counted.
pub const MAX_BYTES: usize = 1 << 20;
/// How long pending lines get at exit.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After writing a batch, the writer lets lines gather this long before it takes the next.
/// A line alone goes out at once; under load (a line for each of the agent's thousands of
/// connections a second) the writer wakes at most this often instead of once a line: each
/// wake-up of a thread sleeping on another CPU is a context switch and an inter-processor
/// interrupt, paid on the agent's time.
const GATHER: Duration = Duration::from_millis(1);

/// The supervisor's one sink, installed by [`install`].
static SINK: OnceLock<Sink> = OnceLock::new();

/// Where lines go and how they are written without blocking supervision.
#[derive(Debug)]
pub struct Destination {
    fd: OwnedFd,
    how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Our own open file description, non-blocking.
    Own,
    /// A socket: `send` with `MSG_DONTWAIT`.
    Socket,
    /// An open file description shared with the agent (a regular file, or what could not be
    /// reopened): written as it is, EAGAIN waited out.
    Shared,
}

impl Destination {
    /// The supervisor's stderr, reopened where that gives us our own open file description.
    pub fn stderr() -> io::Result<Destination> {
        let stderr = io::stderr();
        let shared = || -> io::Result<Destination> {
            Ok(Destination {
                fd: stderr.as_fd().try_clone_to_owned()?,
                how: How::Shared,
            })
        };
        match fstat(stderr.as_fd()).map(|st| file_type(st.st_mode)) {
            Ok(SFlag::S_IFREG) => shared(),
            Ok(SFlag::S_IFSOCK) => Ok(Destination {
                how: How::Socket,
                ..shared()?
            }),
            _ => {
                let flags =
                    OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
                match open("/proc/self/fd/2", flags, Mode::empty()) {
                    Ok(fd) => Ok(Destination { fd, how: How::Own }),
                    // No /proc, no permission on the inode (no CAP_DAC_OVERRIDE): the shared
                    // description still works, only without independent flags.
                    Err(_) => shared(),
                }
            }
        }
    }

    /// `path`, created if missing (mode 0640) and appended to. Its directory is reached without
    /// following a symlink the agent could have planted (the supervisor writes it as root), and
    /// the file itself must not be a symlink.
    pub fn open_file(path: &Path) -> io::Result<Destination> {
        let absolute = std::path::absolute(path)?;
        let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(io::Error::other("not a file name"));
        };
        let dir = crate::paths::open(dir).map_err(io::Error::other)?;
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd =
            openat(&dir, name, flags, Mode::from_bits_truncate(0o640)).map_err(|e| match e {
                Errno::ENXIO => io::Error::other("a FIFO that no process reads"),
                Errno::ELOOP => io::Error::other("a symbolic link; name the file itself"),
                e => e.into(),
            })?;
        let how = match fstat(&fd).map(|st| file_type(st.st_mode))? {
            SFlag::S_IFREG => How::Shared,
            _ => How::Own,
        };
        Ok(Destination { fd, how })
    }

    /// Writes all of `line`, waiting in `poll` while the destination is full, until `deadline`
    /// if there is one.
    fn write_all(&self, mut line: &[u8], deadline: Option<Instant>) -> Result<(), Errno> {
        while !line.is_empty() {
            let written = match self.how {
                How::Socket => send(
                    self.fd.as_raw_fd(),
                    line,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ),
                How::Own | How::Shared => nix::unistd::write(&self.fd, line),
            };
            match written {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => line = &line[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait_writable(deadline)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn wait_writable(&self, deadline: Option<Instant>) -> Result<(), Errno> {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Errno::ETIMEDOUT);
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(Errno::ETIMEDOUT),
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.contains(PollFlags::POLLOUT) {
                    Ok(())
                } else {
                    // POLLERR, POLLHUP, POLLNVAL without room: the next write would fail the
                    // same way forever.
                    Err(Errno::EIO)
                }
            }
            Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn file_type(mode: libc::mode_t) -> SFlag {
    SFlag::from_bits_truncate(mode & libc::S_IFMT)
}

/// What a queued line is, for the drop counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Any other line.
    Line,
    /// A denial ([`DENIAL_TARGET`]).
    Denial,
    /// The log's own accounting ([`ACCOUNTING_TARGET`]): never dropped, at most one pending per
    /// limiter and per report, since they are made only after the writer got lines out.
    Accounting,
}

/// Lines the queue or the destination lost since the last report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    lines: u64,
    denials: u64,
}

impl Dropped {
    fn count(&mut self, kind: Kind) {
        self.lines += 1;
        if kind == Kind::Denial {
            self.denials += 1;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<(Kind, Vec<u8>)>,
    queued_bytes: usize,
    /// The writer holds a batch taken off the queue.
    writing: bool,
    /// A writer thread runs.
    writer: bool,
    /// The writer waits for [`Sink::queued`] (and nothing else wakes it).
    waiting: bool,
    dropped: Dropped,
}

/// The queue and the destination.
#[derive(Debug)]
pub struct Sink {
    destination: Destination,
    max_lines: usize,
    max_bytes: usize,
    state: Mutex<State>,
    /// Lines were queued.
    queued: Condvar,
    /// The queue is empty and nothing is being written.
    idle: Condvar,
}

impl Sink {
    fn new(destination: Destination, max_lines: usize, max_bytes: usize) -> Sink {
        Sink {
            destination,
            max_lines,
            max_bytes,
            state: Mutex::default(),
            queued: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one line, or counts it as dropped when the queue is full. Never waits for a write.
    fn push(&self, kind: Kind, line: Vec<u8>) {
        let mut state = self.lock();
        let full =
            state.queue.len() >= self.max_lines || state.queued_bytes + line.len() > self.max_bytes;
        if full && kind != Kind::Accounting {
            state.dropped.count(kind);
            return;
        }
        state.queued_bytes += line.len();
        state.queue.push_back((kind, line));
        // A writer that is not waiting (writing, or letting lines gather) finds the line
        // itself: no system call to wake it.
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.queued.notify_one();
        }
    }

    /// The writer thread: writes batches as they come; about once a [`SUMMARY_PERIOD`] logs
    /// the rate-limit summaries and the drop count.
    fn run_writer(&self) {
        let mut last_report = Instant::now();
        loop {
            let batch = {
                let mut state = self.lock();
                while state.queue.is_empty() {
                    let left = SUMMARY_PERIOD.saturating_sub(last_report.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    state.waiting = true;
                    state = wait(&self.queued, state, left);
                    state.waiting = false;
                }
                self.take(&mut state)
            };
            let wrote = !batch.is_empty();
            self.write_batch(batch, None);
            self.done_writing();
            if wrote {
                std::thread::sleep(GATHER);
            }
            if last_report.elapsed() >= SUMMARY_PERIOD {
                last_report = Instant::now();
                flush_summaries();
                self.report_dropped();
            }
        }
    }

    fn take(&self, state: &mut State) -> VecDeque<(Kind, Vec<u8>)> {
        state.writing = true;
        state.queued_bytes = 0;
        std::mem::take(&mut state.queue)
    }

    fn done_writing(&self) {
        let mut state = self.lock();
        state.writing = false;
        if state.queue.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Writes a batch; a line the destination does not take (by `deadline`) is counted.
    fn write_batch(&self, batch: VecDeque<(Kind, Vec<u8>)>, deadline: Option<Instant>) {
        let mut lost = Dropped::default();
        for (kind, line) in batch {
            if self.destination.write_all(&line, deadline).is_err() {
                lost.count(kind);
            }
        }
        if lost != Dropped::default() {
            let mut state = self.lock();
            state.dropped.lines += lost.lines;
            state.dropped.denials += lost.denials;
        }
    }

    /// Logs how many lines were lost since the last report, if any.
    fn report_dropped(&self) {
        let dropped = std::mem::take(&mut self.lock().dropped);
        if dropped.lines > 0 {
            tracing::warn!(
                target: ACCOUNTING_TARGET,
                event = "log_lines_dropped",
                lines = dropped.lines,
                denials = dropped.denials,
                "{} log lines were dropped ({} of them denials): the log destination did not \
                 take them in time",
                dropped.lines,
                dropped.denials
            );
        }
    }

    /// Gets every pending line out by `deadline`: through the writer thread if one runs,
    /// otherwise on the calling thread.
    fn drain(&self, deadline: Instant) {
        let mut state = self.lock();
        if !state.writer {
            let batch = self.take(&mut state);
            drop(state);
            self.write_batch(batch, Some(deadline));
            self.done_writing();
            return;
        }
        while state.writing || !state.queue.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = wait(&self.idle, state, left);
        }
    }

    fn finish(&self, deadline: Instant) {
        flush_summaries();
        // Twice: lines lost while draining are reported in a second round, if time allows.
        for _ in 0..2 {
            self.report_dropped();
            self.drain(deadline);
        }
    }
}

/// Waits on `condition` for at most `timeout`.
fn wait<'a>(
    condition: &Condvar,
    state: MutexGuard<'a, State>,
    timeout: Duration,
) -> MutexGuard<'a, State> {
    condition
        .wait_timeout(state, timeout)
        .map_or_else(|p| p.into_inner().0, |(guard, _)| guard)
}

/// Installs the supervisor's sink; returns the writer `tracing` formats into.
pub fn install(destination: Destination) -> io::Result<MakeLine> {
    SINK.set(Sink::new(destination, MAX_LINES, MAX_BYTES))
        .map_err(|_| io::Error::other("the log sink is already installed"))?;
    Ok(MakeLine)
}

/// Starts the writer thread. Until then lines wait in the queue. Called once the sandbox is
/// forked (the fork needs a single-threaded supervisor) and before the agent runs.
pub fn start_writer() -> io::Result<()> {
    let Some(sink) = SINK.get() else {
        return Ok(());
    };
    sink.lock().writer = true;
    let spawned = std::thread::Builder::new()
        .name("log".into())
        .spawn(|| sink.run_writer());
    if let Err(e) = spawned {
        sink.lock().writer = false;
        return Err(e);
    }
    Ok(())
}

/// At exit: logs the last rate-limit summaries and drop count, and gives every pending line
/// until `timeout` to get out. Returns by then whatever the destination does.
pub fn finish(timeout: Duration) {
    if let Some(sink) = SINK.get() {
        sink.finish(Instant::now() + timeout);
    }
}

/// Makes one [`LineWriter`] per event (`tracing_subscriber` writes each event with one
/// `write_all`).
#[derive(Debug, Clone, Copy)]
pub struct MakeLine;

impl<'a> MakeWriter<'a> for MakeLine {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::new(Kind::Line)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter::new(match meta.target() {
            DENIAL_TARGET => Kind::Denial,
            ACCOUNTING_TARGET => Kind::Accounting,
            _ => Kind::Line,
        })
    }
}

/// Collects one event's bytes and queues them when dropped.
#[derive(Debug)]
pub struct LineWriter {
    kind: Kind,
    line: Vec<u8>,
}

impl LineWriter {
    fn new(kind: Kind) -> LineWriter {
        LineWriter {
            kind,
            line: Vec::new(),
        }
    }
}

impl io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if let (Some(sink), false) = (SINK.get(), self.line.is_empty()) {
            sink.push(self.kind, std::mem::take(&mut self.line));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;

    use super::*;

    /// A pipe whose write end is a [`Destination`] of our own (as stderr's would be).
    fn pipe() -> (File, Destination) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        (
            File::from(read),
            Destination {
                fd: write,
                how: How::Own,
            },
        )
    }

    fn read_all(reader: &mut File) -> String {
        let mut text = Vec::new();
        let _ = reader.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_blocks() {
        let (mut reader, destination) = pipe();
        let sink = Sink::new(destination, 10, MAX_BYTES);
        let started = Instant::now();
        for n in 0..25 {
            let kind = if n % 5 == 0 { Kind::Denial } else { Kind::Line };
            sink.push(kind, format!("line {n}\n").into_bytes());
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(
            sink.lock().dropped,
            Dropped {
                lines: 15,
                denials: 3
            }
        );
        // Accounting is never dropped, even into a full queue.
        sink.push(Kind::Accounting, b"summary\n".to_vec());
        sink.drain(Instant::now() + Duration::from_secs(1));
        let text = read_all(&mut reader);
        let expected: String = (0..10)
            .map(|n| format!("line {n}\n"))
            .chain(["summary\n".to_owned()])
            .collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_destination_that_takes_nothing_costs_only_the_deadline() {
        let (mut reader, destination) = pipe();
        // Fill the pipe: the reader is "stuck".
        while nix::unistd::write(&destination.fd, &[0u8; 4096]).is_ok() {}
        let sink = Sink::new(destination, 10, MAX_BYTES);
        sink.push(Kind::Denial, b"lost\n".to_vec());
        let started = Instant::now();
        sink.drain(Instant::now() + Duration::from_millis(200));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(
            sink.lock().dropped,
            Dropped {
                lines: 1,
                denials: 1
            }
        );
        drop(reader.read_to_end(&mut Vec::new()));
    }

    #[test]
    fn the_writer_waits_for_a_slow_reader_instead_of_losing_lines() {
        let (mut reader, destination) = pipe();
        while nix::unistd::write(&destination.fd, &[b'.'; 4096]).is_ok() {}
        let sink: &'static Sink = Box::leak(Box::new(Sink::new(destination, 100, MAX_BYTES)));
        sink.lock().writer = true;
        std::thread::spawn(|| sink.run_writer());
        for n in 0..5 {
            sink.push(Kind::Denial, format!("denial {n}\n").into_bytes());
        }
        // The reader wakes up late; nothing was lost meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        let drained = std::thread::spawn(move || {
            let mut all = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                let mut buf = [0u8; 65536];
                match reader.read(&mut buf) {
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                if all.ends_with(b"denial 4\n") {
                    break;
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        });
        sink.drain(Instant::now() + Duration::from_secs(5));
        let text = drained.join().unwrap();
        let lines: Vec<&str> = text.trim_start_matches('.').lines().collect();
        assert_eq!(
            lines,
            (0..5).map(|n| format!("denial {n}")).collect::<Vec<_>>()
        );
        assert_eq!(sink.lock().dropped, Dropped::default());
    }
}
