#![doc = include_str!("../README.md")]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod error;
mod layer;
mod pipeline;
pub mod policy;
mod queue;
mod record;
mod sink;
mod trail;

pub use error::Error;
pub use layer::builder::{AuditLayerBuilder, CHAIN_KEY_ENV};
pub use layer::AuditLayer;
pub use pipeline::guard::{AuditGuard, AuditHandle, AuditStats, Health};
pub use policy::{
    Alert, AlertHandler, Clock, Compliance, ComplianceReport, ComplianceStats, CrossingReport,
    Policy, PolicyLayer, PolicyLayerBuilder, PolicyStatus, Status,
};
pub use queue::QueueMode;
pub use record::chain::GENESIS;
pub use record::fields::{Outcome, ParseValueError, Risk};
pub use record::{AuditRecord, RecordSource, SCHEMA_VERSION};
pub use sink::file::{FileSink, OnError, SpaceLeft, SpaceLow};
pub use sink::syslog::{severity, Facility, Format, Framing, SyslogSink};
/// When a new audit file starts: `tracing-appender`'s rotation, re-exported
/// so a user needs no `tracing-appender` dependency of their own.
pub use tracing_appender::rolling::Rotation;
pub use trail::verify::{
    verify, verify_opts, verify_with, Failure, FailureKind, VerifyOptions, VerifyReport,
};
pub use trail::{
    AuditTrail, Follower, Query, ReadError, Records, Sealed, SealedRecords, TrailStats,
    ACTORS_TRACKED, TOP_ACTORS,
};
