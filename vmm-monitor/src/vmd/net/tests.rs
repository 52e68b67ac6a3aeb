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
        };
        let open = open_nic(&ctx, 0, &nic, Some("vmdtestbr0"), 0x72dc).unwrap();
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
        let second = open_nic(&ctx, 1, &down, None, 1).unwrap();
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
