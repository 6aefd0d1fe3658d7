//! The upstream "test host" servers: a small HTTP/1.1 server and a UDP sink that record every
//! connection, request and datagram they receive, so that a test can assert what reached the
//! host and, above all, that nothing did.
//!
//! Each response names the path and the address that served it, so a client can tell that its
//! answer came from this server and not from the proxy.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::net::{Net, Side};

/// One thing the host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A TCP connection was accepted.
    Connection {
        /// Where it arrived.
        local: SocketAddr,
        /// Who made it.
        peer: SocketAddr,
    },
    /// A request head, by its request line.
    Request {
        /// Where it arrived.
        local: SocketAddr,
        /// `GET /path HTTP/1.1`.
        line: String,
    },
    /// A UDP datagram.
    Datagram {
        /// Where it arrived.
        local: SocketAddr,
        /// Its size.
        len: usize,
    },
}

impl Seen {
    /// The address it arrived at.
    pub fn local(&self) -> SocketAddr {
        match self {
            Seen::Connection { local, .. }
            | Seen::Request { local, .. }
            | Seen::Datagram { local, .. } => *local,
        }
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Connections = Arc<Mutex<Vec<Arc<TcpStream>>>>;

/// Running servers; stopped on drop.
#[derive(Debug)]
pub struct Upstream {
    seen: Log,
    listeners: Vec<Arc<TcpListener>>,
    sinks: Vec<Arc<UdpSocket>>,
    /// Open connections, shut down on drop to end their threads.
    connections: Connections,
    threads: Vec<JoinHandle<()>>,
}

impl Upstream {
    /// Listens on every `tcp` address (HTTP) and `udp` address (sink) inside `side`.
    pub fn start(net: &Net, side: Side, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Upstream {
        let (listeners, sinks) = net.enter(side, || {
            let listeners: Vec<Arc<TcpListener>> = tcp
                .iter()
                .map(|a| TcpListener::bind(a).unwrap_or_else(|e| panic!("bind tcp {a}: {e}")))
                .map(Arc::new)
                .collect();
            let sinks: Vec<Arc<UdpSocket>> = udp
                .iter()
                .map(|a| UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind udp {a}: {e}")))
                .map(Arc::new)
                .collect();
            (listeners, sinks)
        });
        let seen = Log::default();
        let connections = Connections::default();
        let mut threads = Vec::new();
        for listener in &listeners {
            let (l, seen, connections) = (listener.clone(), seen.clone(), connections.clone());
            threads.push(std::thread::spawn(move || {
                accept_loop(&l, &seen, &connections)
            }));
        }
        for sink in &sinks {
            let (s, seen) = (sink.clone(), seen.clone());
            threads.push(std::thread::spawn(move || udp_loop(&s, &seen)));
        }
        Upstream {
            seen,
            listeners,
            sinks,
            connections,
            threads,
        }
    }

    /// Everything received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Everything received on `port` (any address, TCP or UDP).
    pub fn seen_on(&self, port: u16) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.local().port() == port)
            .collect()
    }

    /// The request lines received on `port`.
    pub fn requests_on(&self, port: u16) -> Vec<String> {
        self.seen_on(port)
            .into_iter()
            .filter_map(|s| match s {
                Seen::Request { line, .. } => Some(line),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // shutdown() wakes a thread blocked in accept, recv or read on the socket (an
        // unconnected UDP socket too), which then sees the end and returns.
        let fds = self.listeners.iter().map(|l| l.as_raw_fd());
        let fds = fds.chain(self.sinks.iter().map(|s| s.as_raw_fd()));
        for fd in fds {
            // SAFETY: shutdown of a socket held open by `self`.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, seen: &Log, connections: &Connections) {
    loop {
        let Ok((stream, peer)) = listener.accept() else {
            return;
        };
        // The address the client dialled (the listener's own is the wildcard).
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        seen.lock()
            .expect("seen")
            .push(Seen::Connection { local, peer });
        let stream = Arc::new(stream);
        connections
            .lock()
            .expect("connections")
            .push(stream.clone());
        let (seen, connections) = (seen.clone(), connections.clone());
        // Connection threads are detached: each ends when its client closes or on drop's
        // shutdown. A small stack, because the load tests hold a thousand at once.
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = serve(&stream, local, &seen);
                let _ = stream.shutdown(Shutdown::Both);
                connections
                    .lock()
                    .expect("connections")
                    .retain(|c| !Arc::ptr_eq(c, &stream));
            })
            .expect("spawn connection thread");
    }
}

/// Answers requests on one connection until it closes: 200 with a body naming the path and
/// the server's address; a request body (Content-Length) is read and discarded.
fn serve(stream: &TcpStream, local: SocketAddr, seen: &Log) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_owned();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((&header, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        seen.lock().expect("seen").push(Seen::Request {
            local,
            line: line.clone(),
        });
        io::copy(&mut (&mut reader).take(length as u64), &mut io::sink())?;
        let path = line.split(' ').nth(1).unwrap_or("?");
        let body = format!("hello {path} from {local}\n");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        if close {
            return Ok(());
        }
    }
}

fn udp_loop(sink: &UdpSocket, seen: &Log) {
    let local = sink.local_addr().expect("local_addr");
    let mut buf = [0u8; 2048];
    while let Ok((len, _)) = sink.recv_from(&mut buf) {
        if len == 0 {
            // The wake-up from drop's shutdown (a real empty datagram is not sent here).
            return;
        }
        seen.lock()
            .expect("seen")
            .push(Seen::Datagram { local, len });
    }
}
