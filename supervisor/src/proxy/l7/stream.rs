//! Byte plumbing for inspected connections: the upstream side (plain or TLS), bytes already
//! read put back in front of a stream, and message bodies streamed by their framing.
//!
//! Buffers live in two places only: each side's [`Buffered`] read buffer (request or
//! response heads, and body bytes read along with them), and the transfer buffer a body copy
//! borrows while it runs. Both are charged to the connection's account of the proxy's memory
//! budget (see [`crate::proxy::budget`]), as is a TLS session's state. A later stage that
//! rewrites bodies (credential placeholders) sits in [`copy_body`], the one place body bytes
//! pass.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub use crate::proxy::budget::Buffered;
use crate::proxy::budget::Charge;
use crate::proxy::http::{Body, Chunked};
use crate::proxy::relay::Activity;

/// Largest read in one step of a body copy: a few TLS records.
const TRANSFER: usize = 64 * 1024;

/// The connection to the upstream server.
#[derive(Debug)]
pub enum Upstream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS, verified; its session state charged to the connection.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Charge),
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream with bytes already read from it put back in front (the client's first bytes,
/// read to tell TLS from HTTP, or sent early behind its CONNECT).
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, whose next reads return `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            if this.prefix.is_empty() {
                this.prefix = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Streams one body of `framing` from `src` (after what `buffered` already holds) to `dst`,
/// byte for byte, flushing each piece as it arrives (server-sent events and other streaming
/// responses are not held back). Bytes past the body stay in `buffered`. An until-close body
/// ends with `src`.
pub async fn copy_body<R, W>(
    framing: Body,
    buffered: &mut Buffered,
    src: &mut R,
    dst: &mut W,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scratch = Vec::new();
    let mut charge = buffered.account().charge();
    match framing {
        Body::Empty => Ok(()),
        Body::Length(mut left) => {
            let ready = (buffered.bytes.len() as u64).min(left) as usize;
            if ready > 0 {
                dst.write_all(&buffered.bytes[..ready]).await?;
                buffered.consume(ready);
                left -= ready as u64;
            }
            while left > 0 {
                let want = left.min(TRANSFER as u64) as usize;
                charge.resize(charge.bytes().max(want)).await?;
                scratch.resize(want, 0);
                let n = src.read(&mut scratch[..want]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body ended early",
                    ));
                }
                dst.write_all(&scratch[..n]).await?;
                dst.flush().await?;
                left -= n as u64;
                activity.touch();
            }
            dst.flush().await
        }
        Body::Chunked => {
            let mut scanner = Chunked::default();
            loop {
                let consumed = scanner.advance(&buffered.bytes).map_err(io::Error::other)?;
                if consumed > 0 {
                    dst.write_all(&buffered.bytes[..consumed]).await?;
                    dst.flush().await?;
                    buffered.consume(consumed);
                    activity.touch();
                }
                if scanner == Chunked::Done {
                    return Ok(());
                }
                if buffered.fill(src).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked body ended early",
                    ));
                }
            }
        }
        Body::UntilClose => {
            if !buffered.bytes.is_empty() {
                dst.write_all(&buffered.bytes).await?;
                buffered.consume(buffered.bytes.len());
            }
            dst.flush().await?;
            charge.resize(TRANSFER).await?;
            scratch.resize(TRANSFER, 0);
            loop {
                let n = src.read(&mut scratch).await?;
                if n == 0 {
                    return Ok(());
                }
                dst.write_all(&scratch[..n]).await?;
                dst.flush().await?;
                activity.touch();
            }
        }
    }
}
