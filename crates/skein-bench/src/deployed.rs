//! The deployed shape: the skein pair measured as it runs in production, against a
//! direct connection over the same kind of network, in the same run (root only).
//!
//! - **direct (namespaces)**: two network namespaces made here, `skbench-dc` (the load
//!   generator, 198.18.120.2) and `skbench-ds` (the application, 198.18.120.3), each
//!   with a veth on the bridge `skbench-d` (198.18.120.1/24);
//! - **skein (namespaces)**: the same two sides, each under `skein run` on the bridge
//!   `skbench-s` (198.18.121.0/24): the application as `skein run --service bench`, the
//!   load generator's namespace as `skein run --service loadgen -- sleep infinity`. The
//!   load tools call the Service's virtual IP (198.19.121.10); iptables in the client's
//!   namespace hands each connection to its proxy, which opens mutual TLS 1.3 (HTTP/2 for
//!   HTTP) to the application's proxy, which authorizes it (the mesh denies by default;
//!   one AuthorizationPolicy per port lets `loadgen` in) and passes it on. The proxies run
//!   as `skein run` starts them (as `nobody`, telemetry and tracing at their defaults) and
//!   join a `skein control` on this host (HTTP API 127.0.0.170, proxy API on every
//!   address, port 9981, which the namespaces reach on the bridge's address).
//!
//! The application is nginx on both (one worker; HTTP/1.1 on 8080 and HTTP/2 with prior
//! knowledge on 8081, both answering `200` with the backend's 1024-byte body), the bench
//! backend on 8082 for unary gRPC calls (nginx serves none), and the TCP sink on 9000. The load tools run inside the client namespace (`nsenter --net`).
//! Both shapes need root; [`supported`] says why not otherwise, and the run goes on
//! without them. The namespaces, veths, bridges and rules made here are removed when the
//! setup drops, and a run killed before that leaves nothing the next one does not remove
//! first (`skein run` cleans up its own the same way).

use crate::procs::Proc;
use crate::setups::{self, Env, Kind, Setup, SINK_PORT};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// nginx's HTTP/1.1 port.
const HTTP_PORT: u16 = 8080;
/// nginx's HTTP/2 (prior knowledge) port.
const H2_PORT: u16 = 8081;
/// The bench backend's port, for gRPC.
const GRPC_PORT: u16 = 8082;

/// The direct shape's bridge and network (198.18.120.0/24).
const DIRECT_BRIDGE: &str = "skbench-d";
const DIRECT_NET: [u8; 3] = [198, 18, 120];
/// The direct shape's namespaces, host-side veth names and last address octets.
const DIRECT_SIDES: [(&str, &str, u8); 2] = [
    ("skbench-dc", "skbench-dc0", 2),
    ("skbench-ds", "skbench-ds0", 3),
];

/// `skein run`'s bridge and network for the skein shape.
const SKEIN_BRIDGE: &str = "skbench-s";
const SKEIN_NETWORK: &str = "198.18.121.0/24";
/// The Mesh's virtual-IP network, and the bench Service's pinned address in it.
const SKEIN_VIPS: &str = "198.19.121.0/24";
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 121, 10);
/// The control plane's HTTP API address, and its proxy API port on every address.
pub(crate) const CONTROL_HOST: IpAddr = setups::ip(170);
const CONTROL_GRPC: u16 = 9981;
/// How long `skein run` may take until its proxy is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long `skein run` may take to stop its application and proxy and remove its
/// namespace after SIGTERM.
const RUN_GRACE: Duration = Duration::from_secs(20);

/// Why the deployed shape cannot run here, if it cannot.
pub fn supported() -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (namespaces, veths and iptables need it)".into());
    }
    for (tool, flag) in [("ip", "-V"), ("iptables", "--version"), ("nsenter", "-V")] {
        if !Command::new(tool)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Err(format!("`{tool}` cannot be run"));
        }
    }
    if !Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Err("no network namespace can be made here (`unshare --net true` failed)".into());
    }
    Ok(())
}

