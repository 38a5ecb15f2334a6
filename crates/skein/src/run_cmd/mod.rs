//! `skein run`: one workload, meshed, with nothing to configure: a network namespace of its
//! own wired to a host bridge, capture rules in it, its proxy joined to the control plane,
//! and the application started inside as the invoking user.
//!
//! In order: check → lock the bridge's state and reap stale entries → bridge, address,
//! holder (the namespace) and reaper → veth, addresses and routes → capture rules → DNS
//! relay → proxy (joined with a token), until `/ready` → application → forward signals
//! until it exits → stop the proxy → remove everything → exit with the application's
//! status. [`state`] records each step so that the reaper (after a SIGKILL) or the next
//! start removes what this process could not.
//!
//! Every child is started from the main thread with a parent-death signal, because Linux
//! sends it when the *thread* that forked the child ends.

pub mod relay;
pub mod state;

use crate::capture::{self, Capture};
use crate::cli::Target;
use crate::netns;
use anyhow::{bail, Context};
use skein_model::ProxyConfig;
use state::{Dir, Entry};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workload's ports inside its namespace.
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;
const DNS_PORT: u16 = 15053;
/// The user the proxy runs as (`nobody`), with `--proxy-gid` as its group.
const PROXY_UID: u32 = 65534;
/// How long the proxy may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// `skein run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The service this workload belongs to (its join token must be for it).
    #[arg(long)]
    pub service: String,
    /// The service's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The control plane's proxy API (gRPC). A loopback address means the control plane on
    /// this host, which the workload reaches on the bridge's gateway address: so it must
    /// listen on every address (`skein control`'s default, 0.0.0.0:9991).
    #[arg(long, env = "SKEIN_CONTROL", default_value = "127.0.0.1:9991")]
    pub control: String,
    /// A join token for the service (`skein token create --service NAME`). Without one,
    /// `skein run` creates a single-use token with the admin token (--token, SKEIN_TOKEN or
    /// DATA_DIR/admin.token).
    #[arg(long, env = "SKEIN_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Read the join token from this file (`ps` shows arguments and `sudo VAR=…`; a file
    /// readable by root only shows nothing).
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// A port the application serves, with its protocol: `8080`, `8080/http`; one of
    /// detect (default), http, http2, grpc, tcp. Repeatable.
    #[arg(long = "port", value_name = "PORT[/PROTOCOL]")]
    pub ports: Vec<String>,
    /// Run the application as this user (name or uid). Default: the user who ran sudo;
    /// without sudo it must be given (`--user root` runs it as root, which could undo its
    /// own capture).
    #[arg(long)]
    pub user: Option<String>,
    /// Let the application gain privileges through set-user-ID programs or file
    /// capabilities (default: refused, since `sudo` inside could undo the capture).
    #[arg(long)]
    pub allow_new_privileges: bool,
    /// The host bridge workloads attach to; made when missing, removed with its last
    /// workload.
    #[arg(long, env = "SKEIN_RUN_BRIDGE", default_value = "skein0")]
    pub bridge: String,
    /// The bridge's network: the host takes its first address, workloads the next free
    /// ones. Pick one no real network on this host uses.
    #[arg(long, env = "SKEIN_RUN_NETWORK", default_value = "10.213.0.0/24")]
    pub network: String,
    /// Outbound TCP to these ports bypasses the proxy (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound traffic to these IPv4 networks bypasses the proxy (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Inbound TCP to these ports reaches the application directly (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Resolvers for names outside the mesh (default: the host's /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
    /// The group id the proxy runs with; its connections are never captured.
    #[arg(long, default_value_t = capture::DEFAULT_PROXY_GID)]
    pub proxy_gid: u32,
    /// Keep the proxy's log in this file (default: a file removed on exit, shown when the
    /// proxy fails).
    #[arg(long)]
    pub proxy_log: Option<PathBuf>,
    /// Where the bridges' state is kept.
    #[arg(long, env = "SKEIN_RUN_STATE_DIR", default_value = state::ROOT, hide = true)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub target: Target,
    /// The application and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A network given as `A.B.C.D/LEN`.
fn parse_network(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (net, len) = capture::parse_cidr(text).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
    if !(16..=29).contains(&len) || !text.contains('/') {
        bail!("--network {text}: give an IPv4 network from /16 to /29, e.g. 10.213.0.0/24");
    }
    Ok((net, len))
}

/// What a running workload holds: removed by [`Workload::remove`].
struct Workload {
    dir: Dir,
    bridge: String,
    entry: Entry,
    holder: Child,
    ns: File,
}

