use std::os::unix::fs::MetadataExt;

use super::*;
use crate::disk::open::open_image;
use crate::disk::DiskImage;

/// Bytes of `path` actually allocated on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn open_rw(path: &Path) -> Box<dyn DiskImage> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    open_image(f, None, false, &mut PathOpener::new(path)).unwrap()
}

fn open_ro(path: &Path) -> Box<dyn DiskImage> {
    let f = File::open(path).unwrap();
    open_image(f, None, true, &mut PathOpener::new(path)).unwrap()
}

/// A qcow2 image at `path` of `size` bytes holding `fill` at each offset.
fn qcow2_with(path: &Path, size: u64, fill: &[(u64, u8, usize)]) {
    create_qcow2(path, Some(size), None).unwrap();
    let img = open_rw(path);
    for &(off, byte, len) in fill {
        img.write_at(&vec![byte; len], off).unwrap();
    }
    img.flush().unwrap();
}

#[test]
fn round_size_mb_rounds_up_and_refuses_zero() {
    assert_eq!(round_size_mb(1).unwrap(), 1 << 20);
    assert_eq!(round_size_mb(1 << 20).unwrap(), 1 << 20);
    assert_eq!(round_size_mb((1 << 20) + 1).unwrap(), 2 << 20);
    // 4.5G stays as it is: already whole MB.
    assert_eq!(round_size_mb(9 << 29).unwrap(), 9 << 29);
    assert!(matches!(round_size_mb(0), Err(CreateError::SizeTooSmall)));
    assert!(matches!(round_size_mb(u64::MAX), Err(CreateError::Size(_))));
}

#[test]
fn create_raw_is_sparse_and_sized() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.raw");
    create_raw(&p, 64 << 20).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 << 20);
    assert!(allocated(&p) < 1 << 20, "{} bytes allocated", allocated(&p));
    assert_eq!(open_ro(&p).size(), 64 << 20);
}

#[test]
fn create_existing_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img");
    std::fs::write(&p, b"precious").unwrap();
    assert!(matches!(
        create_raw(&p, 1 << 20),
        Err(CreateError::Exists { .. })
    ));
    assert!(matches!(
        create_qcow2(&p, Some(1 << 20), None),
        Err(CreateError::Exists { .. })
    ));
    let src = dir.path().join("src.raw");
    create_raw(&src, 1 << 20).unwrap();
    let err = convert(&src, &p, Format::Raw, None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, CreateError::Exists { .. }));
    assert!(err.to_string().contains("d.img"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
}

#[test]
fn create_bad_sizes_are_refused_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    assert!(matches!(create_raw(&p, 0), Err(CreateError::SizeTooSmall)));
    assert!(matches!(create_raw(&p, 1000), Err(CreateError::Size(1000))));
    assert!(matches!(
        create_qcow2(&p, None, None),
        Err(CreateError::MissingSize)
    ));
    // Too large for the L1 table: the file must not remain.
    assert!(matches!(
        create_qcow2(&p, Some(1 << 62), None),
        Err(CreateError::Size(_))
    ));
    assert!(!p.exists());
}

#[test]
fn create_qcow2_empty_opens_with_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.qcow2");
    create_qcow2(&p, Some(3 << 20), None).unwrap();
    let img = open_ro(&p);
    assert_eq!(img.size(), 3 << 20);
    let mut buf = vec![1u8; 4096];
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn create_qcow2_backing_takes_size_and_shows_base_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2_with(&base, 2 << 20, &[(4096, 0xab, 512)]);
    let top = dir.path().join("top.qcow2");
    // Relative name: resolves from top's directory.
    create_qcow2(&top, None, Some(Path::new("base.qcow2"))).unwrap();
    let img = open_ro(&top);
    assert_eq!(img.size(), 2 << 20);
    let mut buf = vec![0u8; 512];
    img.read_at(&mut buf, 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
    // An explicit equal size is fine too.
    let top2 = dir.path().join("top2.qcow2");
    create_qcow2(&top2, Some(2 << 20), Some(&base)).unwrap();
}

