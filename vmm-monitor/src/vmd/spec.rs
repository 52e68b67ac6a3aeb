//! What vmd runs for a VM: a [`VmSpec`], made from a vm.conf block or
//! from `vmctl start` options, and checked before anything is opened.

use std::path::PathBuf;

use ipc::control::{DiskArg, DiskFormat, StartRequest};

use super::access::{resolve, ResolvedOwner};
use super::conf::{self, VmConf, DEFAULT_MEMORY};
pub use super::net::NicSpec;

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image.
    pub path: PathBuf,
    /// The format; `None`: detected when opened.
    pub format: Option<DiskFormat>,
}

/// Everything vmd needs to start a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The name.
    pub name: String,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// The kernel; `None`: the VM would need BIOS boot, which is not here yet.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Disks, in order.
    pub disks: Vec<DiskSpec>,
    /// Who may control it.
    pub owner: ResolvedOwner,
    /// Template of an instance.
    pub instance_of: Option<String>,
    /// From vm.conf (kept when stopped) rather than `vmctl start` alone
    /// (removed when stopped).
    pub configured: bool,
    /// Started with vmd (`enable`).
    pub enabled: bool,
    /// Network interfaces, in order.
    pub nics: Vec<NicSpec>,
    /// Configured things whose devices are not built yet; starting the VM
    /// is refused while this is not empty, rather than running it
    /// without them.
    pub missing: Vec<String>,
    /// The vm.conf block, for templates (`vmctl start -t`) and for
    /// [`Self::unsandboxed`]; `None` for a VM `vmctl start` alone made
    /// and for instances made with `-t`.
    pub conf: Option<VmConf>,
}

/// Why a VM cannot be made from its configuration or options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The owner does not resolve.
    #[error("vm '{vm}': owner: {source}")]
    Owner {
        /// The VM.
        vm: String,
        /// What failed.
        #[source]
        source: super::access::OwnerError,
    },
    /// A start option the template does not allow.
    #[error("vm '{vm}': template '{template}' does not allow instances to set {item}")]
    NotAllowed {
        /// The instance.
        vm: String,
        /// The template.
        template: String,
        /// The option.
        item: &'static str,
    },
}

impl VmSpec {
    /// The spec of a vm.conf block.
    pub fn from_conf(vm: &VmConf) -> Result<Self, SpecError> {
        let owner = match &vm.owner {
            Some(o) => resolve(o).map_err(|source| SpecError::Owner {
                vm: vm.name.clone(),
                source,
            })?,
            None => ResolvedOwner {
                text: "root".into(),
                ..Default::default()
            },
        };
        let mut missing = Vec::new();
        let mut nics: Vec<NicSpec> = vm
            .interfaces
            .iter()
            .map(|i| NicSpec {
                tap: i.name.clone(),
                local: i.local,
                switch: i.switch.clone(),
                lladdr: i.lladdr.map(|m| m.0),
                locked: i.locked,
                up: i.up,
                group: i.group.clone(),
                rdomain: i.rdomain,
            })
            .collect();
        while nics.len() < vm.min_interfaces {
            nics.push(NicSpec::plain());
        }
        if vm.cdrom.is_some() {
            missing.push("a cdrom (not built yet)".into());
        }
        if let Some(device) = vm.boot_device {
            let word = match device {
                conf::BootDevice::Cdrom => "cdrom",
                conf::BootDevice::Disk => "disk",
                conf::BootDevice::Net => "net",
            };
            missing.push(format!("boot device {word} (BIOS boot is not built yet)"));
        }
        Ok(Self {
            name: vm.name.clone(),
            memory: vm.memory.unwrap_or(DEFAULT_MEMORY),
            cpus: vm.cpus.unwrap_or(1) as u32,
            kernel: vm.boot.clone(),
            initrd: vm.initrd.clone(),
            cmdline: vm.cmdline.clone().unwrap_or_default(),
            disks: vm
                .disks
                .iter()
                .map(|d| DiskSpec {
                    path: d.path.clone(),
                    format: d.format.map(|f| match f {
                        conf::DiskFormat::Raw => DiskFormat::Raw,
                        conf::DiskFormat::Qcow2 => DiskFormat::Qcow2,
                    }),
                })
                .collect(),
            owner,
            instance_of: vm.instance_of.clone(),
            configured: true,
            enabled: vm.enabled,
            missing,
            nics,
            conf: Some(vm.clone()),
        })
    }

