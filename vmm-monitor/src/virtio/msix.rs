//! The MSI-X table, pending bit array and control bits of a virtio-pci
//! function (PCI Local Bus 3.0 §6.8.2; virtio 1.2 §4.1.5.1.2).
//!
//! Pure state: which vector may deliver, to what message, and which is
//! pending. The transport turns changes into KVM routes and irqfds.

use crate::irq::MsiMessage;

use super::pci_caps::MSIX_ENTRY_SIZE;

/// Table entry dwords (PCI 3.0 §6.8.2.8..9).
const ENTRY_ADDRESS_LO: u64 = 0x0;
const ENTRY_ADDRESS_HI: u64 = 0x4;
const ENTRY_DATA: u64 = 0x8;
const ENTRY_VECTOR_CONTROL: u64 = 0xc;
/// Vector control: the vector is masked.
const VECTOR_CONTROL_MASKED: u32 = 1;
/// Pending bits per PBA qword.
const PBA_BITS: usize = 64;

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    message: MsiMessage,
    masked: bool,
}

/// Which part of the table a write changed.
#[derive(Debug, PartialEq, Eq)]
pub enum TableChange {
    /// Nothing (a bad access, or a read-only bit).
    None,
    /// Vector `0`'s message or mask changed.
    Vector(usize),
}

/// MSI-X state of one function.
///
/// # Invariants
/// - Every entry starts masked (PCI 3.0 §6.8.2.9), the function starts
///   disabled and unmasked.
/// - A vector delivers only when MSI-X is enabled, the function is not
///   masked and its entry is not masked; otherwise its interrupts are held
///   as pending bits until it may deliver again.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// A table of `vectors` masked entries.
    pub fn new(vectors: usize) -> Self {
        let entry = Entry {
            message: MsiMessage::default(),
            masked: true,
        };
        Self {
            entries: vec![entry; vectors],
            pending: vec![0; vectors.div_ceil(PBA_BITS)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// MSI-X enable bit of message control.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes the enable and function-mask bits of a message control write.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) {
        self.enabled = enabled;
        self.function_masked = function_masked;
    }

    /// Whether `vector` may deliver now.
    pub fn deliverable(&self, vector: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(vector).is_some_and(|e| !e.masked)
    }

    /// The message of `vector`.
    pub fn message(&self, vector: usize) -> Option<MsiMessage> {
        self.entries.get(vector).map(|e| e.message)
    }

    /// Marks `vector` pending.
    pub fn set_pending(&mut self, vector: usize) {
        if let Some(word) = self.pending.get_mut(vector / PBA_BITS) {
            *word |= 1 << (vector % PBA_BITS);
        }
    }

    /// Clears `vector`'s pending bit and says whether it was set.
    pub fn take_pending(&mut self, vector: usize) -> bool {
        let Some(word) = self.pending.get_mut(vector / PBA_BITS) else {
            return false;
        };
        let bit = 1 << (vector % PBA_BITS);
        let was = *word & bit != 0;
        *word &= !bit;
        was
    }

    /// A guest read of the table at `offset` (dword or qword accesses).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let mut value = 0u64;
        for (i, dword) in dwords(offset, data.len()).into_iter().enumerate() {
            let Some(dword) = dword.and_then(|d| self.table_dword(d)) else {
                log::debug!(
                    "virtio-pci: MSI-X table {}-byte read at {offset:#x}",
                    data.len()
                );
                data.fill(0);
                return;
            };
            value |= u64::from(dword) << (32 * i);
        }
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn table_dword(&self, offset: u64) -> Option<u32> {
        let entry = self
            .entries
            .get(usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?)?;
        // Truncations intended: the halves of the address.
        Some(match offset % MSIX_ENTRY_SIZE {
            ENTRY_ADDRESS_LO => entry.message.address as u32,
            ENTRY_ADDRESS_HI => (entry.message.address >> 32) as u32,
            ENTRY_DATA => entry.message.data,
            ENTRY_VECTOR_CONTROL => u32::from(entry.masked) * VECTOR_CONTROL_MASKED,
            _ => return None,
        })
    }

    /// A guest write to the table at `offset`; which vector changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> TableChange {
        let mut bytes = [0u8; 8];
        let Some(dst) = bytes.get_mut(..data.len()) else {
            return TableChange::None;
        };
        dst.copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let mut change = TableChange::None;
        for (i, dword) in dwords(offset, data.len()).into_iter().enumerate() {
            // Truncation intended: the i-th dword of the access.
            let part = (value >> (32 * i)) as u32;
            match dword.and_then(|d| self.write_dword(d, part)) {
                Some(Some(vector)) => change = TableChange::Vector(vector),
                Some(None) => {}
                None => log::debug!(
                    "virtio-pci: MSI-X table {}-byte write at {offset:#x} ignored",
                    data.len()
                ),
            }
        }
        change
    }

    /// Writes one table dword: None if the table has no such dword, else
    /// the vector whose entry changed (None: the write changed nothing).
    fn write_dword(&mut self, offset: u64, value: u32) -> Option<Option<usize>> {
        let vector = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let entry = self.entries.get_mut(vector)?;
        let before = *entry;
        let address = &mut entry.message.address;
        match offset % MSIX_ENTRY_SIZE {
            ENTRY_ADDRESS_LO => *address = (*address & !u64::from(u32::MAX)) | u64::from(value),
            ENTRY_ADDRESS_HI => {
                *address = (*address & u64::from(u32::MAX)) | (u64::from(value) << 32)
            }
            ENTRY_DATA => entry.message.data = value,
            ENTRY_VECTOR_CONTROL => entry.masked = value & VECTOR_CONTROL_MASKED != 0,
            _ => return None,
        }
        Some((*entry != before).then_some(vector))
    }

    /// A guest read of the pending bit array (dword or qword accesses).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let word = usize::try_from(offset / 8)
            .ok()
            .and_then(|w| self.pending.get(w));
        match (word, offset % 8, data.len()) {
            (Some(w), 0, 8) => data.copy_from_slice(&w.to_le_bytes()),
            (Some(w), 0 | 4, 4) => {
                let shift = (offset % 8) * 8;
                // Truncation intended: the addressed dword.
                data.copy_from_slice(&((w >> shift) as u32).to_le_bytes());
            }
            _ => {
                log::debug!(
                    "virtio-pci: MSI-X PBA {}-byte read at {offset:#x}",
                    data.len()
                );
                data.fill(0);
            }
        }
    }
}

