//! A tamper-evident, lossless audit trail for services that already use
//! [`tracing`](https://docs.rs/tracing).
//!
//! Add one layer to the subscriber you have, then write ordinary tracing
//! macros with `audit.*` fields:
//!
//! ```no_run
//! use tracing_audit::{AuditLayer, FileSink, Risk};
//! use tracing_subscriber::prelude::*;
//!
//! # fn main() -> Result<(), tracing_audit::Error> {
//! let (audit, _guard) = AuditLayer::builder()
//!     .service("billing-api")
//!     .file(FileSink::new("./audit").max_files(90))
//!     .durable_at(Risk::High)
//!     .build()?;
//! tracing_subscriber::registry().with(audit).init();
//!
//! let span = tracing::info_span!("request", audit.actor = "key_42", audit.ip = "203.0.113.9");
//! let _e = span.enter();
//! tracing::warn!(audit.event = "auth_failure", audit.resource = "/login",
//!                audit.outcome = "failure", reason = "bad password", "authentication failed");
//! # Ok(()) }
//! ```
//!
//! Each audit event becomes one JSON line with a `seq` and a hash chained
//! to the previous record; `tracing-audit verify DIR` proves the files were
//! not edited. See the README for the field convention, the record schema,
//! the guarantees and what they cost.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `cli` | the `tracing-audit` command (verify, query, stats, tail, report) |
//! | `tls` | [`SyslogSink::tls`] with rustls |
//! | `valuable` | `audit.details` as a structured `valuable` value; needs `RUSTFLAGS="--cfg tracing_unstable"` |
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
mod pipeline;
mod policy;
mod reader;
mod record;
mod syslog;
mod verify;
mod worker;

pub use builder::{AuditLayerBuilder, CHAIN_KEY_ENV};
pub use chain::GENESIS;
pub use error::Error;
pub use fields::{Outcome, ParseValueError, Risk};
pub use file::FileSink;
pub use guard::{AuditGuard, AuditHandle, AuditStats};
pub use layer::AuditLayer;
pub use pipeline::QueueMode;
pub use policy::{
    Alert, AlertHandler, Clock, Compliance, ComplianceReport, ComplianceStats, Policy, PolicyLayer,
    PolicyLayerBuilder, PolicyStatus, Status,
};
pub use reader::{AuditTrail, Follower, Query, ReadError, Records, TrailStats, TOP_ACTORS};
pub use record::{AuditRecord, RecordSource, SCHEMA_VERSION};
pub use syslog::{severity, Facility, Format, Framing, SyslogSink};
pub use verify::{verify, verify_with, Failure, FailureKind, VerifyReport};
