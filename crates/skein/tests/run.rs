//! `skein run` end to end, with real applications: a Python HTTP server, a Python TCP echo
//! server, `curl` and a Python client, each started with `skein run` in a network
//! namespace of its own on a host bridge, joined to a real `skein control`. And what it
//! leaves behind — nothing — after a normal exit, a crash, a SIGKILL of `skein run` (the
//! reaper cleans up) and a SIGKILL of both (the next start cleans up). And `skein proxy
//! --intercept`, which installs the same capture rules in a namespace someone else made.
//!
//! ```text
//! host: skein control (HTTP 127.0.0.1:*, gRPC 0.0.0.0:*), curl/TCP "from the host"
//!   │ bridge sktPPPPPa 198.18.N.1/24 (the gateway: the control plane, the DNS relay)
//!   ├─ skrA ─ netns: menu proxy 198.18.N.2 ─▶ python3 -m http.server 8080
//!   ├─ skrB ─ netns: echo proxy 198.18.N.3 ─▶ python3 TCP echo :7000
//!   └─ skrC ─ netns: client proxy 198.18.N.4 ◀─ curl http://menu:8080/menu
//! Services' virtual IPs (Mesh serviceCIDRs): 198.19.N.0/24
//! ```
//!
//! Network hygiene: only loopback and 198.18.0.0/15. Each test has a bridge of its own,
//! `skt<pid % 100000><letter>`, and a network 198.18.N.0/24 with N = 16 + 4·(pid % 60) +
//! the test's index (never 0–15, which other tests use), the Mesh's `serviceCIDRs` at
//! 198.19.N.0/24, and its state under a temporary `--state-dir` (never /run/skein).
//!
//! The two tests that run `skein run` hold [`SERIAL`] for their whole length: cargo runs
//! a file's tests on parallel threads, and the cleanup test compares host-wide listings
//! (the host's nat table, `skr*` veths, processes) before and after, which another test's
//! workloads would change meanwhile; the machine (2 cores) also runs them faster one at a
//! time. The `--intercept` test touches only a namespace of its own and runs alongside.
//!
//! Every test removes what it made even when it fails: [`Run`] stops its `skein run`
//! (SIGTERM, then SIGKILL) when dropped; [`Lab`], dropped last, waits for the reaper, then
//! kills whatever still runs in a recorded namespace, deletes recorded veths and the bridge.
//! Every wait is bounded.
//!
//! And a network partition between two namespaces under traffic (iptables drops inside one
//! endpoint's namespace every packet to and from the caller's): per-try timeouts send the
//! caller's requests to the other endpoint, outlier detection ejects the cut one, and it
//! serves again once the partition heals.
//!
//! Needs root, `ip`, `iptables`, `nsenter`, `python3` and `curl`; without them each test
//! says why it skipped and passes.

use skein_proxy::metrics::sum_samples;
use skein_testkit::control::{ControlProcess, TempDir};
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skein");
/// The bound on every wait for something to happen.
const WAIT: Duration = Duration::from_secs(30);
/// How long one `skein run` may take from start to exit (proxy start-up included).
const RUN_WITHIN: Duration = Duration::from_secs(60);

/// Held by the tests that start `skein run`, so they run one at a time (see the top).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// 1. Two applications call each other by name through their proxies.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn apps_call_each_other_by_name_through_their_proxies() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: skein run test, because {why}");
        return;
    }
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // Declared first so it drops last, after every `skein run` below.
    let lab = Lab::new('a', 0);
    let control = lab.control().await;
    let vip_net = lab.vip_net();
    lab.apply(
        &control,
        &format!(
            "apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  serviceCIDRs: [{vip_net}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: menu}}
spec:
  selector: {{app: menu}}
  ports: [{{port: 8080, protocol: http}}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 7000, protocol: tcp}}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: client}}
spec:
  selector: {{app: client}}
  ports: [{{port: 80}}]
