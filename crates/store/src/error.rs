//! The store's errors, and the translation of redb's errors into words an operator can act on.
//!
//! redb reports what went wrong in its own terms ("magic number mismatch", "DatabaseAlreadyOpen").
//! The person reading a coordinator's startup failure is usually hospital IT, not a Rust
//! developer, so every open error names the file and says what to check or do.

use std::io;
use std::path::{Path, PathBuf};

use redb::{DatabaseError, StorageError};

/// Everything a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file could not be opened or created; `reason` says why in plain words.
    #[error("cannot open the fedcare state file {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    /// A record that must be written only once is already there (e.g. `job "ab12…"`).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A call referred to a record that is not there (e.g. `job "ab12…"`).
    #[error("{0} not found")]
    NotFound(String),
    /// Something read back from the file is not what the store wrote.
    #[error("the fedcare state file is damaged: {0}")]
    Corrupt(String),
    /// The disk or the database engine failed while the file was open.
    #[error("fedcare state file error: {0}")]
    Io(String),
}

/// The message for a file that exists but is not ours. Shared so that "random bytes" and
/// "someone else's redb file" read the same way to the operator.
pub(crate) fn not_ours(what: &str) -> String {
    format!(
        "this is not a fedcare state file ({what}). The coordinator never overwrites a file it \
         did not create: check the configured state file path, or move that file away"
    )
}

/// Translates a failure of `redb::Builder::create` into an [`StoreError::Open`].
pub(crate) fn open_error(path: &Path, err: DatabaseError) -> StoreError {
    let reason = match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            "the file is in use by another running fedcare coordinator (it is locked; only one \
             coordinator may use a state file at a time). Stop the other coordinator, or \
             configure a different state file"
                .to_string()
        }
        DatabaseError::UpgradeRequired(version) => format!(
            "the file uses an old storage format (redb file format {version}) that this \
             coordinator cannot read"
        ),
        DatabaseError::RepairAborted => "the file needed a repair after an unclean shutdown \
                                         and the repair did not complete; restore it from a \
                                         backup"
            .to_string(),
        DatabaseError::Storage(storage) => storage_reason(path, storage),
        other => format!("the database engine refused it: {other}"),
    };
    StoreError::Open {
        path: path.to_path_buf(),
        reason,
    }
}

fn storage_reason(path: &Path, err: StorageError) -> String {
    match err {
        StorageError::Io(io) => io_reason(path, &io),
        StorageError::Corrupted(msg) => format!(
            "the file is damaged ({msg}); restore it from a backup. It was not changed"
        ),
        other => format!("the database engine failed: {other}"),
    }
}

fn io_reason(path: &Path, err: &io::Error) -> String {
    // An empty parent means "the current directory", which exists by definition.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match err.kind() {
        io::ErrorKind::NotFound => match parent {
            Some(dir) if !dir.exists() => format!(
                "the folder {} does not exist; create it, or correct the configured state file \
                 path",
                dir.display()
            ),
            _ => format!("the file or a folder on its path does not exist ({err})"),
        },
        io::ErrorKind::PermissionDenied => "permission denied: the account the coordinator runs \
                                             as may not read and write this file, or may not \
                                             create files in its folder"
            .to_string(),
        io::ErrorKind::IsADirectory => {
            "this path is a folder, not a file; give a file name inside it, such as \
             fedcare-state.redb"
                .to_string()
        }
        io::ErrorKind::NotADirectory => {
            "part of the path is a file where a folder was expected".to_string()
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "the disk holding it is mounted read-only".to_string()
        }
        io::ErrorKind::StorageFull => "the disk holding it is full".to_string(),
        // redb reports a file that does not start with its magic number as InvalidData.
        io::ErrorKind::InvalidData => not_ours("it is not a database file at all"),
        _ => format!("it could not be read or written ({err})"),
    }
}
