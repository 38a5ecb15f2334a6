//! File helpers for certificates and keys: keys are written 0600 (owner only) through a
//! temporary file and a rename, so a crash never leaves a half-written or world-readable key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{IdentityError, Result};

/// Mode for private keys: read/write for the owner only.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode for certificates and bundles, which are public.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Creates `dir` (and parents) as 0700 if missing.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| io_err("could not create directory", dir, source))
}

/// Writes `contents` to `path` with `mode`, atomically replacing any previous file.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    // A stale temp file from a crash may have other permissions; never reuse it.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|source| io_err("could not create", &tmp, source))?;
    // The umask may have cleared bits we asked for (never added any), so pin the mode.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|source| io_err("could not set permissions on", &tmp, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err("could not write", &tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_err("could not rename into", path, source))
}

/// Reads a UTF-8 (PEM) file.
pub(crate) fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| io_err("could not read", path, source))
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