"
        ),
    )
    .await;
    // Every Service got a virtual IP from the Mesh's serviceCIDRs.
    let services = control.cli(&["get", "services"]).await;
    let menu_vip = service_address(services.ok(), "menu");
    let echo_vip = service_address(services.ok(), "echo");
    for vip in [menu_vip, echo_vip] {
        assert!(lab.in_vip_net(vip), "{vip} is not in {vip_net}");
    }

    // The applications: files to serve, and a TCP echo server that logs every line.
    let www = lab.work.join("www");
    std::fs::create_dir(&www).unwrap();
    let menu_text = format!("soup of the day {}\n", std::process::id());
    std::fs::write(www.join("menu"), &menu_text).unwrap();
    let echo_py = lab.work.join("echo.py");
    std::fs::write(&echo_py, ECHO_SERVER).unwrap();

    let mut menu = Run::start(
        &lab,
        &control,
        "menu",
        &["8080/http"],
        &strings(&[
            "python3",
            "-u",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            &www.display().to_string(),
        ]),
    );
    let menu_ip = menu.ready().await;
    let mut echo = Run::start(
        &lab,
        &control,
        "echo",
        &["7000/tcp"],
        &strings(&["python3", "-u", &echo_py.display().to_string()]),
    );
    let echo_ip = echo.ready().await;
    assert_ne!(menu_ip, echo_ip);
    // The bridge keeps the address `skein run` gave it as workloads join. Left unset, a
    // bridge takes the lowest of its ports' addresses, and a workload's cached address
    // for the gateway goes stale: its control-plane stream and DNS are lost for seconds.
    let bridge_mac = lab.bridge_mac();
    assert_eq!(bridge_mac, format!("02:73:6b:12:{:02x}:01", lab.octet));
    // The applications listen before the clients call (a connection before then would be
    // refused by the application, not by the mesh).
    let menu_log = menu.clone_stderr();
    wait_for("the HTTP server listens", WAIT, || {
        menu.stdout().contains("Serving HTTP on")
    })
    .await;
    wait_for("the echo server listens", WAIT, || {
        echo.stdout().contains("echo server listening")
    })
    .await;

    // curl, inside a namespace of its own, calls `menu` by every name it has.
    for name in ["menu", "menu.default", "menu.default.svc.cluster.local"] {
        let url = format!("http://{name}:8080/menu");
        let out = Run::start(
            &lab,
            &control,
            "client",
            &[],
            &curl_args(&url, &["--write-out", "\nremote_ip=%{remote_ip}\n"]),
        )
        .finish()
        .await;
        assert_eq!(out.code, Some(0), "curl {url}: {out:#?}");
        assert!(out.stderr.contains("starting curl as uid 0"), "{out:#?}");
        assert_eq!(
            out.stdout,
            format!("{menu_text}\nremote_ip={menu_vip}\n"),
            "curl {url} reached the server at menu's virtual IP: {out:#?}"
        );
    }
    // A Python client resolves `echo`, connects by name and reads its line echoed back.
    let out = Run::start(
        &lab,
        &control,
        "client",
        &[],
        &python_client("echo", "hello from the client"),
    )
    .finish()
    .await;
    assert_eq!(out.code, Some(0), "python client: {out:#?}");
    assert_eq!(
        out.stdout,
        format!("resolved {echo_vip}\necho: hello from the client\n"),
        "{out:#?}"
    );

    // The callee proxies counted it all, under the client's verified identity.
    let menu_requests = [
        "direction=\"inbound\"",
        "tls=\"true\"",
        "src_namespace=\"default\"",
        "src_account=\"client\"",
        "dst_service=\"menu\"",
        "status_code=\"200\"",
    ];
    let client_id = "source=\"spiffe://skein.local/ns/default/sa/client\"";
    let menu_allowed = [client_id, "target=\"menu\"", "decision=\"allowed\""];
    let echo_edges = [
        "direction=\"inbound\"",
        "tls=\"true\"",
        "src_account=\"client\"",
        "dst_service=\"echo\"",
    ];
    let mut last = String::new();
    let counted = wait_for_async(
        "the menu proxy counts 3 requests from client",
        WAIT,
        async || {
            last = metrics(menu_ip).await;
            sum_samples(&last, "skein_requests_total", &menu_requests) == 3
                && sum_samples(&last, "skein_authz_decisions_total", &menu_allowed) == 3
        },
    )
    .await;
    assert!(counted, "menu proxy's metrics:\n{}", relevant(&last));
    let counted = wait_for_async("the echo proxy counts a connection", WAIT, async || {
        last = metrics(echo_ip).await;
        sum_samples(&last, "skein_tcp_edge_opened_total", &echo_edges) == 1
    })
    .await;
    assert!(counted, "echo proxy's metrics:\n{}", relevant(&last));
    // The HTTP server saw exactly those three requests, all through its proxy.
    let served = |log: &str| log.matches("\"GET /menu HTTP/1.1\" 200").count();
    wait_for("the HTTP server logged 3 requests", WAIT, || {
        served(&menu_log()) == 3
    })
    .await;

    // Strict mTLS, no bypass: the host, outside the mesh, connects straight to the
    // applications' ports. The capture hands the connections to the proxies, which refuse
    // them (and count them as refused plaintext).
    let refused = ["security=\"refused_plaintext\""];
    let refused_family = "skein_inbound_security_connections_total";
    let menu_refused_before = sum_samples(&metrics(menu_ip).await, refused_family, &refused);
    let echo_refused_before = sum_samples(&metrics(echo_ip).await, refused_family, &refused);
    let direct = curl_host(&format!("http://{menu_ip}:8080/direct-from-host")).await;
    assert!(direct.starts_with("HTTP/1.1 403"), "{direct}");
    assert!(
        direct
            .to_ascii_lowercase()
            .contains("skein-error: mtls_required"),
        "{direct}"
    );
    let reply = tcp_exchange(SocketAddr::new(echo_ip.into(), 7000), b"direct-from-host\n").await;
    assert!(
        !reply.contains("echo:"),
        "a direct connection reached the echo server: {reply:?}"
    );
    assert!(reply.contains("mtls_required"), "{reply:?}");
    let menu_refused = sum_samples(&metrics(menu_ip).await, refused_family, &refused);
    let echo_refused = sum_samples(&metrics(echo_ip).await, refused_family, &refused);
    assert_eq!(menu_refused, menu_refused_before + 1);
    assert_eq!(echo_refused, echo_refused_before + 1);
    // Once a later call through the mesh is in the applications' logs, the direct ones
    // would be too, had they arrived.
    let out = Run::start(
        &lab,
        &control,
        "client",
        &[],
        &curl_args("http://menu:8080/menu?after-direct", &[]),
    )
    .finish()
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), menu_text.as_str())
    );
    let out = Run::start(
        &lab,
        &control,
        "client",
        &[],
        &python_client("echo", "after-direct"),
    )
    .finish()
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    wait_for("the HTTP server logged the later call", WAIT, || {
        menu_log().contains("GET /menu?after-direct")
    })
    .await;
    wait_for("the echo server logged the later call", WAIT, || {
        echo.stdout().contains("echo got: after-direct")
    })
    .await;
    assert_eq!(
        lab.bridge_mac(),
        bridge_mac,
        "the bridge's address moved as workloads came and went"
    );
    assert!(!menu_log().contains("direct-from-host"), "{}", menu_log());
    assert!(
        !echo.stdout().contains("direct-from-host"),
        "{}",
        echo.stdout()
    );
    assert_eq!(served(&menu_log()), 3, "{}", menu_log());

    // SIGTERM reaches the applications; `skein run` exits with their status (killed by
    // signal 15: 128 + 15) and removes everything, the bridge last.
    for run in [&mut menu, &mut echo] {
        run.signal(libc::SIGTERM);
        let status = run.wait(WAIT).await;
        assert_eq!(status.code(), Some(143), "{}", run.stderr());
    }
    assert!(!lab.state_dir().exists(), "the state directory is left");
    assert!(
        !link_exists(&lab.bridge),
        "the bridge {} is left",
        lab.bridge
    );
    eprintln!(
        "apps_call_each_other_by_name_through_their_proxies took {:?}",
        started.elapsed()
    );
}

