//! Opaque TCP bulk transfer: `skein-bench tcp-sink` reads and discards everything each
//! connection sends and closes it at end of stream; `skein-bench tcp-bulk` sends a stream
//! of bytes, half-closes, and waits for the sink's close, so the time it reports covers
//! every byte reaching the sink (through whatever proxies sit between).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 * 1024;

/// The figures of one bulk transfer, printed as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkReport {
    /// Bytes sent (and so received by the sink).
    pub bytes: u64,
    /// Seconds from connect to the sink's close.
    pub secs: f64,
    /// Throughput in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
}

/// Accepts forever on `listen`, discarding every byte received.
pub async fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("tcp-sink cannot bind {listen}"))?;
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Sends up to `bytes` bytes to `addr`, stopping early once `limit` has passed, then
/// half-closes and waits (at most `limit` again) for the far end to close.
pub async fn bulk(addr: SocketAddr, bytes: u64, limit: Duration) -> anyhow::Result<BulkReport> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let chunk = vec![0x5au8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes && start.elapsed() < limit {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        stream
            .write_all(&chunk[..n])
            .await
            .with_context(|| format!("write failed after {sent} bytes"))?;
        sent += n as u64;
    }
    stream.shutdown().await.context("half-close failed")?;
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("waiting for the sink to close: {e}"),
        Err(_) => bail!("the sink did not close within {limit:?} of the half-close"),
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BulkReport {
        bytes: sent,
        secs,
        mb_per_s: sent as f64 / secs / 1e6,
    })
}
