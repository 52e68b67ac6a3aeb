//! Requests through a mock split queue against an in-memory disk.

use std::sync::Mutex;

use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::request::{T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};
use crate::wire::RequestHeader;

const WRITE_ONLY: u16 = 2; // VRING_DESC_F_WRITE
const HEADER: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x8000;
const TABLE: u64 = 0x40000;
const NEXT: u16 = 1; // VRING_DESC_F_NEXT

struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    read_only: bool,
    flushes: Mutex<u32>,
}

impl MemDisk {
    fn new(size: usize, read_only: bool) -> Arc<Self> {
        let bytes = (0..size).map(|i| (i / 512) as u8).collect();
        Arc::new(Self {
            bytes: Mutex::new(bytes),
            read_only,
            flushes: Mutex::new(0),
        })
    }
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.bytes.lock().unwrap()[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), DiskError> {
        self.bytes.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A descriptor: (guest address, length, flags).
type Desc = (u64, u32, u16);

/// Lays out the header and `descs` as one chain in a descriptor table and
/// walks it as dev-backend does; `None` if the walk refuses it.
fn chain(mem: &GuestMemoryMmap, descs: &[Desc]) -> Option<DescChain> {
    let mut all = vec![(HEADER, 16, 0)];
    all.extend_from_slice(descs);
    chain_of(mem, &all)
}

/// Lays out exactly `all` as one chain and walks it.
fn chain_of(mem: &GuestMemoryMmap, all: &[Desc]) -> Option<DescChain> {
    for (i, (addr, len, flags)) in all.iter().enumerate() {
        let last = i + 1 == all.len();
        let at = GuestAddress(TABLE + 16 * i as u64);
        mem.write_obj(*addr, at).unwrap();
        mem.write_obj(*len, at.unchecked_add(8)).unwrap();
        mem.write_obj(
            if last { *flags } else { *flags | NEXT },
            at.unchecked_add(12),
        )
        .unwrap();
        mem.write_obj(if last { 0u16 } else { i as u16 + 1 }, at.unchecked_add(14))
            .unwrap();
    }
    DescChain::walk(mem, GuestAddress(TABLE), 16, 0).ok()
}

/// Runs one request made of `descs` (after the header) and returns (used
/// len, status); a chain the walk refuses counts as used length 0.
fn run(
    device: &BlockDevice,
    mem: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    descs: &[Desc],
) -> (u32, u8) {
    mem.write_obj(
        RequestHeader {
            kind,
            reserved: 0,
            sector,
        },
        GuestAddress(HEADER),
    )
    .unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let used = match chain(mem, descs) {
        Some(chain) => device.process(mem, &chain).0,
        None => 0,
    };
    (used, mem.read_obj(GuestAddress(STATUS)).unwrap())
}

fn desc(addr: u64, len: u32, flags: u16) -> Desc {
    (addr, len, flags)
}

fn status_desc() -> Desc {
    desc(STATUS, 1, WRITE_ONLY)
}

#[test]
fn process_read_fills_buffers_across_descriptors() {
    let (mem, disk) = (memory(), MemDisk::new(1 << 20, false));
    let device = BlockDevice::new(disk, "x", 1, 128);
    let descs = [
        desc(DATA, 512, WRITE_ONLY),
        desc(DATA + 0x1000, 1024, WRITE_ONLY),
        status_desc(),
    ];
    assert_eq!(run(&device, &mem, T_IN, 3, &descs), (1537, S_OK));
    let mut got = [0u8; 1024];
    mem.read_slice(&mut got[..512], GuestAddress(DATA)).unwrap();
    assert!(got[..512].iter().all(|b| *b == 3));
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(got[..512].iter().all(|b| *b == 4) && got[512..].iter().all(|b| *b == 5));
}

#[test]
fn process_write_then_read_round_trips() {
    let (mem, disk) = (memory(), MemDisk::new(1 << 20, false));
    let device = BlockDevice::new(disk.clone(), "x", 1, 128);
    mem.write_slice(&[0xab; 2048], GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(
            &device,
            &mem,
            T_OUT,
            10,
            &[desc(DATA, 2048, 0), status_desc()]
        ),
        (1, S_OK)
    );
    assert!(disk.bytes.lock().unwrap()[10 * 512..14 * 512]
        .iter()
        .all(|b| *b == 0xab));
    assert_eq!(
        device
            .metrics()
            .write_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        2048
    );
}

#[test]
fn process_past_end_of_disk_is_ioerr_and_disk_untouched() {
    let (mem, disk) = (memory(), MemDisk::new(4096, false));
    let device = BlockDevice::new(disk.clone(), "x", 1, 128);
    assert_eq!(
        run(
            &device,
            &mem,
            T_OUT,
            7,
            &[desc(DATA, 1024, 0), status_desc()]
        )
        .1,
        S_IOERR
    );
    assert_eq!(
        run(
            &device,
            &mem,
            T_IN,
            u64::MAX,
            &[desc(DATA, 512, WRITE_ONLY), status_desc()]
        )
        .1,
        S_IOERR
    );
    assert_eq!(disk.bytes.lock().unwrap()[7 * 512], 7);
}

#[test]
fn process_write_to_read_only_disk_is_ioerr() {
    let (mem, disk) = (memory(), MemDisk::new(4096, true));
    let device = BlockDevice::new(disk.clone(), "x", 1, 128);
    assert_ne!(device.features() & features::RO, 0);
    assert_eq!(device.features() & features::DISCARD, 0);
    assert_eq!(
        run(
            &device,
            &mem,
            T_OUT,
            0,
            &[desc(DATA, 512, 0), status_desc()]
        )
        .1,
        S_IOERR
    );
    assert_eq!(
        run(
            &device,
            &mem,
            T_IN,
            0,
            &[desc(DATA, 512, WRITE_ONLY), status_desc()]
        )
        .1,
        S_OK
    );
}

#[test]
fn process_get_id_returns_serial_and_flush_reaches_disk() {
    let (mem, disk) = (memory(), MemDisk::new(4096, false));
    let device = BlockDevice::new(disk.clone(), "vmd-disk-0", 1, 128);
    assert_eq!(
        run(
            &device,
            &mem,
            T_GET_ID,
            0,
            &[desc(DATA, 20, WRITE_ONLY), status_desc()]
        ),
        (21, S_OK)
    );
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..10], b"vmd-disk-0");
    assert_eq!(run(&device, &mem, T_FLUSH, 0, &[status_desc()]).1, S_OK);
    assert_eq!(*disk.flushes.lock().unwrap(), 1);
}

