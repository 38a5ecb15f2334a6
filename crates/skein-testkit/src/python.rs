//! The Python that tests drive third-party peers with: the venv `.ci/run` makes
//! (`.ci/venv`, or `SKEIN_TEST_PYTHON`), with the packages a test needs.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The venv's Python if it imports `modules` (`"grpc, opentelemetry.sdk"`) and
/// `also` holds (other tools the test needs); otherwise `None`, and the test skips,
/// saying `why` is needed, outside CI, and fails under it (`CI` set).
pub fn venv_python(modules: &str, also: bool, why: &str) -> Option<PathBuf> {
    let python = std::env::var_os("SKEIN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venv/bin/python")
        });
    let imports = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if imports && also {
        return Some(python);
    }
    let why = format!(
        "{why} (Python at {}: `.ci/run` makes the venv and installs what it needs; or set SKEIN_TEST_PYTHON)",
        python.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
    None
}
