//! The few file operations the CA and the parties need, each with its path in the error.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::PkiError;

/// Mode of private key files: readable and writable by their owner only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates, CSRs and CRLs: public.
pub const PUBLIC_MODE: u32 = 0o644;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Creates `path` with `mode` and writes `bytes`, durably; never replaces an existing file
/// (the check and the creation are one step, `O_EXCL`).
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
        _ => PkiError::Io { path: path.to_path_buf(), source: e },
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err(path))
}

/// Replaces `path` with `bytes` atomically (write a temporary file beside it, then rename).
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let tmp = sibling(path, ".tmp");
    // A temporary file left by a crash is ours to remove.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
        _ => {}
    }
    write_new(&tmp, bytes, PUBLIC_MODE)?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Creates `dir` (and parents) if missing; a directory we create is private to its owner.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}