impl Workload {
    /// Stops what runs in the namespace and removes the veth, the entry and (if last) the
    /// bridge.
    fn remove(mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        state::stop_processes(&self.dir, &self.entry, Duration::from_secs(2));
        drop(self.ns);
        if let Ok(lock) = self.dir.lock() {
            self.dir.forget(&lock, &self.entry);
            self.dir.remove_bridge_if_unused(&lock, &self.bridge);
        }
    }
}

/// Runs the workload; returns the application's exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("skein run needs root to make a network namespace and its iptables rules; run it with sudo (the application still runs as you)");
    }
    let (network, prefix) = parse_network(&args.network)?;
    let gateway = Ipv4Addr::from(u32::from(network) + 1);
    if args.bridge.is_empty() || args.bridge.len() > 15 || args.bridge.contains('/') {
        bail!(
            "--bridge {:?}: an interface name of 1 to 15 characters",
            args.bridge
        );
    }
    let user = netns::resolve_user(args.user.as_deref())?;
    if user.groups.contains(&args.proxy_gid) || user.uid == PROXY_UID {
        bail!("the application would run as uid {} with groups {:?}, which include the proxy's group {} (or its user {PROXY_UID}): its connections would bypass the proxy; pick another --user, or another --proxy-gid that no user has", user.uid, user.groups, args.proxy_gid);
    }
    let program = args.command[0].clone();
    let mut excluded = Vec::new();
    for c in &args.exclude_outbound_cidrs {
        excluded.push(
            capture::parse_cidr(c).map_err(|e| anyhow::anyhow!("--exclude-outbound-cidrs: {e}"))?,
        );
    }
    let control = control_from_namespace(&args.control, gateway).await?;
    let from_file = match &args.join_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --join-token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let join_token = match args.join_token.clone().or(from_file) {
        Some(t) => t,
        None => crate::cli::create_join_token(&args.target, &args.service, &args.namespace)
            .await
            .context("no --join-token (or SKEIN_JOIN_TOKEN) and none could be created")?,
    };

    // The workload's place on the bridge, recorded before anything is made.
    let dir = Dir::open(&args.state_dir, &args.bridge)?;
    let lock = dir.lock()?;
    reap_stale(&dir, &lock);
    dir.ensure_bridge(&lock, &args.bridge, gateway, prefix)?;
    let taken: Vec<Ipv4Addr> = dir.entries(&lock).iter().map(|e| e.address).collect();
    let address = state::free_address(network, prefix, &[taken, vec![gateway]].concat())?;
    let me = std::process::id();
    let mut entry = Entry {
        id: me,
        service: format!("{}/{}", args.namespace, args.service),
        address,
        veth: format!("skr{me}"),
        run: (me, netns::start_time(me).unwrap_or(0)),
        holder: None,
        netns: None,
    };
    dir.write(&lock, &entry)?;
    let (holder, ns) = match netns::spawn_holder() {
        Ok(h) => h,
        Err(e) => {
            dir.forget(&lock, &entry);
            dir.remove_bridge_if_unused(&lock, &args.bridge);
            return Err(e);
        }
    };
    entry.holder = Some((holder.id(), netns::start_time(holder.id()).unwrap_or(0)));
    dir.write(&lock, &entry)?;
    match dir.pin(&lock, entry.id, holder.id()) {
        Ok(inode) => entry.netns = Some(inode),
        Err(e) => {
            let mut holder = holder;
            let _ = holder.kill();
            let _ = holder.wait();
            dir.forget(&lock, &entry);
            dir.remove_bridge_if_unused(&lock, &args.bridge);
            return Err(e);
        }
    }
    dir.write(&lock, &entry)?;
    let workload = Workload {
        dir,
        bridge: args.bridge.clone(),
        entry: entry.clone(),
        holder,
        ns,
    };
    // From here on, a SIGKILL leaves the cleanup to the reaper.
    let reaper = match spawn_reaper(&args.state_dir, &args.bridge, me) {
        Ok(r) => r,
        Err(e) => {
            drop(lock);
            workload.remove();
            return Err(e);
        }
    };
    let wired = wire(&workload, &entry, gateway, prefix);
    drop(lock);
    let reachable = match wired {
        Ok(()) => check_control(&workload.ns, &control, &args.bridge).await,
        Err(e) => Err(e),
    };
    if let Err(e) = reachable {
        workload.remove();
        return Err(e);
    }
    let result = serve(
        &args,
        &workload,
        address,
        (network, prefix),
        &control,
        &join_token,
        excluded,
        user,
        &program,
    )
    .await;
    workload.remove();
    drop(reaper);
    result
}

