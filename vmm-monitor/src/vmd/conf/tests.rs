//! Parser tests: every statement, option and error, with file:line.

use std::path::PathBuf;

use super::*;

fn parse(text: &str) -> Config {
    match parse_str("vm.conf", text, &[]) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse_str("vm.conf", text, &[]) {
        Ok(_) => panic!("parsed without error"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs[0].clone()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmd-conf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn parse_empty_defaults() {
    let c = parse("# nothing\n\n");
    assert_eq!(c, Config::default());
    assert_eq!(c.globals.local_prefix, DEFAULT_LOCAL_PREFIX);
}

#[test]
fn globals_every_keyword_parsed() {
    let c = parse(
        "local prefix 10.0.0.0/16\nlocal inet6 prefix fd00:1::/48\nsocket owner _vmd:wheel\n\
         staggered start parallel 4 delay 30\n",
    );
    assert_eq!(
        c.globals.local_prefix,
        Ipv4Net {
            addr: "10.0.0.0".parse().unwrap(),
            len: 16
        }
    );
    assert_eq!(c.globals.local_inet6.unwrap().len, 48);
    assert_eq!(
        c.globals.socket_owner.unwrap().group.as_deref(),
        Some("wheel")
    );
    assert_eq!(
        c.globals.staggered,
        Some(Staggered {
            parallel: 4,
            delay_secs: 30
        })
    );
}

#[test]
fn local_inet6_bare_default_prefix() {
    assert_eq!(
        parse("local inet6\n").globals.local_inet6,
        Some(DEFAULT_LOCAL_INET6_PREFIX)
    );
    assert_eq!(
        parse("local inet6 fd01::/64")
            .globals
            .local_inet6
            .unwrap()
            .len,
        64
    );
}

#[test]
fn vm_every_option_parsed() {
    let c = parse(
        r#"switch "uplink" { interface br0 }
vm "web" {
    memory 2G
    cpus 4
    boot "/bsd.rd"
    boot device cdrom
    cdrom "/iso/install.iso"
    disk "/var/vm/a.img"
    disk "/var/vm/b.qcow2" format qcow2
    disk "/var/vm/c" format raw
    local interface tap3 { group vms, locked lladdr fe:e1:bb:d1:00:01, rdomain 2, down }
    interface { switch "uplink"; lladdr 02:00:00:00:00:01 }
    interface
    interfaces 4
    owner alice:staff
    disable
}
"#,
    );
    let vm = &c.vms[0];
    assert_eq!((vm.name.as_str(), vm.line, vm.enabled), ("web", 2, false));
    assert_eq!(vm.memory, Some(2 << 30));
    assert_eq!(vm.cpus, Some(4));
    assert_eq!(vm.boot, Some("/bsd.rd".into()));
    assert_eq!(vm.boot_device, Some(BootDevice::Cdrom));
    assert_eq!(vm.cdrom, Some("/iso/install.iso".into()));
    let formats: Vec<_> = vm.disks.iter().map(|d| d.format).collect();
    assert_eq!(
        formats,
        [None, Some(DiskFormat::Qcow2), Some(DiskFormat::Raw)]
    );
    assert_eq!(vm.disks[1].line, 9);
    let i = &vm.interfaces[0];
    assert_eq!(i.name.as_deref(), Some("tap3"));
    assert!(i.local && i.locked && !i.up);
    assert_eq!(i.lladdr, Some(MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0, 1])));
    assert_eq!((i.group.as_deref(), i.rdomain), (Some("vms"), Some(2)));
    assert_eq!(vm.interfaces[1].switch.as_deref(), Some("uplink"));
    assert!(!vm.interfaces[1].local && !vm.interfaces[1].locked && vm.interfaces[2].up);
    assert_eq!(vm.interfaces.len(), 3);
    assert_eq!(vm.min_interfaces, 4);
    assert_eq!(
        vm.owner,
        Some(Owner {
            user: Some("alice".into()),
            group: Some("staff".into())
        })
    );
}

#[test]
fn vm_minimal_defaults() {
    let vm = parse("vm \"a\" {\n}\n").vms.remove(0);
    assert!(vm.enabled && vm.memory.is_none() && vm.disks.is_empty() && vm.instance_of.is_none());
    assert_eq!(vm.allow_instance, InstanceAllow::default());
}

#[test]
fn switch_every_option_parsed() {
    let c = parse(
        "switch \"lan\" {\n interface br1\n group sw\n locked lladdr\n rdomain 7\n down\n}\n",
    );
    let s = &c.switches[0];
    assert_eq!(
        (s.name.as_str(), s.line, s.interface.as_deref()),
        ("lan", 1, Some("br1"))
    );
    assert_eq!(
        (s.group.as_deref(), s.locked, s.rdomain, s.up),
        (Some("sw"), true, Some(7), false)
    );
}

#[test]
fn allow_instance_items_parsed() {
    let c = parse(
        "vm a { allow instance { boot, cdrom, disk, instance, interface, memory, cpus, owner bob } }",
    );
    let a = &c.vms[0].allow_instance;
    assert!(
        a.boot && a.cdrom && a.disk && a.instance && a.interface && a.memory && a.cpus && a.owner
    );
    assert_eq!(a.owners[0].user.as_deref(), Some("bob"));
}

#[test]
fn macros_expanded_outside_quotes_only() {
    let c = parse("ram=\"1G\"\nname = \"$ram\"\nvm $ram { memory $ram; boot \"$ram\" }\n");
    assert_eq!(c.vms[0].name, "1G");
    assert_eq!(c.vms[0].memory, Some(1 << 30));
    assert_eq!(c.vms[0].boot, Some("$ram".into()));
}

#[test]
fn macros_value_with_several_tokens_expanded() {
    let c = parse("opts=\"memory 1G\"\nvm a {\n $opts\n}\n");
    assert_eq!(c.vms[0].memory, Some(1 << 30));
}

#[test]
fn macros_define_override_file() {
    let defines = [("ram".to_string(), "2G".to_string())];
    let c = parse_str("vm.conf", "ram=\"1G\"\nvm a { memory $ram }\n", &defines).unwrap();
    assert_eq!(c.vms[0].memory, Some(2 << 30));
}

#[test]
fn macros_undefined_error() {
    assert_eq!(
        one_error("vm a {\n memory $nope\n}\n"),
        "vm.conf:2: macro 'nope' not defined"
    );
}

#[test]
fn macros_self_reference_error() {
    assert!(one_error("a=\"$a\"\nvm $a {}\n").contains("expands too deeply"));
}

#[test]
fn macros_keyword_name_error() {
    assert!(one_error("switch2=x\nvm=\"a\"\n").contains("vm.conf:2:"));
    assert!(one_error("disk=\"x\"\n").contains("invalid macro name 'disk'"));
}

#[test]
fn macros_bad_define_reported_as_command_line() {
    let defines = [("a-b".to_string(), "x".to_string())];
    let e = parse_str("vm.conf", "", &defines).unwrap_err();
    assert!(e.to_string().starts_with("-D: invalid macro name"));
}

#[test]
fn continuation_and_comments_line_numbers_kept() {
    let c = parse("# c\nvm \\\n \"a\" { # comment \"x\n memory \\\n 1G\n}\nvm b {}\n");
    assert_eq!((c.vms[0].line, c.vms[0].memory), (2, Some(1 << 30)));
    assert_eq!(c.vms[1].line, 7);
    assert_eq!(
        one_error("vm a {\n memory \\\n 1G \\\n junk\n}\n"),
        "vm.conf:4: malformed line: expected end of line, found 'junk'"
    );
}

#[test]
fn include_relative_path_parsed() {
    let dir = tempdir("inc");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/vms.conf"),
        "include \"more.conf\"\nvm b { memory 1G }\n",
    )
    .unwrap();
    std::fs::write(dir.join("sub/more.conf"), "vm c {\n memory 1X\n}\n").unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        "vm a {}\ninclude \"sub/vms.conf\"\nvm d {}\n",
    )
    .unwrap();
    let e = parse_config(&dir.join("vm.conf"), &[]).unwrap_err();
    let more = dir.join("sub/more.conf");
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: bad size", more.display())),
        "{e}"
    );
    std::fs::write(&more, "vm c {}").unwrap();
    let c = parse_config(&dir.join("vm.conf"), &[]).unwrap();
    let names: Vec<_> = c.vms.iter().map(|v| (v.name.as_str(), v.line)).collect();
    assert_eq!(names, [("a", 1), ("c", 1), ("b", 2), ("d", 3)]);
    assert_eq!(c.vms[1].file, more);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn include_loop_error() {
    let dir = tempdir("loop");
    std::fs::write(dir.join("a.conf"), "include \"b.conf\"\n").unwrap();
    std::fs::write(dir.join("b.conf"), "vm x {}\ninclude \"a.conf\"\n").unwrap();
    let e = parse_config(&dir.join("a.conf"), &[]).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0].to_string().contains("b.conf:2: include loop"),
        "{e}"
    );
    let e = parse_config(&dir.join("missing.conf"), &[]).unwrap_err();
    assert!(e.to_string().contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn instance_inherits_all_but_exclusive() {
    let c = parse(
        r#"vm base {
    memory 1G
    cpus 2
    boot "/bios"
    cdrom "/a.iso"
    disk "/base.img"
    interface { lladdr fe:00:00:00:00:01; switch sw }
    owner alice
    disable
    allow instance { disk, memory }
}
switch sw {}
vm base instance child {
    memory 2G
    disk "/child.img"
}
"#,
    );
    let child = &c.vms[1];
    assert_eq!(
        (child.name.as_str(), child.instance_of.as_deref()),
        ("child", Some("base"))
    );
    assert_eq!((child.memory, child.cpus), (Some(2 << 30), Some(2)));
    assert_eq!(child.boot, Some("/bios".into()));
    assert_eq!(child.cdrom, Some("/a.iso".into()));
    assert_eq!(child.disks.len(), 1);
    assert_eq!(child.disks[0].path, PathBuf::from("/child.img"));
    assert_eq!(child.interfaces[0].lladdr, None);
    assert_eq!(child.interfaces[0].switch.as_deref(), Some("sw"));
    assert_eq!(child.owner, c.vms[0].owner);
    assert!(child.enabled);
    assert_eq!(child.allow_instance, InstanceAllow::default());
}

