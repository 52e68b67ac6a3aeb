//! `vm "name" [instance "child"] { ... }` blocks.

use std::path::PathBuf;

use super::errors::ErrorKind;
use super::lexer::{Pos, Tok, Token};
use super::model::{BootDevice, DiskConf, DiskFormat, InstanceAllow, InterfaceConf, Owner};
use super::parser::{Parsed, Parser};
use super::values;
use crate::config::MAX_CPUS;

/// Most disks per VM: each is a PCI function on bus 0, which has 32 slots
/// shared with the NICs and platform devices (vmd allows 4).
pub const MAX_DISKS: usize = 16;
/// Most network interfaces per VM, configured or from `interfaces N`
/// (vmd allows 4; PCI slots as for disks).
pub const MAX_INTERFACES: usize = 8;

/// Most `restarts` (quick device deaths in a row before the VM stops).
pub const MAX_RESTARTS: u32 = 1000;

/// What one `vm` block sets, before inheritance.
#[derive(Debug, Default)]
pub(super) struct VmBody {
    /// `enable` / `disable`.
    pub enabled: Option<bool>,
    /// `sandbox yes|no`, and its line.
    pub sandbox: Option<(bool, u32)>,
    /// `restarts N` (ours).
    pub restarts: Option<u32>,
    /// `memory`, in bytes.
    pub memory: Option<u64>,
    /// `cpus`.
    pub cpus: Option<usize>,
    /// `boot "path"`.
    pub boot: Option<PathBuf>,
    /// `boot device`.
    pub boot_device: Option<BootDevice>,
    /// `cmdline "text"` (ours): the kernel command line of a direct boot.
    pub cmdline: Option<String>,
    /// `initrd "path"` (ours): the initial ramdisk of a direct boot.
    pub initrd: Option<PathBuf>,
    /// `cdrom`.
    pub cdrom: Option<PathBuf>,
    /// `disk`s.
    pub disks: Vec<DiskConf>,
    /// `interface` blocks.
    pub interfaces: Vec<InterfaceConf>,
    /// `interfaces N`.
    pub min_interfaces: Option<usize>,
    /// `owner`.
    pub owner: Option<Owner>,
    /// `allow instance`.
    pub allow: Option<InstanceAllow>,
    /// Each setting an instance needs its parent's leave for (the
    /// `allow instance` item name) and where it is.
    pub set: Vec<(&'static str, Pos)>,
}

/// Stores `value` in an option set at most once per block.
fn once<T>(
    p: &mut Parser,
    slot: &mut Option<T>,
    value: T,
    pos: Pos,
    what: &'static str,
) -> Parsed<()> {
    if slot.is_some() {
        return p.fail(pos, ErrorKind::Twice(what));
    }
    *slot = Some(value);
    Ok(())
}

impl Parser {
    /// `vm "name" [instance "child"] { ... }`, after `vm`.
    pub(super) fn vm(&mut self, pos: Pos) -> Parsed<()> {
        let (first, first_pos) = self.string("a vm name")?;
        let (name, parent, name_pos) = if self.accept("instance") {
            let (child, child_pos) = self.string("an instance name")?;
            (child, Some(first), child_pos)
        } else {
            (first, None, first_pos)
        };
        // Check the header but parse the body anyway, to report its errors too.
        let mut ok = true;
        if let Err(kind) = values::check_vm_name(&name) {
            self.error(name_pos, kind);
            ok = false;
        } else if self.config.vms.iter().any(|vm| vm.name == name) {
            self.error(name_pos, ErrorKind::DuplicateVm(name.clone()));
            ok = false;
        }
        let parent_conf = match &parent {
            Some(p) => match self.config.vms.iter().find(|vm| &vm.name == p) {
                Some(conf) => Some(conf.clone()),
                None => {
                    self.error(first_pos, ErrorKind::UnknownParent(p.clone()));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut body = VmBody::default();
        self.block(|p, token| p.vm_option(&mut body, token))?;
        if !ok {
            return Ok(());
        }
        let file = self.file(pos).to_path_buf();
        let conf = match parent_conf {
            Some(parent) => self.instance(&parent, name, body, file, pos.line)?,
            None => body.into_conf(name, None, file, pos.line),
        };
        self.config.vms.push(conf);
        Ok(())
    }

    /// One option of a vm block.
    fn vm_option(&mut self, body: &mut VmBody, token: Token) -> Parsed<()> {
        let pos = token.pos;
        let Tok::Word(word) = &token.tok else {
            return self.unexpected(&token, "a vm option");
        };
        let item = match word.as_str() {
            "memory" => {
                let (memory, _) = self.value("a size", values::memory)?;
                once(self, &mut body.memory, memory, pos, "memory")?;
                "memory"
            }
            "cpus" => {
                let max = MAX_CPUS as u64;
                let (n, _) = self.value("a number", |t| values::number(t, "cpus", 1, max))?;
                once(self, &mut body.cpus, n as usize, pos, "cpus")?;
                "cpus"
            }
            "boot" if self.accept("device") => {
                let (device, _) = self.value("cdrom, disk or net", boot_device)?;
                once(self, &mut body.boot_device, device, pos, "boot device")?;
                "boot"
            }
            "boot" => {
                let (path, _) = self.string("a boot image path")?;
                once(self, &mut body.boot, PathBuf::from(path), pos, "boot")?;
                "boot"
            }
            "cmdline" => {
                let (text, _) = self.string("a kernel command line")?;
                once(self, &mut body.cmdline, text, pos, "cmdline")?;
                "boot"
            }
            "initrd" => {
                let (path, _) = self.string("an initrd path")?;
                once(self, &mut body.initrd, PathBuf::from(path), pos, "initrd")?;
                "boot"
            }
            "cdrom" => {
                let (path, _) = self.string("an ISO image path")?;
                once(self, &mut body.cdrom, PathBuf::from(path), pos, "cdrom")?;
                "cdrom"
            }
            "disk" => {
                let (path, _) = self.string("a disk image path")?;
                let mut format = None;
                if self.accept("format") {
                    format = Some(self.value("raw or qcow2", disk_format)?.0);
                }
                if body.disks.len() >= MAX_DISKS {
                    let count = body.disks.len() + 1;
                    return self.fail(
                        pos,
                        ErrorKind::TooManyDisks {
                            count,
                            max: MAX_DISKS,
                        },
                    );
                }
                body.disks.push(DiskConf {
                    path: path.into(),
                    format,
                    line: pos.line,
                });
                "disk"
            }
            "local" => {
                self.keyword("interface")?;
                self.add_interface(body, true, pos)?;
                "interface"
            }
            "interface" => {
                self.add_interface(body, false, pos)?;
                "interface"
            }
            "interfaces" => {
                let max = MAX_INTERFACES as u64;
                let (n, _) = self.value("a number", |t| values::number(t, "interfaces", 0, max))?;
                once(
                    self,
                    &mut body.min_interfaces,
                    n as usize,
                    pos,
                    "interfaces",
                )?;
                "interface"
            }
            "owner" => {
                let (owner, _) = self.value("an owner", values::owner)?;
                once(self, &mut body.owner, owner, pos, "owner")?;
                "owner"
            }
            "enable" | "disable" => {
                once(
                    self,
                    &mut body.enabled,
                    word == "enable",
                    pos,
                    "enable or disable",
                )?;
                return Ok(());
            }
            "sandbox" => {
                let (on, _) = self.value("yes or no", yes_no)?;
                once(self, &mut body.sandbox, (on, pos.line), pos, "sandbox")?;
                // Like enable/disable, not an `allow instance` item: an
                // instance is sandboxed unless its own block says otherwise.
                return Ok(());
            }
            "restarts" => {
                let (n, _) = self.value("a number", |t| {
                    values::number(t, "restarts", 0, u64::from(MAX_RESTARTS))
                })?;
                once(self, &mut body.restarts, n as u32, pos, "restarts")?;
                // An instance may set its own: it concerns only itself.
                return Ok(());
            }
            "allow" => {
                self.keyword("instance")?;
                let allow = self.allow_instance()?;
                once(self, &mut body.allow, allow, pos, "allow instance")?;
                "instance"
            }
            _ => return self.fail(pos, ErrorKind::UnknownKeyword(word.clone())),
        };
        body.set.push((item, pos));
        Ok(())
    }

    /// Parses an interface and adds it, within the limit.
    fn add_interface(&mut self, body: &mut VmBody, local: bool, pos: Pos) -> Parsed<()> {
        let iface = self.interface(local, pos)?;
        if body.interfaces.len() >= MAX_INTERFACES {
            let count = body.interfaces.len() + 1;
            return self.fail(
                pos,
                ErrorKind::TooManyInterfaces {
                    count,
                    max: MAX_INTERFACES,
                },
            );
        }
        body.interfaces.push(iface);
        Ok(())
    }
}

/// `cdrom`, `disk` or `net`.
fn boot_device(text: &str) -> Result<BootDevice, ErrorKind> {
    match text {
        "cdrom" => Ok(BootDevice::Cdrom),
        "disk" => Ok(BootDevice::Disk),
        "net" => Ok(BootDevice::Net),
        _ => Err(ErrorKind::BadBootDevice(text.into())),
    }
}

/// `yes` or `no` (of `sandbox`).
fn yes_no(text: &str) -> Result<bool, ErrorKind> {
    match text {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(ErrorKind::Unexpected {
            expected: "yes or no",
            found: format!("'{text}'"),
        }),
    }
}

/// `raw` or `qcow2`.
fn disk_format(text: &str) -> Result<DiskFormat, ErrorKind> {
    match text {
        "raw" => Ok(DiskFormat::Raw),
        "qcow2" => Ok(DiskFormat::Qcow2),
        _ => Err(ErrorKind::BadFormat(text.into())),
    }
}
