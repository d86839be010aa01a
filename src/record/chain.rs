//! The hash chain: sealing a record body into a line, and checking a line.
//!
//! A sealed line ends with `,"prev_hash":"<64 hex>","hash":"<64 hex>"}`.
//! `hash` is SHA-256 — or HMAC-SHA-256 under a secret key — over the line's
//! exact bytes up to and including the comma before `"hash"`. Those bytes
//! contain `prev_hash`, so each hash covers the previous one (hashing the
//! previous hash a second time, outside the line, would add a block of work
//! per record and no protection). Checking never re-serialises JSON: the hashed
//! range is a fixed offset from the end of the line. The first record of a
//! chain links to [`GENESIS`]. Sealing and checking share [`Hasher`], so
//! writer and verifier cannot drift apart.
//!
//! A schema 3 line has everything the worker adds (`seq`, `chain_id`, the
//! previous hash) after the body (`record::layout`), so the thread that
//! made the record hashes the line's first whole blocks before queueing it
//! ([`Prehasher::midstate`]) and the worker continues from that
//! [`Midstate`]: the same digest, with most of its blocks off the one
//! thread every record passes through.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::record::{canonical, encode};

/// `prev_hash` of the first record of a chain: 64 zeros.
///
/// ```
/// assert_eq!(tracing_audit::record::GENESIS.len(), 64);
/// assert!(tracing_audit::record::GENESIS.bytes().all(|b| b == b'0'));
/// ```
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) use crate::record::layout::HASH_SUFFIX_LEN;
use crate::record::layout::{
    CHAIN_END, CHAIN_KEY, END, HASH_KEY, HEAD, HEAD_V1, HEAD_V2, ID_END, ID_LEN, PREV_KEY,
    PREV_LEN, SEQ_KEY, SEQ_KEY_V2,
};

/// The SHA-256 state after the first `covered` bytes (whole blocks) of a
/// schema 3 line, hashed by the thread that made the record
/// ([`Prehasher::midstate`]); with a key, HMAC's inner hash from the key's
/// padded block on. Its `Debug` leaves the state out.
#[derive(Clone, Copy)]
pub(crate) struct Midstate {
    state: [u32; 8],
    covered: u32,
}

impl std::fmt::Debug for Midstate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Midstate")
            .field("covered", &self.covered)
            .finish_non_exhaustive()
    }
}

/// What a record's thread needs to hash the start of its line: the state a
/// line's hash starts from (SHA-256's initial value, or HMAC's inner
/// padded-key state: as secret as the key, zeroed when dropped).
#[derive(Clone)]
pub(crate) struct Prehasher {
    start: [u32; 8],
}

impl Drop for Prehasher {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.start.zeroize();
    }
}

impl std::fmt::Debug for Prehasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prehasher")
    }
}

impl Prehasher {
    /// The state after the whole blocks of the line's head, `audit_id` and
    /// `body`: the bytes [`Chain::seal`] writes first (`None` past 4 GiB,
    /// which the value limits rule out: the worker then hashes it whole).
    pub(crate) fn midstate(&self, audit_id: &uuid::Uuid, body: &[u8]) -> Option<Midstate> {
        let mut id = [0u8; ID_LEN];
        encode::uuid_into(&mut id, audit_id);
        let mut state = self.start;
        let covered = sha256::blocks_of(&mut state, &[HEAD, &id, ID_END, body]);
        Some(Midstate {
            state,
            covered: u32::try_from(covered).ok()?,
        })
    }
}

/// SHA-256, or HMAC-SHA-256 with a key.
#[derive(Clone)]
pub(crate) enum Hasher {
    Plain,
    Keyed(Box<Keyed>),
}

/// HMAC-SHA-256 under one key: the MAC, and its two padded-key states for
/// [`Chain::seal_pair`] (RFC 2104: the states after the key XOR `ipad`
/// and XOR `opad` blocks). Both are as secret as the key, and zeroed when
/// dropped.
#[derive(Clone)]
pub(crate) struct Keyed {
    mac: Hmac<Sha256>,
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Keyed {
    fn new(mac: Hmac<Sha256>, key: &[u8]) -> Self {
        let mut k = zeroize::Zeroizing::new([0u8; 64]);
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |x: u8| {
            let mut block = zeroize::Zeroizing::new([0u8; 64]);
            for (b, k) in block.iter_mut().zip(k.iter()) {
                *b = k ^ x;
            }
            let mut state = sha256::IV;
            sha256::block(&mut state, &block[..]);
            state
        };
        Keyed {
            mac,
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }
}

impl Drop for Keyed {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Hasher::Plain => "Hasher::Plain(sha256)",
            Hasher::Keyed(_) => "Hasher::Keyed(hmac-sha256)",
        })
    }
}

