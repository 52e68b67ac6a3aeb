//! vmctl's commands: parsing each one's arguments into a request, sending
//! it, and printing the answer the way vmctl(8) does.
//!
//! A command may be abbreviated to any unique prefix (`stat`, `unp`).
//! Messages go to stderr prefixed `vmctl: `; `status` goes to stdout.
//! Exit status: 0 on success, 1 on any error.

use std::path::{Path, PathBuf};

use ipc::control::{
    DiskArg, DiskFormat, LogVerbosity, Request, ResetTarget, Response, StartRequest, VmRef, VmState,
};

use crate::client::Session;
use crate::getopt::{getopt, Parsed};
use crate::output;

/// Most network interfaces of a VM (vm.conf's limit).
const MAX_INTERFACES: u32 = 8;
/// Guest RAM limits, as the monitor checks them.
const MIN_MEMORY: u64 = 4 << 20;
const MAX_MEMORY: u64 = 1 << 40;

/// The commands and their usage lines.
pub const COMMANDS: &[(&str, &str)] = &[
    ("console", "console id"),
    ("create", "create [-b base | -i disk] [-s size] disk"),
    (
        "device",
        "device list id | device restart [-d] id device |\n\t\tdevice log id device brief | verbose",
    ),
    ("load", "load filename"),
    ("log", "log brief | verbose"),
    ("pause", "pause id"),
    ("reload", "reload"),
    ("reset", "reset [all | switches | vms]"),
    ("show", "show [-r] [--json] [id]"),
    (
        "start",
        "start [-cL] [-B device] [-b path] [-d disk] [-i count]\n\t\t[-m size] [-n switch] [-r path] [-t name] id | name",
    ),
    ("status", "status [-r] [--json] [id]"),
    ("stop", "stop [-fw] [id | -a]"),
    ("unpause", "unpause id"),
    ("wait", "wait id"),
];

/// A failure, with the message vmctl prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

type Outcome = Result<(), Failure>;

/// The usage text.
pub fn usage() -> String {
    let mut text = String::from("usage:\tvmctl [-v] command [arg ...]\n");
    for (_, line) in COMMANDS {
        text.push_str(&format!("\tvmctl {line}\n"));
    }
    text
}

/// The command `word` abbreviates.
pub fn lookup(word: &str) -> Result<&'static str, Failure> {
    if let Some((name, _)) = COMMANDS.iter().find(|(name, _)| *name == word) {
        return Ok(name);
    }
    let matches: Vec<&str> = COMMANDS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !word.is_empty() && name.starts_with(word))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Failure(format!("unknown command: {word}\n{}", usage()))),
        many => Err(Failure(format!(
            "ambiguous command: {word} (could be {})",
            many.join(", ")
        ))),
    }
}

fn usage_of(command: &str) -> Failure {
    let line = COMMANDS
        .iter()
        .find(|(name, _)| *name == command)
        .map_or("", |(_, line)| line);
    Failure(format!("usage:\tvmctl {line}"))
}

/// Runs `command` (already looked up) with `args`.
pub fn run(command: &str, args: &[String]) -> Outcome {
    match command {
        "start" => start(args),
        "stop" => stop(args),
        "status" | "show" => status(command, args),
        "wait" => wait(args),
        "pause" => simple_vm(command, args, Request::Pause),
        "unpause" => simple_vm(command, args, Request::Unpause),
        "load" => load(args),
        "reload" => no_args(command, args, Request::Reload),
        "reset" => reset(args),
        "log" => log(args),
        "create" => create(args),
        "console" => console(args),
        "device" => device(args),
        other => Err(Failure(format!("unknown command: {other}"))),
    }
}

fn parse(command: &str, args: &[String], spec: &str) -> Result<Parsed, Failure> {
    getopt(args, spec).map_err(|e| Failure(format!("{e}\n{}", usage_of(command).0)))
}

fn vm_ref(text: &str) -> Result<VmRef, Failure> {
    text.parse()
        .map_err(|e: ipc::control::NameError| Failure(e.to_string()))
}

fn one_vm(command: &str, parsed: &Parsed) -> Result<VmRef, Failure> {
    match parsed.operands.as_slice() {
        [one] => vm_ref(one),
        _ => Err(usage_of(command)),
    }
}

