//! The shared vhost-user backend layer (being written).
