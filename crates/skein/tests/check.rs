//! `skein check` end to end, as real processes on real sockets: a healthy mesh passes
//! every line, and each injected fault fails exactly its own line with its advice while the
//! others pass: the control plane down, a data directory open to others, a proxy that stops
//! acknowledging (SIGSTOPped while a change is pushed), an expired certificate (a 5 s
//! workloadCertTTL and a SIGSTOPped proxy that can no longer renew), a capture rule deleted
//! in a workload's namespace (root only), and etcd down under the control plane. `-o json`
//! mirrors the table. Without root the kernel's checks are skipped, and fail under `--pre`.
//!
//! Each test has its own 127.0.0.x addresses (241–249); every process, directory and
//! network namespace is removed by a drop guard, also when a test fails.

use serde_json::Value;
use skein_model::ProxyConfig;
use skein_testkit::control::{free_port, CliOutput, ControlProcess, ControlledProxy, TempDir};
use skein_testkit::loopback;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `skein` binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_skein");
/// Bound for a state the mesh reaches by itself (generous: 2 shared cores).
const SOON: Duration = Duration::from_secs(30);

/// The control plane's and the mesh's lines, which every healthy run passes.
const MESH_LINES: &[&str] = &[
    "control plane reachable",
    "admin token accepted",
    "control plane version",
    "store healthy",
    "data directory permissions",
    "mesh CA valid",
    "proxies connected",
    "configuration acknowledged",
    "proxy certificates",
    "clock skew",
];
/// The kernel's lines, which run as root.
const KERNEL_LINES: &[&str] = &[
    "network namespaces",
    "iptables nat table",
    "SO_ORIGINAL_DST",
];

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    glyph: char,
    name: String,
    message: String,
    hint: String,
}

/// The check lines of a table report: `  ✔ name: message`, and `      → hint` beneath.
fn report(text: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for raw in text.lines() {
        if let Some(hint) = raw.trim_start().strip_prefix("→ ") {
            if let Some(last) = lines.last_mut() {
                last.hint = hint.to_string();
            }
            continue;
        }
        let Some(rest) = raw.strip_prefix("  ") else {
            continue;
        };
        let mut chars = rest.chars();
        let Some(glyph @ ('✔' | '‼' | '✘' | '○')) = chars.next() else {
            continue;
        };
        let rest = chars.as_str().trim_start();
        let (name, message) = rest.split_once(": ").unwrap_or((rest, ""));
        lines.push(Line {
            glyph,
            name: name.to_string(),
            message: message.to_string(),
            hint: String::new(),
        });
    }
    lines
}

fn line<'a>(lines: &'a [Line], name: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no line {name:?} in {lines:#?}"))
}

/// Every line of `names` passed (and, as root, the kernel's), nothing failed, exit 0.
#[track_caller]
fn assert_healthy(out: &CliOutput, names: &[&str]) {
    assert_eq!(out.code, Some(0), "{out:#?}");
    let lines = report(&out.stdout);
    let mut expected: Vec<&str> = names.to_vec();
    if is_root() {
        expected.extend(KERNEL_LINES);
    }
    for name in expected {
        assert!(passed(line(&lines, name)), "{name}: {}", out.stdout);
    }
    assert!(lines.iter().all(|l| l.glyph != '✘'), "{}", out.stdout);
}

/// Exactly `name` failed, saying `message` and advising `hint`; exit 1. The lines in
/// `passing` passed.
#[track_caller]
fn assert_only_failure(out: &CliOutput, name: &str, message: &str, hint: &str, passing: &[&str]) {
    assert_eq!(out.code, Some(1), "{out:#?}");
    let lines = report(&out.stdout);
    let failed: Vec<&Line> = lines.iter().filter(|l| l.glyph == '✘').collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly one failure expected:\n{}",
        out.stdout
    );
    assert_eq!(failed[0].name, name, "{}", out.stdout);
    assert!(failed[0].message.contains(message), "{}", out.stdout);
    assert!(failed[0].hint.contains(hint), "{}", out.stdout);
    for other in passing {
        assert!(passed(line(&lines, other)), "{other}:\n{}", out.stdout);
    }
}

/// `MESH_LINES` without `name`.
fn others(name: &str) -> Vec<&'static str> {
    MESH_LINES.iter().copied().filter(|n| *n != name).collect()
}

