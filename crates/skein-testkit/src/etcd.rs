//! A real etcd (Debian's `etcd-server`) for tests of the etcd store and of several
//! control-plane replicas: one member ([`Etcd`]) or a cluster of several
//! ([`EtcdCluster`]), started on free loopback ports, each member with its own data
//! directory, and killed with that directory removed when the handle drops, even when the
//! test fails.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after starting.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Start attempts, each on fresh ports (another process may take a port we picked).
const ATTEMPTS: usize = 5;

/// A running etcd child process.
pub struct Etcd {
    child: Option<Child>,
    bin: PathBuf,
    /// Holds `data/` (etcd's data dir) and `etcd.log` (its output); removed on drop.
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    /// The member's name and `--initial-cluster` (every member's name and peer URL).
    name: String,
    cluster: String,
}

impl Etcd {
    /// Whether an etcd binary is installed (`/usr/bin/etcd`, or `etcd` on `PATH`).
    pub fn available() -> bool {
        find_binary().is_some()
    }

    /// Starts etcd on free ports of 127.0.0.1 and waits until it serves requests. Blocks
    /// (for about a second), so call it before starting async work or accept the pause.
    pub fn start() -> anyhow::Result<Etcd> {
        let bin = find_binary()
            .context("etcd is not installed: apt-get install etcd-server (or put etcd on PATH)")?;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let peer = free_port()?;
            let mut etcd = Etcd {
                child: None,
                bin: bin.clone(),
                dir: unique_dir()?,
                client: free_port()?,
                peer,
                name: "default".into(),
                cluster: format!("default=http://{peer}"),
            };
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                // Dropping `etcd` kills the child and removes its directory.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// The client address, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// Compacts etcd's history up to `revision` (through its JSON gateway), so that watches
    /// starting at or before it are refused: for testing how clients recover.
    pub fn compact(&self, revision: u64) -> anyhow::Result<()> {
        let body = format!("{{\"revision\":\"{revision}\",\"physical\":true}}");
        let response = http_request(self.client, "POST", "/v3/kv/compaction", &body)?;
        if !response.starts_with("HTTP/1.1 200") && !response.starts_with("HTTP/1.0 200") {
            bail!("etcd refused the compaction: {response}");
        }
        Ok(())
    }

    /// Kills etcd (SIGKILL), keeping its data, ports and directory, e.g. to test that
    /// clients survive an outage. [`Etcd::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): its ports still take connections, but nothing answers, as
    /// with a member whose host hangs or whose network blackholes. [`Etcd::resume`] (or
    /// dropping the handle) ends it.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
        }
    }

    /// Lets a [`Etcd::pause`]d etcd run again.
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: as in `pause`.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
    }

    /// Starts etcd again on the same ports with the same data, after [`Etcd::stop`] (or
    /// kills the running one first), and waits until it serves requests.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The ports were just released; another process could take them meanwhile, but
        // only the kernel's own ephemeral allocations race with us on loopback.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.launch()?;
        self.wait_healthy()
            .with_context(|| format!("etcd output:\n{}", self.log_tail()))
    }

    /// Starts the process without waiting for it (a cluster's members are healthy only
    /// once a quorum of them runs).
    fn launch(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://{}", self.peer);
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&self.cluster)
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `GET /health` on the client port until etcd reports itself healthy (it has a
    /// leader and serves reads), or fails if etcd exits or takes too long.
    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("etcd exited at start ({status})");
                }
            }
            if let Ok(body) = http_get(self.client, "/health") {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd on {} not healthy within {READY_WITHIN:?}",
                    self.client
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Several etcd members forming one cluster (Raft: a majority must run for it to serve).
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `size` members on free ports of 127.0.0.1 and waits until each serves
    /// requests (a leader is elected); tried afresh on other ports if a start fails
    /// (another process may take a port picked).
    pub fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        let bin = find_binary()
            .context("etcd is not installed: apt-get install etcd-server (or put etcd on PATH)")?;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start(&bin, size) {
                Ok(cluster) => return Ok(cluster),
                // Dropping the members killed them and removed their directories.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn try_start(bin: &std::path::Path, size: usize) -> anyhow::Result<EtcdCluster> {
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Etcd {
                child: None,
                bin: bin.to_path_buf(),
                dir: unique_dir()?,
                client: free_port()?,
                peer: free_port()?,
                name: format!("m{i}"),
                cluster: String::new(),
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut this = EtcdCluster { members };
        for member in &mut this.members {
            member.cluster = cluster.clone();
            member.launch()?;
        }
        for member in &mut this.members {
            member
                .wait_healthy()
                .with_context(|| format!("etcd output:\n{}", member.log_tail()))?;
        }
        Ok(this)
    }

    /// Every member's client address, `127.0.0.1:PORT`, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// Member `i`.
    pub fn member(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    /// Which running member leads, as its members say (`None` while none does).
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && http_request(m.client, "POST", "/v3/maintenance/status", "{}")
                    .ok()
                    .and_then(|r| {
                        let body = r.split_once("\r\n\r\n")?.1.to_string();
                        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                        let me = v["header"]["member_id"].as_str()?.to_string();
                        Some(v["leader"].as_str() == Some(me.as_str()))
                    })
                    .unwrap_or(false)
        })
    }
}

fn find_binary() -> Option<PathBuf> {
    let usr_bin = PathBuf::from("/usr/bin/etcd");
    if usr_bin.is_file() {
        return Some(usr_bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// A new, empty directory for one etcd instance.
fn unique_dir() -> anyhow::Result<PathBuf> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skein-etcd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?)
}

/// A plain HTTP/1.0 GET; the whole response as text.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    http_request(addr, "GET", path, "")
}

/// A plain HTTP/1.0 request; the whole response as text.
fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
