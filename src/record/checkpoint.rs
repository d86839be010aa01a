//! Signed checkpoints: what lets a verifier tell a trail cut short from a
//! complete one, and a forged tail from a genuine one.
//!
//! With a signing key, the pipeline worker writes a `checkpoint` record
//! every N records or T seconds (whichever comes first) and at stop. Its
//! details name the chain (`chain_id`), the `seq` and `hash` of the record
//! just before it, the signing key's id, and an Ed25519 signature over
//!
//! ```text
//! "tracing-audit checkpoint v1\0" chain_id "\0" seq (decimal) "\0" hash (hex)
//! ```
//!
//! The hash of a record covers every record before it (the chain), so one
//! signature vouches for the whole trail up to that record. Whoever can
//! edit the files but does not hold the signing key cannot make a new
//! checkpoint: records after the last checkpoint are an *unverified tail*,
//! and a checkpoint whose signature fails, or that names a record the
//! chain does not have, is tampering. (AWS CloudTrail's signed digest files
//! are the model.)
//!
//! Keys are the standard formats, so OpenSSL reads and writes them too
//! (`openssl genpkey -algorithm ed25519`): the private key as PKCS#8 PEM,
//! the public key as SubjectPublicKeyInfo PEM. [`keygen`] writes both.
//!
//! A leaf of `record`: uses `record::encode`, and reads a checkpoint's
//! details with `AuditRecord::parse` and its chain fields as `chain::Link`.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::record::encode;

/// What every signed message starts with (no other signature this key
/// makes can be taken for a checkpoint's).
const DOMAIN: &[u8] = b"tracing-audit checkpoint v1\0";

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("{what} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a key of the expected kind.
    #[error("{0}")]
    Format(String),
    /// A private key file that others may read (as ssh refuses).
    #[error("the private key file `{}` has mode {mode:o}: others can read it; chmod 600 it", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// The bytes a checkpoint's signature covers.
pub(crate) fn message(chain_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 36 + 22 + 64);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(chain_id.as_bytes());
    m.push(0);
    encode::write_u64(&mut m, seq);
    m.push(0);
    m.extend_from_slice(hash.as_bytes());
    m
}

/// The first 16 hex digits of the SHA-256 of a public key's 32 bytes: how
/// a checkpoint names the key that signed it.
fn key_id(public: &VerifyingKey) -> String {
    let d = Sha256::digest(public.as_bytes());
    let mut hex = [0u8; 64];
    encode::hex_into(&mut hex, &d.into());
    String::from_utf8_lossy(&hex[..16]).into_owned()
}

/// A checkpoint signing key (Ed25519). Its `Debug` shows only the key id;
/// the key itself is never printed.
///
/// ```
/// use tracing_audit::record::checkpoint::CheckpointKey;
/// let key = CheckpointKey::generate()?;
/// let again = CheckpointKey::from_pem(&key.to_pem())?;
/// assert_eq!(again.public().key_id(), key.public().key_id());
/// assert!(!format!("{key:?}").contains("PRIVATE"));
/// # Ok::<(), tracing_audit::record::checkpoint::KeyError>(())
/// ```
#[derive(Clone)]
pub struct CheckpointKey {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CheckpointKey(ed25519, key id {})",
            self.public().key_id()
        )
    }
}

impl CheckpointKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        let path = Path::new("/dev/urandom");
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed[..]))
            .map_err(|source| KeyError::Io {
                what: "read random bytes from",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CheckpointKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| CheckpointKey { key })
            .map_err(|e| KeyError::Format(format!("not an Ed25519 private key in PKCS#8 PEM: {e}")))
    }

    /// Reads a private key file; refuses one that others may read.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let io = |what| {
            move |source| KeyError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let mode = std::fs::metadata(path)
            .map_err(io("read"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io("read"))?);
        Self::from_pem(&text)
    }

    /// The PKCS#8 PEM text of the key.
    pub fn to_pem(&self) -> zeroize::Zeroizing<String> {
        // Encoding a valid key into PEM cannot fail; an empty text would
        // fail to read back, loudly.
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap_or_else(|_| zeroize::Zeroizing::new(String::new()))
    }

    /// The matching public key.
    pub fn public(&self) -> CheckpointPublicKey {
        CheckpointPublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs a checkpoint of `chain_id` at the record `seq` with `hash`;
    /// the signature as 128 hex digits.
    pub(crate) fn sign(&self, chain_id: &str, seq: u64, hash: &str) -> String {
        let sig = self.key.sign(&message(chain_id, seq, hash)).to_bytes();
        // Once per checkpoint: clarity over speed.
        sig.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A checkpoint public key: what `verify --pubkey` checks signatures with.
///
/// ```
/// use tracing_audit::record::checkpoint::{CheckpointKey, CheckpointPublicKey};
/// let key = CheckpointKey::generate()?;
/// let public = CheckpointPublicKey::from_pem(&key.public().to_pem())?;
/// assert_eq!(public.key_id().len(), 16);
/// # Ok::<(), tracing_audit::record::checkpoint::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CheckpointPublicKey {
    key: VerifyingKey,
}

impl std::fmt::Debug for CheckpointPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointPublicKey(ed25519, key id {})", self.key_id())
    }
}