impl Hasher {
    /// The keyed MAC, if any (a redactor hashes values under the same key,
    /// domain-separated).
    pub(crate) fn mac(&self) -> Option<Hmac<Sha256>> {
        match self {
            Hasher::Plain => None,
            Hasher::Keyed(k) => Some(k.mac.clone()),
        }
    }

    pub(crate) fn new(key: Option<&[u8]>) -> Self {
        match key {
            // HMAC accepts keys of any length; this cannot fail.
            Some(k) => Hmac::<Sha256>::new_from_slice(k).map_or(Hasher::Plain, |mac| {
                Hasher::Keyed(Box::new(Keyed::new(mac, k)))
            }),
            None => Hasher::Plain,
        }
    }

    /// What a record's thread hashes its line's start with.
    pub(crate) fn prehasher(&self) -> Prehasher {
        Prehasher {
            start: self.start(),
        }
    }

    /// The state a line's hash starts from.
    fn start(&self) -> [u32; 8] {
        match self {
            Hasher::Plain => sha256::IV,
            Hasher::Keyed(k) => k.inner,
        }
    }

    /// Where hashing `prefix` (a line's hashed bytes before the previous
    /// hash) starts: `mid`'s state and the bytes it covers when it covers
    /// part of `prefix`, else the start. In debug builds, checks that `mid`
    /// is the state of those bytes (a record's thread and the worker must
    /// agree on them byte for byte).
    fn resume_at(&self, prefix: &[u8], mid: Option<&Midstate>) -> ([u32; 8], usize) {
        match mid {
            Some(m) if (m.covered as usize) <= prefix.len() => {
                let covered = m.covered as usize;
                debug_assert_eq!(
                    {
                        let mut s = self.start();
                        sha256::blocks_of(&mut s, &[&prefix[..covered]]);
                        s
                    },
                    m.state,
                    "the midstate is not the state of the line's first {covered} bytes"
                );
                (m.state, covered)
            }
            _ => (self.start(), 0),
        }
    }

    /// The algorithm's name as written in `audit_started` records.
    pub(crate) fn algorithm(&self) -> &'static str {
        match self {
            Hasher::Plain => "sha256",
            Hasher::Keyed(_) => "hmac-sha256",
        }
    }

    /// The digests of `a` and `b`, as [`Hasher::digest`] gives them, in
    /// about two thirds of the time: their blocks hashed in turn, so the
    /// CPU overlaps the two independent chains of SHA-256 rounds.
    pub(crate) fn digest_pair(&self, a: &[u8], b: &[u8]) -> ([u8; 32], [u8; 32]) {
        let ((sa, ca), (sb, cb)) = self.blocks_pair((a, None), (b, None));
        let before = self.before();
        let da = sha256::finish(sa, &[&a[ca..]], before + a.len());
        let db = sha256::finish(sb, &[&b[cb..]], before + b.len());
        (self.outer(da), self.outer(db))
    }

    /// The states after the whole blocks of `a` and of `b` (hashed in
    /// turn), each from where `ma`/`mb` left it (or the start), with how
    /// many bytes each state covers.
    fn blocks_pair(
        &self,
        (a, ma): (&[u8], Option<&Midstate>),
        (b, mb): (&[u8], Option<&Midstate>),
    ) -> (([u32; 8], usize), ([u32; 8], usize)) {
        let (mut sa, fa) = self.resume_at(a, ma);
        let (mut sb, fb) = self.resume_at(b, mb);
        let (ka, kb) = ((a.len() - fa) / 64, (b.len() - fb) / 64);
        for i in 0..ka.max(kb) {
            if i < ka {
                sha256::block(&mut sa, &a[fa + i * 64..][..64]);
            }
            if i < kb {
                sha256::block(&mut sb, &b[fb + i * 64..][..64]);
            }
        }
        ((sa, fa + ka * 64), (sb, fb + kb * 64))
    }

    /// Bytes hashed before the message: HMAC's inner key block.
    fn before(&self) -> usize {
        match self {
            Hasher::Plain => 0,
            Hasher::Keyed(_) => 64,
        }
    }

    /// With a key, HMAC's outer hash of the `inner` one; without, `inner`.
    fn outer(&self, inner: [u8; 32]) -> [u8; 32] {
        match self {
            Hasher::Plain => inner,
            Hasher::Keyed(k) => sha256::finish(k.outer, &[&inner], 64 + 32),
        }
    }

    pub(crate) fn digest(&self, hashed: &[u8]) -> [u8; 32] {
        match self {
            Hasher::Plain => {
                let mut h = Sha256::new();
                h.update(hashed);
                h.finalize().into()
            }
            Hasher::Keyed(k) => {
                let mut m = k.mac.clone();
                m.update(hashed);
                m.finalize().into_bytes().into()
            }
        }
    }
}

