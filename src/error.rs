//! The error of building an audit pipeline. Reading a trail and loading
//! policies have their own: [`crate::trail::TrailError`] and
//! [`crate::policy::PolicyError`].

use std::io;
use std::path::{Path, PathBuf};

/// Why an audit pipeline could not be built
/// ([`AuditLayerBuilder::build`](crate::layer::AuditLayerBuilder::build)).
///
/// Nothing in a layer callback returns this: once built, failures are
/// counted (see [`AuditStats`](crate::AuditStats)) and never reach the
/// application.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// // A file where the directory should be: a clear error at build time.
/// let file = dir.join("not-a-dir");
/// std::fs::write(&file, b"x")?;
/// let err = tracing_audit::AuditLayer::builder()
///     .file(&file)
///     .build::<tracing_subscriber::Registry>()
///     .unwrap_err();
/// assert!(matches!(err, tracing_audit::Error::Io { .. }), "{err}");
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("failed to {what} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `tracing-appender` could not create its rolling file.
    #[error("failed to create the rolling audit file in `{}`: {source}", dir.display())]
    Appender {
        /// The directory.
        dir: PathBuf,
        /// The appender's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process (or another pipeline of this one) holds the
    /// directory's lock, and still held it after a second.
    #[error("audit directory `{}` is in use by another process (its .lock is held)", dir.display())]
    DirectoryInUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The configuration is inconsistent.
    #[error("invalid audit configuration: {0}")]
    Config(String),
    /// A network sink could not be set up.
    #[error("failed to set up {what}: {source}")]
    Network {
        /// Which sink.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<super::Error>();
    }
}
