//! The ring of recent console output, addressed by absolute byte position.
//!
//! Every byte ever written has a position: the first is 0, the next 1, and
//! so on; [`Ring::head`] is the position the next byte will get (the total
//! written). The ring keeps the last [`Ring::capacity`] of them. A reader
//! (the attached client) holds a [`Cursor`]; when the writer laps it, the
//! cursor skips ahead to the oldest byte kept and the skipped bytes are
//! reported, so that a slow client costs memory nothing and loses only
//! what it could not keep up with.

/// Recent output, the last `capacity` bytes written.
///
/// # Invariants
/// - Byte at absolute position `p`, for `oldest() <= p < head()`, is at
///   `buf[p % capacity]`.
/// - `oldest() == head().saturating_sub(capacity)`: the ring holds every
///   byte written until it is full, then exactly `capacity` bytes.
/// - Memory is `capacity` bytes, allocated once; writing never allocates.
#[derive(Debug)]
pub struct Ring {
    buf: Box<[u8]>,
    head: u64,
}

/// A reader's position in a [`Ring`].
///
/// # Invariants
/// - `pos <= head` of the ring it reads (it is only advanced by bytes it
///   was given); it may fall below `oldest`, which the next
///   [`Ring::read_at`] repairs by skipping ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pos: u64,
}

/// What [`Ring::read_at`] gave a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Bytes the cursor skipped because the writer overwrote them.
    pub skipped: u64,
    /// Bytes copied into the caller's buffer (from the cursor on).
    pub len: usize,
}

impl Ring {
    /// An empty ring of `capacity` bytes.
    ///
    /// # Panics
    /// If `capacity` is 0 (the configuration refuses sizes below its
    /// minimum long before).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a console ring needs room for a byte");
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            head: 0,
        }
    }

    /// Bytes the ring keeps.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Position of the next byte to be written (bytes written so far).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Position of the oldest byte still kept.
    pub fn oldest(&self) -> u64 {
        self.head.saturating_sub(self.capacity() as u64)
    }

    fn index(&self, pos: u64) -> usize {
        // The remainder is below `capacity`, a usize.
        (pos % self.capacity() as u64) as usize
    }

    /// Appends `data`, overwriting the oldest bytes once the ring is full.
    pub fn push(&mut self, data: &[u8]) {
        let cap = self.capacity();
        // Only the last `cap` bytes can survive the write.
        let skip = data.len().saturating_sub(cap);
        let data = &data[skip..];
        self.head += skip as u64;
        let start = self.index(self.head);
        let first = data.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.head += data.len() as u64;
    }

    /// A cursor at the oldest byte kept: a new client sees all of it.
    pub fn cursor_at_oldest(&self) -> Cursor {
        Cursor { pos: self.oldest() }
    }

    /// A cursor at the head: a reader that wants only what comes next.
    pub fn cursor_at_head(&self) -> Cursor {
        Cursor { pos: self.head }
    }

    /// Copies the bytes from `cursor` on into `out` (as many as fit),
    /// first moving a cursor the writer has lapped up to the oldest byte
    /// kept. The cursor is not advanced past the copied bytes: the caller
    /// does that with [`Cursor::advance`] for those it could use.
    pub fn read_at(&self, cursor: &mut Cursor, out: &mut [u8]) -> Pending {
        let oldest = self.oldest();
        let skipped = oldest.saturating_sub(cursor.pos);
        cursor.pos = cursor.pos.max(oldest).min(self.head);
        // At most `capacity` bytes are pending, so this fits a usize.
        let pending = (self.head - cursor.pos) as usize;
        let len = pending.min(out.len());
        let start = self.index(cursor.pos);
        let first = len.min(self.capacity() - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..len].copy_from_slice(&self.buf[..len - first]);
        Pending { skipped, len }
    }
}

impl Cursor {
    /// The absolute position of the next byte this reader wants.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Marks `n` bytes (given by the last [`Ring::read_at`]) as consumed.
    pub fn advance(&mut self, n: usize) {
        self.pos += n as u64;
    }

