//! Fake model APIs for the test network: one TLS server answering, under the real API host
//! names, the calls Claude Code, Codex and Gemini CLI make for a one-shot prompt (see
//! [`model`]), and recording everything it receives, so that a test can check what reached
//! the API (the key it saw, the tool result the agent sent back) and what never did.
//!
//! The server has its own CA ([`TestCa`]); a test trusts it where it must (the agent, or the
//! supervisor's upstream trust) and starts the server on a listener it bound in the test
//! host's network namespace.

pub mod http;
pub mod model;
pub mod tls;

use std::collections::BTreeSet;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{Value, json};

pub use http::Request;
pub use model::{Api, Call, RUN, Turn};
pub use tls::TestCa;

/// Host names whose certificate the fake presents: the three model APIs, and the hosts the
/// CLIs also contact (telemetry, sign-in, feature flags), so that a request that should have
/// been refused but was not is seen here instead of failing on a certificate.
pub const HOSTS: &[&str] = &[
    "api.anthropic.com",
    "statsig.anthropic.com",
    "api.openai.com",
    "chatgpt.com",
    "ab.chatgpt.com",
    "generativelanguage.googleapis.com",
    "play.googleapis.com",
    "github.com",
    "api.github.com",
    "exfil.example",
];

/// How long a connection may sit idle before the server drops it.
const IDLE: Duration = Duration::from_secs(120);

/// One thing the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
    /// The request. For a message on a WebSocket: the upgrade request, with the message as
    /// its body.
    pub request: Request,
    /// Whether this is a message received on a WebSocket.
    pub websocket_message: bool,
}

impl Seen {
    /// The model call it is, if any.
    pub fn call(&self) -> Option<Call> {
        if self.request.is_websocket() && !self.websocket_message {
            return None;
        }
        Call::of(&self.request.method, self.request.path())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.request.body).unwrap_or(Value::Null)
    }

    /// The API key or token the client sent: `x-api-key` (Anthropic), `Authorization: Bearer`
    /// (OpenAI), `x-goog-api-key` or a `key` query parameter (Gemini).
    pub fn credential(&self) -> Option<String> {
        let request = &self.request;
        let header = |name| request.header(name).map(str::to_owned);
        header("x-api-key")
            .or_else(|| {
                let auth = request.header("authorization")?;
                Some(auth.strip_prefix("Bearer ").unwrap_or(auth).to_owned())
            })
            .or_else(|| header("x-goog-api-key"))
            .or_else(|| {
                let query = request.target.split_once('?')?.1;
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("key="))
                    .map(str::to_owned)
            })
    }
}

#[derive(Debug, Default)]
struct Log {
    /// The server name of every TLS connection, handshake completed or not.
    connections: Vec<Option<String>>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Log>>;

/// A running fake API; stopped on drop.
#[derive(Debug)]
pub struct FakeApi {
    log: Shared,
    listener: Arc<TcpListener>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Serves on `listener` (bound by the caller, in whichever namespace the API lives) with
    /// `ca`'s certificate for [`HOSTS`].
    pub fn start(listener: TcpListener, ca: &TestCa) -> FakeApi {
        let config = ca.server_config();
        let listener = Arc::new(listener);
        let log = Shared::default();
        let open = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (listener, log, open) = (listener.clone(), log.clone(), open.clone());
            std::thread::spawn(move || {
                while let Ok((stream, _)) = listener.accept() {
                    if let Ok(clone) = stream.try_clone() {
                        open.lock().expect("open connections").push(clone);
                    }
                    let (config, log) = (config.clone(), log.clone());
                    std::thread::spawn(move || match serve(stream, config, &log) {
                        // Clients commonly close without a TLS close_notify.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                        Err(e) => eprintln!("fake API: connection ended: {e}"),
                        Ok(()) => {}
                    });
                }
            })
        };
        FakeApi {
            log,
            listener,
            open,
            thread: Some(thread),
        }
    }

