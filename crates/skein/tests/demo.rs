//! `skein demo` end to end: it starts, traffic flows through every proxy, the `skein
//! stat`, `skein edges` and `skein trace` commands it prints work while it runs (a
//! sampled request is one trace across traffic → frontend → restaurant), and it leaves
//! no process behind when `--duration` ends. As root, the demo runs each application under
//! `skein run` instead: tested in namespaces of the test's own.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a command line the demo printed (`skein …`) with this build's binary.
fn run_printed(line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(&args)
        .output()
        .expect("run a printed command");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_runs_with_traffic_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skein"))
        // On loopback whoever runs it; `skein run` mode is the test below.
        .args([
            "demo",
            "--loopback",
            "--duration",
            "12s",
            "--rps",
            "25",
            "--net",
            "79",
        ])
        .env("SKEIN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skein demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let mut printed = Vec::new();
    // Up to the line that says traffic has started.
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some(cmd) = line
            .trim()
            .strip_prefix("try: ")
            .or_else(|| line.trim().starts_with("skein ").then_some(line.trim()))
        {
            printed.push(cmd.to_string());
        }
        if line.trim_start().starts_with("traffic ") {
            break;
        }
    }
    let stat = printed
        .iter()
        .find(|c| c.starts_with("skein stat services"))
        .unwrap_or_else(|| panic!("no skein stat command in:\n{stdout}"));
    let edges = printed
        .iter()
        .find(|c| c.starts_with("skein edges"))
        .unwrap_or_else(|| panic!("no skein edges command in:\n{stdout}"));
    // A few summaries later, the commands show the demo's services and pathways.
    std::thread::sleep(Duration::from_secs(6));
    let services = run_printed(stat);
    for service in ["frontend", "restaurant"] {
        assert!(
            services
                .lines()
                .any(|l| l.contains(&format!(" {service} "))),
            "{stat} shows {service}:\n{services}"
        );
    }
    let pathways = run_printed(edges);
    assert!(
        pathways.contains("default/frontend") && pathways.contains("default/restaurant"),
        "{edges}:\n{pathways}"
    );
    // Traces: the frontend passes traceparent on, so a sampled request is one trace with
    // every hop's spans, traffic's proxy first.
    let list = printed
        .iter()
        .find(|c| c.starts_with("skein trace list"))
        .unwrap_or_else(|| panic!("no skein trace list command in:\n{stdout}"));
    let listed: serde_json::Value =
        serde_json::from_str(&run_printed(&format!("{list} --json"))).unwrap();
    let whole = listed["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["services"].as_array().is_some_and(|s| s.len() == 3))
        .unwrap_or_else(|| panic!("{list}: no trace across three services:\n{listed:#}"));
    assert!(
        whole["root"]
            .as_str()
            .unwrap()
            .starts_with("default/traffic outbound GET frontend"),
        "{whole:#}"
    );
    let show = printed
        .iter()
        .find(|c| c.starts_with("skein trace show"))
        .unwrap()
        .replace("TRACE_ID", whole["traceId"].as_str().unwrap());
    let waterfall = run_printed(&show);
    assert!(
        waterfall.contains("default/restaurant") && waterfall.contains("inbound GET restaurant"),
        "{waterfall}"
    );
    for line in lines {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
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

/// `skein demo --canary`: v2 is promoted through every step and v3, answering one request in
/// ten with 500, is rolled back by its failed checks, each step printed with the values that
/// decided it; Ctrl-C then stops everything.
#[test]
fn demo_canary_promotes_one_release_and_rolls_back_the_other() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["demo", "--canary", "--duration", "90s", "--net", "78"])
        .env("SKEIN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skein demo --canary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(80);
    while !text.contains("both releases done") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the releases did not finish within 80 s:\n{text}");
            }
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        text.push_str(&line);
        text.push('\n');
    }
    assert!(status.success(), "{text}");
    for expected in [
        "releasing restaurant-v2 over restaurant-v1 (expect: promoted)",
        "20%  analysis begins: canary receives 20%",
        "canary 20% → 50%",
        "100%  promoted: the canary serves all the target's traffic",
        "restaurant-v2 promoted: it serves all of restaurant's traffic",
        "releasing restaurant-v3 over restaurant-v2 (expect: rolled back)",
        "0%  rolled back to 0% after 2 failed checks (threshold 2): request-success-rate",
        "restaurant-v3 rolled back: restaurant-v2 serves all of restaurant's traffic",
        "skein canary status restaurant --watch",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The decisions carry their metric values.
    let passed = text
        .lines()
        .find(|l| l.contains("check passed ("))
        .expect("a passed check");
    assert!(passed.contains("success 100.00%"), "{passed}");
    let failed = text
        .lines()
        .find(|l| l.contains("check failed (1 of 2"))
        .expect("a failed check");
    assert!(failed.contains("< min 99%"), "{failed}");
    for host in 10..=15 {
        let addr = format!("127.0.78.{host}:4191");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still listening"
        );
    }
}