/// The veth pair, addresses and routes; IPv6 off inside (its traffic would not be
/// captured).
fn wire(w: &Workload, entry: &Entry, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let ns = Some(&w.ns);
    netns::sysctl(&w.ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
    netns::sysctl(&w.ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    let holder = w.holder.id().to_string();
    let veth = entry.veth.as_str();
    netns::ip(
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &holder,
        ],
        None,
    )?;
    netns::ip(&["link", "set", veth, "master", &w.bridge, "up"], None)?;
    netns::ip(&["link", "set", "lo", "up"], ns)?;
    let cidr = format!("{}/{prefix}", entry.address);
    netns::ip(&["addr", "add", &cidr, "dev", "eth0"], ns)?;
    netns::ip(&["link", "set", "eth0", "up"], ns)?;
    netns::ip(
        &["route", "add", "default", "via", &gateway.to_string()],
        ns,
    )?;
    Ok(())
}

/// Capture, relay, proxy and application; returns the application's exit code.
#[allow(clippy::too_many_arguments)]
async fn serve(
    args: &RunArgs,
    w: &Workload,
    address: Ipv4Addr,
    network: (Ipv4Addr, u8),
    control: &str,
    join_token: &str,
    excluded: Vec<(Ipv4Addr, u8)>,
    user: netns::User,
    program: &str,
) -> anyhow::Result<i32> {
    let upstreams = if args.dns_upstream.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        skein_proxy::dns::upstream::from_resolv_conf(&text)
    } else {
        args.dns_upstream.clone()
    };
    let gateway = Ipv4Addr::from(u32::from(network.0) + 1);
    let relay = relay::start(IpAddr::V4(gateway), network, upstreams).await?;
    let config = proxy_config(args, address, relay)?;
    let mut capture = Capture::for_config(&config, args.proxy_gid)?;
    capture.proxy_uid = Some(PROXY_UID);
    capture.exclude_outbound_ports = args.exclude_outbound_ports.clone();
    capture.exclude_outbound_cidrs = excluded;
    capture.exclude_inbound_ports = args.exclude_inbound_ports.clone();
    capture::Iptables { netns: Some(&w.ns) }.install(&capture)?;

    let (log_path, keep_log) = match &args.proxy_log {
        Some(p) => (p.clone(), true),
        None => (
            w.dir.path().join(format!("{}.proxy.log", w.entry.id)),
            false,
        ),
    };
    // Written by root: never through a symbolic link, readable by its owner only.
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)
            .with_context(|| format!("cannot write the proxy log {}", log_path.display()))?
    };
    eprintln!(
        "skein run: {} at {address} on {} (namespace of pid {}); starting its proxy (log: {})",
        w.entry.service,
        args.bridge,
        w.holder.id(),
        if keep_log {
            log_path.display().to_string()
        } else {
            "shown if it fails".into()
        }
    );
    let mut proxy = spawn_proxy(
        &w.ns,
        &config,
        control,
        join_token,
        address,
        args.proxy_gid,
        log,
    )?;
    let admin = SocketAddr::new(address.into(), ADMIN_PORT);
    let ready = wait_ready(admin, &mut proxy).await;
    let result = match ready {
        Err(e) => {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(e.context(format!("the proxy's last words:\n{}", tail.join("\n"))))
        }
        Ok(()) => {
            eprintln!(
                "skein run: proxy ready (metrics: http://{admin}/metrics); starting {program} as uid {}",
                user.uid
            );
            let app = App {
                command: &args.command,
                user,
                new_privileges: args.allow_new_privileges,
            };
            run_app(app, &w.ns, &mut proxy, &log_path).await
        }
    };
    // The proxy drains (SIGTERM), then is killed if it outlives its drain.
    netns::kill(proxy.id(), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    if !keep_log {
        let _ = std::fs::remove_file(&log_path);
    }
    result
}

