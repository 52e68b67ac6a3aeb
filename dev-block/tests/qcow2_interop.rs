//! qcow2 interoperability with QEMU's tools, both ways: images qemu-img and
//! qemu-io wrote read back identically here, and images written here pass
//! `qemu-img check` and convert to the expected bytes. Skips loudly when
//! qemu-img or qemu-io is missing (Debian: qemu-utils).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dev_block::disk::qcow2::{create, create_with, CreateOptions};
use dev_block::disk::{
    open_image, DiskError, DiskImage, Format, NoBacking, OpenError, PathOpener, Qcow2Image,
};

const MIB: u64 = 1 << 20;

/// True if qemu-img and qemu-io run; else says so on stderr, past capture.
fn have_qemu(test: &str) -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        let msg =
            format!("SKIPPED: {test}: qemu-img/qemu-io not found (apt-get install qemu-utils)\n");
        let _ = std::io::stderr().write_all(msg.as_bytes());
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(s(img));
    run("qemu-io", &args);
}

/// `qemu-img check` finds no errors and no leaks.
fn check_clean(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", s(img)])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "qemu-img check {}: {text}",
        img.display()
    );
    assert!(
        !text.contains("leaked"),
        "leaks in {}: {text}",
        img.display()
    );
}

/// The guest bytes of `img` as QEMU sees them.
fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("converted.raw");
    run("qemu-img", &["convert", "-O", "raw", s(img), s(&out)]);
    std::fs::read(out).unwrap()
}

fn open_path(img: &Path, read_only: bool) -> Result<Box<dyn DiskImage>, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(img)
        .unwrap();
    open_image(file, None, read_only, &mut PathOpener::new(img))
}

fn read_all(d: &dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; d.size() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

#[test]
fn qemu_images_read_back_identically() {
    if !have_qemu("qemu_images_read_back_identically") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (compat, cluster) in [
        ("0.10", "4k"),
        ("1.1", "4k"),
        ("0.10", "64k"),
        ("1.1", "64k"),
        ("1.1", "2M"),
    ] {
        let img = dir.path().join(format!("q-{compat}-{cluster}.qcow2"));
        let opts = format!("compat={compat},cluster_size={cluster}");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, s(&img), "16M"],
        );
        qemu_io(
            &img,
            "qcow2",
            &[
                "write -P 0xab 0 1M",
                "write -P 0xcd 3000k 100k",
                "write -z 512k 64k",
                "write -P 0x11 15M 1M",
            ],
        );
        let d = open_path(&img, true).unwrap();
        let ours = read_all(d.as_ref());
        assert_eq!(ours.len() as u64, 16 * MIB);
        assert!(ours[..512 * 1024].iter().all(|&b| b == 0xab), "{opts}");
        assert_eq!(ours, qemu_raw(&img, dir.path()), "{opts}");
    }
}

#[test]
fn qemu_compressed_images_read_and_rewrite() {
    if !have_qemu("qemu_compressed_images_read_and_rewrite") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(7, (4 * MIB) as usize);
    // Compressible stretches next to random ones.
    data[..MIB as usize].fill(0x5a);
    for (i, b) in data[2 * MIB as usize..3 * MIB as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 7) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    for (compat, cluster) in [("0.10", "4k"), ("1.1", "64k"), ("1.1", "512")] {
        let img = dir.path().join(format!("c-{compat}-{cluster}.qcow2"));
        let opts = format!("compat={compat},cluster_size={cluster}");
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &opts,
                s(&raw),
                s(&img),
            ],
        );
        let d = open_path(&img, true).unwrap();
        assert_eq!(read_all(d.as_ref()), data, "{opts}");
        drop(d);
        // Partial writes into compressed clusters decompress and reallocate.
        let d = open_path(&img, false).unwrap();
        let mut model = data.clone();
        for (off, len, seed) in [
            (100u64, 300usize, 1u64),
            (MIB + 4000, 70_000, 2),
            (2 * MIB + 1, 5, 3),
        ] {
            let p = pattern(seed, len);
            d.write_at(&p, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&p);
        }
        d.discard(3 * MIB, MIB).unwrap();
        d.flush().unwrap();
        let ours = read_all(d.as_ref());
        drop(d);
        check_clean(&img);
        assert_eq!(
            ours[..3 * MIB as usize],
            model[..3 * MIB as usize],
            "{opts}"
        );
        assert_eq!(qemu_raw(&img, dir.path()), ours, "{opts}");
    }
}

