//! Responses on a bound endpoint: every real value the server echoes (an error message
//! quoting the key, a debug endpoint reflecting headers) replaced by its placeholder before
//! the agent sees it.
//!
//! Headers are searched whole. A body of at most [`BUFFERED`] bytes with a length is searched
//! whole and sent with its new length; any other body streams through the search (a value
//! split across reads is still found; only bytes that could start one are held back, so
//! server-sent events flow) and is sent chunked to an HTTP/1.1 client, or until close to an
//! HTTP/1.0 one. The request asked for `Accept-Encoding: identity`; a server that compresses
//! anyway cannot be searched, so its response is refused (502) rather than passed unseen.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::body::{BUFFERED, Plan, RedactFilter, Unservable, set_length};
use crate::proxy::http::{self, Body, Response};
use crate::proxy::l7::rest::RequestHead;
use crate::proxy::l7::stream::{Buffered, Decoder, Filter, Framing, copy_filtered};
use crate::proxy::relay::Activity;

/// Replaces every value in `headers`.
pub fn headers(filter: &RedactFilter<'_>, headers: &mut [(String, Vec<u8>)]) {
    for (_, value) in headers.iter_mut() {
        if let Some(clean) = filter.whole(value) {
            *value = clean;
        }
    }
}

/// Relays the final `response` (its head read and its headers already cleaned by
/// [`headers`], its body `body`) to `client` with every value replaced. Returns whether the
/// client and upstream connections may be kept.
#[allow(clippy::too_many_arguments)]
pub async fn relay<W, R>(
    plan: &Plan<'_>,
    client: &mut W,
    head: &RequestHead,
    mut response: Response,
    body: Body,
    upstream: &mut R,
    up_buffered: &mut Buffered,
    activity: &Activity,
    answered: &AtomicBool,
) -> io::Result<(bool, bool)>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut filter = plan.redact_filter()?;
    let upstream_keep = response.keep_alive() && body != Body::UntilClose;
    let compressed = http::tokens(&response.headers, "content-encoding")
        .iter()
        .any(|c| c != "identity");
    if compressed && body != Body::Empty {
        return Err(Unservable {
            status: 502,
            error: "upstream_response_refused",
            why: "the server compressed a response on an endpoint with credentials although \
                  identity was asked for; it cannot be searched for echoed values",
        }
        .error());
    }
    let mut decoder = Decoder::new(body);
    let whole =
        matches!(body, Body::Empty) || matches!(body, Body::Length(n) if n <= BUFFERED as u64);
    if whole {
        let (bytes, _) = decoder.read_up_to(up_buffered, upstream, BUFFERED).await?;
        let clean = filter.pass(&bytes, true)?;
        let clean = clean.bytes();
        let client_keep = head.keep_alive;
        if body != Body::Empty {
            set_length(&mut response.headers, Some(clean.len()));
        }
        answered.store(true, Ordering::Relaxed);
        client.write_all(&response.client_head(client_keep)).await?;
        client.write_all(clean).await?;
        client.flush().await?;
        return Ok((client_keep, upstream_keep));
    }
    let (framing, client_keep) = match head.minor {
        0 => {
            set_length(&mut response.headers, None);
            response
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("transfer-encoding"));
            (Framing::UntilClose, false)
        }
        _ => {
            set_length(&mut response.headers, None);
            (Framing::Chunked, head.keep_alive)
        }
    };
    answered.store(true, Ordering::Relaxed);
    client.write_all(&response.client_head(client_keep)).await?;
    client.flush().await?;
    copy_filtered(
        &mut decoder,
        Vec::new(),
        false,
        up_buffered,
        upstream,
        client,
        framing,
        activity,
        &mut filter,
    )
    .await?;
    Ok((client_keep, upstream_keep))
}
