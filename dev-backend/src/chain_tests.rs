use vm_memory::{Bytes, GuestAddress};

use super::*;

const TABLE: u64 = 0x1000;
const QSIZE: u16 = 8;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn put(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table + 16 * u64::from(i)))
        .unwrap();
}

#[test]
fn walk_readable_then_writable_splits_segments() {
    let m = mem();
    put(&m, TABLE, 0, 0x4000, 10, FLAG_NEXT, 3);
    put(&m, TABLE, 3, 0x5000, 20, FLAG_WRITE, 0);
    let c = DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0).unwrap();
    assert_eq!(c.head(), 0);
    assert_eq!(c.readable_len(), 10);
    assert_eq!(
        c.writable(),
        &[Segment {
            addr: GuestAddress(0x5000),
            len: 20
        }]
    );
}

#[test]
fn walk_loop_is_too_long() {
    let m = mem();
    put(&m, TABLE, 0, 0x4000, 1, FLAG_NEXT, 1);
    put(&m, TABLE, 1, 0x4000, 1, FLAG_NEXT, 0);
    assert!(matches!(
        DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0),
        Err(ChainError::TooLong { .. })
    ));
}

#[test]
fn walk_next_beyond_queue_is_out_of_range() {
    let m = mem();
    put(&m, TABLE, 0, 0x4000, 1, FLAG_NEXT, QSIZE);
    assert!(matches!(
        DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0),
        Err(ChainError::IndexOutOfRange { index: 8, size: 8 })
    ));
}

#[test]
fn walk_readable_after_writable_is_refused() {
    let m = mem();
    put(&m, TABLE, 0, 0x4000, 1, FLAG_WRITE | FLAG_NEXT, 1);
    put(&m, TABLE, 1, 0x4000, 1, 0, 0);
    assert!(matches!(
        DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0),
        Err(ChainError::ReadableAfterWritable)
    ));
}

#[test]
fn walk_buffer_outside_memory_is_refused() {
    let m = mem();
    put(&m, TABLE, 0, 0xfff0, 0x20, 0, 0);
    assert!(matches!(
        DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0),
        Err(ChainError::BufferOutsideMemory { .. })
    ));
}

#[test]
fn walk_indirect_table_follows_its_entries() {
    let m = mem();
    let ind = 0x2000;
    put(&m, TABLE, 2, ind, 32, FLAG_INDIRECT, 0);
    put(&m, ind, 0, 0x4000, 4, FLAG_NEXT, 1);
    put(&m, ind, 1, 0x5000, 8, FLAG_WRITE, 0);
    let c = DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 2).unwrap();
    assert_eq!(c.head(), 2);
    assert_eq!((c.readable_len(), c.writable_len()), (4, 8));
}

#[test]
fn walk_nested_indirect_is_refused() {
    let m = mem();
    let ind = 0x2000;
    put(&m, TABLE, 0, ind, 16, FLAG_INDIRECT, 0);
    put(&m, ind, 0, ind, 16, FLAG_INDIRECT, 0);
    assert!(matches!(
        DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0),
        Err(ChainError::BadIndirect { .. })
    ));
}

#[test]
fn read_and_write_cross_segments() {
    let m = mem();
    m.write_slice(b"abc", GuestAddress(0x4000)).unwrap();
    m.write_slice(b"de", GuestAddress(0x4100)).unwrap();
    put(&m, TABLE, 0, 0x4000, 3, FLAG_NEXT, 1);
    put(&m, TABLE, 1, 0x4100, 2, FLAG_NEXT, 2);
    put(&m, TABLE, 2, 0x5000, 2, FLAG_WRITE | FLAG_NEXT, 3);
    put(&m, TABLE, 3, 0x5100, 8, FLAG_WRITE, 0);
    let c = DescChain::walk(&m, GuestAddress(TABLE), QSIZE, 0).unwrap();
    assert_eq!(c.read_to_vec(&m, 100).unwrap(), b"abcde");
    assert_eq!(c.read_to_vec(&m, 4).unwrap(), b"abcd");
    let mut prefix = [0u8; 4];
    assert_eq!(c.read_prefix(&m, &mut prefix).unwrap(), 4);
    assert_eq!(&prefix, b"abcd");
    let mut all = [0u8; 9];
    assert_eq!(c.read_prefix(&m, &mut all).unwrap(), 5);
    assert_eq!(&all[..5], b"abcde");
    assert_eq!(c.write_from(&m, b"12345").unwrap(), 5);
    let mut out = [0u8; 3];
    m.read_slice(&mut out, GuestAddress(0x5100)).unwrap();
    assert_eq!(&out, b"345");
}