/// The writer's chain state: its id, next `seq` and the last hash.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    hasher: Hasher,
    next_seq: u64,
    prev_hex: [u8; 64],
    /// The chain's id (hyphenated UUID), written into every record.
    chain_id: [u8; ID_LEN],
}

impl Chain {
    /// A new chain with the id `chain_id`.
    pub(crate) fn new(hasher: Hasher, chain_id: &uuid::Uuid) -> Self {
        let mut prev_hex = [0u8; 64];
        prev_hex.copy_from_slice(GENESIS.as_bytes());
        let mut id = [0u8; ID_LEN];
        chain_id.hyphenated().encode_lower(&mut id);
        Chain {
            hasher,
            next_seq: 0,
            prev_hex,
            chain_id: id,
        }
    }

    /// The chain's id.
    pub(crate) fn chain_id(&self) -> &str {
        std::str::from_utf8(&self.chain_id).unwrap_or("")
    }

    /// `seq` and `hash` (hex) of the last record sealed, if any.
    pub(crate) fn last(&self) -> Option<(u64, &str)> {
        let seq = self.next_seq.checked_sub(1)?;
        Some((seq, std::str::from_utf8(&self.prev_hex).unwrap_or("")))
    }

    /// Continues chain `chain_id` after a record with `seq` and `hash`
    /// (hex) found on disk.
    pub(crate) fn resume(
        hasher: Hasher,
        chain_id: &uuid::Uuid,
        last_seq: u64,
        last_hash: &str,
    ) -> Self {
        let mut c = Chain::new(hasher, chain_id);
        c.next_seq = last_seq + 1;
        if last_hash.len() == 64 {
            c.prev_hex.copy_from_slice(last_hash.as_bytes());
        }
        c
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Appends a complete line (with `\n`) to `out` and returns its seq;
    /// `mid`, the record's thread's hash of the line's start, if it made one.
    pub(crate) fn seal(
        &mut self,
        out: &mut Vec<u8>,
        audit_id: &uuid::Uuid,
        body: &[u8],
        mid: Option<&Midstate>,
    ) -> Sealed {
        let line = self.write_line(out, self.next_seq, audit_id, body);
        let prefix = line.prefix(out);
        let (mut state, covered) = self.hasher.resume_at(prefix, mid);
        let whole = (prefix.len() - covered) / 64 * 64;
        sha256::blocks_of(&mut state, &[&prefix[covered..covered + whole]]);
        let digest = sha256::finish(
            state,
            &[&prefix[covered + whole..], &self.prev_hex, b"\","],
            self.hasher.before() + line.hashed_len(),
        );
        let digest = self.hasher.outer(digest);
        self.link(out, &line, &digest)
    }

    /// Seals two records, as two calls of [`Chain::seal`] would, byte for
    /// byte, in about two thirds of the hashing time (SHA-256, or HMAC's
    /// inner SHA-256 from the key's padded state).
    ///
    /// A line's hashed bytes are its prefix (up to `"prev_hash":"`), which
    /// does not depend on the record before, then the previous hash and
    /// `",`. Both lines are written first (with their `seq`, their positions
    /// fixed: a line's hash has a fixed length); the two prefixes are hashed
    /// block by block in turn, so the CPU overlaps the two independent
    /// dependency chains of SHA-256 (one block of one stream alone takes 33
    /// ns here, one of two interleaved 21 ns); then each line's last two or
    /// three blocks, which hold the previous hash, in order.
    pub(crate) fn seal_pair(
        &mut self,
        out: &mut Vec<u8>,
        a: (&uuid::Uuid, &[u8], Option<&Midstate>),
        b: (&uuid::Uuid, &[u8], Option<&Midstate>),
    ) -> (Sealed, Sealed) {
        let la = self.write_line(out, self.next_seq, a.0, a.1);
        let lb = self.write_line(out, self.next_seq + 1, b.0, b.1);
        let (pa, pb) = (la.prefix(out), lb.prefix(out));
        let ((sa, ka), (sb, kb)) = self.hasher.blocks_pair((pa, a.2), (pb, b.2));
        let before = self.hasher.before();
        let da = sha256::finish(
            sa,
            &[&pa[ka..], &self.prev_hex, b"\","],
            before + la.hashed_len(),
        );
        let da = self.hasher.outer(da);
        let first = self.link(out, &la, &da);
        let pb = lb.prefix(out);
        let db = sha256::finish(
            sb,
            &[&pb[kb..], &self.prev_hex, b"\","],
            before + lb.hashed_len(),
        );
        let db = self.hasher.outer(db);
        (first, self.link(out, &lb, &db))
    }

    /// Appends record `seq`'s line to `out`, its previous hash and its hash
    /// left as zeros ([`Chain::link`] fills them).
    fn write_line(&self, out: &mut Vec<u8>, seq: u64, audit_id: &uuid::Uuid, body: &[u8]) -> Line {
        let start = out.len();
        out.extend_from_slice(HEAD);
        let mut id = [0u8; ID_LEN];
        encode::uuid_into(&mut id, audit_id);
        out.extend_from_slice(&id);
        out.extend_from_slice(ID_END);
        let body_at = out.len() - start;
        out.extend_from_slice(body);
        out.extend_from_slice(SEQ_KEY);
        encode::write_u64(out, seq);
        out.extend_from_slice(CHAIN_KEY);
        out.extend_from_slice(&self.chain_id);
        out.extend_from_slice(CHAIN_END);
        out.extend_from_slice(PREV_KEY);
        let prev_at = out.len();
        out.extend_from_slice(&[0; 64]);
        out.extend_from_slice(b"\",");
        out.extend_from_slice(HASH_KEY);
        out.extend_from_slice(&[0; 64]);
        out.extend_from_slice(END);
        out.push(b'\n');
        Line {
            start,
            seq,
            body_at,
            prev_at,
            end: out.len(),
        }
    }

    /// Writes the previous hash and `digest` into `line`, whose hash it is,
    /// and moves the chain past it.
    fn link(&mut self, out: &mut [u8], line: &Line, digest: &[u8; 32]) -> Sealed {
        out[line.prev_at..][..64].copy_from_slice(&self.prev_hex);
        let mut hex = [0u8; 64];
        encode::hex_into(&mut hex, digest);
        out[line.hash_at()..][..64].copy_from_slice(&hex);
        self.prev_hex = hex;
        self.next_seq = line.seq + 1;
        Sealed {
            seq: line.seq,
            body_at: line.body_at,
            end: line.end,
        }
    }
}

/// Where [`Chain::write_line`] put a line's parts in the buffer.
struct Line {
    start: usize,
    seq: u64,
    body_at: usize,
    /// Where the previous hash goes.
    prev_at: usize,
    /// Just past its `\n`.
    end: usize,
}

impl Line {
    /// The end of the hashed bytes: the previous hash and `",`.
    fn hashed_end(&self) -> usize {
        self.prev_at + 64 + 2
    }

