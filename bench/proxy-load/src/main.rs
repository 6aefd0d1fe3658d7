//! Load generator for the proxy benchmarks (`bench/proxy.sh`, `transparent.sh`, `soak.sh`),
//! run by the same binary on both sides of each comparison: from the pod straight to the test
//! host ("direct"), and inside the sandbox: through a CONNECT tunnel of the egress proxy
//! (PROXY), or without PROXY, by transparent egress.
//!
//! `rate`: WORKERS threads each repeat connect [+ CONNECT] + GET PATH + read the response +
//! close, COUNT times in all; prints one JSON line with the rate of new connections and the
//! latency percentiles of the whole exchange.
//! `hold`: prints `idle`, waits a second, opens COUNT tunnels and holds them, prints `ready`
//! and keeps them open until its stdin closes (the caller samples memory meanwhile).
//! `resolve`: WORKERS threads each look NAME up with the C library (getaddrinfo: an A and an
//! AAAA query), COUNT lookups in all; prints the lookups per second and their latency.
//! `soak`: many clients mixing allowed, denied, slow and abandoned requests for a while (see
//! `soak.rs`; run by `bench/soak.sh`).

mod soak;

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: proxy-load rate TARGET PATH WORKERS COUNT [PROXY]
       proxy-load hold TARGET COUNT PROXY
       proxy-load resolve NAME WORKERS COUNT
       proxy-load soak TARGET DENIED CLIENTS SECONDS MAX PROXY
TARGET and PROXY are ip:port (IPv6 in brackets); with PROXY, each connection goes through a
CONNECT tunnel.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["rate", target, path, workers, count] => rate(target, path, workers, count, None),
        ["rate", target, path, workers, count, proxy] => {
            rate(target, path, workers, count, Some(proxy))
        }
        ["hold", target, count, proxy] => hold(target, count, proxy),
        ["resolve", name, workers, count] => {
            let name = name.to_owned();
            measure(workers, count, move || {
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80)).map(drop)
            })
        }
        ["soak", target, denied, clients, seconds, max, proxy] => {
            soak::run(target, denied, clients, seconds, max, proxy)
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(what: &str, raw: &str) -> Result<T, String> {
    raw.parse().map_err(|_| format!("{what}: {raw:?}\n{USAGE}"))
}

/// A TCP connection to `address`, each write sent at once (the exchanges are small).
fn dial(address: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The head of a CONNECT request for `target`, sent with one write (write! would send each
/// piece as its own segment).
fn connect_head(target: impl std::fmt::Display) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
}

/// A connection to `target`, through a CONNECT tunnel of `proxy` when given.
fn open(target: SocketAddr, proxy: Option<SocketAddr>) -> io::Result<TcpStream> {
    let Some(proxy) = proxy else {
        return dial(target);
    };
    let mut stream = dial(proxy)?;
    stream.write_all(connect_head(target).as_bytes())?;
    let (head, rest) = read_head(&mut stream)?;
    if !head.starts_with("HTTP/1.1 200") || !rest.is_empty() {
        return Err(io::Error::other(format!("CONNECT refused: {head}")));
    }
    Ok(stream)
}

/// Reads one response head; returns it and the bytes read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
    }
}

/// One exchange: open, GET, read the whole response (by its Content-Length), close.
fn exchange(target: SocketAddr, proxy: Option<SocketAddr>, path: &str) -> io::Result<()> {
    let mut stream = open(target, proxy)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let (head, rest) = read_head(&mut stream)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("GET failed: {head}")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other("no Content-Length"))?;
    let mut left = length.saturating_sub(rest.len());
    let mut chunk = [0u8; 16384];
    while left > 0 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left = left.saturating_sub(n);
    }
    Ok(())
}

fn rate(
    target: &str,
    path: &str,
    workers: &str,
    count: &str,
    proxy: Option<&str>,
) -> Result<(), String> {
    let target: SocketAddr = parse("TARGET", target)?;
    let proxy: Option<SocketAddr> = proxy.map(|p| parse("PROXY", p)).transpose()?;
    let path = path.to_owned();
    measure(workers, count, move || exchange(target, proxy, &path))
}

/// Runs `one` COUNT times over WORKERS threads (after a warm-up) and prints the rate and the
/// latency percentiles as one JSON line.
fn measure(
    workers: &str,
    count: &str,
    one: impl Fn() -> io::Result<()> + Sync,
) -> Result<(), String> {
    let workers: usize = parse("WORKERS", workers)?;
    let count: usize = parse("COUNT", count)?;
    // Warm-up: first connections pay for lazy set-up (pinning the binary's hash, caches).
    for _ in 0..20 {
        one().map_err(|e| format!("warm-up: {e}"))?;
    }
    let next = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let t = Instant::now();
                        match one() {
                            Ok(()) => mine.push(t.elapsed()),
                            Err(e) => {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("proxy-load: first error: {e}");
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "{{\"count\": {}, \"errors\": {}, \"seconds\": {seconds:.4}, \"per_second\": {:.1}, \
         \"p50_ms\": {:.4}, \"p99_ms\": {:.4}}}",
        latencies.len(),
        errors.load(Ordering::Relaxed),
        latencies.len() as f64 / seconds,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99)
    );
    Ok(())
}

/// The `p` percentile (0 to 1) of `sorted` latencies, in milliseconds; NaN when there are none.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn hold(target: &str, count: &str, proxy: &str) -> Result<(), String> {
    let target: SocketAddr = parse("TARGET", target)?;
    let proxy: SocketAddr = parse("PROXY", proxy)?;
    let count: usize = parse("COUNT", count)?;
    let say = |line: &str| {
        println!("{line}");
        let _ = io::stdout().flush();
    };
    say("idle");
    std::thread::sleep(Duration::from_secs(1));
    let tunnels = (0..count)
        .map(|i| open(target, Some(proxy)).map_err(|e| format!("tunnel {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    say(&format!("ready {}", tunnels.len()));
    // Held until the caller closes our stdin.
    let mut line = String::new();
    while io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?
        > 0
    {
        line.clear();
    }
    drop(tunnels);
    Ok(())
}
