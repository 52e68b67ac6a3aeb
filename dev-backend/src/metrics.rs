//! Counters every device backend keeps ([`Metrics`], defined in
//! `ipc::metrics` because the monitor reads them too); the device owns
//! them in a [`MetricsPage`] (shared with the monitor under it, private
//! standalone), and the layer bumps the ring-level ones.

pub use ipc::metrics::{Metrics, MetricsPage, MetricsPageError, MetricsSnapshot};