#[test]
fn instance_refused_override_error_each() {
    let errs = errors("vm p { allow instance { memory } }\nvm p instance c {\n memory 1G\n cpus 2\n disk \"/x\"\n}\n");
    assert_eq!(
        errs,
        [
            "vm.conf:4: vm \"p\" does not allow instances to set cpus",
            "vm.conf:5: vm \"p\" does not allow instances to set disk",
        ]
    );
}

#[test]
fn instance_owner_outside_allowed_list_error() {
    assert!(parse_str(
        "f",
        "vm p { allow instance { owner bob } }\nvm p instance c { owner bob }",
        &[]
    )
    .is_ok());
    let e = one_error("vm p { allow instance { owner bob } }\nvm p instance c {\n owner eve\n}\n");
    assert_eq!(
        e,
        "vm.conf:3: vm \"p\" does not allow instances to set this owner"
    );
}

#[test]
fn instance_unknown_parent_error() {
    assert_eq!(
        one_error("vm nope instance c {\n}\n"),
        "vm.conf:1: instance of unknown vm \"nope\" (the parent must be defined first)"
    );
}

#[test]
fn errors_each_reported_with_line() {
    let text = "bogus 1\n\
vm a {\n memory 1X\n}\n\
vm a {}\n\
vm -bad {}\n\
vm b {\n memory 1M\n cpus 65\n cpus 0\n interface { lladdr 01:00:00:00:00:01 }\n interfaces 9\n disk \"/d\" format vmdk\n boot device floppy\n frobnicate\n memory 1G\n memory 2G\n}\n\
local prefix 10.0.0.1/8\n\
local inet6 2001:db8::/32\n\
switch s {}\nswitch s {}\n\
vm c { interface { switch nosuch } }\n\
vm d { \"quoted\" }\n\
socket owner a:b:c\n";
    let errs = errors(text);
    let expected = [
        "vm.conf:1: unknown keyword 'bogus'",
        "vm.conf:3: bad size: '1X' is not a size",
        "vm.conf:5: vm \"a\" is already defined",
        "vm.conf:6: invalid name \"-bad\": must not start",
        "vm.conf:8: memory 1048576 bytes out of range",
        "vm.conf:9: bad cpus '65': expected a number from 1 to 64",
        "vm.conf:10: bad cpus '0'",
        "vm.conf:11: invalid lladdr '01:00:00:00:00:01'",
        "vm.conf:12: bad interfaces '9'",
        "vm.conf:13: unknown disk format 'vmdk'",
        "vm.conf:14: unknown boot device 'floppy'",
        "vm.conf:15: unknown keyword 'frobnicate'",
        "vm.conf:17: memory specified twice",
        "vm.conf:19: invalid prefix '10.0.0.1/8': host bits set",
        "vm.conf:20: invalid prefix '2001:db8::/32'",
        "vm.conf:22: switch \"s\" is already defined",
        "vm.conf:24: malformed line: expected a vm option, found \"quoted\"",
        "vm.conf:25: invalid owner 'a:b:c'",
        "vm.conf:23: switch \"nosuch\" is not defined",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn errors_too_many_interface_blocks() {
    let mut text = String::from("vm a {\n");
    for _ in 0..=MAX_INTERFACES {
        text.push_str(" interface\n");
    }
    text.push('}');
    assert_eq!(
        one_error(&text),
        "vm.conf:10: too many interfaces: 9 (at most 8)"
    );
}

#[test]
fn errors_too_many_disks() {
    let mut text = String::from("vm a {\n");
    for i in 0..=MAX_DISKS {
        text.push_str(&format!(" disk \"/d{i}\"\n"));
    }
    text.push('}');
    assert!(one_error(&text).starts_with("vm.conf:18: too many disks"));
}

#[test]
fn errors_name_too_long() {
    let name = "a".repeat(64);
    assert!(one_error(&format!("vm {name} {{}}")).contains("longer than 63"));
}

#[test]
fn errors_unclosed_block_and_unterminated_string() {
    assert_eq!(
        one_error("vm a {\n memory 1G\n"),
        "vm.conf:1: missing '}' before the end of the file"
    );
    let errs = errors("vm \"a {\n}\n");
    assert!(
        errs[0].starts_with("vm.conf:1: unterminated quoted string"),
        "{errs:?}"
    );
}

#[test]
fn errors_capped_and_displayed_one_per_line() {
    let text = "x\n".repeat(MAX_ERRORS + 5);
    let e = parse_str("vm.conf", &text, &[]).unwrap_err();
    assert_eq!(e.errors.len(), MAX_ERRORS);
    assert!(e.truncated);
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), MAX_ERRORS + 1);
    assert!(shown.lines().last().unwrap().starts_with("too many errors"));
}

