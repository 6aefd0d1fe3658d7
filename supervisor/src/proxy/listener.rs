//! The accept loop: one loop over every listener, a permit per open connection. The proxy's
//! listeners and the transparent path's hand-off listener (connections to inspected
//! endpoints) share it, and the cap.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::connection::{self, Shared};
use crate::log::RateLimit;

/// Serves one proxy connection, then forgets who connected it.
pub async fn serve_proxy(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let Ok(local) = client.local_addr() else {
        return;
    };
    let accepted = std::time::Instant::now();
    connection::serve(&shared, client, peer, local).await;
    shared.identifier.records.forget(peer, accepted);
}

/// Accepts connections on every listener forever and serves each with `serve` in a task of
/// its own. At the connection cap, accepting pauses (clients wait in the kernel's backlog);
/// running out of file descriptors pauses it briefly. Neither ever stops the loop. One loop
/// serves all its listeners, so that a permit is taken only by a connection that is actually
/// there, whichever address it came to.
pub async fn accept_loop<S, F>(listeners: Vec<TcpListener>, shared: Arc<Shared>, serve: S)
where
    S: Fn(Arc<Shared>, TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // Operational lines, not denials: their own limiters, summarised as such.
    let full = RateLimit::lines(1, Duration::from_secs(10), "connection limit reached");
    let failed = RateLimit::lines(5, Duration::from_secs(10), "accept failed");
    loop {
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full.allow() {
                    tracing::warn!(
                        layer = "proxy",
                        limit = shared.settings.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                }
                match shared.permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            }
        };
        let accepted = std::future::poll_fn(|cx| {
            listeners
                .iter()
                .find_map(|l| match l.poll_accept(cx) {
                    Poll::Ready(result) => Some(Poll::Ready(result)),
                    Poll::Pending => None,
                })
                .unwrap_or(Poll::Pending)
        })
        .await;
        match accepted {
            Ok((client, peer)) => {
                let served = serve(shared.clone(), client, peer);
                tokio::spawn(async move {
                    let _permit = permit;
                    served.await;
                });
            }
            Err(e) => {
                if failed.allow() {
                    tracing::error!(layer = "proxy", "accept failed: {e}; retrying shortly");
                }
                // EMFILE/ENFILE: wait for connections to close instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
