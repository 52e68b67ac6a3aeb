//! The vhost-user request handler: the frontend's messages applied to the
//! memory table, the vrings and their workers.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;

use log::debug;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error as VuError, GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use crate::config::ConfigNotifier;
use crate::device::Device;
use crate::inflight::InflightRegion;
use crate::memory::{MemoryTable, MAX_MEM_SLOTS};
use crate::vring::SharedVring;
use crate::worker::Worker;

type Result<T> = std::result::Result<T, VuError>;

/// Protocol features the layer always offers.
pub const LAYER_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::RESET_DEVICE);

/// Ring features the layer implements for every device.
pub const LAYER_RING_FEATURES: u64 =
    1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;

fn eventfd(file: File) -> EventFd {
    // SAFETY: the fd comes from a File we own; ownership moves into the
    // EventFd, which closes it once.
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

/// Per-connection protocol state.
///
/// # Invariants
/// - `workers[i]` is `Some` exactly while ring `i` is started (vhost-user
///   spec, "Ring states": started by SET_VRING_KICK, stopped by
///   GET_VRING_BASE).
/// - `acked_features` is a subset of what GET_FEATURES offered.
pub struct BackendHandler<D: Device> {
    device: Arc<D>,
    notifier: ConfigNotifier,
    owned: bool,
    acked_features: u64,
    acked_protocol: VhostUserProtocolFeatures,
    memory: MemoryTable,
    vrings: Vec<SharedVring>,
    workers: Vec<Option<Worker>>,
    inflight: Option<InflightRegion>,
}

impl<D: Device> BackendHandler<D> {
    /// A handler for a new connection.
    pub fn new(device: Arc<D>, notifier: ConfigNotifier) -> Result<Self> {
        let vrings = Self::fresh_vrings(&device)?;
        let workers = vrings.iter().map(|_| None).collect();
        Ok(Self {
            device,
            notifier,
            owned: false,
            acked_features: 0,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            memory: MemoryTable::default(),
            vrings,
            workers,
            inflight: None,
        })
    }

    fn fresh_vrings(device: &Arc<D>) -> Result<Vec<SharedVring>> {
        (0..device.num_queues())
            .map(|i| {
                SharedVring::new(i, device.max_queue_size())
                    .map_err(|_| VuError::InvalidOperation("device queue size"))
            })
            .collect()
    }

    fn offered_features(&self) -> u64 {
        self.device.features()
            | LAYER_RING_FEATURES
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn offered_protocol(&self) -> VhostUserProtocolFeatures {
        let mut features = LAYER_PROTOCOL_FEATURES;
        if self
            .device
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            // Config changes travel over the backend channel.
            features |= VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::BACKEND_REQ;
        }
        features
    }

    fn vring(&self, index: u32) -> Result<&SharedVring> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.vrings.get(i))
            .ok_or(VuError::InvalidParam)
    }

    fn stop_worker(&mut self, index: usize) {
        if let Some(worker) = self.workers.get_mut(index).and_then(Option::take) {
            worker.stop();
            if let Ok(queue) = u16::try_from(index) {
                self.device.stop_queue(queue);
            }
        }
    }

    /// Stops every worker and forgets per-driver state (end of connection
    /// or RESET_DEVICE).
    pub fn shutdown(&mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i);
        }
        self.device.reset();
    }

    fn start_ring(&mut self, index: u8, kick: EventFd) -> Result<()> {
        let i = usize::from(index);
        self.stop_worker(i);
        let vring = self.vring(u32::from(index))?.clone();
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let memory = self.memory.memory();
        {
            let mut v = vring.lock();
            if let Err(e) = v.start(&memory.memory(), event_idx) {
                // The guest programmed the ring; its failure is not ours.
                debug!("{}: {e}; queue stopped until reset", self.device.name());
                v.set_broken();
                return Ok(());
            }
        }
        // The worker looks at the ring once before it waits for a kick:
        // requests resubmitted after a reconnect get no new kick, and a
        // predecessor may have read the kick for requests it died before
        // taking (enabling the ring wakes the worker too, but a frontend
        // without protocol features sends no enable). On a fresh ring the
        // look finds nothing.
        let run_now = true;
        let worker = Worker::spawn(
            u16::from(index),
            Arc::clone(&self.device),
            vring,
            memory,
            kick,
            run_now,
        )
        .map_err(VuError::SocketError)?;
        self.workers[i] = Some(worker);
        Ok(())
    }
}

impl<D: Device> Drop for BackendHandler<D> {
    fn drop(&mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i);
        }
    }
}

