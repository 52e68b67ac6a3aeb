//! [`VhostUserDevice`]: a virtio device whose backend is a vhost-user
//! process, seen by the transport as any other [`VirtioDevice`].

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};

use super::features::{self, VERSION_1};
use super::state::{ring_user_addrs, InflightRegion, MemTable, NegotiatedState, VringState};
use super::Error;
use crate::virtio::{QueueConfig, QueueSet, VirtioDevice, VirtioDeviceError};

/// Largest ring the frontend lets a driver set up. vhost-user has no request
/// for a backend's limit; 256 is what QEMU's vhost-user-blk uses by default
/// and what every backend we run accepts.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// A virtio device served by a vhost-user backend over one connection.
///
/// # Invariants
/// - SET_OWNER, GET_FEATURES and the protocol feature negotiation happened
///   once, at [`connect`](Self::connect), as vhost-user.rst "Communication"
///   requires before any other request.
/// - Queues are started only by [`VirtioDevice::activate`] and stopped only
///   by [`VirtioDevice::reset`] (or a failed activation), each stop with
///   GET_VRING_BASE (vhost-user.rst "Ring states").
/// - `config` caches GET_CONFIG's answer (vhost-user.rst,
///   VHOST_USER_GET_CONFIG: "The vhost-user front-end may cache the
///   contents"), patched by each successful SET_CONFIG.
pub struct VhostUserDevice {
    pub(super) name: String,
    pub(super) device_type: u32,
    pub(super) frontend: Frontend,
    pub(super) config: Vec<u8>,
    pub(super) state: NegotiatedState,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Longest a backend may take to finish the initial negotiation.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Shuts a socket down unless disarmed within its timeout.
pub(super) struct Watchdog {
    disarm: Option<crossbeam_channel::Sender<()>>,
}

impl Watchdog {
    pub(super) fn start(
        socket: &UnixStream,
        timeout: std::time::Duration,
    ) -> std::io::Result<Self> {
        let victim = socket.try_clone()?;
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || {
                if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout)
                {
                    log::error!(
                        "vhost-user backend did not answer within {timeout:?}; closing its socket"
                    );
                    let _ = victim.shutdown(std::net::Shutdown::Both);
                }
            })?;
        Ok(Self { disarm: Some(tx) })
    }

    /// The negotiation ended: the socket stays.
    pub(super) fn disarm(mut self) {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
    }
}

/// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (those we use of
/// what the backend offers) and GET_QUEUE_NUM (with MQ): returns the
/// backend's features, the protocol features set, and how many queues
/// the device gets (`num_queues`, capped by the backend).
pub(super) fn negotiate(
    frontend: &mut Frontend,
    name: &str,
    num_queues: u16,
) -> Result<(u64, VhostUserProtocolFeatures, u16), Error> {
    let req = |request| {
        let device = name.to_string();
        move |source| Error::Request {
            device,
            request,
            source,
        }
    };
    frontend.set_owner().map_err(req(FrontendReq::SET_OWNER))?;
    let backend_features = frontend
        .get_features()
        .map_err(req(FrontendReq::GET_FEATURES))?;
    if backend_features & VERSION_1 == 0 {
        return Err(Error::NoVersion1 {
            device: name.to_string(),
            offered: backend_features,
        });
    }
    let mut protocol = VhostUserProtocolFeatures::empty();
    if backend_features & features::VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(req(FrontendReq::GET_PROTOCOL_FEATURES))?;
        protocol = features::wanted_protocol_features(offered);
        frontend
            .set_protocol_features(protocol)
            .map_err(req(FrontendReq::SET_PROTOCOL_FEATURES))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }
    let mut queues = num_queues;
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let max = frontend
            .get_queue_num()
            .map_err(req(FrontendReq::GET_QUEUE_NUM))?;
        if max < u64::from(queues) {
            log::warn!("{name}: backend supports {max} queues, not {queues}");
            // max < queues <= u16::MAX, so it fits.
            queues = max as u16;
        }
    }
    if queues == 0 {
        return Err(Error::NoQueues {
            device: name.to_string(),
        });
    }
    Ok((backend_features, protocol, queues))
}

