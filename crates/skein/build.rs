//! Lays out the `skein` binary's code so that what a proxy runs sits together.
//!
//! The kernel maps a program's code into a process in 64 KiB windows around each page it
//! touches (fault-around), and every window counts in the process's RSS. Scattered
//! through the binary, the 2–3 MiB of functions a proxy runs from start-up to serving
//! occupy about 9 MiB of windows. `link-order.txt` lists those functions (from
//! `bench/link-order`, which records them under callgrind), and the linker places them
//! first, in that order (LLD's `--symbol-ordering-file`). Names it does not find (code
//! changed since the list was made, another toolchain) are skipped: the list only moves
//! code, it never decides what is linked. See docs/ARCHITECTURE.md, "Binary size and
//! memory".
//!
//! Only where the linker takes the option: before using it, this links an empty program
//! the way the real link will go (the same `rustc`, target, linker and flags) with the
//! option, and leaves the layout to the linker if that fails (GNU ld and gold do not
//! know it; LLD is rustup's default linker on x86_64 Linux with glibc from Rust 1.90 on).
//! `SKEIN_LINK_ORDER=off` leaves the layout to the linker too.
//!
//! Also packs the binary's relative relocations (`-z pack-relative-relocs`, DT_RELR,
//! glibc 2.36 on): a position-independent `skein` carries about 570 KiB of relocation
//! records that the dynamic loader reads at every start, and that then stay in the
//! process's RSS; packed, they take 11 KiB. Only where an empty program linked that way
//! also runs (the linker knows the option and this system's loader the format);
//! `SKEIN_PACK_RELOCS=off` leaves them unpacked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    // What decides whether the option links. Changes in cargo's configuration files are
    // not seen here; `cargo clean -p skein` makes the probe run again.
    for var in [
        "SKEIN_LINK_ORDER",
        "SKEIN_PACK_RELOCS",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "RUSTC_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if !std::env::var("SKEIN_PACK_RELOCS").is_ok_and(|v| off(&v)) {
        match probe(&["-z", "pack-relative-relocs"], true) {
            Ok(()) => {
                for arg in ["-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"] {
                    println!("cargo:rustc-link-arg-bin=skein={arg}");
                }
            }
            Err(why) if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") => {
                println!("cargo:warning=skein: relocations left unpacked: {why}");
            }
            Err(_) => {}
        }
    }
    if std::env::var("SKEIN_LINK_ORDER").is_ok_and(|v| off(&v)) {
        return;
    }
    let list = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("link-order.txt");
    if !list.exists() {
        return;
    }
    let Some(list) = list.to_str().filter(|p| !p.contains(',')) else {
        println!(
            "cargo:warning=skein: code layout left to the linker: the path {} is not UTF-8 or has a comma",
            list.display()
        );
        return;
    };
    match probe(&["--symbol-ordering-file=/dev/null"], false) {
        Ok(()) => {
            // `-Xlinker` passes each argument whole (a path may hold spaces).
            for arg in [
                "-Xlinker",
                &format!("--symbol-ordering-file={list}"),
                "-Xlinker",
                "--no-warn-symbol-ordering",
            ] {
                println!("cargo:rustc-link-arg-bin=skein={arg}");
            }
        }
        // Expected on targets where LLD is not the default: no warning there.
        Err(why) if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") => {
            println!("cargo:warning=skein: code layout left to the linker: {why}");
        }
        Err(_) => {}
    }
}

/// Whether an environment switch's value says off.
fn off(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "off" | "0" | "false" | "no"
    )
}

/// Links an empty program as the `skein` binary will be linked, with the linker options
/// `linker_args`, and with `run` runs it too (when built for this host); why not, if
/// that fails.
fn probe(linker_args: &[&str], run: bool) -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let source = out.join("link_order_probe.rs");
    std::fs::write(&source, "fn main() {}\n").map_err(|e| e.to_string())?;
    let program = out.join("link_order_probe");
    let _ = std::fs::remove_file(&program);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("--edition=2021")
        .arg("--crate-type=bin")
        .arg("--crate-name=link_order_probe")
        .arg("-o")
        .arg(&program)
        .arg(&source);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.arg("--target").arg(target);
    }
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg(format!("-Clinker={linker}"));
    }
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    for arg in linker_args {
        cmd.arg("-Clink-arg=-Xlinker")
            .arg(format!("-Clink-arg={arg}"));
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run rustc for the probe: {e}"))?;
    let wanted = linker_args.join(" ");
    if output.status.success() {
        if !run || std::env::var("TARGET").ok() != std::env::var("HOST").ok() {
            return Ok(());
        }
        return match Command::new(&program).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "a program linked with {wanted} does not start here ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!(
                "a program linked with {wanted} does not start here ({e})"
            )),
        };
    }
    let said = String::from_utf8_lossy(&output.stderr);
    // GNU ld: "/usr/bin/ld: unrecognized option '--symbol-ordering-file=/dev/null'".
    let line = said
        .lines()
        .find(|l| l.contains("unrecognized") || l.contains("unknown option"))
        .or_else(|| said.lines().find(|l| l.starts_with("error")))
        .unwrap_or("the probe's link failed");
    Err(format!(
        "the linker does not take {wanted} ({})",
        line.trim()
    ))
}
