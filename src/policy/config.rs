//! What a compliance policy says: which events it counts, its alert
//! threshold and window, its retention. Loadable from TOML or JSON.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::fields::{Outcome, Risk};

/// A compliance policy.
///
/// It counts audit events whose type is one of its required kinds (any
/// kind when none are given) and that pass its optional outcome, risk,
/// actor and resource filters. It raises an alert when `threshold` of them
/// fall within `window`, and its report flags each required kind with no
/// event within `retention`.
///
/// | setting | default |
/// |---|---|
/// | `threshold` | 1 |
/// | `window` | 24 h (the seed monitor's window) |
/// | `retention` | 30 days |
///
/// ```
/// use std::time::Duration;
/// use tracing_audit::{Outcome, Policy};
/// let p = Policy::new("failed_logins")
///     .require(["auth_failure"])
///     .outcome(Outcome::Failure)
///     .threshold(5)
///     .window(Duration::from_secs(300));
/// assert_eq!(p.threshold, 5);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Key used by `report(name)` (e.g. `authentication_monitoring`).
    pub name: String,
    /// Human title (e.g. `Authentication Monitoring`); defaults to `name`.
    #[serde(default)]
    pub title: Option<String>,
    /// What the policy is for.
    #[serde(default)]
    pub description: String,
    /// Event kinds counted and required within retention.
    #[serde(default)]
    pub require: Vec<String>,
    /// Only events with this outcome.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Only events at or above this risk.
    #[serde(default)]
    pub min_risk: Option<Risk>,
    /// Only events by this actor.
    #[serde(default)]
    pub actor: Option<String>,
    /// Only events on this resource.
    #[serde(default)]
    pub resource: Option<String>,
    /// Events within `window` that raise an alert.
    #[serde(default = "one")]
    pub threshold: u64,
    /// The sliding window, e.g. `"5m"`, `"24h"` or seconds as a number.
    #[serde(default = "day", with = "duration")]
    pub window: Duration,
    /// How long counts are kept for reports, e.g. `"90d"`.
    #[serde(default = "month", with = "duration")]
    pub retention: Duration,
    /// Count per actor, ip, resource or session instead of per policy: each
    /// group has its own window, and an alert names the group's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
}

/// What a policy's thresholds are counted per (`group_by`).
///
/// ```
/// use tracing_audit::policy::GroupBy;
/// let p = tracing_audit::Policy::new("brute_force")
///     .require(["auth_failure"])
///     .threshold(10)
///     .group_by(GroupBy::Actor);
/// assert_eq!(p.group_by, Some(GroupBy::Actor));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// `audit.actor`.
    Actor,
    /// `audit.ip`.
    Ip,
    /// `audit.resource`.
    Resource,
    /// `audit.session`.
    Session,
}

impl GroupBy {
    /// The name as written in a policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Actor => "actor",
            GroupBy::Ip => "ip",
            GroupBy::Resource => "resource",
            GroupBy::Session => "session",
        }
    }
}

/// The largest threshold a policy may have.
pub const MAX_THRESHOLD: u64 = 10_000;
/// The shortest window.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);
/// The shortest retention.
pub const MIN_RETENTION: Duration = Duration::from_secs(1);
/// The longest window or retention: 100 years of 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why policies could not be loaded, or a report could not be given.
///
/// ```
/// use tracing_audit::policy::{Policy, PolicyError, PolicyLayer};
/// let err = Policy::load("/nonexistent/policies.toml").unwrap_err();
/// assert!(matches!(err, PolicyError::Load { .. }), "{err}");
/// let (_layer, compliance) = PolicyLayer::builder().build::<tracing_subscriber::Registry>();
/// let err = compliance.report("nope").unwrap_err();
/// assert!(matches!(err, PolicyError::Unknown(ref n) if n == "nope"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy file could not be read, parsed or validated.
    #[error("invalid policy file `{}`: {message}", path.display())]
    Load {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No policy has this name.
    #[error("no policy named `{0}`")]
    Unknown(String),
}

/// A policy setting outside what can be counted exactly.
///
/// ```
/// let err = tracing_audit::Policy::new("p").threshold(0).validate().unwrap_err();
/// assert_eq!(err.field, "threshold");
/// assert!(err.to_string().contains("1..=10000"), "{err}");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy `{policy}`: {field} {problem}")]
pub struct InvalidPolicy {
    /// The policy's name.
    pub policy: String,
    /// The field at fault (`name`, `threshold`, `window`, `retention`, `require`).
    pub field: &'static str,
    /// What is wrong, with the allowed range.
    pub problem: String,
}

