//! The bidirectional copy.
//!
//! Each direction is a [`Pipe`]: one buffer, filled by a read only once the previous
//! bytes are written out, so a slow reader on one side stops reading from the other side
//! (TCP flow control, or the Serval flow's window, pushes back to the sender) and memory
//! per connection is at most two buffers. A direction holds its buffer only while bytes
//! are in it: a read that finds nothing (`Pending`) hands the buffer back to a small
//! process-wide [`pool`], so an idle connection holds none (100 000 idle connections
//! would otherwise pin 6 GiB of 32 KiB buffers), and the next readiness takes one again
//! (a lock and a pop, no allocation, while the pool has spares). When a side's read returns end of stream, the
//! pipe flushes and **shuts down the write half of the other side** (a FIN on TCP, our FIN
//! on a Serval flow) and the opposite direction keeps running: the half-close TCP
//! applications rely on (`shutdown(SHUT_WR)` after a request, then read the whole answer).
//! The original translator closed both sockets on the first EOF; so did Envoy before its
//! PR #2386.
//!
//! Timeouts are inactivity timeouts measured on the tokio clock (so tests drive them with
//! `tokio::time::pause`): the idle timeout while both directions are open, and the
//! (normally shorter or off) half-close timeout once one direction has finished. Moving
//! any byte in either direction restarts them. The timer is re-armed lazily: progress only
//! records the time, and an expired timer checks whether the deadline really passed.

use core::future::{Future, poll_fn};
use core::pin::Pin;
use core::task::{Context, Poll, ready};
use core::time::Duration;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Settings of one relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Close when nothing moved either way for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Once one direction has finished, close when nothing moved for this long; `None` =
    /// only `idle_timeout` applies.
    pub half_close_timeout: Option<Duration>,
    /// Bytes buffered per direction (at least 1).
    pub buffer_size: usize,
}

impl Default for RelayConfig {
    /// The policy defaults: idle 1 h, no half-close timeout, 32 KiB per direction.
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(3600)),
            half_close_timeout: None,
            buffer_size: 32 << 10,
        }
    }
}

/// One end of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The connection that was accepted (the legacy client on the client role, the Serval
    /// flow on the server role).
    Inbound,
    /// The connection the translator opened.
    Outbound,
}

impl Side {
    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// How a relayed connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions reached end of stream and were shut down: a clean close.
    Finished,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// One direction had finished and nothing moved for the half-close timeout.
    HalfCloseTimeout,
    /// A side reset the connection (or vanished: broken pipe, not connected).
    Reset(Side),
    /// Another I/O error on a side.
    Error(Side, io::ErrorKind),
    /// The caller stopped the relay (drain deadline, shutdown).
    Stopped,
}

impl Outcome {
    /// A fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::IdleTimeout => "idle_timeout",
            Self::HalfCloseTimeout => "half_close_timeout",
            Self::Reset(Side::Inbound) => "reset_inbound",
            Self::Reset(Side::Outbound) => "reset_outbound",
            Self::Error(Side::Inbound, _) => "error_inbound",
            Self::Error(Side::Outbound, _) => "error_outbound",
            Self::Stopped => "stopped",
        }
    }

    /// Whether the close was clean. On anything else the caller should reset the side that
    /// is still open (RST, not FIN), so its peer cannot take a truncated stream for a
    /// complete one.
    pub fn is_clean(&self) -> bool {
        matches!(self, Self::Finished)
    }
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Error(side, kind) => write!(f, "error on {} side: {kind}", side.as_str()),
            Self::Reset(side) => write!(f, "reset by {} side", side.as_str()),
            other => f.write_str(other.label()),
        }
    }
}

/// What a relayed connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayReport {
    /// Bytes written to the outbound side (read from the inbound side).
    pub inbound_to_outbound: u64,
    /// Bytes written to the inbound side.
    pub outbound_to_inbound: u64,
    /// Time from the start of the relay to its end (tokio clock).
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// A direction's failure: which operation failed decides which side is blamed.
enum PipeError {
    Read(io::Error),
    Write(io::Error),
}