/// Set to `1` to leave the deployed shape out (e.g. for a `skein` binary without
/// `skein run`).
pub const SKIP_ENV: &str = "SKEIN_BENCH_NO_DEPLOYED";

/// A command (words split on spaces) that each `skein run` of the skein shape runs
/// under, e.g. `valgrind --tool=callgrind --trace-children=yes …` to profile the proxies
/// it starts (`bench/link-order`, with `--only deployed-idle`).
pub const RUN_WRAP_ENV: &str = "SKEIN_BENCH_RUN_WRAP";

/// `skein run` (`skein`), under [`RUN_WRAP_ENV`]'s command when it is set.
fn run_command(skein: &Path) -> Command {
    let wrap = std::env::var(RUN_WRAP_ENV).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        None => Command::new(skein),
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(skein);
            cmd
        }
    }
}

/// Whether [`SKIP_ENV`] asks to leave the deployed shape out.
pub fn skipped() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
}

fn direct_addr(last: u8) -> Ipv4Addr {
    let [a, b, c] = DIRECT_NET;
    Ipv4Addr::new(a, b, c, last)
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let what = format!("ip {}", args.join(" "));
    crate::procs::run_checked(Command::new("ip").args(args), &what)
}

/// The direct shape's namespaces, veths, bridge and forwarding rule, removed on drop.
struct DirectNet;