    fn hashed_len(&self) -> usize {
        self.hashed_end() - self.start
    }

    fn hash_at(&self) -> usize {
        self.hashed_end() + HASH_KEY.len()
    }

    /// The hashed bytes before the previous hash.
    fn prefix<'a>(&self, out: &'a [u8]) -> &'a [u8] {
        &out[self.start..self.prev_at]
    }
}

/// SHA-256 by its compression function, for hashing a message whose end
/// (the previous hash) is known later than the rest.
mod sha256 {
    use sha2::digest::generic_array::{typenum::U64, GenericArray};

    /// The initial hash value (FIPS 180-4, 5.3.3).
    pub(super) const IV: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];

    /// Absorbs one 64-byte block.
    #[inline]
    pub(super) fn block(state: &mut [u32; 8], block: &[u8]) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }

    /// Absorbs the whole 64-byte blocks of `parts` joined, and returns how
    /// many bytes that was (the rest, under a block, is left out).
    pub(super) fn blocks_of(state: &mut [u32; 8], parts: &[&[u8]]) -> usize {
        let mut carry = [0u8; 64];
        let (mut held, mut total) = (0, 0);
        for part in parts {
            let mut p = *part;
            if held > 0 {
                let take = (64 - held).min(p.len());
                carry[held..held + take].copy_from_slice(&p[..take]);
                held += take;
                p = &p[take..];
                if held < 64 {
                    continue;
                }
                block(state, &carry);
                total += 64;
            }
            let whole = p.len() / 64 * 64;
            let n = whole / 64;
            if n > 0 {
                // One call for all of them (the CPU features are checked
                // and the state moved in and out once a call).
                // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)`
                // over `[u8; 64]` (alignment 1), and the `n` blocks lie
                // within `p`.
                let blocks: &[GenericArray<u8, U64>] =
                    unsafe { std::slice::from_raw_parts(p.as_ptr().cast(), n) };
                sha2::compress256(state, blocks);
            }
            total += whole;
            let rest = &p[whole..];
            carry[..rest.len()].copy_from_slice(rest);
            held = rest.len();
        }
        total
    }

    /// The digest of a message of `total` bytes whose whole blocks went
    /// into `state` and whose remaining bytes are `parts` (at most 130 in
    /// all): those, the padding and the length (5.1.1).
    pub(super) fn finish(mut state: [u32; 8], parts: &[&[u8]], total: usize) -> [u8; 32] {
        let mut buf = [0u8; 192];
        let mut n = 0;
        for part in parts {
            buf[n..n + part.len()].copy_from_slice(part);
            n += part.len();
        }
        buf[n] = 0x80;
        let blocks = (n + 1 + 8).div_ceil(64);
        let bits = (total as u64) * 8;
        buf[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_be_bytes());
        for b in buf[..blocks * 64].chunks_exact(64) {
            block(&mut state, b);
        }
        let mut digest = [0u8; 32];
        for (d, w) in digest.chunks_exact_mut(4).zip(state) {
            d.copy_from_slice(&w.to_be_bytes());
        }
        digest
    }
}

