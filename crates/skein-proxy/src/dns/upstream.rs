//! Upstream resolvers: where they are (`dns.upstreams`, else the `nameserver` lines of
//! `/etc/resolv.conf`) and forwarding one query to them, unchanged, over the transport
//! the client used.
//!
//! Each upstream is tried in order for at most [`TIMEOUT`]. Over UDP each query gets a
//! fresh socket on an ephemeral port, connected to the upstream, so the kernel delivers
//! only that upstream's datagrams; a reply is accepted only when its ID matches the
//! query's, which leaves a spoofer a 16-bit ID and a random port to guess.

use skein_model::proxy::DnsConfig;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

/// How long one upstream has to answer one query.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Where the system's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Largest DNS message (a UDP datagram, or the TCP length prefix's limit).
const MAX_MESSAGE: usize = 65_535;

/// The resolvers `config` forwards to: its `upstreams`, or those of `/etc/resolv.conf`
/// (read now), without any that is this server itself.
pub fn resolvers(config: &DnsConfig) -> Vec<SocketAddr> {
    if !config.upstreams.is_empty() {
        return config.upstreams.clone();
    }
    let listed = match std::fs::read_to_string(RESOLV_CONF) {
        Ok(text) => from_resolv_conf(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read {RESOLV_CONF}; names outside the mesh will get SERVFAIL (set dns.upstreams)");
            return Vec::new();
        }
    };
    let (own, others): (Vec<_>, Vec<_>) = listed.into_iter().partition(|u| config.loops_back(*u));
    for u in own {
        tracing::warn!(upstream = %u, "ignoring the {RESOLV_CONF} nameserver that is this proxy's own DNS listener");
    }
    if others.is_empty() {
        tracing::warn!("{RESOLV_CONF} lists no other nameserver; names outside the mesh will get SERVFAIL (set dns.upstreams)");
    }
    others
}

/// The `nameserver` addresses of a resolv.conf, on port 53 (IPv6 ones with a zone are
/// skipped: a socket address here carries no zone).
pub fn from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The first reply of `upstreams`, tried in order over UDP; `None` when none answered.
pub async fn forward_udp(upstreams: &[SocketAddr], query: &[u8], id: u16) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        match tokio::time::timeout(TIMEOUT, udp_once(upstream, query, id)).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "DNS upstream failed (UDP)"),
            Err(_) => tracing::debug!(%upstream, "DNS upstream did not answer within 2s (UDP)"),
        }
    }
    None
}

/// The first reply of `upstreams`, tried in order over TCP; `None` when none answered.
pub async fn forward_tcp(upstreams: &[SocketAddr], query: &[u8], id: u16) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        match tokio::time::timeout(TIMEOUT, tcp_once(upstream, query, id)).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "DNS upstream failed (TCP)"),
            Err(_) => tracing::debug!(%upstream, "DNS upstream did not answer within 2s (TCP)"),
        }
    }
    None
}

async fn udp_once(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let any: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf).await?;
        if is_reply_to(&buf[..n], id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_once(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut stream = crate::transport::connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    let reply = read_frame(&mut stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before replying"))?;
    if !is_reply_to(&reply, id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the reply's ID is not the query's",
        ));
    }
    Ok(reply)
}

/// True for a response (QR set) carrying `id`.
fn is_reply_to(message: &[u8], id: u16) -> bool {
    crate::dns::wire::Header::parse(message).is_some_and(|h| h.id == id && h.is_response())
}

/// Reads one length-prefixed message (RFC 1035 §4.2.2); `None` at a clean end between
/// messages.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Writes one length-prefixed message.
pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a DNS message over 65535 bytes",
        )
    })?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{encode_query, TYPE_A};

    #[test]
    fn resolv_conf_nameservers_on_port_53() {
        let text = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver  fd00::53 \n;nameserver 1.1.1.1\nnameserver fe80::1%eth0\noptions ndots:5\n";
        let want: Vec<SocketAddr> = vec![
            "10.96.0.10:53".parse().unwrap(),
            "[fd00::53]:53".parse().unwrap(),
        ];
        assert_eq!(from_resolv_conf(text), want);
        assert!(from_resolv_conf("").is_empty());
    }

    #[test]
    fn configured_upstreams_are_used_as_given() {
        let config = DnsConfig {
            upstreams: vec!["127.0.0.9:53".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(resolvers(&config), config.upstreams);
    }

    /// An upstream that first sends a reply with a wrong ID, then the right one.
    async fn fake_upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80;
            let mut wrong = reply.clone();
            wrong[0] ^= 0xFF;
            socket.send_to(&wrong, from).await.unwrap();
            socket.send_to(&reply, from).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn udp_skips_a_dead_upstream_and_a_wrong_id() {
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let live = fake_upstream().await;
        let query = encode_query(0x4242, "outside.test", TYPE_A);
        let upstreams = [dead.local_addr().unwrap(), live];
        let reply = forward_udp(&upstreams, &query, 0x4242).await.unwrap();
        assert_eq!(reply[..2], [0x42, 0x42]);
        assert_eq!(reply[3..], query[3..], "relayed unchanged");
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }
}
