//! `skein demo` end to end: it starts, traffic flows through every proxy, and it leaves
//! no process behind when `--duration` ends.

use std::process::Command;

#[test]
fn demo_runs_with_traffic_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["demo", "--duration", "4s", "--rps", "25", "--net", "79"])
        .env("SKEIN_LOG", "warn")
        .output()
        .expect("run skein demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "proxy     frontend",
        "admin http://127.0.79.12:4191/metrics",
        "traffic sent ok=",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let total = stdout
        .lines()
        .find(|l| l.contains("total: ok="))
        .expect("a total line");
    let ok: u64 = total
        .split("ok=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok > 10, "traffic flowed: {total}");
    assert!(total.ends_with("failed=0"), "{total}");
    // The proxies' own counters saw it: a report line names non-zero inbound counts.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("restaurant=") && !l.contains("restaurant=0")),
        "{stdout}"
    );
    // Nothing left listening on the demo's addresses.
    for host in 10..=13 {
        let addr = format!("127.0.79.{host}:4191");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still listening"
        );
    }
}
