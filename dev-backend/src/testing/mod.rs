//! An in-process vhost-user frontend for tests (feature `test-driver`).
//!
//! [`TestFrontend`] plays the monitor's part without KVM or another
//! process: guest RAM is a memfd mapped here, split virtqueues are laid
//! out in it, and vhost's `Frontend` drives a backend over a socket. It
//! can disconnect and reconnect a fresh backend with the same guest memory
//! and inflight fd, as a restarted device process would see it.
//!
//! Layout of the test guest's memory: queue `q`'s rings at
//! `q * QUEUE_STRIDE` (descriptors, then avail at +0x1000, used at
//! +0x2000); request buffers from [`DATA_BASE`] up.

mod echo;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::echo::EchoDevice;
use crate::memory::GuestMemoryMmap;
use crate::sys;

/// Bytes of test guest RAM.
pub const GUEST_MEM_SIZE: u64 = 1 << 20;
/// Distance between two queues' rings.
pub const QUEUE_STRIDE: u64 = 0x4000;
/// Start of the request buffer area.
pub const DATA_BASE: u64 = 0x40000;
/// Largest queue the layout holds (descriptors fill 0x1000 bytes).
pub const MAX_QUEUE_SIZE: u16 = 256;
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x2000;
const DATA_SLOT: u64 = 0x1000;
/// Request slots (a readable and a writable buffer each) that fit between
/// [`DATA_BASE`] and the end of guest memory; reused round robin.
const DATA_SLOTS: u64 = (GUEST_MEM_SIZE - DATA_BASE) / (2 * DATA_SLOT);
/// How often [`TestFrontend::wait_used`] re-reads the used ring.
const RECHECK: Duration = Duration::from_millis(10);

/// Why the test frontend failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A vhost-user request failed.
    #[error("vhost-user request")]
    Vhost(#[from] vhost::Error),
    /// A system call failed.
    #[error("system call")]
    Io(#[from] io::Error),
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// What the test frontend negotiates.
#[derive(Debug, Clone, Copy)]
pub struct TestOptions {
    /// Queues to set up.
    pub num_queues: u16,
    /// Size of each queue (at most [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// Accept VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Use GET/SET_INFLIGHT_FD.
    pub inflight: bool,
    /// Send SET_BACKEND_REQ_FD.
    pub backend_channel: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            num_queues: 1,
            queue_size: 16,
            event_idx: true,
            inflight: true,
            backend_channel: false,
        }
    }
}

/// One used ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub id: u16,
    /// Bytes written.
    pub len: u32,
}

#[derive(Debug)]
struct TestQueue {
    base: u64,
    kick: EventFd,
    call: EventFd,
    err: EventFd,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// The guest side: memory, rings and inflight fd; outlives a connection.
pub struct Guest {
    opts: TestOptions,
    mem: GuestMemoryMmap,
    queues: Vec<TestQueue>,
    inflight: Option<(VhostUserInflight, File)>,
    buffers: HashMap<(u16, u16), (u64, u32)>,
    next_slot: u64,
}

/// A connected test frontend.
pub struct TestFrontend {
    frontend: Frontend,
    guest: Guest,
    channel: Option<UnixStream>,
}

impl Guest {
    fn new(opts: TestOptions) -> Result<Self, DriverError> {
        let mem_err = |e: &dyn std::fmt::Display| DriverError::Memory(e.to_string());
        let file = sys::memfd(c"test-guest", GUEST_MEM_SIZE)?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(0),
            GUEST_MEM_SIZE as usize,
            Some(FileOffset::new(file.try_clone()?, 0)),
        )
        .map_err(|e| mem_err(&e))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| mem_err(&e))?;
        let queues = (0..opts.num_queues)
            .map(|q| {
                Ok(TestQueue {
                    base: u64::from(q) * QUEUE_STRIDE,
                    kick: EventFd::new(EFD_NONBLOCK)?,
                    call: EventFd::new(EFD_NONBLOCK)?,
                    err: EventFd::new(EFD_NONBLOCK)?,
                    next_desc: 0,
                    avail_idx: 0,
                    used_seen: 0,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            opts,
            mem,
            queues,
            inflight: None,
            buffers: HashMap::new(),
            next_slot: 0,
        })
    }

    fn write<T: vm_memory::ByteValued>(&self, val: T, addr: u64) -> Result<(), DriverError> {
        self.mem
            .write_obj(val, GuestAddress(addr))
            .map_err(|e| DriverError::Memory(e.to_string()))
    }

    fn read<T: vm_memory::ByteValued>(&self, addr: u64) -> Result<T, DriverError> {
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|e| DriverError::Memory(e.to_string()))
    }

    fn used_idx(&self, q: u16) -> Result<u16, DriverError> {
        self.read(self.queues[usize::from(q)].base + USED_OFFSET + 2)
    }
}

impl TestFrontend {
    /// Connects to a backend and sets everything up (queues enabled).
    pub fn connect(stream: UnixStream, opts: TestOptions) -> Result<Self, DriverError> {
        Self::setup(stream, Guest::new(opts)?, false)
    }