/// A threaded TCP echo server on 0.0.0.0:7000 that prints every line it receives.
const ECHO_SERVER: &str = r#"
import socketserver

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            print("echo got:", line.decode(errors="replace").rstrip(), flush=True)
            self.wfile.write(b"echo: " + line)
            self.wfile.flush()

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

server = Server(("0.0.0.0", 7000), Echo)
print("echo server listening", flush=True)
server.serve_forever()
"#;

/// `python3 -c …`: resolve `service`, connect to port 7000 by name, send `line`, print
/// the resolved address and the line that comes back.
fn python_client(service: &str, line: &str) -> Vec<String> {
    let script = format!(
        r#"
import socket
address = socket.gethostbyname("{service}")
s = socket.create_connection(("{service}", 7000), timeout=10)
s.sendall(b"{line}\n")
print("resolved", address)
print(s.makefile().readline(), end="")
"#
    );
    vec!["python3".into(), "-c".into(), script]
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `curl` as the application, never through a proxy from the environment.
fn curl_args(url: &str, extra: &[&str]) -> Vec<String> {
    ["curl", "-sS", "--noproxy", "*", "--max-time", "10"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain([url.to_string()])
        .collect()
}

/// The first address in the ADDRESSES column of `skein get services` for `name`.
fn service_address(table: &str, name: &str) -> Ipv4Addr {
    let row = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() > 2 && w[0] == "default" && w[1] == name)
        .unwrap_or_else(|| panic!("no service {name} in:\n{table}"));
    row[2]
        .split(',')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address for {name} in:\n{table}"))
}

/// A proxy's `/metrics`, fetched from the host ("" when it does not answer).
async fn metrics(ip: Ipv4Addr) -> String {
    let url = format!("http://{ip}:4191/metrics");
    let out = tool_output(
        "curl",
        &["-sS", "--noproxy", "*", "--max-time", "10", &url],
        Duration::from_secs(20),
    )
    .await;
    out.stdout
}

/// The lines of a metrics text a failure message needs.
fn relevant(text: &str) -> String {
    text.lines()
        .filter(|l| {
            [
                "skein_requests_total",
                "skein_authz",
                "skein_tcp_edge_opened",
                "skein_inbound",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `curl -i URL` from the host; what it printed (status line and headers included).
async fn curl_host(url: &str) -> String {
    let out = tool_output(
        "curl",
        &["-sS", "-i", "--noproxy", "*", "--max-time", "10", url],
        Duration::from_secs(20),
    )
    .await;
    format!("{}{}", out.stdout, out.stderr)
}

/// Connects to `addr` from the host, sends `data` and returns all it reads until the
/// peer closes (or 10 s pass).
async fn tcp_exchange(addr: SocketAddr, data: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(data).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timed out".into(),
    }
}

// ---------------------------------------------------------------------------------------
// 2. Nothing is left after a normal exit, a crash, or a SIGKILL.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cleanup_after_exit_crash_and_sigkill() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: skein run cleanup test, because {why}");
        return;
    }
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let lab = Lab::new('b', 1);
    let control = lab.control().await;
    lab.apply(
        &control,
        &format!(
            "apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  serviceCIDRs: [{}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: worker}}
spec:
  selector: {{app: worker}}
  ports: [{{port: 8080}}]
",
            lab.vip_net()
        ),
    )
    .await;

    // Before: what the host has.
    let nat_before = host_iptables(&["-t", "nat", "-S"]);
    let veths_before = skr_veths();
    eprintln!("before: skr* veths {veths_before:?}; host nat table:\n{nat_before}");
    assert!(
        !link_exists(&lab.bridge),
        "the bridge exists before the test"
    );
    let mut seen = Seen::default();

    // (a) Normal exit: the application exits 0, and as `skein run` returns, its entry,
    // veth, namespace processes, bridge and state directory are gone.
    let go = lab.work.join("go-a");
    let mut run = Run::start(&lab, &control, "worker", &[], &gated(&go, "exit 0"));
    let workload = lab.observe(&mut run).await;
    seen.add(&workload);
    std::fs::write(&go, "").unwrap();
    let status = run.wait(RUN_WITHIN).await;
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    lab.assert_removed(&workload, "after a normal exit");
    lab.assert_no_reaper_soon(&workload, "after a normal exit")
        .await;

    // (a2) Who the application runs as: the user `sudo` was run by, with that user's
    // identity and none of skein's credentials or privileges; without sudo and without
    // --user, skein run refuses to guess (root could undo its own capture).
    let mut as_user = Run::start_as(
        &lab,
        &control,
        "worker",
        &[],
        &strings(&[
            "sh",
            "-c",
            "echo uid=$(id -u) gid=$(id -g) token=${SKEIN_TOKEN:-none} nnp=$(grep NoNewPrivs /proc/self/status | tr -d '\t ')",
        ]),
        Some(65533),
    );
    let status = as_user.wait(RUN_WITHIN).await;
    let out = as_user.stdout();
    assert_eq!(status.code(), Some(0), "{}", as_user.stderr());
    assert!(
        out.contains("uid=65533 gid=65533 token=none nnp=NoNewPrivs:1"),
        "{out}"
    );
    seen.ids.push(as_user.pid());
    seen.veths.push(format!("skr{}", as_user.pid()));
    let refused = std::process::Command::new(BIN)
        .args(["run", "--service", "worker", "--", "true"])
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(125),
        "skein run's own failures exit 125"
    );
    assert!(
        stderr.contains("pass --user NAME (or --user root"),
        "{stderr}"
    );
    let refused = std::process::Command::new(BIN)
        .args([
            "run",
            "--service",
            "worker",
            "--user",
            "65534",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("include the proxy's group 1337 (or its user 65534)"),
        "{stderr}"
    );

    // (b) The application fails: its exit code is `skein run`'s, and nothing is left.
    for (how, expect) in [("exit 3", 3), ("kill -SEGV $$", 128 + libc::SIGSEGV)] {
        let go = lab.work.join(&format!("go-{expect}"));
        let mut run = Run::start(&lab, &control, "worker", &[], &gated(&go, how));
        let workload = lab.observe(&mut run).await;
        seen.add(&workload);
        std::fs::write(&go, "").unwrap();
        let status = run.wait(RUN_WITHIN).await;
        assert_eq!(status.code(), Some(expect), "`{how}`: {}", run.stderr());
        lab.assert_removed(&workload, &format!("after `{how}`"));
        lab.assert_no_reaper_soon(&workload, &format!("after `{how}`"))
            .await;
    }

    // (c) SIGKILL of `skein run` while its application runs: the reaper stops the proxy,
    // the holder and the application, deletes the veth, the entry and the bridge, and
    // exits.
    let sleep300 = strings(&["sleep", "300"]);
    let mut run = Run::start(&lab, &control, "worker", &[], &sleep300);
    let workload = lab.observe(&mut run).await;
    seen.add(&workload);
    let inside = processes_in(workload.inode);
    for wanted in [
        &["sleep", "300"][..],
        &["sleep", "infinity"],
        &["skein", "proxy"],
    ] {
        assert!(
            inside
                .iter()
                .any(|(_, cmd)| cmd.len() >= wanted.len()
                    && cmd.iter().zip(wanted).all(|(a, b)| a == b)),
            "no {wanted:?} in the namespace: {inside:?}"
        );
    }
    assert_eq!(
        reapers(&lab, workload.id).len(),
        1,
        "one reaper for {}",
        workload.id
    );
    run.signal(libc::SIGKILL);
    run.wait(WAIT).await;
    let gone = wait_for_async("the reaper removes everything", WAIT, async || {
        lab.leftovers(&workload).is_empty() && reapers(&lab, workload.id).is_empty()
    })
    .await;
    assert!(
        gone,
        "30 s after SIGKILL of skein run: {:?}; reapers {:?}",
        lab.leftovers(&workload),
        reapers(&lab, workload.id)
    );

    // (d) SIGKILL of both `skein run` and its reaper: the entry and the bridge stay until
    // the next `skein run` on the bridge removes them.
    let mut run = Run::start(&lab, &control, "worker", &[], &sleep300);
    let stale = lab.observe(&mut run).await;
    seen.add(&stale);
    let reaper = reapers(&lab, stale.id);
    assert_eq!(reaper.len(), 1, "one reaper for {}", stale.id);
    signal(reaper[0], libc::SIGKILL);
    // Dead before `skein run` is: a zombie until `skein run`, its parent, is gone too.
    wait_for("the reaper is dead", WAIT, || {
        reapers(&lab, stale.id).is_empty()
    })
    .await;
    run.signal(libc::SIGKILL);
    run.wait(WAIT).await;
    assert!(
        lab.entry_path(stale.id).exists(),
        "no one should have removed the entry yet"
    );
    assert!(
        link_exists(&lab.bridge),
        "no one should have removed the bridge yet"
    );
    let mut next = Run::start(&lab, &control, "worker", &[], &strings(&["true"]));
    let status = next.wait(RUN_WITHIN).await;
    let stderr = next.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let reaped = format!(
        "skein run: removing what an earlier run of default/worker at {} left behind",
        stale.address
    );
    assert!(stderr.contains(&reaped), "{stderr}");
    lab.assert_removed(&stale, "after the next start");
    let next_id = next.pid();
    let next_veth = format!("skr{next_id}");
    assert!(!lab.entry_path(next_id).exists());
    assert!(!link_exists(&next_veth), "{next_veth} is left");
    seen.veths.push(next_veth);
    seen.ids.push(next_id);
    wait_for("the next run's reaper exits", WAIT, || {
        reapers(&lab, next_id).is_empty()
    })
    .await;

    // After: the host as it was.
    let nat_after = host_iptables(&["-t", "nat", "-S"]);
    let veths_after = skr_veths();
    eprintln!("after: skr* veths {veths_after:?}; host nat table:\n{nat_after}");
    assert_eq!(nat_before, nat_after, "the host's nat table changed");
    for veth in &seen.veths {
        assert!(
            !veths_after.contains(veth),
            "{veth} is left: {veths_after:?}"
        );
    }
    for inode in &seen.inodes {
        assert_eq!(
            processes_in(*inode),
            vec![],
            "processes left in net:[{inode}]"
        );
    }
    assert_eq!(all_reapers(&lab), Vec::<u32>::new(), "reapers left");
    let filter = host_iptables(&["-S"]);
    assert!(
        !filter.contains(&lab.bridge),
        "a rule for the bridge is left:\n{filter}"
    );
    assert!(!link_exists(&lab.bridge));
    assert!(!lab.state_dir().exists());
    eprintln!(
        "cleanup_after_exit_crash_and_sigkill took {:?} ({} runs: {:?})",
        started.elapsed(),
        seen.ids.len(),
        seen.ids
    );
}

/// `sh -c` that waits (at most 30 s) for the file `go`, then runs `then`: the workload's
/// entry can be read while it runs, however fast `then` ends.
fn gated(go: &Path, then: &str) -> Vec<String> {
    let script = format!(
        "ulimit -c 0; i=0; while [ ! -e \"$1\" ]; do i=$((i+1)); [ $i -gt 600 ] && exit 99; sleep 0.05; done; {then}"
    );
    vec![
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        go.display().to_string(),
    ]
}

/// What the cleanup test saw, to check at the end that none of it is left.
#[derive(Default)]
struct Seen {
    ids: Vec<u32>,
    veths: Vec<String>,
    inodes: Vec<u64>,
}

impl Seen {
    fn add(&mut self, w: &Workload) {
        self.ids.push(w.id);
        self.veths.push(w.veth.clone());
        self.inodes.push(w.inode);
    }
}

// ---------------------------------------------------------------------------------------
// 3. `skein proxy --intercept` in a namespace someone else made.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn intercept_installs_and_uninstalls_in_a_namespace_someone_else_made() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: skein proxy --intercept test, because {why}");
        return;
    }
    let started = Instant::now();
    let ns = NamedNetns::create(&format!("skein-ic-{}", std::process::id()));
    let dir = TempDir::new("intercept").unwrap();
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        "workload: {name: shop-1, service: shop}
inbound: {listen: '0.0.0.0:4143', ports: [{port: 8080, protocol: http}]}
outbound: {listen: '127.0.0.1:4140'}
admin: {listen: '127.0.0.1:4191'}
dns: {}
",
    )
    .unwrap();
    let no_outbound = dir.join("no-outbound.yaml");
    std::fs::write(
        &no_outbound,
        "workload: {name: shop-1, service: shop}
inbound: {listen: '0.0.0.0:4143', ports: []}
admin: {listen: '127.0.0.1:4191'}
",
    )
    .unwrap();
    let config = config.display().to_string();
    let skein_ns = async |args: &[&str]| {
        let mut all = vec!["netns", "exec", &ns.name, BIN, "proxy"];
        all.extend(args);
        tool_output("ip", &all, Duration::from_secs(30)).await
    };
    let nat = || ns.iptables(&["-t", "nat", "-S"]);

    // A configuration without a transparent listener cannot be captured, and changes
    // nothing.
    let nat_empty = nat();
    let out = skein_ns(&["--intercept", "-c", &no_outbound.display().to_string()]).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("outbound.listen is not set"),
        "{out:#?}"
    );
    assert_eq!(nat(), nat_empty);

    // Someone else's rule, there before Skein's.
    let theirs = "-A OUTPUT -d 198.18.255.1/32 -j RETURN";
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "198.18.255.1",
        "-j",
        "RETURN",
    ]);
    assert!(nat().contains(theirs), "{}", nat());

    let out = skein_ns(&["--intercept", "-c", &config]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout
            .contains("iptables -t nat -A OUTPUT -j SKEIN_OUTPUT"),
        "it prints the rules: {out:#?}"
    );
    let rules = nat();
    for wanted in [
        "-N SKEIN_OUTPUT",
        "-N SKEIN_INBOUND",
        "-A OUTPUT -j SKEIN_OUTPUT",
        "-A PREROUTING -j SKEIN_INBOUND",
        "-A SKEIN_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A SKEIN_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
        "-A SKEIN_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
        "-A SKEIN_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
        "-A SKEIN_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        theirs,
    ] {
        assert!(
            rules.lines().any(|l| l == wanted),
            "missing {wanted:?} in:\n{rules}"
        );
    }
    // The proxy's own connections return before anything is redirected.
    let chain: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A SKEIN_OUTPUT"))
        .collect();
    assert!(chain[0].contains("--gid-owner 1337 -j RETURN"), "{rules}");

    // Twice: still one copy.
    let out = skein_ns(&["--intercept", "-c", &config]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let again = nat();
    assert_eq!(again, rules, "a second install changed the rules");
    let jumps = again
        .lines()
        .filter(|l| *l == "-A OUTPUT -j SKEIN_OUTPUT")
        .count();
    assert_eq!(jumps, 1, "{again}");

    // Uninstall (no config needed): Skein's chains and jumps go, the other rule stays.
    let out = skein_ns(&["--intercept", "--uninstall"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let after = nat();
    assert!(!after.contains("SKEIN_"), "{after}");
    assert!(after.lines().any(|l| l == theirs), "{after}");
    // Nothing left to remove is not an error.
    let out = skein_ns(&["--intercept", "--uninstall"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(nat(), after);
    eprintln!(
        "intercept_installs_and_uninstalls_in_a_namespace_someone_else_made took {:?}",
        started.elapsed()
    );
}

/// A namespace made with `ip netns add`, deleted when dropped.
struct NamedNetns {
    name: String,
}

impl NamedNetns {
    fn create(name: &str) -> NamedNetns {
        // A test killed before its cleanup leaves the same name behind.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        NamedNetns { name: name.into() }
    }

    /// `iptables ARGS` inside; its output, panicking when it fails.
    fn iptables(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables", "-w", "5"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

// ---------------------------------------------------------------------------------------
// 4. A network partition between two namespaces, under traffic.
// ---------------------------------------------------------------------------------------

/// A load generator for inside a namespace: GETs `URL` every 20 ms for `SECONDS` (each on
/// a new connection, at most 5 s), then prints `{"ok": N, "failed": [[t, why], …]}`.
const LOAD_PY: &str = r#"
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
start = time.time()
ok, failed = 0, []
print("load started", file=sys.stderr, flush=True)
while time.time() - start < seconds:
    t = round(time.time() - start, 2)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            ok += 1
    except Exception as e:
        failed.append([t, str(e)])
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}), flush=True)
"#;

/// `iptables ARGS` in the network namespace of `holder` (a process inside it).
fn netns_iptables(holder: u32, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{holder}/ns/net"))
        .arg("iptables")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables {args:?} in {holder}'s namespace: {out:?}"
    );
}

/// Drops every packet between the namespace of `holder` and `peer`, both ways, while it
/// lives; the rules go when it drops (and with the namespace, whatever happens).
struct Partition {
    holder: u32,
    peer: String,
}

impl Partition {
    fn cut(holder: u32, peer: Ipv4Addr) -> Partition {
        let peer = peer.to_string();
        netns_iptables(holder, &["-I", "INPUT", "-s", &peer, "-j", "DROP"]);
        netns_iptables(holder, &["-I", "OUTPUT", "-d", &peer, "-j", "DROP"]);
        Partition { holder, peer }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for (chain, flag) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", self.holder))
                .args(["iptables", "-D", chain, flag, &self.peer, "-j", "DROP"])
                .output();
        }
    }
}

#[tokio::test]
async fn a_partition_between_namespaces_is_cut_by_timeouts_ejected_and_healed() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: skein run test, because {why}");
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new('c', 2);
    let control = lab.control().await;
    let vip_net = lab.vip_net();
    // Each try may take 300 ms; a 504 goes again to another endpoint; round robin, so the
    // cut endpoint keeps being picked until outlier detection ejects it.
    lab.apply(
        &control,
        &format!(
            "apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  serviceCIDRs: [{vip_net}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: soup}}
spec:
  selector: {{app: soup}}
  ports: [{{port: 8080, protocol: http}}]
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: client}}
spec:
  selector: {{app: client}}
  ports: [{{port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: soup}}
spec:
  parentRefs: [{{name: soup, port: 8080}}]
  rules:
  - backendRefs: [{{name: soup, port: 8080}}]
    timeouts: {{request: 3s, backendRequest: 300ms}}
    retry: {{attempts: 1, codes: [504], backoff: 1ms}}
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: soup}}
spec:
  targetRef: {{name: soup}}
  loadBalancer: round-robin
  outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 1s}}
