//! Control-plane test support: `skein control` as a child process (its bound addresses read
//! from its start-up line, so it can listen on ports the OS picks), `skein proxy --control`
//! as a child process, the `skein` CLI run with a deadline, and temporary directories. Every
//! handle kills its process and removes its files when dropped, even when the test fails.

use anyhow::{bail, Context};
use skein_identity::JoinToken;
use skein_model::ProxyConfig;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a child may take to come up.
const START_WITHIN: Duration = Duration::from_secs(20);
/// How long one CLI command may take.
const CLI_WITHIN: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/skein-<tag>-<pid>-<n>`, empty.
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "skein-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The secrets key tests give etcd-backed control planes (64 hex characters).
pub const TEST_SECRETS_KEY: &str =
    "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

/// Writes [`TEST_SECRETS_KEY`] to `dir/secrets.key` (mode 0600) for `--secrets-key-file`.
pub fn secrets_key_file(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("secrets.key");
    std::fs::write(&path, TEST_SECRETS_KEY)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// A port on `ip` that was free a moment ago (bound to port 0, then released), for the few
/// listeners whose address must be known before the process starts.
pub fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind a free port on {ip}"))?;
    Ok(listener.local_addr()?)
}

/// Collects a child's stderr on a thread (so the pipe never fills), and hands over the
/// first line that `is_ready` accepts.
fn drain_stderr(
    child: &mut Child,
    is_ready: fn(&str) -> bool,
) -> (Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if is_ready(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    (log, rx)
}

fn read_log(log: &Mutex<String>) -> String {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Polls `child` until it exits or `limit` passes.
async fn wait_child(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process {} did not exit within {limit:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal by name (`TERM`, `KILL`, …) with `kill(1)`.
fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// A running `skein control` child process.
pub struct ControlProcess {
    child: Child,
    bin: PathBuf,
    log: Arc<Mutex<String>>,
    /// Where its HTTP API listens (as bound).
    pub http: SocketAddr,
    /// Where proxies connect (as bound).
    pub grpc: SocketAddr,
    /// Its data directory (not removed on drop: the test owns it, so that another control
    /// plane can be started on it).
    pub data_dir: PathBuf,
}

impl ControlProcess {
    /// Runs `bin control --data-dir DIR --http HTTP --grpc GRPC EXTRA…` (ports may be 0)
    /// and waits for its start-up line, which says where it listens.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<ControlProcess> {
        let mut child = Command::new(bin)
            .arg("control")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http")
            .arg(http.to_string())
            .arg("--grpc")
            .arg(grpc.to_string())
            .arg("--otlp")
            .arg(SocketAddr::new(http.ip(), 0).to_string())
            .args(extra)
            .env(
                "SKEIN_LOG",
                std::env::var("SKEIN_LOG").unwrap_or("info".into()),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start skein control")?;
        let (log, ready) =
            drain_stderr(&mut child, |l| l.starts_with("skein control: HTTP API on"));
        let mut this = ControlProcess {
            child,
            bin: bin.to_path_buf(),
            log,
            http,
            grpc,
            data_dir: data_dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_WITHIN;
        let line = loop {
            match ready.try_recv() {
                Ok(line) => break line,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    // Give the reader a moment to collect the last words.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    bail!(
                        "skein control did not come up within {START_WITHIN:?}; its output:\n{}",
                        this.log()
                    );
                }
            }
        };
        // "skein control: HTTP API on A, proxies connect to B, admin token in F"
        let after = |marker: &str| -> anyhow::Result<SocketAddr> {
            let rest = line
                .split_once(marker)
                .with_context(|| format!("no {marker:?} in {line:?}"))?
                .1;
            let addr = rest.split(',').next().unwrap_or_default().trim();
            addr.parse()
                .with_context(|| format!("bad address {addr:?} in {line:?}"))
        };
        this.http = after("HTTP API on ")?;
        this.grpc = after("proxies connect to ")?;
        Ok(this)
    }

    /// The admin token it wrote to its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// A join token for `service` in namespace `default`.
    pub async fn join_token(&self, service: &str) -> anyhow::Result<JoinToken> {
        join_token(self.http, &self.token(), "default", service).await
    }

    /// The proxy gRPC endpoint as proxies are given it (`http://IP:PORT`).
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Runs `skein ARGS --server HTTP --data-dir DIR` (the CLI finds the token there).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with(args, &self.data_dir, None).await
    }

    /// Like [`ControlProcess::cli`] with `stdin`, and the token taken from `data_dir`.
    pub async fn cli_with(&self, args: &[&str], data_dir: &Path, stdin: Option<&str>) -> CliOutput {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--server".to_string(),
            self.http.to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        skein_cli(&self.bin, &all, stdin).await
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        wait_child(&mut self.child, limit).await
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a CLI command did.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (`None`: killed by a signal or by the deadline).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Its stdout, after asserting that it exited 0 (the panic shows everything).
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "command failed: {self:#?}");
        &self.stdout
    }

    /// Its stderr, after asserting that it failed (exited non-zero).
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "command should have failed: {self:#?}"
        );
        &self.stderr
    }
}

