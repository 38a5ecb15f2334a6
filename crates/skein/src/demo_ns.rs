//! `skein demo` as root: the same sample application, each application in a network
//! namespace of its own, started with `skein run` (docs/getting-started.md), so that
//! nothing is configured for the mesh: the frontend calls `http://restaurant:8080` and
//! `ledger:9000` by name, and every TCP connection in and out of each namespace goes
//! through its proxy.
//!
//! In order: a control plane in this process (its proxy API on every address, so that the
//! namespaces reach it on the bridge's address) → the Services, with virtual IPs from
//! 198.19.N.0/24 → one `skein run … -- skein demo-app NAME` per application on the bridge
//! `skein-demoN`, network 198.18.N.0/24, each waited for until its proxy is ready → live
//! counts from the proxies' own `/metrics` until `--duration` or Ctrl-C → each `skein run`
//! stopped (it removes its namespace, rules and proxy, and the last one the bridge).

use crate::demo::{
    frontend_handler, menu, serve_http, serve_ledger, start_control, stop, Load, APP_PORT,
    LEDGER_PORT, RESOURCES,
};
use anyhow::{bail, Context};
use http::Request;
use hyper::body::Incoming;
use skein_control::server::RunningControl;
use skein_proxy::connect::{H1Pool, TcpConnector};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// The admin port of every proxy `skein run` starts.
const ADMIN_PORT: u16 = 4191;
/// How long one application may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One application of the demo: its service, the port it serves (and how).
struct App {
    name: &'static str,
    port: Option<&'static str>,
}

const APPS: [App; 4] = [
    App {
        name: "ledger",
        port: Some("9000/tcp"),
    },
    App {
        name: "restaurant",
        port: Some("8080/http"),
    },
    App {
        name: "frontend",
        port: Some("8080/http"),
    },
    App {
        name: "traffic",
        port: None,
    },
];

/// Why the demo cannot use namespaces here, if it cannot: it needs root, `ip`, `iptables`
/// and a kernel that makes network namespaces.
pub fn supported() -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for (tool, flag) in [("ip", "-V"), ("iptables", "--version")] {
        let ran = crate::netns::system(tool).arg(flag).output();
        if !ran.is_ok_and(|o| o.status.success()) {
            return Err(format!("`{tool}` cannot be run"));
        }
    }
    match crate::netns::spawn_holder() {
        Ok((mut holder, _ns)) => {
            let _ = holder.kill();
            let _ = holder.wait();
            Ok(())
        }
        Err(e) => Err(format!("no network namespace can be made here ({e:#})")),
    }
}

