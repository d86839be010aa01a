//! The byte layout of a sealed line, in one place: what the chain writes
//! and checks, and where a line's key fields sit so that sinks read them
//! without parsing JSON.
//!
//! ```text
//! {"schema":3,"audit_id":"<36>"  BODY  ,"seq":<n>,"chain_id":"<36>","prev_hash":"<64>","hash":"<64>"}\n
//! └────────── HEAD ─────────┘    │      └ SEQ_KEY └ CHAIN_KEY ──┘   └─── PREV_KEY ──┘  └── HASH_KEY ─┘ END
//!                             ID_END                            CHAIN_END
//! ```
//!
//! Schema 3 puts `seq` and `chain_id` after the body, so everything before
//! them (head, id, body: nearly the whole line) is known when the record is
//! queued, and the emitting thread hashes it (a SHA-256 midstate,
//! [`crate::record::chain::Midstate`]); the worker, which alone knows the
//! `seq`, hashes only the last few blocks. The hash is still SHA-256 (or
//! HMAC-SHA-256) of the line's bytes up to the previous hash, as before.
//!
//! Schema 2 lines put them before the body:
//! `{"schema":2,"audit_id":"<36>","seq":<n>,"chain_id":"<36>"  BODY  ,"prev_hash":…`
//! ([`HEAD_V2`], [`SEQ_KEY_V2`]), and schema 1 lines, written before chain
//! identity, the same without `chain_id` ([`HEAD_V1`]). Both are still read
//! and verified, and a chain continues from them.
//!
//! The body (`,"timestamp":…` to the end of `"source":{…}`) is encoded by
//! `record::encode_body`, which notes where each key value starts and ends
//! ([`KeyFields`]); the chain adds the head, so a [`SealedLine`] can hand a
//! sink `actor` or `event_type` by slicing.
//!
//! A leaf of `record`: imports only `record::fields`.

use std::borrow::Cow;

use crate::record::fields::{Outcome, Risk};

/// Every line written now starts with these bytes (the schema version is
/// [`crate::record::SCHEMA_VERSION`]; a test keeps the two in step).
pub(crate) const HEAD: &[u8] = b"{\"schema\":3,\"audit_id\":\"";
/// The start of a schema 2 line (`seq` and `chain_id` before the body);
/// same length as [`HEAD`].
pub(crate) const HEAD_V2: &[u8] = b"{\"schema\":2,\"audit_id\":\"";
/// The start of a schema 1 line (no `chain_id`); same length as [`HEAD`].
pub(crate) const HEAD_V1: &[u8] = b"{\"schema\":1,\"audit_id\":\"";
/// After the id of a schema 3 line: the body follows.
pub(crate) const ID_END: &[u8] = b"\"";
/// Before the sequence number of a schema 3 line (after the body).
pub(crate) const SEQ_KEY: &[u8] = b",\"seq\":";
/// After the sequence number: the chain id follows.
pub(crate) const CHAIN_KEY: &[u8] = b",\"chain_id\":\"";
/// After the chain id.
pub(crate) const CHAIN_END: &[u8] = b"\"";
/// Bytes of a hyphenated UUID.
pub(crate) const ID_LEN: usize = 36;
/// Between the id and the sequence number of a schema 1 or 2 line.
pub(crate) const SEQ_KEY_V2: &[u8] = b"\",\"seq\":";
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
/// Most bytes sealing adds to a body: everything before it (with a 20-digit
/// `seq`), everything after it, and the newline.
pub(crate) const SEAL_MAX_EXTRA: usize = HEAD.len()
    + ID_LEN
    + ID_END.len()
    + SEQ_KEY.len()
    + 20
    + CHAIN_KEY.len()
    + ID_LEN
    + CHAIN_END.len()
    + PREV_KEY.len()
    + 64
    + 2
    + HASH_SUFFIX_LEN
    + 1;
/// Where the body starts in a schema 3 line.
pub(crate) const BODY_AT: usize = HEAD.len() + ID_LEN + ID_END.len();

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

/// Where the key values of one body start (the offset of each JSON
/// string's opening quote, relative to the body's start; [`NULL`] for a
/// `null` value), with the resolved risk and outcome. 32 bytes and `Copy`:
/// it travels beside the body through the queue, so it is kept small (the
/// end of a value is found when it is read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyFields {
    pub(crate) risk: Risk,
    pub(crate) outcome: Outcome,
    starts: [u32; KEYS],
}

/// A key whose value is `null` (or not located).
const NULL: u32 = u32::MAX;

impl KeyFields {
    /// Nothing located yet.
    pub(crate) fn new(risk: Risk, outcome: Outcome) -> Self {
        KeyFields {
            risk,
            outcome,
            starts: [NULL; KEYS],
        }
    }

    /// Notes that `key`'s value starts at `start` of the body, if it is a
    /// string there (nothing for `null`, or a body past 4 GiB, which the
    /// value limit rules out).
    #[inline]
    pub(crate) fn locate(&mut self, key: Key, body: &[u8], start: usize) {
        if body.get(start) == Some(&b'"') {
            self.starts[key as usize] = u32::try_from(start).unwrap_or(NULL);
        }
    }
}

/// The JSON string token starting at `bytes[0]` (a `"`), quotes included.
fn string_token(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(&bytes[..=i]),
            _ => i += 1,
        }
    }
    None
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

    /// The record's `chain_id`: the 36 bytes before the closing quote that
    /// ends it, just before `,"prev_hash"` (a schema 3 line, as every line
    /// sealed now is).
    pub(crate) fn chain_id(&self) -> Option<&'a str> {
        let end = self
            .bytes
            .len()
            .checked_sub(HASH_SUFFIX_LEN + PREV_LEN + 1 + CHAIN_END.len())?;
        let start = end.checked_sub(ID_LEN)?;
        let key_at = start.checked_sub(CHAIN_KEY.len())?;
        if !self.bytes.starts_with(HEAD) || self.bytes.get(key_at..start)? != CHAIN_KEY {
            return None;
        }
        std::str::from_utf8(self.bytes.get(start..end)?).ok()
    }

    /// The value of `key`, unescaped (borrowed unless it held an escape).
    pub(crate) fn get(&self, key: Key) -> Option<Cow<'a, str>> {
        let start = self.keys.starts[key as usize];
        if start == NULL {
            return None;
        }
        let from = self.bytes.get(self.body_at + start as usize..)?;
        let token = string_token(from)?;
        let inner = &token[1..token.len() - 1];
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
    fn string_tokens_end_at_the_unescaped_quote() {
        assert_eq!(string_token(br#""a\"b\\"x"#), Some(&br#""a\"b\\""#[..]));
        assert_eq!(string_token(br#""abc"#), None);
        assert_eq!(std::mem::size_of::<KeyFields>(), 32);
    }

    #[test]
    fn head_names_the_schema_version() {
        let head = format!(
            "{{\"schema\":{},\"audit_id\":\"",
            crate::record::SCHEMA_VERSION
        );
        assert_eq!(HEAD, head.as_bytes());
    }
}
