//! `vmctl create`'s images against QEMU's own tool: every image we create
//! passes `qemu-img check`, `qemu-img info` reports what we meant, a
//! converted image compares identical to its input, and images written by
//! qemu-img convert back correctly.
//!
//! Needs `qemu-img` (Debian: qemu-utils); without it each test prints a
//! loud SKIPPED line and passes.

use std::path::Path;
use std::process::{Command, Output};

use dev_block::disk::create::{convert, create_qcow2, create_raw};
use dev_block::disk::Format;

/// True if qemu-img and qemu-io run; otherwise says so loudly.
fn have_qemu_img(test: &str) -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs("qemu-img") && runs("qemu-io") {
        return true;
    }
    eprintln!("SKIPPED: qemu-img not found ({test}; apt-get install qemu-utils)");
    false
}

/// Runs `tool args`, failing the test on a non-zero exit; returns stdout.
fn tool_ok(tool: &str, args: &[&str]) -> String {
    let out: Output = Command::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ok(args: &[&str]) -> String {
    tool_ok("qemu-img", args)
}

/// One qemu-io command on a qcow2 image.
fn qemu_io(img: &Path, cmd: &str) {
    tool_ok("qemu-io", &["-f", "qcow2", "-c", cmd, s(img)]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img check` of a qcow2 image: no errors, no leaks.
fn check(p: &Path) {
    let out = ok(&["check", "-f", "qcow2", s(p)]);
    assert!(out.contains("No errors were found"), "{out}");
    assert!(!out.contains("leaked"), "{out}");
}

/// A JSON field of `qemu-img info --output=json`, as its raw text.
fn info_field(info: &str, key: &str) -> Option<String> {
    let at = info.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = info[at..].trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_owned())
}

fn info(p: &Path) -> String {
    ok(&["info", "--output=json", s(p)])
}

#[test]
fn created_images_pass_check_and_info() {
    if !have_qemu_img("created_images_pass_check_and_info") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("a.raw");
    create_raw(&raw, 5 << 20).unwrap();
    let i = info(&raw);
    assert_eq!(info_field(&i, "format").as_deref(), Some("raw"), "{i}");
    assert_eq!(
        info_field(&i, "virtual-size"),
        Some((5u64 << 20).to_string())
    );

    for size in [1u64 << 20, 4608 << 20, 3 << 40] {
        let q = dir.path().join(format!("e{size}.qcow2"));
        create_qcow2(&q, Some(size), None).unwrap();
        check(&q);
        let i = info(&q);
        assert_eq!(info_field(&i, "format").as_deref(), Some("qcow2"), "{i}");
        assert_eq!(
            info_field(&i, "virtual-size"),
            Some(size.to_string()),
            "{i}"
        );
        assert_eq!(info_field(&i, "cluster-size").as_deref(), Some("65536"));
        assert_eq!(info_field(&i, "compat").as_deref(), Some("1.1"), "v3: {i}");
    }
}

#[test]
fn backed_image_passes_check_and_names_its_base() {
    if !have_qemu_img("backed_image_passes_check_and_names_its_base") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    ok(&["create", "-q", "-f", "qcow2", s(&base), "7M"]);
    qemu_io(&base, "write -P 0x5a 1M 64k");
    let top = dir.path().join("top.qcow2");
    create_qcow2(&top, None, Some(Path::new("base.qcow2"))).unwrap();
    check(&top);
    let i = info(&top);
    assert_eq!(
        info_field(&i, "virtual-size"),
        Some((7u64 << 20).to_string())
    );
    assert_eq!(
        info_field(&i, "backing-filename").as_deref(),
        Some("base.qcow2"),
        "{i}"
    );
    assert_eq!(
        info_field(&i, "backing-filename-format").as_deref(),
        Some("qcow2"),
        "{i}"
    );
    // QEMU sees the base's data through our overlay.
    ok(&["compare", "-f", "qcow2", "-F", "qcow2", s(&top), s(&base)]);

    // A raw base is recorded as raw.
    let rbase = dir.path().join("rbase.img");
    create_raw(&rbase, 2 << 20).unwrap();
    let rtop = dir.path().join("rtop.qcow2");
    create_qcow2(&rtop, Some(2 << 20), Some(&rbase)).unwrap();
    check(&rtop);
    let i = info(&rtop);
    assert_eq!(
        info_field(&i, "backing-filename-format").as_deref(),
        Some("raw")
    );
}

#[test]
fn converted_images_compare_identical() {
    if !have_qemu_img("converted_images_compare_identical") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A qcow2 input made by QEMU: data, a zero-flagged range over data,
    // a compressed cluster and a backing file.
    let base = dir.path().join("base.qcow2");
    ok(&["create", "-q", "-f", "qcow2", s(&base), "20M"]);
    qemu_io(&base, "write -P 0x11 0 3M");
    qemu_io(&base, "write -P 0x22 10M 100k");
    let input = dir.path().join("in.qcow2");
    ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "base.qcow2",
        s(&input),
    ]);
    qemu_io(&input, "write -z 1M 512k");
    qemu_io(&input, "write -P 0x33 15M 1k");
    qemu_io(&input, "write -c -P 0x44 18M 64k");

    for (name, format) in [("out.qcow2", Format::Qcow2), ("out.raw", Format::Raw)] {
        let out = dir.path().join(name);
        convert(&input, &out, format, None, &mut |_, _| {}).unwrap();
        if format == Format::Qcow2 {
            check(&out);
        }
        let i = info(&out);
        assert_eq!(info_field(&i, "format").as_deref(), Some(format.name()));
        assert_eq!(
            info_field(&i, "virtual-size"),
            Some((20u64 << 20).to_string())
        );
        assert_eq!(info_field(&i, "backing-filename"), None, "flattened: {i}");
        let fmt = format.name();
        let cmp = ok(&["compare", "-f", "qcow2", "-F", fmt, s(&input), s(&out)]);
        assert!(cmp.contains("identical"), "{cmp}");
    }

    // Zero ranges were not written: 3M - 512k + 100k + 1k + 64k of data.
    let map = ok(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        s(&dir.path().join("out.qcow2")),
    ]);
    let data: u64 = map
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .filter_map(|l| info_field(l, "length")?.parse::<u64>().ok())
        .sum();
    // Allocation is per 64 KiB cluster: 40 + 2 + 1 + 1 clusters.
    assert_eq!(data, 44 << 16, "{map}");
}

#[test]
fn larger_size_and_raw_input_convert() {
    if !have_qemu_img("larger_size_and_raw_input_convert") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    let mut bytes = vec![0u8; 3 << 20];
    for (i, b) in bytes.iter_mut().enumerate().skip(1 << 20).take(70_000) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("out.qcow2");
    convert(&input, &out, Format::Qcow2, Some(8 << 20), &mut |_, _| {}).unwrap();
    check(&out);
    let i = info(&out);
    assert_eq!(
        info_field(&i, "virtual-size"),
        Some((8u64 << 20).to_string())
    );
    // Same data; the extra 5 MiB read as zeroes (compare's default, not -s).
    let cmp = ok(&["compare", "-f", "raw", "-F", "qcow2", s(&input), s(&out)]);
    assert!(cmp.contains("identical"), "{cmp}");
    // Back to raw through us: identical to the original bytes plus zeroes.
    let back = dir.path().join("back.raw");
    convert(&out, &back, Format::Raw, None, &mut |_, _| {}).unwrap();
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), 8 << 20);
    assert_eq!(&got[..3 << 20], &bytes[..]);
    assert!(got[3 << 20..].iter().all(|&b| b == 0));
}