    /// Whether the reader has everything written to `ring`.
    pub fn caught_up(&self, ring: &Ring) -> bool {
        self.pos >= ring.head()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads everything pending for `cursor` and consumes it.
    fn drain(ring: &Ring, cursor: &mut Cursor) -> (u64, Vec<u8>) {
        let mut out = vec![0; ring.capacity() + 1];
        let p = ring.read_at(cursor, &mut out);
        cursor.advance(p.len);
        out.truncate(p.len);
        (p.skipped, out)
    }

    #[test]
    fn ring_partial_fill_replays_from_first_byte() {
        let mut ring = Ring::new(8);
        ring.push(b"abc");
        assert_eq!((ring.oldest(), ring.head()), (0, 3));
        let mut c = ring.cursor_at_oldest();
        assert_eq!(drain(&ring, &mut c), (0, b"abc".to_vec()));
        assert!(c.caught_up(&ring));
    }

    #[test]
    fn ring_wraparound_keeps_last_capacity_bytes_in_order() {
        let mut ring = Ring::new(8);
        ring.push(b"012345");
        ring.push(b"6789ab");
        assert_eq!((ring.oldest(), ring.head()), (4, 12));
        let mut c = ring.cursor_at_oldest();
        assert_eq!(drain(&ring, &mut c), (0, b"456789ab".to_vec()));
    }

    #[test]
    fn ring_push_longer_than_capacity_keeps_its_tail() {
        let mut ring = Ring::new(4);
        ring.push(b"x");
        ring.push(b"0123456789");
        assert_eq!((ring.oldest(), ring.head()), (7, 11));
        let mut c = ring.cursor_at_oldest();
        assert_eq!(drain(&ring, &mut c), (0, b"6789".to_vec()));
    }

    #[test]
    fn ring_lapped_cursor_skips_ahead_and_counts_dropped() {
        let mut ring = Ring::new(8);
        let mut c = ring.cursor_at_head();
        ring.push(b"0123");
        let mut out = [0u8; 2];
        let p = ring.read_at(&mut c, &mut out);
        assert_eq!((p, &out), (Pending { skipped: 0, len: 2 }, b"01"));
        c.advance(2);
        // 14 more bytes: head 18, oldest 10; the cursor at 2 lost 8 bytes.
        ring.push(b"456789abcdefgh");
        assert_eq!(drain(&ring, &mut c), (8, b"abcdefgh".to_vec()));
        assert_eq!(c.pos(), 18);
    }

    #[test]
    fn ring_short_reads_across_the_wrap_stay_in_order() {
        let mut ring = Ring::new(5);
        ring.push(b"abcdefg"); // buf: f g c d e, oldest 2
        let mut c = ring.cursor_at_oldest();
        let mut got = Vec::new();
        let mut out = [0u8; 2];
        loop {
            let p = ring.read_at(&mut c, &mut out);
            assert_eq!(p.skipped, 0);
            if p.len == 0 {
                break;
            }
            got.extend_from_slice(&out[..p.len]);
            c.advance(p.len);
        }
        assert_eq!(got, b"cdefg");
    }

    #[test]
    fn ring_cursor_at_oldest_after_overflow_starts_at_head_minus_capacity() {
        let mut ring = Ring::new(4);
        for chunk in [&b"hello "[..], b"world"] {
            ring.push(chunk);
        }
        let c = ring.cursor_at_oldest();
        assert_eq!(c.pos(), 7);
        assert_eq!(ring.cursor_at_head().pos(), 11);
    }

    #[test]
    fn ring_many_small_pushes_match_a_model() {
        let mut ring = Ring::new(7);
        let mut all = Vec::new();
        for i in 0..200u8 {
            let chunk: Vec<u8> = (0..i % 11)
                .map(|k| i.wrapping_mul(31).wrapping_add(k))
                .collect();
            ring.push(&chunk);
            all.extend_from_slice(&chunk);
            let mut c = ring.cursor_at_oldest();
            let (_, kept) = drain(&ring, &mut c);
            assert_eq!(kept, all[all.len().saturating_sub(7)..]);
        }
        assert_eq!(ring.head(), all.len() as u64);
    }
}
