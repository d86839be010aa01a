//! Where sealed lines go: the rolling file and the syslog forwarders.

pub(crate) mod file;
pub(crate) mod syslog;
