//! The L7 test host: an HTTP/1.1 server, plain or behind TLS with its own CA, that records
//! every request it receives (method, target, headers, body) so that a test can check what
//! reached the server and, above all, what never did.
//!
//! It answers each request with a JSON echo of what it received, and has a few special paths:
//! `/sse?gap_ms=N` (server-sent events with an idle gap, chunked; `&framing=close` for an
//! unframed body), `/ws` (a websocket upgrade, then every byte echoed back), `/bytes/N` (N
//! bytes) and `/git/...` (`git http-backend` as CGI over `GIT_PROJECT_ROOT`). A request with
//! `Expect: 100-continue` gets its `100` first.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use super::net::{Net, Side};

/// One request the host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The port it arrived on.
    pub port: u16,
    /// Its method.
    pub method: String,
    /// Its target as received.
    pub target: String,
    /// Its headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body's length after de-chunking.
    pub body_len: usize,
}

impl Received {
    /// `METHOD target`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The test host's TLS identity: its own CA and a certificate for every test name.
#[derive(Debug)]
pub struct Identity {
    /// The CA, PEM (for `OPENSHELL_UPSTREAM_CA_FILE`).
    pub ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

/// Names the host's certificate covers.
pub const NAMES: &[&str] = &[
    "api.test.example",
    "git.test.example",
    "test.example",
    "other.example",
    "api.github.com",
];

impl Identity {
    /// A fresh CA and server certificate.
    pub fn new() -> Identity {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Host CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(
            NAMES.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Identity {
            ca_pem: ca.pem(),
            config: Arc::new(config),
        }
    }
}

type Log = Arc<Mutex<Vec<Received>>>;
type Open = Arc<Mutex<Vec<Arc<TcpStream>>>>;

/// Running echo servers; stopped on drop.
#[derive(Debug)]
pub struct EchoHost {
    received: Log,
    listeners: Vec<Arc<TcpListener>>,
    open: Open,
    threads: Vec<JoinHandle<()>>,
}

/// Where `git http-backend` finds repositories, when the host serves `/git/`.
#[derive(Debug, Clone)]
pub struct GitRoot(pub PathBuf);

impl EchoHost {
    /// Listens on `tls_ports` (TLS with `identity`) and `plain_ports` on every address of the
    /// test host.
    pub fn start(
        net: &Net,
        identity: &Identity,
        tls_ports: &[u16],
        plain_ports: &[u16],
        git: Option<GitRoot>,
    ) -> EchoHost {
        let all: Vec<(u16, bool)> = tls_ports
            .iter()
            .map(|p| (*p, true))
            .chain(plain_ports.iter().map(|p| (*p, false)))
            .collect();
        let listeners: Vec<(Arc<TcpListener>, bool)> = net.enter(Side::Host, || {
            all.iter()
                .map(|(port, tls)| {
                    let address: SocketAddr = format!("[::]:{port}").parse().expect("address");
                    let l = TcpListener::bind(address)
                        .unwrap_or_else(|e| panic!("bind {address}: {e}"));
                    (Arc::new(l), *tls)
                })
                .collect()
        });
        let received = Log::default();
        let open = Open::default();
        let mut threads = Vec::new();
        for (listener, tls) in &listeners {
            let (l, received, open) = (listener.clone(), received.clone(), open.clone());
            let config = tls.then(|| identity.config.clone());
            let git = git.clone();
            threads.push(std::thread::spawn(move || {
                while let Ok((stream, _)) = l.accept() {
                    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                    let stream = Arc::new(stream);
                    open.lock().expect("open").push(stream.clone());
                    let (received, config, git) = (received.clone(), config.clone(), git.clone());
                    std::thread::spawn(move || {
                        let raw = &*stream;
                        let _ = match config {
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let mut tls = rustls::StreamOwned::new(conn, raw);
                                serve(&mut tls, port, &received, git.as_ref())
                            }
                            None => serve(&mut &*raw, port, &received, git.as_ref()),
                        };
                        let _ = raw.shutdown(Shutdown::Both);
                    });
                }
            }));
        }
        EchoHost {
            received,
            listeners: listeners.into_iter().map(|(l, _)| l).collect(),
            open,
            threads,
        }
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received").clone()
    }

    /// `METHOD target` of every request received on `port`.
    pub fn lines(&self, port: u16) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.port == port)
            .map(Received::line)
            .collect()
    }
}

impl Drop for EchoHost {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: shutdown of a socket held open by `self`; it wakes the accept.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A request head as read.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_head<R: BufRead>(reader: &mut R) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(Head {
        method,
        target,
        headers,
    }))
}

