//! The send buffer: bytes written by the application and not yet acknowledged.

use std::collections::VecDeque;

/// Largest allocation an empty buffer keeps (small exchanges do not reallocate each time).
const KEEP: usize = 16 << 10;

/// A bounded byte ring indexed by stream offset (byte 0 = the first byte ever written).
///
/// Holds `[acked, written)`: both unsent and in-flight bytes, because a retransmission
/// re-reads them. It grows on demand (amortised doubling, never per byte) up to `capacity`,
/// and a large allocation is freed once everything is acknowledged, so an idle stream
/// that once sent a burst does not keep its high-water mark.
#[derive(Debug)]
pub(crate) struct SendBuf {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Stream offset of `buf[0]`: everything before it is acknowledged.
    base: u64,
}

impl SendBuf {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity,
            base: 0,
        }
    }

    /// Appends as much of `data` as fits; returns the count taken.
    pub(crate) fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        self.buf.extend(&data[..n]);
        n
    }

    /// Room left for `write`.
    pub(crate) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }

    /// Bytes held (unacknowledged).
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Stream offset just past the last byte written.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Drops bytes before stream offset `upto` (cumulatively acknowledged).
    pub(crate) fn ack(&mut self, upto: u64) {
        let n = upto.saturating_sub(self.base).min(self.buf.len() as u64) as usize;
        self.buf.drain(..n);
        self.base += n as u64;
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = VecDeque::new();
        }
    }

    /// Appends `len` bytes starting at stream offset `start` to `out` (clamped to what is
    /// held, so a stale range copies less rather than panicking).
    pub(crate) fn copy_out(&self, start: u64, len: usize, out: &mut Vec<u8>) {
        let from = start.saturating_sub(self.base).min(self.buf.len() as u64) as usize;
        let to = from.saturating_add(len).min(self.buf.len());
        let (a, b) = self.buf.as_slices();
        if from < a.len() {
            out.extend_from_slice(&a[from..to.min(a.len())]);
        }
        if to > a.len() {
            out.extend_from_slice(&b[from.saturating_sub(a.len())..to - a.len()]);
        }
    }

    /// Heap bytes held.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Releases the memory (TIME-WAIT, CLOSED); the buffer stays usable but empty.
    pub(crate) fn release(&mut self) {
        self.base = self.end();
        self.buf = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_write_ack_copy() {
        let mut b = SendBuf::new(8);
        assert_eq!(b.write(b"0123456789"), 8);
        assert_eq!(b.free(), 0);
        b.ack(3);
        assert_eq!((b.len(), b.end()), (5, 8));
        assert_eq!(b.write(b"ab"), 2);
        let mut out = Vec::new();
        b.copy_out(4, 100, &mut out);
        assert_eq!(out, b"4567ab");
        out.clear();
        b.copy_out(0, 2, &mut out);
        assert_eq!(out, b"34", "stale start clamps to the held range");
        b.release();
        assert_eq!((b.len(), b.end()), (0, 10));
    }

    #[test]
    fn a_large_allocation_is_freed_once_everything_is_acked() {
        let mut b = SendBuf::new(1 << 20);
        assert_eq!(b.write(&[1u8; 100]), 100);
        b.ack(b.end());
        assert!(b.allocated() > 0, "a small allocation is kept");
        assert_eq!(b.write(&vec![2u8; 200_000]), 200_000);
        b.ack(b.end() - 1);
        assert!(
            b.allocated() >= 200_000,
            "kept while a byte is unacknowledged"
        );
        b.ack(b.end());
        assert_eq!((b.allocated(), b.len()), (0, 0));
        assert_eq!(b.write(b"x"), 1);
        assert_eq!(b.end(), 200_101);
    }

    #[test]
    fn copy_across_ring_wrap() {
        let mut b = SendBuf::new(16);
        for round in 0u8..20 {
            let chunk = [round; 5];
            b.write(&chunk);
            let start = b.end() - 5;
            let mut out = Vec::new();
            b.copy_out(start, 5, &mut out);
            assert_eq!(out, chunk);
            b.ack(b.end() - 3);
        }
    }
}