    /// The spec of a VM that only `vmctl start` describes, owned by `owner`.
    pub fn from_start(name: &str, start: &StartRequest, owner: ResolvedOwner) -> Self {
        Self {
            name: name.to_string(),
            memory: start.memory.unwrap_or(DEFAULT_MEMORY),
            cpus: 1,
            kernel: start.kernel.clone(),
            initrd: None,
            cmdline: String::new(),
            disks: disks(&start.disks),
            owner,
            instance_of: None,
            configured: false,
            enabled: false,
            missing: Vec::new(),
            nics: nics_of_start(start),
            conf: None,
        }
    }

    /// An instance `name` of this (template) VM with the options of
    /// `start`, each of which the template must allow.
    pub fn instance(
        &self,
        name: &str,
        start: &StartRequest,
        owner: ResolvedOwner,
    ) -> Result<Self, SpecError> {
        let allow = self
            .conf
            .as_ref()
            .map(|c| c.allow_instance.clone())
            .unwrap_or_default();
        let refuse = |item| SpecError::NotAllowed {
            vm: name.into(),
            template: self.name.clone(),
            item,
        };
        if start.kernel.is_some() && !allow.boot {
            return Err(refuse("boot"));
        }
        if !start.disks.is_empty() && !allow.disk {
            return Err(refuse("disk"));
        }
        if start.memory.is_some() && !allow.memory {
            return Err(refuse("memory"));
        }
        let sets_nics =
            start.local_interfaces > 0 || !start.switches.is_empty() || start.interfaces > 0;
        if sets_nics && !allow.interface {
            return Err(refuse("interface"));
        }
        let mut spec = self.clone();
        spec.name = name.to_string();
        spec.instance_of = Some(self.name.clone());
        spec.configured = false;
        spec.enabled = false;
        spec.owner = owner;
        spec.conf = None;
        // Disks are exclusive to the template: an instance has only its own.
        spec.disks = disks(&start.disks);
        if let Some(kernel) = &start.kernel {
            spec.kernel = Some(kernel.clone());
        }
        if let Some(memory) = start.memory {
            spec.memory = memory;
        }
        if sets_nics {
            spec.nics = nics_of_start(start);
        }
        // A fixed address is the template's own.
        for nic in &mut spec.nics {
            nic.lladdr = None;
        }
        Ok(spec)
    }

    /// Whether `start` sets anything (beyond naming the VM).
    pub fn has_options(start: &StartRequest) -> bool {
        start.kernel.is_some()
            || !start.disks.is_empty()
            || start.memory.is_some()
            || start.local_interfaces > 0
            || !start.switches.is_empty()
            || start.interfaces > 0
    }

    /// Where vm.conf turns this VM's device sandbox off (`sandbox no`), as
    /// `file:line`; `None` when its devices run sandboxed, which they
    /// always do for VMs that `vmctl start` alone describes and for
    /// instances made with `vmctl start -t` (the flag is the block's own
    /// and is not inherited).
    pub fn unsandboxed(&self) -> Option<String> {
        let conf = self.conf.as_ref().filter(|c| !c.sandbox)?;
        let line = if conf.sandbox_line > 0 {
            conf.sandbox_line
        } else {
            conf.line
        };
        Some(format!("{}:{line}", conf.file.display()))
    }

    /// Why this VM cannot start now, if it cannot.
    pub fn unstartable(&self) -> Option<String> {
        if self.kernel.is_none() {
            return Some(format!(
                "vm '{}' has no kernel to boot (boot \"path\" or vmctl start -b): BIOS boot is not built yet",
                self.name
            ));
        }
        if !self.missing.is_empty() {
            return Some(format!(
                "vm '{}' needs {}",
                self.name,
                self.missing.join(", ")
            ));
        }
        None
    }
}

/// The interfaces `vmctl start` asks for: `-L` ones first, then one per
/// `-n switch`, then plain ones up to `-i count`.
fn nics_of_start(start: &StartRequest) -> Vec<NicSpec> {
    let mut nics: Vec<NicSpec> = (0..start.local_interfaces)
        .map(|_| NicSpec {
            local: true,
            ..NicSpec::plain()
        })
        .collect();
    nics.extend(start.switches.iter().map(|s| NicSpec {
        switch: Some(s.clone()),
        ..NicSpec::plain()
    }));
    while nics.len() < start.interfaces as usize {
        nics.push(NicSpec::plain());
    }
    nics
}

