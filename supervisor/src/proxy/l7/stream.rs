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

/// A stage that sees a body's bytes, decoded from their framing, as they arrive, and says
/// what to send on (credential placeholders replaced, real values redacted). It may hold
/// bytes back until the next call; with `at_end` it must release everything.
pub trait Filter {
    /// What to send for `data`.
    fn pass<'d>(&mut self, data: &'d [u8], at_end: bool) -> io::Result<Passed<'d>>;
}

/// What a [`Filter`] sends for one piece.
#[derive(Debug, PartialEq, Eq)]
pub enum Passed<'d> {
    /// These bytes of the piece, unchanged (the rest is held).
    Unchanged(&'d [u8]),
    /// These bytes instead of the piece (and of what was held before it).
    Rewritten(Vec<u8>),
}

impl Passed<'_> {
    /// The bytes to send.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Passed::Unchanged(b) => b,
            Passed::Rewritten(b) => b,
        }
    }
}

/// How a filtered body is framed for its receiver (its length may have changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (the filter must keep the length, or it was known before).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// A body's bytes without their framing, read piece by piece.
#[derive(Debug)]
pub struct Decoder {
    state: Decoding,
}

#[derive(Debug)]
enum Decoding {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl Decoder {
    /// Reads a body of `framing`.
    pub fn new(framing: Body) -> Decoder {
        let state = match framing {
            Body::Empty | Body::Length(0) => Decoding::Done,
            Body::Length(n) => Decoding::Length(n),
            Body::Chunked => Decoding::Chunked(Chunked::default()),
            Body::UntilClose => Decoding::UntilClose,
        };
        Decoder { state }
    }

    /// Appends the next bytes of the body to `out` (from `buffered`, then `src`); returns
    /// whether the body ended. Bytes past the body stay in `buffered`.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        buffered: &mut Buffered,
        src: &mut R,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        loop {
            match &mut self.state {
                Decoding::Done => return Ok(true),
                Decoding::Length(left) => {
                    let n = match buffered.bytes.is_empty() {
                        false => {
                            let take = (buffered.bytes.len() as u64).min(*left) as usize;
                            out.extend_from_slice(&buffered.bytes[..take]);
                            buffered.consume(take);
                            take
                        }
                        // Straight into `out`, never past the body (a pipelined message
                        // may follow it).
                        true => read_into(src, out, (*left).min(TRANSFER as u64)).await?,
                    };
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "body ended early",
                        ));
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = Decoding::Done;
                    }
                    return Ok(matches!(self.state, Decoding::Done));
                }
                Decoding::UntilClose => {
                    if !buffered.bytes.is_empty() {
                        out.extend_from_slice(&buffered.bytes);
                        buffered.consume(buffered.bytes.len());
                        return Ok(false);
                    }
                    if read_into(src, out, TRANSFER as u64).await? == 0 {
                        self.state = Decoding::Done;
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Decoding::Chunked(scanner) => {
                    let mut i = 0;
                    let bytes = &buffered.bytes;
                    while i < bytes.len() && *scanner != Chunked::Done {
                        let step = match *scanner {
                            // Data: as much as is there; framing: one byte at a time.
                            Chunked::Data(left) => left.min((bytes.len() - i) as u64) as usize,
                            _ => 1,
                        };
                        let data = matches!(*scanner, Chunked::Data(_));
                        scanner
                            .advance(&bytes[i..i + step])
                            .map_err(io::Error::other)?;
                        if data {
                            out.extend_from_slice(&bytes[i..i + step]);
                        }
                        i += step;
                    }
                    let done = *scanner == Chunked::Done;
                    buffered.consume(i);
                    if done {
                        self.state = Decoding::Done;
                        return Ok(true);
                    }
                    if !out.is_empty() {
                        return Ok(false);
                    }
                    // Inside a long chunk: its data straight into `out`.
                    if let Chunked::Data(left) = *scanner {
                        let n = read_into(src, out, left.min(TRANSFER as u64)).await?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "chunked body ended early",
                            ));
                        }
                        let start = out.len() - n;
                        scanner.advance(&out[start..]).map_err(io::Error::other)?;
                        return Ok(false);
                    }
                    if buffered.fill(src).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "chunked body ended early",
                        ));
                    }
                }
            }
        }
    }

    /// Reads the body until it ends or more than `limit` bytes were read; returns them and
    /// whether it ended.
    pub async fn read_up_to<R: AsyncRead + Unpin>(
        &mut self,
        buffered: &mut Buffered,
        src: &mut R,
        limit: usize,
    ) -> io::Result<(Vec<u8>, bool)> {
        let mut body = Vec::new();
        loop {
            let ended = self.next(buffered, src, &mut body).await?;
            if ended || body.len() > limit {
                return Ok((body, ended));
            }
        }
    }
}

/// Reads at most `limit` bytes from `src` onto the end of `out`; 0 at end of stream.
async fn read_into<R: AsyncRead + Unpin>(
    src: &mut R,
    out: &mut Vec<u8>,
    limit: u64,
) -> io::Result<usize> {
    out.reserve(limit as usize);
    (&mut *src).take(limit).read_buf(out).await
}

