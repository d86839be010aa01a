//! Where sealed lines go: the rolling file (the trail itself) and the
//! syslog forwarders.
//!
//! A forwarder is a [`LineSink`]: the worker hands it each sealed line with
//! the line's key fields already located ([`SealedLine`]), so no sink parses
//! the JSON it was just given.
//!
//! May use: `record` (vocabulary, encoding, the line layout) and the
//! `queue` leaf. Never the layer or the pipeline: sinks report through the
//! counters they own, which the pipeline's handles read.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

pub(crate) mod cursor;
pub(crate) mod file;
pub(crate) mod forward;
#[cfg(feature = "otlp")]
pub(crate) mod otlp;
pub(crate) mod syslog;

pub(crate) use crate::record::layout::SealedLine;

/// Somewhere sealed lines go besides the file (the syslog sinks).
pub(crate) trait LineSink: Send + std::fmt::Debug {
    /// Takes one sealed line.
    fn send_line(&mut self, line: &SealedLine<'_>);
    /// Called once when the worker stops.
    fn close(&mut self);
}

/// The most recent error and when it happened.
#[derive(Debug, Clone)]
pub(crate) struct LastError {
    pub(crate) message: String,
    pub(crate) at: SystemTime,
}

impl LastError {
    /// Records `message` as the last error in `slot`, now.
    pub(crate) fn set(slot: &std::sync::Mutex<Option<LastError>>, message: String) {
        if let Ok(mut last) = slot.lock() {
            *last = Some(LastError {
                message,
                at: SystemTime::now(),
            });
        }
    }
}

/// How far a sink reading the trail is, shared with the worker (which
/// notes what it wrote), the file writer (whose retention must not delete
/// undelivered records silently) and the stats. Both are `seq + 1`, 0 for
/// none.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Past the last record written to the files.
    pub(crate) written: AtomicU64,
    /// Past the last record delivered: the first one the sink still needs.
    pub(crate) delivered: AtomicU64,
}

impl Progress {
    /// Records written and not yet delivered.
    pub(crate) fn behind(&self) -> u64 {
        self.written
            .load(Relaxed)
            .saturating_sub(self.delivered.load(Relaxed))
    }
}
