//! Sockets: binding listeners, reading the original destination of a redirected
//! connection (`SO_ORIGINAL_DST`, IPv4 and IPv6), and connecting with the options a
//! proxy wants (no Nagle delay).

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub use skein_api::listen::{bind, BACKLOG};

/// The destination a client originally dialled before iptables `REDIRECT` sent the
/// connection here. Returns `None` when the socket was not redirected (the original
/// destination equals the local address) or the kernel has no record of one.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let dst = dst.ok()?.as_socket()?;
    (dst != local).then_some(dst)
}

/// Connects to `addr` with `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unredirected_socket_has_no_original_dst() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
        drop(client);
    }

    #[tokio::test]
    async fn bind_error_names_the_address_and_purpose() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = bind(addr, "the admin listener")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the admin listener") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}