fn disks(args: &[DiskArg]) -> Vec<DiskSpec> {
    args.iter()
        .map(|d| DiskSpec {
            path: d.path.clone(),
            format: d.format,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Vec<VmConf> {
        conf::parse_str("vm.conf", text, &[]).unwrap().vms
    }

    #[test]
    fn conf_blocks_become_specs_with_defaults() {
        let vms = conf("vm a { boot \"/k\"; disk \"/d\" format qcow2; cpus 2; cmdline \"x\" }\n");
        let spec = VmSpec::from_conf(&vms[0]).unwrap();
        assert_eq!(spec.memory, DEFAULT_MEMORY);
        assert_eq!(spec.cpus, 2);
        assert_eq!(spec.cmdline, "x");
        assert_eq!(spec.owner.text, "root");
        assert_eq!(spec.disks[0].format, Some(DiskFormat::Qcow2));
        assert!(spec.configured && spec.enabled);
        assert_eq!(spec.unstartable(), None);
    }

    #[test]
    fn missing_devices_and_kernel_refuse_the_start_by_name() {
        let vms =
            conf("vm a { interfaces 2 }\nvm b { boot \"/k\"; local interface; cdrom \"/i\" }\n");
        let a = VmSpec::from_conf(&vms[0]).unwrap();
        assert!(a.unstartable().unwrap().contains("no kernel"));
        assert_eq!(a.nics.len(), 2, "interfaces 2 means two plain interfaces");
        let b = VmSpec::from_conf(&vms[1]).unwrap();
        assert!(b.nics[0].local);
        let why = b.unstartable().unwrap();
        assert!(why.contains("cdrom") && !why.contains("interface"), "{why}");
    }

    #[test]
    fn instances_take_only_allowed_options() {
        let vms =
            conf("vm t { boot \"/k\"; disk \"/base\"; memory 1G; allow instance { memory } }\n");
        let t = VmSpec::from_conf(&vms[0]).unwrap();
        let start = StartRequest {
            memory: Some(2 << 30),
            ..Default::default()
        };
        let i = t.instance("i", &start, ResolvedOwner::default()).unwrap();
        assert_eq!(i.memory, 2 << 30);
        assert_eq!(i.kernel, Some("/k".into()));
        assert!(i.disks.is_empty(), "disks are the template's own");
        assert!(!i.configured);
        let start = StartRequest {
            kernel: Some("/other".into()),
            ..Default::default()
        };
        assert_eq!(
            t.instance("i", &start, ResolvedOwner::default()),
            Err(SpecError::NotAllowed {
                vm: "i".into(),
                template: "t".into(),
                item: "boot"
            })
        );
    }

    #[test]
    fn sandbox_no_is_the_blocks_own_and_never_an_instances() {
        let vms = conf(
            "vm a { boot \"/k\"\n sandbox no\n allow instance { memory } }\n\
             vm a instance b { }\nvm c { sandbox yes }\n",
        );
        let a = VmSpec::from_conf(&vms[0]).unwrap();
        assert_eq!(a.unsandboxed().as_deref(), Some("vm.conf:2"));
        let b = VmSpec::from_conf(&vms[1]).unwrap();
        assert_eq!(b.unsandboxed(), None, "a conf instance is sandboxed");
        let c = VmSpec::from_conf(&vms[2]).unwrap();
        assert_eq!(c.unsandboxed(), None);
        let i = a
            .instance("i", &StartRequest::default(), ResolvedOwner::default())
            .unwrap();
        assert_eq!(i.unsandboxed(), None, "a -t instance is sandboxed");
        let s = VmSpec::from_start("s", &StartRequest::default(), ResolvedOwner::default());
        assert_eq!(s.unsandboxed(), None, "vmctl start alone is sandboxed");
    }

    #[test]
    fn unknown_owner_is_an_error_naming_the_vm() {
        let vms = conf("vm a { owner nosuchuserxyz }\n");
        let err = VmSpec::from_conf(&vms[0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vm 'a': owner: unknown user 'nosuchuserxyz'"
        );
    }
}