/// Runs the demo with each application under `skein run`.
pub async fn run(duration: Duration, rps: u32, net: u8) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("skein-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let network = format!("198.18.{net}.0/24");
    println!("skein demo: starting a meshed sample application, each application in a network namespace of its own (skein run) on {network}");
    let result = run_in(&dir, duration, rps, net, &network).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &Path,
    duration: Duration,
    rps: u32,
    net: u8,
    network: &str,
) -> anyhow::Result<()> {
    let control_ip = IpAddr::from([127, 0, net, 1]);
    // The proxy API on every address: the namespaces reach it on the bridge's.
    let grpc = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let control = start_control(dir, control_ip, grpc).await?;
    let mesh = RESOURCES.replace(
        "spec: {defaultPolicy: deny, tracing: {samplingPercent: 10}}",
        &format!("spec: {{defaultPolicy: deny, tracing: {{samplingPercent: 10}}, serviceCIDRs: [198.19.{net}.0/24]}}"),
    );
    anyhow::ensure!(
        mesh != RESOURCES,
        "the demo's Mesh did not take serviceCIDRs"
    );
    control
        .registry
        .apply(skein_model::parse_documents(&mesh, "demo resources")?)
        .await?;
    let target = format!(
        "--server {} --data-dir {}",
        control.http,
        dir.join("control").display()
    );
    println!(
        "  control   HTTP API http://{}  proxies connect to port {} on the bridge's address",
        control.http,
        control.grpc.port()
    );
    println!("            try: skein get services {target}");
    crate::demo::print_dashboard(&control, dir).await?;

    let mut children: Vec<(&str, Child)> = Vec::new();
    let result = async {
        let mut addresses = Vec::new();
        for app in &APPS {
            let (child, address) = start(dir, &control, app, net, network, rps, duration).await?;
            children.push((app.name, child));
            addresses.push((app.name, address));
            println!(
                "  app       {:<10} at {address} in its own namespace; its proxy's metrics at http://{address}:{ADMIN_PORT}/metrics",
                app.name
            );
        }
        let at = |name: &str| addresses.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
        let restaurant = at("restaurant").context("no restaurant")?;
        println!("            the frontend calls http://restaurant:8080/menu and ledger:9000 by name; nothing in it knows the mesh");
        println!("  capture   every TCP connection in and out goes through the workload's proxy; try: curl http://{restaurant}:8080/menu (refused: mutual TLS only)");
        println!("  signals   try: skein stat services {target}");
        println!("                 skein edges {target}");
        println!(
            "  traffic   {rps} req/s to frontend for {}; press Ctrl-C to stop\n",
            skein_model::duration::format(duration)
        );
        report(dir, duration, |name| at(name)).await
    }
    .await;
    println!("\nskein demo: stopping the applications (each skein run removes its namespace, rules and proxy)");
    // Callers first, so that nobody calls a stopped service.
    for (_, child) in children.iter_mut().rev() {
        stop(child).await;
    }
    control.shutdown().await;
    result
}

