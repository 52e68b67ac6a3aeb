use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::*;

#[test]
fn tap_names_and_aliases_say_whose_interface_it_is() {
    assert_eq!(tap_name(1, 0), "vm1i0");
    assert_eq!(tap_name(4_000_000, 12), "vm4000000i12");
    assert_eq!(
        tap_name(u32::MAX, 7),
        "vm4294967295i7",
        "every id fits IFNAMSIZ"
    );
    assert_eq!(
        tap_name(u32::MAX, 100),
        "vmtap%d",
        "past 15 bytes the kernel picks"
    );
    assert_eq!(tap_alias(1, 0, "web", None), "vm1-if0-web");
    assert_eq!(tap_alias(1, 0, "web", Some("dmz")), "vm1-if0-web group dmz");
}

/// The IFF_* flags of interface `name` in this thread's namespace.
fn flags(name: &str) -> i16 {
    // SAFETY: socket() with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0);
    // SAFETY: just created, ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the ifreq it is given.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(ret, 0);
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags }
}

/// IPv4 addresses on this thread's namespace's interfaces, from
/// /proc/thread-self/net/fib_trie's local routes.
fn local_routes() -> String {
    std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap_or_default()
}

#[test]
fn a_local_interface_on_a_switch_is_named_addressed_up_and_gone_with_its_fd() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED a_local_interface...: needs root and /dev/net/tun");
        return;
    }
    // A private network namespace for this thread only.
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this (new) thread's net namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let ctx = NetContext {
            vm_id: 5,
            vm_name: "web",
            prefix: crate::vmd::conf::DEFAULT_LOCAL_PREFIX,
            inet6: Some(crate::vmd::conf::DEFAULT_LOCAL_INET6_PREFIX),
        };
        let nic = NicSpec {
            tap: None,
            local: true,
            switch: Some("sw".into()),
            lladdr: None,
            locked: true,
            up: true,
            group: None,
            rdomain: None,
        };
        let switch = Switch {
            bridge: "vmdtestbr0",
            rdomain: None,
            up: true,
        };
        let mut created = Vec::new();
        let open = open_nic(&ctx, 0, &nic, Some(&switch), 0x72dc, &mut created).unwrap();
        assert_eq!(
            created,
            [CreatedLink::Bridge {
                name: "vmdtestbr0".into()
            }]
        );
        assert_eq!(open.name, "vm5i0");
        assert_eq!(open.mac.to_string(), "fe:e1:bb:d1:dc:72");
        let local = open.local.unwrap();
        assert_eq!(local.host.to_string(), "100.64.5.2");
        assert_eq!(local.guest.to_string(), "100.64.5.3");
        assert!(local_routes().contains("100.64.5.2"), "{}", local_routes());
        assert_ne!(flags("vm5i0") & libc::IFF_UP as i16, 0);
        assert!(
            bridge::index_of("vmdtestbr0").is_some(),
            "the bridge was made"
        );
        let v6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap();
        assert!(v6.contains("fd766d6472730000644005030000000"), "{v6}");
        // A `down` interface stays down.
        let down = NicSpec {
            local: false,
            switch: None,
            up: false,
            ..nic
        };
        let second = open_nic(&ctx, 1, &down, None, 1, &mut created).unwrap();
        assert_eq!(created.len(), 1, "nothing more created");
        assert_eq!(flags(&second.name) & libc::IFF_UP as i16, 0);
        // The taps go with their fds.
        drop(open);
        drop(second);
        assert!(bridge::index_of("vm5i0").is_none());
        assert!(bridge::index_of("vm5i1").is_none());
    })
    .join()
    .unwrap();
}

#[test]
fn rdomains_map_to_vrfs_named_for_them_on_tables_past_the_reserved_ones() {
    assert_eq!(rdomain::vrf_name(5), "rdomain5");
    assert_eq!(rdomain::vrf_table(5), 1005);
    assert_eq!(rdomain::vrf_table(rdomain::MAX_RDOMAIN), 1255);
    assert!(rdomain::vrf_name(rdomain::MAX_RDOMAIN).len() < libc::IFNAMSIZ);
    // 253..=255 are Linux's default, main and local tables: never ours.
    for n in 1..=rdomain::MAX_RDOMAIN {
        assert!(!(253..=255).contains(&rdomain::vrf_table(n)));
    }
    // rdomain 0 is the default domain: nothing made, nothing recorded.
    let mut created = Vec::new();
    assert_eq!(rdomain::ensure_vrf(0, &mut created).unwrap(), None);
    assert!(created.is_empty());
    assert!(matches!(
        rdomain::ensure_vrf(256, &mut created),
        Err(rdomain::VrfError::OutOfRange { rdomain: 256 })
    ));
}

