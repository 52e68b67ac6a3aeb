//! vmd: the daemon that reads vm.conf(5) and runs one monitor per VM.
//!
//! Map of the module:
//! - [`conf`]: the vm.conf parser, its model ([`conf::Config`]) and its checks.

pub mod conf;