/// Sends `request` and returns its first response, turning an error
/// response into a failure that starts with `context`.
fn ask(request: &Request, context: &str) -> Result<(Session, Response), Failure> {
    let mut session = Session::send(request).map_err(|e| Failure(ipc::error_chain(&e)))?;
    let response = session.recv().map_err(|e| Failure(ipc::error_chain(&e)))?;
    match response {
        Response::Error { message, .. } => Err(Failure(format!("{context}: {message}"))),
        other => Ok((session, other)),
    }
}

fn say(text: &str) {
    eprintln!("vmctl: {text}");
}

fn absolute(path: &str) -> PathBuf {
    std::path::absolute(Path::new(path)).unwrap_or_else(|_| PathBuf::from(path))
}

fn disk_arg(text: &str) -> DiskArg {
    let (format, path) = if let Some(p) = text.strip_prefix("raw:") {
        (Some(DiskFormat::Raw), p)
    } else if let Some(p) = text.strip_prefix("qcow2:") {
        (Some(DiskFormat::Qcow2), p)
    } else {
        (None, text)
    };
    DiskArg {
        path: absolute(path),
        format,
    }
}

/// `-m`: a size rounded down to whole MB (as vm.conf's `memory`), within
/// the monitor's limits.
fn memory(text: &str) -> Result<u64, Failure> {
    let bytes = ipc::size::parse_size(text).map_err(|e| Failure(format!("-m: {e}")))?;
    let rounded = bytes / (1 << 20) * (1 << 20);
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&rounded) {
        return Err(Failure(format!(
            "-m {text}: memory must be between 4M and 1T"
        )));
    }
    Ok(rounded)
}