impl VhostUserDevice {
    /// Connects to a backend listening at `path`; see [`connect`](Self::connect).
    pub fn connect_path(
        name: impl Into<String>,
        path: &Path,
        device_type: u32,
        num_queues: u16,
    ) -> Result<Self, Error> {
        let name = name.into();
        let socket = UnixStream::connect(path).map_err(|source| Error::Connect {
            device: name.clone(),
            path: path.to_owned(),
            source,
        })?;
        Self::connect(name, socket, device_type, num_queues)
    }

    /// Takes over a connected socket and negotiates: SET_OWNER,
    /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ) and
    /// GET_CONFIG (with CONFIG). `num_queues` is how many queues the
    /// device should have; a backend supporting fewer caps it.
    pub fn connect(
        name: impl Into<String>,
        socket: UnixStream,
        device_type: u32,
        num_queues: u16,
    ) -> Result<Self, Error> {
        Self::connect_timeout(name, socket, device_type, num_queues, REPLY_TIMEOUT)
    }

    /// [`connect`](Self::connect), the negotiation given at most `timeout`.
    pub fn connect_timeout(
        name: impl Into<String>,
        socket: UnixStream,
        device_type: u32,
        num_queues: u16,
        timeout: std::time::Duration,
    ) -> Result<Self, Error> {
        let name = name.into();
        // A backend that never answers must not hang the monitor: if the
        // negotiation has not ended within `timeout`, a watchdog shuts the
        // socket down and the pending request fails. (A read timeout on
        // the socket would not do: the vhost crate retries on EAGAIN.)
        let watchdog = Watchdog::start(&socket, timeout).map_err(|source| Error::Connect {
            device: name.clone(),
            path: "(passed socket)".into(),
            source,
        })?;
        let mut frontend = Frontend::from_stream(socket, u64::from(num_queues));
        let negotiated = negotiate(&mut frontend, &name, num_queues)?;
        let (backend_features, protocol, queues) = negotiated;
        let mut device = Self {
            name,
            device_type,
            frontend,
            config: Vec::new(),
            state: NegotiatedState::new(backend_features, protocol, queues),
        };
        device.refresh_config()?;
        watchdog.disarm();
        Ok(device)
    }

    /// The device's name, as errors and logs show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything negotiated so far, for replay to a restarted backend.
    pub fn state(&self) -> &NegotiatedState {
        &self.state
    }

    /// Re-reads the configuration space from the backend (after a
    /// configuration change). Without CONFIG, or for a device type with no
    /// configuration space, the cache stays empty and reads return zeros.
    pub fn refresh_config(&mut self) -> Result<(), Error> {
        let len = features::config_len(self.device_type);
        if len == 0 || !self.state.has(VhostUserProtocolFeatures::CONFIG) {
            return Ok(());
        }
        let (_, payload) = self
            .frontend
            // `len` is a small constant from `config_len`.
            .get_config(0, len as u32, VhostUserConfigFlags::empty(), &vec![0; len])
            .map_err(|source| self.request_error(FrontendReq::GET_CONFIG, source))?;
        self.config = payload;
        Ok(())
    }

    fn request_error(&self, request: FrontendReq, source: vhost::Error) -> Error {
        Error::Request {
            device: self.name.clone(),
            request,
            source,
        }
    }

    fn vring_error(&self, request: FrontendReq, queue: u16) -> impl FnOnce(vhost::Error) -> Error {
        let device = self.name.clone();
        move |source| Error::Vring {
            device,
            request,
            queue,
            source,
        }
    }

    /// Sends everything [`VirtioDevice::activate`] promises; on error the
    /// caller stops what was started.
    fn start(&mut self, queues: QueueSet) -> Result<(), Error> {
        for q in &queues.queues {
            self.check_queue(q)?;
        }
        let acked = features::backend_ack(self.state.backend_features, queues.acked_features);
        self.frontend
            .set_features(acked)
            .map_err(|e| self.request_error(FrontendReq::SET_FEATURES, e))?;
        self.state.acked_features = Some(acked);

        let table = MemTable::new(&queues.memory).map_err(|source| Error::MemTable {
            device: self.name.clone(),
            source,
        })?;
        self.frontend
            .set_mem_table(&table.region_infos())
            .map_err(|e| self.request_error(FrontendReq::SET_MEM_TABLE, e))?;
        self.state.mem_table = Some(table);

        if self.state.has(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
            self.set_inflight()?;
        }
        self.state.config_change = queues.config_change;
        for q in queues.queues {
            self.start_vring(&queues.memory, q)?;
        }
        if self.state.has_protocol_features() {
            for i in 0..self.state.vrings.len() {
                let index = self.state.vrings[i].index;
                self.frontend
                    .set_vring_enable(usize::from(index), true)
                    .map_err(self.vring_error(FrontendReq::SET_VRING_ENABLE, index))?;
            }
        }
        Ok(())
    }

    fn check_queue(&self, q: &QueueConfig) -> Result<(), Error> {
        if q.index >= self.state.num_queues {
            return Err(Error::NoSuchQueue {
                device: self.name.clone(),
                queue: q.index,
                num_queues: self.state.num_queues,
            });
        }
        if q.size == 0 || !q.size.is_power_of_two() || q.size > QUEUE_MAX_SIZE {
            return Err(Error::QueueSize {
                device: self.name.clone(),
                queue: q.index,
                size: q.size,
                max: QUEUE_MAX_SIZE,
            });
        }
        Ok(())
    }

    /// GET_INFLIGHT_FD on the first activation after a reset, then
    /// SET_INFLIGHT_FD with the region kept.
    fn set_inflight(&mut self) -> Result<(), Error> {
        if self.state.inflight.is_none() {
            let want = VhostUserInflight::new(0, 0, self.state.num_queues, QUEUE_MAX_SIZE);
            let (got, file) = self
                .frontend
                .get_inflight_fd(&want)
                .map_err(|e| self.request_error(FrontendReq::GET_INFLIGHT_FD, e))?;
            self.state.inflight = Some(InflightRegion {
                mmap_size: got.mmap_size,
                mmap_offset: got.mmap_offset,
                num_queues: self.state.num_queues,
                queue_size: QUEUE_MAX_SIZE,
                file,
            });
        }
        if let Some(inflight) = &self.state.inflight {
            self.frontend
                .set_inflight_fd(&inflight.descriptor(), inflight.file.as_raw_fd())
                .map_err(|e| self.request_error(FrontendReq::SET_INFLIGHT_FD, e))?;
        }
        Ok(())
    }

    /// SET_VRING_NUM, ADDR, BASE, CALL, then KICK (which starts the ring):
    /// the call fd is in place before the backend can complete anything.
    fn start_vring(
        &mut self,
        memory: &crate::memory::GuestMemory,
        q: QueueConfig,
    ) -> Result<(), Error> {
        let index = q.index;
        let i = usize::from(index);
        let user = ring_user_addrs(memory, q.size, q.desc_table, q.avail_ring, q.used_ring)
            .map_err(|source| Error::Ring {
                device: self.name.clone(),
                queue: index,
                source,
            })?;
        self.frontend
            .set_vring_num(i, q.size)
            .map_err(self.vring_error(FrontendReq::SET_VRING_NUM, index))?;
        let addr = VringConfigData {
            queue_max_size: QUEUE_MAX_SIZE,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: user.desc,
            used_ring_addr: user.used,
            avail_ring_addr: user.avail,
            log_addr: None,
        };
        self.frontend
            .set_vring_addr(i, &addr)
            .map_err(self.vring_error(FrontendReq::SET_VRING_ADDR, index))?;
        self.frontend
            .set_vring_base(i, 0)
            .map_err(self.vring_error(FrontendReq::SET_VRING_BASE, index))?;
        // A queue the driver polls (no MSI-X vector) still gets a call
        // eventfd: one nobody reads. The protocol's no-fd form
        // (VHOST_USER_VRING_NOFD_MASK) crashes some backends (QEMU 7.2's
        // libvhost-user writes to fd -1 when it would notify).
        let call = match q.call {
            Some(call) => call,
            None => EventFd::new(EFD_NONBLOCK).map_err(|source| Error::PollCallFd {
                device: self.name.clone(),
                queue: index,
                source,
            })?,
        };
        self.frontend
            .set_vring_call(i, &call)
            .map_err(self.vring_error(FrontendReq::SET_VRING_CALL, index))?;
        let kicked = self.frontend.set_vring_kick(i, &q.kick);
        // From here the backend may run the ring: record it, so that a
        // failure below still stops it.
        self.state.vrings.push(VringState {
            index,
            size: q.size,
            guest: [q.desc_table, q.avail_ring, q.used_ring],
            user,
            base: 0,
            kick: q.kick,
            call,
        });
        kicked.map_err(self.vring_error(FrontendReq::SET_VRING_KICK, index))
    }

    /// Disables and stops every started vring (GET_VRING_BASE), dropping
    /// its eventfds whatever the backend answers; returns the first error.
    fn stop(&mut self) -> Result<(), Error> {
        let mut first_error = None;
        self.state.stopped_bases.clear();
        for vring in std::mem::take(&mut self.state.vrings) {
            let i = usize::from(vring.index);
            if self.state.has_protocol_features() {
                if let Err(e) = self.frontend.set_vring_enable(i, false) {
                    let err = self.vring_error(FrontendReq::SET_VRING_ENABLE, vring.index)(e);
                    first_error.get_or_insert(err);
                }
            }
            match self.frontend.get_vring_base(i) {
                Ok(base) => self.state.stopped_bases.push((vring.index, base)),
                Err(e) => {
                    let err = self.vring_error(FrontendReq::GET_VRING_BASE, vring.index)(e);
                    first_error.get_or_insert(err);
                }
            }
            // `vring` drops here, closing the monitor's kick and call fds.
        }
        self.state.config_change = None;
        self.state.mem_table = None;
        first_error.map_or(Ok(()), Err)
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_MAX_SIZE; usize::from(self.state.num_queues)]
    }

    fn features(&self) -> u64 {
        features::guest_features(self.state.backend_features)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(bytes) = self.config.get(start..) {
            let n = bytes.len().min(data.len());
            data[..n].copy_from_slice(&bytes[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
        else {
            log::debug!("{}: config write at {offset:#x} out of range", self.name);
            return;
        };
        if end > self.config.len() {
            log::debug!("{}: config write at {offset:#x} out of range", self.name);
            return;
        }
        // Flags 0: a driver's write to a writable field (vhost-user.rst
        // "Virtio device config space"; the crate's WRITABLE is 1, which
        // backends take as the live-migration flag and refuse).
        // `end` is within the cached space, which `config_len` keeps small.
        match self
            .frontend
            .set_config(offset as u32, VhostUserConfigFlags::empty(), data)
        {
            Ok(()) => {
                self.config[end - data.len()..end].copy_from_slice(data);
                self.state
                    .config_writes
                    .push((offset as u32, data.to_vec()));
            }
            Err(e) => log::warn!("{}", self.request_error(FrontendReq::SET_CONFIG, e).chain()),
        }
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), VirtioDeviceError> {
        if !self.state.vrings.is_empty() {
            // The transport broke its promise of one activation per reset:
            // reset first (rings stopped, inflight region dropped: its
            // entries describe the old rings and must not be resubmitted
            // on the new ones) rather than let two sets run.
            log::warn!("{}: activated while running; resetting first", self.name);
            self.state.inflight = None;
            if let Err(err) = self.stop() {
                log::warn!("{}", err.chain());
            }
        }
        if let Err(err) = self.start(queues) {
            if let Err(stop_err) = self.stop() {
                log::warn!("{}", stop_err.chain());
            }
            return Err(err.into());
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), VirtioDeviceError> {
        // vhost-user.rst, VHOST_USER_GET_INFLIGHT_FD: a new region after a
        // reset; the old one describes rings the driver has abandoned.
        self.state.inflight = None;
        // A reset returns writable configuration fields to their defaults.
        self.state.config_writes.clear();
        self.stop().map_err(Into::into)
    }
}