/// The proxy's configuration: the transparent, inbound, admin and DNS listeners in the
/// namespace, the application's ports; the control plane supplies the rest.
fn proxy_config(
    args: &RunArgs,
    address: Ipv4Addr,
    relay: SocketAddr,
) -> anyhow::Result<ProxyConfig> {
    let mut ports = Vec::new();
    for p in &args.ports {
        let (port, protocol) = p.split_once('/').unwrap_or((p, "detect"));
        let port: u16 = port.parse().ok().filter(|p| *p != 0).with_context(|| {
            format!("--port {p}: give PORT or PORT/PROTOCOL, e.g. 8080 or 8080/http")
        })?;
        ports.push(serde_json::json!({"port": port, "protocol": protocol}));
    }
    let name = format!("{}-{}", args.service, address.to_string().replace('.', "-"));
    let text = serde_json::json!({
        "workload": {"name": name, "service": args.service, "namespace": args.namespace},
        "inbound": {"listen": format!("0.0.0.0:{INBOUND_PORT}"), "ports": ports},
        "outbound": {"listen": format!("127.0.0.1:{OUTBOUND_PORT}")},
        "admin": {"listen": format!("{address}:{ADMIN_PORT}")},
        "dns": {"listen": format!("127.0.0.1:{DNS_PORT}"), "upstreams": [relay.to_string()]},
    })
    .to_string();
    Ok(ProxyConfig::from_yaml(&text, "skein run")?)
}

/// The control plane's address as the workload reaches it: loopback becomes the bridge's
/// gateway, names are resolved here (the namespace has no resolver of its own yet). Checks
/// that something listens there.
async fn control_from_namespace(control: &str, gateway: Ipv4Addr) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for one in control.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let one = one
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(one)
            .await
            .with_context(|| format!("--control {one}: not an address or a name that resolves"))?
            .collect();
        for a in addrs {
            let a = if a.ip().is_loopback() {
                SocketAddr::new(gateway.into(), a.port())
            } else {
                a
            };
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        bail!("--control {control:?}: give the control plane's proxy API, e.g. 127.0.0.1:9991");
    }
    Ok(out
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// Fails with advice unless one of the control plane's addresses accepts connections from
/// inside the workload's namespace (before capture is installed, so the attempt goes
/// where the proxy's will). A loopback `--control` points at the bridge's gateway by now.
async fn check_control(ns: &File, control: &str, bridge: &str) -> anyhow::Result<()> {
    let ns = ns.try_clone()?;
    let control = control.to_string();
    let tried = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        for addr in control.split(',') {
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                continue;
            };
            match netns::connect_from(&ns, addr, Duration::from_secs(2)) {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(errors.join("; "))
    })
    .await?;
    match tried {
        Ok(()) => Ok(()),
        Err(errors) => bail!("the workload's namespace cannot reach the control plane's proxy API ({errors}): start `skein control` listening on every address (its default, --grpc 0.0.0.0:9991) or pass --control with an address workloads can reach; if it already listens there, a firewall on this host may drop traffic from the bridge (allow it, e.g. `iptables -I INPUT -i {bridge} -j ACCEPT`)"),
    }
}

