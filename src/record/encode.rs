//! Byte-level JSON writing for audit lines.
//!
//! Records are built by hand into reused buffers rather than through
//! `serde_json::to_writer`, for two reasons that are this crate's job:
//! the key order and exact bytes are a contract (the hash chain covers them),
//! and escaping is stricter than JSON requires. Besides `"` `\` and C0
//! controls, DEL, the C1 controls (U+0080–U+009F) and U+2028/U+2029 are
//! escaped too, so no byte sequence that a terminal or a log viewer treats
//! as a control or a line break ever appears raw in a line.

use std::time::SystemTime;

/// Bytes that may start a sequence that needs escaping.
static MAY_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t[0xc2] = true; // C1 controls are C2 80..C2 9F
    t[0xe2] = true; // U+2028/U+2029 are E2 80 A8/A9
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of some byte of `w` is set iff one of its eight bytes needs
/// escaping (>= 0x80, < 0x20, 0x7f, `"` or `\\`). Exact as an any/none
/// answer: a borrow only spreads above a byte that is itself flagged.
#[inline(always)]
fn needs_escape8(w: u64) -> u64 {
    #[inline(always)]
    fn has_zero(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v & HIGH
    }
    (w & HIGH)
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
        | has_zero(w ^ (ONES * 0x7f))
        | has_zero(w ^ (ONES * b'"' as u64))
        | has_zero(w ^ (ONES * b'\\' as u64))
}

