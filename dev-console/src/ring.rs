//! The ring of recent console output, addressed by absolute byte position.
//!
//! Every byte ever written has a position: the first is 0, the next 1, and
//! so on; [`Ring::head`] is the position the next byte will get (the total
//! written). The ring keeps the last [`Ring::capacity`] of them. A reader
//! (the attached client) holds a [`Cursor`]; when the writer laps it, the
//! cursor skips ahead to the oldest byte kept and the skipped bytes are
//! reported, so that a slow client costs memory nothing and loses only
//! what it could not keep up with.
//!
//! Under the monitor the ring lives in a memfd its supervisor keeps
//! (`--ring-fd`), so that a restarted dev-console replays what its
//! predecessors wrote, and an attached client goes on from where it was.

use ipc::console::RING_HEADER;
use ipc::shm::SharedMemory;

/// Recent output, the last `capacity` bytes written.
///
/// # Invariants
/// - Byte at absolute position `p`, for `oldest() <= p < head()`, is at
///   `buf[p % capacity]`.
/// - `oldest() == head().saturating_sub(capacity)`: the ring holds every
///   byte written until it is full, then exactly `capacity` bytes.
/// - Memory is `capacity` bytes, allocated once; writing never allocates.
/// - In shared memory ([`Ring::in_shared`]), the header holds `head` (and
///   the attached client's position) as of the last write, so that a
///   successor process picks the ring up where this one left it.
#[derive(Debug)]
pub struct Ring {
    storage: Storage,
    capacity: usize,
    head: u64,
}

/// Where the ring's bytes are.
#[derive(Debug)]
enum Storage {
    Own(Box<[u8]>),
    /// [`RING_HEADER`] bytes of header, then the ring; only this process
    /// touches it while it runs (its supervisor starts a successor once
    /// it was reaped, and the monitor never maps it).
    Shared(SharedMemory),
}

/// Marks a shared ring's header ("VMDRING1").
const MAGIC: u64 = u64::from_le_bytes(*b"VMDRING1");
/// Header words: magic, capacity, head, client position.
const MAGIC_AT: usize = 0;
const CAPACITY_AT: usize = 1;
const HEAD_AT: usize = 2;
const CLIENT_AT: usize = 3;
/// A head beyond this is a damaged header (2^62 bytes: centuries of output).
const MAX_HEAD: u64 = 1 << 62;

