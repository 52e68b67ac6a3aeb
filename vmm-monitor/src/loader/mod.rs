//! (being written)
pub mod bzimage;
pub mod pvh;
