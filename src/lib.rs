#![doc = include_str!("../README.md")]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod error;
pub mod layer;
pub mod pipeline;
pub mod policy;
mod queue;
pub mod record;
mod sink;
pub mod trail;

pub use error::Error;
pub use layer::AuditLayer;
pub use pipeline::{AuditGuard, AuditHandle, AuditStats};
pub use policy::{Policy, PolicyLayer};
pub use queue::QueueMode;
pub use record::{Outcome, Risk};
pub use sink::file::FileSink;
pub use sink::syslog::SyslogSink;
pub use trail::verify;

/// The rolling audit file's settings: what a failing or full disk does,
/// and when a new file starts.
///
/// [`FileSink`] itself is at the crate root.
///
/// ```
/// use tracing_audit::file::{OnError, Rotation};
/// use tracing_audit::FileSink;
/// let sink = FileSink::new("./audit")
///     .rotation(Rotation::HOURLY)
///     .on_error(OnError::Block);
/// # let _ = sink;
/// ```
pub mod file {
    pub use crate::sink::file::{FileSink, OnError, SpaceLeft, SpaceLow};
    /// When a new audit file starts: `tracing-appender`'s rotation,
    /// re-exported so a user needs no `tracing-appender` dependency of
    /// their own.
    pub use tracing_appender::rolling::Rotation;
}

/// Forwarding each sealed record to a syslog server or a SIEM relay:
/// RFC 5424 (with the key fields as structured data) or RFC 3164, over
/// UDP, TCP, TLS or a Unix socket.
///
/// [`SyslogSink`] itself is at the crate root.
///
/// ```
/// use tracing_audit::syslog::{Facility, Format, Framing};
/// use tracing_audit::SyslogSink;
/// let sink = SyslogSink::tcp("127.0.0.1:6514")
///     .format(Format::Rfc5424)
///     .facility(Facility::Auth)
///     .framing(Framing::OctetCounting);
/// assert_eq!(tracing_audit::syslog::severity(tracing_audit::Risk::Critical), 2);
/// # let _ = sink;
/// ```
pub mod syslog {
    pub use crate::sink::syslog::{severity, Facility, Format, Framing, SyslogSink};
}

/// Forwarding each sealed record as an OTLP log record (feature `otlp`):
/// to an OpenTelemetry Collector over gRPC or HTTP/protobuf, with the same
/// delivery contract as the syslog sinks (from the trail after a durable
/// cursor when there is a file sink; partial successes retried and
/// counted).
///
/// ```
/// use tracing_audit::otlp::OtlpSink;
/// let sink = OtlpSink::http("http://127.0.0.1:4318").service_name("billing-api");
/// # let _ = sink;
/// ```
#[cfg(feature = "otlp")]
pub mod otlp {
    pub use crate::sink::otlp::OtlpSink;
}
