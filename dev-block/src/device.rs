//! The virtio-blk device: its features and configuration, and the
//! execution of parsed requests against a [`DiskImage`] (§5.2).
//!
//! Every request ends in exactly one status: OK, IOERR (the host failed, or
//! the driver got the request wrong) or UNSUPP (a type we do not implement).
//! A chain that cannot carry a status at all is returned with used length 0
//! and counted; the device goes on serving either way.

use std::sync::Arc;

use dev_backend::chain::DescChain;
use dev_backend::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::disk::{DiskError, DiskImage};
use crate::metrics::BlockMetrics;
use crate::request::{self, BadRequest, Request, HEADER_LEN};
use crate::wire::{
    BlkConfig, DiscardSegment, BLK_ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE, SEGMENT_FLAG_UNMAP,
};

/// Status: success.
pub const S_OK: u8 = 0;
/// Status: the request failed.
pub const S_IOERR: u8 = 1;
/// Status: the request type is not supported.
pub const S_UNSUPP: u8 = 2;

/// Feature bits (virtio 1.2 §5.2.3 and §6).
pub mod features {
    /// Most segments per request is in the config (seg_max).
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// Block size is in the config (blk_size).
    pub const BLK_SIZE: u64 = 1 << 6;
    /// FLUSH is supported.
    pub const FLUSH: u64 = 1 << 9;
    /// Several request queues (num_queues in the config).
    pub const MQ: u64 = 1 << 12;
    /// DISCARD is supported.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES is supported.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// virtio 1.x.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Largest DISCARD / WRITE_ZEROES we accept, in sectors (4 GiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 23;
/// Most segments in one DISCARD / WRITE_ZEROES.
const MAX_DISCARD_SEGMENTS: u32 = request::MAX_SEGMENTS as u32;
/// DISCARD alignment hint in sectors (4 KiB, a page and the smallest qcow2 cluster).
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Descriptors of a request that are not data: the header and the status.
const NON_DATA_DESCRIPTORS: u32 = 2;

/// A virtio-blk device over one disk image.
pub struct BlockDevice {
    disk: Arc<dyn DiskImage>,
    id: [u8; BLK_ID_BYTES],
    num_queues: u16,
    queue_size: u16,
    metrics: Arc<BlockMetrics>,
}

impl BlockDevice {
    /// A device for `disk` with `num_queues` queues of up to `queue_size`
    /// descriptors; `serial` (truncated to 20 bytes) is what GET_ID returns.
    pub fn new(disk: Arc<dyn DiskImage>, serial: &str, num_queues: u16, queue_size: u16) -> Self {
        let mut id = [0u8; BLK_ID_BYTES];
        let bytes = serial.as_bytes();
        let n = bytes.len().min(BLK_ID_BYTES);
        id[..n].copy_from_slice(&bytes[..n]);
        Self {
            disk,
            id,
            num_queues: num_queues.max(1),
            queue_size,
            metrics: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// Number of request queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The features the device offers.
    pub fn features(&self) -> u64 {
        use features::*;
        let mut f = VERSION_1 | RING_EVENT_IDX | RING_INDIRECT_DESC | SEG_MAX | BLK_SIZE | FLUSH;
        if self.num_queues > 1 {
            f |= MQ;
        }
        if self.disk.read_only() {
            f |= RO;
        } else {
            f |= DISCARD | WRITE_ZEROES;
        }
        f
    }

    /// The configuration space.
    pub fn config(&self) -> BlkConfig {
        BlkConfig {
            capacity: self.disk.size() >> SECTOR_SHIFT,
            seg_max: u32::from(self.queue_size)
                .saturating_sub(NON_DATA_DESCRIPTORS)
                .max(1),
            blk_size: SECTOR_SIZE as u32,
            num_queues: self.num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEGMENTS,
            discard_sector_alignment: DISCARD_ALIGNMENT_SECTORS,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS,
            write_zeroes_may_unmap: 1,
            ..BlkConfig::default()
        }
    }

    /// Serves `chain` here and now if that cannot wait for the host disk
    /// (a read of page-cached data, a write, GET_ID, a refused request...);
    /// says where it must run otherwise. See `backend` for why.
    pub fn try_process(&self, mem: &GuestMemoryMmap, chain: &DescChain) -> Dispatch {
        let Ok(parsed) = request::parse(mem, chain) else {
            return Dispatch::Done(self.process(mem, chain));
        };
        let (sector, len) = match parsed.request {
            Ok(Request::Flush) => return Dispatch::Flush,
            Ok(Request::Read { sector, len }) => (sector, len),
            _ => return Dispatch::Done(self.serve(parsed, mem, chain)),
        };
        let Ok(offset) = self.range(sector, u64::from(len)) else {
            return Dispatch::Done(self.process(mem, chain));
        };
        let mut buf = vec![0u8; len as usize];
        if !matches!(self.disk.try_read_at(&mut buf, offset), Ok(true)) {
            return Dispatch::Pool;
        }
        let mut written = 0;
        let result = self.deliver(&buf, mem, chain).map(|n| written = n);
        let code = self.status_of(result);
        Dispatch::Done(self.conclude(mem, parsed.status, code, written))
    }

    /// Serves one descriptor chain: parses, executes, writes the status.
    /// Returns the used length to report (bytes the device wrote) and the
    /// status (`None` when the chain could not carry one).
    pub fn process(&self, mem: &GuestMemoryMmap, chain: &DescChain) -> (u32, Option<u8>) {
        match request::parse(mem, chain) {
            Ok(parsed) => self.serve(parsed, mem, chain),
            Err(e) => {
                log::debug!("dropping a request: {e}");
                BlockMetrics::bump(&self.metrics.dropped_chains);
                (0, None)
            }
        }
    }

    /// Executes a parsed request and writes its status.
    fn serve(
        &self,
        parsed: request::ParsedRequest,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
    ) -> (u32, Option<u8>) {
        let (code, written) = match parsed.request {
            Ok(mut request) => match request::read_segments(&mut request, mem, chain) {
                Ok(()) => self.execute(&request, mem, chain, parsed.writable_len),
                Err(bad) => (self.refuse(&bad), 0),
            },
            Err(bad) => (self.refuse(&bad), 0),
        };
        self.conclude(mem, parsed.status, code, written)
    }

    /// Writes status `code` of a request that wrote `written` bytes; the
    /// used length and status to report.
    fn conclude(
        &self,
        mem: &GuestMemoryMmap,
        status: GuestAddress,
        code: u8,
        written: usize,
    ) -> (u32, Option<u8>) {
        if mem.write_obj(code, status).is_err() {
            BlockMetrics::bump(&self.metrics.dropped_chains);
            return (written as u32, None);
        }
        (written as u32 + 1, Some(code))
    }

    fn refuse(&self, bad: &BadRequest) -> u8 {
        log::debug!("bad request: {bad}");
        BlockMetrics::bump(&self.metrics.bad_requests);
        S_IOERR
    }

    /// Runs `request`; returns the status and the data bytes written to the
    /// guest (before the status byte).
    fn execute(
        &self,
        request: &Request,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
        writable_len: usize,
    ) -> (u8, usize) {
        let mut written = 0;
        let result = match request {
            Request::Read { sector, len } => {
                self.read(*sector, *len, mem, chain).map(|n| written = n)
            }
            Request::Write { sector, len } => self.write(*sector, *len, mem, chain),
            Request::Flush => {
                BlockMetrics::bump(&self.metrics.flushes);
                self.disk.flush().map_err(Failure::from)
            }
            Request::GetId => {
                let n = writable_len.min(BLK_ID_BYTES);
                chain
                    .write_from(mem, &self.id[..n])
                    .map(|n| written = n)
                    .map_err(|_| Failure::Guest("ID buffer not writable"))
            }
            Request::Discard(segments) => self.discard(segments, false),
            Request::WriteZeroes(segments) => self.discard(segments, true),
            Request::Unsupported(kind) => {
                log::debug!("unsupported request type {kind}");
                BlockMetrics::bump(&self.metrics.unsupported);
                return (S_UNSUPP, 0);
            }
        };
        (self.status_of(result), written)
    }

    /// The status of an executed request, counting failures.
    fn status_of(&self, result: Result<(), Failure>) -> u8 {
        match result {
            Ok(()) => S_OK,
            Err(Failure::Disk(e)) => {
                log::debug!("request failed: {e}");
                BlockMetrics::bump(&self.metrics.io_errors);
                S_IOERR
            }
            Err(Failure::Guest(what)) => {
                log::debug!("request failed: {what}");
                BlockMetrics::bump(&self.metrics.bad_requests);
                S_IOERR
            }
        }
    }

    /// Byte offset of `sector`, if `[sector, sector + len)` lies on the disk.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(Failure::Guest("sector overflows"))?;
        let end = offset
            .checked_add(len)
            .ok_or(Failure::Guest("range overflows"))?;
        if end > self.disk.size() {
            return Err(Failure::Disk(DiskError::OutOfRange {
                offset,
                len,
                size: self.disk.size(),
            }));
        }
        Ok(offset)
    }

    fn read(
        &self,
        sector: u64,
        len: u32,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
    ) -> Result<usize, Failure> {
        let offset = self.range(sector, u64::from(len))?;
        let mut buf = vec![0u8; len as usize];
        self.disk.read_at(&mut buf, offset)?;
        self.deliver(&buf, mem, chain)
    }

    /// Copies the data of a read into the chain's buffers and counts it.
    fn deliver(
        &self,
        buf: &[u8],
        mem: &GuestMemoryMmap,
        chain: &DescChain,
    ) -> Result<usize, Failure> {
        let n = chain
            .write_from(mem, buf)
            .map_err(|_| Failure::Guest("read buffer not writable"))?;
        BlockMetrics::bump(&self.metrics.reads);
        BlockMetrics::add(&self.metrics.read_bytes, buf.len() as u64);
        Ok(n)
    }

    fn write(
        &self,
        sector: u64,
        len: u32,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
    ) -> Result<(), Failure> {
        let offset = self.range(sector, u64::from(len))?;
        if self.disk.read_only() {
            return Err(Failure::Disk(DiskError::ReadOnly));
        }
        let bytes = chain
            .read_to_vec(mem, HEADER_LEN + len as usize)
            .map_err(|_| Failure::Guest("write buffer not readable"))?;
        self.disk.write_at(&bytes[HEADER_LEN..], offset)?;
        BlockMetrics::bump(&self.metrics.writes);
        BlockMetrics::add(&self.metrics.write_bytes, u64::from(len));
        Ok(())
    }

    fn discard(&self, segments: &[DiscardSegment], zeroes: bool) -> Result<(), Failure> {
        if self.disk.read_only() {
            return Err(Failure::Disk(DiskError::ReadOnly));
        }
        if segments.len() > MAX_DISCARD_SEGMENTS as usize {
            return Err(Failure::Guest("too many segments"));
        }
        for segment in segments {
            if segment.num_sectors > MAX_DISCARD_SECTORS {
                return Err(Failure::Guest("segment too large"));
            }
            let len = u64::from(segment.num_sectors) << SECTOR_SHIFT;
            let offset = self.range(segment.sector, len)?;
            if zeroes {
                self.disk
                    .write_zeroes(offset, len, segment.flags & SEGMENT_FLAG_UNMAP != 0)?;
            } else {
                self.disk.discard(offset, len)?;
            }
        }
        BlockMetrics::bump(&self.metrics.discards);
        Ok(())
    }
}

/// Where a request runs; from [`BlockDevice::try_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// It was served: the used length and status, as from
    /// [`BlockDevice::process`].
    Done((u32, Option<u8>)),
    /// A FLUSH: on the I/O pool, after the queue's earlier requests.
    Flush,
    /// A read that would wait for the host disk: on the I/O pool.
    Pool,
}

/// Why an executed request failed.
enum Failure {
    /// The disk (host side) failed, or the range is off the disk.
    Disk(DiskError),
    /// The driver's request is inconsistent.
    Guest(&'static str),
}

impl From<DiskError> for Failure {
    fn from(e: DiskError) -> Self {
        Failure::Disk(e)
    }
}

#[cfg(test)]
mod tests;