#[test]
fn validate_paths_missing_disk_reported() {
    let dir = tempdir("paths");
    let present = dir.join("present.img");
    std::fs::write(&present, "").unwrap();
    let text = format!(
        "vm a {{\n disk \"{}\"\n disk \"/nonexistent/x.img\"\n}}\n",
        present.display()
    );
    let c = parse(&text);
    let e = validate_paths(&c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm.conf:3: disk /nonexistent/x.img does not exist"
    );
    assert!(validate_paths(&parse(
        &text.replace("/nonexistent/x.img", &present.to_string_lossy())
    ))
    .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_example_parsed() {
    let text = r#"# /etc/vm.conf example
ramdisk="/bsd.rd"
sets = "/var/www/htdocs/pub/OpenBSD/snapshots/amd64/"

local prefix 100.80.0.0/12
local inet6
socket owner :vmusers
staggered start parallel 2 delay 10

switch "uplink" {
	interface br0
	group uplinks
}

vm "openbsd.vm" {
	memory 1G
	boot $ramdisk
	disk "/var/vmm/openbsd.qcow2" format qcow2
	local interface
	interface { switch "uplink" }
	owner bob
	allow instance { memory, cpus, disk, interface, owner }
}

vm "openbsd.vm" instance "test-1" {
	memory 512M
	cpus 2
	disk "/var/vmm/test-1.qcow2"
}

vm "template" {
	disable
	cdrom "/iso/alpine.iso"; boot device cdrom
	interfaces 2
}
"#;
    let c = parse(text);
    assert_eq!(c.vms.len(), 3);
    assert_eq!(c.switches.len(), 1);
    assert_eq!(c.vms[0].boot, Some("/bsd.rd".into()));
    assert_eq!(c.vms[1].interfaces.len(), 2);
    assert_eq!(c.vms[1].owner, c.vms[0].owner);
    assert_eq!(c.vms[2].min_interfaces, 2);
    assert!(!c.vms[2].enabled);
}

/// Property-style: every configuration generated from the grammar parses,
/// and what it says comes back.
#[test]
fn generated_configs_round_trip() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..200 {
        let vms = rand(4) as usize + 1;
        let mut text = String::from("switch sw {}\n");
        let mut want = Vec::new();
        for v in 0..vms {
            let mem = (rand(4096) + 4) << 20;
            let cpus = rand(64) as usize + 1;
            let disks = rand(MAX_DISKS as u64 + 1) as usize;
            let nics = rand(MAX_INTERFACES as u64 + 1) as usize;
            text.push_str(&format!(
                "vm \"vm{v}\" {{\n memory {}M\n cpus {cpus}\n",
                mem >> 20
            ));
            for d in 0..disks {
                text.push_str(&format!(
                    " disk \"/d/{v}-{d}\"{}\n",
                    ["", " format raw", " format qcow2"][d % 3]
                ));
            }
            for n in 0..nics {
                text.push_str(&format!(
                    " interface {{ switch sw, lladdr fe:00:00:00:{v:02x}:{n:02x} }}\n"
                ));
            }
            text.push_str("}\n");
            want.push((format!("vm{v}"), mem, cpus, disks, nics));
        }
        let c = parse(&text);
        let got: Vec<_> = c
            .vms
            .iter()
            .map(|vm| {
                (
                    vm.name.clone(),
                    vm.memory.unwrap(),
                    vm.cpus.unwrap(),
                    vm.disks.len(),
                    vm.interfaces.len(),
                )
            })
            .collect();
        assert_eq!(got, want, "{text}");
    }
}

/// Property-style: any soup of tokens ends in errors or a config, never a
/// hang or a panic.
#[test]
fn garbage_input_terminates_without_panic() {
    let pieces = [
        "vm",
        "a",
        "{",
        "}",
        "\n",
        ";",
        ",",
        "=",
        "\"q\"",
        "$m",
        "memory",
        "1G",
        "interface",
        "switch",
        "include",
        "local",
        "allow",
        "instance",
        "\\\n",
        "#c\n",
        "\"",
    ];
    let mut seed: u64 = 42;
    for _ in 0..500 {
        let mut text = String::new();
        for _ in 0..40 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            text.push(' ');
        }
        let _ = parse_str("vm.conf", &text, &[("m".into(), "x".into())]);
    }
}

