//! What vmctl prints: the status table, its JSON form, sizes.

use ipc::control::VmStatus;
use serde::Serialize;

/// A size the way vmctl shows it (fmt_scaled): `512M`, `1.5G`, `12K`, `0B`.
pub fn scaled(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() == 0.0 {
        format!("{}{}", value.round() as u64, UNITS[unit])
    } else {
        // One decimal, as fmt_scaled does below 100.
        let text = format!("{value:.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text).to_string();
        format!("{text}{}", UNITS[unit])
    }
}

/// The TTY column: the path without `/dev/`.
fn tty(path: &Option<String>) -> String {
    match path {
        Some(p) => p.strip_prefix("/dev/").unwrap_or(p).to_string(),
        None => "-".into(),
    }
}

/// The status table, header first, one line per VM.
pub fn status_table(vms: &[VmStatus]) -> String {
    let mut out = format!(
        "{:>5} {:>7} {:>5} {:>7} {:>7} {:>8} {:>12} {:>8} {}\n",
        "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME"
    );
    for vm in vms {
        let dash = || "-".to_string();
        out.push_str(&format!(
            "{:>5} {:>7} {:>5} {:>7} {:>7} {:>8} {:>12} {:>8} {}\n",
            vm.id,
            vm.pid.map_or_else(dash, |p| p.to_string()),
            vm.vcpus,
            scaled(vm.max_mem),
            vm.cur_mem.map_or_else(dash, scaled),
            tty(&vm.tty),
            vm.owner,
            vm.state.to_string(),
            vm.name
        ));
    }
    out
}

/// One VM in `status --json`.
#[derive(Serialize)]
struct JsonVm<'a> {
    id: u32,
    pid: Option<u32>,
    vcpus: u32,
    maxmem: u64,
    curmem: Option<u64>,
    tty: Option<&'a str>,
    owner: &'a str,
    state: String,
    name: &'a str,
}

/// `status --json`: an array of objects, sizes in bytes.
pub fn status_json(vms: &[VmStatus]) -> String {
    let list: Vec<JsonVm<'_>> = vms
        .iter()
        .map(|vm| JsonVm {
            id: vm.id,
            pid: vm.pid,
            vcpus: vm.vcpus,
            maxmem: vm.max_mem,
            curmem: vm.cur_mem,
            tty: vm.tty.as_deref(),
            owner: &vm.owner,
            state: vm.state.to_string(),
            name: &vm.name,
        })
        .collect();
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
}

/// `vmctl device list`: one line per device process. Counters are over
/// every process the device had.
pub fn devices_table(devices: &[ipc::control::DeviceStatus]) -> String {
    let row = |cells: [&str; 7]| {
        format!(
            "{:<10} {:>8} {:>8} {:>10} {:>7} {:>7}  {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let mut text = row([
        "DEVICE", "PID", "RESTARTS", "REQUESTS", "BYTES", "ERRORS", "STATE",
    ]);
    for d in devices {
        let pid = d.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        text.push_str(&row([
            &d.name,
            &pid,
            &d.restarts.to_string(),
            &d.requests.to_string(),
            &scaled(d.bytes),
            &d.errors.to_string(),
            &d.state.to_string(),
        ]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::control::VmState;

    fn vm(id: u32, running: bool) -> VmStatus {
        VmStatus {
            id,
            pid: running.then_some(4242),
            vcpus: 2,
            max_mem: 512 << 20,
            cur_mem: running.then_some(3 << 19),
            tty: running.then(|| "/dev/pts/7".to_string()),
            owner: "root".into(),
            state: if running {
                VmState::Running
            } else {
                VmState::Stopped
            },
            name: format!("vm{id}"),
        }
    }

    #[test]
    fn sizes_scale_like_fmt_scaled() {
        assert_eq!(scaled(0), "0B");
        assert_eq!(scaled(512 << 20), "512M");
        assert_eq!(scaled(3 << 29), "1.5G");
        assert_eq!(scaled(1536), "1.5K");
        assert_eq!(scaled(150 << 20), "150M");
    }

    #[test]
    fn table_has_vmctls_columns_and_dashes_for_stopped_vms() {
        let text = status_table(&[vm(1, true), vm(2, false)]);
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME"]
        );
        let running: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            running,
            ["1", "4242", "2", "512M", "1.5M", "pts/7", "root", "running", "vm1"]
        );
        let stopped: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            stopped,
            ["2", "-", "2", "512M", "-", "-", "root", "stopped", "vm2"]
        );
    }

    #[test]
    fn the_device_table_shows_counters_and_a_dash_for_a_device_between_processes() {
        use ipc::control::{DeviceState, DeviceStatus};
        let device = |name: &str, pid, state| DeviceStatus {
            name: name.into(),
            pid,
            state,
            restarts: 3,
            requests: 70_000,
            bytes: 3 << 29,
            errors: 1,
        };
        let text = devices_table(&[
            device("disk0", Some(812), DeviceState::Held),
            device("net0", None, DeviceState::Restarting),
        ]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["DEVICE", "PID", "RESTARTS", "REQUESTS", "BYTES", "ERRORS", "STATE"]
        );
        assert_eq!(rows[1], ["disk0", "812", "3", "70000", "1.5G", "1", "held"]);
        assert_eq!(
            rows[2],
            ["net0", "-", "3", "70000", "1.5G", "1", "restarting"]
        );
    }

    #[test]
    fn json_carries_every_column() {
        let text = status_json(&[vm(1, true)]);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value[0]["state"], "running");
        assert_eq!(value[0]["maxmem"], 512u64 << 20);
        assert_eq!(value[0]["tty"], "/dev/pts/7");
        assert_eq!(value[0]["name"], "vm1");
    }
}
