//! Plain tunnels (L4 endpoints through the proxy) when the policy has credentials: what the
//! client sends is searched for placeholders, since none can be resolved there.
//!
//! The proxy puts no value into a tunnel, so a placeholder sent through one reaches the
//! server as it is and reveals nothing; it is refused anyway, and logged, because it means a
//! client sending its key where the policy did not bind it. Only what the proxy can read is
//! searched: the bytes of a plain protocol, not those inside a TLS session the client runs
//! through the tunnel (and a direct `protocol: tcp` connection is the agent's own socket,
//! which the proxy never reads). Bytes from the client are copied through the proxy's memory
//! instead of spliced; the server's direction stays spliced.

use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::TcpStream;

use super::scan::Stream;
use super::{Credentials, Encoding, Refused};
use crate::policy::CredentialSet;
use crate::proxy::budget::{Account, Buffered};
use crate::proxy::connection::{read_more, write_all};
use crate::proxy::relay::{self, Activity, Pipe};

/// How a searched tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides finished, or the tunnel idled out or failed.
    Closed,
    /// The client sent a placeholder; `forwarded` bytes had gone to the server before it.
    Refused {
        /// Why.
        refused: Refused,
        /// Bytes the server received before the refusal.
        forwarded: u64,
    },
}

impl Credentials {
    /// Relays a tunnel, `early` (bytes the client sent with its CONNECT) first, searching the
    /// client's direction for placeholders, through a buffer charged to `account`.
    pub async fn tunnel(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        early: &[u8],
        account: &Account,
        down_pipe: &Pipe,
        idle: Duration,
    ) -> Ended {
        let activity = Activity::new();
        let up = self.search_up(client, upstream, early, account, &activity);
        let down = async {
            let moved = relay::copy(upstream, client, down_pipe, None, &activity).await;
            // SAFETY: shutdown of the write side of a connected socket we hold.
            unsafe { libc::shutdown(client.as_raw_fd(), libc::SHUT_WR) };
            moved.map(drop)
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut up, if !up_done => match result {
                    Err(Searched::Refused(refused, forwarded)) => {
                        return Ended::Refused { refused, forwarded };
                    }
                    Err(Searched::Broken) => return Ended::Closed,
                    Ok(()) => up_done = true,
                },
                result = &mut down, if !down_done => match result {
                    Err(_) => return Ended::Closed,
                    Ok(()) => down_done = true,
                },
                () = activity.idle_for(idle) => return Ended::Closed,
            }
            if up_done && down_done {
                return Ended::Closed;
            }
        }
    }

    /// The refusal for the first placeholder in `bytes` (a whole message), if any.
    pub fn search(&self, bytes: &[u8], place: &'static str) -> Option<Refused> {
        let hit = self.placeholders().find(bytes).next()?;
        self.resolve(bytes, hit, true, CredentialSet::EMPTY, Encoding::Raw, place)
            .err()
    }

    async fn search_up(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        early: &[u8],
        account: &Account,
        activity: &Activity,
    ) -> Result<(), Searched> {
        let mut forwarded = 0u64;
        let mut stream = Stream::default();
        let mut buf = Buffered::new(account);
        let mut pending = early.to_vec();
        loop {
            let at_end = pending.is_empty();
            let data: &[u8] = match at_end {
                false => &pending,
                true => {
                    buf.consume(buf.bytes.len());
                    read_more(client, &mut buf)
                        .await
                        .map_err(|_| Searched::Broken)?;
                    &buf.bytes
                }
            };
            let ended = at_end && data.is_empty();
            let passed = stream
                .pass(self.placeholders(), data, ended, true, |text, hit| {
                    self.resolve(
                        text,
                        hit,
                        ended,
                        CredentialSet::EMPTY,
                        Encoding::Raw,
                        "tunnel",
                    )
                })
                .map_err(|refused| Searched::Refused(refused, forwarded))?;
            let bytes = passed.bytes();
            write_all(upstream, bytes)
                .await
                .map_err(|_| Searched::Broken)?;
            forwarded += bytes.len() as u64;
            activity.touch();
            pending.clear();
            if ended {
                // SAFETY: shutdown of the write side of a connected socket we hold.
                unsafe { libc::shutdown(upstream.as_raw_fd(), libc::SHUT_WR) };
                return Ok(());
            }
        }
    }
}

enum Searched {
    /// With the bytes forwarded before.
    Refused(Refused, u64),
    /// Either side failed.
    Broken,
}
