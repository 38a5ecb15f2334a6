//! `skein proxy` as a real child process, for tests that need a process boundary: memory
//! measured from `/proc`, signals (SIGTERM drain), or a proxy inside a network namespace.
//! The child is killed and its config file removed when the handle drops, even when the
//! test fails.

use anyhow::{bail, Context};
use skein_model::ProxyConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `skein proxy` child process.
pub struct ProxyProcess {
    child: Child,
    config_path: PathBuf,
    /// Where its admin listener is (must be a fixed port in the config).
    pub admin: SocketAddr,
}

impl ProxyProcess {
    /// Starts `bin proxy --config FILE`, optionally under a wrapper command (e.g.
    /// `["ip", "netns", "exec", "NS"]`), and waits until `/ready` answers.
    pub async fn spawn(bin: &Path, config: &ProxyConfig, wrapper: &[&str]) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let config_path = std::env::temp_dir().join(format!(
            "skein-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config_path, config.to_yaml())?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .env(
                "SKEIN_LOG",
                std::env::var("SKEIN_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null());
        let child = cmd.spawn().context("cannot start skein proxy")?;
        let proc = ProxyProcess {
            child,
            config_path,
            admin: config.admin.listen,
        };
        proc.wait_ready(Duration::from_secs(15)).await?;
        Ok(proc)
    }

    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(body) = self.admin_get("/ready").await {
                if body.ends_with("ready\n") && !body.ends_with("not ready\n") {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("proxy (admin {}) not ready within {limit:?}", self.admin)
    }

    /// A GET on the admin listener; returns the whole response text.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await??;
        Ok(text)
    }

    /// Sum of a metric's matching samples from `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> anyhow::Result<u64> {
        let text = self.admin_get("/metrics").await?;
        Ok(skein_proxy::metrics::sum_samples(&text, name, labels))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM` = 15) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("proxy did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory (`VmHWM`) in KiB, from `/proc/PID/status`.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc status")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}
