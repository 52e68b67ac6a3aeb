//! Restarting a dead device process: the successor's start (with the
//! device's resources, its counters page and, for a held restart, a hold
//! socket), the restart policy's decision, and the replay of the device's
//! state to the successor.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::{HoldReport, Supervisor, SupervisorError, HOLD_TIMEOUT};
use crate::device_proc::{DeviceProcess, Supervised, FIRST_PASSED_FD};
use crate::exit::VmEvent;
use crate::vhost_user::{SharedDevice, REPLAY_TIMEOUT};

impl Supervisor {
    /// Starts process number `generation` on a new socket pair (and, if
    /// `hold`, with a hold socket); returns it, the monitor's end of its
    /// vhost-user socket and of its hold socket.
    pub(super) fn spawn(
        &self,
        generation: u64,
        hold: bool,
    ) -> Result<(DeviceProcess, UnixStream, Option<UnixStream>), SupervisorError> {
        let name = &self.recipe.name;
        let pair = |what| {
            UnixStream::pair().map_err(|source| SupervisorError::Socket {
                name: name.clone(),
                what,
                source,
            })
        };
        let (ours, theirs) = pair("vhost-user")?;
        let hold = hold.then(|| pair("hold")).transpose()?;
        let mut fds: Vec<BorrowedFd<'_>> = vec![theirs.as_fd()];
        fds.extend(self.recipe.resources.iter().map(AsFd::as_fd));
        let mut extra = vec![("--metrics-fd", self.metrics_fd.as_fd())];
        if let Some((_, device_end)) = &hold {
            extra.push(("--hold-fd", device_end.as_fd()));
        }
        let mut args = self.recipe.args.clone();
        for (option, fd) in extra {
            args.push(option.to_string());
            args.push((FIRST_PASSED_FD + fds.len() as i32).to_string());
            fds.push(fd);
        }
        let me = self.me.clone();
        let on_death = Box::new(move |how: String| {
            if let Some(supervisor) = me.upgrade() {
                supervisor.died(generation, how);
            }
        });
        let level = self.lock().level.unwrap_or_else(log::max_level);
        let process = DeviceProcess::spawn_supervised(
            name,
            &self.recipe.program,
            &args,
            &fds,
            self.events.clone(),
            &self.sandbox,
            Some(Supervised { on_death, level }),
        )?;
        Ok((process, ours, hold.map(|(ours, _)| ours)))
    }

    /// Process `generation` ended `how`: restart it (see the module), on
    /// the dead process's waiter thread.
    pub(super) fn died(&self, generation: u64, how: String) {
        let name = &self.recipe.name;
        // Not connected yet: the first start is failing, and says so.
        let Some(device) = self.device.get() else {
            return;
        };
        let (mut generation, mut how) = (generation, how);
        loop {
            let (delay, streak, old) = {
                let mut current = self.lock();
                if self.events.is_stopping() {
                    device.backend_gone();
                    return;
                }
                if current.generation != generation {
                    return;
                }
                if current.restarting {
                    // Its restart is under way and sees this death.
                    current.died_in_replay = Some(how);
                    return;
                }
                // Guest requests wait for the successor from now on.
                device.backend_down();
                let old = current.process.take().map(|p| p.pid());
                // A restart asked for is no crash: it neither counts toward
                // nor breaks a streak.
                let asked = std::mem::take(&mut current.asked);
                if !asked {
                    if current.started.elapsed() < self.policy.quick {
                        current.streak += 1;
                    } else {
                        current.streak = 0;
                    }
                }
                (self.policy.delay(current.streak), current.streak, old)
            };
            let old = old.map_or_else(String::new, |pid| format!(" (pid {pid})"));
            let Some(delay) = delay else {
                device.backend_gone();
                if !self.policy.restarts() {
                    log::error!("{name}{old} {how}; not restarting it (vm.conf: restarts 0)");
                    self.events.send(VmEvent::DeviceDied {
                        device: name.clone(),
                        how,
                    });
                    return;
                }
                let quick = self.policy.quick;
                log::error!(
                    "{name}{old} {how}: it died within {quick:?} of starting {streak} times in \
                     a row; not restarting it"
                );
                self.events.send(VmEvent::DeviceDied {
                    device: name.clone(),
                    how: format!(
                        "{how}, after dying within {quick:?} of starting {streak} times in a row"
                    ),
                });
                return;
            };
            if delay.is_zero() {
                log::warn!("{name}{old} {how}; restarting it");
            } else {
                log::warn!("{name}{old} {how}; restarting it in {delay:?}");
            }
            std::thread::sleep(delay);
            if self.events.is_stopping() {
                device.backend_gone();
                return;
            }
            generation += 1;
            match self.restart(generation, device) {
                Ok(pid) => {
                    let restarts = self.lock().restarts;
                    log::info!("{name}: restarted as pid {pid} (restart {restarts})");
                    return;
                }
                // The attempt counts as a process of its own that died at
                // once; its real death, if any, is of a generation past.
                Err(e) => {
                    how = format!("could not be restarted: {}", ipc::error_chain(&e));
                    generation += 1;
                    self.lock().generation = generation;
                }
            }
        }
    }