"
        ),
    )
    .await;
    let www = lab.work.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("bowl"), "soup\n").unwrap();
    let server = |lab: &Lab, control: &ControlProcess| {
        Run::start(
            lab,
            control,
            "soup",
            &["8080/http"],
            &strings(&[
                "python3",
                "-u",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
                "--directory",
                &www.display().to_string(),
            ]),
        )
    };
    let mut cut = server(&lab, &control);
    let cut_workload = lab.observe(&mut cut).await;
    let mut other = server(&lab, &control);
    other.ready().await;
    for run in [&cut, &other] {
        wait_for("the HTTP server listens", WAIT, || {
            run.stdout().contains("Serving HTTP on")
        })
        .await;
    }
    let cut_holder = lab.entry(cut_workload.id).unwrap()["holder"][0]
        .as_u64()
        .unwrap() as u32;

    // The caller: 12 s of GETs to soup by name, from a namespace of its own.
    let load_py = lab.work.join("load.py");
    std::fs::write(&load_py, LOAD_PY).unwrap();
    let mut client = Run::start(
        &lab,
        &control,
        "client",
        &[],
        &strings(&[
            "python3",
            "-u",
            &load_py.display().to_string(),
            "http://soup:8080/bowl",
            "12",
        ]),
    );
    let client_ip = client.ready().await;
    wait_for("the load starts", WAIT, || {
        client.stderr().contains("load started")
    })
    .await;
    let served = |run: &Run| run.stderr().matches("\"GET /bowl").count();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every packet between the caller's namespace and one endpoint's is dropped for 3 s.
    let partition = Partition::cut(cut_holder, client_ip);
    let cut_at = served(&cut);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = served(&cut) - cut_at;
    drop(partition);
    let healed_at = served(&cut);
    // What the caller's proxy did about it: tries timed out and sent elsewhere, and the
    // cut endpoint ejected.
    let caller = metrics(client_ip).await;
    let retried = sum_samples(&caller, "skein_route_retries_total", &["result=\"sent\""]);
    let ejected = sum_samples(&caller, "skein_outlier_ejections_total", &[]);

    let out = client.finish().await;
    assert_eq!(out.code, Some(0), "the load generator: {out:#?}");
    let result: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
    let ok = result["ok"].as_u64().unwrap();
    let failed = result["failed"].as_array().unwrap();
    let after_heal = served(&cut) - healed_at;
    eprintln!(
        "partition between namespaces: {ok} ok, {} failed; {retried} tries timed out and went elsewhere, {ejected} ejections; the cut endpoint served {during} during the partition and {after_heal} after it healed, the other {}",
        failed.len(),
        served(&other)
    );
    assert!(
        retried >= 1,
        "timeouts fired and the tries went elsewhere:\n{}",
        relevant(&caller)
    );
    assert!(
        ejected >= 1,
        "outlier detection ejected the cut endpoint:\n{}",
        relevant(&caller)
    );
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(ok > 150, "the load ran: {ok}");
    assert_eq!(during, 0, "nothing crossed the partition");
    assert!(
        after_heal > 5,
        "the cut endpoint served again once healed: {after_heal}"
    );
}

