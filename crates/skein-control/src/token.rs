//! The admin credential: a random bearer token generated at first start and written to
//! `DATA_DIR/admin.token` with mode 0600. The CLI reads it from there (or takes
//! `--token` / `SKEIN_TOKEN`); the HTTP API refuses requests without it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the token inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Where the token for `data_dir` lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the token, creating it (0600) if the data directory has none.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<String> {
    let file = path(data_dir);
    if let Ok(existing) = std::fs::read_to_string(&file) {
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %file.display(), "admin token was readable by others; fixed its mode to 0600");
        }
        return Ok(existing.trim().to_string());
    }
    std::fs::create_dir_all(data_dir)?;
    let token = generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Writes `token` to `DATA_DIR/admin.token` with mode 0600 (replacing any other).
pub fn write(data_dir: &Path, token: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let file = path(data_dir);
    let tmp = data_dir.join(".admin.token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, file)
}

/// 32 random bytes from the OS, hex-encoded.
fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut bytes)
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares in constant time, so the token cannot be guessed byte by byte from timing.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("skein-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&dir).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "ab"));
    }
}
