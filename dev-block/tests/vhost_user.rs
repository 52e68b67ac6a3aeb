//! dev-block's backend driven over a real vhost-user connection by
//! dev-backend's test frontend: no KVM, no other process.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use dev_backend::testing::{TestFrontend, TestOptions};
use dev_block::backend::BlockBackend;
use dev_block::device::{BlockDevice, S_IOERR, S_OK};
use dev_block::disk::{DiskImage, RawImage};
use dev_block::wire::RequestHeader;
use vm_memory::ByteValued;

const WAIT: Duration = Duration::from_secs(5);

fn header(kind: u32, sector: u64) -> Vec<u8> {
    RequestHeader {
        kind,
        reserved: 0,
        sector,
    }
    .as_slice()
    .to_vec()
}

/// A backend over a 1 MiB raw image, served on a thread, and a frontend.
fn connect(read_only: bool) -> (TestFrontend, tempfile::NamedTempFile) {
    let image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(1 << 20).unwrap();
    let file = image.reopen().unwrap();
    let disk: Arc<dyn DiskImage> = Arc::new(RawImage::new(file, read_only).unwrap());
    let backend = BlockBackend::new(BlockDevice::new(disk, "vu-test", 1, 16), 16);
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || dev_backend::serve::serve_connection(theirs, backend));
    let opts = TestOptions {
        num_queues: 1,
        queue_size: 16,
        ..TestOptions::default()
    };
    (TestFrontend::connect(ours, opts).unwrap(), image)
}

/// Submits one request and returns the bytes the device wrote.
fn request(fe: &mut TestFrontend, readable: &[u8], writable: u32) -> Vec<u8> {
    let head = fe.add_request(0, readable, writable).unwrap();
    fe.kick(0).unwrap();
    let used = fe.wait_used(0, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1, "one completion");
    assert_eq!(used[0].id, head);
    fe.response(0, head, used[0].len).unwrap()
}

#[test]
fn write_then_read_through_vhost_user() {
    let (mut fe, image) = connect(false);
    let mut out = header(1, 2);
    out.extend(vec![0xab; 4096]);
    assert_eq!(request(&mut fe, &out, 1), vec![S_OK]);
    let reply = request(&mut fe, &header(0, 2), 4096 + 1);
    assert_eq!(reply.len(), 4097);
    assert!(reply[..4096].iter().all(|b| *b == 0xab));
    assert_eq!(reply[4096], S_OK);
    let on_disk = std::fs::read(image.path()).unwrap();
    assert!(on_disk[1024..1024 + 4096].iter().all(|b| *b == 0xab));
    assert_eq!(on_disk[1024 + 4096], 0);
}

#[test]
fn get_id_and_flush_through_vhost_user() {
    let (mut fe, _image) = connect(false);
    let reply = request(&mut fe, &header(8, 0), 21);
    assert_eq!(&reply[..7], b"vu-test");
    assert_eq!(reply[20], S_OK);
    assert_eq!(request(&mut fe, &header(4, 0), 1), vec![S_OK]);
}

#[test]
fn write_to_read_only_disk_fails_and_the_queue_goes_on() {
    let (mut fe, image) = connect(true);
    let mut out = header(1, 0);
    out.extend(vec![0x11; 512]);
    assert_eq!(request(&mut fe, &out, 1), vec![S_IOERR]);
    assert_eq!(request(&mut fe, &header(0, 0), 513)[512], S_OK);
    assert!(std::fs::read(image.path()).unwrap().iter().all(|b| *b == 0));
}
