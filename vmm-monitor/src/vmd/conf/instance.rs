//! Turning a parsed vm block into a [`VmConf`]; instances inherit from
//! their parent what its `allow instance` lets them keep or change.

use std::path::PathBuf;

use super::errors::ErrorKind;
use super::model::{InstanceAllow, VmConf};
use super::parser::{Failed, Parsed, Parser};
use super::vm::VmBody;

impl VmBody {
    /// The VM this block alone describes.
    pub(super) fn into_conf(
        self,
        name: String,
        instance_of: Option<String>,
        file: PathBuf,
        line: u32,
    ) -> VmConf {
        VmConf {
            name,
            file,
            line,
            instance_of,
            enabled: self.enabled.unwrap_or(true),
            memory: self.memory,
            cpus: self.cpus,
            boot: self.boot,
            boot_device: self.boot_device,
            cmdline: self.cmdline,
            initrd: self.initrd,
            cdrom: self.cdrom,
            disks: self.disks,
            interfaces: self.interfaces,
            min_interfaces: self.min_interfaces.unwrap_or(0),
            owner: self.owner,
            allow_instance: self.allow.unwrap_or_default(),
            sandbox: self.sandbox.is_none_or(|(on, _)| on),
            sandbox_line: self.sandbox.map_or(0, |(_, line)| line),
            restarts: self.restarts,
        }
    }
}

impl InstanceAllow {
    /// Whether an instance may set the `allow instance` item `item`.
    fn permits(&self, item: &str) -> bool {
        match item {
            "boot" => self.boot,
            "cdrom" => self.cdrom,
            "disk" => self.disk,
            "instance" => self.instance,
            "interface" => self.interface,
            "memory" => self.memory,
            "cpus" => self.cpus,
            "owner" => self.owner,
            _ => false,
        }
    }
}

impl Parser {
    /// Resolves `vm "parent" instance "name" { body }`: every setting the
    /// body makes must be allowed by the parent (each refusal is reported);
    /// unset settings are inherited, except the exclusive ones listed on
    /// [`VmConf`] (so an instance's devices are sandboxed unless its own
    /// block says `sandbox no`, which, like `enable`, needs no leave).
    pub(super) fn instance(
        &mut self,
        parent: &VmConf,
        name: String,
        body: VmBody,
        file: PathBuf,
        line: u32,
    ) -> Parsed<VmConf> {
        let allow = &parent.allow_instance;
        let mut ok = true;
        for &(item, pos) in &body.set {
            if !allow.permits(item) {
                self.error(
                    pos,
                    ErrorKind::NotAllowed {
                        parent: parent.name.clone(),
                        item,
                    },
                );
                ok = false;
            }
        }
        if let Some(owner) = &body.owner {
            if allow.owner && !allow.owners.is_empty() && !allow.owners.contains(owner) {
                let pos = body
                    .set
                    .iter()
                    .find(|(item, _)| *item == "owner")
                    .map(|&(_, pos)| pos);
                if let Some(pos) = pos {
                    let parent = parent.name.clone();
                    self.error(
                        pos,
                        ErrorKind::NotAllowed {
                            parent,
                            item: "this owner",
                        },
                    );
                }
                ok = false;
            }
        }
        if !ok {
            return Err(Failed);
        }
        let own_interfaces = !body.interfaces.is_empty() || body.min_interfaces.is_some();
        let mut conf = body.into_conf(name, Some(parent.name.clone()), file, line);
        conf.memory = conf.memory.or(parent.memory);
        conf.cpus = conf.cpus.or(parent.cpus);
        conf.boot = conf.boot.or_else(|| parent.boot.clone());
        conf.boot_device = conf.boot_device.or(parent.boot_device);
        conf.cmdline = conf.cmdline.or_else(|| parent.cmdline.clone());
        conf.initrd = conf.initrd.or_else(|| parent.initrd.clone());
        conf.cdrom = conf.cdrom.or_else(|| parent.cdrom.clone());
        conf.owner = conf.owner.or_else(|| parent.owner.clone());
        conf.restarts = conf.restarts.or(parent.restarts);
        if !own_interfaces {
            conf.min_interfaces = parent.min_interfaces;
            conf.interfaces = parent.interfaces.clone();
            // A fixed address is the parent's own: the instance gets a generated one.
            for iface in &mut conf.interfaces {
                iface.lladdr = None;
            }
        }
        Ok(conf)
    }
}