/// Starts `skein run` for `app` and waits until its proxy is ready; returns the child and
/// the workload's address.
async fn start(
    dir: &Path,
    control: &RunningControl,
    app: &App,
    net: u8,
    network: &str,
    rps: u32,
    duration: Duration,
) -> anyhow::Result<(Child, Ipv4Addr)> {
    let (token, _) = control
        .pki
        .create_token("default", app.name, Duration::from_secs(600), 1)
        .await?;
    let exe = std::env::current_exe().context("cannot find the skein binary")?;
    let log_path = dir.join(format!("{}.log", app.name));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--service", app.name])
        .arg("--control")
        .arg(format!("127.0.0.1:{}", control.grpc.port()))
        .args([
            "--bridge",
            &format!("skein-demo{net}"),
            "--network",
            network,
        ])
        // The demo's applications are skein's own code, and its binary may be where the
        // user who ran sudo cannot read it (root's ~/.cargo/bin).
        .args(["--user", "root"]);
    if let Some(port) = app.port {
        cmd.args(["--port", port]);
    }
    cmd.arg("--")
        .arg(&exe)
        .args(["demo-app", app.name])
        .arg("--rps")
        .arg(rps.to_string())
        .arg("--duration")
        .arg(skein_model::duration::format(duration))
        // In the environment, not argv: `ps` shows arguments to every user.
        .env("SKEIN_JOIN_TOKEN", token.reveal())
        .env("SKEIN_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl and setpgid are async-signal-safe. The child stops if the demo is
    // killed, and a terminal's Ctrl-C reaches the demo alone, which stops the children in
    // order.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start skein run for {}", app.name))?;
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(address) = ready_address(&text) {
            return Ok((child, address));
        }
        if let Some(status) = child.try_wait()? {
            bail!("skein run for {} exited ({status}):\n{text}", app.name);
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready within {READY_WITHIN:?}:\n{text}",
                app.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workload's address from `skein run`'s line `… proxy ready (metrics:
/// http://ADDR:4191/metrics) …`.
fn ready_address(log: &str) -> Option<Ipv4Addr> {
    let rest = log.split("proxy ready (metrics: http://").nth(1)?;
    rest.split(':').next()?.parse().ok()
}

/// Every two seconds until `duration` or Ctrl-C: what the traffic application counted,
/// and what the proxies counted on their own `/metrics`.
async fn report(
    dir: &Path,
    duration: Duration,
    at: impl Fn(&str) -> Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let admin = |name: &str| at(name).map(|a| SocketAddr::new(a.into(), ADMIN_PORT));
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep_until((started + duration).into()) => break,
            _ = tick.tick() => {}
        }
        let traffic = std::fs::read_to_string(dir.join("traffic.log")).unwrap_or_default();
        let counted = traffic
            .lines()
            .rev()
            .find(|l| l.starts_with("traffic "))
            .unwrap_or("traffic (no requests yet)")
            .to_string();
        println!(
            "  [{:>4}s] {counted}  | inbound requests seen by proxies:{}",
            started.elapsed().as_secs(),
            crate::demo::proxy_counts(&admin).await
        );
    }
    let traffic = std::fs::read_to_string(dir.join("traffic.log")).unwrap_or_default();
    if let Some(last) = traffic.lines().rev().find(|l| l.starts_with("traffic ")) {
        println!("  total: {}", last.trim_start_matches("traffic "));
    }
    if let Some(last) = traffic.lines().rev().find(|l| l.starts_with("denied ")) {
        println!("  denied: {}", last.trim_start_matches("denied "));
    }
    Ok(())
}

/// `skein demo-app NAME`: one of the demo's applications, inside its namespace. None of
/// them knows the mesh: they listen on every address and call others by name.
pub async fn app(name: &str, rps: u32, duration: Duration) -> anyhow::Result<()> {
    let any = |port| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
    match name {
        "restaurant" => {
            let listener = TcpListener::bind(any(APP_PORT)).await?;
            serve_http(listener, Arc::new(|_req| async { Ok(menu()) })).await;
        }
        "ledger" => serve_ledger(TcpListener::bind(any(LEDGER_PORT)).await?).await,
        "frontend" => {
            let upstreams = (
                resolve("restaurant", APP_PORT).await?,
                resolve("ledger", LEDGER_PORT).await?,
            );
            let pool = Arc::new(H1Pool::new(Arc::new(TcpConnector::default())));
            let listener = TcpListener::bind(any(APP_PORT)).await?;
            serve_http(
                listener,
                Arc::new(move |req: Request<Incoming>| {
                    frontend_handler(pool.clone(), upstreams, req.headers().clone())
                }),
            )
            .await;
        }
        "traffic" => traffic(rps, duration).await?,
        other => bail!("no demo application {other:?}; frontend, restaurant, ledger or traffic"),
    }
    Ok(())
}

/// A name, resolved as any application resolves it (here: by the workload's proxy).
async fn resolve(name: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((name, port))
        .await
        .with_context(|| format!("cannot resolve {name}"))?
        .next()
        .with_context(|| format!("{name} resolves to no address"))
}

/// Sends `rps` requests a second to `http://frontend:8080/` for `duration` (and, every
/// two seconds, one to the restaurant, which the mesh denies), printing what it counted
/// every two seconds.
async fn traffic(rps: u32, duration: Duration) -> anyhow::Result<()> {
    let mut load = Load::new(resolve("frontend", APP_PORT).await?, rps)
        .probing(resolve("restaurant", APP_PORT).await?);
    let started = Instant::now();
    let mut tick = tokio::time::interval(load.every());
    let mut report = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until((started + duration).into()) => break,
            _ = tick.tick() => load.fire(),
            _ = report.tick() => println!("traffic {}", load.counts()),
        }
    }
    println!("traffic {}", load.counts());
    if let Some(denials) = load.denials() {
        println!("denied {denials}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_skein_runs_ready_line() {
        let log = "skein run: default/ledger at 198.18.77.2 on skein-demo77 (namespace of pid 9); starting its proxy (log: shown if it fails)\nskein run: proxy ready (metrics: http://198.18.77.2:4191/metrics); starting skein as uid 0\n";
        assert_eq!(ready_address(log), Some(Ipv4Addr::new(198, 18, 77, 2)));
        assert_eq!(
            ready_address("skein run: default/ledger at 198.18.77.2"),
            None
        );
    }
}
