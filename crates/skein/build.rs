//! Lays out the `skein` binary's code so that what a proxy runs sits together.
//!
//! The kernel maps a program's code into a process in 64 KiB windows around each page it
//! touches (fault-around), and every window counts in the process's RSS. Scattered
//! through the binary, the 2 MiB of functions a proxy runs from start-up to serving
//! occupy about 8 MiB of windows. `link-order.txt` lists those functions (from
//! `bench/link-order`, which records them under callgrind), and the linker places them
//! first, in that order (`--symbol-ordering-file`). Names it does not find (code changed
//! since the list was made) are skipped: the list only moves code, it never decides what
//! is linked. See docs/ARCHITECTURE.md, "Binary size and memory".
//!
//! Only where the linker is LLD: Rust's default on x86_64 Linux with glibc from 1.90 on,
//! unless a linker is chosen by hand. `SKEIN_LINK_ORDER=off` leaves the layout to the
//! linker.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=SKEIN_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    if std::env::var("SKEIN_LINK_ORDER").is_ok_and(|v| v == "off" || v == "0") {
        return;
    }
    if let Err(why) = lld_is_the_linker() {
        println!("cargo:warning=skein: code layout left to the linker: {why}");
        return;
    }
    let list = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("link-order.txt");
    if !list.exists() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=skein=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bin=skein=-Wl,--no-warn-symbol-ordering");
}

/// Whether this build links with LLD, as far as the build can tell; why not, if not.
fn lld_is_the_linker() -> Result<(), String> {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return Err(format!(
            "target {target} (only x86_64-unknown-linux-gnu links with LLD by default)"
        ));
    }
    if std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return Err("a linker chosen by CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER".into());
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags
        .split('\x1f')
        .any(|f| f.contains("linker") || f.contains("link-self-contained") || f.contains("fuse-ld"))
    {
        return Err("a linker chosen in RUSTFLAGS".into());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 90 => Ok(()),
        _ => Err(format!(
            "{} (LLD is the default linker from 1.90)",
            version.trim()
        )),
    }
}
