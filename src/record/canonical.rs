//! The verifier's fast path: a strict check of a line in exactly the form
//! this crate writes (schema 3, or 2 as it wrote before; keys in the
//! written order, no whitespace),
//! without serde.
//!
//! It owns one promise: it accepts a *subset* of what [`CheckedRecord`]'s
//! serde parse accepts. Anything it does not recognise (another key order,
//! whitespace, schema 1, an escaped key or `event_type`, a lone surrogate
//! escape, a long or exotic number, nesting deeper than
//! [`MAX_DEPTH`], a timestamp in another RFC 3339 spelling) gets `None`,
//! and the caller runs the serde parse, which decides and explains. So the
//! verdict on a line never depends on which path read it; only the time
//! does (a written line is checked in one pass instead of a generic
//! deserialisation). A test mutates written lines byte by byte and holds
//! the subset promise.
//!
//! A leaf of `record`: uses only the record's own types.

use std::borrow::Cow;

use super::chain::Link;
use super::strict::{CheckedObject, CheckedStr};
use super::CheckedRecord;
use crate::record::fields::{Outcome, Risk};

/// Deeper `details` values go to the serde parse.
const MAX_DEPTH: usize = 32;
/// Objects in `details` with more keys go to the serde parse.
const MAX_KEYS: usize = 64;
/// Keys of an object compared from the stack; more are kept on the heap.
const NEAR_KEYS: usize = 8;

/// Checks `line` (without its newline) as a record in the written form.
#[cfg(test)]
pub(super) fn check(line: &[u8]) -> Option<CheckedRecord<'_>> {
    check_up_to(line, None)
}

/// The chain fields of a schema 3 line, already read and found in the
/// written form by [`read_link`](super::chain::read_link): where they
/// start, the sequence number and the chain id.
struct Tail<'a> {
    at: usize,
    seq: u64,
    chain_id: &'a str,
}

/// [`check`], for a line whose chain fields
/// [`read_link`](super::chain::read_link) read as `link`:
/// when it found them in the written form, the body is checked as in
/// [`check`] and must end exactly where they start, and they are not read
/// again (about a tenth of the pass: two 64-digit hashes, a UUID and a
/// number); otherwise the whole line is checked.
pub(super) fn check_linked<'a>(line: &'a [u8], link: &Link<'a>) -> Option<CheckedRecord<'a>> {
    let tail = link.tail_at.zip(link.chain_id).map(|(at, chain_id)| Tail {
        at,
        seq: link.seq,
        chain_id,
    });
    check_up_to(line, tail)
}

