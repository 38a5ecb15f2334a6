//! The DNS relay: how a workload's proxy reaches the host's resolvers from inside a
//! namespace that has no route beyond the bridge.
//!
//! `skein run` listens on the bridge's gateway address (UDP and TCP, one port) in the
//! host's namespace and forwards every query, unchanged, to the host's resolvers (a
//! resolver on loopback, such as systemd-resolved's 127.0.0.53, works too); the proxy's
//! `dns.upstreams` names the relay. It lives exactly as long as `skein run`.

use skein_proxy::dns::upstream::{forward_tcp, forward_udp, read_frame, write_frame};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

/// Queries in flight at once; more wait.
const MAX_IN_FLIGHT: usize = 256;

/// Binds UDP and TCP on one port of `ip` and serves clients inside `network/prefix` (the
/// bridge's; anyone else is ignored, so the relay is no open resolver) until the process
/// ends; returns the address.
pub async fn start(
    ip: IpAddr,
    network: (std::net::Ipv4Addr, u8),
    upstreams: Vec<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    let inside = move |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(network.1)).unwrap_or(0);
            u32::from(v4) & mask == u32::from(network.0) & mask
        }
        IpAddr::V6(_) => false,
    };
    // UDP on an ephemeral port, then TCP on the same one (retried if it is taken).
    let (udp, tcp) = {
        let mut last = None;
        let mut bound = None;
        for _ in 0..16 {
            let udp = UdpSocket::bind((ip, 0)).await?;
            match TcpListener::bind(udp.local_addr()?).await {
                Ok(tcp) => {
                    bound = Some((udp, tcp));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        match bound {
            Some(b) => b,
            None => anyhow::bail!(
                "cannot bind the DNS relay on {ip}: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
        }
    };
    let addr = udp.local_addr()?;
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let udp = Arc::new(udp);
    {
        let (upstreams, permits) = (upstreams.clone(), permits.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if n < 2 || !inside(from) {
                    continue;
                }
                let query = buf[..n].to_vec();
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (udp, upstreams) = (udp.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let id = u16::from_be_bytes([query[0], query[1]]);
                    if let Some(reply) = forward_udp(&upstreams, &query, id).await {
                        let _ = udp.send_to(&reply, from).await;
                    }
                    drop(permit);
                });
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let (mut stream, from) = match tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of descriptors, say: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !inside(from) {
                continue;
            }
            let (upstreams, permits) = (upstreams.clone(), permits.clone());
            tokio::spawn(async move {
                while let Ok(Ok(Some(query))) = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    read_frame(&mut stream),
                )
                .await
                {
                    if query.len() < 2 {
                        return;
                    }
                    let id = u16::from_be_bytes([query[0], query[1]]);
                    // A permit per query, not per connection: idle connections hold none.
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let reply = forward_tcp(&upstreams, &query, id).await;
                    drop(permit);
                    let Some(reply) = reply else {
                        return;
                    };
                    if write_frame(&mut stream, &reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}