/// Starts `skein proxy` inside the namespace as `nobody` with the proxy group, reading its
/// configuration from stdin, tied to this thread's life.
fn spawn_proxy(
    ns: &File,
    config: &ProxyConfig,
    control: &str,
    join_token: &str,
    address: Ipv4Addr,
    gid: u32,
    log: File,
) -> anyhow::Result<Child> {
    // Exec'd through a descriptor opened here, so that `nobody` needs no access to the
    // directories the binary is in (such as /root/.cargo/bin).
    let exe = File::open("/proc/self/exe").context("cannot open skein's own binary")?;
    let mut cmd = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    cmd.arg0("skein")
        .args(["proxy", "--config", "-", "--control", control])
        .arg("--advertise")
        .arg(format!("{address}:{INBOUND_PORT}"))
        .env("SKEIN_JOIN_TOKEN", join_token)
        .env_remove("SKEIN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    netns::enter_before_exec(&mut cmd, ns);
    netns::become_user(&mut cmd, PROXY_UID, gid, vec![gid]);
    netns::tie_to_parent(&mut cmd, libc::SIGTERM);
    let mut child = cmd.spawn().context("cannot start the proxy")?;
    let yaml = config.to_yaml();
    let mut stdin = child.stdin.take().context("the proxy's stdin")?;
    stdin.write_all(yaml.as_bytes())?;
    drop(stdin);
    drop(exe);
    Ok(child)
}

/// Polls the proxy's `/ready` until it answers 200; fails when the proxy exits first or
/// after [`READY_WITHIN`].
async fn wait_ready(admin: SocketAddr, proxy: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = proxy.try_wait()? {
            bail!("the proxy exited before it was ready ({status})");
        }
        if ready_once(admin).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the proxy was not ready within {READY_WITHIN:?} (http://{admin}/ready)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_once(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /ready HTTP/1.0\r\nHost: proxy\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The application and how it runs.
struct App<'a> {
    command: &'a [String],
    user: netns::User,
    new_privileges: bool,
}

/// Starts the application in the namespace as its user (with the terminal, when
/// `skein run` has it), forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to its
/// process group, and returns its exit code (128 + the signal when a signal ended it). If
/// the proxy dies first, says so with its last words and stops the application: without
/// its proxy it can reach nothing.
async fn run_app(
    app: App<'_>,
    ns: &File,
    proxy: &mut Child,
    log_path: &Path,
) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let command = app.command;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // Nothing of skein's credentials or of sudo's bookkeeping reaches the application;
    // it gets its own user's identity and home.
    for name in [
        "SKEIN_TOKEN",
        "SKEIN_JOIN_TOKEN",
        "SUDO_UID",
        "SUDO_GID",
        "SUDO_USER",
        "SUDO_COMMAND",
    ] {
        cmd.env_remove(name);
    }
    if let Some((name, home, shell)) = &app.user.passwd {
        cmd.env("USER", name)
            .env("LOGNAME", name)
            .env("HOME", home)
            .env("SHELL", shell);
    }
    let foreground = netns::in_foreground();
    netns::enter_before_exec(&mut cmd, ns);
    netns::become_user(
        &mut cmd,
        app.user.uid,
        app.user.gid,
        app.user.groups.clone(),
    );
    netns::tie_to_parent(&mut cmd, libc::SIGTERM);
    if foreground {
        netns::take_terminal(&mut cmd);
    }
    if !app.new_privileges {
        netns::no_new_privileges(&mut cmd);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", command[0]))?;
    let pgid = child.id() as libc::pid_t;
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for kind in kinds {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(kind.as_raw_value()).is_err() {
                    return;
                }
            }
        });
    }
    let wait = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut proxy_gone = false;
    let status = loop {
        tokio::select! {
            status = &mut wait => break status??,
            Some(sig) = rx.recv() => {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(-pgid, sig) };
            }
            _ = tick.tick(), if !proxy_gone => {
                if let Ok(Some(status)) = proxy.try_wait() {
                    proxy_gone = true;
                    let text = std::fs::read_to_string(log_path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(10).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    eprintln!(
                        "skein run: the proxy exited ({status}) while the application ran; stopping the application. The proxy's last words:\n{}",
                        tail.join("\n")
                    );
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid, libc::SIGTERM) };
                }
            }
        }
    };
    if foreground {
        netns::reclaim_terminal();
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    })
}

/// Removes the entries whose `skein run` is gone (killed before it could clean up, its
/// reaper killed too).
fn reap_stale(dir: &Dir, lock: &state::Locked) {
    for entry in dir.entries(lock) {
        if !entry.in_use() {
            eprintln!(
                "skein run: removing what an earlier run of {} at {} left behind",
                entry.service, entry.address
            );
            state::stop_processes(dir, &entry, Duration::from_secs(2));
            dir.forget(lock, &entry);
        }
    }
}

/// The write end of the reaper's pipe: the reaper cleans up when it closes, that is when
/// this process exits, however it exits.
struct Reaper {
    _pipe: OwnedFd,
}

/// Starts `skein run-reaper` in a session of its own (a terminal's Ctrl-C does not reach
/// it), reading a pipe only this process writes.
fn spawn_reaper(state_dir: &Path, bridge: &str, id: u32) -> anyhow::Result<Reaper> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, both close-on-exec.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make the reaper's pipe");
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("skein")
        .arg("run-reaper")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--bridge")
        .arg(bridge)
        .arg("--id")
        .arg(id.to_string())
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the reaper")?;
    Ok(Reaper { _pipe: write })
}

/// `skein run-reaper`: waits until its `skein run` exits (its stdin closes), then removes
/// the workload's entry unless `skein run` already did.
pub fn reap(state_dir: &Path, bridge: &str, id: u32) -> anyhow::Result<()> {
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    // `skein run` removed everything itself, the directory too when it was the last.
    let Some(dir) = Dir::existing(state_dir, bridge) else {
        return Ok(());
    };
    let entry = {
        let lock = dir.lock()?;
        dir.entries(&lock).into_iter().find(|e| e.id == id)
    };
    let Some(entry) = entry else {
        return Ok(());
    };
    // The proxy's drain, and the application's own shutdown, get their time.
    state::stop_processes(&dir, &entry, Duration::from_secs(12));
    let lock = dir.lock()?;
    if dir.has(&lock, id) {
        dir.forget(&lock, &entry);
    }
    dir.remove_bridge_if_unused(&lock, bridge);
    Ok(())
}