/// The check itself; with `tail`, the chain fields are taken from it.
///
/// Each value is read after its key, in the line's order: the fields of a
/// struct expression are evaluated in the order they are written, which
/// here is the order of the line.
fn check_up_to<'a>(line: &'a [u8], tail: Option<Tail<'a>>) -> Option<CheckedRecord<'a>> {
    let mut c = Cursor {
        s: utf8(line)?,
        i: 0,
    };
    // Schema 3 has `seq` and `chain_id` after the body, schema 2 before:
    // read there and filled in after the body.
    let v2 = !line.starts_with(b"{\"schema\":3,");
    c.lit(if v2 {
        b"{\"schema\":2"
    } else {
        b"{\"schema\":3"
    })?;
    let mut record = CheckedRecord {
        schema: if v2 { 2 } else { 3 },
        _audit_id: c.str_at(b",\"audit_id\":")?,
        _seq: if v2 { c.at(b",\"seq\":")?.u64()? } else { 0 },
        chain_id: if v2 {
            Some(c.chain_id_at(b",\"chain_id\":")?)
        } else {
            None
        },
        _timestamp: c.at(b",\"timestamp\":")?.timestamp()?,
        event_type: c.opt_plain_at(b",\"event_type\":")?,
        _actor: c.opt_at(b",\"actor\":")?,
        _resource: c.opt_at(b",\"resource\":")?,
        _action: c.opt_at(b",\"action\":")?,
        _outcome: match c.at(b",\"outcome\":")?.plain_string()? {
            "success" => Outcome::Success,
            "failure" => Outcome::Failure,
            "unknown" => Outcome::Unknown,
            _ => return None,
        },
        _risk_level: match c.at(b",\"risk_level\":")?.plain_string()? {
            "low" => Risk::Low,
            "medium" => Risk::Medium,
            "high" => Risk::High,
            "critical" => Risk::Critical,
            _ => return None,
        },
        _session_id: c.opt_at(b",\"session_id\":")?,
        _ip_address: c.opt_at(b",\"ip_address\":")?,
        _message: c.opt_at(b",\"message\":")?,
        _details: c.object_at(b",\"details\":")?,
        service: c.opt_plain_at(b",\"service\":")?,
        _version: c.opt_at(b",\"version\":")?,
        _environment: c.opt_at(b",\"environment\":")?,
        _host: c.opt_at(b",\"host\":")?,
        _source: super::CheckedSource {
            _target: c.str_at(b",\"source\":{\"target\":")?,
            _level: c.str_at(b",\"level\":")?,
            _span: c.opt_at(b",\"span\":")?,
        },
        _prev_hash: CheckedStr,
        _hash: CheckedStr,
    };
    c.lit(b"}")?;
    if let Some(tail) = tail.filter(|_| !v2) {
        // `read_link` checked every byte from here to the end.
        if c.i != tail.at {
            return None;
        }
        record._seq = tail.seq;
        record.chain_id = Some(Cow::Borrowed(tail.chain_id));
        return Some(record);
    }
    if !v2 {
        record._seq = c.at(b",\"seq\":")?.u64()?;
        record.chain_id = Some(c.chain_id_at(b",\"chain_id\":")?);
    }
    record._prev_hash = c.str_at(b",\"prev_hash\":")?;
    record._hash = c.str_at(b",\"hash\":")?;
    c.lit(b"}")?;
    (c.i == line.len()).then_some(record)
}

/// `line` as text if it is UTF-8. A line of ASCII alone (most are: the
/// crate escapes nothing above it, but writes it raw) is told by the high
/// bits of 64 bytes at a time where the target has SSE2, about a tenth of
/// what `std::str::from_utf8` spends on it (callgrind: 695 instructions of
/// the checking thread's 5 338 a record); any other goes to `from_utf8`.
#[inline]
pub(crate) fn utf8(line: &[u8]) -> Option<&str> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
        let mut high = 0i32;
        let mut blocks = line.chunks_exact(64);
        for b in &mut blocks {
            // SAFETY: SSE2 is enabled at compile time (the cfg); the four
            // unaligned loads read the 64 bytes of `b`.
            high |= unsafe {
                let p = b.as_ptr();
                let x = _mm_or_si128(
                    _mm_or_si128(_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast())),
                    _mm_or_si128(
                        _mm_loadu_si128(p.add(32).cast()),
                        _mm_loadu_si128(p.add(48).cast()),
                    ),
                );
                _mm_movemask_epi8(x)
            };
        }
        if high == 0 && blocks.remainder().is_ascii() {
            // SAFETY: every byte is below 0x80, so the bytes are ASCII and
            // therefore UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(line) });
        }
    }
    std::str::from_utf8(line).ok()
}

/// The index of the first byte at or after `i` that ends a run of plain
/// string bytes: a quote, a backslash or a control byte. Sixteen bytes at
/// a time where the target has SSE2 (every `x86_64`): most strings in a
/// record are short, where a `memchr` call costs more than its scan.
#[inline(always)]
fn plain_run_end(b: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk) {
        let mask = stops16(chunk);
        if mask != 0 {
            return Some(i + mask.trailing_zeros() as usize);
        }
        i += 16;
    }
    let rest = b.get(i..)?;
    let n = rest
        .iter()
        .position(|&x| x == b'"' || x == b'\\' || x < 0x20)?;
    Some(i + n)
}