#[test]
fn process_discard_and_write_zeroes_clear_ranges() {
    let (mem, disk) = (memory(), MemDisk::new(8192, false));
    let device = BlockDevice::new(disk.clone(), "x", 1, 128);
    let seg = DiscardSegment {
        sector: 2,
        num_sectors: 2,
        flags: 0,
    };
    mem.write_obj(seg, GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(
            &device,
            &mem,
            T_DISCARD,
            0,
            &[desc(DATA, 16, 0), status_desc()]
        )
        .1,
        S_OK
    );
    assert!(disk.bytes.lock().unwrap()[1024..2048]
        .iter()
        .all(|b| *b == 0));
    let seg = DiscardSegment {
        sector: 5,
        num_sectors: 1,
        flags: SEGMENT_FLAG_UNMAP,
    };
    mem.write_obj(seg, GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(
            &device,
            &mem,
            T_WRITE_ZEROES,
            0,
            &[desc(DATA, 16, 0), status_desc()]
        )
        .1,
        S_OK
    );
    assert!(disk.bytes.lock().unwrap()[2560..3072]
        .iter()
        .all(|b| *b == 0));
    // The unmap flag is reserved for DISCARD.
    assert_eq!(
        run(
            &device,
            &mem,
            T_DISCARD,
            0,
            &[desc(DATA, 16, 0), status_desc()]
        )
        .1,
        S_IOERR
    );
}

#[test]
fn process_bad_shapes_get_ioerr_or_unsupp_and_device_goes_on() {
    let (mem, disk) = (memory(), MemDisk::new(8192, false));
    let device = BlockDevice::new(disk, "x", 1, 128);
    // Read with a device-readable data buffer: wrong direction.
    assert_eq!(
        run(&device, &mem, T_IN, 0, &[desc(DATA, 512, 0), status_desc()]).1,
        S_IOERR
    );
    // Partial sector.
    assert_eq!(
        run(
            &device,
            &mem,
            T_IN,
            0,
            &[desc(DATA, 100, WRITE_ONLY), status_desc()]
        )
        .1,
        S_IOERR
    );
    // Unknown type.
    assert_eq!(run(&device, &mem, 2, 0, &[status_desc()]).1, S_UNSUPP);
    // Data outside guest memory: dev-backend's walk refuses the chain.
    assert_eq!(
        run(
            &device,
            &mem,
            T_IN,
            0,
            &[desc(0x4000_0000, 512, WRITE_ONLY), status_desc()]
        )
        .0,
        0
    );
    // And a good request still works.
    assert_eq!(
        run(
            &device,
            &mem,
            T_IN,
            1,
            &[desc(DATA, 512, WRITE_ONLY), status_desc()]
        )
        .1,
        S_OK
    );
}

#[test]
fn process_truncated_header_is_ioerr() {
    let (mem, disk) = (memory(), MemDisk::new(8192, false));
    let device = BlockDevice::new(disk, "x", 1, 128);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let chain = chain_of(&mem, &[(HEADER, 8, 0), status_desc()]).unwrap();
    assert_eq!(device.process(&mem, &chain), (1, Some(S_IOERR)));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_IOERR);
    assert_eq!(
        device
            .metrics()
            .bad_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn process_chain_without_status_byte_is_dropped_and_counted() {
    let (mem, disk) = (memory(), MemDisk::new(8192, false));
    let device = BlockDevice::new(disk, "x", 1, 128);
    assert_eq!(run(&device, &mem, T_FLUSH, 0, &[]), (0, 0xff));
    assert_eq!(
        device
            .metrics()
            .dropped_chains
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn config_reports_capacity_queues_and_limits() {
    let device = BlockDevice::new(MemDisk::new(1 << 20, false), "x", 4, 256);
    let config = device.config();
    assert_eq!(config.capacity, 2048);
    assert_eq!(config.num_queues, 4);
    assert_eq!(config.seg_max, 254);
    assert_ne!(device.features() & features::MQ, 0);
}