/// The dword offsets a 4- or 8-byte aligned access covers; a None marks an
/// access the table does not support (other sizes, misaligned).
fn dwords(offset: u64, len: usize) -> Vec<Option<u64>> {
    match len {
        4 if offset % 4 == 0 => vec![Some(offset)],
        8 if offset % 8 == 0 => vec![Some(offset), Some(offset + 4)],
        _ => vec![None],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_entries_start_masked_and_function_disabled() {
        let mut msix = Msix::new(3);
        let mut d = [0u8; 4];
        msix.read_table(2 * MSIX_ENTRY_SIZE + ENTRY_VECTOR_CONTROL, &mut d);
        assert_eq!(u32::from_le_bytes(d), VECTOR_CONTROL_MASKED);
        assert!(!msix.deliverable(0));
        msix.set_control(true, false);
        assert!(!msix.deliverable(0), "entry still masked");
        msix.write_table(ENTRY_VECTOR_CONTROL, &0u32.to_le_bytes());
        assert!(msix.deliverable(0));
        msix.set_control(true, true);
        assert!(!msix.deliverable(0), "function mask");
    }

    #[test]
    fn msix_table_qword_and_dword_writes_build_the_message() {
        let mut msix = Msix::new(2);
        let base = MSIX_ENTRY_SIZE;
        assert_eq!(
            msix.write_table(base, &0x1_fee0_0000u64.to_le_bytes()),
            TableChange::Vector(1)
        );
        assert_eq!(
            msix.write_table(base + ENTRY_DATA, &0x4041u32.to_le_bytes()),
            TableChange::Vector(1)
        );
        assert_eq!(
            msix.write_table(base + ENTRY_DATA, &0x4041u32.to_le_bytes()),
            TableChange::None,
            "unchanged"
        );
        assert_eq!(
            msix.message(1),
            Some(MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x4041
            })
        );
        let mut q = [0u8; 8];
        msix.read_table(base, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0000);
        assert_eq!(msix.write_table(base + 2, &[1, 2]), TableChange::None);
        assert_eq!(
            msix.write_table(3 * MSIX_ENTRY_SIZE, &[0; 4]),
            TableChange::None
        );
    }

    #[test]
    fn msix_pba_shows_and_clears_pending() {
        let mut msix = Msix::new(70);
        msix.set_pending(1);
        msix.set_pending(65);
        let mut d = [0u8; 8];
        msix.read_pba(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 2);
        let mut h = [0u8; 4];
        msix.read_pba(8, &mut h);
        assert_eq!(u32::from_le_bytes(h), 2);
        assert!(msix.take_pending(65));
        assert!(!msix.take_pending(65));
        msix.read_pba(8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0);
    }
}