/// Writes a chain `base.raw <- l1.qcow2 <- ... <- l{n-1}.qcow2`, each level
/// writing its own stripe with qemu-io; returns the top image.
fn make_chain(dir: &Path, n: usize) -> PathBuf {
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x77u8; (8 * MIB) as usize]).unwrap();
    let mut below = (base, "raw");
    for level in 1..n {
        let img = dir.join(format!("l{level}.qcow2"));
        let backing = below.0.file_name().unwrap().to_str().unwrap().to_owned();
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &backing,
                "-F",
                below.1,
                s(&img),
                "8M",
            ],
        );
        let w = format!("write -P {} {}k 96k", 0x10 + level, level * 1000 + 10);
        qemu_io(&img, "qcow2", &[&w]);
        below = (img, "qcow2");
    }
    below.0
}

#[test]
fn backing_chains_of_2_and_4_read_through_and_5_is_refused() {
    if !have_qemu("backing_chains_of_2_and_4_read_through_and_5_is_refused") {
        return;
    }
    for n in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let top = make_chain(dir.path(), n);
        let d = open_path(&top, true).unwrap();
        assert_eq!(
            read_all(d.as_ref()),
            qemu_raw(&top, dir.path()),
            "chain of {n}"
        );
        drop(d);
        // Copy-on-write from the backing file, then QEMU agrees.
        let d = open_path(&top, false).unwrap();
        d.write_at(&[0xee; 1000], 1_024_000 + 5).unwrap();
        d.write_zeroes(2 * MIB, 3 * 65536, true).unwrap();
        let ours = read_all(d.as_ref());
        drop(d);
        check_clean(&top);
        assert_eq!(
            ours,
            qemu_raw(&top, dir.path()),
            "chain of {n} after writes"
        );
        assert!(ours[2 * MIB as usize..2 * MIB as usize + 3 * 65536]
            .iter()
            .all(|&b| b == 0));
    }
    let dir = tempfile::tempdir().unwrap();
    let top = make_chain(dir.path(), 5);
    assert!(matches!(
        open_path(&top, true),
        Err(OpenError::ChainTooDeep { .. })
    ));
}

/// Random writes, discards and zeroes through our writer, mirrored in a
/// model; QEMU must find the image clean and read the model's bytes.
fn exercise(d: &dyn DiskImage, model: &mut [u8], seed: u64, ops: usize, max_len: u64) {
    let mut r = Rng(seed);
    let size = d.size();
    for i in 0..ops {
        let len = 1 + r.below(max_len);
        let off = r.below(size - len);
        let (o, l) = (off as usize, len as usize);
        match r.below(10) {
            0 => {
                d.discard(off, len).unwrap();
                // Discard may keep data: read back what it left.
                d.read_at(&mut model[o..o + l], off).unwrap();
            }
            1 => {
                d.write_zeroes(off, len, r.below(2) == 0).unwrap();
                model[o..o + l].fill(0);
            }
            _ => {
                let p = pattern(seed ^ i as u64, l);
                d.write_at(&p, off).unwrap();
                model[o..o + l].copy_from_slice(&p);
            }
        }
    }
}