/// Relay buffers not in use, shared by every connection of the process.
mod pool {
    use std::sync::{Mutex, PoisonError};

    /// Most spare buffers kept (2 MiB at the default 32 KiB): enough for the directions
    /// that are busy at once on a loaded translator; beyond it buffers go back to the
    /// allocator.
    const SPARES: usize = 64;

    static FREE: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

    /// A buffer of `size` bytes: a spare, or a new one.
    pub(super) fn take(size: usize) -> Box<[u8]> {
        let spare = FREE.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match spare {
            Some(b) if b.len() == size => b,
            // None, or a spare of a size a reload changed: a new one.
            _ => vec![0; size].into_boxed_slice(),
        }
    }

    /// Gives `buf` back.
    pub(super) fn give(buf: Box<[u8]>) {
        let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < SPARES {
            free.push(buf);
        }
    }
}

/// One direction: a buffer (while bytes are in it) between a reader and a writer.
struct Pipe {
    /// Held from a read that returned bytes until they are written and the next read finds
    /// nothing; `None` while the direction is idle.
    buf: Option<Box<[u8]>>,
    size: usize,
    /// Bytes `pos..cap` of `buf` are read but not yet written.
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    written: u64,
}

impl Pipe {
    fn new(size: usize) -> Self {
        Self {
            buf: None,
            size: size.max(1),
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            need_flush: false,
            written: 0,
        }
    }

    /// Moves bytes until the reader or the writer is not ready (`Pending`), or the
    /// direction is finished (`Ready(Ok)`: end of stream reached and the writer shut down).
    /// Sets `progress` when any byte moved.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        progress: &mut bool,
    ) -> Poll<Result<(), PipeError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.eof {
                let mut buf = self.buf.take().unwrap_or_else(|| pool::take(self.size));
                let mut rb = ReadBuf::new(&mut buf);
                let polled = reader.as_mut().poll_read(cx, &mut rb);
                let n = rb.filled().len();
                match polled {
                    Poll::Pending => {
                        // Idle: the buffer goes back (a `Pending` read leaves nothing in
                        // it), then push out what was written so far, so a writer that
                        // buffers does not sit on it.
                        pool::give(buf);
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx)).map_err(PipeError::Write)?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        pool::give(buf);
                        return Poll::Ready(Err(PipeError::Read(e)));
                    }
                    Poll::Ready(Ok(())) => {
                        // End of stream is activity too: the half-close timeout counts
                        // from it, not from the last byte before it.
                        *progress = true;
                        if n == 0 {
                            self.eof = true;
                            pool::give(buf);
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            while let Some(buf) = &self.buf
                && self.pos < self.cap
            {
                let n = ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))
                    .map_err(PipeError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PipeError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
                *progress = true;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(PipeError::Write)?;
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(PipeError::Write)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
    }
}

/// Classifies a direction's error: a read error is the reader's side, a write error the
/// writer's. Resets, aborts, broken pipes and "not connected" (a shutdown after the peer
/// vanished) mean the side is gone; other kinds are reported as they are.
fn classify(err: PipeError, reader: Side, writer: Side) -> Outcome {
    let (side, e) = match err {
        PipeError::Read(e) => (reader, e),
        PipeError::Write(e) => (writer, e),
    };
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => Outcome::Reset(side),
        kind => Outcome::Error(side, kind),
    }
}

/// Relays between `inbound` and `outbound` until both directions finish, a timeout fires or
/// a side fails. See the module docs for half-close and timeouts.
pub async fn relay<A, B>(inbound: &mut A, outbound: &mut B, config: &RelayConfig) -> RelayReport
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_until(inbound, outbound, config, core::future::pending::<()>()).await
}