/// What [`Chain::seal`] wrote: the record's sequence number, where its
/// body starts in the line, and where the line ends in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub(crate) seq: u64,
    pub(crate) body_at: usize,
    pub(crate) end: usize,
}

/// The chain fields of one line, read without parsing JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link<'a> {
    /// The chain's id (schema 2; `None` on a schema 1 line).
    pub(crate) chain_id: Option<&'a str>,
    pub(crate) seq: u64,
    pub(crate) prev_hash: &'a str,
    pub(crate) hash: &'a str,
    /// Where the chain fields start (`,"seq":`) on a schema 3 line whose
    /// chain fields, read here, are also in the strict written form (a
    /// `seq` without a leading zero): the strict check then stops there
    /// instead of reading them again. `None` on any other line.
    pub(crate) tail_at: Option<usize>,
}

/// Why a line's chain fields could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// Not a sealed line (wrong start, wrong end, bad hex, bad seq).
    Malformed,
    /// `hash` does not match the bytes.
    HashMismatch,
}

/// A hyphenated lower-case UUID: 8-4-4-4-12 hex digits.
pub(crate) fn is_uuid(s: &[u8]) -> bool {
    let Ok(s) = <&[u8; ID_LEN]>::try_from(s) else {
        return false;
    };
    // Hyphens where they belong and nowhere else (exactly four), every
    // other byte a digit: passes of a fixed length without short-circuit,
    // which the compiler unrolls and vectorises (every line has two).
    let hex_or_hyphen = s
        .iter()
        .fold(true, |ok, &b| ok & (is_lower_hex(b) | (b == b'-')));
    let hyphens = s.iter().fold(0u8, |n, &b| n + u8::from(b == b'-'));
    hex_or_hyphen && hyphens == 4 && s[8] == b'-' && s[13] == b'-' && s[18] == b'-' && s[23] == b'-'
}

fn is_lower_hex(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6)
}

fn is_hex64(s: &[u8]) -> bool {
    // Without short-circuit, so that it is vectorised (every line has two).
    <&[u8; 64]>::try_from(s).is_ok_and(|s| s.iter().fold(true, |ok, &b| ok & is_lower_hex(b)))
}

/// Reads and checks one line (without its `\n`): the stored hash must equal
/// the hash of its own bytes and its stored `prev_hash`.
pub(crate) fn check_line<'a>(hasher: &Hasher, line: &'a [u8]) -> Result<Link<'a>, LinkError> {
    let link = read_link(line)?;
    link_if(link, hash_matches(hasher, line))
}

/// Whether a line's stored hash is the hash of its bytes, for a thread
/// that checks hashes ahead of the one that reads the links
/// ([`check_line_hashed`], which alone says whether the layout is a sealed
/// line's: together they answer as [`check_line`] does).
pub(crate) fn hash_checks(hasher: &Hasher, line: &[u8]) -> bool {
    // Only the length `hash_matches` slices by: whether the layout is a
    // sealed line's is `check_line_hashed`'s to say (on the other thread).
    line.len() >= MIN_SEALED && hash_matches(hasher, line)
}

/// [`check_line`] for a line whose [`hash_checks`] answer is known.
pub(crate) fn check_line_hashed(line: &[u8], hash_checks: bool) -> Result<Link<'_>, LinkError> {
    link_if(read_link(line)?, hash_checks)
}