fn start(args: &[String]) -> Outcome {
    let p = parse("start", args, "B:b:cd:i:Lm:n:r:t:")?;
    for (letter, what) in [
        ('r', "-r (cdrom) is not built yet"),
        (
            'B',
            "-B (boot device) needs BIOS boot, which is not built yet",
        ),
    ] {
        if p.flag(letter) {
            return Err(Failure(format!("start: not yet: {what}")));
        }
    }
    let vm = one_vm("start", &p)?;
    let request = StartRequest {
        vm: Some(vm.clone()),
        template: p.value('t'),
        kernel: p.value('b').map(|b| absolute(&b)),
        disks: p.values('d').iter().map(|d| disk_arg(d)).collect(),
        memory: p.value('m').map(|m| memory(&m)).transpose()?,
        local_interfaces: p.opts.iter().filter(|o| o.letter == 'L').count() as u32,
        switches: p.values('n'),
        interfaces: match p.value('i') {
            None => 0,
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_INTERFACES)
                .ok_or_else(|| Failure(format!("-i {n}: a count from 0 to {MAX_INTERFACES}")))?,
        },
    };
    if let Some(t) = &request.template {
        ipc::control::check_vm_name(t).map_err(|e| Failure(format!("-t: {e}")))?;
    }
    let (_, response) = ask(&Request::Start(request), "start vm command failed")?;
    match response {
        Response::Started { id, tty, .. } => {
            match tty {
                Some(tty) => say(&format!("started vm {id} successfully, tty {tty}")),
                None => say(&format!("started vm {id} successfully")),
            }
            if p.flag('c') {
                say(&crate::console::attach(&VmRef::Id(id))?);
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(response: &Response) -> Failure {
    Failure(format!("unexpected answer from vmd: {response:?}"))
}

fn stop(args: &[String]) -> Outcome {
    let p = parse("stop", args, "afw")?;
    let vm = match (p.flag('a'), p.operands.as_slice()) {
        (true, []) => None,
        (false, [one]) => Some(vm_ref(one)?),
        _ => return Err(usage_of("stop")),
    };
    let label = vm
        .as_ref()
        .map_or("all vms".to_string(), |v| format!("vm {v}"));
    let request = Request::Stop {
        vm,
        force: p.flag('f'),
        wait: p.flag('w'),
    };
    let (mut session, mut response) = ask(&request, &format!("stopping {label}"))?;
    loop {
        match response {
            Response::Done(text) => {
                say(&format!("stopping {label}: {text}"));
                return Ok(());
            }
            Response::Stopped { name, how, .. } => {
                say(&format!(
                    "stopping vm {name}: vm has been terminated ({how})"
                ));
                if request_single(&request) {
                    return Ok(());
                }
            }
            Response::Error { message, .. } => {
                return Err(Failure(format!("stopping {label}: {message}")))
            }
            other => return Err(unexpected(&other)),
        }
        response = session.recv().map_err(|e| Failure(ipc::error_chain(&e)))?;
    }
}

fn request_single(request: &Request) -> bool {
    matches!(request, Request::Stop { vm: Some(_), .. })
}

fn status(command: &str, args: &[String]) -> Outcome {
    let json = args.iter().any(|a| a == "--json");
    let args: Vec<String> = args.iter().filter(|a| *a != "--json").cloned().collect();
    let p = parse(command, &args, "r")?;
    let filter = match p.operands.as_slice() {
        [] => None,
        [one] => Some(vm_ref(one)?),
        _ => return Err(usage_of(command)),
    };
    let (_, response) = ask(&Request::Status, "status")?;
    let Response::Status(mut vms) = response else {
        return Err(unexpected(&response));
    };
    if p.flag('r') {
        vms.retain(|v| !matches!(v.state, VmState::Stopped | VmState::Waiting));
    }
    if let Some(filter) = &filter {
        vms.retain(|v| match filter {
            VmRef::Id(id) => v.id == *id,
            VmRef::Name(name) => v.name == *name,
        });
        if vms.is_empty() {
            return Err(Failure(format!("status: no vm {filter}")));
        }
    }
    if json {
        print!("{}", output::status_json(&vms));
    } else {
        print!("{}", output::status_table(&vms));
    }
    Ok(())
}

fn wait(args: &[String]) -> Outcome {
    let p = parse("wait", args, "")?;
    let vm = one_vm("wait", &p)?;
    let (_, response) = ask(&Request::Wait(vm.clone()), &format!("waiting for vm {vm}"))?;
    match response {
        Response::Stopped { name, how, .. } => {
            say(&format!(
                "waiting for vm {name}: vm has been terminated ({how})"
            ));
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn simple_vm(command: &str, args: &[String], make: fn(VmRef) -> Request) -> Outcome {
    let p = parse(command, args, "")?;
    let vm = one_vm(command, &p)?;
    let (_, response) = ask(&make(vm), &format!("{command} vm command failed"))?;
    match response {
        Response::Done(text) => {
            say(&text);
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

/// `vmctl device list id`: the VM's device processes (name, pid,
/// restarts, counters, state); `vmctl device restart [-d] id device`: kill
/// that process, which the VM's monitor restarts (the guest sees a pause),
/// with `-d` held stopped before it serves, for a debugger; `vmctl device
/// log id device brief|verbose`: that device's log level.
fn device(args: &[String]) -> Outcome {
    let Some((action, rest)) = args.split_first() else {
        return Err(usage_of("device"));
    };
    let spec = if action == "restart" { "d" } else { "" };
    let p = parse("device", rest, spec)?;
    let operands: Vec<&str> = p.operands.iter().map(String::as_str).collect();
    match (action.as_str(), &operands[..]) {
        ("list", [vm]) => {
            let request = Request::DeviceList(vm_ref(vm)?);
            let (_, response) = ask(&request, "device list failed")?;
            match response {
                Response::Devices { devices, .. } => {
                    print!("{}", crate::output::devices_table(&devices));
                    Ok(())
                }
                other => Err(unexpected(&other)),
            }
        }
        ("restart", [vm, device]) => {
            let request = Request::DeviceRestart {
                vm: vm_ref(vm)?,
                device: device.to_string(),
                hold: p.flag('d'),
            };
            done(&request, "device restart")
        }
        ("log", [vm, device, level]) => {
            let verbosity = match *level {
                "brief" => LogVerbosity::Brief,
                "verbose" => LogVerbosity::Verbose,
                _ => return Err(usage_of("device")),
            };
            let request = Request::DeviceLog {
                vm: vm_ref(vm)?,
                device: device.to_string(),
                verbosity,
            };
            done(&request, "device log")
        }
        _ => Err(usage_of("device")),
    }
}

fn no_args(command: &str, args: &[String], request: Request) -> Outcome {
    if !args.is_empty() {
        return Err(usage_of(command));
    }
    done(&request, command)
}

fn done(request: &Request, command: &str) -> Outcome {
    let (_, response) = ask(request, &format!("{command} failed"))?;
    match response {
        Response::Done(text) => {
            say(&text);
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn load(args: &[String]) -> Outcome {
    match args {
        [file] => done(&Request::Load(absolute(file)), "load"),
        _ => Err(usage_of("load")),
    }
}

fn reset(args: &[String]) -> Outcome {
    let target = match args {
        [] => ResetTarget::All,
        [one] => match one.as_str() {
            "all" => ResetTarget::All,
            "switches" => ResetTarget::Switches,
            "vms" => ResetTarget::Vms,
            _ => return Err(usage_of("reset")),
        },
        _ => return Err(usage_of("reset")),
    };
    done(&Request::Reset(target), "reset")
}

fn log(args: &[String]) -> Outcome {
    let level = match args {
        [one] if one == "brief" => LogVerbosity::Brief,
        [one] if one == "verbose" => LogVerbosity::Verbose,
        _ => return Err(usage_of("log")),
    };
    done(&Request::Log(level), "log")
}

fn console(args: &[String]) -> Outcome {
    let p = parse("console", args, "")?;
    let vm = one_vm("console", &p)?;
    say(&crate::console::attach(&vm)?);
    Ok(())
}

fn create(args: &[String]) -> Outcome {
    let p = parse("create", args, "b:i:s:")?;
    let [disk] = p.operands.as_slice() else {
        return Err(usage_of("create"));
    };
    let create = crate::create::CreateArgs {
        disk: disk.clone(),
        base: p.value('b'),
        input: p.value('i'),
        size: p.value('s'),
    };
    let message = crate::create::run(&create).map_err(|e| Failure(ipc::error_chain(&e)))?;
    say(&message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_pick_the_command() {
        assert_eq!(lookup("stat"), Ok("status"));
        assert_eq!(lookup("unp"), Ok("unpause"));
        assert_eq!(lookup("sto"), Ok("stop"));
        assert_eq!(lookup("log"), Ok("log"));
        assert_eq!(
            lookup("lo"),
            Err(Failure("ambiguous command: lo (could be load, log)".into()))
        );
        assert!(lookup("st")
            .unwrap_err()
            .0
            .starts_with("ambiguous command: st"));
        assert!(lookup("frob")
            .unwrap_err()
            .0
            .starts_with("unknown command: frob"));
        assert!(lookup("").is_err());
    }

    #[test]
    fn memory_rounds_down_to_mb_within_limits() {
        assert_eq!(memory("512M"), Ok(512 << 20));
        assert_eq!(memory("1.5G"), Ok(3 << 29));
        assert_eq!(memory("5000K"), Ok(4 << 20));
        assert!(memory("4000K").is_err());
        assert!(memory("1M").is_err());
        assert!(memory("2T").is_err());
        assert!(memory("lots").unwrap_err().0.starts_with("-m: "));
    }

    #[test]
    fn disk_prefixes_give_the_format_and_paths_become_absolute() {
        let d = disk_arg("qcow2:rel/x.img");
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert!(d.path.is_absolute() && d.path.ends_with("rel/x.img"));
        assert_eq!(disk_arg("/a.img").format, None);
        assert_eq!(disk_arg("raw:/a.img").format, Some(DiskFormat::Raw));
    }

    #[test]
    fn not_yet_options_are_refused_by_name() {
        let err = start(&["-r".into(), "x.iso".into(), "web".into()]).unwrap_err();
        assert!(
            err.0.contains("not yet") && err.0.contains("-r"),
            "{}",
            err.0
        );
        let err = start(&["-i".into(), "99".into(), "web".into()]).unwrap_err();
        assert!(err.0.contains("-i 99"), "{}", err.0);
    }

    #[test]
    fn bad_names_and_usage_are_reported_before_connecting() {
        let err = start(&[".web".into()]).unwrap_err();
        assert!(err.0.contains("must not start with"), "{}", err.0);
        assert!(stop(&[]).unwrap_err().0.starts_with("usage:"));
        assert!(stop(&["-a".into(), "web".into()])
            .unwrap_err()
            .0
            .starts_with("usage:"));
        assert!(reset(&["everything".into()])
            .unwrap_err()
            .0
            .starts_with("usage:"));
        assert!(log(&["loud".into()]).unwrap_err().0.starts_with("usage:"));
    }
}
