//! The control plane's store failing under it, with traffic flowing through the mesh:
//!
//! - the embedded store's filesystem full, then read-only (a real ext4 filesystem in an
//!   image the test loop-mounts, filled with a file, then made read-only by ext4's own
//!   error path, as the kernel does to a disk that fails): every write is refused saying
//!   what was wrong and what to do, reads and the proxies' sessions (configuration,
//!   certificate renewals) go on, no request fails, writes work again without a restart
//!   once space is back, and after the filesystem is repaired (`e2fsck`) a control plane
//!   started afresh on the same file finds exactly what was written. Needs root (it
//!   mounts); skipped otherwise, saying why.
//!
//! - etcd's leader SIGKILLed under a control plane connected to it (a real three-member
//!   cluster): the control plane moves to a member that answers, writes are accepted again
//!   once the two left elect a leader, and are pushed to the proxies; no request fails.
//!
//! - etcd down altogether for 12 s, then back: writes are refused naming etcd and where,
//!   reads go on, no request fails; once etcd is back, writes are accepted and pushed
//!   without a restart.
//!
//! - etcd's member under the control plane frozen (SIGSTOP: connections open, nothing
//!   answering): the control plane leaves it for a member that answers, writes and the
//!   registry's watch with it, and the write is pushed; no request fails.
//!
//! Addresses 127.0.22.80–82 and 84–92; the mount, processes and directories go with drop guards.

use http::{Request, StatusCode};
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::{body_bytes, h1};
use skein_testkit::control::{control_config, ControlProcess, TempDir};
use skein_testkit::{HttpBackend, MeshSpec};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skein");

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 22, last])
}

/// An ext4 filesystem in an image file (`errors=remount-ro`, as hosts mount their disks),
/// loop-mounted at a directory for the test; unmounted (lazily, so that a process still
/// inside cannot keep it, and the loop device goes with it) when dropped.
struct Ext4 {
    image: PathBuf,
    dir: PathBuf,
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

impl Ext4 {
    /// Makes a `megabytes` filesystem in `image` and mounts it at `dir`. `Err` says why it
    /// cannot be done here (not root, no loop devices, no mkfs.ext4).
    fn make(image: &Path, dir: &Path, megabytes: u64) -> Result<Ext4, String> {
        let file = std::fs::File::create(image).map_err(|e| e.to_string())?;
        file.set_len(megabytes << 20).map_err(|e| e.to_string())?;
        // No blocks reserved for root: the test (root) fills it the way anyone would.
        run(
            "mkfs.ext4",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(image),
        )?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let disk = Ext4 {
            image: image.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&self) -> Result<(), String> {
        run(
            "mount",
            Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&self.image)
                .arg(&self.dir),
        )?;
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| e.to_string())
    }

    /// What the kernel does to a filesystem that met an error: remounts it read-only at
    /// once (files open for writing included), through ext4's own error path.
    fn fail(&self) {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let device = source.rsplit('/').next().unwrap().to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{device}/trigger_fs_error"),
            "skein store fault test",
        )
        .unwrap();
    }

    /// Unmounts, repairs with `e2fsck` (as an operator would after an error) and mounts
    /// again.
    fn repair(&self) {
        run("umount", Command::new("umount").arg(&self.dir)).unwrap();
        // e2fsck exits 1 when it fixed something (the error flag the test raised).
        let status = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "e2fsck found what it could not fix: {status}"
        );
        self.mount().unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the filesystem holding `dir` with one file until it refuses more; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.flush();
    path
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: {port}, protocol: http}}]}}\n"
    )
}

/// A Service with 200 KB of annotations.
fn bulky(name: &str, port: u16) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, annotations: {{ballast: {}}}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: {port}, protocol: http}}]}}\n",
        "x".repeat(200_000)
    )
}

/// GETs through the caller's HTTP proxy listener every 5 ms until `end`: (ok, failures).
fn steady(via: SocketAddr, port: u16, end: Instant) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut sender = h1(via).await.unwrap();
        let (mut ok, mut failed) = (0, Vec::new());
        while Instant::now() < end {
            if sender.is_closed() {
                sender = h1(via).await.unwrap();
            }
            let req = Request::get(format!("http://web:{port}/steady"))
                .body(empty())
                .unwrap();
            match sender.send_request(req).await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    body_bytes(resp).await.unwrap();
                    ok += 1;
                }
                Ok(resp) => failed.push(format!("{}", resp.status())),
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