impl DirectNet {
    /// Makes the bridge, both namespaces and their veths, after removing what a killed
    /// run left.
    fn create() -> anyhow::Result<DirectNet> {
        Self::remove_all(true);
        let net = DirectNet;
        let gateway = format!("{}/24", direct_addr(1));
        ip(&["link", "add", DIRECT_BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &gateway, "dev", DIRECT_BRIDGE])?;
        ip(&["link", "set", DIRECT_BRIDGE, "up"])?;
        for (ns, veth, last) in DIRECT_SIDES {
            let addr = format!("{}/24", direct_addr(last));
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", veth, "master", DIRECT_BRIDGE, "up"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // A host that drops forwarded traffic would drop the bridge's too when its frames
        // go through iptables: let them through (removed with the rest).
        let bridged = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .is_ok_and(|v| v.trim() == "1");
        if bridged && !iptables(&forward_rule("-C")) {
            iptables(&forward_rule("-I"));
        }
        Ok(net)
    }

    /// Stops whatever runs in the namespaces (waiting until it is gone), then removes the
    /// veths, the namespaces, the bridge and every copy of the forwarding rule; `quiet`
    /// for the sweep of a killed run's leftovers.
    fn remove_all(quiet: bool) {
        for (ns, veth, _) in DIRECT_SIDES {
            let pids = || {
                Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            };
            for pid in pids() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pids().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = ip(&["link", "del", veth]);
            let _ = ip(&["netns", "del", ns]);
        }
        while iptables(&forward_rule("-D")) {}
        let removed = ip(&["link", "del", DIRECT_BRIDGE]);
        if !quiet {
            if let Err(e) = removed {
                eprintln!("skein-bench: {e:#}");
            }
        }
    }
}

/// Runs `iptables ARGS`; whether it succeeded.
fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn forward_rule(op: &str) -> Vec<&str> {
    vec![
        "-w",
        op,
        "FORWARD",
        "-i",
        DIRECT_BRIDGE,
        "-o",
        DIRECT_BRIDGE,
        "-j",
        "ACCEPT",
    ]
}

impl Drop for DirectNet {
    fn drop(&mut self) {
        Self::remove_all(false);
    }
}

/// Writes the application's nginx config and start script; returns the script's
/// arguments after `sh`: nginx in the foreground, the TCP sink and the gRPC backend
/// beside it.
fn app_command(env: &Env, tag: &str) -> anyhow::Result<Vec<String>> {
    let dir = env.dir.path();
    let conf = dir.join(format!("{tag}-nginx.conf"));
    let tmp = dir.join(format!("{tag}-nginx-tmp"));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::write(
        &conf,
        crate::nginx::app_config(dir, &format!("{tag}-nginx"), HTTP_PORT, H2_PORT),
    )
    .with_context(|| format!("cannot write {}", conf.display()))?;
    let script = dir.join("app.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n# The application: the TCP sink and the gRPC backend beside nginx in the \
         foreground.\n\
         \"$1\" tcp-sink --listen \"0.0.0.0:$2\" &\n\
         \"$1\" backend --listen \"0.0.0.0:$7\" &\n\
         exec \"$3\" -p \"$4\" -c \"$5\" -e \"$6\"\n",
    )
    .with_context(|| format!("cannot write {}", script.display()))?;
    let s = |p: &Path| p.display().to_string();
    Ok(vec![
        s(&script),
        s(&env.me),
        SINK_PORT.to_string(),
        s(&env.nginx),
        s(dir),
        s(&conf),
        s(&dir.join(format!("{tag}-nginx-error.log"))),
        GRPC_PORT.to_string(),
    ])
}

/// The direct shape: nginx and the sink in one namespace, the tools in the other.
pub async fn direct(env: &Env) -> anyhow::Result<Setup> {
    let net = DirectNet::create().context("cannot make the namespaces")?;
    let [(client_ns, _, _), (server_ns, _, server)] = DIRECT_SIDES;
    let server = IpAddr::V4(direct_addr(server));
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{server_ns}"))
        .args(["--", "sh"])
        .args(app_command(env, "direct-ns")?);
    let log = env.dir.path().join("direct-ns-app.log");
    let mut app = Proc::spawn(
        "direct (namespaces) nginx, gRPC backend and sink",
        cmd,
        &log,
    )?;
    for port in [HTTP_PORT, H2_PORT, GRPC_PORT, SINK_PORT] {
        setups::wait_listening(&mut app, SocketAddr::new(server, port)).await?;
    }
    Ok(Setup {
        kind: Kind::DirectNs,
        description: format!(
            "load generator in a network namespace → nginx in another, over veths on a \
             bridge ({}); {}",
            ipnet(DIRECT_NET),
            crate::nginx::version(&env.nginx)
        ),
        http: SocketAddr::new(server, HTTP_PORT),
        h2: Ok(SocketAddr::new(server, H2_PORT)),
        grpc: Ok(SocketAddr::new(server, GRPC_PORT)),
        tcp: Ok(SocketAddr::new(server, SINK_PORT)),
        handshake: Err("no hop between proxies".into()),
        proxies: Vec::new(),
        apps: vec![app],
        netns: Some(PathBuf::from(format!("/run/netns/{client_ns}"))),
        holds: Some(Box::new(net)),
    })
}

fn ipnet([a, b, c]: [u8; 3]) -> String {
    format!("{a}.{b}.{c}.0/24")
}

/// The bench's mesh: deny by default, one Service for the application's three ports at a
/// pinned virtual IP, one AuthorizationPolicy per port letting `loadgen` in.
fn resources() -> String {
    let allow_http = "rules: [{from: [{service: loadgen}], to: [{methods: [GET], paths: ['/*']}]}]";
    format!(
        "\
apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec: {{defaultPolicy: deny, serviceCIDRs: [{SKEIN_VIPS}]}}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: bench}}
spec:
  selector: {{app: bench}}
  addresses: [{SERVICE_VIP}]
  ports:
  - {{name: http, port: {HTTP_PORT}, protocol: http}}
  - {{name: h2, port: {H2_PORT}, protocol: http2}}
  - {{name: grpc, port: {GRPC_PORT}, protocol: grpc}}
  - {{name: sink, port: {SINK_PORT}, protocol: tcp}}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: bench-http}}
spec: {{targetRef: {{name: bench, port: {HTTP_PORT}}}, {allow_http}}}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: bench-h2}}
spec: {{targetRef: {{name: bench, port: {H2_PORT}}}, {allow_http}}}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: bench-grpc}}
spec: {{targetRef: {{name: bench, port: {GRPC_PORT}}}, rules: [{{from: [{{service: loadgen}}], to: [{{methods: [POST], paths: ['/bench.Bench/*']}}]}}]}}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: bench-tcp}}
spec: {{targetRef: {{name: bench, port: {SINK_PORT}}}, rules: [{{from: [{{service: loadgen}}]}}]}}
"
    )
}