// ---------------------------------------------------------------------------------------
// The lab: a control plane, a bridge, a state directory; and `skein run` processes.
// ---------------------------------------------------------------------------------------

/// One test's bridge, network, state directory and scratch directory. Dropped last: waits
/// for the reaper, then removes by force whatever is still recorded, and the bridge.
struct Lab {
    bridge: String,
    octet: u8,
    state: TempDir,
    work: TempDir,
    data: TempDir,
}

/// A workload as its state entry records it.
#[derive(Debug, Clone)]
struct Workload {
    id: u32,
    address: Ipv4Addr,
    veth: String,
    inode: u64,
}

impl Lab {
    /// Bridge `skt<pid % 100000><letter>` on 198.18.N.0/24, N = 16 + 4·(pid % 60) + index.
    fn new(letter: char, index: u8) -> Lab {
        assert!(index < 4);
        let pid = std::process::id();
        let bridge = format!("skt{}{letter}", pid % 100_000);
        // A test process killed before its cleanup, with the same PID, left it behind.
        if link_exists(&bridge) {
            let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        }
        Lab {
            bridge,
            octet: 16 + 4 * (pid % 60) as u8 + index,
            state: TempDir::new(&format!("run-state-{letter}")).unwrap(),
            work: TempDir::new(&format!("run-work-{letter}")).unwrap(),
            data: TempDir::new(&format!("run-control-{letter}")).unwrap(),
        }
    }

