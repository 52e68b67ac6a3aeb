//! Bringing a restarted backend to where its predecessor was: the same
//! negotiation, then, if the driver had the device running, the memory
//! table, the same inflight region (which records what was in flight when
//! the old process died), and every started vring with its kick and call
//! eventfds — the very KVM ioeventfd and irqfd the guest already uses, so
//! a kick that arrived while no backend ran is still pending on the kick
//! eventfd when the new one starts reading it.
//!
//! A ring's base is the used ring's `idx` as the guest memory holds it
//! now: everything before it was completed; the backend resubmits, from
//! the inflight region, what was taken but not completed, in the order it
//! was taken (vhost-user.rst, "Inflight I/O tracking"), and continues
//! after those. Nothing is completed twice and nothing is lost.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Address, Bytes};

use super::device::{negotiate, VhostUserDevice, Watchdog, QUEUE_MAX_SIZE};
use super::Error;

/// Longest a restarted backend may take to take the replay.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

impl VhostUserDevice {
    /// Replays everything the previous backend was told to a new one on
    /// `socket`; afterwards the device runs as before. On error the device
    /// keeps the state (another backend may be tried) and `socket` is shut.
    /// A backend that takes longer than `timeout` ([`REPLAY_TIMEOUT`] but
    /// for one held for a debugger: `None`) has its socket shut.
    pub fn reconnect(
        &mut self,
        socket: UnixStream,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let watchdog = timeout
            .map(|timeout| Watchdog::start(&socket, timeout))
            .transpose()
            .map_err(|source| Error::Connect {
                device: self.name.clone(),
                path: "(restarted backend)".into(),
                source,
            })?;
        let num_queues = self.state.num_queues;
        let mut frontend = Frontend::from_stream(socket, u64::from(num_queues));
        let (offered, protocol, queues) = negotiate(&mut frontend, &self.name, num_queues)?;
        self.check_compatible(offered, protocol, queues)?;
        self.frontend = frontend;
        self.state.backend_features = offered;
        let result = self.replay_running();
        if let Some(watchdog) = watchdog {
            watchdog.disarm();
        }
        result
    }

    /// The new backend must offer what the old one did and the guest uses.
    fn check_compatible(
        &self,
        offered: u64,
        protocol: VhostUserProtocolFeatures,
        queues: u16,
    ) -> Result<(), Error> {
        let incompatible = |what: String| Error::Incompatible {
            device: self.name.clone(),
            what,
        };
        let needed = self.state.acked_features.unwrap_or(0);
        if offered & needed != needed {
            return Err(incompatible(format!(
                "it offers features {offered:#x}, the driver uses {needed:#x}"
            )));
        }
        if protocol != self.state.protocol_features {
            return Err(incompatible(format!(
                "protocol features {protocol:?}, before {:?}",
                self.state.protocol_features
            )));
        }
        if queues != self.state.num_queues {
            return Err(incompatible(format!(
                "{queues} queues, before {}",
                self.state.num_queues
            )));
        }
        Ok(())
    }

    /// If the driver had the device running: SET_FEATURES, the memory
    /// table, the inflight region, each vring, then ENABLE; and the
    /// driver's configuration writes.
    fn replay_running(&mut self) -> Result<(), Error> {
        for (offset, data) in self.state.config_writes.clone() {
            self.frontend
                .set_config(
                    offset,
                    vhost::vhost_user::message::VhostUserConfigFlags::empty(),
                    &data,
                )
                .map_err(|e| self.replay_error(FrontendReq::SET_CONFIG, e))?;
        }
        let Some(acked) = self.state.acked_features else {
            return Ok(());
        };
        self.frontend
            .set_features(acked)
            .map_err(|e| self.replay_error(FrontendReq::SET_FEATURES, e))?;
        let Some(table) = &self.state.mem_table else {
            return Ok(());
        };
        let regions = table.region_infos();
        let memory = table.memory().clone();
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| self.replay_error(FrontendReq::SET_MEM_TABLE, e))?;
        if let Some(inflight) = &self.state.inflight {
            self.frontend
                .set_inflight_fd(&inflight.descriptor(), inflight.file.as_raw_fd())
                .map_err(|e| self.replay_error(FrontendReq::SET_INFLIGHT_FD, e))?;
        }
        for i in 0..self.state.vrings.len() {
            let vring = &self.state.vrings[i];
            let index = vring.index;
            let q = usize::from(index);
            let used_idx: u16 = memory
                .read_obj(vring.guest[2].unchecked_add(2))
                .unwrap_or(0);
            let addr = VringConfigData {
                queue_max_size: QUEUE_MAX_SIZE,
                queue_size: vring.size,
                flags: 0,
                desc_table_addr: vring.user.desc,
                used_ring_addr: vring.user.used,
                avail_ring_addr: vring.user.avail,
                log_addr: None,
            };
            let vring_err = |request| {
                let device = self.name.clone();
                move |source| Error::Vring {
                    device,
                    request,
                    queue: index,
                    source,
                }
            };
            self.frontend
                .set_vring_num(q, vring.size)
                .map_err(vring_err(FrontendReq::SET_VRING_NUM))?;
            self.frontend
                .set_vring_addr(q, &addr)
                .map_err(vring_err(FrontendReq::SET_VRING_ADDR))?;
            self.frontend
                .set_vring_base(q, used_idx)
                .map_err(vring_err(FrontendReq::SET_VRING_BASE))?;
            self.frontend
                .set_vring_call(q, &vring.call)
                .map_err(vring_err(FrontendReq::SET_VRING_CALL))?;
            self.frontend
                .set_vring_kick(q, &vring.kick)
                .map_err(vring_err(FrontendReq::SET_VRING_KICK))?;
            log::debug!(
                "{}: queue {index} replayed from used idx {used_idx}",
                self.name
            );
        }
        if self.state.has_protocol_features() {
            for i in 0..self.state.vrings.len() {
                let index = self.state.vrings[i].index;
                self.frontend
                    .set_vring_enable(usize::from(index), true)
                    .map_err(|source| Error::Vring {
                        device: self.name.clone(),
                        request: FrontendReq::SET_VRING_ENABLE,
                        queue: index,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn replay_error(&self, request: FrontendReq, source: vhost::Error) -> Error {
        Error::Request {
            device: self.name.clone(),
            request,
            source,
        }
    }
}