/// The Services `skein get services` lists, by name.
async fn services(control: &ControlProcess) -> Vec<String> {
    let out = control.cli(&["get", "services", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    let mut names: Vec<String> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Certificate requests the proxy's renewal loop made that were issued.
fn renewals(proxy: &RunningProxy) -> u64 {
    let text = proxy.ctx.metrics.encode();
    skein_proxy::metrics::sum_samples(
        &text,
        "skein_identity_cert_requests_total",
        &["result=\"issued\""],
    )
}

/// `web`'s application and proxy, and a caller's proxy (both in this process), joined to
/// `control`, with traffic flowing through them.
struct Pair {
    backend: HttpBackend,
    server: RunningProxy,
    client: RunningProxy,
    /// web's port.
    port: u16,
    /// The caller's HTTP proxy listener.
    via: SocketAddr,
}

/// A [`Pair`]: web's application and proxy on 127.0.22.`first`, the caller's proxy on the
/// next address.
async fn pair(control: &ControlProcess, first: u8) -> Pair {
    let backend = HttpBackend::start(SocketAddr::new(ip(first), 0))
        .await
        .unwrap();
    let port = backend.addr().port();
    control
        .cli_with(
            &["apply", "-f", "-"],
            &control.data_dir,
            Some(&service("web", port)),
        )
        .await
        .ok();
    let spec = MeshSpec {
        client_ip: ip(first + 1),
        server_ip: ip(first),
        ..MeshSpec::new(1, 1)
    }
    .service("web", backend.addr(), Protocol::Http);
    let admin = control.token();
    let mut server_cfg = spec.server_config();
    server_cfg.workload.name = "web-1".into();
    server_cfg.workload.service = "web".into();
    server_cfg.inbound.listen = SocketAddr::new(ip(first), 4143);
    let (http, grpc) = (control.http, control.grpc);
    let joined = |cfg: &ProxyConfig, service: &'static str| {
        let (admin, advertise) = (admin.clone(), cfg.inbound.listen);
        async move { control_config(http, &admin, grpc, advertise, service).await }
    };
    let server = RunningProxy::start_with_control(
        server_cfg.clone(),
        Some(joined(&server_cfg, "web").await.unwrap()),
    )
    .await
    .unwrap();
    let mut client_cfg: ProxyConfig = spec.client_config(server_cfg.inbound.listen);
    client_cfg.destinations.clear();
    client_cfg.outbound.upstreams.clear();
    client_cfg.inbound.listen = SocketAddr::new(ip(first + 1), 4143);
    let client = RunningProxy::start_with_control(
        client_cfg.clone(),
        Some(joined(&client_cfg, "client").await.unwrap()),
    )
    .await
    .unwrap();
    client.discover(&["web"]).await.unwrap();
    let via = client.addrs.http_proxy.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, _) = steady(via, port, Instant::now() + Duration::from_millis(50))
            .await
            .unwrap();
        if ok > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no traffic through the pair");
    }
    Pair {
        backend,
        server,
        client,
        port,
        via,
    }
}

/// Whether the caller's proxy holds an endpoint of `service`, after asking for it.
async fn holds(client: &RunningProxy, service: &str) -> bool {
    let _ = client.discover(&[service]).await;
    client
        .ctx
        .config()
        .destinations
        .iter()
        .any(|d| d.service == service)
}