impl CheckpointPublicKey {
    /// Reads a SubjectPublicKeyInfo PEM public key
    /// (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(|key| CheckpointPublicKey { key })
            .map_err(|e| KeyError::Format(format!("not an Ed25519 public key in PEM: {e}")))
    }

    /// Reads a public key file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&text)
    }

    /// The PEM text of the key.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// How checkpoints name this key: 16 hex digits of its SHA-256.
    pub fn key_id(&self) -> String {
        key_id(&self.key)
    }

    /// Whether `signature` (128 hex digits) signs the checkpoint of
    /// `chain_id` at `seq` with `hash`.
    pub(crate) fn verifies(&self, chain_id: &str, seq: u64, hash: &str, signature: &str) -> bool {
        let mut bytes = [0u8; 64];
        if signature.len() != 128 {
            return false;
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            match u8::from_str_radix(&signature[2 * i..2 * i + 2], 16) {
                Ok(v) => *b = v,
                Err(_) => return false,
            }
        }
        self.key
            .verify(
                &message(chain_id, seq, hash),
                &Signature::from_bytes(&bytes),
            )
            .is_ok()
    }
}

/// What a `checkpoint` record's details hold.
struct Fields {
    chain_id: String,
    seq: u64,
    hash: String,
    key_id: String,
    signature: String,
}

impl Fields {
    fn of(line: &[u8]) -> Option<Fields> {
        let r = crate::record::AuditRecord::parse(line).ok()?;
        let d = &r.details;
        let s = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Some(Fields {
            chain_id: s("chain_id")?,
            seq: d.get("seq")?.as_u64()?,
            hash: s("hash")?,
            key_id: s("key_id")?,
            signature: s("signature")?,
        })
    }
}

/// Checks the `checkpoint` record `line` (whose chain fields are `link`)
/// against `keys`: the key it names must be one of them, its signature
/// must verify, and what it signs must be the record before it. The error
/// says what is wrong.
pub(crate) fn check_checkpoint(
    keys: &[CheckpointPublicKey],
    line: &[u8],
    link: &crate::record::chain::Link<'_>,
) -> Result<(), String> {
    let Some(c) = Fields::of(line) else {
        return Err("a checkpoint without chain_id, seq, hash, key_id and signature".into());
    };
    let Some(key) = keys.iter().find(|k| k.key_id() == c.key_id) else {
        return Err(format!(
            "a checkpoint signed by key {}, not one of the keys given (give every key the trail was signed with)",
            c.key_id
        ));
    };
    if !key.verifies(&c.chain_id, c.seq, &c.hash, &c.signature) {
        return Err(format!(
            "checkpoint at seq {}: the signature does not verify: forged or altered",
            link.seq
        ));
    }
    if link.chain_id != Some(c.chain_id.as_str())
        || c.seq.checked_add(1) != Some(link.seq)
        || c.hash != link.prev_hash
    {
        return Err(format!(
            "checkpoint at seq {} signs seq {} hash {} of chain {}, but the record before it is seq {} hash {}",
            link.seq,
            c.seq,
            c.hash,
            c.chain_id,
            link.seq.saturating_sub(1),
            link.prev_hash
        ));
    }
    Ok(())
}

/// Writes a new key pair: `PREFIX.key` (PKCS#8 PEM, mode 0600 from the
/// moment it exists; never overwritten) and `PREFIX.pub` (public key PEM).
/// Returns both paths.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let (key, public) = tracing_audit::record::checkpoint::keygen(dir.path().join("audit"))?;
/// let k = tracing_audit::record::checkpoint::CheckpointKey::read(&key)?;
/// let p = tracing_audit::record::checkpoint::CheckpointPublicKey::read(&public)?;
/// assert_eq!(k.public(), p);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn keygen(prefix: impl AsRef<Path>) -> Result<(PathBuf, PathBuf), KeyError> {
    let prefix = prefix.as_ref();
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (key_path, pub_path) = (with(".key"), with(".pub"));
    let key = CheckpointKey::generate()?;
    let write = |path: &Path, mode: u32, text: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(|source| KeyError::Io {
                what: "write",
                path: path.to_path_buf(),
                source,
            })
    };
    write(&key_path, 0o600, &key.to_pem())?;
    write(&pub_path, 0o644, &key.public().to_pem())?;
    Ok((key_path, pub_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_chain_seq_and_hash() {
        let key = CheckpointKey::generate().unwrap();
        let public = key.public();
        let chain = "0190c0de-0000-7000-8000-000000000000";
        let hash = "ab".repeat(32);
        let sig = key.sign(chain, 41, &hash);
        assert!(public.verifies(chain, 41, &hash, &sig));
        assert!(!public.verifies(chain, 42, &hash, &sig));
        assert!(!public.verifies(chain, 41, &"cd".repeat(32), &sig));
        assert!(!public.verifies("0190c0de-0000-7000-8000-000000000001", 41, &hash, &sig));
        let other = CheckpointKey::generate().unwrap().public();
        assert!(!other.verifies(chain, 41, &hash, &sig));
        assert!(!public.verifies(chain, 41, &hash, &sig[..126]));
        assert!(!public.verifies(chain, 41, &hash, &"zz".repeat(64)));
        // The domain prefix: the bare fields are not what was signed.
        let bare = format!("{chain}\0{}\0{hash}", 41);
        assert_ne!(message(chain, 41, &hash), bare.as_bytes());
    }

    #[test]
    fn keys_round_trip_through_pem_and_refuse_other_text() {
        let key = CheckpointKey::generate().unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = CheckpointKey::from_pem(&pem).unwrap();
        assert_eq!(back.public(), key.public());
        let public = key.public().to_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(CheckpointPublicKey::from_pem(&public).is_ok());
        assert!(CheckpointKey::from_pem(&public).is_err());
        assert!(CheckpointPublicKey::from_pem(&pem).is_err());
        assert!(CheckpointKey::from_pem("hello").is_err());
    }
}
