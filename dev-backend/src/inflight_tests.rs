use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;

fn region(num_queues: u16, queue_size: u16) -> (InflightRegion, File) {
    InflightRegion::create(num_queues, queue_size).unwrap()
}

fn raw(file: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).unwrap();
    buf
}

#[test]
fn region_size_matches_spec_layout_rounded_to_alignment() {
    assert_eq!(queue_area_size(1), 64);
    // 16 + 16 * 128 = 2064 -> 2112 (33 cache lines).
    assert_eq!(queue_area_size(128), 2112);
    assert_eq!(queue_area_size(256), 4160);
    assert_eq!(region_size(2, 256), 8320);
    let (_, file) = region(2, 256);
    assert_eq!(file.metadata().unwrap().len(), 8320);
}

#[test]
fn recover_fresh_area_initialises_header_fields_at_spec_offsets() {
    let (region, file) = region(2, 8);
    let mut q1 = region.queue(1).unwrap();
    assert!(q1.recover(7).unwrap().fresh);
    let base = queue_area_size(8) as u64;
    let hdr = raw(&file, base, QUEUE_HEADER_SIZE);
    assert_eq!(&hdr[0..8], &[0; 8], "features");
    assert_eq!(u16::from_ne_bytes([hdr[8], hdr[9]]), 1, "version");
    assert_eq!(u16::from_ne_bytes([hdr[10], hdr[11]]), 8, "desc_num");
    assert_eq!(u16::from_ne_bytes([hdr[14], hdr[15]]), 7, "used_idx");
    // Queue 0's area is untouched.
    assert_eq!(raw(&file, 0, 16), vec![0; 16]);
}

#[test]
fn mark_sets_inflight_and_counter_at_spec_offsets() {
    let (region, file) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    q.mark(3).unwrap();
    q.mark(5).unwrap();
    let d5 = raw(&file, (QUEUE_HEADER_SIZE + 5 * DESC_STATE_SIZE) as u64, 16);
    assert_eq!(d5[0], 1, "inflight");
    assert_eq!(
        u64::from_ne_bytes(d5[8..16].try_into().unwrap()),
        1,
        "counter"
    );
    assert!(q.is_inflight(3).unwrap());
    assert!(!q.is_inflight(4).unwrap());
}

#[test]
fn complete_clears_inflight_and_records_used_idx() {
    let (region, file) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    q.mark(2).unwrap();
    q.begin_complete(2).unwrap();
    q.finish_complete(2, 1).unwrap();
    assert!(!q.is_inflight(2).unwrap());
    let hdr = raw(&file, 0, QUEUE_HEADER_SIZE);
    assert_eq!(u16::from_ne_bytes([hdr[12], hdr[13]]), 2, "last_batch_head");
    assert_eq!(u16::from_ne_bytes([hdr[14], hdr[15]]), 1, "used_idx");
}

#[test]
fn mark_head_beyond_queue_is_refused() {
    let (region, _) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    assert!(matches!(
        q.mark(8),
        Err(InflightError::HeadOutOfRange {
            head: 8,
            desc_num: 8
        })
    ));
}

#[test]
fn recover_resubmits_in_counter_order_not_head_order() {
    let (region, file) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    for head in [6, 1, 4, 0] {
        q.mark(head).unwrap();
    }
    q.begin_complete(4).unwrap();
    q.finish_complete(4, 1).unwrap();
    // A new backend instance maps the same fd.
    let again = InflightRegion::from_file(file, region_size(1, 8) as u64, 0, 1, 8).unwrap();
    let mut q2 = again.queue(0).unwrap();
    let rec = q2.recover(1).unwrap();
    assert_eq!(rec.resubmit, vec![6, 1, 0]);
    // The global counter continues after the largest one found.
    q2.mark(2).unwrap();
    q2.mark(3).unwrap();
    let rec = again.queue(0).unwrap().recover(1).unwrap();
    assert_eq!(rec.resubmit, vec![6, 1, 0, 2, 3]);
}

#[test]
fn recover_used_idx_behind_ring_clears_last_batch() {
    let (region, _) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    q.mark(5).unwrap();
    q.mark(2).unwrap();
    // Crash after the used ring idx went to 1 but before finish_complete.
    q.begin_complete(2).unwrap();
    let rec = region.queue(0).unwrap().recover(1).unwrap();
    assert_eq!(rec.resubmit, vec![5]);
    assert!(!q.is_inflight(2).unwrap());
}

#[test]
fn recover_used_idx_matching_ring_keeps_unpublished_completion() {
    let (region, _) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    q.mark(5).unwrap();
    q.mark(2).unwrap();
    // Crash after linking 2 into the batch but before the used ring moved:
    // the driver never saw it, so it must run again.
    q.begin_complete(2).unwrap();
    let rec = region.queue(0).unwrap().recover(0).unwrap();
    assert_eq!(rec.resubmit, vec![5, 2]);
}

#[test]
fn recover_batch_of_two_walks_the_next_links() {
    let (region, _) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(10).unwrap();
    for head in [1, 2, 3] {
        q.mark(head).unwrap();
    }
    q.begin_complete(3).unwrap();
    q.begin_complete(1).unwrap();
    // The used ring moved by two (a batch of 3 and 1), nothing recorded.
    let rec = region.queue(0).unwrap().recover(12).unwrap();
    assert_eq!(rec.resubmit, vec![2]);
}

#[test]
fn recover_batch_longer_than_queue_is_corrupt() {
    let (region, _) = region(1, 8);
    let mut q = region.queue(0).unwrap();
    q.recover(0).unwrap();
    assert!(matches!(
        region.queue(0).unwrap().recover(9),
        Err(InflightError::Corrupt(_))
    ));
}

#[test]
fn from_file_too_small_is_refused() {
    let (_, file) = region(1, 8);
    assert!(matches!(
        InflightRegion::from_file(file, 64, 0, 2, 8),
        Err(InflightError::BadDescription { .. })
    ));
}
