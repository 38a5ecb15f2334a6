//! Real hyper clients for tests: one HTTP/1.1 or HTTP/2 (prior knowledge) connection to an
//! address, plus `curl` as an unmodified third-party client.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skein_proxy::http::Body;
use std::net::SocketAddr;
use std::process::Output;

/// Opens one HTTP/1.1 connection (with upgrades) to `addr`.
pub async fn h1(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Body>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Opens one HTTP/2 prior-knowledge connection to `addr`.
pub async fn h2(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<Body>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a whole response body.
pub async fn body_bytes(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Bytes> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Runs the `curl` binary with `args` (plus `--silent --show-error --max-time 30`).
pub async fn curl(args: &[&str]) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30"])
        .args(args)
        .output()
        .await?;
    Ok(out)
}
