//! HTTP/1 protocol upgrades (e.g. WebSocket): the request is sent on a dedicated HTTP/1
//! connection; on `101 Switching Protocols` both sides are spliced as raw byte streams.
//! Both the outbound side (client → tunnel to the peer) and the inbound side (tunnel →
//! application) use this.

use crate::connect::upstream_error;
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http::{boxed, Body};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Sends an upgrade request on `sender` and, on 101, splices the client's connection with
/// the upstream's until both close. `addr` names the upstream in errors; `held` (e.g. a
/// connection-limit permit) is kept as long as the upgraded connection lives.
pub async fn forward<H: Send + 'static>(
    mut sender: http1::SendRequest<Body>,
    addr: SocketAddr,
    mut req: Request<Incoming>,
    drain: &Drain,
    held: H,
) -> Result<Response<Body>, ProxyError> {
    let client_side = hyper::upgrade::on(&mut req);
    let req = req.map(boxed);
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|source| upstream_error(addr, source))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut resp);
        drain.spawn(async move {
            let _held = held;
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = crate::io::splice(&mut client, &mut upstream).await {
                        tracing::debug!(%addr, error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(%addr, error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp.map(boxed))
}