#[test]
fn our_writes_pass_qemu_img_check() {
    if !have_qemu("our_writes_pass_qemu_img_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (bits, order) in [(12u32, 4u32), (16, 4), (21, 4), (16, 0), (12, 3), (9, 6)] {
        let img = dir.path().join(format!("ours-{bits}-{order}.qcow2"));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .unwrap();
        let o = CreateOptions {
            size: 24 * MIB,
            cluster_bits: bits,
            refcount_order: order,
            backing: None,
        };
        create_with(&f, &o).unwrap();
        drop(f);
        check_clean(&img);
        let d = open_path(&img, false).unwrap();
        let mut model = vec![0u8; (24 * MIB) as usize];
        exercise(
            d.as_ref(),
            &mut model,
            0x1234 + u64::from(bits),
            300,
            300_000,
        );
        d.flush().unwrap();
        assert_eq!(read_all(d.as_ref()), model);
        drop(d);
        check_clean(&img);
        assert_eq!(
            qemu_raw(&img, dir.path()),
            model,
            "cluster_bits {bits} order {order}"
        );
    }
}

#[test]
fn our_writes_grow_refcount_table_pass_check() {
    if !have_qemu("our_writes_grow_refcount_table_pass_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 512-byte clusters with 64-bit refcounts: a block covers 32 KiB and
    // the first one-cluster table 2 MiB, so 6 MiB of data grows it twice.
    let img = dir.path().join("grow.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512,refcount_bits=64",
            s(&img),
            "16M",
        ],
    );
    let d = open_path(&img, false).unwrap();
    let mut model = vec![0u8; (16 * MIB) as usize];
    for i in 0..6u64 {
        let p = pattern(i, MIB as usize);
        let off = i * 2 * MIB + 77;
        d.write_at(&p, off).unwrap();
        model[off as usize..(off + MIB) as usize].copy_from_slice(&p);
    }
    exercise(d.as_ref(), &mut model, 99, 100, 100_000);
    drop(d);
    let f = File::open(&img).unwrap();
    let mut clusters = [0u8; 4];
    f.read_exact_at(&mut clusters, 56).unwrap();
    assert!(
        u32::from_be_bytes(clusters) > 2,
        "refcount table did not grow"
    );
    let info = run("qemu-img", &["info", s(&img)]);
    check_clean(&img);
    assert_eq!(qemu_raw(&img, dir.path()), model, "{info}");
}

#[test]
fn our_writes_on_qemu_images_with_backing_pass_check() {
    if !have_qemu("our_writes_on_qemu_images_with_backing_pass_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&base), "12M"],
    );
    qemu_io(&base, "qcow2", &["write -P 0x42 0 12M"]);
    for compat in ["0.10", "1.1"] {
        let img = dir.path().join(format!("top-{compat}.qcow2"));
        let opts = format!("compat={compat},cluster_size=4k");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                s(&img),
                "16M",
            ],
        );
        let d = open_path(&img, false).unwrap();
        let mut model = vec![0u8; (16 * MIB) as usize];
        model[..(12 * MIB) as usize].fill(0x42);
        exercise(d.as_ref(), &mut model, 5, 200, 50_000);
        assert_eq!(read_all(d.as_ref()), model);
        drop(d);
        check_clean(&img);
        assert_eq!(qemu_raw(&img, dir.path()), model, "{compat}");
    }
}

#[test]
fn our_create_with_backing_is_read_by_qemu() {
    if !have_qemu("our_create_with_backing_is_read_by_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.raw");
    std::fs::write(&base, vec![0x33u8; (4 * MIB) as usize]).unwrap();
    let img = dir.path().join("t.qcow2");
    let f = File::create(&img).unwrap();
    create(&f, 4 * MIB, 16, Some(("b.raw", Format::Raw))).unwrap();
    drop(f);
    let d = open_path(&img, false).unwrap();
    d.write_at(&[1, 2, 3], 70_000).unwrap();
    drop(d);
    check_clean(&img);
    let mut want = vec![0x33u8; (4 * MIB) as usize];
    want[70_000..70_003].copy_from_slice(&[1, 2, 3]);
    assert_eq!(qemu_raw(&img, dir.path()), want);
    let info = run("qemu-img", &["info", s(&img)]);
    assert!(info.contains("backing file format: raw"), "{info}");
}