#[test]
fn cmdline_and_initrd_are_ours_and_inherited_under_boot() {
    let c = parse(
        "vm t { boot \"/k\"; cmdline \"console=ttyS0 test=hello\"; initrd \"/i\"; allow instance { boot } }\n\
         vm t instance u { cmdline \"test=smp\" }\n",
    );
    assert_eq!(
        c.vms[0].cmdline.as_deref(),
        Some("console=ttyS0 test=hello")
    );
    assert_eq!(c.vms[0].initrd, Some("/i".into()));
    assert_eq!(c.vms[1].cmdline.as_deref(), Some("test=smp"));
    assert_eq!(c.vms[1].initrd, Some("/i".into()));
    let e = one_error("vm t { boot \"/k\" }\nvm t instance u { cmdline \"x\" }\n");
    assert!(e.starts_with("vm.conf:2:"), "{e}");
    assert!(e.contains("boot"), "{e}");
    let e = one_error("vm t { cmdline \"a\"; cmdline \"b\" }\n");
    assert!(e.contains("cmdline"), "{e}");
}

#[test]
fn all_digit_vm_names_and_new_keywords_as_macros_are_refused() {
    let e = one_error("vm \"42\" { }\n");
    assert!(
        e.starts_with("vm.conf:1:") && e.contains("all digits"),
        "{e}"
    );
    // A switch may be all digits: vmctl never takes a switch as an id.
    parse("switch \"42\" { }\n");
    for keyword in ["cmdline", "initrd"] {
        let e = one_error(&format!("{keyword}=\"x\"\n"));
        assert!(e.starts_with("vm.conf:1:"), "{e}");
    }
}

