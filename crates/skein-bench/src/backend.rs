//! `skein-bench backend`: the fast, fixed-size HTTP server every setup ends at.
//!
//! One port speaks HTTP/1.1 and HTTP/2 with prior knowledge (told apart by the client's
//! preface); every request, whatever its method or path, is answered `200` with the same
//! 1024-byte body and a `content-length`. Request bodies are discarded unread, so the
//! backend does as little work per request as hyper allows and is never the bottleneck.
//! With `--delay` it waits that long before answering each request (the slow-endpoint
//! scenario's backends); without it, the path is the same as before the option existed.
//! A gRPC request (by its `content-type`) is read whole and answered as a unary call:
//! one message of the same 1024 bytes behind gRPC's prefix, then `grpc-status: 0`
//! ([`crate::grpc`]).

use anyhow::Context;
use bytes::Bytes;
use http::HeaderMap;
use http::{header, Request, Response};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Ready;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// Size of every response body, in bytes.
pub const BODY_LEN: usize = 1024;

static BODY: [u8; BODY_LEN] = [b'x'; BODY_LEN];

/// Serves forever on `listen`, answering each request after `delay` (zero: at once).
pub async fn serve(listen: SocketAddr, delay: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("backend cannot bind {listen}"))?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Benchmarks open many streams per connection; do not let the default (200 in h2)
    // be the limit that is measured.
    builder.http2().max_concurrent_streams(1024);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors or similar: back off briefly instead of spinning.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let _ = if delay.is_zero() {
                builder.serve_connection(io, service_fn(respond)).await
            } else {
                let slow = service_fn(move |req| async move {
                    tokio::time::sleep(delay).await;
                    respond(req).await
                });
                builder.serve_connection(io, slow).await
            };
        });
    }
}

/// A reply: the plain 1024 bytes, or a gRPC message followed by its trailers.
type Reply =
    Either<Full<Bytes>, WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>>;

async fn respond(req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
    if crate::grpc::is_grpc(&req) {
        // A unary call: the request message first, as a gRPC server reads it.
        if req.into_body().collect().await.is_err() {
            let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
        let trailers = std::future::ready(Some(Ok(crate::grpc::ok_trailers())));
        let mut resp = Response::new(Either::Right(
            Full::new(grpc_reply()).with_trailers(trailers),
        ));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(crate::grpc::CONTENT_TYPE),
        );
        return Ok(resp);
    }
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(&BODY))));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(BODY_LEN));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// The gRPC reply message, made once.
fn grpc_reply() -> Bytes {
    static REPLY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    REPLY.get_or_init(|| crate::grpc::message(BODY_LEN)).clone()
}