    /// Everything received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("fake API log").seen.clone()
    }

    /// The model calls of `api` received so far.
    pub fn calls(&self, api: Api) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.call().is_some_and(|c| c.api() == api))
            .collect()
    }

    /// The server names of every TLS connection so far (`None`: the client sent none).
    pub fn connections(&self) -> Vec<Option<String>> {
        self.log.lock().expect("fake API log").connections.clone()
    }

    /// The server names that reached it (TLS connections, whether or not a request followed).
    pub fn hosts(&self) -> BTreeSet<String> {
        self.connections().into_iter().flatten().collect()
    }

    /// Every credential any request carried.
    pub fn credentials(&self) -> BTreeSet<String> {
        self.seen().iter().filter_map(Seen::credential).collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // SAFETY: shutdown of a socket `self` holds open; it wakes the blocked accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for stream in self.open.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// One connection: the handshake, then requests until the client closes.
fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>, log: &Shared) -> io::Result<()> {
    tcp.set_read_timeout(Some(IDLE))?;
    let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
    let handshake = loop {
        if !tls.is_handshaking() {
            break Ok(());
        }
        if let Err(e) = tls.complete_io(&mut tcp) {
            break Err(e);
        }
    };
    let sni = tls.server_name().map(str::to_owned);
    log.lock()
        .expect("fake API log")
        .connections
        .push(sni.clone());
    handshake?;
    let mut reader = BufReader::new(StreamOwned::new(tls, tcp));
    while let Some(request) = http::read_request(&mut reader)? {
        let seen = Seen {
            sni: sni.clone(),
            request,
            websocket_message: false,
        };
        log.lock().expect("fake API log").seen.push(seen.clone());
        if seen.request.is_websocket() {
            return websocket(&mut reader, seen, log);
        }
        answer(reader.get_mut(), &seen)?;
    }
    Ok(())
}

/// Answers one HTTP request.
fn answer(out: &mut Tls, seen: &Seen) -> io::Result<()> {
    let Some(call) = seen.call() else {
        let body = json!({"error": {"type": "not_found_error",
                                    "message": "not served by the fake model API"}});
        return http::respond(out, 404, "application/json", body.to_string().as_bytes());
    };
    let body = seen.json();
    if body.is_null() {
        let body = json!({"error": {"message": "the fake model API expects a JSON body"}});
        return http::respond(out, 400, "application/json", body.to_string().as_bytes());
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_owned();
    let turn = model::turn(call, &body);
    let event_stream = "text/event-stream";
    match call {
        Call::Messages if body["stream"] == true => {
            http::respond_streaming(out, event_stream, &model::messages_events(&model, &turn))
        }
        Call::Messages => {
            let message = model::messages_json(&model, &turn).to_string();
            http::respond(out, 200, "application/json", message.as_bytes())
        }
        Call::Responses => {
            let warm_up = body["generate"] == false;
            let events = model::responses_sse(&model, (!warm_up).then_some(&turn));
            http::respond_streaming(out, event_stream, &events)
        }
        Call::Generate { stream: true } if seen.request.target.contains("alt=sse") => {
            http::respond_streaming(out, event_stream, &model::gemini_sse(&turn))
        }
        Call::Generate { stream } => {
            let chunks = model::gemini_chunks(&turn, stream);
            // Without `alt=sse` a stream is one JSON array; `generateContent` one object.
            let body = match stream {
                true => Value::from(chunks),
                false => chunks.into_iter().next().unwrap_or_default(),
            };
            http::respond(out, 200, "application/json", body.to_string().as_bytes())
        }
    }
}

/// The Responses API's WebSocket: each `response.create` message is answered with the
/// response's events, one message each.
fn websocket(reader: &mut BufReader<Tls>, upgrade: Seen, log: &Shared) -> io::Result<()> {
    if upgrade.request.path() != "/v1/responses" {
        return http::respond(reader.get_mut(), 404, "text/plain", b"no WebSocket here\n");
    }
    http::accept_websocket(reader.get_mut(), &upgrade.request)?;
    let mut messages = http::MessageReader::default();
    loop {
        match messages.read(reader)? {
            http::Message::Close => {
                let _ = http::write_frame(reader.get_mut(), 0x8, &[]);
                return Ok(());
            }
            http::Message::Ping(payload) => http::write_frame(reader.get_mut(), 0xa, &payload)?,
            http::Message::Text(text) => {
                let mut seen = upgrade.clone();
                seen.request.body = text.into_bytes();
                seen.websocket_message = true;
                log.lock().expect("fake API log").seen.push(seen.clone());
                let body = seen.json();
                let model = body["model"].as_str().unwrap_or("fake-model");
                let turn = model::turn(Call::Responses, &body);
                let warm_up = body["generate"] == false;
                for event in model::responses_events(model, (!warm_up).then_some(&turn)) {
                    http::write_frame(reader.get_mut(), 0x1, event.to_string().as_bytes())?;
                }
                reader.get_mut().flush()?;
            }
        }
    }
}
