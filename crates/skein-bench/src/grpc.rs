//! Unary gRPC for the benchmark: what the backend answers a gRPC request with, the
//! message h2load sends, and `skein-bench grpc-calls`, a client that checks each call's
//! `grpc-status` (h2load counts HTTP statuses only, and a gRPC failure is a `200` whose
//! trailers say so).
//!
//! The method is `/bench.Bench/Call`; the request carries one message of [`REQUEST_LEN`]
//! bytes, the reply one of [`crate::backend::BODY_LEN`] bytes, each behind gRPC's 5-byte
//! prefix (no compression, then the length, big-endian), and the reply ends with the
//! trailers `grpc-status: 0`. The bytes are not protobuf: neither end decodes them, as
//! no proxy on the path does either.

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The path every call goes to.
pub const PATH: &str = "/bench.Bench/Call";

/// Bytes of the request message (after the prefix).
pub const REQUEST_LEN: usize = 128;

/// gRPC's content type.
pub const CONTENT_TYPE: &str = "application/grpc";

/// Whether a request is gRPC: its `content-type` is [`CONTENT_TYPE`], alone or with a
/// `+format` or parameters (not `application/grpc-web`, which is another protocol).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(CONTENT_TYPE.as_bytes()))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// One message of `len` bytes behind gRPC's length prefix.
pub fn message(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    b.put_bytes(b'x', len);
    b.freeze()
}

/// The trailers that end a successful call.
pub fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

/// What `grpc-calls` prints.
#[derive(Debug, Serialize)]
pub struct CallsReport {
    /// Calls made, each answered with `grpc-status: 0` and the whole reply message.
    pub calls: u64,
}

/// Makes `count` unary calls, one after another on one HTTP/2 connection to `addr`;
/// fails at the first that does not end with `grpc-status: 0` and the reply message.
pub async fn calls(addr: SocketAddr, count: u64) -> anyhow::Result<CallsReport> {
    let mut send = tokio::time::timeout(
        Duration::from_secs(5),
        crate::load::connect_h2::<Full<Bytes>>(addr),
    )
    .await
    .with_context(|| format!("connecting to {addr} timed out"))??;
    let want = 5 + crate::backend::BODY_LEN;
    for n in 1..=count {
        let req = Request::post(format!("http://{addr}{PATH}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(header::TE, "trailers")
            .body(Full::new(message(REQUEST_LEN)))?;
        let call = async {
            let resp = send.send_request(req).await.context("no response")?;
            let status = resp.status();
            let collected = resp
                .into_body()
                .collect()
                .await
                .context("the reply ended early")?;
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let len = collected.to_bytes().len();
            anyhow::Ok((status, grpc_status, len))
        };
        let (status, grpc_status, len) = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .with_context(|| format!("call {n}: no answer within 5 s"))??;
        if status != http::StatusCode::OK || grpc_status.as_deref() != Some("0") || len != want {
            bail!(
                "call {n}: HTTP {status}, grpc-status {}, {len} bytes of reply (want 200, \
                 grpc-status 0 in the trailers and {want} bytes)",
                grpc_status.as_deref().unwrap_or("missing")
            );
        }
    }
    Ok(CallsReport { calls: count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_prefixed_with_no_compression_and_its_length() {
        let m = message(300);
        assert_eq!(m.len(), 305);
        assert_eq!(&m[..5], &[0, 0, 0, 1, 44]);
        assert!(m[5..].iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn calls_to_the_backend_end_with_grpc_status_zero() {
        let listener = std::net::TcpListener::bind("127.0.0.198:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = tokio::spawn(crate::backend::serve(addr, Duration::ZERO));
        let mut made = None;
        for _ in 0..100 {
            if let Ok(r) = calls(addr, 3).await {
                made = Some(r.calls);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
        assert_eq!(made, Some(3));
    }

    #[test]
    fn grpc_is_told_by_its_content_type_and_grpc_web_is_not_grpc() {
        let req = |ct: &str| {
            Request::post("/")
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&req(yes)), "{yes}");
        }
        for no in ["application/grpc-web", "application/json", "text/plain"] {
            assert!(!is_grpc(&req(no)), "{no}");
        }
    }

    #[tokio::test]
    async fn a_reply_without_grpc_status_fails_the_call_and_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.198:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let plain = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                    "not grpc",
                ))))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), plain)
                .await;
        });
        let err = calls(addr, 1).await.unwrap_err().to_string();
        server.abort();
        assert!(err.contains("grpc-status missing"), "{err}");
    }
}
