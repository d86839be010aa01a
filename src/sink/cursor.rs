//! The durable cursor of a forwarder that reads the trail: how far the
//! relay has the chain, kept in the audit directory so that a restart,
//! after a clean stop, a SIGKILL or a power loss, resumes there.
//!
//! The file `.forward-<name>.cursor` holds one JSON object, padded with
//! spaces to a fixed [`SIZE`] and always rewritten whole with one `pwrite`
//! at offset 0:
//! `{"chain_id":…,"boot_id":…,"delivered":<seq>|null,"sent":<seq>|null,"lease":<seq>|null}`.
//!
//! - `delivered`: the last `seq` the relay acknowledged (RELP) or took
//!   (written to the connection, or sent as a datagram). Written after
//!   every batch the relay settled.
//! - `sent`: the highest `seq` handed to the transport, written *before*
//!   the batch goes out.
//! - `lease`: the highest `seq` this process may send before it syncs the
//!   cursor again; synced before anything past it is sent.
//!
//! A `pwrite` is in the page cache at once, so a process killed (SIGKILL,
//! a panic, the OOM killer) leaves the exact `delivered` and `sent`: the
//! restart resends only what was unacknowledged at the kill, and counts
//! those (`sent - delivered`, at most what the trail holds) in
//! `syslog_resent`. The file is synced at most once a second while it
//! moves (and the lease at once), so after a power loss, which the
//! `boot_id` tells apart, the restart counts up to the synced `lease`
//! instead: the relay can hold no duplicate beyond it.
//!
//! A cursor of another chain (the directory was replaced), or one that
//! does not parse, is ignored and reported: forwarding starts at the
//! trail's first record (duplicates, never a gap).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many records past the last synced lease a forwarder may send.
pub(crate) const LEASE: u64 = 16_384;
/// The shortest time between two syncs of a moving cursor.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Bytes of the cursor file (the JSON, padded with spaces).
const SIZE: usize = 256;

/// A forwarder's cursor; see the module doc.
#[derive(Debug)]
pub(crate) struct Cursor {
    path: PathBuf,
    file: Option<File>,
    chain_id: String,
    boot_id: String,
    delivered: Option<u64>,
    sent: Option<u64>,
    lease: Option<u64>,
    /// `delivered`, `sent` and `lease` as last written.
    written: (Option<u64>, Option<u64>, Option<u64>),
    /// Written since the last sync.
    unsynced: bool,
    synced_at: Instant,
}

/// What a loaded cursor says about the process before this one.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Loaded {
    /// The last `seq` delivered.
    pub(crate) delivered: Option<u64>,
    /// The highest `seq` that process may have sent.
    pub(crate) may_have_sent: Option<u64>,
}

/// A cursor's file name is `.forward-<name>.cursor`.
const CURSOR_PREFIX: &str = ".forward-";
const CURSOR_SUFFIX: &str = ".cursor";

/// Whether `file` is named like a forward cursor.
pub(crate) fn is_cursor_name(file: &str) -> bool {
    file.starts_with(CURSOR_PREFIX) && file.ends_with(CURSOR_SUFFIX)
}