    /// Connects a fresh backend to an existing guest, as a frontend does
    /// after the backend process died: the same inflight fd, and each
    /// ring's base set to its used idx (QEMU restores last_avail_idx from
    /// the used ring when GET_VRING_BASE could not be asked).
    pub fn reconnect(guest: Guest, stream: UnixStream) -> Result<Self, DriverError> {
        Self::setup(stream, guest, true)
    }

    /// Drops the connection; the guest side survives.
    pub fn disconnect(self) -> Guest {
        self.guest
    }

    fn setup(stream: UnixStream, mut guest: Guest, restore: bool) -> Result<Self, DriverError> {
        let opts = guest.opts;
        let mut fe = Frontend::from_stream(stream, u64::from(opts.num_queues));
        let offered = fe.get_features()?;
        let mut proto = fe.get_protocol_features()?;
        if !opts.backend_channel {
            proto.remove(VhostUserProtocolFeatures::BACKEND_REQ);
        }
        fe.set_protocol_features(proto)?;
        fe.set_owner()?;
        let mut channel = None;
        if opts.backend_channel {
            let (ours, theirs) = UnixStream::pair()?;
            fe.set_backend_request_fd(&theirs)?;
            channel = Some(ours);
        }
        let event_idx = 1u64 << virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
        let features = if opts.event_idx {
            offered
        } else {
            offered & !event_idx
        };
        fe.set_features(features)?;
        if opts.inflight {
            if guest.inflight.is_none() {
                let ask = VhostUserInflight::new(0, 0, opts.num_queues, opts.queue_size);
                guest.inflight = Some(fe.get_inflight_fd(&ask)?);
            }
            if let Some((info, file)) = &guest.inflight {
                fe.set_inflight_fd(info, file.as_raw_fd())?;
            }
        }
        let region = guest
            .mem
            .find_region(GuestAddress(0))
            .ok_or_else(|| DriverError::Memory("no region".into()))?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)?;
        let user_base = info.userspace_addr;
        fe.set_mem_table(&[info])?;
        for (i, q) in guest.queues.iter().enumerate() {
            let base = if restore {
                guest.used_idx(i as u16)?
            } else {
                0
            };
            let config = VringConfigData {
                queue_max_size: opts.queue_size,
                queue_size: opts.queue_size,
                flags: 0,
                desc_table_addr: user_base + q.base,
                used_ring_addr: user_base + q.base + USED_OFFSET,
                avail_ring_addr: user_base + q.base + AVAIL_OFFSET,
                log_addr: None,
            };
            fe.set_vring_num(i, opts.queue_size)?;
            fe.set_vring_base(i, base)?;
            fe.set_vring_addr(i, &config)?;
            fe.set_vring_kick(i, &q.kick)?;
            fe.set_vring_call(i, &q.call)?;
            fe.set_vring_err(i, &q.err)?;
            fe.set_vring_enable(i, true)?;
        }
        Ok(Self {
            frontend: fe,
            guest,
            channel,
        })
    }

    /// The vhost frontend, for requests the driver does not wrap.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// The frontend end of the backend channel, if one was set up.
    pub fn backend_channel(&mut self) -> Option<&mut UnixStream> {
        self.channel.as_mut()
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.guest.mem
    }

    /// Makes a request available on queue `q`: `data` in a device-readable
    /// buffer, then a device-writable buffer of `writable` bytes (none if
    /// 0). Returns the head index. At most half the queue size requests
    /// may be outstanding (descriptors are reused round robin).
    pub fn add_request(&mut self, q: u16, data: &[u8], writable: u32) -> Result<u16, DriverError> {
        let size = self.guest.opts.queue_size;
        let slot = DATA_BASE + (self.guest.next_slot % DATA_SLOTS) * 2 * DATA_SLOT;
        self.guest.next_slot += 1;
        self.guest
            .mem
            .write_slice(data, GuestAddress(slot))
            .map_err(|e| DriverError::Memory(e.to_string()))?;
        let queue = &self.guest.queues[usize::from(q)];
        let (base, head) = (queue.base, queue.next_desc);
        let second = (head + 1) % size;
        let next_flag = if writable > 0 {
            VRING_DESC_F_NEXT as u16
        } else {
            0
        };
        self.put_desc(base, head, slot, data.len() as u32, next_flag, second)?;
        if writable > 0 {
            self.put_desc(
                base,
                second,
                slot + DATA_SLOT,
                writable,
                VRING_DESC_F_WRITE as u16,
                0,
            )?;
            self.guest
                .buffers
                .insert((q, head), (slot + DATA_SLOT, writable));
        }
        let queue = &mut self.guest.queues[usize::from(q)];
        queue.next_desc = (head + 2) % size;
        let idx = queue.avail_idx;
        queue.avail_idx = idx.wrapping_add(1);
        let ring = base + AVAIL_OFFSET + 4 + 2 * u64::from(idx % size);
        self.guest.write(head, ring)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.guest
            .write(idx.wrapping_add(1), base + AVAIL_OFFSET + 2)?;
        Ok(head)
    }

    fn put_desc(
        &self,
        base: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), DriverError> {
        let d = base + 16 * u64::from(i);
        self.guest.write(addr, d)?;
        self.guest.write(len, d + 8)?;
        self.guest.write(flags, d + 12)?;
        self.guest.write(next, d + 14)
    }

    /// Notifies queue `q`.
    pub fn kick(&self, q: u16) -> Result<(), DriverError> {
        Ok(self.guest.queues[usize::from(q)].kick.write(1)?)
    }

    /// Sets the used_event field of queue `q` (EVENT_IDX suppression).
    pub fn set_used_event(&self, q: u16, idx: u16) -> Result<(), DriverError> {
        let size = u64::from(self.guest.opts.queue_size);
        let base = self.guest.queues[usize::from(q)].base;
        self.guest.write(idx, base + AVAIL_OFFSET + 4 + 2 * size)
    }

    /// Sets the avail ring's flags of queue `q` (VRING_AVAIL_F_NO_INTERRUPT
    /// asks for no calls when EVENT_IDX is off).
    pub fn set_avail_flags(&self, q: u16, flags: u16) -> Result<(), DriverError> {
        let base = self.guest.queues[usize::from(q)].base;
        self.guest.write(flags, base + AVAIL_OFFSET)
    }

    /// Whether the device wants a kick for the next request made available
    /// on `q`, as a driver decides (virtio 1.2 §2.7.10): without EVENT_IDX
    /// the used ring's NO_NOTIFY flag, with it avail_event against the
    /// driver's avail idx.
    pub fn kicks_wanted(&self, q: u16) -> Result<bool, DriverError> {
        let queue = &self.guest.queues[usize::from(q)];
        let used = queue.base + USED_OFFSET;
        if self.guest.opts.event_idx {
            let size = u64::from(self.guest.opts.queue_size);
            let avail_event: u16 = self.guest.read(used + 4 + 8 * size)?;
            return Ok(avail_event == queue.avail_idx);
        }
        let flags: u16 = self.guest.read(used)?;
        Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
    }

    /// Waits up to `timeout` for the call eventfd of `q`; consumes it.
    pub fn wait_call(&self, q: u16, timeout: Duration) -> Result<bool, DriverError> {
        wait_eventfd(&self.guest.queues[usize::from(q)].call, timeout)
    }

    /// Waits up to `timeout` for the error eventfd of `q`; consumes it.
    pub fn wait_err(&self, q: u16, timeout: Duration) -> Result<bool, DriverError> {
        wait_eventfd(&self.guest.queues[usize::from(q)].err, timeout)
    }

    /// The used ring's idx of queue `q`.
    pub fn used_idx(&self, q: u16) -> Result<u16, DriverError> {
        self.guest.used_idx(q)
    }

    /// Used entries added since the last call.
    pub fn take_used(&mut self, q: u16) -> Result<Vec<Used>, DriverError> {
        let size = self.guest.opts.queue_size;
        let idx = self.guest.used_idx(q)?;
        let queue = &self.guest.queues[usize::from(q)];
        let mut out = Vec::new();
        let mut seen = queue.used_seen;
        while seen != idx {
            let elem = queue.base + USED_OFFSET + 4 + 8 * u64::from(seen % size);
            out.push(Used {
                id: self.guest.read::<u32>(elem)? as u16,
                len: self.guest.read(elem + 4)?,
            });
            seen = seen.wrapping_add(1);
        }
        self.guest.queues[usize::from(q)].used_seen = seen;
        // Like a driver that wants an interrupt for every completion:
        // used_event names the next entry it has not seen.
        self.set_used_event(q, seen)?;
        Ok(out)
    }

    /// Waits up to `timeout` until `n` new used entries are there (taking
    /// calls as they come), and returns all new entries.
    pub fn wait_used(
        &mut self,
        q: u16,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Used>, DriverError> {
        let deadline = Instant::now() + timeout;
        let mut got = self.take_used(q)?;
        // used_event is written after the ring was read, so an entry added
        // in between raises no call: look at the ring again after a while.
        while got.len() < n && Instant::now() < deadline {
            self.wait_call(q, RECHECK)?;
            got.extend(self.take_used(q)?);
        }
        Ok(got)
    }

    /// The bytes the device wrote for request `head` of queue `q`.
    pub fn response(&self, q: u16, head: u16, len: u32) -> Result<Vec<u8>, DriverError> {
        let &(addr, cap) = self
            .guest
            .buffers
            .get(&(q, head))
            .ok_or_else(|| DriverError::Memory(format!("no buffer for head {head}")))?;
        let mut out = vec![0u8; len.min(cap) as usize];
        self.guest
            .mem
            .read_slice(&mut out, GuestAddress(addr))
            .map_err(|e| DriverError::Memory(e.to_string()))?;
        Ok(out)
    }
}

fn wait_eventfd(fd: &EventFd, timeout: Duration) -> Result<bool, DriverError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if n == 0 {
        return Ok(false);
    }
    fd.read()?;
    Ok(true)
}

#[cfg(test)]
mod tests;
