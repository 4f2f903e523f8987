//! The file-system side: durable directories, the release store, the ledger file's writer.
//!
//! Durability follows one rule: a thing is only *named* once the thing it names is on disk.
//! A release file is written to a temporary name, fsynced, renamed to its SHA-256 and the
//! directory fsynced, all before the ledger line that names it is appended and fsynced.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Entry, LedgerError};

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Is `s` 64 lowercase hex digits? (Checked before a stored hash is used as a file name.)
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError {
    let path = path.to_path_buf();
    move |source| LedgerError::Io {
        action,
        path,
        source,
    }
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` and any missing ancestors, and makes each new directory's entry durable in
/// its parent.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), LedgerError> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io("create the directory", dir))?;
    // Outermost first, so that each parent exists durably before its child is synced in it.
    for m in missing.iter().rev() {
        sync_dir(parent_dir(m))?;
    }
    Ok(())
}

/// Where the release with this SHA-256 is stored.
pub(crate) fn release_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.bin"))
}

/// Stores `bytes` (whose SHA-256 is `sha256`) durably in `dir`. A file already there with the
/// right contents is kept; one with other contents is replaced (its name says what it must
/// hold, and `bytes` is that).
pub(crate) fn put_release(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<(), LedgerError> {
    let dest = release_path(dir, sha256);
    if let Ok(existing) = fs::read(&dest)
        && sha256_hex(&existing) == sha256
    {
        // Possibly left by a commit that crashed after the rename: make sure it is durable.
        return sync_dir(dir);
    }
    let tmp = dir.join(format!("{sha256}.tmp"));
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io("write the release file", &tmp))?;
    fs::rename(&tmp, &dest).map_err(io("rename the release file into place", &dest))?;
    sync_dir(dir)
}

/// Reads back the release an entry names and checks it is exactly that release.
pub(crate) fn get_release(dir: &Path, entry: &Entry) -> Result<Vec<u8>, LedgerError> {
    // Replay checked the name is 64 hex digits, so it cannot point outside `dir`.
    let path = release_path(dir, &entry.release_sha256);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LedgerError::ReleaseMissing {
                seq: entry.seq,
                path,
            });
        }
        Err(e) => return Err(io("read the release file", &path)(e)),
    };
    let found = sha256_hex(&bytes);
    if found != entry.release_sha256 || bytes.len() as u64 != entry.release_bytes {
        return Err(LedgerError::ReleaseMismatch {
            seq: entry.seq,
            path,
            expected_sha256: entry.release_sha256.clone(),
            expected_bytes: entry.release_bytes,
            found_sha256: found,
            found_bytes: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// The ledger file open for appending (holding its lock).
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) file: File,
    /// File length after the last acknowledged line.
    pub(crate) size: u64,
    /// The last line (with its `\n`), to notice edits made behind our back.
    pub(crate) last_line: Vec<u8>,
}

impl Writer {
    /// Refuses if the file is not exactly as this writer left it.
    pub(crate) fn check_unchanged(&mut self, path: &Path) -> Result<(), LedgerError> {
        let modified = || LedgerError::ModifiedSinceOpen {
            path: path.to_path_buf(),
        };
        let len = self.file.metadata().map_err(io("inspect", path))?.len();
        if len != self.size {
            return Err(modified());
        }
        if !self.last_line.is_empty() {
            let mut buf = vec![0u8; self.last_line.len()];
            self.file
                .seek(SeekFrom::Start(self.size - self.last_line.len() as u64))
                .and_then(|_| self.file.read_exact(&mut buf))
                .map_err(io("read", path))?;
            if buf != self.last_line {
                return Err(modified());
            }
        }
        Ok(())
    }

    /// Appends one complete line (ending in `\n`) and fsyncs. On failure, removes what it may
    /// have written (best effort; if that fails too, `check_unchanged` refuses further
    /// appends until the ledger is reopened, which removes the incomplete line).
    pub(crate) fn append(&mut self, path: &Path, line: &[u8]) -> Result<(), LedgerError> {
        let written = self
            .file
            .seek(SeekFrom::Start(self.size))
            .and_then(|_| self.file.write_all(line))
            .and_then(|_| self.file.sync_all());
        if let Err(e) = written {
            let _ = self
                .file
                .set_len(self.size)
                .and_then(|_| self.file.sync_all());
            return Err(io("write to", path)(e));
        }
        self.size += line.len() as u64;
        self.last_line = line.to_vec();
        Ok(())
    }
}