/// A bit for each byte of `chunk` that ends a run of plain string bytes (a
/// quote, a backslash or a control byte).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn stops16(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: the intrinsics need SSE2, which this build targets (it is
    // part of every `x86_64`); the load reads the 16 bytes of `chunk`,
    // unaligned.
    unsafe {
        let x = _mm_loadu_si128(chunk.as_ptr().cast());
        let below_space = _mm_set1_epi8(0x1f);
        let stop = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8)),
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8)),
            ),
            // Unsigned x <= 0x1f: max(x, 0x1f) == 0x1f.
            _mm_cmpeq_epi8(_mm_max_epu8(x, below_space), below_space),
        );
        _mm_movemask_epi8(stop) as u32
    }
}

/// A position in a line already known to be UTF-8.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    /// Past `key`, ready for its value.
    fn at<const N: usize>(&mut self, key: &[u8; N]) -> Option<&mut Self> {
        self.lit(key)?;
        Some(self)
    }

    /// `key`, then any string.
    fn str_at<const N: usize>(&mut self, key: &[u8; N]) -> Option<CheckedStr> {
        self.at(key)?.string()?;
        Some(CheckedStr)
    }

    /// `key`, then `null` or any string.
    fn opt_at<const N: usize>(&mut self, key: &[u8; N]) -> Option<Option<CheckedStr>> {
        Some(self.at(key)?.opt_string()?.map(|_| CheckedStr))
    }

    /// `key`, then `null` or a string without escapes.
    fn opt_plain_at<const N: usize>(&mut self, key: &[u8; N]) -> Option<Option<Cow<'a, str>>> {
        Some(self.at(key)?.opt_plain_string()?.map(Cow::Borrowed))
    }

    /// `key`, then a chain id: a UUID.
    fn chain_id_at<const N: usize>(&mut self, key: &[u8; N]) -> Option<Cow<'a, str>> {
        let id = self.at(key)?.plain_string()?;
        // The written spelling only (lower-case, hyphenated): a subset of
        // what `uuid` parses for the serde path.
        super::chain::is_uuid(id.as_bytes()).then_some(Cow::Borrowed(id))
    }

    /// `key`, then an object without duplicate keys at any depth.
    fn object_at<const N: usize>(&mut self, key: &[u8; N]) -> Option<CheckedObject> {
        if self.at(key)?.peek()? != b'{' {
            return None;
        }
        self.value(0)?;
        Some(CheckedObject)
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    /// Exactly these bytes: a comparison of a known length, which the
    /// compiler does in a few word loads instead of a `memcmp` call.
    fn lit<const N: usize>(&mut self, want: &[u8; N]) -> Option<()> {
        let end = self.i.checked_add(N)?;
        let got: &[u8; N] = self.s.as_bytes().get(self.i..end)?.try_into().ok()?;
        if got == want {
            self.i = end;
            Some(())
        } else {
            None
        }
    }

    /// A JSON string: its raw text between the quotes (escapes as written)
    /// and whether it had any. Control characters and lone surrogate
    /// escapes are left to the serde parse (which refuses them).
    ///
    /// Inline for a string that ends within the 16 bytes after its quote
    /// with no escape (most values and keys of a record): one SSE2 test.
    /// The rest is a call ([`Cursor::long_string`]).
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a str, bool)> {
        let b = self.s.as_bytes();
        if b.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if let Some(chunk) = b.get(start..).and_then(<[u8]>::first_chunk) {
            let mask = stops16(chunk);
            let j = start + mask.trailing_zeros() as usize;
            if mask != 0 && b[j] == b'"' {
                self.i = j + 1;
                // SAFETY: `start` is just past a quote and `j` is a quote,
                // both ASCII, so both are char boundaries, and `j` is
                // within the text (`chunk` ends inside it).
                return Some((unsafe { self.s.get_unchecked(start..j) }, false));
            }
        }
        self.long_string(start)
    }

    /// [`Cursor::string`] from `start`, the byte after the opening quote.
    #[inline(never)]
    fn long_string(&mut self, start: usize) -> Option<(&'a str, bool)> {
        let b = self.s.as_bytes();
        let mut i = start;
        let mut escaped = false;
        loop {
            // The next quote, backslash or control byte (refused).
            let j = plain_run_end(b, i)?;
            match b[j] {
                b'"' => {
                    i = j;
                    break;
                }
                b'\\' => {}
                _ => return None,
            }
            escaped = true;
            match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i = j + 2,
                b'u' => {
                    let hex = std::str::from_utf8(b.get(j + 2..j + 6)?).ok()?;
                    if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                        return None;
                    }
                    let unit = u16::from_str_radix(hex, 16).ok()?;
                    if (0xD800..=0xDFFF).contains(&unit) {
                        return None;
                    }
                    i = j + 6;
                }
                _ => return None,
            }
        }
        self.i = i + 1;
        Some((&self.s[start..i], escaped))
    }

    /// A string without escapes (a value the verifier reads).
    fn plain_string(&mut self) -> Option<&'a str> {
        match self.string()? {
            (s, false) => Some(s),
            (_, true) => None,
        }
    }

    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.lit(b"null")?;
            Some(true)
        } else {
            Some(false)
        }
    }

    fn opt_string(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        Some(Some(self.string()?.0))
    }

    fn opt_plain_string(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        Some(Some(self.plain_string()?))
    }

    /// Digits without a leading zero, at most 19 (always within `u64`).
    fn digits(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        let start = self.i;
        let n = b[start..].iter().take_while(|d| d.is_ascii_digit()).count();
        if n == 0 || n > 19 || (n > 1 && b[start] == b'0') {
            return None;
        }
        self.i += n;
        Some(&self.s[start..start + n])
    }

    fn u64(&mut self) -> Option<u64> {
        // At most 19 digits: below `u64::MAX`.
        Some(
            self.digits()?
                .bytes()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        )
    }

    /// A JSON number whose value is finite and exact enough that any
    /// reader agrees on it: an integer of at most 19 digits, or a
    /// fraction/exponent form with at most 17 significant digits and an
    /// exponent within ±300.
    fn number(&mut self) -> Option<()> {
        let b = self.s.as_bytes();
        if self.peek()? == b'-' {
            self.i += 1;
        }
        let int = self.digits()?.len();
        let mut digits = int;
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let n = b[self.i..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count();
            if n == 0 {
                return None;
            }
            self.i += n;
            digits += n;
            if digits > 17 {
                return None;
            }
        }
        if matches!(b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let n = b[self.i..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count();
            if n == 0 || n > 3 || digits > 17 {
                return None;
            }
            let exp: u32 = self.s[self.i..self.i + n].parse().ok()?;
            if exp > 300 {
                return None;
            }
            self.i += n;
        }
        Some(())
    }

    /// Any JSON value, with no duplicate key in any object.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.lit(b"null"),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                // The keys so far: the first few on the stack (most
                // objects have no more), the rest on the heap.
                let mut near: [&str; NEAR_KEYS] = [""; NEAR_KEYS];
                let mut far: Vec<&str> = Vec::new();
                let mut n = 0;
                loop {
                    // An escaped key could equal another spelled plainly:
                    // only plain keys are compared here.
                    let key = self.plain_string()?;
                    if n == MAX_KEYS
                        || near[..n.min(NEAR_KEYS)].contains(&key)
                        || far.contains(&key)
                    {
                        return None;
                    }
                    match near.get_mut(n) {
                        Some(k) => *k = key,
                        None => far.push(key),
                    }
                    n += 1;
                    self.lit(b":")?;
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// `"YYYY-MM-DDTHH:MM:SS.ffffffZ"`, a real date and time.
    fn timestamp(&mut self) -> Option<chrono::DateTime<chrono::Utc>> {
        let t = self.plain_string()?.as_bytes();
        if t.len() != 27
            || t[4] != b'-'
            || t[7] != b'-'
            || t[10] != b'T'
            || t[13] != b':'
            || t[16] != b':'
            || t[19] != b'.'
            || t[26] != b'Z'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            t[r].iter().try_fold(0u32, |acc, d| {
                d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
            })
        };
        let year = i32::try_from(num(0..4)?).ok()?;
        if year < 1970 {
            return None;
        }
        let date = chrono::NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)?;
        let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if s > 59 {
            return None;
        }
        let time = date.and_hms_micro_opt(h, m, s, num(20..26)?)?;
        Some(time.and_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the crate writes them: plain, with escapes, with nested
    /// and numeric details, with nulls.
    const LINES: &[&str] = &[
        r#"{"schema":2,"audit_id":"01a244e9-14da-749b-b08a-98019dd1a1a7","seq":0,"chain_id":"01a244e9-14d9-7196-8935-7bbe2e88426a","timestamp":"2026-12-05T06:34:15.642519Z","event_type":"audit_started","actor":"tracing-audit","resource":null,"action":null,"outcome":"unknown","risk_level":"low","session_id":null,"ip_address":null,"message":"audit trail started","details":{"chain":"sha256","pid":11779,"crate_version":"0.1.0","resumed_after_seq":null,"clean_stop":null,"opened_file":"audit.2026-12-05.jsonl","retention":null},"service":"bench","version":null,"environment":null,"host":"vm","source":{"target":"tracing_audit","level":"INFO","span":null},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"6e0f9d4650180076725e26e763edc8b6f46c800b399fbd337db7c1939bb0617e"}"#,
        r#"{"schema":2,"audit_id":"01a244e9-14da-749b-b08a-98019dd1a1a8","seq":12345678901,"chain_id":"01a244e9-14d9-7196-8935-7bbe2e88426a","timestamp":"2024-02-29T23:59:59.000001Z","event_type":"data_export","actor":"al\"ice\u00e9","resource":"db/ü","action":"read","outcome":"failure","risk_level":"critical","session_id":"s-1","ip_address":"::1","message":"line\nbreak \\ tab\t","details":{"n":-12,"f":1.5e-3,"g":0.25,"a":[1,"x",null,true,false,{"k":{"k":[]}}],"o":{},"e":[],"bad":{"value":"x","error":"not a number"}},"service":"svc","version":"1.2.3","environment":"prod","host":"h","source":{"target":"app::db","level":"WARN","span":"req"},"prev_hash":"6e0f9d4650180076725e26e763edc8b6f46c800b399fbd337db7c1939bb0617e","hash":"0e0f9d4650180076725e26e763edc8b6f46c800b399fbd337db7c1939bb0617e"}"#,
    ];

    /// Schema 3 lines as the crate writes them (the chain fields after the
    /// body): a plain one and one with escapes, nulls and a long `seq`.
    const LINES_V3: &[&str] = &[
        r#"{"schema":3,"audit_id":"01a24ccf-640b-7139-b4f3-29ef9b80de1b","timestamp":"2026-12-06T19:23:09.707787Z","event_type":"data_access","actor":"alice","resource":"invoice/2026-0042","action":"read","outcome":"success","risk_level":"low","session_id":"sess-872213e7","ip_address":"198.51.100.7","message":"invoice viewed","details":{"rows":12},"service":"billing-api","version":"0.1.0","environment":"demo","host":"vm","source":{"target":"quickstart","level":"INFO","span":"request"},"seq":2,"chain_id":"01a24ccf-6408-7789-b82d-d94d2ca11363","prev_hash":"75076ef1324940db1680b4803431bef3d7ce354de58f29fbf1d454a4544afb6d","hash":"07c2041e856a7375947dd03bc59a71d079290984dec9a11a5510813d1bed4267"}"#,
        r#"{"schema":3,"audit_id":"01a24ccf-640b-7a2f-b6be-4c93d7a9b896","timestamp":"2024-02-29T23:59:59.000001Z","event_type":"login","actor":"b\"ob\u00e9","resource":null,"action":null,"outcome":"failure","risk_level":"critical","session_id":null,"ip_address":"::1","message":"line\nbreak","details":{"n":-12,"f":1.5e-3,"a":[1,"x",null,true,{"k":[]}]},"service":null,"version":null,"environment":null,"host":"vm","source":{"target":"app","level":"WARN","span":null},"seq":1234567890123456789,"chain_id":"01a24ccf-6408-7789-b82d-d94d2ca11363","prev_hash":"07c2041e856a7375947dd03bc59a71d079290984dec9a11a5510813d1bed4267","hash":"5b856ac8f9837b1c87f2d756101fd1bd930c47e77249320345fc24af22dfb4de"}"#,
    ];

    /// [`check_linked`] as the readers call it: with the chain fields
    /// `read_link` found.
    fn linked(line: &[u8]) -> Option<CheckedRecord<'_>> {
        check_linked(line, &super::super::chain::read_link(line).ok()?)
    }

    fn serde_verdict(line: &[u8]) -> Option<(Option<String>, Option<String>, Option<String>)> {
        let r: CheckedRecord<'_> = serde_json::from_slice(line).ok()?;
        super::super::check_schema(r.schema, r.chain_id.as_deref()).ok()?;
        Some(summary(&r))
    }

    fn summary(r: &CheckedRecord<'_>) -> (Option<String>, Option<String>, Option<String>) {
        (
            r.chain_id.as_deref().map(str::to_owned),
            r.event_type.as_deref().map(str::to_owned),
            r.service.as_deref().map(str::to_owned),
        )
    }

    /// ASCII of every length 0-200 with, in turn, a valid two-byte
    /// character, a stray continuation byte and a truncated sequence at
    /// every position (in the 64-byte blocks and in the rest): the same
    /// answer as `std::str::from_utf8`.
    #[test]
    fn utf8_agrees_with_std_at_every_length_and_position() {
        for n in 0..=200usize {
            let ascii: Vec<u8> = (0..n).map(|i| b' ' + (i % 90) as u8).collect();
            assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii).ok());
            for at in 0..n {
                for bad in [&[0xc3u8, 0xa9][..], &[0x80], &[0xe2, 0x80]] {
                    let mut b = ascii.clone();
                    let end = (at + bad.len()).min(n);
                    b[at..end].copy_from_slice(&bad[..end - at]);
                    assert_eq!(utf8(&b), std::str::from_utf8(&b).ok(), "{n} {at} {bad:?}");
                }
            }
        }
    }

    #[test]
    fn written_lines_take_the_fast_path_with_the_same_reading() {
        for line in LINES {
            let fast = check(line.as_bytes()).expect("a written line is recognised");
            assert_eq!(Some(summary(&fast)), serde_verdict(line.as_bytes()));
            assert_eq!(
                fast._seq,
                serde_json::from_str::<CheckedRecord<'_>>(line)
                    .unwrap()
                    ._seq
            );
            assert_eq!(
                fast._timestamp,
                serde_json::from_str::<CheckedRecord<'_>>(line)
                    .unwrap()
                    ._timestamp
            );
        }
    }

    /// Schema 3 lines take the linked path with the reading of the full
    /// check and of serde (`seq` and chain id included); a `seq` with a
    /// leading zero, which JSON does not allow, never does.
    #[test]
    fn written_schema_3_lines_take_the_linked_path_with_the_same_reading() {
        for line in LINES_V3 {
            let by_serde: CheckedRecord<'_> = serde_json::from_str(line).unwrap();
            for fast in [linked(line.as_bytes()), check(line.as_bytes())] {
                let fast = fast.expect("a written line is recognised");
                assert_eq!(Some(summary(&fast)), serde_verdict(line.as_bytes()));
                assert_eq!(fast._seq, by_serde._seq);
                assert_eq!(fast._timestamp, by_serde._timestamp);
            }
        }
        // Anything between the body and the chain fields, which the linked
        // path does not read again: refused like serde refuses it.
        for extra in [",\"x\":1", ",\"seq\":5", " ", ",\"hash\":\"0\""] {
            let at = LINES_V3[0].find(",\"seq\":").unwrap();
            let mut m = LINES_V3[0].to_owned();
            m.insert_str(at, extra);
            assert!(
                super::super::chain::read_link(m.as_bytes()).is_ok(),
                "{extra}"
            );
            assert!(linked(m.as_bytes()).is_none(), "{extra}");
            assert!(check(m.as_bytes()).is_none(), "{extra}");
            if extra != " " {
                assert!(serde_verdict(m.as_bytes()).is_none(), "{extra}");
            }
        }
        let zero = LINES_V3[0].replace("\"seq\":2,", "\"seq\":02,");
        let link = super::super::chain::read_link(zero.as_bytes()).unwrap();
        assert_eq!((link.seq, link.tail_at), (2, None));
        assert!(linked(zero.as_bytes()).is_none());
        assert!(check(zero.as_bytes()).is_none());
        assert!(serde_verdict(zero.as_bytes()).is_none());
    }

    /// A chain id in another spelling `uuid` reads (upper case) is left to
    /// the serde parse, which accepts it; one that is no UUID, to be refused.
    #[test]
    fn a_chain_id_spelled_otherwise_is_left_to_the_strict_parse() {
        let id = "01a244e9-14d9-7196-8935-7bbe2e88426a";
        let upper = LINES[0].replace(id, &id.to_uppercase());
        assert!(check(upper.as_bytes()).is_none());
        assert!(serde_verdict(upper.as_bytes()).is_some());
        let bad = LINES[0].replace(id, "01a244e9-14d9-7196-8935-7bbe2e8842-a");
        assert!(check(bad.as_bytes()).is_none());
        assert!(serde_verdict(bad.as_bytes()).is_none());
    }

    /// Fields only checked (not kept) are still refused unless strings,
    /// on both paths.
    #[test]
    fn fields_only_checked_must_still_be_strings() {
        let ok = LINES[0].replace("\"host\":\"vm\"", "\"host\":null");
        assert!(super::super::CheckedRecord::check(ok.as_bytes()).is_ok());
        for (from, to) in [
            ("\"actor\":\"tracing-audit\"", "\"actor\":5"),
            ("\"host\":\"vm\"", "\"host\":[\"vm\"]"),
            ("\"target\":\"tracing_audit\"", "\"target\":true"),
            ("\"level\":\"INFO\"", "\"level\":null"),
        ] {
            let bad = LINES[0].replace(from, to);
            assert_ne!(bad, LINES[0]);
            assert!(check(bad.as_bytes()).is_none(), "{to}");
            assert!(
                super::super::CheckedRecord::check(bad.as_bytes()).is_err(),
                "{to}"
            );
        }
    }

    /// The promise: whatever the fast path accepts, the serde parse
    /// accepts too and reads the same way. Every one-byte deletion, every
    /// one-byte replacement from a set of JSON-significant bytes, and a
    /// duplicated key are tried on every written line.
    #[test]
    fn the_fast_path_accepts_only_what_the_strict_parse_accepts() {
        let bytes: &[u8] = b"\"\\{}[],:0159-+.eEnulltrueZT \x01\x7f/abu";
        let mut accepted = 0;
        let mut tried = 0;
        let mut try_line = |m: &[u8]| {
            tried += 1;
            for fast in [check(m), linked(m)].into_iter().flatten() {
                accepted += 1;
                assert_eq!(
                    serde_verdict(m),
                    Some(summary(&fast)),
                    "fast path accepted what serde refuses or reads otherwise: {}",
                    String::from_utf8_lossy(m)
                );
                let by_serde: CheckedRecord<'_> = serde_json::from_slice(m).unwrap();
                assert_eq!(fast._seq, by_serde._seq, "{}", String::from_utf8_lossy(m));
            }
        };
        for line in LINES.iter().chain(LINES_V3) {
            let line = line.as_bytes();
            for i in 0..line.len() {
                let mut m = line.to_vec();
                m.remove(i);
                try_line(&m);
                for &b in bytes {
                    let mut m = line.to_vec();
                    m[i] = b;
                    try_line(&m);
                }
                let mut m = line.to_vec();
                m.insert(i, b' ');
                try_line(&m);
            }
            // A key repeated inside details, and a lone surrogate.
            let s = std::str::from_utf8(line).unwrap();
            let dup = s.replacen("\"details\":{", "\"details\":{\"x\":1,\"x\":2,", 1);
            assert!(check(dup.as_bytes()).is_none());
            assert!(serde_verdict(dup.as_bytes()).is_none());
            let lone = s.replacen("\"message\":", "\"message\":\"\\ud800\",\"m\":", 1);
            assert!(check(lone.as_bytes()).is_none());
        }
        // Some mutations are still records (a digit changed, say): the
        // comparison above ran on them.
        assert!(accepted > 100, "{accepted} of {tried}");
    }
}
