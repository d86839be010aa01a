//! Redaction of secrets: a field whose name matches the redaction list
//! never reaches the trail in clear.
//!
//! A name matches when it contains one of the list's entries, ignoring
//! ASCII case, anywhere (`password`, `user.password`, `new_password`,
//! `http.headers.Authorization`). Matching by substring errs on the safe
//! side: `tokenizer` is redacted too. The value is replaced by
//! [`REDACTED`], or, with an HMAC key, by `hmac-sha256:<hex>` of the value
//! (see [`redaction_hmac`]), so an auditor with the key can check whether
//! a known value appeared, and equal values correlate across records. The
//! record lists the names it redacted in `details["audit.redacted"]`.
//!
//! This covers every field that goes to `details`: event fields, each key
//! of a `valuable` `audit.details` map, and fields of any type. The
//! `audit.*` convention slots (who, what, where) are not redacted: they are
//! what an audit record is for.
//!
//! A leaf of `record`: imports only `record::encode`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::record::encode;

/// The names redacted unless the builder is given others.
///
/// ```
/// assert!(tracing_audit::record::DEFAULT_REDACTED_NAMES.contains(&"authorization"));
/// ```
pub const DEFAULT_REDACTED_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "api_key",
    "private_key",
];

/// What a redacted value is replaced with (without an HMAC key).
///
/// ```
/// assert_eq!(tracing_audit::record::REDACTED, "[redacted]");
/// ```
pub const REDACTED: &str = "[redacted]";

/// Prefixed to every value before its HMAC, so that a redaction can never
/// be taken for the chain's own HMAC of a line (the chain uses the same
/// key): a field value shaped like a line must not get its hash computed.
const DOMAIN: &[u8] = b"tracing-audit redaction v1\0";

/// The text a value is redacted to under `key` (with
/// [`redact_with_hmac`](crate::layer::AuditLayerBuilder::redact_with_hmac)):
/// what an auditor computes to check whether a known value appeared. A
/// string is taken as its UTF-8 bytes; a number, bool or structured value
/// as its JSON text.
///
/// ```
/// use tracing_audit::record::redaction_hmac;
/// let a = redaction_hmac(b"the chain key", b"hunter2");
/// assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64);
/// assert_eq!(a, redaction_hmac(b"the chain key", b"hunter2"));
/// assert_ne!(a, redaction_hmac(b"another key", b"hunter2"));
/// ```
pub fn redaction_hmac(key: &[u8], value: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    hmac_text(mac, value)
}

fn hmac_text(mut mac: Hmac<Sha256>, value: &[u8]) -> String {
    mac.update(DOMAIN);
    mac.update(value);
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    let mut hex = [0u8; 64];
    encode::hex_into(&mut hex, &digest);
    let mut out = String::with_capacity(12 + 64);
    out.push_str("hmac-sha256:");
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    out
}

/// The redaction list, ready for matching, and the HMAC key if any.
#[derive(Clone)]
pub(crate) struct Redactor {
    /// Entries, lower case.
    needles: Vec<Box<[u8]>>,
    /// For each (lower-case) byte, the first 64 entries that start with it,
    /// as a bit set: most names are passed over after a table lookup per
    /// byte, comparing no entry.
    by_first: Box<[u64; 256]>,
    /// Entries past the 64th (checked at every position).
    extra: Vec<usize>,
    /// The shortest entry: a shorter name matches nothing.
    min_len: usize,
    mac: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Redactor")
            .field("entries", &self.needles.len())
            .field("hmac", &self.mac.is_some())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `names` (`None` if there are none), replacing values
    /// with their HMAC under `mac` when given.
    pub(crate) fn new(names: &[String], mac: Option<Hmac<Sha256>>) -> Option<Self> {
        let needles: Vec<Box<[u8]>> = names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        if needles.is_empty() {
            return None;
        }
        let mut by_first = Box::new([0u64; 256]);
        let mut extra = Vec::new();
        for (i, n) in needles.iter().enumerate() {
            if i < 64 {
                by_first[n[0] as usize] |= 1 << i;
            } else {
                extra.push(i);
            }
        }
        let min_len = needles.iter().map(|n| n.len()).min().unwrap_or(1);
        Some(Redactor {
            needles,
            by_first,
            extra,
            min_len,
            mac,
        })
    }

    /// Whether `name` contains an entry, ignoring ASCII case.
    #[inline]
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name = name.as_bytes();
        if name.len() < self.min_len {
            return false;
        }
        let at = |i: usize, j: usize| {
            let n = &self.needles[j];
            name.get(i..i + n.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(n))
        };
        for (i, b) in name[..=name.len() - self.min_len].iter().enumerate() {
            let mut set = self.by_first[b.to_ascii_lowercase() as usize];
            while set != 0 {
                let j = set.trailing_zeros() as usize;
                set &= set - 1;
                if at(i, j) {
                    return true;
                }
            }
            if self.extra.iter().any(|&j| at(i, j)) {
                return true;
            }
        }
        false
    }

    /// Writes what replaces `raw` (the value's text), as a JSON string.
    pub(crate) fn write_value(&self, out: &mut Vec<u8>, raw: &[u8]) {
        match &self.mac {
            None => encode::write_plain_str(out, REDACTED),
            Some(mac) => encode::write_plain_str(out, &hmac_text(mac.clone(), raw)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Redactor {
        let names: Vec<String> = DEFAULT_REDACTED_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect();
        Redactor::new(&names, None).unwrap()
    }

    #[test]
    fn names_match_anywhere_ignoring_case() {
        let r = defaults();
        for name in [
            "password",
            "user.password",
            "new_password",
            "http.headers.Authorization",
            "COOKIE",
            "db.api_key",
            "tls.private_key",
            "refresh_token",
            "passwd",
            "client_secret",
        ] {
            assert!(r.matches(name), "{name}");
        }
        for name in [
            "user_id", "amount", "i", "pad", "api", "key", "pass", "author",
        ] {
            assert!(!r.matches(name), "{name}");
        }
    }

    #[test]
    fn more_than_64_entries_all_match() {
        let names: Vec<String> = (0..100).map(|i| format!("secret{i:03}")).collect();
        let r = Redactor::new(&names, None).unwrap();
        for i in [0, 63, 64, 99] {
            assert!(r.matches(&format!("x.SECRET{i:03}.y")), "{i}");
        }
        assert!(!r.matches("secret100"));
    }

    #[test]
    fn an_empty_list_redacts_nothing() {
        assert!(Redactor::new(&[], None).is_none());
        assert!(Redactor::new(&[String::new()], None).is_none());
    }

    #[test]
    fn values_become_the_marker_or_their_domain_separated_hmac() {
        let mut out = Vec::new();
        defaults().write_value(&mut out, b"hunter2");
        assert_eq!(out, br#""[redacted]""#);
        let mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        let r = Redactor::new(&["password".into()], Some(mac.clone())).unwrap();
        out.clear();
        r.write_value(&mut out, b"hunter2");
        let want = redaction_hmac(b"k", b"hunter2");
        assert_eq!(out, format!("\"{want}\"").as_bytes());
        // Not the plain HMAC of the value: a chain hash cannot be obtained
        // through a redaction.
        let mut plain = mac;
        plain.update(b"hunter2");
        let plain: [u8; 32] = plain.finalize().into_bytes().into();
        let mut hex = [0u8; 64];
        encode::hex_into(&mut hex, &plain);
        assert!(!want.ends_with(std::str::from_utf8(&hex).unwrap()));
    }
}
