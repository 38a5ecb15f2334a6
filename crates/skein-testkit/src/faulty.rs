//! Applications that fail the way real ones do, at the socket: one that resets every
//! connection, one that accepts and never answers, one that crashes part way through a
//! response; and one that answers as if it were a mesh proxy. Raw TCP, so that nothing in an HTTP library tidies the failure up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::server;

/// How a [`FaultyApp`] fails every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reads the request head, then resets the connection (RST) without answering: a
    /// process that crashed while handling it.
    Reset,
    /// Reads the request and never answers, holding the connection open: a deadlocked
    /// or overloaded process.
    Hang,
    /// Answers `200` with `Content-Length: 1000`, sends 100 bytes of the body, then
    /// resets the connection: a crash mid-response.
    CrashMidBody,
    /// As [`Fault::CrashMidBody`], with a chunked body cut inside its second chunk.
    CrashMidChunks,
    /// Answers `502` with `skein-error: connect`, what a peer proxy says when it could not
    /// reach its application (so the request may go elsewhere), then closes: an
    /// application posing as the mesh to have requests it handled sent again.
    ClaimsUnsent,
}

/// Handle to a running [`FaultyApp`]; dropping it closes the listener and every
/// connection it holds.
pub struct FaultyApp {
    addr: SocketAddr,
    heads: Arc<AtomicUsize>,
    _stop: DropGuard,
}

impl FaultyApp {
    /// Binds `addr` and fails every request it reads as `fault` says.
    pub async fn start(addr: SocketAddr, fault: Fault) -> anyhow::Result<Self> {
        let listener = server::bind(addr).await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (count, token) = (heads.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let (count, token) = (count.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = serve(stream, fault, count) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            heads,
            _stop: stop.drop_guard(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads read so far (each one failed).
    pub fn requests(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

/// Reads request heads (bodies are not expected) and fails each.
async fn serve(mut stream: TcpStream, fault: Fault, heads: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    heads.fetch_add(1, Ordering::SeqCst);
    if fault == Fault::ClaimsUnsent {
        let body = "upstream connect error (an application's own words)";
        let answer = format!(
            "HTTP/1.1 502 Bad Gateway\r\nskein-error: connect\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let answer: &[u8] = match fault {
        Fault::Reset => b"",
        Fault::Hang => {
            std::future::pending::<()>().await;
            return;
        }
        Fault::CrashMidBody => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n"
        }
        Fault::CrashMidChunks => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n",
        Fault::ClaimsUnsent => unreachable!("answered above"),
    };
    if !answer.is_empty() {
        let _ = stream.write_all(answer).await;
        let _ = stream.write_all(&[b'x'; 100]).await;
        if fault == Fault::CrashMidChunks {
            let _ = stream.write_all(b"\r\n64\r\nhalf").await;
        }
        let _ = stream.flush().await;
        // Let the bytes go out before the reset discards what is unsent.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stream.set_zero_linger();
    drop(stream);
}
