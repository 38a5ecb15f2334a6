//! The connection to the control plane: a gRPC channel over TLS that leaves from the
//! proxy's advertised address, and how a failed connection is reported (a control plane
//! that fails the token's pin or identity is refused for good).

use super::{control_identity, ControlConfig, Failure};
use skein_identity::SpiffeId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// The control plane's address (`host:port`) from the configured endpoint.
fn control_authority(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
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
    tls_channel(control_authority(&control.endpoint), tls, &expected, source)
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::PermissionDenied {
                Failure::fatal(s.message().to_owned())
            } else {
                Failure::transient(s.message().to_owned())
            }
        })
}

/// A gRPC channel to `authority` (`host:port`) over TLS configured by `tls`, the server
/// presenting `expected`. With `source`, connections leave from that address when it is
/// one of this host's: the control plane accepts a registration only for the address it
/// sees the proxy connect from (or one inside its `--workload-cidr` ranges).
pub async fn tls_channel(
    authority: &str,
    tls: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
    source: Option<IpAddr>,
) -> Result<Channel, tonic::Status> {
    let authority = authority.to_owned();
    let name = skein_identity::tls::server_name(expected)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "control plane address {authority:?} is not host:port: {e}"
            ))
        })?
        .connect_timeout(Duration::from_secs(5));
    let connector = tower::service_fn(move |_: http::Uri| {
        let (authority, tls, name) = (authority.clone(), tls.clone(), name.clone());
        async move {
            let tcp = connect_from(&authority, source).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(refused_server)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
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