impl<D: Device> VhostUserBackendReqHandlerMut for BackendHandler<D> {
    fn set_owner(&mut self) -> Result<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.owned = false;
        self.reset_device()
    }

    fn reset_device(&mut self) -> Result<()> {
        self.shutdown();
        self.vrings = Self::fresh_vrings(&self.device)?;
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.offered_features() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        // Without protocol features rings start enabled ("Ring states").
        if features & protocol == 0 {
            for vring in &self.vrings {
                vring.lock().enabled = true;
            }
        }
        self.device.set_acked_features(features & !protocol);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.memory.set(ctx, files).map_err(|e| {
            debug!("SET_MEM_TABLE: {e}");
            VuError::InvalidParam
        })?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let size = u16::try_from(num).map_err(|_| VuError::InvalidParam)?;
        self.vring(index)?
            .lock()
            .queue
            .try_set_size(size)
            .map_err(|_| VuError::InvalidParam)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let tr = |a| self.memory.user_to_guest(a).ok_or(VuError::InvalidParam);
        let (desc, avail, used) = (tr(descriptor)?, tr(available)?, tr(used)?);
        self.vring(index)?
            .lock()
            .set_addresses(desc, avail, used)
            .map_err(|_| VuError::InvalidParam)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        // Split rings only: the base is the next avail index.
        let base = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        self.vring(index)?.lock().base = base;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let vring = self.vring(index)?.clone();
        self.stop_worker(index as usize);
        let next = vring.lock().stop();
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        // Polling rings (no kick fd) are not supported.
        let file = fd.ok_or(VuError::InvalidParam)?;
        self.start_ring(index, eventfd(file))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let mut vring = self.vring(u32::from(index))?.lock();
        vring.call = fd.map(eventfd);
        if let (true, Some(call)) = (vring.missed_call, &vring.call) {
            // Requests completed before this fd arrived (resubmitted ones,
            // after a reconnect) are signalled now.
            if call.write(1).is_ok() {
                vring.missed_call = false;
            }
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?.lock().err = fd.map(eventfd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(self.offered_protocol())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let features =
            VhostUserProtocolFeatures::from_bits(features).ok_or(VuError::InvalidParam)?;
        if !self.offered_protocol().contains(features) {
            return Err(VuError::InvalidParam);
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(u64::from(self.device.num_queues()))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.vring(index)?.lock().enabled = enable;
        if let (true, Some(Some(worker))) = (enable, self.workers.get(index as usize)) {
            worker.wake();
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        let config = self.device.config();
        let start = offset as usize;
        let end = start
            .checked_add(size as usize)
            .ok_or(VuError::InvalidParam)?;
        config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or(VuError::InvalidParam)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        if self.device.write_config(offset, buf) {
            Ok(())
        } else {
            Err(VuError::InvalidParam)
        }
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {
        // vhost's `Backend` cannot send CONFIG_CHANGE_MSG; the connection
        // loop staged a duplicate of the same socket (see `config`).
        self.notifier.activate();
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(VuError::InvalidOperation("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let (region, file) =
            InflightRegion::create(msg.num_queues, msg.queue_size).map_err(|e| {
                debug!("GET_INFLIGHT_FD: {e}");
                VuError::BackendInternalError
            })?;
        let size = crate::inflight::region_size(msg.num_queues, msg.queue_size) as u64;
        self.attach_inflight(region);
        Ok((
            VhostUserInflight::new(size, 0, msg.num_queues, msg.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> Result<()> {
        let region = InflightRegion::from_file(
            file,
            msg.mmap_size,
            msg.mmap_offset,
            msg.num_queues,
            msg.queue_size,
        )
        .map_err(|e| {
            debug!("SET_INFLIGHT_FD: {e}");
            VuError::InvalidParam
        })?;
        self.attach_inflight(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        self.memory.add(region, fd).map_err(|e| {
            debug!("ADD_MEM_REG: {e}");
            VuError::InvalidParam
        })?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        self.memory
            .remove(region.guest_phys_addr, region.memory_size)
            .map_err(|e| {
                debug!("REM_MEM_REG: {e}");
                VuError::InvalidParam
            })
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(VuError::InvalidOperation("no dirty logging"))
    }
}

impl<D: Device> BackendHandler<D> {
    fn attach_inflight(&mut self, region: InflightRegion) {
        for (i, vring) in self.vrings.iter().enumerate() {
            vring.lock().inflight = u16::try_from(i).ok().and_then(|i| region.queue(i));
        }
        self.inflight = Some(region);
    }
}