fn one() -> u64 {
    1
}
fn day() -> Duration {
    Duration::from_secs(86_400)
}
fn month() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl Policy {
    /// A policy named `name` with the defaults above.
    pub fn new(name: impl Into<String>) -> Self {
        Policy {
            name: name.into(),
            title: None,
            description: String::new(),
            require: Vec::new(),
            outcome: None,
            min_risk: None,
            actor: None,
            resource: None,
            threshold: 1,
            window: day(),
            retention: month(),
            group_by: None,
        }
    }

    /// The human title.
    #[must_use]
    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    /// What the policy is for.
    #[must_use]
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// Event kinds counted and required.
    #[must_use]
    pub fn require<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.require = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// Only events with this outcome.
    #[must_use]
    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = Some(o);
        self
    }

    /// Only events at or above this risk.
    #[must_use]
    pub fn min_risk(mut self, r: Risk) -> Self {
        self.min_risk = Some(r);
        self
    }

    /// Only events by this actor.
    #[must_use]
    pub fn actor(mut self, a: impl Into<String>) -> Self {
        self.actor = Some(a.into());
        self
    }

    /// Only events on this resource.
    #[must_use]
    pub fn resource(mut self, r: impl Into<String>) -> Self {
        self.resource = Some(r.into());
        self
    }

    /// Events within the window that raise an alert (1 to [`MAX_THRESHOLD`]).
    #[must_use]
    pub fn threshold(mut self, n: u64) -> Self {
        self.threshold = n;
        self
    }

    /// Counts per actor, ip, resource or session (see [`GroupBy`]).
    #[must_use]
    pub fn group_by(mut self, by: GroupBy) -> Self {
        self.group_by = Some(by);
        self
    }

    /// The sliding window.
    #[must_use]
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// How long counts are kept for reports.
    #[must_use]
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// The three policies of the seed monitor, with its names and numbers:
    /// `data_access_tracking` (5 in 24 h, 90 days), `authentication_monitoring`
    /// (3 in 24 h, 30 days), `security_compliance` (1 in 24 h, 365 days).
    pub fn defaults() -> Vec<Policy> {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        vec![
            Policy::new("data_access_tracking")
                .title("Data Access Tracking")
                .description("Track all data access events")
                .require(["data_access", "data_modification", "data_deletion"])
                .retention(days(90))
                .threshold(5),
            // The seed counted every login: three ordinary logins a day
            // raised an alert. Here it counts failures, with the seed's
            // name, kinds and numbers.
            Policy::new("authentication_monitoring")
                .title("Authentication Monitoring")
                .description("Monitor authentication failures")
                .require(["login", "logout", "auth_failure"])
                .outcome(crate::record::fields::Outcome::Failure)
                .retention(days(30))
                .threshold(3),
            Policy::new("security_compliance")
                .title("Security Compliance")
                .description("Monitor security-related events")
                .require(["security_alert", "prompt_injection", "data_breach"])
                .retention(days(365))
                .threshold(1),
        ]
    }

    /// Checks every setting against what can be counted exactly: a name,
    /// a threshold in `1..=`[`MAX_THRESHOLD`], a window in
    /// [`MIN_WINDOW`]`..=`[`MAX_DURATION`], a retention in
    /// [`MIN_RETENTION`]`..=`[`MAX_DURATION`], required kinds non-empty and
    /// each named once. [`Policy::load`] and `PolicyLayerBuilder::try_build`
    /// reject what fails here.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let bad = |field: &'static str, problem: String| InvalidPolicy {
            policy: self.name.clone(),
            field,
            problem,
        };
        if self.name.is_empty() {
            return Err(bad("name", "is empty".into()));
        }
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return Err(bad(
                "threshold",
                format!("{} is out of range (1..={MAX_THRESHOLD})", self.threshold),
            ));
        }
        for (field, d, min) in [
            ("window", self.window, MIN_WINDOW),
            ("retention", self.retention, MIN_RETENTION),
        ] {
            if d < min || d > MAX_DURATION {
                return Err(bad(
                    field,
                    format!(
                        "{} is out of range ({}..={})",
                        show_duration(d),
                        show_duration(min),
                        show_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        for (i, kind) in self.require.iter().enumerate() {
            if kind.is_empty() {
                return Err(bad("require", "names an empty kind".into()));
            }
            if self.require[..i].contains(kind) {
                return Err(bad(
                    "require",
                    format!("names {kind:?} twice (each kind is counted once)"),
                ));
            }
        }
        Ok(())
    }

    /// The policy as counted: each setting brought into its allowed range
    /// and each required kind kept once. What `PolicyLayerBuilder::build`
    /// uses, and what its reports, stats and alerts show.
    pub(crate) fn effective(mut self) -> Policy {
        if self.name.is_empty() {
            self.name = "(unnamed)".into();
        }
        self.threshold = self.threshold.clamp(1, MAX_THRESHOLD);
        self.window = self.window.clamp(MIN_WINDOW, MAX_DURATION);
        self.retention = self.retention.clamp(MIN_RETENTION, MAX_DURATION);
        let mut seen = std::collections::HashSet::new();
        self.require
            .retain(|k| !k.is_empty() && seen.insert(k.clone()));
        self
    }

    /// Loads policies from a TOML (`[[policy]]` tables) or JSON (an array,
    /// or `{"policy": [...]}`) file, chosen by extension (`.json` or else TOML).
    ///
    /// ```toml
    /// [[policy]]
    /// name = "failed_logins"
    /// require = ["auth_failure"]
    /// outcome = "failure"
    /// threshold = 5
    /// window = "5m"
    /// retention = "30d"
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Vec<Policy>, PolicyError> {
        let path = path.as_ref();
        let err = |message: String| PolicyError::Load {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            policy: Vec<Policy>,
        }
        let policies = if path.extension().is_some_and(|e| e == "json") {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Json {
                List(Vec<Policy>),
                Wrapped(File),
            }
            match serde_json::from_str::<Json>(&text).map_err(|e| err(e.to_string()))? {
                Json::List(l) => l,
                Json::Wrapped(f) => f.policy,
            }
        } else {
            toml::from_str::<File>(&text)
                .map_err(|e| err(e.to_string()))?
                .policy
        };
        for p in &policies {
            p.validate().map_err(|e| err(e.to_string()))?;
        }
        Ok(policies)
    }
}

/// A duration as a policy shows it: `"5m"`, `"30d"`, `"1500ms"`, `"7ns"`.
pub(crate) fn show_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        duration::text(d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Durations as `"90s"`, `"5m"`, `"24h"`, `"30d"`, `"2w"`, `"500ms"` or whole seconds.
mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::show_duration(*d))
    }

    pub(super) fn text(secs: u64) -> String {
        match secs {
            s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
            s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                de::Error::custom(format!("bad duration {t:?} (use e.g. 90s, 5m, 24h, 30d)"))
            }),
        }
    }

    pub(super) fn parse(t: &str) -> Option<Duration> {
        let t = t.trim();
        let split = t.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().ok()?;
        let nanos_per: u64 = match unit.trim() {
            "ns" => 1,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 7 * 86_400_000_000_000,
            _ => return None,
        };
        let nanos = u128::from(n) * u128::from(nanos_per);
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(duration::parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(
            duration::parse("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(duration::parse("5 parsecs"), None);
    }

    #[test]
    fn loads_toml_and_json_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("p.toml");
        std::fs::write(
            &toml_path,
            "[[policy]]\nname = \"failed_logins\"\nrequire = [\"auth_failure\"]\noutcome = \"failure\"\nthreshold = 5\nwindow = \"5m\"\nretention = 2592000\n",
        )
        .unwrap();
        let p = Policy::load(&toml_path).unwrap();
        assert_eq!(p[0].window, Duration::from_secs(300));
        assert_eq!(p[0].retention, Duration::from_secs(2_592_000));
        assert_eq!(p[0].outcome, Some(Outcome::Failure));

        let json_path = dir.path().join("p.json");
        std::fs::write(
            &json_path,
            serde_json::to_string(&Policy::defaults()).unwrap(),
        )
        .unwrap();
        assert_eq!(Policy::load(&json_path).unwrap(), Policy::defaults());

        std::fs::write(&toml_path, "[[policy]]\nname = \"x\"\nthreshhold = 5\n").unwrap();
        let e = Policy::load(&toml_path).unwrap_err().to_string();
        assert!(e.contains("threshhold"), "{e}");
        std::fs::write(&toml_path, "[[policy]]\nname = \"x\"\nwindow = \"soon\"\n").unwrap();
        assert!(Policy::load(&toml_path).is_err());
    }
}