    fn network(&self) -> String {
        format!("198.18.{}.0/24", self.octet)
    }

    /// The bridge's MAC address, as the kernel reports it.
    fn bridge_mac(&self) -> String {
        let path = Path::new("/sys/class/net")
            .join(&self.bridge)
            .join("address");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    fn vip_net(&self) -> String {
        format!("198.19.{}.0/24", self.octet)
    }

    fn in_vip_net(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == [198, 19, self.octet]
    }

    /// The bridge's state directory.
    fn state_dir(&self) -> PathBuf {
        self.state.join(&self.bridge)
    }

    fn entry_path(&self, id: u32) -> PathBuf {
        self.state_dir().join(format!("{id}.json"))
    }

    fn entry(&self, id: u32) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.entry_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A control plane whose proxy API listens on every address (the namespaces reach it
    /// on the bridge's gateway).
    async fn control(&self) -> ControlProcess {
        let http = SocketAddr::from(([127, 0, 0, 1], 0));
        let grpc = SocketAddr::from(([0, 0, 0, 0], 0));
        ControlProcess::start(Path::new(BIN), self.data.path(), http, grpc, &[])
            .await
            .unwrap()
    }

    async fn apply(&self, control: &ControlProcess, yaml: &str) {
        let file = self.work.join("resources.yaml");
        std::fs::write(&file, yaml).unwrap();
        control
            .cli(&["apply", "-f", &file.display().to_string()])
            .await
            .ok();
    }

    /// Waits until `run`'s proxy is ready and returns its entry, checking that the
    /// namespace it records holds the holder.
    async fn observe(&self, run: &mut Run) -> Workload {
        let address = run.ready().await;
        let id = run.pid();
        let entry = self
            .entry(id)
            .unwrap_or_else(|| panic!("no entry {} while it runs", self.entry_path(id).display()));
        let workload = Workload {
            id,
            address: entry["address"].as_str().unwrap().parse().unwrap(),
            veth: entry["veth"].as_str().unwrap().to_string(),
            inode: entry["netns"]
                .as_u64()
                .expect("the entry records the namespace"),
        };
        assert_eq!(workload.address, address, "{entry}");
        assert_eq!(workload.veth, format!("skr{id}"), "{entry}");
        assert!(
            link_exists(&workload.veth),
            "{} is missing while it runs",
            workload.veth
        );
        let holder = entry["holder"][0].as_u64().unwrap() as u32;
        assert_eq!(netns_inode(holder), Some(workload.inode), "{entry}");
        workload
    }

    /// What of `w` is still there, in words (empty: nothing).
    fn leftovers(&self, w: &Workload) -> Vec<String> {
        let mut left = Vec::new();
        if self.entry_path(w.id).exists() {
            left.push(format!("entry {}", self.entry_path(w.id).display()));
        }
        if link_exists(&w.veth) {
            left.push(format!("veth {}", w.veth));
        }
        let inside = processes_in(w.inode);
        if !inside.is_empty() {
            left.push(format!("processes in net:[{}]: {inside:?}", w.inode));
        }
        if link_exists(&self.bridge) {
            left.push(format!("bridge {}", self.bridge));
        }
        if self.state_dir().exists() {
            left.push(format!("state directory {}", self.state_dir().display()));
        }
        left
    }

    #[track_caller]
    fn assert_removed(&self, w: &Workload, when: &str) {
        let left = self.leftovers(w);
        assert!(left.is_empty(), "{when}, left behind: {left:?}");
    }

    async fn assert_no_reaper_soon(&self, w: &Workload, when: &str) {
        let gone = wait_for_async("the reaper exits", WAIT, async || {
            reapers(self, w.id).is_empty()
        })
        .await;
        assert!(
            gone,
            "{when}, the reaper still runs: {:?}",
            reapers(self, w.id)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Runs are stopped before this; their reapers finish the job.
        let deadline = Instant::now() + WAIT;
        while self.state_dir().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Last resort: whatever is still recorded, by force.
        for pid in all_reapers(self) {
            signal(pid, libc::SIGKILL);
        }
        if let Ok(dir) = std::fs::read_dir(self.state_dir()) {
            for file in dir.filter_map(|e| e.ok()) {
                let Ok(text) = std::fs::read_to_string(file.path()) else {
                    continue;
                };
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if let Some(inode) = entry["netns"].as_u64() {
                    for (pid, _) in processes_in(inode) {
                        signal(pid, libc::SIGKILL);
                    }
                }
                if let Some(veth) = entry["veth"].as_str() {
                    if veth.starts_with("skr") && link_exists(veth) {
                        eprintln!("cleanup: deleting the veth {veth} left behind");
                        let _ = Command::new("ip").args(["link", "del", veth]).output();
                    }
                }
            }
        }
        if link_exists(&self.bridge) {
            eprintln!("cleanup: deleting the bridge {} left behind", self.bridge);
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .output();
        }
    }
}

/// A `skein run` child process; its stdout and stderr (the application's too) collected
/// on threads. Stopped when dropped: SIGTERM, then SIGKILL.
struct Run {
    child: Child,
    what: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished `skein run` did.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// `skein run --service SERVICE --port … -- COMMAND` on the lab's bridge, joined to
    /// `control` with a token it creates with the admin token.
    fn start(
        lab: &Lab,
        control: &ControlProcess,
        service: &str,
        ports: &[&str],
        command: &[String],
    ) -> Run {
        Run::start_as(lab, control, service, ports, command, None)
    }

    /// As [`Run::start`]; with `sudo_uid`, as `sudo` from that user would start it (the
    /// application runs as that user), else with `--user root`.
    fn start_as(
        lab: &Lab,
        control: &ControlProcess,
        service: &str,
        ports: &[&str],
        command: &[String],
        sudo_uid: Option<u32>,
    ) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--service", service]);
        for p in ports {
            cmd.args(["--port", p]);
        }
        cmd.arg("--control")
            .arg(format!("127.0.0.1:{}", control.grpc.port()))
            .args(["--bridge", &lab.bridge, "--network", &lab.network()])
            .arg("--state-dir")
            .arg(lab.state.path())
            .arg("--server")
            .arg(control.http.to_string())
            .arg("--data-dir")
            .arg(lab.data.path());
        if sudo_uid.is_none() {
            cmd.args(["--user", "root"]);
        }
        cmd.arg("--")
            .args(command)
            .current_dir(lab.work.path())
            // Only the arguments count; the application runs as this (root) process.
            .env_remove("SKEIN_SERVER")
            .env_remove("SKEIN_TOKEN")
            .env_remove("SKEIN_DATA_DIR")
            .env_remove("SKEIN_JOIN_TOKEN")
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("RUST_LOG")
            .env("SKEIN_LOG", "info");
        if let Some(uid) = sudo_uid {
            cmd.env("SUDO_UID", uid.to_string())
                .env("SUDO_GID", uid.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("skein run --service {service} -- {}", command.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Run {
            child,
            what,
            stdout,
            stderr,
            readers,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reader of its stderr that does not borrow it.
    fn clone_stderr(&self) -> impl Fn() -> String {
        let stderr = self.stderr.clone();
        move || stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for "proxy ready" and returns the workload's address from the line before.
    async fn ready(&mut self) -> Ipv4Addr {
        let deadline = Instant::now() + RUN_WITHIN;
        loop {
            let text = self.stderr();
            if text.contains("skein run: proxy ready (metrics: http://") {
                // "skein run: default/menu at 198.18.9.2 on BRIDGE (namespace of pid N); …"
                let address = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("skein run: ")?
                            .split_once(" at ")?
                            .1
                            .split(' ')
                            .next()
                    })
                    .and_then(|a| a.parse().ok());
                return address.unwrap_or_else(|| panic!("{}: no address in:\n{text}", self.what));
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                panic!(
                    "{} exited ({status}) before its proxy was ready:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: proxy not ready within {RUN_WITHIN:?}:\n{text}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `limit`) for it to exit.
    async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}:\n{}",
                self.what,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for it to exit on its own; everything it printed.
    async fn finish(mut self) -> Finished {
        let status = self.wait(RUN_WITHIN).await;
        Finished {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Waits (at most 10 s) until the pipes are read to their end, so that all the output
    /// is in.
    fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Appends everything `pipe` yields to `into`, line by line, on a thread.
fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut text = into.lock().unwrap_or_else(|p| p.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    })
}

// ---------------------------------------------------------------------------------------
// The host: processes, namespaces, links, rules.
// ---------------------------------------------------------------------------------------

/// Why this machine cannot run the tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it is not running as root (namespaces and iptables need root)".into());
    }
    for (tool, version_flag) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("python3", "--version"),
        ("curl", "--version"),
        ("nsenter", "--version"),
    ] {
        match Command::new(tool).arg(version_flag).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Some(format!("`{tool} {version_flag}` failed: {out:?}")),
            Err(e) => return Some(format!("`{tool}` cannot be run ({e}); install it")),
        }
    }
    None
}

#[derive(Debug)]
struct ToolOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `program ARGS`, killed after `limit`.
async fn tool_output(program: &str, args: &[&str], limit: Duration) -> ToolOutput {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => ToolOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("cannot run {program}: {e}"),
        Err(_) => panic!("`{program} {args:?}` did not finish within {limit:?}"),
    }
}

/// `iptables -w 5 ARGS` in the host's namespace.
fn host_iptables(args: &[&str]) -> String {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "iptables {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The host's interfaces named `skr*` (the host ends of `skein run` veths), sorted.
fn skr_veths() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("skr"))
        .collect();
    names.sort();
    names
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of a process's network namespace (none for a zombie or a gone process).
fn netns_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// A process's arguments (empty for a zombie or a gone process).
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The live processes in the network namespace `inode`, with their arguments.
fn processes_in(inode: u64) -> Vec<(u32, Vec<String>)> {
    pids()
        .into_iter()
        .filter(|p| netns_inode(*p) == Some(inode))
        .map(|p| (p, cmdline(p)))
        .collect()
}

/// Live `skein run-reaper` processes for the lab's state directory (any id).
fn all_reapers(lab: &Lab) -> Vec<u32> {
    let state = lab.state.path().display().to_string();
    pids()
        .into_iter()
        .filter(|p| {
            let args = cmdline(*p);
            args.iter().any(|a| a == "run-reaper")
                && args
                    .windows(2)
                    .any(|w| w[0] == "--state-dir" && w[1] == state)
        })
        .collect()
}

/// Live `skein run-reaper` processes for the workload `id` of the lab's state directory.
fn reapers(lab: &Lab, id: u32) -> Vec<u32> {
    all_reapers(lab)
        .into_iter()
        .filter(|p| {
            cmdline(*p)
                .windows(2)
                .any(|w| w[0] == "--id" && w[1] == id.to_string())
        })
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Polls `check` every 50 ms; panics naming `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 100 ms; false after `limit` (the caller says what was wrong).
async fn wait_for_async(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("timed out after {limit:?} waiting for: {what}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
