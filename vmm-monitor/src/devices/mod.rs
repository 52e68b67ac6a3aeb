//! The in-process platform devices.
pub mod acpi_pm;
pub mod com_queue;
pub mod i8042;
pub mod pci_host;
pub mod rtc;
pub mod serial;