#[test]
fn create_qcow2_backing_size_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    create_raw(&base, 2 << 20).unwrap();
    let top = dir.path().join("top.qcow2");
    let err = create_qcow2(&top, Some(3 << 20), Some(&base)).unwrap_err();
    assert!(
        matches!(
            err,
            CreateError::BaseSizeMismatch {
                base_size: 0x20_0000,
                size: 0x30_0000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!top.exists());
}

#[test]
fn create_qcow2_missing_base_names_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top.qcow2");
    let err = create_qcow2(&top, None, Some(Path::new("nope.qcow2"))).unwrap_err();
    let CreateError::OpenBase { resolved, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(resolved, &dir.path().join("nope.qcow2"));
    assert!(!top.exists());
}

#[test]
fn create_qcow2_chain_deeper_than_four_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut prev = dir.path().join("l0.qcow2");
    create_qcow2(&prev, Some(1 << 20), None).unwrap();
    for i in 1..4 {
        let p = dir.path().join(format!("l{i}.qcow2"));
        create_qcow2(&p, None, Some(Path::new(prev.file_name().unwrap()))).unwrap();
        prev = p;
    }
    // l3 -> l2 -> l1 -> l0 is four deep; one more is too many.
    let p = dir.path().join("l4.qcow2");
    let err = create_qcow2(&p, None, Some(Path::new("l3.qcow2"))).unwrap_err();
    assert!(matches!(err, CreateError::OpenBase { .. }), "{err:?}");
    assert!(!p.exists());
}

#[test]
fn convert_skips_zeroes_in_raw_and_qcow2_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.qcow2");
    // 32 MiB, data in two small spots.
    let fill = [(0, 0x11, 4096), ((20 << 20) + 512, 0x22, 1000)];
    qcow2_with(&src, 32 << 20, &fill);
    let raw = dir.path().join("out.raw");
    let mut calls = Vec::new();
    convert(&src, &raw, Format::Raw, None, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(calls.first(), Some(&(0, 32 << 20)));
    assert_eq!(calls.last(), Some(&(32 << 20, 32 << 20)));
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 32 << 20);
    assert!(allocated(&raw) <= 64 << 10, "{} bytes", allocated(&raw));
    let q = dir.path().join("out.qcow2");
    convert(&src, &q, Format::Qcow2, Some(40 << 20), &mut |_, _| {}).unwrap();
    // Header, refcount table, refcount block, L1, one L2, two data clusters.
    assert_eq!(std::fs::metadata(&q).unwrap().len(), 7 << 16);
    for out in [&raw, &q] {
        let img = open_ro(out);
        let mut buf = vec![0u8; 1 << 20];
        img.read_at(&mut buf, 20 << 20).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 0));
        assert!(buf[512..1512].iter().all(|&b| b == 0x22));
        assert!(buf[1512..].iter().all(|&b| b == 0));
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0x11));
        assert!(buf[4096..].iter().all(|&b| b == 0));
    }
    assert_eq!(open_ro(&q).size(), 40 << 20);
}

#[test]
fn convert_flattens_a_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2_with(&base, 1 << 20, &[(0, 0x33, 8192)]);
    let top = dir.path().join("top.qcow2");
    create_qcow2(&top, None, Some(Path::new("base.qcow2"))).unwrap();
    open_rw(&top).write_at(&[0x44; 512], 4096).unwrap();
    let out = dir.path().join("flat.raw");
    convert(&top, &out, Format::Raw, None, &mut |_, _| {}).unwrap();
    let data = std::fs::read(&out).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0x33));
    assert!(data[4096..4608].iter().all(|&b| b == 0x44));
    assert!(data[4608..8192].iter().all(|&b| b == 0x33));
    assert!(data[8192..].iter().all(|&b| b == 0));
}