fn be64_at(f: &File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn corrupt_images_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    create(&f, 4 * MIB, 16, None).unwrap();
    {
        let d = Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking).unwrap();
        d.write_at(&[9u8; 4096], 0).unwrap();
    }
    // An L2 entry past the end of the file: that request fails.
    let l1 = be64_at(&f, 40);
    let l2 = be64_at(&f, l1) & 0x00ff_ffff_ffff_fe00;
    f.write_all_at(&((1u64 << 63) | (1 << 40)).to_be_bytes(), l2)
        .unwrap();
    let d = Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking).unwrap();
    let mut buf = [0u8; 512];
    assert!(matches!(d.read_at(&mut buf, 0), Err(DiskError::Corrupt(_))));
    assert!(matches!(
        d.write_at(&buf, 65536),
        Err(DiskError::Corrupt(_))
    ));
    drop(d);
    // The L1 table past the end of the file: refused at open.
    let good_l1 = l1;
    f.write_all_at(&(1u64 << 40).to_be_bytes(), 40).unwrap();
    assert!(matches!(
        Qcow2Image::open(f.try_clone().unwrap(), true, &mut NoBacking),
        Err(OpenError::Corrupt(_))
    ));
    f.write_all_at(&good_l1.to_be_bytes(), 40).unwrap();
    // A refcount table whose size overflows the file: refused at open.
    f.write_all_at(&u32::MAX.to_be_bytes(), 56).unwrap();
    assert!(matches!(
        Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking),
        Err(OpenError::Corrupt(_))
    ));
    // Bad magic.
    f.write_all_at(b"QFI\0", 0).unwrap();
    assert!(matches!(
        Qcow2Image::open(f.try_clone().unwrap(), true, &mut NoBacking),
        Err(OpenError::BadMagic(_))
    ));
    // Without a format the same file is taken as raw, as vmctl does.
    assert!(open_path(&img, true).is_ok());
}

#[test]
fn refcount_too_low_is_corrupt_not_a_double_free() {
    // Two L2 entries share one data cluster whose refcount is 1: freeing
    // both would underflow; the second free is refused as corruption.
    let f = tempfile::tempfile().unwrap();
    create(&f, MIB, 16, None).unwrap();
    let d = Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking).unwrap();
    d.write_at(&[1u8; 512], 0).unwrap();
    drop(d);
    let l1 = be64_at(&f, 40);
    let l2 = be64_at(&f, l1) & 0x00ff_ffff_ffff_fe00;
    let first = be64_at(&f, l2);
    f.write_all_at(&first.to_be_bytes(), l2 + 8).unwrap();
    let d = Qcow2Image::open(f, false, &mut NoBacking).unwrap();
    d.discard(0, 65536).unwrap();
    assert!(matches!(
        d.discard(65536, 65536),
        Err(DiskError::Corrupt(_))
    ));
}

#[test]
fn dirty_image_read_write_is_refused() {
    let f = tempfile::tempfile().unwrap();
    create(&f, MIB, 16, None).unwrap();
    f.write_all_at(&1u64.to_be_bytes(), 72).unwrap();
    assert!(matches!(
        Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking),
        Err(OpenError::Dirty)
    ));
    assert!(Qcow2Image::open(f, true, &mut NoBacking).is_ok());
}

