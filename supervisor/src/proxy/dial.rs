//! Dialling upstream: resolve once, keep the addresses the guard permits, connect to one of
//! them. The connection goes to an address that was checked, never to a second lookup (no DNS
//! rebinding between check and connect).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{caller, ssrf};
use crate::policy::{Endpoint, normalize_host};
use crate::workers;

/// Why no upstream connection was made.
#[derive(Debug)]
pub enum DialFailure {
    /// The address guard refused every address.
    Refused(String),
    /// No address could be reached.
    Unreachable(String),
    /// The proxy could not even make a socket.
    Overloaded(io::Error),
}

/// Resolves `host` once, keeps the addresses the guard permits, and connects to the first
/// that answers: the connection goes to an address that was checked, never to a second lookup.
pub async fn dial(
    connect_timeout: Duration,
    host: &str,
    port: u16,
    endpoints: &[&Endpoint],
) -> Result<TcpStream, DialFailure> {
    // The normalised name: "api.example.com." must resolve like "api.example.com", which
    // /etc/hosts (Kubernetes hostAliases) would not match with the dot.
    let name = normalize_host(host);
    // On a resolver thread made before the agent ran (workers.rs), not tokio's on-demand one.
    let lookup = timeout(connect_timeout, workers::resolve(name, port));
    let addresses: Vec<SocketAddr> = lookup
        .await
        .map_err(|_| {
            DialFailure::Unreachable(format!(
                "cannot resolve {host}: no answer within {:?}",
                connect_timeout
            ))
        })?
        .map_err(|e| DialFailure::Overloaded(e.into()))?
        .map_err(|e| DialFailure::Unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut refusals = Vec::new();
    let permitted: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|a| match ssrf::permit(a.ip(), endpoints) {
            Ok(()) => true,
            Err(reason) => {
                refusals.push(reason);
                false
            }
        })
        .collect();
    if permitted.is_empty() {
        return Err(match refusals.is_empty() {
            true => DialFailure::Unreachable(format!("{host} has no address")),
            false => DialFailure::Refused(refusals.join("; ")),
        });
    }
    let mut last = String::new();
    for address in permitted {
        match timeout(connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if caller::exhausted(&e) => return Err(DialFailure::Overloaded(e)),
            Ok(Err(e)) => last = format!("{address}: {e}"),
            Err(_) => last = format!("{address}: no answer within {:?}", connect_timeout),
        }
    }
    Err(DialFailure::Unreachable(last))
}