/// The eight bytes of `b` at `i` (`i + 8 <= b.len()`).
#[inline(always)]
fn word_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Appends `b` to `buf`; up to 16 bytes without a `memcpy` call (two
/// overlapping loads and stores), which is what most keys and values of an
/// event are: a call to copy a dozen bytes costs several times the copy.
#[inline(always)]
pub(crate) fn put(buf: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if !(4..=16).contains(&n) {
        buf.extend_from_slice(b);
        return;
    }
    buf.reserve(n);
    let len = buf.len();
    let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    if n < 8 {
        let (lo, hi) = (
            [b[0], b[1], b[2], b[3]],
            [b[n - 4], b[n - 3], b[n - 2], b[n - 1]],
        );
        // SAFETY: `reserve(n)` left at least `n` bytes of spare capacity at
        // `dst`; both four-byte stores end at or before `n`.
        unsafe {
            dst.cast::<[u8; 4]>().write_unaligned(lo);
            dst.add(n - 4).cast::<[u8; 4]>().write_unaligned(hi);
        }
    } else {
        let (lo, hi) = (word_at(b, 0), word_at(b, n - 8));
        // SAFETY: as above, with eight-byte stores ending at or before `n`.
        unsafe {
            dst.cast::<[u8; 8]>().write_unaligned(lo.to_le_bytes());
            dst.add(n - 8)
                .cast::<[u8; 8]>()
                .write_unaligned(hi.to_le_bytes());
        }
    }
    // SAFETY: the two stores cover every byte below `n` (they overlap or
    // meet), within the capacity.
    unsafe { buf.set_len(len + n) };
}

/// Appends `b` to `buf` if it is at most 32 bytes and `buf` has the room
/// already, and returns whether it did; otherwise leaves `buf` as it was.
/// Never calls anything (no `reserve`, no `memcpy`): a caller whose common
/// case is this needs no stack frame of its own for it.
#[inline(always)]
pub(crate) fn put_small_in_room(buf: &mut Vec<u8>, b: &[u8]) -> bool {
    let n = b.len();
    if n > 32 || buf.capacity() - buf.len() < n {
        return false;
    }
    let len = buf.len();
    let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: `dst` has at least `n` bytes of spare capacity (checked
    // above); every store below ends at or before `n`, and together they
    // cover every byte below `n` (overlapping halves, or three bytes).
    unsafe {
        if n > 16 {
            let lo = b[..16].as_ptr().cast::<[u8; 16]>().read_unaligned();
            let hi = b[n - 16..].as_ptr().cast::<[u8; 16]>().read_unaligned();
            dst.cast::<[u8; 16]>().write_unaligned(lo);
            dst.add(n - 16).cast::<[u8; 16]>().write_unaligned(hi);
        } else if n >= 8 {
            let (lo, hi) = (word_at(b, 0), word_at(b, n - 8));
            dst.cast::<[u8; 8]>().write_unaligned(lo.to_le_bytes());
            dst.add(n - 8)
                .cast::<[u8; 8]>()
                .write_unaligned(hi.to_le_bytes());
        } else if n >= 4 {
            let lo = [b[0], b[1], b[2], b[3]];
            let hi = [b[n - 4], b[n - 3], b[n - 2], b[n - 1]];
            dst.cast::<[u8; 4]>().write_unaligned(lo);
            dst.add(n - 4).cast::<[u8; 4]>().write_unaligned(hi);
        } else if n > 0 {
            dst.write(b[0]);
            dst.add(n / 2).write(b[n / 2]);
            dst.add(n - 1).write(b[n - 1]);
        }
        buf.set_len(len + n);
    }
    true
}

/// Appends `b` to `buf` and returns true if no byte of it needs escaping
/// (printable ASCII other than `"` and `\\`); otherwise leaves `buf` as it
/// was and returns false.
///
/// Checks and copies eight bytes at a time in one pass, straight into the
/// buffer's spare capacity (no `memcpy` call for a short value); the last
/// word overlaps the one before it instead of a byte loop over the rest, and
/// four to seven bytes are two overlapping halves. Most values are short:
/// the byte loop and the copy's call were about 200 instructions of an
/// event's 6 600 on the caller's thread (callgrind, `--only e2e1-plain`).
#[inline]
fn copy_if_plain(buf: &mut Vec<u8>, b: &[u8]) -> bool {
    let n = b.len();
    if n < 4 {
        let plain = b
            .iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
        if plain {
            buf.extend_from_slice(b);
        }
        return plain;
    }
    buf.reserve(n);
    let len = buf.len();
    let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let bad = if n < 8 {
        let half = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let (lo, hi) = (half(0), half(n - 4));
        // SAFETY: `reserve(n)` left at least `n` bytes of spare capacity at
        // `dst`; both four-byte stores end at or before `n`.
        unsafe {
            dst.cast::<[u8; 4]>().write_unaligned(lo);
            dst.add(n - 4).cast::<[u8; 4]>().write_unaligned(hi);
        }
        needs_escape8(u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32))
    } else {
        let mut bad = 0;
        let mut store = |i: usize| {
            let w = word_at(b, i);
            bad |= needs_escape8(w);
            // SAFETY: `i + 8 <= n`, within the `n` bytes of spare capacity
            // `reserve(n)` left at `dst`.
            unsafe {
                dst.add(i)
                    .cast::<[u8; 8]>()
                    .write_unaligned(w.to_le_bytes())
            };
        };
        let mut i = 0;
        while i + 8 <= n {
            store(i);
            i += 8;
        }
        if i < n {
            store(n - 8);
        }
        bad
    };
    if bad != 0 {
        return false;
    }
    // SAFETY: bytes `len..len + n` were all written above (the stores cover
    // every offset below `n`), within the capacity.
    unsafe { buf.set_len(len + n) };
    true
}

/// Writes `s` escaped, without surrounding quotes.
pub(crate) fn escape_into(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if copy_if_plain(buf, bytes) {
        return;
    }
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !MAY_ESCAPE[b as usize] {
            i += 1;
            continue;
        }
        let (esc_len, replacement): (usize, Option<&[u8]>) = match b {
            b'"' => (1, Some(b"\\\"")),
            b'\\' => (1, Some(b"\\\\")),
            b'\n' => (1, Some(b"\\n")),
            b'\r' => (1, Some(b"\\r")),
            b'\t' => (1, Some(b"\\t")),
            0x08 => (1, Some(b"\\b")),
            0x0c => (1, Some(b"\\f")),
            0x00..=0x1f | 0x7f => (1, None),
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => (2, None),
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                (3, None)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        buf.extend_from_slice(&bytes[start..i]);
        match replacement {
            Some(r) => buf.extend_from_slice(r),
            None => {
                // Decode the code point (1, 2 or 3 bytes, all valid UTF-8 here).
                let cp: u32 = match esc_len {
                    1 => b as u32,
                    2 => ((b as u32 & 0x1f) << 6) | (bytes[i + 1] as u32 & 0x3f),
                    _ => {
                        ((b as u32 & 0x0f) << 12)
                            | ((bytes[i + 1] as u32 & 0x3f) << 6)
                            | (bytes[i + 2] as u32 & 0x3f)
                    }
                };
                buf.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    buf.push(HEX[((cp >> shift) & 0xf) as usize]);
                }
            }
        }
        i += esc_len;
        start = i;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// `s` cut to at most `max` bytes, at a character boundary: the one place
/// that cuts a value (records, syslog fields, policy keys).
pub(crate) fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes `s` as a JSON string, truncated to `limit` bytes (at a character
/// boundary) with a marker. Returns whether it truncated.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str, limit: usize) -> bool {
    buf.push(b'"');
    let truncated = if s.len() > limit {
        let kept = cut_str(s, limit);
        escape_into(buf, kept);
        buf.extend_from_slice(b"...[truncated ");
        write_u64(buf, (s.len() - kept.len()) as u64);
        buf.extend_from_slice(b" bytes]");
        true
    } else {
        escape_into(buf, s);
        false
    };
    buf.push(b'"');
    truncated
}

/// Like [`write_str`], for a value of which `dropped` bytes were already
/// left out when it was formatted (a bounded `Debug`): the marker counts
/// them too. Returns whether anything was left out.
pub(crate) fn write_str_dropped(buf: &mut Vec<u8>, s: &str, limit: usize, dropped: usize) -> bool {
    if dropped == 0 {
        return write_str(buf, s, limit);
    }
    let kept = cut_str(s, limit);
    let cut = kept.len();
    buf.push(b'"');
    escape_into(buf, kept);
    buf.extend_from_slice(b"...[truncated ");
    write_u64(buf, (s.len() - cut + dropped) as u64);
    buf.extend_from_slice(b" bytes]\"");
    true
}

/// Writes a JSON string that is known to need no truncation.
pub(crate) fn write_plain_str(buf: &mut Vec<u8>, s: &str) {
    write_str(buf, s, usize::MAX);
}

/// "00" to "99", two bytes each.
static PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Writes an unsigned integer in decimal, two digits per step (every
/// record's `seq`, and most numbers in details).
pub(crate) fn write_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    while n >= 100 {
        let r = (n % 100) as usize;
        n /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[2 * r..2 * r + 2]);
    }
    if n >= 10 {
        i -= 2;
        let r = n as usize;
        tmp[i..i + 2].copy_from_slice(&PAIRS[2 * r..2 * r + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + n as u8;
    }
    put(buf, &tmp[i..]);
}

/// Writes a signed integer in decimal.
pub(crate) fn write_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    write_u64(buf, n.unsigned_abs());
}

/// Writes a float as JSON; non-finite values become strings (`"NaN"`, `"inf"`),
/// since JSON has no number for them. Returns `false` when it had to do that.
pub(crate) fn write_f64(buf: &mut Vec<u8>, f: f64) -> bool {
    if f.is_finite() {
        // `{}` on f64 is the shortest round-tripping form; add `.0` so the
        // value stays a float when read back.
        let s = f.to_string();
        buf.extend_from_slice(s.as_bytes());
        if !s.contains(['.', 'e', 'E']) {
            buf.extend_from_slice(b".0");
        }
        true
    } else {
        write_plain_str(buf, &f.to_string());
        false
    }
}

/// Lowercase hex of sixteen bytes.
///
/// On x86-64 with SSE2 (every x86-64 CPU): the nibbles split and
/// interleaved in two registers, made digits by one compare (about 15
/// instructions, where a digit at a time is about 120).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn hex16(out: &mut [u8; 32], bytes: &[u8; 16]) {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_and_si128, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_set1_epi8,
        _mm_srli_epi16, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };
    // SAFETY: SSE2 is enabled at compile time (the cfg); the loads and
    // stores are unaligned ones of exactly 16 bytes within `bytes` and
    // `out`.
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast());
        let low = _mm_set1_epi8(0x0f);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), low);
        let lo = _mm_and_si128(v, low);
        let digits = |n| {
            let letter = _mm_and_si128(
                _mm_cmpgt_epi8(n, _mm_set1_epi8(9)),
                _mm_set1_epi8((b'a' - b'0' - 10) as i8),
            );
            _mm_add_epi8(_mm_add_epi8(n, _mm_set1_epi8(b'0' as i8)), letter)
        };
        let first = digits(_mm_unpacklo_epi8(hi, lo));
        let second = digits(_mm_unpackhi_epi8(hi, lo));
        _mm_storeu_si128(out.as_mut_ptr().cast(), first);
        _mm_storeu_si128(out.as_mut_ptr().add(16).cast(), second);
    }
}