#[test]
fn random_ops_match_model() {
    // Reads, writes, discards and zeroes in random order over a qcow2 with
    // a backing file; every read agrees with an in-memory model, also
    // after reopening (cold caches).
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_data = pattern(3, (3 * MIB) as usize);
    std::fs::write(&base, &base_data).unwrap();
    let img = dir.path().join("top.qcow2");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    let o = CreateOptions {
        size: 4 * MIB,
        cluster_bits: 12,
        refcount_order: 4,
        backing: Some(("base.raw".into(), Format::Raw)),
    };
    create_with(&f, &o).unwrap();
    drop(f);
    let mut model = vec![0u8; (4 * MIB) as usize];
    model[..base_data.len()].copy_from_slice(&base_data);
    let mut r = Rng(0xfeed);
    for round in 0..3 {
        let d = open_path(&img, false).unwrap();
        for i in 0..400 {
            let len = 1 + r.below(40_000);
            let off = r.below(d.size() - len);
            let (o, l) = (off as usize, len as usize);
            match r.below(8) {
                0..=2 => {
                    let mut buf = vec![0u8; l];
                    d.read_at(&mut buf, off).unwrap();
                    assert!(
                        buf == model[o..o + l],
                        "round {round} op {i}: read {off:#x}+{len:#x}"
                    );
                }
                3 => {
                    d.discard(off, len).unwrap();
                    d.read_at(&mut model[o..o + l], off).unwrap();
                }
                4 => {
                    d.write_zeroes(off, len, r.below(2) == 0).unwrap();
                    model[o..o + l].fill(0);
                }
                _ => {
                    let p = pattern(r.next(), l);
                    d.write_at(&p, off).unwrap();
                    model[o..o + l].copy_from_slice(&p);
                }
            }
        }
        assert!(read_all(d.as_ref()) == model, "round {round}");
    }
    if have_qemu("random_ops_match_model (qemu-img check part)") {
        check_clean(&img);
        assert!(qemu_raw(&img, dir.path()) == model);
    }
}

#[test]
fn backing_without_format_extension_is_probed() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let f = File::create(&base).unwrap();
    create(&f, 2 * MIB, 12, None).unwrap();
    drop(f);
    open_path(&base, false)
        .unwrap()
        .write_at(&[0x99; 10_000], 4090)
        .unwrap();
    let top = dir.path().join("top.qcow2");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&top)
        .unwrap();
    create(&f, 2 * MIB, 16, Some(("base.qcow2", Format::Qcow2))).unwrap();
    // Turn the backing-format extension (right after the 112-byte header)
    // into an unknown one, which readers skip.
    assert_eq!(be64_at(&f, 112) >> 32, 0xe279_2aca);
    f.write_all_at(&0x1234_5678u32.to_be_bytes(), 112).unwrap();
    drop(f);
    let d = open_path(&top, true).unwrap();
    let mut buf = vec![0u8; 10_010];
    d.read_at(&mut buf, 4085).unwrap();
    assert!(buf[..5].iter().all(|&b| b == 0));
    assert!(buf[5..10_005].iter().all(|&b| b == 0x99));
    assert!(buf[10_005..].iter().all(|&b| b == 0));
}

#[test]
fn read_write_open_clears_autoclear_bits_and_read_only_refuses_writes() {
    let f = tempfile::tempfile().unwrap();
    create(&f, MIB, 16, None).unwrap();
    f.write_all_at(&1u64.to_be_bytes(), 88).unwrap();
    let ro = Qcow2Image::open(f.try_clone().unwrap(), true, &mut NoBacking).unwrap();
    assert!(matches!(ro.write_at(&[1], 0), Err(DiskError::ReadOnly)));
    assert!(matches!(ro.discard(0, 512), Err(DiskError::ReadOnly)));
    assert_eq!(be64_at(&f, 88), 1);
    drop(ro);
    let _rw = Qcow2Image::open(f.try_clone().unwrap(), false, &mut NoBacking).unwrap();
    assert_eq!(be64_at(&f, 88), 0);
}

#[test]
fn missing_backing_file_is_a_clear_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top.qcow2");
    let f = File::create(&top).unwrap();
    create(&f, MIB, 16, Some(("nowhere.raw", Format::Raw))).unwrap();
    drop(f);
    match open_path(&top, true) {
        Err(OpenError::OpenBacking { name, .. }) => assert_eq!(name, "nowhere.raw"),
        other => panic!("unexpected {:?}", other.map(|d| d.size())),
    }
}
