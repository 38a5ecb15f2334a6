//! The connection to the control plane: a gRPC channel over TLS that leaves from the
//! proxy's advertised address, and how a failed connection is reported (a control plane
//! that fails the token's pin or identity is refused for good).
//!
//! The endpoint may list several replicas (`a:9991,b:9991`), and each name may resolve to
//! several addresses. A connection tries them in turn, starting with the replica that
//! answered last, each for at most [`CONNECT_EACH`]: a dead replica costs one refused or
//! timed-out connect, then the proxy is on the next one.
//!
//! A connection that goes silent (a partition, a NAT or conntrack entry dropped on the
//! way, a host that vanished without a reset) is noticed by HTTP/2 pings: one every
//! [`KEEPALIVE_INTERVAL`], unanswered for [`KEEPALIVE_TIMEOUT`], ends the connection, and
//! the proxy reconnects. Without them the stream would look open until TCP gave up (some
//! fifteen minutes with data outstanding, never without), while the control plane, whose
//! own pings also go unanswered, marks the workload disconnected and removes it.

use super::{control_identity, ControlConfig, Failure};
use skein_identity::SpiffeId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::transport::Channel;

/// Longest wait for one replica's TCP connection before the next one is tried.
pub const CONNECT_EACH: Duration = Duration::from_secs(2);
/// How often the proxy pings the control plane over its connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is given up.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane replicas' addresses (`host:port`) from the configured endpoint: a
/// comma-separated list, each with an optional `http://` or `https://` prefix (ignored: the
/// connection is always TLS).
pub fn control_authorities(endpoint: &str) -> Vec<String> {
    endpoint
        .split(',')
        .map(|e| {
            e.trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned()
        })
        .filter(|e| !e.is_empty())
        .collect()
}

/// Which replica of each endpoint list answered last (its index), so that the next
/// connection goes there first instead of waiting on a dead one.
fn preferred() -> &'static Mutex<HashMap<String, usize>> {
    static PREFERRED: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    PREFERRED.get_or_init(Default::default)
}

/// Connects to one of `authorities` (leaving from `source`), starting with the one that
/// answered last; the error of the last one tried if none answers.
async fn connect_any(
    list: &str,
    authorities: &[String],
    source: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let start = preferred()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(list)
        .copied()
        .unwrap_or(0);
    let mut last = None;
    for k in 0..authorities.len() {
        let i = (start + k) % authorities.len();
        match tokio::time::timeout(CONNECT_EACH, connect_from(&authorities[i], source)).await {
            Ok(Ok(tcp)) => {
                if i != start {
                    tracing::info!(replica = %authorities[i], "control plane: switched to another replica");
                }
                preferred()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(list.to_owned(), i);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = Some(format!("{}: {e}", authorities[i])),
            Err(_) => {
                last = Some(format!(
                    "{}: no answer within {CONNECT_EACH:?}",
                    authorities[i]
                ))
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        last.unwrap_or_else(|| "no control plane address is configured".into()),
    ))
}

/// A gRPC channel to the control plane over TLS configured by `tls`. A control plane
/// whose certificate is not the one the token pins is a fatal failure.
pub(super) async fn channel(
    control: &ControlConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, Failure> {
    let expected =
        control_identity(&control.token).map_err(|s| Failure::fatal(s.message().to_owned()))?;
    let source = Some(control.advertise.ip());
    tls_channel(&control.endpoint, tls, &expected, source)
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::PermissionDenied {
                Failure::fatal(s.message().to_owned())
            } else {
                Failure::transient(s.message().to_owned())
            }
        })
}

/// A gRPC channel to the control plane at `endpoint` (`host:port`, or several
/// comma-separated replicas, see [`control_authorities`]) over TLS configured by `tls`,
/// the server presenting `expected`. With `source`, connections leave from that address
/// when it is one of this host's: the control plane accepts a registration only for the
/// address it sees the proxy connect from (or one inside its `--workload-cidr` ranges).
pub async fn tls_channel(
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
    source: Option<IpAddr>,
) -> Result<Channel, tonic::Status> {
    let list = endpoint.to_owned();
    let authorities = Arc::new(control_authorities(endpoint));
    let first = authorities.first().cloned().unwrap_or_default();
    let name = skein_identity::tls::server_name(expected)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let uri = tonic::transport::Endpoint::from_shared(format!("http://{first}"))
        .map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "control plane address {first:?} is not host:port: {e}"
            ))
        })?
        .connect_timeout(CONNECT_EACH * (authorities.len().max(1) as u32) + Duration::from_secs(3))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_: http::Uri| {
        let (list, authorities, tls, name) =
            (list.clone(), authorities.clone(), tls.clone(), name.clone());
        async move {
            let tcp = connect_any(&list, &authorities, source).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(refused_server)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    uri.connect_with_connector(connector).await.map_err(|e| {
        let text = format!("cannot connect: {}", error_chain(&e));
        if source_kind(&e) == Some(std::io::ErrorKind::PermissionDenied) {
            tonic::Status::permission_denied(text)
        } else {
            tonic::Status::unavailable(text)
        }
    })
}

/// A TLS failure because the server is not who we expect (our verifier refused its
/// identity or pin) becomes `PermissionDenied`: retrying the same server cannot help.
fn refused_server(e: std::io::Error) -> std::io::Error {
    let ours = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::Other(_)));
    if ours {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
    } else {
        e
    }
}

/// The kind of the first I/O error among `e` and its sources.
fn source_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}

/// Connects to `authority` (`host:port`, resolved), leaving from `source` when that is an
/// address of this host (anything else, e.g. an address translated by NAT, is left to the
/// kernel). Tries each resolved address in turn.
async fn connect_from(
    authority: &str,
    source: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = source.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4())
        {
            if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
                tracing::debug!(%ip, error = %e, "not binding the control connection to the advertised address");
            }
        }
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{authority} resolves to no address"),
        )
    }))
}

/// An error and its sources on one line (TLS failures hide in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_list_replicas() {
        assert_eq!(
            control_authorities("http://a:9991, b:9991/,,https://c:1"),
            ["a:9991", "b:9991", "c:1"]
        );
        assert_eq!(control_authorities("127.0.0.1:9991"), ["127.0.0.1:9991"]);
    }

    #[tokio::test]
    async fn a_dead_replica_is_skipped_and_the_live_one_preferred_next_time() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let live_addr = live.local_addr().unwrap().to_string();
        let list = format!("{dead_addr},{live_addr}");
        let authorities = control_authorities(&list);
        let tcp = connect_any(&list, &authorities, None).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap().to_string(), live_addr);
        assert_eq!(preferred().lock().unwrap().get(&list), Some(&1));
        drop(live);
        let e = connect_any(&list, &authorities, None).await.unwrap_err();
        assert!(
            e.to_string().contains(&dead_addr),
            "names the last one tried: {e}"
        );
    }
}