/// Runs `bin ARGS` (the `skein` CLI) with `stdin`, killed after 30 s. The environment's
/// `SKEIN_SERVER`, `SKEIN_TOKEN` and `SKEIN_DATA_DIR` are removed so that only the
/// arguments count.
pub async fn skein_cli(bin: &Path, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_remove("SKEIN_SERVER")
        .env_remove("SKEIN_TOKEN")
        .env_remove("SKEIN_DATA_DIR")
        .env_remove("RUST_LOG")
        .env("SKEIN_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = async {
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await?;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout(CLI_WITHIN, run).await {
        Ok(Ok(out)) => CliOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => CliOutput {
            code: None,
            stdout: String::new(),
            stderr: format!("cannot run {}: {e}", bin.display()),
        },
        Err(_) => CliOutput {
            code: None,
            stdout: String::new(),
            stderr: format!("skein {args:?} did not finish within {CLI_WITHIN:?}"),
        },
    }
}

/// Creates a join token for `service` in `namespace` through the control plane's HTTP API
/// at `http` (admin token `admin`).
pub async fn join_token(
    http: SocketAddr,
    admin: &str,
    namespace: &str,
    service: &str,
) -> anyhow::Result<JoinToken> {
    join_token_with(http, admin, namespace, service, "1h").await
}

/// Like [`join_token`] with a lifetime such as `2s` or `1h`.
pub async fn join_token_with(
    http: SocketAddr,
    admin: &str,
    namespace: &str,
    service: &str,
    ttl: &str,
) -> anyhow::Result<JoinToken> {
    use http_body_util::BodyExt;
    let mut sender = crate::client::h1(http).await?;
    let body = serde_json::json!({"service": service, "namespace": namespace, "ttl": ttl});
    let req = http::Request::post("/api/v1/tokens")
        .header(http::header::HOST, http.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(skein_proxy::http::full(body.to_string()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "token API answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let text = value["token"]
        .as_str()
        .with_context(|| format!("token API answered {status}: {value}"))?;
    Ok(text.parse()?)
}

/// How an in-process proxy of `service` (namespace `default`) reaches the control plane
/// whose HTTP API is `http` and proxy API `grpc`: with a fresh join token.
pub async fn control_config(
    http: SocketAddr,
    admin: &str,
    grpc: SocketAddr,
    advertise: SocketAddr,
    service: &str,
) -> anyhow::Result<skein_proxy::control::ControlConfig> {
    Ok(skein_proxy::control::ControlConfig {
        endpoint: grpc.to_string(),
        advertise,
        token: join_token(http, admin, "default", service).await?,
    })
}

/// A running `skein proxy --config FILE --control ADDR` child process. Its inbound and
/// admin listeners must have fixed ports in the config (see [`free_port`]): the inbound
/// address is what it registers, the admin one is how readiness is checked.
pub struct ControlledProxy {
    child: Child,
    _dir: TempDir,
    log: Arc<Mutex<String>>,
    /// Its admin listener.
    pub admin: SocketAddr,
}

impl ControlledProxy {
    /// Starts the proxy and waits until `/ready` answers, i.e. until it applied its first
    /// snapshot from the control plane at `control` (`IP:PORT`).
    pub async fn start(
        bin: &Path,
        config: &ProxyConfig,
        control: SocketAddr,
        join_token: &JoinToken,
    ) -> anyhow::Result<ControlledProxy> {
        Self::start_with_env(bin, config, control, join_token, &[]).await
    }

    /// [`Self::start`] with `env` added to the proxy's environment (e.g. `LD_PRELOAD` of a
    /// fake clock).
    pub async fn start_with_env(
        bin: &Path,
        config: &ProxyConfig,
        control: SocketAddr,
        join_token: &JoinToken,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ControlledProxy> {
        let dir = TempDir::new("proxy")?;
        let file = dir.join("proxy.yaml");
        std::fs::write(&file, config.to_yaml())?;
        let mut child = Command::new(bin)
            .arg("proxy")
            .arg("--config")
            .arg(&file)
            .arg("--control")
            .arg(control.to_string())
            .env("SKEIN_JOIN_TOKEN", join_token.reveal())
            .env(
                "SKEIN_LOG",
                std::env::var("SKEIN_LOG").unwrap_or("info".into()),
            )
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start skein proxy")?;
        let (log, _) = drain_stderr(&mut child, |_| false);
        let mut proxy = ControlledProxy {
            child,
            _dir: dir,
            log,
            admin: config.admin.listen,
        };
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(body) = proxy.admin_get("/ready").await {
                if body.ends_with("\nready\n") {
                    return Ok(proxy);
                }
            }
            if let Some(status) = proxy.child.try_wait()? {
                bail!(
                    "skein proxy exited ({status}); its output:\n{}",
                    proxy.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "skein proxy not ready within {START_WITHIN:?}; its output:\n{}",
                    proxy.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A GET on the admin listener; the whole response (head and body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await??;
        Ok(text)
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Sends a signal by name (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.child.id(), signal)
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        wait_child(&mut self.child, limit).await
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`: the peak since start or since
/// [`reset_peak_rss`]).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resets `VmHWM` of process `pid` to its current RSS (`/proc/PID/clear_refs`), so that
/// the next peak read is the peak from now on.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

impl Drop for ControlledProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of this process (`VmRSS` of `/proc/self/status`), in KiB.
pub fn self_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Polls `check` every 25 ms until it holds; fails with `what` after `limit`.
pub async fn eventually(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