/// One side under `skein run`: the process, its workload address, the namespace's path
/// and the proxy's process.
struct Side {
    run: Proc,
    address: Ipv4Addr,
    netns: PathBuf,
    proxy: Proc,
}

/// Starts `skein run --service SERVICE … -- COMMAND` and waits until its proxy is ready.
async fn run_side(
    env: &Env,
    token: &str,
    service: &str,
    ports: &[&str],
    command: &[String],
) -> anyhow::Result<Side> {
    let dir = env.dir.path();
    let proxy_log = dir.join(format!("skein-ns-{service}-proxy.log"));
    let mut cmd = run_command(&env.skein);
    cmd.args(["run", "--service", service])
        .arg("--control")
        .arg(format!("127.0.0.1:{CONTROL_GRPC}"))
        .args(["--bridge", SKEIN_BRIDGE, "--network", SKEIN_NETWORK])
        // The application and the tools are this harness's own (root's) binaries.
        .args(["--user", "root"])
        .arg("--proxy-log")
        .arg(&proxy_log);
    for p in ports {
        cmd.args(["--port", p]);
    }
    cmd.arg("--")
        .args(command)
        // In the environment, not argv: `ps` shows arguments to every user.
        .env("SKEIN_JOIN_TOKEN", token)
        .env("SKEIN_LOG", "warn")
        .env_remove("RUST_LOG")
        .env_remove("SKEIN_CONTROL")
        .env_remove("SKEIN_RUN_BRIDGE")
        .env_remove("SKEIN_RUN_NETWORK");
    let log = dir.join(format!("skein-ns-{service}-run.log"));
    let name = format!("skein run --service {service}");
    let mut run = Proc::spawn(&name, cmd, &log)?.with_grace(RUN_GRACE);
    let deadline = Instant::now() + READY_WITHIN;
    let (address, holder) = loop {
        run.check_alive()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(found) = ready(&text) {
            break found;
        }
        if Instant::now() > deadline {
            bail!("{name}: its proxy was not ready within {READY_WITHIN:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let netns = PathBuf::from(format!("/proc/{holder}/ns/net"));
    let pid = proxy_pid(&netns)
        .with_context(|| format!("{name}: no `skein proxy` process found in its namespace"))?;
    let proxy = Proc::adopt(
        &format!("skein (namespaces) {service} proxy"),
        pid,
        &proxy_log,
    );
    Ok(Side {
        run,
        address,
        netns,
        proxy,
    })
}

/// The workload's address and the namespace holder's pid, from `skein run`'s lines
/// `… at ADDR on BRIDGE (namespace of pid N) …` and `… proxy ready (metrics: …)`.
fn ready(log: &str) -> Option<(Ipv4Addr, u32)> {
    if !log.contains("proxy ready (metrics: http://") {
        return None;
    }
    let line = log.lines().find(|l| l.contains("(namespace of pid "))?;
    let address = line.split(" at ").nth(1)?.split(' ').next()?.parse().ok()?;
    let pid = line
        .split("(namespace of pid ")
        .nth(1)?
        .split(')')
        .next()?
        .parse()
        .ok()?;
    Some((address, pid))
}

/// The `skein proxy` process in the namespace at `netns` (what `skein run` started).
fn proxy_pid(netns: &Path) -> Option<u32> {
    let want = std::fs::read_link(netns).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let same = std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l == want);
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
            // `skein proxy … --advertise …`, or a wrapper's command line around it.
            same && args.contains(&&b"proxy"[..]) && args.contains(&&b"--advertise"[..])
        })
}

