//! The byte layout of a sealed line, in one place: what the chain writes
//! and checks, and where a line's key fields sit so that sinks read them
//! without parsing JSON.
//!
//! ```text
//! {"schema":1,"audit_id":"<36>","seq":<n>  BODY  ,"prev_hash":"<64>","hash":"<64>"}\n
//! └────────── HEAD ─────────┘    └ SEQ_KEY      └─── PREV_KEY ──┘  └── HASH_KEY ─┘ END
//! ```
//!
//! The body (`,"timestamp":…` to the end of `"source":{…}`) is encoded by
//! `record::encode_body`, which notes where each key value starts and ends
//! ([`KeyFields`]); the chain adds the head, so a [`SealedLine`] can hand a
//! sink `actor` or `event_type` by slicing.
//!
//! A leaf of `record`: imports only `record::fields`.

use std::borrow::Cow;

use crate::record::fields::{Outcome, Risk};

/// Every line starts with these bytes (the schema version is
/// [`crate::record::SCHEMA_VERSION`]; a test keeps the two in step).
pub(crate) const HEAD: &[u8] = b"{\"schema\":1,\"audit_id\":\"";
/// Bytes of a hyphenated UUID.
pub(crate) const ID_LEN: usize = 36;
/// Between the id and the sequence number.
pub(crate) const SEQ_KEY: &[u8] = b"\",\"seq\":";
/// Before the previous record's hash.
pub(crate) const PREV_KEY: &[u8] = b",\"prev_hash\":\"";
/// Before this record's hash.
pub(crate) const HASH_KEY: &[u8] = b"\"hash\":\"";
/// After the hash.
pub(crate) const END: &[u8] = b"\"}";
/// Bytes of `"hash":"` + 64 hex + `"}` at the end of a line.
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + END.len();
/// Bytes of `"prev_hash":"` + 64 hex + `",` just before the suffix.
pub(crate) const PREV_LEN: usize = PREV_KEY.len() - 1 + 64 + 2;

/// A key field of the body whose value a sink may want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Timestamp,
    EventType,
    Actor,
    Resource,
    Action,
    Session,
    Ip,
}

const KEYS: usize = 7;

/// Where the key values of one body sit (byte ranges of each JSON string,
/// quotes included, relative to the body's start; `None` for `null`), with
/// the resolved risk and outcome. Small and `Copy`: it travels beside the
/// body through the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyFields {
    pub(crate) risk: Risk,
    pub(crate) outcome: Outcome,
    at: [Option<(u32, u32)>; KEYS],
}

impl KeyFields {
    /// Nothing located yet.
    pub(crate) fn new(risk: Risk, outcome: Outcome) -> Self {
        KeyFields {
            risk,
            outcome,
            at: [None; KEYS],
        }
    }

    /// Notes that `key`'s value occupies `start..end` of the body (nothing
    /// for a `null` value, or a body past 4 GiB, which the value limit
    /// rules out).
    pub(crate) fn locate(&mut self, key: Key, body: &[u8], start: usize, end: usize) {
        if body.get(start) == Some(&b'"') {
            if let (Ok(s), Ok(e)) = (u32::try_from(start), u32::try_from(end)) {
                self.at[key as usize] = Some((s, e));
            }
        }
    }
}

/// One sealed line as a sink receives it: the bytes (without `\n`), the
/// sequence number, and its key fields already located.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedLine<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) seq: u64,
    /// Where the body starts in `bytes`.
    pub(crate) body_at: usize,
    pub(crate) keys: KeyFields,
}

impl<'a> SealedLine<'a> {
    /// The record's `audit_id`.
    pub(crate) fn audit_id(&self) -> &'a str {
        self.bytes
            .get(HEAD.len()..HEAD.len() + ID_LEN)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The value of `key`, unescaped (borrowed unless it held an escape).
    pub(crate) fn get(&self, key: Key) -> Option<Cow<'a, str>> {
        let (s, e) = self.keys.at[key as usize]?;
        let token = self
            .bytes
            .get(self.body_at + s as usize..self.body_at + e as usize)?;
        let inner = token.get(1..token.len().checked_sub(1)?)?;
        if !inner.contains(&b'\\') {
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
        serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
    }
}

/// A [`SealedLine`] that owns its bytes (queued to a sink's thread).
#[derive(Debug, Clone)]
pub(crate) struct OwnedLine {
    pub(crate) bytes: Vec<u8>,
    pub(crate) seq: u64,
    pub(crate) body_at: usize,
    pub(crate) keys: KeyFields,
}

impl OwnedLine {
    /// Copies `line`.
    pub(crate) fn new(line: &SealedLine<'_>) -> Self {
        OwnedLine {
            bytes: line.bytes.to_vec(),
            seq: line.seq,
            body_at: line.body_at,
            keys: line.keys,
        }
    }

    /// Borrows it back.
    pub(crate) fn as_line(&self) -> SealedLine<'_> {
        SealedLine {
            bytes: &self.bytes,
            seq: self.seq,
            body_at: self.body_at,
            keys: self.keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_names_the_schema_version() {
        let head = format!(
            "{{\"schema\":{},\"audit_id\":\"",
            crate::record::SCHEMA_VERSION
        );
        assert_eq!(HEAD, head.as_bytes());
    }
}