/// [`relay`] that also ends, with [`Outcome::Stopped`], when `stop` completes (the end of a
/// drain's grace period, for example).
pub async fn relay_until<A, B, S>(
    inbound: &mut A,
    outbound: &mut B,
    config: &RelayConfig,
    stop: S,
) -> RelayReport
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: Future<Output = ()>,
{
    let start = Instant::now();
    let mut up = Pipe::new(config.buffer_size);
    let mut down = Pipe::new(config.buffer_size);
    let mut last_progress = start;
    // The limit the timer is armed for; `None` while no timeout applies.
    let mut armed: Option<Duration> = None;
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(start));
    let mut stop = core::pin::pin!(stop);

    let outcome = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Outcome::Stopped);
        }
        let mut progress = false;
        if !up.done
            && let Poll::Ready(Err(e)) = up.poll_copy(
                cx,
                Pin::new(&mut *inbound),
                Pin::new(&mut *outbound),
                &mut progress,
            )
        {
            return Poll::Ready(classify(e, Side::Inbound, Side::Outbound));
        }
        if !down.done
            && let Poll::Ready(Err(e)) = down.poll_copy(
                cx,
                Pin::new(&mut *outbound),
                Pin::new(&mut *inbound),
                &mut progress,
            )
        {
            return Poll::Ready(classify(e, Side::Outbound, Side::Inbound));
        }
        if up.done && down.done {
            return Poll::Ready(Outcome::Finished);
        }
        if progress {
            last_progress = Instant::now();
        }

        let half_closed = up.done || down.done;
        let (limit, on_expiry) = match (half_closed, config.half_close_timeout) {
            (true, Some(h)) if config.idle_timeout.is_none_or(|i| h < i) => {
                (Some(h), Outcome::HalfCloseTimeout)
            }
            _ => (config.idle_timeout, Outcome::IdleTimeout),
        };
        let Some(limit) = limit else {
            armed = None;
            return Poll::Pending;
        };
        loop {
            // A deadline past what the clock can hold never comes: no timer then.
            let Some(deadline) = last_progress.checked_add(limit) else {
                return Poll::Pending;
            };
            if armed != Some(limit) || timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
                armed = Some(limit);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                return Poll::Ready(on_expiry);
            }
            // Progress since the timer was armed: re-arm at the later deadline.
            timer.as_mut().reset(deadline);
        }
    })
    .await;

    RelayReport {
        inbound_to_outbound: up.written,
        outbound_to_inbound: down.written,
        duration: Instant::now().saturating_duration_since(start),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Polls `pipe` once from `from` to `to`; returns whether it is pending.
    async fn poll_once<R, W>(pipe: &mut Pipe, from: &mut R, to: &mut W) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut progress = false;
        poll_fn(|cx| {
            Poll::Ready(
                pipe.poll_copy(cx, Pin::new(&mut *from), Pin::new(&mut *to), &mut progress)
                    .is_pending(),
            )
        })
        .await
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer_a_blocked_one_keeps_its_bytes() {
        // client -> (a) pipe (c) -> reader d; c holds at most 64 bytes.
        let (mut a, mut client) = duplex(1 << 10);
        let (mut c, mut d) = duplex(64);
        let mut pipe = Pipe::new(32 << 10);

        assert!(poll_once(&mut pipe, &mut a, &mut c).await);
        assert!(pipe.buf.is_none(), "nothing to read: no buffer");

        client.write_all(b"hello").await.unwrap();
        assert!(poll_once(&mut pipe, &mut a, &mut c).await);
        assert!(pipe.buf.is_none(), "written out, nothing more: no buffer");
        let mut got = [0u8; 5];
        d.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        // The writer blocks: the bytes read stay in the buffer until it drains.
        client.write_all(&[7u8; 100]).await.unwrap();
        assert!(poll_once(&mut pipe, &mut a, &mut c).await);
        assert!(pipe.buf.is_some(), "bytes in flight keep the buffer");
        let mut got = [0u8; 64];
        d.read_exact(&mut got).await.unwrap();
        assert!(poll_once(&mut pipe, &mut a, &mut c).await);
        assert!(pipe.buf.is_none());
        let mut rest = [0u8; 36];
        d.read_exact(&mut rest).await.unwrap();
        assert_eq!(pipe.written, 105);
        assert!(got.iter().chain(&rest).all(|b| *b == 7));
    }
}
