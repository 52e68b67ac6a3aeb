//! The smaller blocks: a VM's interfaces, `allow instance`, `switch`.

use super::errors::ErrorKind;
use super::lexer::{Pos, Tok, Token};
use super::model::{InstanceAllow, InterfaceConf, SwitchConf};
use super::parser::{Parsed, Parser};
use super::values;

/// Largest routing domain, as OpenBSD's RT_TABLEID_MAX.
pub const MAX_RDOMAIN: u64 = 255;

/// Options shared by interface and switch blocks: `group`, `rdomain`, `up`, `down`.
struct Common<'a> {
    group: &'a mut Option<String>,
    rdomain: &'a mut Option<u32>,
    up: &'a mut bool,
}

impl Parser {
    /// `[name] [{ ... }]` after `[local] interface`.
    pub(super) fn interface(&mut self, local: bool, pos: Pos) -> Parsed<InterfaceConf> {
        let mut iface = InterfaceConf {
            name: None,
            local,
            switch: None,
            group: None,
            lladdr: None,
            locked: false,
            rdomain: None,
            up: true,
            line: pos.line,
        };
        if matches!(self.peek(), Tok::Word(_) | Tok::Quoted(_)) {
            let check = |t: &str| values::check_ifname(t).map(|()| t.to_string());
            iface.name = Some(self.value("an interface name", check)?.0);
        }
        if self.peek() == Tok::LBrace {
            self.block(|p, token| p.interface_option(&mut iface, token))?;
        }
        Ok(iface)
    }

    /// One option of an interface block.
    fn interface_option(&mut self, iface: &mut InterfaceConf, token: Token) -> Parsed<()> {
        match &token.tok {
            Tok::Word(w) if w == "switch" => {
                let (name, _) = self.string("a switch name")?;
                iface.switch = Some(name);
            }
            Tok::Word(w) if w == "locked" || w == "lladdr" => {
                if w == "locked" {
                    self.keyword("lladdr")?;
                    iface.locked = true;
                }
                if !self.at_end() {
                    iface.lladdr = Some(self.value("an Ethernet address", values::mac)?.0);
                }
            }
            _ => {
                let mut common = Common {
                    group: &mut iface.group,
                    rdomain: &mut iface.rdomain,
                    up: &mut iface.up,
                };
                return self.common_option(&mut common, token, "an interface option");
            }
        }
        Ok(())
    }

    /// `group g`, `rdomain N`, `up`, `down`.
    fn common_option(
        &mut self,
        common: &mut Common<'_>,
        token: Token,
        expected: &'static str,
    ) -> Parsed<()> {
        match &token.tok {
            Tok::Word(w) if w == "group" => {
                let check = |t: &str| values::check_ifname(t).map(|()| t.to_string());
                *common.group = Some(self.value("a group name", check)?.0);
            }
            Tok::Word(w) if w == "rdomain" => {
                let check = |t: &str| values::number(t, "rdomain", 0, MAX_RDOMAIN);
                *common.rdomain = Some(self.value("a number", check)?.0 as u32);
            }
            Tok::Word(w) if w == "up" || w == "down" => *common.up = w == "up",
            Tok::Word(w) => return self.fail(token.pos, ErrorKind::UnknownKeyword(w.clone())),
            _ => return self.unexpected(&token, expected),
        }
        Ok(())
    }

    /// `{ boot, cdrom, disk, instance, interface, memory, cpus, owner [u[:g]] }`
    /// after `allow instance`.
    pub(super) fn allow_instance(&mut self) -> Parsed<InstanceAllow> {
        let mut allow = InstanceAllow::default();
        self.block(|p, token| {
            let Tok::Word(w) = &token.tok else {
                return p.unexpected(&token, "an instance item");
            };
            match w.as_str() {
                "boot" => allow.boot = true,
                "cdrom" => allow.cdrom = true,
                "disk" => allow.disk = true,
                "instance" => allow.instance = true,
                "interface" => allow.interface = true,
                "memory" => allow.memory = true,
                "cpus" => allow.cpus = true,
                "owner" => {
                    allow.owner = true;
                    if !p.at_end() {
                        allow.owners.push(p.value("an owner", values::owner)?.0);
                    }
                }
                _ => return p.fail(token.pos, ErrorKind::UnknownKeyword(w.clone())),
            }
            Ok(())
        })?;
        Ok(allow)
    }

    /// `switch "name" { ... }`, after `switch`.
    pub(super) fn switch(&mut self, pos: Pos) -> Parsed<()> {
        let (name, name_pos) = self.string("a switch name")?;
        let mut ok = true;
        if let Err(kind) = values::check_name(&name) {
            self.error(name_pos, kind);
            ok = false;
        } else if self.config.switches.iter().any(|s| s.name == name) {
            self.error(name_pos, ErrorKind::DuplicateSwitch(name.clone()));
            ok = false;
        }
        let mut switch = SwitchConf {
            name,
            file: self.file(pos).to_path_buf(),
            line: pos.line,
            interface: None,
            group: None,
            locked: false,
            rdomain: None,
            up: true,
        };
        self.block(|p, token| match &token.tok {
            Tok::Word(w) if w == "interface" => {
                let check = |t: &str| values::check_ifname(t).map(|()| t.to_string());
                switch.interface = Some(p.value("a bridge name", check)?.0);
                Ok(())
            }
            Tok::Word(w) if w == "locked" => {
                p.keyword("lladdr")?;
                switch.locked = true;
                Ok(())
            }
            _ => {
                let mut common = Common {
                    group: &mut switch.group,
                    rdomain: &mut switch.rdomain,
                    up: &mut switch.up,
                };
                p.common_option(&mut common, token, "a switch option")
            }
        })?;
        if ok {
            self.config.switches.push(switch);
        }
        Ok(())
    }
}
