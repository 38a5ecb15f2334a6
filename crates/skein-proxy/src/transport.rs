//! Sockets: binding listeners, reading the original destination of a redirected
//! connection (`SO_ORIGINAL_DST`, IPv4 and IPv6), and connecting with the options a
//! proxy wants (no Nagle delay).

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Connections the kernel queues for a listener before the proxy accepts them (capped by
/// `net.core.somaxconn`, 4096 by default). A burst of new connections larger than the
/// queue has some of them wait for SYN retransmissions (1 s, 3 s, …) before the proxy
/// even sees them; tokio's default is 1024, which a burst of 1,000 connections already
/// overflowed in `tests/attacks.rs`.
pub const BACKLOG: u32 = 4096;

/// Binds a listener (address reuse on, as tokio's `bind` does, and a [`BACKLOG`]-deep
/// accept queue), naming the address in the error so the operator knows which setting to
/// change.
pub async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for {what}: {e} (is another process using it?)"),
        )
    })
}

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
