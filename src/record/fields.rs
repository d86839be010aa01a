//! The `audit.*` field convention: which callsites are audit callsites, which
//! field is which, and the small vocabularies (`Risk`, `Outcome`) their values
//! are parsed into.
//!
//! This is the one place that knows field names. `AuditLayer` and
//! `PolicyLayer` both recognise callsites and read values through it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing_core::{Level, Metadata};

/// The field that marks an event as an audit event; its value is the event type.
pub(crate) const EVENT_FIELD: &str = "audit.event";

/// The prefix every audit field starts with.
pub(crate) const PREFIX: &str = "audit.";

/// An `audit.*` field that carries context (allowed on events and spans).
///
/// The discriminant is the slot index in [`ContextFields`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextField {
    Actor = 0,
    Resource = 1,
    Action = 2,
    Outcome = 3,
    Risk = 4,
    Session = 5,
    Ip = 6,
}

/// Number of context slots.
pub(crate) const CONTEXT_SLOTS: usize = 7;

impl ContextField {
    /// The field name as written in a tracing macro.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ContextField::Actor => "audit.actor",
            ContextField::Resource => "audit.resource",
            ContextField::Action => "audit.action",
            ContextField::Outcome => "audit.outcome",
            ContextField::Risk => "audit.risk",
            ContextField::Session => "audit.session",
            ContextField::Ip => "audit.ip",
        }
    }
}

/// What an `audit.*` field name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuditName {
    /// `audit.event`
    Event,
    /// `audit.details`
    Details,
    /// One of the context fields.
    Context(ContextField),
    /// Starts with `audit.` but is not part of the convention.
    Unknown,
}

/// Classifies a field name; `None` for names outside the `audit.` namespace.
///
/// A leading `r#` (raw identifier) is ignored.
pub(crate) fn classify(name: &str) -> Option<AuditName> {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let rest = name.strip_prefix(PREFIX)?;
    Some(match rest {
        "event" => AuditName::Event,
        "details" => AuditName::Details,
        "actor" => AuditName::Context(ContextField::Actor),
        "resource" => AuditName::Context(ContextField::Resource),
        "action" => AuditName::Context(ContextField::Action),
        "outcome" => AuditName::Context(ContextField::Outcome),
        "risk" => AuditName::Context(ContextField::Risk),
        "session" => AuditName::Context(ContextField::Session),
        "ip" => AuditName::Context(ContextField::Ip),
        _ => AuditName::Unknown,
    })
}

/// Whether a callsite is an audit callsite.
///
/// Events qualify when they have an `audit.event` field; spans when they have
/// any `audit.*` field. This runs once per callsite in `callsite_enabled`,
/// and in the per-layer filter's `enabled` whenever the thread's table of
/// recent callsites lacks the event's, so it is a plain scan of the (few)
/// static field names, inlined into the filter (which is generic, so it is
/// compiled in the user's crate: without `#[inline]` this would be a call
/// into this one).
#[inline]
pub(crate) fn is_audit_callsite(meta: &Metadata<'_>) -> bool {
    let fields = meta.fields();
    if meta.is_event() {
        // A scan of the name slice, without building a `Field` per name.
        fields.field(EVENT_FIELD).is_some()
    } else {
        fields.iter().any(|f| f.name().starts_with(PREFIX))
    }
}

/// How much an audit event matters; drives durability, syslog severity and policies.
///
/// Ordered: `Low < Medium < High < Critical`. When an event has no
/// `audit.risk`, it follows the level: `ERROR` → `High`, `WARN` → `Medium`,
/// anything else → `Low`.
///
/// ```
/// use tracing_audit::Risk;
/// assert_eq!("high".parse::<Risk>().unwrap(), Risk::High);
/// assert!(Risk::Critical > Risk::Medium);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Routine, expected activity.
    Low,
    /// Worth a look.
    Medium,
    /// Security relevant; synced to disk before the macro returns by default.
    High,
    /// Needs immediate attention.
    Critical,
}

impl Risk {
    /// The default risk for an event at `level`.
    pub fn from_level(level: &Level) -> Risk {
        if *level == Level::ERROR {
            Risk::High
        } else if *level == Level::WARN {
            Risk::Medium
        } else {
            Risk::Low
        }
    }

