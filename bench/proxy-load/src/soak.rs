//! `soak`: CLIENTS threads, each repeating requests of every kind in a fixed mix until SECONDS
//! have passed or MAX requests were made in all (whichever comes first), through the proxy:
//!
//! - allowed (10 in 20): CONNECT to TARGET, GET a small file, read it whole, close;
//! - denied (4 in 20): CONNECT to DENIED, which the policy does not allow: must get a 403;
//! - slow (2 in 20): an allowed exchange whose CONNECT head arrives in four pieces a quarter of
//!   a second apart (well within the proxy's header timeout): must be served;
//! - abandoned (4 in 20), in turn: close right after connecting; close after half a head;
//!   close after a whole CONNECT without reading the answer; close a tunnel just opened
//!   without using it; say nothing for 11 s (past the header timeout), then close.
//!
//! The first three kinds are well-behaved: every one must be served, and any that is not is an
//! error. Starts when a line arrives on stdin (the caller tunes the sandbox's network namespace
//! first); prints one JSON line: counts, errors and latency percentiles per kind.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{connect_head, dial, exchange, parse, percentile_ms, read_head};

const KINDS: [&str; 4] = ["allowed", "denied", "slow", "abandoned"];
/// The mix, in the order each client goes through it (indexes into [`KINDS`]).
const MIX: [usize; 20] = [0, 1, 0, 3, 0, 2, 0, 1, 3, 0, 0, 1, 0, 3, 0, 2, 0, 1, 3, 0];
/// How long a client waits for any answer before it counts the request as failed.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn run(
    target: &str,
    denied: &str,
    clients: &str,
    seconds: &str,
    max: &str,
    proxy: &str,
) -> Result<(), String> {
    let target: SocketAddr = parse("TARGET", target)?;
    let proxy: SocketAddr = parse("PROXY", proxy)?;
    let clients: usize = parse("CLIENTS", clients)?;
    let duration = Duration::from_secs(parse("SECONDS", seconds)?);
    let max: u64 = parse("MAX", max)?;
    let mut go = String::new();
    io::stdin()
        .read_line(&mut go)
        .map_err(|e| format!("waiting for the start line: {e}"))?;
    let soak = Soak {
        target,
        denied: denied.to_owned(),
        proxy,
        deadline: Instant::now() + duration,
        max,
        made: AtomicU64::new(0),
        counts: Default::default(),
        errors: Default::default(),
        first_error: OnceLock::new(),
        latencies: Default::default(),
        abandon_variant: AtomicUsize::new(0),
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..clients {
            let soak = &soak;
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || soak.client(client))
                .map_err(|e| format!("client thread {client}: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    soak.report(started.elapsed());
    Ok(())
}

struct Soak {
    target: SocketAddr,
    denied: String,
    proxy: SocketAddr,
    deadline: Instant,
    max: u64,
    made: AtomicU64,
    counts: [AtomicU64; 4],
    errors: [AtomicU64; 4],
    first_error: OnceLock<String>,
    latencies: [Mutex<Vec<Duration>>; 4],
    abandon_variant: AtomicUsize,
}

impl Soak {
    fn client(&self, client: usize) {
        let mut mine: [Vec<Duration>; 4] = Default::default();
        // Clients start at different points of the mix, so all kinds run at every moment.
        for step in (client % MIX.len()).. {
            if Instant::now() >= self.deadline
                || self.made.fetch_add(1, Ordering::Relaxed) >= self.max
            {
                break;
            }
            let kind = MIX[step % MIX.len()];
            let started = Instant::now();
            let outcome = match kind {
                0 => exchange(self.target, Some(self.proxy), "/small"),
                1 => self.refused(),
                2 => self.slow(),
                _ => {
                    self.abandon();
                    Ok(())
                }
            };
            self.counts[kind].fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(()) if kind < 3 => mine[kind].push(started.elapsed()),
                Ok(()) => {}
                Err(e) => {
                    self.errors[kind].fetch_add(1, Ordering::Relaxed);
                    let _ = self.first_error.set(format!("{}: {e}", KINDS[kind]));
                }
            }
        }
        for (kind, samples) in mine.into_iter().enumerate() {
            if let Ok(mut all) = self.latencies[kind].lock() {
                all.extend(samples);
            }
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let stream = dial(self.proxy)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(stream)
    }

    fn refused(&self) -> io::Result<()> {
        let mut stream = self.connect()?;
        stream.write_all(connect_head(&self.denied).as_bytes())?;
        let (head, _) = read_head(&mut stream)?;
        match head.starts_with("HTTP/1.1 403") {
            true => Ok(()),
            false => Err(io::Error::other(format!("expected a 403: {head}"))),
        }
    }

    fn slow(&self) -> io::Result<()> {
        let mut stream = self.connect()?;
        let head = connect_head(self.target);
        for piece in head.as_bytes().chunks(head.len().div_ceil(4)) {
            stream.write_all(piece)?;
            std::thread::sleep(Duration::from_millis(250));
        }
        let (answer, rest) = read_head(&mut stream)?;
        if !answer.starts_with("HTTP/1.1 200") || !rest.is_empty() {
            return Err(io::Error::other(format!("CONNECT refused: {answer}")));
        }
        let request = format!(
            "GET /small HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.target
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        match response.starts_with(b"HTTP/1.1 200") {
            true => Ok(()),
            false => Err(io::Error::other("the slow client's GET failed")),
        }
    }

    /// Leaves in one of five ways; whatever happens is not an error of the proxy's.
    fn abandon(&self) {
        let Ok(mut stream) = self.connect() else {
            return;
        };
        let connect = connect_head(self.target);
        match self.abandon_variant.fetch_add(1, Ordering::Relaxed) % 5 {
            0 => {}
            1 => {
                let _ = stream.write_all(&connect.as_bytes()[..connect.len() / 2]);
            }
            2 => {
                let _ = stream.write_all(connect.as_bytes());
            }
            3 => {
                let _ = stream.write_all(connect.as_bytes());
                let _ = read_head(&mut stream);
            }
            _ => std::thread::sleep(Duration::from_secs(11)),
        }
    }

    fn report(&self, took: Duration) {
        let mut counts = Vec::new();
        let mut errors = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for (kind, name) in KINDS.iter().enumerate() {
            counts.push(format!(
                "\"{name}\": {}",
                self.counts[kind].load(Ordering::Relaxed)
            ));
            errors.push(format!(
                "\"{name}\": {}",
                self.errors[kind].load(Ordering::Relaxed)
            ));
            let Ok(mut samples) = self.latencies[kind].lock() else {
                continue;
            };
            if samples.is_empty() {
                continue;
            }
            samples.sort_unstable();
            p50.push(format!("\"{name}\": {:.3}", percentile_ms(&samples, 0.50)));
            p99.push(format!("\"{name}\": {:.3}", percentile_ms(&samples, 0.99)));
        }
        let first_error = self.first_error.get().map_or("", String::as_str);
        println!(
            "{{\"seconds\": {:.1}, \"requests\": {{{}}}, \"errors\": {{{}}}, \"p50_ms\": {{{}}}, \
             \"p99_ms\": {{{}}}, \"first_error\": {first_error:?}}}",
            took.as_secs_f64(),
            counts.join(", "),
            errors.join(", "),
            p50.join(", "),
            p99.join(", ")
        );
    }
}