#[test]
fn sandbox_yes_is_the_default_and_no_keeps_its_line() {
    let c = parse("vm a {\n}\nvm b {\n  sandbox yes\n}\nvm c {\n  memory 64M\n  sandbox no\n}\n");
    let got: Vec<_> = c.vms.iter().map(|v| (v.sandbox, v.sandbox_line)).collect();
    assert_eq!(got, [(true, 0), (true, 4), (false, 8)]);
}

#[test]
fn sandbox_bad_value_twice_and_as_macro_are_errors_with_line() {
    assert_eq!(
        one_error("vm a {\n  sandbox maybe\n}\n"),
        "vm.conf:2: malformed line: expected yes or no, found 'maybe'"
    );
    assert_eq!(
        one_error("vm a {\n  sandbox no\n  sandbox yes\n}\n"),
        "vm.conf:3: sandbox specified twice"
    );
    let e = one_error("vm a {\n  sandbox\n}\n");
    assert!(
        e.starts_with("vm.conf:2:") && e.contains("yes or no"),
        "{e}"
    );
    let e = one_error("sandbox=\"no\"\n");
    assert!(e.starts_with("vm.conf:1:"), "{e}");
}

#[test]
fn sandbox_no_is_not_inherited_but_an_instance_may_say_it() {
    let c = parse(
        "vm base {\n  sandbox no\n  allow instance { memory }\n}\n\
         vm base instance kept { memory 64M }\n\
         vm base instance debug {\n  sandbox no\n}\n",
    );
    assert!(!c.vms[0].sandbox);
    assert!(c.vms[1].sandbox, "an instance is sandboxed by default");
    assert_eq!((c.vms[2].sandbox, c.vms[2].sandbox_line), (false, 7));
}

#[test]
fn restarts_is_a_bounded_number_that_instances_inherit_or_set() {
    let c = parse(
        "vm base {\n  restarts 0\n  allow instance { memory }\n}\n\
         vm base instance same { memory 64M }\n\
         vm base instance own {\n  restarts 3\n}\nvm plain {\n}\n",
    );
    let got: Vec<_> = c.vms.iter().map(|v| v.restarts).collect();
    assert_eq!(got, [Some(0), Some(0), Some(3), None]);
    assert_eq!(
        one_error("vm a {\n  restarts 1001\n}\n"),
        "vm.conf:2: bad restarts '1001': expected a number from 0 to 1000"
    );
    assert_eq!(
        one_error("vm a {\n  restarts 1\n  restarts 2\n}\n"),
        "vm.conf:3: restarts specified twice"
    );
}