#[test]
fn created_links_say_what_vmd_made_them_for() {
    let bridge = CreatedLink::Bridge {
        name: "vmdtsw0".into(),
    };
    assert_eq!(
        bridge.to_string(),
        "bridge vmdtsw0 vmd created for a switch"
    );
    let vrf = CreatedLink::Vrf {
        name: "rdomain5".into(),
        rdomain: 5,
    };
    assert_eq!(vrf.name(), "rdomain5");
    assert_eq!(vrf.to_string(), "VRF rdomain5 vmd created for rdomain 5");
}

/// Runs `body` on a thread of its own in a network namespace of its own,
/// or says SKIPPED (needs root and /dev/net/tun).
fn in_private_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED {test}: needs root and /dev/net/tun");
        return;
    }
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this (new) thread's net namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        body();
    })
    .join()
    .unwrap();
}

fn context() -> NetContext<'static> {
    NetContext {
        vm_id: 3,
        vm_name: "web",
        prefix: crate::vmd::conf::DEFAULT_LOCAL_PREFIX,
        inet6: None,
    }
}

#[test]
fn a_down_switch_leaves_its_new_bridge_down_and_reset_deletes_it_once_unused() {
    in_private_netns("a_down_switch_leaves...", || {
        let ctx = context();
        let nic = NicSpec {
            switch: Some("sw".into()),
            // Not applicable on a switch: logged, not an error.
            rdomain: Some(4),
            ..NicSpec::plain()
        };
        let switch = Switch {
            bridge: "vmdtestbr1",
            rdomain: None,
            up: false,
        };
        let mut created = Vec::new();
        let open = open_nic(&ctx, 0, &nic, Some(&switch), 1, &mut created).unwrap();
        assert_eq!(flags("vmdtestbr1") & libc::IFF_UP as i16, 0, "left down");
        assert_ne!(flags(&open.name) & libc::IFF_UP as i16, 0, "the tap is up");
        assert!(bridge::index_of("rdomain4").is_none(), "no VRF for a port");
        let b = bridge::index_of("vmdtestbr1").unwrap();
        assert_eq!(members(b).unwrap(), [open.name.as_str()]);
        // A bridge vmd did not make is never in the record.
        assert!(bridge::ensure("vmdtestother").unwrap());
        // In use: kept.
        let kept = delete_unused(created);
        assert_eq!(kept.len(), 1);
        assert!(bridge::index_of("vmdtestbr1").is_some());
        // Unused: deleted, and so dropped from the record.
        drop(open);
        assert!(delete_unused(kept).is_empty());
        assert!(bridge::index_of("vmdtestbr1").is_none());
        assert!(bridge::index_of("vmdtestother").is_some());
    });
}

#[test]
fn an_rdomain_puts_the_tap_into_its_vrf_or_says_the_kernel_has_none() {
    in_private_netns("an_rdomain_puts_the_tap...", || {
        let ctx = context();
        let nic = NicSpec {
            local: true,
            rdomain: Some(5),
            ..NicSpec::plain()
        };
        let mut created = Vec::new();
        match open_nic(&ctx, 0, &nic, None, 1, &mut created) {
            Ok(open) => {
                assert_eq!(
                    created,
                    [CreatedLink::Vrf {
                        name: "rdomain5".into(),
                        rdomain: 5
                    }]
                );
                assert_ne!(flags("rdomain5") & libc::IFF_UP as i16, 0, "VRF up");
                let vrf = bridge::index_of("rdomain5").unwrap();
                assert_eq!(members(vrf).unwrap(), [open.name.as_str()]);
                drop(open);
                assert!(delete_unused(created).is_empty());
                assert!(bridge::index_of("rdomain5").is_none());
            }
            Err(e) => {
                let text = ipc::error_chain(&e);
                assert!(
                    matches!(
                        e,
                        NetError::Vrf {
                            source: rdomain::VrfError::Unsupported { .. },
                            ..
                        }
                    ),
                    "{text}"
                );
                assert_eq!(
                    text,
                    "interface 0 (vm3i0): cannot create VRF rdomain5 for rdomain 5: \
                     Operation not supported (os error 95) — this kernel has no VRF \
                     support (CONFIG_NET_VRF)"
                );
                assert!(created.is_empty());
                assert!(bridge::index_of("vm3i0").is_none(), "the tap is gone");
            }
        }
    });
}