/// Runs `skein check ARGS` until `done` accepts what it printed, for at most [`SOON`].
async fn check_until(
    cp: &ControlProcess,
    args: &[&str],
    what: &str,
    done: impl Fn(&CliOutput) -> bool,
) -> CliOutput {
    let mut all = vec!["check"];
    all.extend(args);
    let deadline = Instant::now() + SOON;
    loop {
        let out = cp.cli(&all).await;
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SOON:?} waiting for {what}; last report: {out:#?}\ncontrol plane log:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every line passed (no warning either: clocks measured, certificates fresh),
/// or was skipped for having nothing to judge (no proxy connected).
fn all_passed(out: &CliOutput) -> bool {
    out.code == Some(0) && report(&out.stdout).iter().all(passed)
}

/// ✔, or ○ for having nothing to judge (no proxy connected to this replica): not a pass,
/// but not the failure a test is looking for either.
fn passed(l: &Line) -> bool {
    l.glyph == '✔' || (l.glyph == '○' && l.message.contains("no proxy connected"))
}

async fn start_control(octet: u8, data: &Path, extra: &[&str]) -> ControlProcess {
    let any = SocketAddr::new(loopback(octet), 0);
    ControlProcess::start(Path::new(BIN), data, any, any, extra)
        .await
        .expect("start skein control")
}

async fn apply(cp: &ControlProcess, files: &TempDir, name: &str, yaml: &str) {
    let path = files.join(name);
    std::fs::write(&path, yaml).unwrap();
    cp.cli(&["apply", "-f", path.to_str().unwrap()]).await.ok();
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports: [{{port: 8080, protocol: http}}]\n"
    )
}

/// A `skein proxy --control` process for workload `name` of `service` on 127.0.0.`octet`,
/// summarising telemetry (hence measuring its clock) every 200 ms.
async fn start_proxy(cp: &ControlProcess, octet: u8, name: &str, service: &str) -> ControlledProxy {
    let ip = loopback(octet);
    let yaml = format!(
        "workload: {{name: {name}, service: {service}}}\n\
         inbound: {{listen: '{}', ports: [{{port: 8080, protocol: http}}]}}\n\
         admin: {{listen: '{}'}}\n\
         telemetry: {{summaryInterval: 200ms}}\n",
        free_port(ip).unwrap(),
        free_port(ip).unwrap()
    );
    let config = ProxyConfig::from_yaml(&yaml, "test").unwrap();
    let token = cp.join_token(service).await.unwrap();
    ControlledProxy::start(Path::new(BIN), &config, cp.grpc, &token)
        .await
        .expect("start skein proxy")
}

#[tokio::test]
async fn a_healthy_mesh_passes_and_each_fault_fails_its_own_line() {
    let (data, files) = (
        TempDir::new("chk-data").unwrap(),
        TempDir::new("chk-files").unwrap(),
    );
    let mut cp = start_control(241, data.path(), &[]).await;
    apply(
        &cp,
        &files,
        "svc.yaml",
        &format!("{}---\n{}", service("web"), service("api")),
    )
    .await;
    let _web = start_proxy(&cp, 242, "web-1", "web").await;
    let api = start_proxy(&cp, 242, "api-1", "api").await;

    let healthy = check_until(&cp, &[], "a healthy report", all_passed).await;
    assert_healthy(&healthy, MESH_LINES);
    let lines = report(&healthy.stdout);
    assert_eq!(
        line(&lines, "proxies connected").message,
        "2 registered, all connected"
    );
    assert!(!healthy.stdout.contains('\x1b'), "no colour into a pipe");

    // -o json says the same, line by line.
    let out = cp.cli(&["check", "-o", "json"]).await;
    let json: Value = serde_json::from_str(out.ok()).expect("JSON");
    assert_eq!(json["ok"], true);
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), lines.len(), "{json:#}");
    for (c, l) in checks.iter().zip(&lines) {
        assert_eq!(c["name"], l.name.as_str());
        assert_eq!(c["status"], "ok");
        assert!(c["group"].is_string() && c["hint"] == "", "{c}");
    }

    // A data directory open to others.
    let dir = data.path().display().to_string();
    chmod(data.path(), 0o755);
    let out = cp.cli(&["check"]).await;
    chmod(data.path(), 0o700);
    assert_only_failure(
        &out,
        "data directory permissions",
        &format!("{dir} is 0755, open to others"),
        &format!("chmod 700 {dir}"),
        &others("data directory permissions"),
    );
    let out = cp.cli(&["check", "-o", "json"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");

    // A proxy that does not acknowledge a change: stopped while it is pushed.
    api.signal("STOP").unwrap();
    // (A change to what it holds: its own Service gains a port. Proxies hold only what
    // they use, so a change elsewhere would not be sent to it.)
    let more = service("api").replace(
        "[{port: 8080, protocol: http}]",
        "[{port: 8080, protocol: http}, {port: 8081, protocol: http}]",
    );
    apply(&cp, &files, "more.yaml", &more).await;
    // (The change reaches the proxies' sessions a moment after the apply answers.)
    let out = check_until(&cp, &[], "the unacknowledged version", |out| {
        report(&out.stdout)
            .iter()
            .any(|l| l.name == "configuration acknowledged" && l.glyph == '✘')
    })
    .await;
    let json = cp.cli(&["check", "-o", "json"]).await;
    api.signal("CONT").unwrap();
    assert_only_failure(
        &out,
        "configuration acknowledged",
        "default/api-1 has not acknowledged version",
        "the proxy is stuck or overloaded",
        &others("configuration acknowledged"),
    );
    let json: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["ok"], false);
    let failed: Vec<&Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{json:#}");
    assert_eq!(failed[0]["name"], "configuration acknowledged");
    assert_eq!(failed[0]["group"], "proxies");
    assert!(failed[0]["hint"].as_str().unwrap().contains("restart it"));
    // Once it runs again it catches up.
    check_until(&cp, &[], "the proxy acknowledging again", all_passed).await;

    // The control plane down: its line fails, and what needs it is skipped, not passed.
    cp.signal("KILL").unwrap();
    cp.wait_exit(Duration::from_secs(10)).await.unwrap();
    let out = cp.cli(&["check"]).await;
    assert_only_failure(
        &out,
        "control plane reachable",
        &format!("cannot connect to {} (connection refused)", cp.http),
        "start it with `skein control --data-dir DIR`",
        &["data directory permissions"],
    );
    let lines = report(&out.stdout);
    for name in others("control plane reachable") {
        if name != "data directory permissions" {
            assert_eq!(line(&lines, name).glyph, '○', "{name}: {}", out.stdout);
        }
    }
}

#[tokio::test]
async fn an_expired_certificate_fails_the_certificate_line() {
    let (data, files) = (
        TempDir::new("chk-data").unwrap(),
        TempDir::new("chk-files").unwrap(),
    );
    let cp = start_control(243, data.path(), &[]).await;
    let mesh = "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                spec: {workloadCertTTL: 5s}\n---\n";
    apply(
        &cp,
        &files,
        "mesh.yaml",
        &format!("{mesh}{}", service("web")),
    )
    .await;
    let web = start_proxy(&cp, 244, "web-1", "web").await;
    check_until(&cp, &[], "a healthy report", all_passed).await;

    // A proxy that cannot renew (stopped; its stream stays open) keeps being listed with
    // the certificate it last reported, which expires within 5 s.
    web.signal("STOP").unwrap();
    let out = check_until(&cp, &[], "the certificate to expire", |out| {
        report(&out.stdout)
            .iter()
            .any(|l| l.name == "proxy certificates" && l.glyph == '✘')
    })
    .await;
    web.signal("CONT").unwrap();
    assert_only_failure(
        &out,
        "proxy certificates",
        "default/web-1's certificate expired",
        "its proxy is not renewing",
        &others("proxy certificates"),
    );
}

#[tokio::test]
async fn a_missing_capture_rule_fails_the_capture_line() {
    if !is_root() {
        eprintln!("skipped: the capture check needs root (a network namespace and iptables)");
        return;
    }
    let (data, state) = (
        TempDir::new("chk-data").unwrap(),
        TempDir::new("chk-state").unwrap(),
    );
    let cp = start_control(245, data.path(), &[]).await;
    let ns = Netns::add(&format!("skein-check-{}", std::process::id()));
    let config = state.join("proxy.yaml");
    std::fs::write(
        &config,
        "workload: {name: cap-1, service: cap}\n\
         inbound: {listen: '127.0.0.1:4143', ports: [{port: 8080, protocol: http}]}\n\
         outbound: {listen: '127.0.0.1:4140'}\n\
         admin: {listen: '127.0.0.1:4191'}\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    ns.run(&[BIN, "proxy", "--intercept", "-c", cfg]);
    let proxy = KillOnDrop(
        // With the group its exemption names, as `skein run` starts it.
        ns.command(&[
            "setpriv",
            "--regid=1337",
            "--clear-groups",
            BIN,
            "proxy",
            "-c",
            cfg,
        ])
        .spawn()
        .expect("start the proxy in the namespace"),
    );
    // As `skein run` records it: the workload's address and the process holding its
    // namespace (here the proxy itself).
    write_run_entry(state.path(), proxy.0.id());
    let by_entry = [
        "--proxy",
        "127.0.0.1",
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    let netns = format!("/run/netns/{}", ns.name);
    let by_netns = [
        "--proxy",
        "127.0.0.1",
        "--netns",
        &netns,
        "--admin",
        "127.0.0.1:4191",
    ];
    let mut passing = MESH_LINES.to_vec();
    passing.push("capture rules");
    for args in [&by_entry[..], &by_netns[..]] {
        let out = check_until(&cp, args, "the capture rules in force", |o| {
            o.code == Some(0)
        })
        .await;
        assert_healthy(&out, &passing);
        let lines = report(&out.stdout);
        assert_eq!(
            line(&lines, "capture rules").message,
            "127.0.0.1: all 8 rules in force, in order"
        );
    }

    ns.run(&[&["iptables", "-t", "nat", "-D"][..], &REDIRECT_RULE].concat());
    for args in [&by_entry[..], &by_netns[..]] {
        let mut all = vec!["check"];
        all.extend(args);
        let out = cp.cli(&all).await;
        assert_only_failure(
            &out,
            "capture rules",
            "127.0.0.1: 1 of 8 rules missing: iptables -t nat -A SKEIN_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
            "skein proxy --intercept -c FILE",
            MESH_LINES,
        );
    }

    // A rule ahead of the jump into Skein's chain lets its traffic past the capture.
    ns.run(&[&["iptables", "-t", "nat", "-A"][..], &REDIRECT_RULE].concat());
    ns.run(&[
        "iptables", "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "5432", "-j",
        "RETURN",
    ]);
    let mut all = vec!["check"];
    all.extend(by_netns);
    let out = cp.cli(&all).await;
    assert_only_failure(
        &out,
        "capture rules",
        "127.0.0.1: rules that let traffic past the capture: -A OUTPUT -p tcp -m tcp --dport 5432 -j RETURN (ahead of the jump into SKEIN_OUTPUT)",
        "restart the workload",
        MESH_LINES,
    );
}

/// The capture's last outbound rule, as `iptables` takes it after `-A` or `-D`.
const REDIRECT_RULE: [&str; 7] = [
    "SKEIN_OUTPUT",
    "-p",
    "tcp",
    "-j",
    "REDIRECT",
    "--to-ports",
    "4140",
];

#[tokio::test]
async fn etcd_down_fails_the_store_line() {
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("skipped: etcd is not installed");
        return;
    }
    let mut etcd = skein_testkit::etcd::Etcd::start().unwrap();
    let (data, keys) = (
        TempDir::new("chk-data").unwrap(),
        TempDir::new("chk-key").unwrap(),
    );
    let key = skein_testkit::control::secrets_key_file(keys.path()).unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let cp = start_control(
        246,
        data.path(),
        &[
            "--store",
            &store,
            "--secrets-key-file",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let out = check_until(&cp, &[], "a healthy report", all_passed).await;
    assert_eq!(line(&report(&out.stdout), "store healthy").message, store);

    etcd.stop();
    let out = cp.cli(&["check"]).await;
    assert_only_failure(
        &out,
        "store healthy",
        &store,
        "etcdctl endpoint health",
        &others("store healthy"),
    );
}

#[tokio::test]
async fn without_root_the_kernel_checks_are_skipped_unless_asked_for() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run the check as another user");
        return;
    }
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "check",
        ])
        .args(args)
        .args(["--server", "127.0.0.1:1", "--data-dir", "/nonexistent"])
        .env("SKEIN_LOG", "warn");
        let out = cmd.output().expect("run skein check as nobody");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = as_nobody(&[]);
    assert_eq!(code, Some(1), "the control plane is unreachable: {text}");
    let lines = report(&text);
    for name in KERNEL_LINES {
        let l = line(&lines, name);
        assert_eq!(l.glyph, '○', "{text}");
        assert!(l.message.contains("needs root"), "{text}");
    }
    let (code, text) = as_nobody(&["--pre"]);
    assert_eq!(code, Some(1), "{text}");
    let lines = report(&text);
    assert_eq!(
        lines.len(),
        KERNEL_LINES.len(),
        "--pre: the kernel only: {text}"
    );
    assert!(lines
        .iter()
        .all(|l| l.glyph == '✘' && l.hint.contains(" check --pre") && l.hint.contains("sudo ")));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A `skein run` state entry under `state/skein-test/` for the workload 127.0.0.1 whose
/// namespace process `pid` holds.
fn write_run_entry(state: &Path, pid: u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let started: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let dir = state.join("skein-test");
    std::fs::create_dir_all(&dir).unwrap();
    let entry = serde_json::json!({
        "id": pid, "service": "default/cap", "address": "127.0.0.1", "veth": "none",
        "run": [pid, started], "holder": [pid, started], "netns": null,
    });
    std::fs::write(dir.join(format!("{pid}.json")), entry.to_string()).unwrap();
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ns = Netns {
            name: name.to_string(),
        };
        run(Command::new("ip").args(["netns", "add", name]));
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME ARGS…`, quiet.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .env("SKEIN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs ARGS inside; panics if it fails.
    fn run(&self, args: &[&str]) {
        let mut cmd = self.command(args);
        cmd.stderr(Stdio::piped());
        run(&mut cmd);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[track_caller]
fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child killed (and reaped) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
