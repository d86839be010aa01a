#![doc = include_str!("../README.md")]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod builder;
mod capture;
mod chain;
mod encode;
mod error;
mod fields;
mod file;
mod filter;
mod guard;
mod layer;
mod lines;
mod pipeline;
pub mod policy;
mod reader;
mod record;
mod syslog;
mod verify;
mod worker;

pub use builder::{AuditLayerBuilder, CHAIN_KEY_ENV};
pub use chain::GENESIS;
pub use error::Error;
pub use fields::{Outcome, ParseValueError, Risk};
pub use file::{FileSink, OnError, SpaceLeft, SpaceLow};
pub use guard::{AuditGuard, AuditHandle, AuditStats, Health};
pub use layer::AuditLayer;
pub use pipeline::QueueMode;
pub use policy::{
    Alert, AlertHandler, Clock, Compliance, ComplianceReport, ComplianceStats, CrossingReport,
    Policy, PolicyLayer, PolicyLayerBuilder, PolicyStatus, Status,
};
pub use reader::{
    AuditTrail, Follower, Query, ReadError, Records, Sealed, SealedRecords, TrailStats,
    ACTORS_TRACKED, TOP_ACTORS,
};
pub use record::{AuditRecord, RecordSource, SCHEMA_VERSION};
pub use syslog::{severity, Facility, Format, Framing, SyslogSink};
/// When a new audit file starts: `tracing-appender`'s rotation, re-exported
/// so a user needs no `tracing-appender` dependency of their own.
pub use tracing_appender::rolling::Rotation;
pub use verify::{
    verify, verify_opts, verify_with, Failure, FailureKind, VerifyOptions, VerifyReport,
};
