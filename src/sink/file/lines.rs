//! Reading trail lines with bounded memory, whatever the files hold.
//!
//! A line longer than [`MAX_LINE`] (far above the largest record the crate
//! writes) is never held: its bytes are consumed and hashed, and the caller
//! reports it as not a record, with its offset. Used by the reader, the
//! follower, the verifier and resume.

use std::io::{self, BufRead};

use sha2::{Digest, Sha256};

/// Longest line held in memory (16 MiB).
pub(crate) const MAX_LINE: usize = 16 << 20;

/// What [`read_line`] read.
#[derive(Debug)]
pub(crate) struct Line {
    /// Bytes consumed from the reader, newline included.
    pub(crate) consumed: u64,
    /// Bytes of the line, newline excluded (also when not held).
    pub(crate) len: u64,
    /// Whether it ended with a newline (else: end of file).
    pub(crate) terminated: bool,
    /// For a line longer than the cap: the SHA-256 of all its bytes (the
    /// buffer then holds nothing of it).
    pub(crate) overlong: Option<[u8; 32]>,
}

/// The next line in place of `buf`'s contents, held up to [`MAX_LINE`]:
/// how every reader of a trail takes its lines.
pub(crate) fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    read_line(r, buf, MAX_LINE)
}

/// Appends the next line (without its newline) to `buf`, up to `cap`
/// bytes in `buf` in all; a longer line is consumed and hashed instead.
pub(crate) fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<Line> {
    let mut line = Line {
        consumed: 0,
        len: 0,
        terminated: false,
        overlong: None,
    };
    let mut hasher: Option<Sha256> = None;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let nl = memchr::memchr(b'\n', avail);
        let content = &avail[..nl.unwrap_or(avail.len())];
        match &mut hasher {
            Some(h) => h.update(content),
            None if buf.len() + content.len() > cap => {
                let mut h = Sha256::new();
                h.update(&buf[..]);
                h.update(content);
                buf.clear();
                hasher = Some(h);
            }
            None => buf.extend_from_slice(content),
        }
        line.len += content.len() as u64;
        let take = nl.map_or(avail.len(), |p| p + 1);
        line.consumed += take as u64;
        r.consume(take);
        if nl.is_some() {
            line.terminated = true;
            break;
        }
    }
    line.overlong = hasher.map(|h| h.finalize().into());
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_hashed_not_held() {
        let mut data = vec![b'a'; 100];
        data.push(b'\n');
        data.extend_from_slice(b"short\nrest");
        let mut r = io::BufReader::with_capacity(7, &data[..]);
        let mut buf = Vec::new();
        let l = read_line(&mut r, &mut buf, 10).unwrap();
        assert!(buf.is_empty() && l.terminated && l.len == 100 && l.consumed == 101);
        let want: [u8; 32] = Sha256::digest(&data[..100]).into();
        assert_eq!(l.overlong, Some(want));
        let l = read_line(&mut r, &mut buf, 10).unwrap();
        assert_eq!(
            (&buf[..], l.terminated, l.overlong),
            (&b"short"[..], true, None)
        );
        buf.clear();
        let l = read_line(&mut r, &mut buf, 10).unwrap();
        assert_eq!(
            (&buf[..], l.terminated, l.consumed),
            (&b"rest"[..], false, 4)
        );
    }
}
