//! Moving bytes between the agent and upstream: the proxy's hot path.
//!
//! Bodies and tunnels are moved with `splice(2)` through a pipe: socket → pipe → socket inside
//! the kernel, never copied into the proxy's memory, so throughput stays close to a direct
//! connection and memory stays flat however many tunnels are open. Readiness comes from
//! tokio; each splice is non-blocking. An idle watchdog shared by both directions closes a
//! tunnel nobody used for the idle timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Largest single splice: big enough to amortise the system calls, small enough to keep the
/// two directions of a tunnel interleaved.
const CHUNK: usize = 1 << 20;

/// A kernel pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe.
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }
}

/// Empty pipes kept for the next connections: creating and closing two pipes is a
/// measurable part of a short exchange. Bounded, since each kept pipe holds two descriptors.
#[derive(Debug, Default)]
pub struct PipePool {
    idle: std::sync::Mutex<Vec<Pipe>>,
}

/// Most pipes kept idle (enough for 32 connections; 128 descriptors).
const POOL_MAX: usize = 64;

impl PipePool {
    /// A pipe from the pool, or a new one.
    pub fn take(&self) -> io::Result<Pipe> {
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.map_or_else(Pipe::new, Ok)
    }

    /// Returns `pipe` for reuse if it is empty; one left holding bytes (an interrupted
    /// relay) is closed, so no connection ever sees another's data.
    pub fn give(&self, pipe: Pipe) {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes the byte count of the pipe into `pending`.
        let rc = unsafe { libc::ioctl(pipe.read.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if rc != 0 || pending != 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push(pipe);
        }
    }
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two valid fds with null offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves up to `limit` bytes (all, until end of stream, when `None`) from `src` to `dst`.
/// Returns the count moved; fewer than `limit` means `src` ended first.
pub async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    limit: Option<u64>,
    activity: &Activity,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(limit) if limit == total => return Ok(total),
            Some(limit) => (limit - total).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        let filled = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.write.as_raw_fd(), want)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
        activity.touch();
    }
}

/// Relays a tunnel in both directions through its two pipes until both ends have finished
/// sending, an error occurs or nothing moves for `idle`. Each end's EOF is passed on as a
/// half-close. The caller makes the pipes first, so that running out of file descriptors is
/// found before the client is told the tunnel exists.
pub async fn tunnel(
    client: &TcpStream,
    upstream: &TcpStream,
    [up_pipe, down_pipe]: &[Pipe; 2],
    idle: Duration,
) -> io::Result<(u64, u64)> {
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            one_way(client, upstream, up_pipe, &activity),
            one_way(upstream, client, down_pipe, &activity)
        )
    };
    tokio::select! {
        result = both => result,
        () = activity.idle_for(idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// One direction of a tunnel; `src`'s end of stream becomes `dst`'s half-close.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    activity: &Activity,
) -> io::Result<u64> {
    let n = copy(src, dst, pipe, None, activity).await?;
    // SAFETY: shutdown of the write side of a connected socket we hold.
    unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
    Ok(n)
}

/// When data last moved, shared by the directions of one connection.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Starts the clock now.
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records progress.
    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.start.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}