fn link_if(link: Link<'_>, hash_ok: bool) -> Result<Link<'_>, LinkError> {
    if hash_ok {
        Ok(link)
    } else {
        Err(LinkError::HashMismatch)
    }
}

/// Whether the stored hash of a line whose layout [`read_link`] accepted
/// is the hash of its bytes.
pub(crate) fn hash_matches(hasher: &Hasher, line: &[u8]) -> bool {
    stored_hash_is(line, &hasher.digest(hashed_part(line)))
}

/// [`hash_checks`] of two lines, their hashing interleaved
/// ([`Hasher::digest_pair`]).
pub(crate) fn hash_checks_pair(hasher: &Hasher, a: &[u8], b: &[u8]) -> (bool, bool) {
    if a.len() < MIN_SEALED || b.len() < MIN_SEALED {
        return (hash_checks(hasher, a), hash_checks(hasher, b));
    }
    let (da, db) = hasher.digest_pair(hashed_part(a), hashed_part(b));
    (stored_hash_is(a, &da), stored_hash_is(b, &db))
}

/// The bytes a line's hash covers (the line is at least [`MIN_SEALED`]).
fn hashed_part(line: &[u8]) -> &[u8] {
    &line[..line.len() - HASH_SUFFIX_LEN]
}

/// Whether `line` (at least [`MIN_SEALED`]) stores `digest` as its hash.
fn stored_hash_is(line: &[u8], digest: &[u8; 32]) -> bool {
    let mut hex = [0u8; 64];
    encode::hex_into(&mut hex, digest);
    let at = line.len() - HASH_SUFFIX_LEN + HASH_KEY.len();
    line[at..at + 64] == hex
}

/// No sealed line is shorter (a schema 3 line has `"` and `,"seq":` where
/// older ones have `","seq":`: the same bytes).
const MIN_SEALED: usize = HEAD.len() + ID_LEN + SEQ_KEY_V2.len() + HASH_SUFFIX_LEN + PREV_LEN;

/// Reads one line's chain fields from their fixed places, without
/// checking its hash (`Malformed` if they are not where a sealed line has
/// them).
pub(crate) fn read_link(line: &[u8]) -> Result<Link<'_>, LinkError> {
    let n = line.len();
    let version = if line.starts_with(HEAD) {
        3
    } else if line.starts_with(HEAD_V2) {
        2
    } else if line.starts_with(HEAD_V1) {
        1
    } else {
        return Err(LinkError::Malformed);
    };
    if n < MIN_SEALED {
        return Err(LinkError::Malformed);
    }
    // `prev_hash` and `hash`, together at the end: one UTF-8 check for both.
    let prev_at = n - HASH_SUFFIX_LEN - PREV_LEN;
    let tail = canonical::utf8(&line[prev_at..]).ok_or(LinkError::Malformed)?;
    let (prev, suffix) = tail.split_at(PREV_LEN);
    if !suffix.as_bytes().starts_with(HASH_KEY)
        || !suffix.as_bytes().ends_with(END)
        || !prev.as_bytes().starts_with(&PREV_KEY[1..])
        || !prev.as_bytes().ends_with(b"\",")
    {
        return Err(LinkError::Malformed);
    }
    let hash = suffix
        .get(HASH_KEY.len()..HASH_KEY.len() + 64)
        .filter(|h| is_hex64(h.as_bytes()));
    let prev_hash = prev
        .get(PREV_KEY.len() - 1..PREV_KEY.len() - 1 + 64)
        .filter(|h| is_hex64(h.as_bytes()));
    let (Some(hash), Some(prev_hash)) = (hash, prev_hash) else {
        return Err(LinkError::Malformed);
    };
    let after_id = HEAD.len() + ID_LEN;
    let mut tail_at = None;
    let (seq, chain_id) = if version == 3 {
        // `"` after the id; `,"seq":<n>,"chain_id":"<36>"` just before
        // `,"prev_hash"`, read from the end.
        if line.get(after_id..after_id + ID_END.len()) != Some(ID_END) {
            return Err(LinkError::Malformed);
        }
        let id_end = prev_at
            .checked_sub(1 + CHAIN_END.len())
            .ok_or(LinkError::Malformed)?;
        if line.get(id_end..prev_at) != Some(b"\",") {
            return Err(LinkError::Malformed);
        }
        let id_at = id_end.checked_sub(ID_LEN).ok_or(LinkError::Malformed)?;
        let key_at = id_at
            .checked_sub(CHAIN_KEY.len())
            .filter(|&k| k >= after_id + ID_END.len() + SEQ_KEY.len())
            .ok_or(LinkError::Malformed)?;
        let id = &line[id_at..id_end];
        if &line[key_at..id_at] != CHAIN_KEY || !is_uuid(id) {
            return Err(LinkError::Malformed);
        }
        let digits = line[..key_at]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let seq_at = key_at - digits;
        if !line[..seq_at].ends_with(SEQ_KEY) {
            return Err(LinkError::Malformed);
        }
        let seq = parse_seq(&line[seq_at..key_at])?;
        let id = canonical::utf8(id).ok_or(LinkError::Malformed)?;
        // JSON has no leading zeros: such a line is left to the full check.
        let written_form = digits == 1 || line[seq_at] != b'0';
        tail_at = written_form.then(|| seq_at - SEQ_KEY.len());
        (seq, Some(id))
    } else {
        let seq_part = line[after_id..]
            .strip_prefix(SEQ_KEY_V2)
            .ok_or(LinkError::Malformed)?;
        let digits = seq_part.iter().take_while(|b| b.is_ascii_digit()).count();
        let seq = parse_seq(&seq_part[..digits])?;
        let chain_id = if version == 2 {
            let id = seq_part[digits..]
                .strip_prefix(CHAIN_KEY)
                .and_then(|rest| rest.get(..ID_LEN + CHAIN_END.len()))
                .filter(|id| id.ends_with(CHAIN_END))
                .map(|id| &id[..ID_LEN])
                .filter(|id| is_uuid(id))
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or(LinkError::Malformed)?;
            Some(id)
        } else {
            None
        };
        (seq, chain_id)
    };
    Ok(Link {
        chain_id,
        seq,
        prev_hash,
        hash,
        tail_at,
    })
}