/// Lowercase hex of sixteen bytes, elsewhere.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn hex16(out: &mut [u8; 32], bytes: &[u8; 16]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

/// Lowercase hex of a digest into a fixed buffer.
pub(crate) fn hex_into(out: &mut [u8; 64], digest: &[u8; 32]) {
    let (outs, _) = out.as_chunks_mut::<32>();
    let (halves, _) = digest.as_chunks::<16>();
    for (o, half) in outs.iter_mut().zip(halves) {
        hex16(o, half);
    }
}

/// A UUID's hyphenated lowercase form (8-4-4-4-12 digits), as
/// `uuid::fmt::Hyphenated` writes it, without its per-digit loop: an audit
/// id is written twice a record (the caller's midstate, the worker's line).
pub(crate) fn uuid_into(out: &mut [u8; 36], id: &uuid::Uuid) {
    let mut hex = [0u8; 32];
    hex16(&mut hex, id.as_bytes());
    out[..8].copy_from_slice(&hex[..8]);
    out[8] = b'-';
    out[9..13].copy_from_slice(&hex[8..12]);
    out[13] = b'-';
    out[14..18].copy_from_slice(&hex[12..16]);
    out[18] = b'-';
    out[19..23].copy_from_slice(&hex[16..20]);
    out[23] = b'-';
    out[24..].copy_from_slice(&hex[20..]);
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `t` as RFC 3339 UTC with microseconds and `Z`, e.g.
/// `2026-11-22T10:30:38.123456Z` (no quotes). Times before 1970 are written
/// as 1970-01-01T00:00:00.000000Z.
pub(crate) fn write_timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    // Events come many to a second: the date and time up to the second
    // are worked out once per second and thread.
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> =
            const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let head = SECOND
        .try_with(|c| match c.get() {
            (s, head) if s == secs => head,
            _ => {
                let head = second_prefix(secs);
                c.set((secs, head));
                head
            }
        })
        .unwrap_or_else(|_| second_prefix(secs));
    let mut out = [0u8; 27];
    out[..20].copy_from_slice(&head);
    let mut v = d.subsec_micros();
    for i in (20..26).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out[26] = b'Z';
    buf.extend_from_slice(&out);
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let secs = secs.min(i64::MAX as u64) as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    let year = y.clamp(0, 9999) as u32;
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, mo, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use std::time::{Duration, UNIX_EPOCH};

    fn esc(s: &str) -> String {
        let mut b = Vec::new();
        write_plain_str(&mut b, s);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn escapes_controls_and_line_breaks() {
        let hostile = "a\"b\\c\nd\re\u{0}f\u{1b}[31mg\u{7f}h\u{85}i\u{2028}j\u{2029}k é 日本";
        let out = esc(hostile);
        for b in out.bytes() {
            assert!(b >= 0x20 && b != 0x7f, "raw control byte {b:#x} in {out}");
        }
        assert!(!out.contains('\u{85}') && !out.contains('\u{2028}'));
        assert!(out.contains("é 日本"), "ordinary non-ASCII is kept raw");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, hostile);
    }

    /// [`copy_if_plain`] after bytes already in the buffer: true with `b`
    /// appended, or false with the buffer as it was.
    fn plain_ascii(b: &[u8]) -> bool {
        let mut buf = b"prefix".to_vec();
        let plain = copy_if_plain(&mut buf, b);
        if plain {
            assert_eq!(&buf[6..], b);
        } else {
            assert_eq!(buf, b"prefix");
        }
        plain
    }

    /// Random strings of plain and special characters, every length from 0
    /// to 40 bytes (the word, half-word and byte paths, and an escape in
    /// each position of a word): the escaped text reads back as the
    /// original, holds no raw control or line break, and a plain string is
    /// copied as it is.
    #[test]
    fn escaping_reads_back_at_every_length_and_position() {
        let pieces = [
            "a", "Z", " ", "~", "0", "\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é", "\u{85}",
            "\u{2028}", "\u{2029}", "日",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut s = String::new();
            let want = (x % 41) as usize;
            let mut r = x;
            while s.len() < want {
                r = r.rotate_left(7) ^ 0x5851_f42d_4c95_7f2d;
                // Mostly the plain ones.
                let i = if r.is_multiple_of(3) {
                    (r >> 8) as usize % pieces.len()
                } else {
                    (r >> 8) as usize % 5
                };
                s.push_str(pieces[i]);
            }
            let mut out = b"[".to_vec();
            escape_into(&mut out, &s);
            let body = &out[1..];
            for &b in body {
                assert!(b >= 0x20 && b != 0x7f, "raw {b:#x} for {s:?}");
            }
            let text = std::str::from_utf8(body).unwrap();
            assert!(!text.contains(['\u{85}', '\u{2028}', '\u{2029}']), "{s:?}");
            let back: String = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, s);
            if s.bytes()
                .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
            {
                assert_eq!(text, s);
            }
        }
    }

    #[test]
    fn fast_path_agrees_with_slow_path() {
        for s in [
            "",
            "plain text of some length",
            "tab\there",
            "quote\"",
            "back\\slash",
            "del\u{7f}",
            "é",
            "12345678\n",
            "1234567\u{1f}",
        ] {
            let expect = serde_json::to_string(s).unwrap();
            let mut b = Vec::new();
            write_plain_str(&mut b, s);
            let back: String = serde_json::from_slice(&b).unwrap();
            assert_eq!(back, s, "{expect}");
            assert_eq!(
                plain_ascii(s.as_bytes()),
                s.bytes()
                    .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\'),
                "{s:?}"
            );
        }
    }

    #[test]
    fn swar_check_matches_its_definition_on_random_bytes() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = (x >> (i % 56)) as u8;
                    // Mostly printable, sometimes a special byte.
                    if r.is_multiple_of(11) {
                        [0x00, 0x1f, 0x22, 0x5c, 0x7f, 0x80, 0xff, 0x20, 0x7e]
                            [(r as usize / 11) % 9]
                    } else {
                        0x20 + r % 0x5f
                    }
                })
                .collect();
            let def = bytes
                .iter()
                .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
            assert_eq!(plain_ascii(&bytes), def, "{bytes:?}");
        }
    }

    #[test]
    fn truncates_at_char_boundary_with_marker() {
        let mut b = Vec::new();
        assert!(write_str(&mut b, "ééé", 3));
        let back: String = serde_json::from_slice(&b).unwrap();
        assert_eq!(back, "é...[truncated 4 bytes]");
        let mut b = Vec::new();
        assert!(!write_str(&mut b, "abc", 3));
    }

    #[test]
    fn timestamp_matches_chrono() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut samples = vec![
            0u64,
            951_782_400,
            951_868_799,
            1_700_000_000,
            4_102_444_799,
            253_402_300_799,
        ];
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            samples.push(rng % 253_402_300_800);
        }
        // Each second twice (the second time from the per-second cache),
        // and every other sample back to the first second.
        for (n, secs) in samples.iter().enumerate() {
            let back = if n % 2 == 0 { samples[0] } else { *secs };
            for (secs, micros) in [(*secs, 123_456), (*secs, 999_999), (back, 7)] {
                let t = UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros);
                let mut b = Vec::new();
                write_timestamp(&mut b, t);
                let expect = DateTime::<Utc>::from(t)
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                assert_eq!(String::from_utf8(b).unwrap(), expect);
            }
        }
    }

    /// Every length 0-40 appended after bytes already there, with a
    /// distinct byte in each position.
    #[test]
    fn put_appends_every_length_exactly() {
        let src: Vec<u8> = (1..=40u8).collect();
        for n in 0..=40 {
            for before in [0, 3, 61] {
                let mut buf = vec![0xeeu8; before];
                put(&mut buf, &src[..n]);
                assert_eq!(buf.len(), before + n);
                assert!(buf[..before].iter().all(|&b| b == 0xee));
                assert_eq!(&buf[before..], &src[..n], "{n} after {before}");
            }
        }
    }

    /// Every length 0-40, with no room, exactly the room, and more: written
    /// exactly when it is at most 32 bytes and fits, else nothing changes.
    #[test]
    fn put_small_in_room_writes_exactly_or_nothing() {
        let src: Vec<u8> = (1..=40u8).collect();
        for n in 0..=40 {
            for before in [0usize, 3, 61] {
                for room in [0usize, n, n + 7] {
                    let mut buf = Vec::with_capacity(before + room);
                    buf.resize(before, 0xee);
                    let room = buf.capacity() - buf.len();
                    let done = put_small_in_room(&mut buf, &src[..n]);
                    assert_eq!(
                        done,
                        n <= 32 && n <= room,
                        "{n} after {before}, room {room}"
                    );
                    assert!(buf[..before].iter().all(|&b| b == 0xee));
                    let expect = if done { &src[..n] } else { &[][..] };
                    assert_eq!(&buf[before..], expect, "{n} after {before}, room {room}");
                }
            }
        }
    }

    /// Every byte value in every position of a digest, and random UUIDs,
    /// against the table-driven forms.
    #[test]
    fn hex_and_uuid_match_the_reference_forms() {
        for v in 0..=255u8 {
            for at in 0..32 {
                let mut d = [0x5au8; 32];
                d[at] = v;
                let mut out = [0u8; 64];
                hex_into(&mut out, &d);
                let expect: String = d.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(std::str::from_utf8(&out).unwrap(), expect);
            }
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = uuid::Uuid::from_u64_pair(x, x.rotate_left(29) ^ 0xdead_beef);
            let mut out = [0u8; 36];
            uuid_into(&mut out, &id);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                id.hyphenated().to_string()
            );
        }
        for id in [uuid::Uuid::nil(), uuid::Uuid::max()] {
            let mut out = [0u8; 36];
            uuid_into(&mut out, &id);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                id.hyphenated().to_string()
            );
        }
    }

    /// Every power of ten and its neighbours, and random numbers of every
    /// width, as `to_string` writes them.
    #[test]
    fn unsigned_numbers_match_to_string() {
        let mut samples = vec![0u64, 1, 9, 10, 11, 99, 100, 101, u64::MAX];
        let mut p = 1u64;
        while let Some(q) = p.checked_mul(10) {
            samples.extend([q - 1, q, q + 1]);
            p = q;
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x >> (x % 64));
        }
        for n in samples {
            let mut b = b"x".to_vec();
            write_u64(&mut b, n);
            assert_eq!(&b[1..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers() {
        let mut b = Vec::new();
        write_i64(&mut b, i64::MIN);
        b.push(b' ');
        write_u64(&mut b, u64::MAX);
        b.push(b' ');
        assert!(write_f64(&mut b, 2.0));
        b.push(b' ');
        assert!(!write_f64(&mut b, f64::NAN));
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "-9223372036854775808 18446744073709551615 2.0 \"NaN\""
        );
    }
}