fn read_body<R: BufRead>(reader: &mut R, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; n];
            reader.read_exact(&mut chunk)?;
            body.extend(chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
            if n == 0 {
                return Ok(body);
            }
        }
    }
    let length: usize = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    body.resize(length, 0);
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn serve<S: Read + Write>(
    stream: &mut S,
    port: u16,
    received: &Log,
    git: Option<&GitRoot>,
) -> io::Result<()> {
    let mut reader = BufReader::new(Split(stream));
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        if head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            reader
                .get_mut()
                .0
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            reader.get_mut().0.flush()?;
        }
        let body = read_body(&mut reader, &head)?;
        received.lock().expect("received").push(Received {
            port,
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body_len: body.len(),
        });
        let close = head
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let out = &mut reader.get_mut().0;
        let path = head.target.split('?').next().unwrap_or("");
        if path == "/ws" {
            out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: test\r\n\r\n",
            )?;
            out.flush()?;
            // Frames: every byte back, until the client ends.
            let mut buf = [0u8; 4096];
            let pending = reader.buffer().to_vec();
            reader.get_mut().0.write_all(&pending)?;
            reader.consume(pending.len());
            loop {
                let n = reader.get_mut().0.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                reader.get_mut().0.write_all(&buf[..n])?;
                reader.get_mut().0.flush()?;
            }
        } else if path == "/sse" {
            sse(out, &head.target)?;
            if head.target.contains("framing=close") {
                return Ok(());
            }
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: usize = n.parse().unwrap_or(0);
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
            let block = [b'x'; 16384];
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len());
                out.write_all(&block[..k])?;
                left -= k;
            }
        } else if let (Some(rest), Some(git)) = (path.strip_prefix("/git"), git) {
            cgi(out, &head, rest, &body, git)?;
        } else {
            let echo = json!({
                "method": head.method,
                "target": head.target,
                "host": head.header("host"),
                "body_len": body.len(),
                "port": port,
            })
            .to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{echo}",
                echo.len()
            )?;
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Server-sent events: `data: 1`, then nothing for `gap_ms`, then `data: 2`, then the end.
fn sse<W: Write>(out: &mut W, target: &str) -> io::Result<()> {
    let gap: u64 = target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("gap_ms="))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let unframed = target.contains("framing=close");
    let head: &[u8] = if unframed {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    };
    out.write_all(head)?;
    let event = |out: &mut W, text: &str| -> io::Result<()> {
        match unframed {
            true => out.write_all(text.as_bytes())?,
            false => write!(out, "{:x}\r\n{text}\r\n", text.len())?,
        }
        out.flush()
    };
    event(out, "data: 1\n\n")?;
    std::thread::sleep(Duration::from_millis(gap));
    event(out, "data: 2\n\n")?;
    if !unframed {
        out.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// `git http-backend` as a CGI program, its output returned with a length.
fn cgi<W: Write>(
    out: &mut W,
    head: &Head,
    path_info: &str,
    body: &[u8],
    git: &GitRoot,
) -> io::Result<()> {
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("GIT_PROJECT_ROOT", &git.0)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "203.0.113.1")
        .env("REMOTE_USER", "test")
        .env("CONTENT_TYPE", head.header("content-type").unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            head.header("content-encoding").unwrap_or(""),
        )
        .env("GIT_PROTOCOL", head.header("git-protocol").unwrap_or(""))
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output()?;
    let _ = writer.join();
    let text = output.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap_or((text.len(), 0));
    let cgi_head = String::from_utf8_lossy(&text[..split.0]).into_owned();
    let cgi_body = &text[(split.0 + split.1).min(text.len())..];
    let mut status = "200 OK".to_owned();
    let mut headers = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => {
                headers.push_str(line);
                headers.push_str("\r\n");
            }
            None => {}
        }
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        cgi_body.len()
    )?;
    out.write_all(cgi_body)
}

/// Makes a bare repository with one commit under `root`, pushable over HTTP.
pub fn git_repository(root: &Path, name: &str) -> PathBuf {
    let bare = root.join(name);
    let work = root.join(format!("{name}-work"));
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::create_dir_all(&work).expect("work dir");
    git(root, &["init", "-q", "--bare", "-b", "main", name]);
    git(&bare, &["config", "http.receivepack", "true"]);
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello\n").expect("README");
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        &work,
        &["push", "-q", bare.to_str().expect("utf-8 path"), "main"],
    );
    bare
}

/// Reading and writing one stream through a `BufReader` (the reader side buffers, writes go
/// straight through).
struct Split<S>(S);

impl<S: Read> Read for Split<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