/// As root, `skein demo` runs each application in a network namespace of its own with
/// `skein run`: the frontend calls its services by name, every request is answered, the
/// proxies count them, and when it ends no namespace, veth, bridge or process is left. Run
/// inside new network, PID and mount namespaces (`unshare --kill-child`, a tmpfs over
/// `/run`), so that nothing reaches the host's network and everything dies with the test.
#[test]
fn as_root_the_demo_runs_each_application_under_skein_run() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the namespaced demo, because it is not running as root");
        return;
    }
    for (tool, flag) in [
        ("unshare", "--version"),
        ("ip", "-V"),
        ("iptables", "--version"),
    ] {
        if Command::new(tool).arg(flag).output().is_err() {
            eprintln!("skipped: the namespaced demo, because `{tool}` cannot be run");
            return;
        }
    }
    let script = format!(
        "ip link set lo up && mount -t tmpfs tmpfs /run && '{}' demo --duration 8s --rps 10 --net 81; \
         echo \"exit $?\"; echo links: $(ip -o link show | cut -d' ' -f2); echo state: $(ls -A /run/skein)",
        env!("CARGO_BIN_EXE_skein")
    );
    let child = Command::new("timeout")
        .args([
            "--kill-after=5",
            "120",
            "unshare",
            "--net",
            "--pid",
            "--mount-proc",
        ])
        .args([
            "--kill-child",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .env("SKEIN_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skein demo in namespaces");
    let out = child.wait_with_output().unwrap();
    let (status, stdout) = (out.status, String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    assert!(status.success(), "{all}");
    assert!(stdout.contains("exit 0"), "{all}");
    assert!(
        stdout.contains(
            "each application in a network namespace of its own (skein run) on 198.18.81.0/24"
        ),
        "{all}"
    );
    for app in ["ledger", "restaurant", "frontend", "traffic"] {
        assert!(
            stdout.contains(&format!("{app:<10} at 198.18.81.")),
            "{app} under skein run: {all}"
        );
    }
    // Every request answered, and each proxy on the way counted them.
    let total = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("total: ok="))
        .unwrap_or_else(|| panic!("no total: {all}"));
    let (ok, failed) = total.split_once(" failed=").expect("ok=N failed=M");
    let ok: u64 = ok.parse().unwrap();
    assert!(ok >= 20, "{all}");
    assert_eq!(failed.trim(), "0", "{all}");
    let last = stdout
        .lines()
        .rfind(|l| l.contains("inbound requests seen by proxies"))
        .unwrap_or_else(|| panic!("no counts: {all}"));
    for counted in ["frontend=", "restaurant=", "ledger(tcp conns)="] {
        let n: u64 = last
            .split(counted)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{counted} {last}");
    }
    // Nothing left: only loopback, and no bridge's state (its lock file stays in /run).
    assert!(stdout.contains("links: lo:\n"), "{all}");
    assert!(stdout.contains("state: skein-demo81.lock\n"), "{all}");
}