    /// Starts process `generation` and replays the device's state to it
    /// (held first, if a held restart was asked for).
    fn restart(&self, generation: u64, device: &SharedDevice) -> Result<u32, SupervisorError> {
        let hold = {
            let mut current = self.lock();
            current.generation = generation;
            current.started = Instant::now();
            current.restarting = true;
            current.died_in_replay = None;
            current.hold_next.take()
        };
        let result = self.start_and_replay(device, generation, hold.as_ref());
        let mut current = self.lock();
        current.restarting = false;
        current.held = false;
        // A death seen meanwhile is the cause of a failed replay, and fails
        // one that seemed to succeed.
        let pid = current.process.as_ref().map(DeviceProcess::pid);
        let result = match (result, current.died_in_replay.take(), pid) {
            (_, Some(how), Some(pid)) => Err(SupervisorError::DiedInReplay {
                name: self.recipe.name.clone(),
                pid,
                how,
            }),
            (result, _, _) => result,
        };
        match result {
            Ok(pid) => {
                current.restarts += 1;
                drop(current);
                device.backend_up();
                if let Some(after) = &self.recipe.after_restart {
                    after();
                }
                Ok(pid)
            }
            Err(e) => {
                // Not a process of this device: its death restarts nothing.
                current.generation = generation + 1;
                if let Some(process) = current.process.take() {
                    process.kill();
                }
                if let Some(report) = hold {
                    let _ = report.try_send(Err(ipc::error_chain(&e)));
                }
                Err(e)
            }
        }
    }

    /// The body of [`restart`](Self::restart): the process is in
    /// `current` from its start (so that `vmctl device` sees and may
    /// restart it) until it fails.
    fn start_and_replay(
        &self,
        device: &SharedDevice,
        generation: u64,
        hold: Option<&HoldReport>,
    ) -> Result<u32, SupervisorError> {
        let name = &self.recipe.name;
        let (process, socket, hold_socket) = self.spawn(generation, hold.is_some())?;
        let pid = process.pid();
        self.lock().process = Some(process);
        if let (Some(report), Some(mut hold_socket)) = (hold, hold_socket) {
            let stop = || {
                let current = self.lock();
                match current.process.as_ref() {
                    Some(process) => process.stop(),
                    None => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
                }
            };
            ipc::hold::hold(&mut hold_socket, HOLD_TIMEOUT, stop).map_err(|source| {
                SupervisorError::Hold {
                    name: name.clone(),
                    pid,
                    source,
                }
            })?;
            self.lock().held = true;
            log::warn!(
                "{name}: pid {pid} is held stopped before it serves; the guest's I/O on it \
                 waits. Attach a debugger or tracer, then continue it (kill -CONT {pid})"
            );
            let _ = report.try_send(Ok(pid));
        }
        // A held process answers once continued, whenever that is.
        let timeout = hold.is_none().then_some(REPLAY_TIMEOUT);
        device.lock().reconnect(socket, timeout)?;
        Ok(pid)
    }
}
