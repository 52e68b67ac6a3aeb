//! End-to-end test harness (being written).