#[tokio::test]
async fn a_full_or_read_only_disk_refuses_writes_saying_why_and_loses_nothing() {
    skein_testkit::init_tracing();
    let dir = TempDir::new("store-faults").unwrap();
    let data = dir.join("data");
    let disk = match Ext4::make(&dir.join("disk.img"), &data, 32) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: cannot make a filesystem to fill ({why}); run as root");
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
    };
    let mut control = ControlProcess::start(
        Path::new(BIN),
        &data,
        SocketAddr::new(ip(80), 0),
        SocketAddr::new(ip(80), 0),
        &[],
    )
    .await
    .unwrap();
    let apply = |yaml: String| {
        let control = &control;
        async move {
            control
                .cli_with(&["apply", "-f", "-"], &control.data_dir, Some(&yaml))
                .await
        }
    };
    // Certificates live 8 s, so both proxies renew while the disk is full.
    apply(
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec: {workloadCertTTL: 8s}\n"
            .into(),
    )
    .await
    .ok();

    let Pair {
        backend: _backend,
        server,
        client,
        port,
        via,
    } = pair(&control, 81).await;
    let traffic = steady(via, port, Instant::now() + Duration::from_secs(36));

    // The disk fills: writes are refused, saying so, and nothing else stops.
    let filler = fill(&data);
    let renewed = (renewals(&client), renewals(&server));
    // What room is left inside the store's file still takes writes; large resources
    // (200 KB of annotations each) soon need the file to grow, and are refused.
    let mut accepted = vec!["web".to_string()];
    let refused = loop {
        let name = format!("bulk-{}", accepted.len());
        assert!(accepted.len() < 40, "a full disk never refused a write");
        let out = apply(bulky(&name, port)).await;
        if out.success() {
            accepted.push(name);
            continue;
        }
        break name;
    };
    eprintln!(
        "on a full disk, {} writes fit in the store's file, then one was refused",
        accepted.len() - 1
    );
    for attempt in 1..=2 {
        let out = apply(bulky(&refused, port)).await;
        let said = out.failed();
        eprintln!("a write to a full disk, attempt {attempt}: {said}");
        assert!(
            said.contains("store.redb") && said.contains("full: free space"),
            "attempt {attempt}: {said}"
        );
        assert!(said.contains("Nothing was written"), "{said}");
    }
    accepted.sort();
    assert_eq!(services(&control).await, accepted, "reads go on");
    // Long enough for both 8 s certificates to renew: the control plane issues them from
    // what it holds, without writing.
    let deadline = Instant::now() + Duration::from_secs(15);
    while renewals(&client) <= renewed.0 || renewals(&server) <= renewed.1 {
        assert!(
            Instant::now() < deadline,
            "certificates were not renewed while the disk was full"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Space returns: writes work again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = apply(bulky(&refused, port)).await;
        if out.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume once space was back: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    accepted.push(refused);
    accepted.sort();
    assert_eq!(services(&control).await, accepted);

    // The filesystem meets an error and the kernel makes it read-only: the same, saying
    // so.
    disk.fail();
    for attempt in 1..=2 {
        let out = apply(service("third", port)).await;
        let said = out.failed();
        eprintln!("a write to a read-only filesystem, attempt {attempt}: {said}");
        assert!(
            said.contains("store.redb") && said.contains("read-only: the kernel does this"),
            "{said}"
        );
    }
    assert_eq!(services(&control).await, accepted, "reads go on");

    let (ok, failed) = traffic.await.unwrap();
    eprintln!("traffic through it all: {ok} ok, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(ok > 1000, "traffic flowed: {ok}");

    // Nothing corrupted: once the filesystem is repaired and mounted again, a control plane
    // started afresh on the file holds what was written and nothing that was refused.
    control.signal("KILL").unwrap();
    control.wait_exit(Duration::from_secs(10)).await.unwrap();
    disk.repair();
    let fresh = ControlProcess::start(
        Path::new(BIN),
        &data,
        SocketAddr::new(ip(80), 0),
        SocketAddr::new(ip(80), 0),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(services(&fresh).await, accepted);
    drop(fresh);
    drop(control);
    client.shutdown().await;
    server.shutdown().await;
    drop(disk);
}

/// `skein apply` of `yaml`.
async fn apply(control: &ControlProcess, yaml: &str) -> skein_testkit::control::CliOutput {
    control
        .cli_with(&["apply", "-f", "-"], &control.data_dir, Some(yaml))
        .await
}

/// A control plane on etcd at `endpoints` (in this order), on 127.0.22.`host`.
async fn control_on_etcd(host: u8, endpoints: &[String], dirs: &TempDir) -> ControlProcess {
    let key = skein_testkit::control::secrets_key_file(dirs.path()).unwrap();
    let data = dirs.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = format!("etcd://{}", endpoints.join(","));
    ControlProcess::start(
        Path::new(BIN),
        &data,
        SocketAddr::new(ip(host), 0),
        SocketAddr::new(ip(host), 0),
        &[
            "--store",
            &store,
            "--secrets-key-file",
            key.to_str().unwrap(),
        ],
    )
    .await
    .unwrap()
}

/// Applies Service `name` until it is accepted (within `limit`); how long that took, and
/// the last refusal before it.
async fn apply_until_accepted(
    control: &ControlProcess,
    name: &str,
    port: u16,
    limit: Duration,
) -> (Duration, Option<String>) {
    let start = Instant::now();
    let mut refusal = None;
    loop {
        let out = apply(control, &service(name, port)).await;
        if out.success() {
            return (start.elapsed(), refusal);
        }
        assert!(
            start.elapsed() < limit,
            "{name} not accepted within {limit:?}: {}",
            out.stderr
        );
        refusal = Some(out.stderr.trim().to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the caller's proxy holds `service` (a change pushed to it).
async fn until_held(client: &RunningProxy, service: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while !holds(client, service).await {
        assert!(
            start.elapsed() < limit,
            "the caller's proxy never received {service}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn etcds_leader_killed_under_the_control_plane_loses_nothing() {
    skein_testkit::init_tracing();
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        assert!(std::env::var_os("CI").is_none(), "CI installs etcd");
        return;
    }
    let mut cluster = skein_testkit::etcd::EtcdCluster::start(3).unwrap();
    let leader = cluster
        .leader()
        .expect("a three-member cluster elects a leader");
    // The control plane talks to the leader: the member about to die.
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader);
    let dirs = TempDir::new("etcd-leader").unwrap();
    let control = control_on_etcd(84, &endpoints, &dirs).await;
    let Pair {
        backend: _backend,
        server,
        client,
        port,
        via,
    } = pair(&control, 85).await;
    let traffic = steady(via, port, Instant::now() + Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.member(leader).stop(); // SIGKILL
    let killed = Instant::now();
    let (took, refusal) =
        apply_until_accepted(&control, "after", port, Duration::from_secs(30)).await;
    eprintln!(
        "etcd's leader killed: writes accepted again {took:?} later (the last refusal: {refusal:?})"
    );
    if let Some(refusal) = &refusal {
        assert!(refusal.contains("etcd"), "a refusal names etcd: {refusal}");
    }
    let pushed = until_held(&client, "after", Duration::from_secs(20)).await;
    eprintln!(
        "... and pushed to the caller's proxy {:?} after the kill ({pushed:?} after the write)",
        killed.elapsed()
    );
    assert!(cluster.leader().is_some(), "the other two elected a leader");
    assert_eq!(services(&control).await, ["after", "web"]);

    let (ok, failed) = traffic.await.unwrap();
    eprintln!("traffic through it: {ok} ok, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(ok > 500, "traffic flowed: {ok}");
    assert!(
        control.log().contains("moved to"),
        "the control plane moved to a live member: {}",
        control.log()
    );
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn etcd_down_then_back_refuses_writes_saying_why_and_loses_nothing() {
    skein_testkit::init_tracing();
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        assert!(std::env::var_os("CI").is_none(), "CI installs etcd");
        return;
    }
    let mut etcd = skein_testkit::etcd::Etcd::start().unwrap();
    let dirs = TempDir::new("etcd-down").unwrap();
    let control = control_on_etcd(87, &[etcd.endpoint()], &dirs).await;
    let Pair {
        backend: _backend,
        server,
        client,
        port,
        via,
    } = pair(&control, 88).await;
    let traffic = steady(via, port, Instant::now() + Duration::from_secs(24));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // etcd goes away entirely for 12 s.
    etcd.stop();
    let down = Instant::now();
    let out = apply(&control, &service("during", port)).await;
    let said = out.failed();
    eprintln!("a write with etcd down: {said}");
    assert!(
        said.contains(&etcd.endpoint()) && said.contains("etcd"),
        "the refusal names etcd and where: {said}"
    );
    assert_eq!(services(&control).await, ["web"], "reads go on");
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(down.elapsed())).await;
    etcd.restart().unwrap();
    let back = Instant::now();
    let (took, _) = apply_until_accepted(&control, "after", port, Duration::from_secs(30)).await;
    let pushed = until_held(&client, "after", Duration::from_secs(20)).await;
    eprintln!(
        "etcd back: writes accepted {took:?} later, pushed to the caller's proxy {:?} after it returned",
        back.elapsed().min(took + pushed)
    );
    assert_eq!(services(&control).await, ["after", "web"]);

    let (ok, failed) = traffic.await.unwrap();
    eprintln!("traffic through it: {ok} ok, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(ok > 500, "traffic flowed: {ok}");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_etcd_member_that_stops_answering_is_left_for_one_that_works() {
    skein_testkit::init_tracing();
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        assert!(std::env::var_os("CI").is_none(), "CI installs etcd");
        return;
    }
    let mut cluster = skein_testkit::etcd::EtcdCluster::start(3).unwrap();
    let leader = cluster
        .leader()
        .expect("a three-member cluster elects a leader");
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader);
    let dirs = TempDir::new("etcd-hang").unwrap();
    let control = control_on_etcd(90, &endpoints, &dirs).await;
    let Pair {
        backend: _backend,
        server,
        client,
        port,
        via,
    } = pair(&control, 91).await;
    let traffic = steady(via, port, Instant::now() + Duration::from_secs(40));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The member the control plane uses freezes (SIGSTOP): its connections stay open and
    // its port takes new ones, but nothing answers; nothing fails fast.
    cluster.member(leader).pause();
    let frozen = Instant::now();
    let (took, refusal) =
        apply_until_accepted(&control, "after", port, Duration::from_secs(35)).await;
    eprintln!(
        "etcd member frozen: writes accepted again {took:?} later (the last refusal: {refusal:?})"
    );
    // The write reaches the proxies only through the registry's watch, which must have
    // left the frozen member too.
    until_held(&client, "after", Duration::from_secs(20)).await;
    eprintln!(
        "... and pushed to the caller's proxy {:?} after the freeze",
        frozen.elapsed()
    );
    assert_eq!(services(&control).await, ["after", "web"]);
    let (ok, failed) = traffic.await.unwrap();
    eprintln!("traffic through it: {ok} ok, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(
        control.log().contains("moved to"),
        "the control plane moved to another member: {}",
        control.log()
    );
    cluster.member(leader).resume();
    client.shutdown().await;
    server.shutdown().await;
}