/// The skein shape: `skein control` on this host, the application and the load
/// generator's namespace each under `skein run`.
pub async fn skein(env: &Env) -> anyhow::Result<Setup> {
    let grpc = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), CONTROL_GRPC);
    let label = "skein (namespaces)";
    let control =
        setups::start_control(env, CONTROL_HOST, grpc, label, "skein-ns", &resources()).await?;
    let bench_token = control.token(env, "bench")?;
    let loadgen_token = control.token(env, "loadgen")?;
    let ports = [
        format!("{HTTP_PORT}/http"),
        format!("{H2_PORT}/http2"),
        format!("{GRPC_PORT}/grpc"),
        format!("{SINK_PORT}/tcp"),
    ];
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let mut app_args = vec!["sh".to_string()];
    app_args.extend(app_command(env, "skein-ns")?);
    let server = run_side(env, &bench_token, "bench", &ports, &app_args).await?;
    let sleep = ["sleep".to_string(), "infinity".to_string()];
    let client = run_side(env, &loadgen_token, "loadgen", &[], &sleep).await?;
    let vip = IpAddr::V4(SERVICE_VIP);
    let mut setup = Setup {
        kind: Kind::SkeinNs,
        description: format!(
            "the same shape with each side under `skein run` ({SKEIN_NETWORK}): the load \
             generator calls the Service's virtual IP, iptables hands the connection to its \
             proxy, which talks HTTP/2 over mutual TLS 1.3 to the application's proxy \
             (captured inbound, authorized: deny by default, one AuthorizationPolicy per \
             port), which passes it to nginx; proxies as `skein run` starts them"
        ),
        http: SocketAddr::new(vip, HTTP_PORT),
        h2: Ok(SocketAddr::new(vip, H2_PORT)),
        grpc: Ok(SocketAddr::new(vip, GRPC_PORT)),
        tcp: Ok(SocketAddr::new(vip, SINK_PORT)),
        handshake: Err("measured on the loopback pairs".into()),
        proxies: vec![client.proxy, server.proxy],
        // Stopped in this order: the caller, the application, then the control plane.
        apps: vec![client.run, server.run, control.proc],
        netns: Some(client.netns),
        holds: None,
    };
    // nginx may still be starting behind its proxy: wait for the first request to pass.
    let deadline = Instant::now() + Duration::from_secs(15);
    let me = env.me.clone();
    loop {
        match setup.probe(&me).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let admin = SocketAddr::new(server.address.into(), 4191);
    setups::authorized(admin, "default/bench-http", &setup.proxies[1])
        .await
        .context(label)?;
    Ok(setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_and_holder_come_from_skein_runs_lines() {
        let log = "skein run: default/bench at 198.18.121.2 on skbench-s (namespace of pid 4242); starting its proxy (log: /tmp/x)\n";
        assert_eq!(ready(log), None, "not ready before the proxy is");
        let log = format!("{log}skein run: proxy ready (metrics: http://198.18.121.2:4191/metrics); starting sh as uid 0\n");
        assert_eq!(ready(&log), Some((Ipv4Addr::new(198, 18, 121, 2), 4242)));
    }

    #[test]
    fn resources_pin_the_vip_and_allow_each_port() {
        let r = resources();
        let docs = skein_model::parse_documents(&r, "bench").expect("the bench mesh parses");
        assert_eq!(docs.len(), 6);
        assert!(r.contains("addresses: [198.19.121.10]"), "{r}");
        for port in [HTTP_PORT, H2_PORT, GRPC_PORT, SINK_PORT] {
            assert!(
                r.contains(&format!("targetRef: {{name: bench, port: {port}}}")),
                "{r}"
            );
        }
    }
}