#[test]
fn convert_smaller_size_is_refused_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    create_raw(&src, 2 << 20).unwrap();
    let out = dir.path().join("out.raw");
    let err = convert(&src, &out, Format::Raw, Some(1 << 20), &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(err, CreateError::SmallerThanInput { .. }),
        "{err:?}"
    );
    assert!(!out.exists());
}

#[test]
fn convert_read_failure_mid_way_removes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.qcow2");
    // Data at 0 and at 550 MiB, under a second L2 table: its data cluster
    // is the file's last, and the first L2 table stays intact.
    qcow2_with(&src, 600 << 20, &[(0, 1, 65536), (550 << 20, 2, 65536)]);
    let len = std::fs::metadata(&src).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let out = dir.path().join("out.qcow2");
    let mut seen_output = false;
    let err = convert(&src, &out, Format::Qcow2, None, &mut |done, _| {
        seen_output |= done > 0 && out.exists();
    })
    .unwrap_err();
    assert!(matches!(err, CreateError::Read { .. }), "{err:?}");
    assert!(seen_output, "the failure came before any chunk was copied");
    assert!(!out.exists(), "output left behind");
}

#[test]
fn convert_raw_input_shrunk_mid_way_removes_the_raw_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![9u8; 3 << 20]).unwrap();
    let img = open_ro(&src);
    // The size was taken at open; the file now ends after the first chunk.
    OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(3 << 19)
        .unwrap();
    let out = dir.path().join("out.raw");
    let err =
        convert_image(img.as_ref(), &src, &out, Format::Raw, None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, CreateError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("src.raw"), "{err}");
    assert!(!out.exists());
}

#[test]
fn convert_image_read_failure_removes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
    let failing = FailingReads {
        inner: open_ro(&src),
    };
    let out = dir.path().join("out.qcow2");
    let err = convert_image(&failing, &src, &out, Format::Qcow2, None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, CreateError::Read { .. }), "{err:?}");
    assert!(!out.exists());
}

/// Set in the child process of [`convert_write_failure_removes_the_output`].
const EFBIG_CHILD: &str = "DEV_BLOCK_CREATE_EFBIG_CHILD";

/// A write failing mid-way (EFBIG from RLIMIT_FSIZE, standing in for
/// ENOSPC) removes the output. The limit applies to the whole process, so
/// the test re-runs itself alone in a child that sets it.
#[test]
fn convert_write_failure_removes_the_output() {
    let Some(dir) = std::env::var_os(EFBIG_CHILD) else {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "disk::create::tests::convert_write_failure_removes_the_output",
                "--test-threads=1",
            ])
            .env(EFBIG_CHILD, dir.path())
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "child: {}\n{}{}",
            child.status,
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(dir.path().join("src.raw").exists(), "the child did not run");
        assert!(!dir.path().join("out.raw").exists());
        return;
    };
    let dir = PathBuf::from(dir);
    let src = dir.join("src.raw");
    std::fs::write(&src, vec![7u8; 4 << 20]).unwrap();
    // SAFETY: SIG_IGN for SIGXFSZ, so an oversized write fails with EFBIG
    // instead of killing this single-purpose child process.
    let prev = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    assert_ne!(prev, libc::SIG_ERR);
    let limit = libc::rlimit {
        rlim_cur: 2 << 20,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit read during the call only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    // qcow2: its empty image fits under the limit, its data does not.
    let out = dir.join("out.qcow2");
    let err = convert(&src, &out, Format::Qcow2, None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, CreateError::Write { .. }), "{err:?}");
    assert!(!out.exists());
}

/// A disk whose reads fail from the second mebibyte on.
struct FailingReads {
    inner: Box<dyn DiskImage>,
}

impl DiskImage for FailingReads {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        if offset >= 1 << 20 {
            return Err(DiskError::Io {
                op: "read",
                offset,
                len: buf.len() as u64,
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
}

#[test]
fn new_file_dropped_unkept_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    drop(NewFile::create(&p).unwrap());
    assert!(!p.exists());
    NewFile::create(&p).unwrap().keep();
    assert!(p.exists());
}
