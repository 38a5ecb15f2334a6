//! Listening sockets for both planes: a deep accept queue, and errors that name the
//! address and what it was for.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Connections the kernel queues for a listener before the process accepts them (capped by
/// `net.core.somaxconn`, 4096 by default). A burst of new connections larger than the
/// queue has some of them wait for SYN retransmissions (1 s, 3 s, …) before the process
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