/// A `seq`'s digits as `str::parse` reads them (leading zeros too), without
/// the copy; none, or more than a `u64` holds, is `Malformed`.
fn parse_seq(digits: &[u8]) -> Result<u64, LinkError> {
    (!digits.is_empty())
        .then(|| {
            digits.iter().try_fold(0u64, |v, d| {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        })
        .flatten()
        .ok_or(LinkError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `is_uuid` is exactly "what `uuid` parses, in the written spelling":
    /// every one-byte change of a written id agrees with that rule.
    #[test]
    fn is_uuid_accepts_exactly_the_written_spelling() {
        let written = uuid::Uuid::now_v7().hyphenated().to_string();
        let rule = |s: &[u8]| {
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| uuid::Uuid::try_parse(s).ok().map(|u| (s, u)))
                .is_some_and(|(s, u)| u.hyphenated().to_string() == s)
        };
        assert!(is_uuid(written.as_bytes()));
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..written.len() {
            for b in *b"-09afgAF{ " {
                let mut m = written.clone().into_bytes();
                m[i] = b;
                assert_eq!(is_uuid(&m), rule(&m), "{}", String::from_utf8_lossy(&m));
                if is_uuid(&m) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted} {refused}");
        assert!(!is_uuid(&written.as_bytes()[1..]));
        assert!(!is_uuid(format!("{written}0").as_bytes()));
    }

    fn sealed(chain: &mut Chain, body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        chain.seal(&mut out, &uuid::Uuid::now_v7(), body.as_bytes(), None);
        out
    }

    /// Sealing two records at once writes what sealing them one by one
    /// writes, byte for byte, for bodies of every length modulo a block
    /// (so every split of the hashed bytes between prefix and last blocks),
    /// across `seq`s that gain a digit, and leaves the chain in the same
    /// state; keyed chains too, with a short key and one longer than a
    /// block (which HMAC hashes first). With or without the midstates a
    /// record's thread makes, alone or in pairs: the same bytes.
    #[test]
    fn sealing_a_pair_writes_what_sealing_each_writes() {
        let long = [7u8; 100];
        for hasher in [
            Hasher::Plain,
            Hasher::new(Some(b"k")),
            Hasher::new(Some(&long)),
        ] {
            let id = uuid::Uuid::now_v7();
            for (last, step) in [
                (None, 1),
                (Some(7), 1),
                (Some(97), 3),
                (Some(u64::MAX - 1000), 1),
            ] {
                let fresh = || match last {
                    None => Chain::new(hasher.clone(), &id),
                    Some(s) => Chain::resume(hasher.clone(), &id, s, GENESIS),
                };
                let pre = hasher.prehasher();
                let (mut one, mut two, mut three, mut four) = (fresh(), fresh(), fresh(), fresh());
                let mut lines = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
                let mut len = 0;
                while len < 200 {
                    let a = format!(r#","a":"{}""#, "x".repeat(len));
                    let b = format!(r#","b":"{}""#, "y".repeat(len * 7 % 150));
                    let (a, b) = (a.as_bytes(), b.as_bytes());
                    let (ia, ib) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
                    let (ma, mb) = (pre.midstate(&ia, a).unwrap(), pre.midstate(&ib, b).unwrap());
                    let sa = one.seal(&mut lines[0], &ia, a, None);
                    let sb = one.seal(&mut lines[0], &ib, b, None);
                    let pair = two.seal_pair(&mut lines[1], (&ia, a, None), (&ib, b, None));
                    assert_eq!((sa, sb), pair, "{last:?} {len}");
                    let mid =
                        three.seal_pair(&mut lines[2], (&ia, a, Some(&ma)), (&ib, b, Some(&mb)));
                    assert_eq!((sa, sb), mid, "{last:?} {len}");
                    let each = (
                        four.seal(&mut lines[3], &ia, a, Some(&ma)),
                        four.seal(&mut lines[3], &ib, b, Some(&mb)),
                    );
                    assert_eq!((sa, sb), each, "{last:?} {len}");
                    for other in &lines[1..] {
                        assert_eq!(&lines[0], other, "{last:?} {len}");
                    }
                    len += step;
                }
                assert_eq!(one.last(), two.last());
                assert_eq!(one.last(), three.last());
                assert_eq!(one.last(), four.last());
                let lines_two = &lines[2];
                for line in lines_two.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                    check_line(&hasher, line).unwrap();
                }
            }
        }
    }

    /// Two messages hashed in turn get the digests each gets alone, for
    /// every pair of lengths around the block and padding boundaries,
    /// plain and keyed; and the lines' checks agree with single checks,
    /// tampered lines included.
    #[test]
    fn digesting_a_pair_gives_what_digesting_each_gives() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let long = [9u8; 70];
        for hasher in [
            Hasher::Plain,
            Hasher::new(Some(b"key")),
            Hasher::new(Some(&long)),
        ] {
            for la in (0..200).step_by(5).chain([55, 56, 63, 64, 119, 120, 128]) {
                for lb in [0, 1, 55, 56, 57, 63, 64, 65, 127, 128, 190, 300] {
                    let (a, b) = (&data[..la], &data[300 - lb..]);
                    let pair = hasher.digest_pair(a, b);
                    assert_eq!(pair, (hasher.digest(a), hasher.digest(b)), "{la} {lb}");
                }
            }
            let mut c = Chain::new(hasher.clone(), &uuid::Uuid::now_v7());
            let good = sealed(&mut c, r#","x":1"#);
            let good = &good[..good.len() - 1];
            let mut bad = good.to_vec();
            bad[40] ^= 1;
            for (a, b) in [
                (good, good),
                (good, &bad[..]),
                (&bad[..], good),
                (b"{}", good),
            ] {
                assert_eq!(
                    hash_checks_pair(&hasher, a, b),
                    (hash_checks(&hasher, a), hash_checks(&hasher, b))
                );
            }
            assert_eq!(hash_checks_pair(&hasher, good, &bad), (true, false));
        }
    }

    /// `SEAL_MAX_EXTRA` is what sealing adds with a 20-digit `seq`, and one
    /// byte less per digit fewer (the worker plans batches with it).
    #[test]
    fn sealing_adds_at_most_seal_max_extra() {
        use crate::record::layout::SEAL_MAX_EXTRA;
        let body = r#","x":1"#;
        for (last, digits) in [
            (None, 1),
            (Some(9), 2),
            (Some(10_000_000_000_000_000_000 - 1), 20),
        ] {
            let mut c = match last {
                None => Chain::new(Hasher::Plain, &uuid::Uuid::now_v7()),
                Some(s) => Chain::resume(Hasher::Plain, &uuid::Uuid::now_v7(), s, GENESIS),
            };
            let line = sealed(&mut c, body);
            assert_eq!(
                line.len() - body.len(),
                SEAL_MAX_EXTRA - 20 + digits,
                "{last:?}"
            );
        }
    }

    #[test]
    fn seal_then_check_links() {
        let mut c = Chain::new(Hasher::Plain, &uuid::Uuid::now_v7());
        let a = sealed(&mut c, r#","x":1"#);
        let b = sealed(&mut c, r#","x":2"#);
        let la = check_line(&Hasher::Plain, &a[..a.len() - 1]).unwrap();
        let lb = check_line(&Hasher::Plain, &b[..b.len() - 1]).unwrap();
        assert_eq!((la.seq, lb.seq), (0, 1));
        assert_eq!(la.prev_hash, GENESIS);
        assert_eq!(lb.prev_hash, la.hash);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["x"], 1);
    }

    #[test]
    fn any_byte_flip_is_caught() {
        let mut c = Chain::new(Hasher::Plain, &uuid::Uuid::now_v7());
        let line = sealed(&mut c, r#","msg":"hello world""#);
        let line = &line[..line.len() - 1];
        for i in 0..line.len() {
            let mut bad = line.to_vec();
            bad[i] ^= 0x01;
            assert!(
                check_line(&Hasher::Plain, &bad).is_err(),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn keyed_chain_rejects_plain_recompute() {
        let key = Hasher::new(Some(b"secret"));
        let mut keyed = Chain::new(key.clone(), &uuid::Uuid::now_v7());
        let mut plain = Chain::new(Hasher::Plain, &uuid::Uuid::now_v7());
        let id = uuid::Uuid::now_v7();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keyed.seal(&mut a, &id, b",\"x\":1", None);
        plain.seal(&mut b, &id, b",\"x\":1", None);
        assert!(check_line(&key, &a[..a.len() - 1]).is_ok());
        assert_eq!(
            check_line(&key, &b[..b.len() - 1]),
            Err(LinkError::HashMismatch)
        );
    }
}