/// A shared ring that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The memory holds no room for a ring after its header.
    #[error("the ring's memory holds {0} bytes, not more than its {RING_HEADER}-byte header")]
    TooSmall(usize),
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
            storage: Storage::Own(vec![0; capacity].into_boxed_slice()),
            capacity,
            head: 0,
        }
    }

    /// The ring kept in `memory` (a header, then the bytes): as a
    /// predecessor left it if its header says so, else empty. Returns it
    /// and, if a predecessor's client was attached, that client's
    /// position (not checked: [`Ring::cursor_at`] bounds it).
    pub fn in_shared(memory: SharedMemory) -> Result<(Self, Option<u64>), RingError> {
        let capacity = memory.len().saturating_sub(RING_HEADER);
        if capacity == 0 {
            return Err(RingError::TooSmall(memory.len()));
        }
        let mut ring = Self {
            storage: Storage::Shared(memory),
            capacity,
            head: 0,
        };
        let kept = ring.header(MAGIC_AT) == Some(MAGIC)
            && ring.header(CAPACITY_AT) == Some(capacity as u64)
            && ring.header(HEAD_AT).is_some_and(|h| h <= MAX_HEAD);
        if kept {
            ring.head = ring.header(HEAD_AT).unwrap_or(0);
            let client = ring.header(CLIENT_AT).filter(|&c| c != u64::MAX);
            return Ok((ring, client));
        }
        ring.set_header(CAPACITY_AT, capacity as u64);
        ring.set_header(HEAD_AT, 0);
        ring.set_header(CLIENT_AT, u64::MAX);
        ring.set_header(MAGIC_AT, MAGIC);
        Ok((ring, None))
    }

    /// Header word `i` of a shared ring.
    fn header(&self, i: usize) -> Option<u64> {
        match &self.storage {
            Storage::Own(_) => None,
            // SAFETY: the mapping is page-aligned and longer than the
            // header's 8-byte words (`in_shared` checked); see Storage.
            Storage::Shared(memory) => Some(unsafe { memory.as_ptr().cast::<u64>().add(i).read() }),
        }
    }

    fn set_header(&mut self, i: usize, value: u64) {
        if let Storage::Shared(memory) = &self.storage {
            // SAFETY: as in `header`; `&mut self` orders the writes.
            unsafe { memory.as_ptr().cast::<u64>().add(i).write(value) };
        }
    }

    fn buf(&self) -> &[u8] {
        match &self.storage {
            Storage::Own(buf) => buf,
            // SAFETY: the mapping holds RING_HEADER + capacity bytes and
            // lives as long as self; only this process touches it (see
            // Storage), and `&self` excludes writes through `&mut self`.
            Storage::Shared(memory) => unsafe {
                std::slice::from_raw_parts(memory.as_ptr().add(RING_HEADER), self.capacity)
            },
        }
    }

    fn buf_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Own(buf) => buf,
            // SAFETY: as in `buf`, and `&mut self` makes this the only
            // reference into the mapping.
            Storage::Shared(memory) => unsafe {
                std::slice::from_raw_parts_mut(memory.as_ptr().add(RING_HEADER), self.capacity)
            },
        }
    }

    /// Bytes the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
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
        let buf = self.buf_mut();
        buf[start..start + first].copy_from_slice(&data[..first]);
        buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.head += data.len() as u64;
        self.set_header(HEAD_AT, self.head);
    }

    /// Records where the attached client is (`None`: nobody is), for a
    /// successor of this process (a shared ring only).
    pub fn note_client(&mut self, pos: Option<u64>) {
        self.set_header(CLIENT_AT, pos.unwrap_or(u64::MAX));
    }

    /// A cursor at `pos`, within the bytes kept (a position a
    /// predecessor's client had reached).
    pub fn cursor_at(&self, pos: u64) -> Cursor {
        Cursor {
            pos: pos.clamp(self.oldest(), self.head),
        }
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
        let buf = self.buf();
        out[..first].copy_from_slice(&buf[start..start + first]);
        out[first..len].copy_from_slice(&buf[..len - first]);
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

    fn shared(fd: &std::os::fd::OwnedFd) -> (Ring, Option<u64>) {
        Ring::in_shared(SharedMemory::map(fd, RING_HEADER + 1).unwrap()).unwrap()
    }

    #[test]
    fn a_shared_ring_is_picked_up_by_a_successor_with_its_clients_place() {
        let fd = ipc::shm::create_sealed("ring", RING_HEADER + 8).unwrap();
        let (mut ring, client) = shared(&fd);
        assert_eq!((ring.capacity(), ring.head(), client), (8, 0, None));
        ring.push(b"0123456789");
        ring.note_client(Some(7));
        drop(ring);
        let (ring, client) = shared(&fd);
        assert_eq!((ring.head(), client), (10, Some(7)));
        let mut c = ring.cursor_at(client.unwrap());
        assert_eq!(drain(&ring, &mut c), (0, b"789".to_vec()));
        let mut c = ring.cursor_at_oldest();
        assert_eq!(drain(&ring, &mut c), (0, b"23456789".to_vec()));
        // A client position the ring no longer holds is bounded.
        assert_eq!(ring.cursor_at(0).pos(), 2);
        assert_eq!(ring.cursor_at(99).pos(), 10);
    }

    #[test]
    fn a_damaged_header_starts_an_empty_ring() {
        let fd = ipc::shm::create_sealed("ring", RING_HEADER + 8).unwrap();
        let (mut ring, _) = shared(&fd);
        ring.push(b"abc");
        drop(ring);
        let memory = SharedMemory::map(&fd, RING_HEADER).unwrap();
        // SAFETY: the header's head word, in a mapping nothing else uses.
        unsafe { memory.as_ptr().cast::<u64>().add(HEAD_AT).write(u64::MAX) };
        drop(memory);
        let (ring, client) = shared(&fd);
        assert_eq!((ring.head(), client), (0, None));
        let tiny = ipc::shm::create_sealed("ring", RING_HEADER).unwrap();
        let e = Ring::in_shared(SharedMemory::map(&tiny, 1).unwrap()).unwrap_err();
        assert!(e.to_string().contains("64 bytes"), "{e}");
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