/// Writes every byte of `parts`, in order, with as few writes as the stream takes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    dst: &mut W,
    parts: &mut [&[u8]],
) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<io::IoSlice<'_>> =
            parts[first..].iter().map(|p| io::IoSlice::new(p)).collect();
        let mut n = dst.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while first < parts.len() && n >= parts[first].len() {
            n -= parts[first].len();
            first += 1;
        }
        if first < parts.len() {
            parts[first] = &parts[first][n..];
        }
    }
    Ok(())
}

/// Streams a body through `filter`: `first` (already read, `ended` if that was all), then
/// the rest from `decoder`, each piece sent as it passes (flushed: streaming bodies are not
/// held back) in the receiver's `framing`.
#[allow(clippy::too_many_arguments)]
pub async fn copy_filtered<R, W>(
    decoder: &mut Decoder,
    first: Vec<u8>,
    mut ended: bool,
    buffered: &mut Buffered,
    src: &mut R,
    dst: &mut W,
    framing: Framing,
    activity: &Activity,
    filter: &mut (dyn Filter + Send),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut piece = first;
    let mut sent = 0u64;
    loop {
        let passed = filter.pass(&piece, ended)?;
        let bytes = passed.bytes();
        if !bytes.is_empty() {
            sent += bytes.len() as u64;
            if matches!(framing, Framing::Length(n) if sent > n) {
                return Err(io::Error::other("filtered body longer than its length"));
            }
            match framing {
                // One write for the chunk and its framing: over TLS, one run of records
                // instead of two tiny ones around the data.
                Framing::Chunked => {
                    let size = format!("{:x}\r\n", bytes.len());
                    write_all_vectored(dst, &mut [size.as_bytes(), bytes, b"\r\n"]).await?;
                }
                Framing::Length(_) | Framing::UntilClose => dst.write_all(bytes).await?,
            }
            dst.flush().await?;
            activity.touch();
        }
        if ended {
            break;
        }
        piece.clear();
        ended = decoder.next(buffered, src, &mut piece).await?;
    }
    match framing {
        Framing::Chunked => dst.write_all(b"0\r\n\r\n").await?,
        Framing::Length(n) if sent != n => {
            return Err(io::Error::other("filtered body shorter than its length"));
        }
        Framing::Length(_) | Framing::UntilClose => {}
    }
    dst.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// `bytes` in a buffer of a budget without limit.
    fn unbudgeted(bytes: Vec<u8>) -> Buffered {
        Buffered::adopt(bytes, &crate::proxy::budget::Budget::new(usize::MAX).open())
    }

    /// Passes everything, upper-cased (a length-keeping change).
    struct Upper;

    impl Filter for Upper {
        fn pass<'d>(&mut self, data: &'d [u8], _: bool) -> io::Result<Passed<'d>> {
            Ok(Passed::Rewritten(data.to_ascii_uppercase()))
        }
    }

    /// A chunked body (with an extension and a trailer) followed by the next message, read
    /// with the body's bytes arriving in two reads cut anywhere: the data comes out whole,
    /// re-framed chunked, and the next message stays buffered.
    #[test]
    fn chunked_bodies_are_decoded_across_any_split_and_reframed() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for cut in 0..wire.len() {
            let (mut buffered, rest) = (unbudgeted(wire[..cut].to_vec()), &wire[cut..]);
            let mut src: &[u8] = rest;
            let mut out = Vec::new();
            let mut decoder = Decoder::new(Body::Chunked);
            block_on(copy_filtered(
                &mut decoder,
                Vec::new(),
                false,
                &mut buffered,
                &mut src,
                &mut out,
                Framing::Chunked,
                &Activity::new(),
                &mut Upper,
            ))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let mut data = Vec::new();
            let mut reread = Decoder::new(Body::Chunked);
            let mut framed = unbudgeted(out);
            while !block_on(reread.next(&mut framed, &mut &b""[..], &mut data)).unwrap() {}
            assert_eq!(data, b"HELLO WORLD", "cut at {cut}");
            let mut left = buffered.bytes.clone();
            left.extend_from_slice(src);
            assert_eq!(left, b"NEXT", "cut at {cut}");
        }
    }

    #[test]
    fn a_length_body_must_keep_its_length() {
        struct Longer;
        impl Filter for Longer {
            fn pass<'d>(&mut self, data: &'d [u8], _: bool) -> io::Result<Passed<'d>> {
                Ok(Passed::Rewritten([data, b"!"].concat()))
            }
        }
        let mut src: &[u8] = b"abc";
        let mut out = Vec::new();
        let result = block_on(copy_filtered(
            &mut Decoder::new(Body::Length(3)),
            Vec::new(),
            false,
            &mut unbudgeted(Vec::new()),
            &mut src,
            &mut out,
            Framing::Length(3),
            &Activity::new(),
            &mut Longer,
        ));
        assert!(result.is_err());
    }
}
