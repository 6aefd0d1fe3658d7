//! Websocket messages on a connection whose frames the credentials must read: client
//! messages searched for placeholders (replaced in text messages where the endpoint opts
//! in, refused elsewhere), server messages searched for real values (replaced).
//!
//! Each data frame of at most [`MAX_FRAME`] bytes is read whole, unmasked, passed through the
//! message's filter (a placeholder split across the fragments of a message is still found)
//! and sent as a frame of its new length, masked with its own key again. Control frames pass
//! as they are. The upgrade request carried no `Sec-WebSocket-Extensions`, so frames are
//! never compressed; a frame with a reserved bit set cannot be read and ends the connection.
//! A larger data frame is refused where values are put in or taken out (its length cannot
//! change while it streams), and passed unread where placeholders are only searched for (no
//! credential is bound there: nothing could be resolved or leaked).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::body::{Mode, Plan};
use crate::proxy::l7::stream::{Buffered, Filter};
use crate::proxy::relay::Activity;

/// Largest data frame read whole.
pub const MAX_FRAME: u64 = 1024 * 1024;

/// Which way frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (masked): placeholders.
    Outbound,
    /// Server to client: real values.
    Inbound,
}

/// Why a frame relay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame that cannot be read here.
    #[error("{0}")]
    Unreadable(&'static str),
}

struct FrameHead {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    head_len: usize,
}

fn parse(bytes: &[u8]) -> Option<FrameHead> {
    let (&b0, rest) = bytes.split_first()?;
    let &b1 = rest.first()?;
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = match b1 & 0x80 != 0 {
        true => {
            let key: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(key)
        }
        false => None,
    };
    Some(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        mask,
        len,
        head_len: at,
    })
}

fn unmask(payload: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        unmask(&mut out[body..], key, 0);
    }
    out
}

/// Reads exactly `n` bytes (after what `buffered` holds) into a new buffer; the stream
/// ending first cuts the frame short.
async fn read_exact<R: AsyncRead + Unpin>(
    buffered: &mut Buffered,
    src: &mut R,
    n: usize,
) -> io::Result<Vec<u8>> {
    while buffered.bytes.len() < n {
        if buffered.fill(src).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "websocket frame cut short",
            ));
        }
    }
    let out = buffered.bytes[..n].to_vec();
    buffered.consume(n);
    Ok(out)
}

/// Relays frames from `src` to `dst` in `direction` under `plan` until `src` ends (its end
/// passed on as a half-close).
pub async fn relay<R, W>(
    plan: &Plan<'_>,
    direction: Direction,
    buffered: &mut Buffered,
    mut src: R,
    mut dst: W,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut message: Option<Box<dyn Filter + Send + '_>> = None;
    loop {
        // The head: at most 14 bytes, read as they come.
        let head = loop {
            if let Some(head) = parse(&buffered.bytes) {
                break head;
            }
            if buffered.fill(&mut src).await? == 0 {
                if !buffered.bytes.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "websocket frame head cut short",
                    ));
                }
                let _ = dst.shutdown().await;
                return Ok(());
            }
        };
        if head.rsv != 0 {
            return Err(io::Error::other(FrameError::Unreadable(
                "a websocket frame uses an extension (reserved bits set), so its payload \
                 cannot be searched for credentials",
            )));
        }
        let raw_head = buffered.bytes[..head.head_len].to_vec();
        buffered.consume(head.head_len);
        let control = head.opcode >= 8;
        let readable = head.len <= MAX_FRAME;
        if control || (!readable && passes_unread(plan, direction)) {
            if !control && let Some(filter) = message.as_mut() {
                // What the message's filter holds goes out first, in a frame of its own.
                let held = filter.pass(&[], true)?.bytes().to_vec();
                if !held.is_empty() {
                    dst.write_all(&frame(false, 0, head.mask, &held)).await?;
                }
            }
            dst.write_all(&raw_head).await?;
            copy_exact(buffered, &mut src, &mut dst, head.len).await?;
            dst.flush().await?;
            activity.touch();
            if !control && head.fin {
                message = None;
            }
            continue;
        }
        if !readable {
            return Err(io::Error::other(FrameError::Unreadable(
                "a websocket frame larger than 1 MiB on a connection whose messages carry \
                 credentials cannot be searched",
            )));
        }
        let mut payload = read_exact(buffered, &mut src, head.len as usize).await?;
        if let Some(key) = head.mask {
            unmask(&mut payload, key, 0);
        }
        if message.is_none() || head.opcode != 0 {
            message = Some(new_filter(plan, direction, head.opcode)?);
        }
        let Some(filter) = message.as_mut() else {
            continue;
        };
        let passed = filter.pass(&payload, head.fin)?;
        dst.write_all(&frame(head.fin, head.opcode, head.mask, passed.bytes()))
            .await?;
        dst.flush().await?;
        activity.touch();
        if head.fin {
            message = None;
        }
    }
}

/// Whether an unreadable (large) data frame may pass: only where placeholders are merely
/// searched for.
fn passes_unread(plan: &Plan<'_>, direction: Direction) -> bool {
    direction == Direction::Outbound && plan.frames == Mode::Scan && !plan.redact
}

/// The filter for a message starting with a frame of `opcode`.
fn new_filter<'p>(
    plan: &'p Plan<'_>,
    direction: Direction,
    opcode: u8,
) -> io::Result<Box<dyn Filter + Send + 'p>> {
    Ok(match direction {
        Direction::Inbound => Box::new(plan.redact_filter()?),
        // Values go into text messages only: a binary one has its own framing inside.
        Direction::Outbound => match (plan.frames, opcode) {
            (Mode::Rewrite(_), 1) => {
                Box::new(plan.placeholder_filter(plan.frames, "websocket message"))
            }
            _ => Box::new(plan.placeholder_filter(Mode::Scan, "websocket message")),
        },
    })
}

async fn copy_exact<R, W>(
    buffered: &mut Buffered,
    src: &mut R,
    dst: &mut W,
    mut left: u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while left > 0 {
        if buffered.bytes.is_empty() && buffered.fill(src).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "websocket frame cut short",
            ));
        }
        let take = (buffered.bytes.len() as u64).min(left) as usize;
        dst.write_all(&buffered.bytes[..take]).await?;
        buffered.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// A close frame with `code` and `reason`, as the proxy sends it to the client when it ends
/// a websocket (server frames are not masked).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    frame(true, 8, None, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_mask() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let key = [1, 2, 3, 4];
            let bytes = frame(true, 1, Some(key), &payload);
            let head = parse(&bytes).unwrap();
            assert!(head.fin && head.opcode == 1 && head.rsv == 0);
            assert_eq!((head.len, head.mask), (len as u64, Some(key)));
            let mut body = bytes[head.head_len..].to_vec();
            unmask(&mut body, key, 0);
            assert_eq!(body, payload);
        }
        assert!(parse(&[0x81]).is_none());
        assert!(parse(&[0x81, 0xfe, 0]).is_none());
        let close = close_frame(1008, "policy");
        assert_eq!(&close[..4], &[0x88, 8, 0x03, 0xf0]);
    }
}