impl Cursor {
    /// The cursor named `name` in `dir` for the chain `chain_id`, and what
    /// it held (nothing if missing, unreadable or of another chain; an
    /// unusable one is described in the string).
    pub(crate) fn load(dir: &Path, name: &str, chain_id: &str) -> (Cursor, Loaded, Option<String>) {
        let path = dir.join(format!("{CURSOR_PREFIX}{name}{CURSOR_SUFFIX}"));
        let boot_id = boot_id();
        let (loaded, problem) = match fs::read(&path) {
            Ok(bytes) => match parse(&bytes, chain_id, &boot_id) {
                Ok(l) => (l, None),
                Err(e) => (
                    Loaded::default(),
                    Some(format!(
                        "forward cursor {} ignored ({e}): forwarding starts at the trail's first record",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Loaded::default(), None),
            Err(e) => (
                Loaded::default(),
                Some(format!(
                    "cannot read forward cursor {}: {e}; forwarding starts at the trail's first record",
                    path.display()
                )),
            ),
        };
        let cursor = Cursor {
            path,
            file: None,
            chain_id: chain_id.to_owned(),
            boot_id,
            delivered: loaded.delivered,
            sent: loaded.delivered,
            lease: loaded.delivered,
            written: (None, None, None),
            unsynced: false,
            synced_at: Instant::now(),
        };
        (cursor, loaded, problem)
    }

    /// Notes that the relay has everything up to `seq` (written by the
    /// next [`Self::write`]).
    pub(crate) fn deliver(&mut self, seq: u64) {
        if self.delivered.is_none_or(|d| seq > d) {
            self.delivered = Some(seq);
        }
    }

    /// The highest `seq` written as sent.
    pub(crate) fn sent(&self) -> Option<u64> {
        self.sent
    }

    /// Before records up to `seq` are sent: writes `sent`, and syncs a
    /// longer lease first if `seq` is past the synced one.
    pub(crate) fn sending(&mut self, seq: u64) -> io::Result<()> {
        if self.sent.is_none_or(|s| seq > s) {
            self.sent = Some(seq);
        }
        if self.lease.is_none_or(|l| seq > l) {
            self.lease = Some(seq + LEASE);
            self.write()?;
            return self.sync();
        }
        self.write()
    }

    /// Writes the cursor if it moved, and syncs it if the last sync is a
    /// second old.
    pub(crate) fn write_and_sync_if_due(&mut self) -> io::Result<()> {
        self.write()?;
        if self.unsynced && self.synced_at.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes and syncs (at stop).
    pub(crate) fn write_and_sync(&mut self) -> io::Result<()> {
        self.write()?;
        if self.unsynced || self.file.is_none() {
            self.sync()?;
        }
        Ok(())
    }

    /// Rewrites the file whole, in place, if anything in it moved.
    fn write(&mut self) -> io::Result<()> {
        let now = (self.delivered, self.sent, self.lease);
        if self.file.is_some() && self.written == now {
            return Ok(());
        }
        let mut text = serde_json::json!({
            "chain_id": self.chain_id,
            "boot_id": self.boot_id,
            "delivered": self.delivered,
            "sent": self.sent,
            "lease": self.lease,
        })
        .to_string()
        .into_bytes();
        if text.len() >= SIZE {
            return Err(io::Error::other("forward cursor larger than its file"));
        }
        text.resize(SIZE - 1, b' ');
        text.push(b'\n');
        let created = self.file.is_none();
        if created {
            self.file = Some(
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    // Never through a link planted in the directory (it
                    // would truncate the file it points to).
                    .custom_flags(crate::sink::file::NOFOLLOW)
                    .open(&self.path)?,
            );
        }
        if let Some(f) = &self.file {
            f.write_all_at(&text, 0)?;
            if created {
                f.set_len(SIZE as u64)?;
                f.sync_all()?;
                if let Some(dir) = self.path.parent() {
                    File::open(dir)?.sync_all()?;
                }
            }
        }
        self.written = now;
        self.unsynced = true;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        self.unsynced = false;
        self.synced_at = Instant::now();
        Ok(())
    }
}

/// This boot of the machine (Linux), to tell a power loss from a killed
/// process; empty where unknown.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Reads a cursor file's contents for `chain_id`, this boot being
/// `boot_id`.
fn parse(bytes: &[u8], chain_id: &str, boot_id: &str) -> Result<Loaded, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v["chain_id"].as_str() != Some(chain_id) {
        return Err(format!(
            "it belongs to chain {}, the trail is chain {chain_id}",
            v["chain_id"]
        ));
    }
    let seq = |key: &str| match &v[key] {
        serde_json::Value::Null => Ok(None),
        n => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key} is not a sequence number")),
    };
    let (delivered, sent, lease) = (seq("delivered")?, seq("sent")?, seq("lease")?);
    // The page cache survived (same boot): `sent` is exact. After a
    // reboot only the synced lease bounds what may have gone out.
    let same_boot = !boot_id.is_empty() && v["boot_id"].as_str() == Some(boot_id);
    Ok(Loaded {
        delivered,
        may_have_sent: if same_boot { sent } else { lease.or(sent) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(dir.join(".forward-r.cursor")).unwrap()).unwrap()
    }

    #[test]
    fn a_cursor_survives_a_restart_and_another_chain_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, loaded, problem) = Cursor::load(dir.path(), "r", "chain-a");
        assert!(loaded.delivered.is_none() && problem.is_none());
        c.sending(50).unwrap();
        c.deliver(41);
        c.write_and_sync_if_due().unwrap();
        // Not synced yet, but written: what a killed process leaves.
        let (_, loaded, _) = Cursor::load(dir.path(), "r", "chain-a");
        assert_eq!(loaded.delivered, Some(41));
        assert_eq!(loaded.may_have_sent, Some(50));
        assert_eq!(
            fs::metadata(dir.path().join(".forward-r.cursor"))
                .unwrap()
                .len(),
            SIZE as u64
        );
        let (_, loaded, problem) = Cursor::load(dir.path(), "r", "chain-b");
        assert!(loaded.delivered.is_none());
        assert!(problem.unwrap().contains("chain-a"));
        fs::write(dir.path().join(".forward-r.cursor"), "{garbage").unwrap();
        let (_, loaded, problem) = Cursor::load(dir.path(), "r", "chain-a");
        assert!(loaded.delivered.is_none() && problem.is_some());
    }

    #[test]
    fn after_a_reboot_the_synced_lease_bounds_what_may_have_been_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, ..) = Cursor::load(dir.path(), "r", "c");
        c.sending(5).unwrap();
        assert_eq!(read(dir.path())["lease"], 5 + LEASE);
        c.sending(5 + LEASE).unwrap();
        assert_eq!(read(dir.path())["lease"], 5 + LEASE, "inside the lease");
        c.sending(6 + LEASE).unwrap();
        assert_eq!(read(dir.path())["lease"], 6 + 2 * LEASE);
        let text = fs::read_to_string(dir.path().join(".forward-r.cursor")).unwrap();
        let other_boot = text.replace(&boot_id(), "another-boot");
        let loaded = parse(other_boot.as_bytes(), "c", &boot_id()).unwrap();
        assert_eq!(loaded.may_have_sent, Some(6 + 2 * LEASE));
        let loaded = parse(text.as_bytes(), "c", &boot_id()).unwrap();
        assert_eq!(loaded.may_have_sent, Some(6 + LEASE));
    }
}