    /// The lowercase name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a value that is not one of a vocabulary's words.
///
/// ```
/// let err = "severe".parse::<tracing_audit::Risk>().unwrap_err();
/// assert!(err.to_string().contains("severe"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of: {expected}")]
pub struct ParseValueError {
    value: String,
    expected: &'static str,
}

impl Risk {
    /// The exact lowercase word, else `None`: the common case, inlined
    /// where a value is resolved, without building [`FromStr`]'s error
    /// (which also takes other cases and surrounding spaces).
    #[inline]
    pub(crate) fn exact(s: &[u8]) -> Option<Self> {
        match s {
            b"low" => Some(Risk::Low),
            b"medium" => Some(Risk::Medium),
            b"high" => Some(Risk::High),
            b"critical" => Some(Risk::Critical),
            _ => None,
        }
    }
}

impl FromStr for Risk {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(r) = Risk::exact(s.as_bytes()) {
            return Ok(r);
        }
        let t = s.trim();
        let is = |w: &str| t.eq_ignore_ascii_case(w);
        Ok(match () {
            _ if is("low") => Risk::Low,
            _ if is("medium") => Risk::Medium,
            _ if is("high") => Risk::High,
            _ if is("critical") => Risk::Critical,
            _ => {
                return Err(ParseValueError {
                    value: s.to_owned(),
                    expected: "low, medium, high, critical",
                })
            }
        })
    }
}

/// Whether the audited action succeeded.
///
/// ```
/// use tracing_audit::Outcome;
/// assert_eq!("failure".parse::<Outcome>().unwrap(), Outcome::Failure);
/// assert_eq!(Outcome::Success.as_str(), "success");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action was carried out.
    Success,
    /// The action was refused or failed.
    Failure,
    /// Not known (the default when no `audit.outcome` is given).
    Unknown,
}

impl Outcome {
    /// The lowercase name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// The exact lowercase word, else `None` (see [`Risk::exact`]).
    #[inline]
    pub(crate) fn exact(s: &[u8]) -> Option<Self> {
        match s {
            b"success" => Some(Outcome::Success),
            b"failure" => Some(Outcome::Failure),
            b"unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

impl FromStr for Outcome {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(o) = Outcome::exact(s.as_bytes()) {
            return Ok(o);
        }
        let t = s.trim();
        let is = |w: &str| t.eq_ignore_ascii_case(w);
        Ok(match () {
            _ if is("success") => Outcome::Success,
            _ if is("failure") => Outcome::Failure,
            _ if is("unknown") => Outcome::Unknown,
            _ => {
                return Err(ParseValueError {
                    value: s.to_owned(),
                    expected: "success, failure, unknown",
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names() {
        assert_eq!(classify("audit.event"), Some(AuditName::Event));
        assert_eq!(
            classify("r#audit.actor"),
            Some(AuditName::Context(ContextField::Actor))
        );
        assert_eq!(classify("audit.colour"), Some(AuditName::Unknown));
        assert_eq!(classify("auditor"), None);
        assert_eq!(classify("message"), None);
        for f in [
            ContextField::Actor,
            ContextField::Resource,
            ContextField::Action,
            ContextField::Outcome,
            ContextField::Risk,
            ContextField::Session,
            ContextField::Ip,
        ] {
            assert_eq!(classify(f.name()), Some(AuditName::Context(f)));
        }
    }

    #[test]
    fn risk_parse_and_order() {
        assert_eq!(" HIGH ".parse::<Risk>(), Ok(Risk::High));
        assert!("severe".parse::<Risk>().is_err());
        assert!(Risk::Low < Risk::Medium && Risk::High < Risk::Critical);
        assert_eq!(Risk::from_level(&Level::ERROR), Risk::High);
        assert_eq!(Risk::from_level(&Level::WARN), Risk::Medium);
        assert_eq!(Risk::from_level(&Level::INFO), Risk::Low);
        assert_eq!(Risk::from_level(&Level::TRACE), Risk::Low);
    }

    #[test]
    fn outcome_parse() {
        assert_eq!("Failure".parse::<Outcome>(), Ok(Outcome::Failure));
        let err = "maybe".parse::<Outcome>().unwrap_err();
        assert!(err.to_string().contains("maybe"));
    }
}
