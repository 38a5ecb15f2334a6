//! The proxy's DNS server (`dns` in the configuration). The workload's DNS traffic (UDP
//! and TCP port 53, redirected here by iptables) gets A and AAAA answers for mesh service
//! names from the proxy itself, and every other query is forwarded byte for byte to the
//! upstream resolvers.
//!
//! Per query, in order: read the header and question ([`wire`]) → look the name up in
//! the mesh's names ([`names`], built once per state) → answer, or forward ([`upstream`])
//! and relay the reply → count it (`skein_dns_queries_total{answer}`). A query that does
//! not parse gets FORMERR; one too short to carry an ID is dropped.
//!
//! Like the admin listener, the server answers until the proxy has fully stopped (the
//! application may still resolve names while its requests drain) and is not counted as
//! work in flight, so it never holds up a clean shutdown.

pub mod names;
pub mod upstream;
pub mod wire;

use crate::metrics::DnsAnswer;
use crate::state::State;
use crate::Ctx;
use names::{Found, Table};
use skein_model::proxy::DnsConfig;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wire::{Rcode, WireError, TYPE_A, TYPE_AAAA, TYPE_ANY};

/// Forwarded queries in flight at once; beyond, SERVFAIL at once.
pub const MAX_FORWARDS: usize = 256;
/// TCP connections open at once; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 128;
/// How long a TCP connection may wait for its next query.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP datagram read (a query is forwarded whole, whatever its size).
const MAX_DATAGRAM: usize = 65_535;

/// The DNS server's sockets, bound and not yet serving.
pub struct Dns {
    udp: UdpSocket,
    tcp: TcpListener,
    upstreams: Vec<SocketAddr>,
}

impl Dns {
    /// Binds UDP and TCP on `config.listen` (the same port for both, also when it is 0)
    /// and finds the upstream resolvers. Fails naming the address when it cannot listen.
    pub async fn bind(config: &DnsConfig) -> io::Result<Dns> {
        let (udp, tcp) = bind_both(config.listen).await?;
        let upstreams = upstream::resolvers(config);
        tracing::debug!(listen = %udp.local_addr()?, ?upstreams, "DNS server bound");
        Ok(Dns {
            udp,
            tcp,
            upstreams,
        })
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves UDP and TCP until the proxy has stopped.
    pub fn spawn(self, ctx: Arc<Ctx>) {
        let server = Arc::new(Server {
            ctx,
            upstreams: self.upstreams,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            tables: Mutex::new(None),
        });
        tokio::spawn(serve_udp(server.clone(), Arc::new(self.udp)));
        tokio::spawn(accept_tcp(server, self.tcp));
    }
}

const WHAT: &str = "the DNS server";

/// UDP and TCP on one address. For port 0, the kernel picks the UDP port and TCP takes the
/// same one, which another process may hold: a few tries.
async fn bind_both(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| named(addr, "UDP", e))?;
        let at = udp.local_addr()?;
        match crate::transport::bind(at, &format!("{WHAT} (TCP)")).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| named(addr, "TCP", io::ErrorKind::AddrInUse.into())))
}

fn named(addr: SocketAddr, transport: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot listen on {addr} for {WHAT} ({transport}): {e} (is another process using it?)"
        ),
    )
}

/// What the server shares between its sockets.
struct Server {
    ctx: Arc<Ctx>,
    upstreams: Vec<SocketAddr>,
    forwards: Arc<Semaphore>,
    /// The names of the last state seen, rebuilt when the state is replaced. A weak
    /// reference keeps the old state's memory from being reused while it is compared.
    tables: Mutex<Option<(Weak<State>, Arc<Table>)>>,
}

/// What to do with one message.
enum Step {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Forward the query; `servfail` is the reply if no upstream answers.
    Forward {
        id: u16,
        servfail: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
    /// Send nothing.
    Drop,
}

impl Server {
    /// The names of the state in force, built once per state.
    fn table(&self) -> Arc<Table> {
        let state = self.ctx.state();
        let mut cached = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((seen, table)) if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&state)) => {
                table.clone()
            }
            _ => {
                let table = Arc::new(Table::new(&state.config));
                *cached = Some((Arc::downgrade(&state), table.clone()));
                table
            }
        }
    }

    /// Answers `message` from the mesh's names, or says to forward it (within the
    /// forwarding limit); counts what it answered.
    fn step(&self, message: &[u8]) -> Step {
        let (decision, answer) = decide(&self.table(), message);
        match decision {
            Decision::Reply(reply) => {
                self.ctx.metrics.dns_query(answer);
                Step::Reply(reply)
            }
            Decision::Drop => Step::Drop,
            Decision::Forward { id, servfail } => match self.forwards.clone().try_acquire_owned() {
                Ok(permit) => Step::Forward {
                    id,
                    servfail,
                    permit,
                },
                Err(_) => {
                    tracing::debug!("{MAX_FORWARDS} DNS forwards in flight: SERVFAIL");
                    self.ctx.metrics.dns_query(DnsAnswer::ServFail);
                    Step::Reply(servfail)
                }
            },
        }
    }

    /// The name `message` asks about, when it is of a mesh form, no destination held
    /// answers to it, and this proxy discovers destinations on demand: ask first.
    fn unheld(&self, message: &[u8]) -> Option<String> {
        if !self.ctx.discovery.on_demand() {
            return None;
        }
        let query = wire::parse_query(message).ok()?;
        let q = &query.question;
        if q.qclass != wire::CLASS_IN {
            return None;
        }
        let table = self.table();
        if matches!(table.lookup(&q.name), Found::Service { .. }) {
            return None;
        }
        let name = q.name.trim_end_matches('.').to_ascii_lowercase();
        crate::discovery::mesh_form(&name, table.domain()).then_some(name)
    }

    /// The reply to `query`: the proxy's own, or the upstream's; `None`: none is due.
    async fn answer(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        match self.step(query) {
            Step::Reply(reply) => Some(reply),
            Step::Drop => None,
            Step::Forward {
                id,
                servfail,
                permit,
            } => {
                let reply = self.forward(query, id, servfail, tcp).await;
                drop(permit);
                Some(reply)
            }
        }
    }

    /// The upstream's reply to `query`, or SERVFAIL; counted.
    async fn forward(&self, query: &[u8], id: u16, servfail: Vec<u8>, tcp: bool) -> Vec<u8> {
        let reply = if tcp {
            upstream::forward_tcp(&self.upstreams, query, id).await
        } else {
            upstream::forward_udp(&self.upstreams, query, id).await
        };
        match reply {
            Some(reply) => {
                self.ctx.metrics.dns_query(DnsAnswer::Forwarded);
                reply
            }
            None => {
                tracing::debug!(upstreams = ?self.upstreams, "no DNS upstream answered: SERVFAIL");
                self.ctx.metrics.dns_query(DnsAnswer::ServFail);
                servfail
            }
        }
    }
}

/// Answers each datagram at once, or forwards it on a task of its own.
async fn serve_udp(server: Arc<Server>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            _ = server.ctx.drain.stopped() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(received) => received,
                // A failed receive loses one datagram at most; its client asks again.
                Err(_) => continue,
            },
        };
        if let Some(name) = server.unheld(&buf[..n]) {
            // Asked on a task of its own (counted as a forward), so that other queries
            // are answered meanwhile.
            if let Ok(permit) = server.forwards.clone().try_acquire_owned() {
                let (server, socket, query) = (server.clone(), socket.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    let asked = server.ctx.discovery.ask(&name).await;
                    tracing::debug!(%name, ?asked, "asked the control plane about a DNS name");
                    drop(permit);
                    tokio::select! {
                        _ = server.ctx.drain.stopped() => {}
                        reply = server.answer(&query, false) => if let Some(reply) = reply {
                            send(&socket, &reply, client).await;
                        },
                    }
                });
                continue;
            }
        }
        match server.step(&buf[..n]) {
            Step::Reply(reply) => send(&socket, &reply, client).await,
            Step::Drop => {}
            Step::Forward {
                id,
                servfail,
                permit,
            } => {
                let (server, socket, query) = (server.clone(), socket.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = server.ctx.drain.stopped() => {}
                        reply = server.forward(&query, id, servfail, false) => {
                            send(&socket, &reply, client).await;
                        }
                    }
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(reply, client).await {
        tracing::debug!(%client, error = %e, "cannot send a DNS reply");
    }
}

/// Accepts TCP connections (at most [`MAX_TCP_CONNECTIONS`] at once).
async fn accept_tcp(server: Arc<Server>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, client) = tokio::select! {
            _ = server.ctx.drain.stopped() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%client, "refused a DNS connection: {MAX_TCP_CONNECTIONS} are open");
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = server.ctx.drain.stopped() => {}
                _ = serve_tcp(&server, stream) => {}
            }
        });
    }
}

/// Answers one connection's queries in order until it closes, idles or sends something
/// that is not a query.
async fn serve_tcp(server: &Server, mut stream: TcpStream) {
    loop {
        let read = upstream::read_frame(&mut stream);
        let Ok(Ok(Some(query))) = tokio::time::timeout(TCP_IDLE_TIMEOUT, read).await else {
            return;
        };
        if let Some(name) = server.unheld(&query) {
            let asked = server.ctx.discovery.ask(&name).await;
            tracing::debug!(%name, ?asked, "asked the control plane about a DNS name");
        }
        let Some(reply) = server.answer(&query, true).await else {
            return;
        };
        if upstream::write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// What the mesh's names say about one message.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// The proxy's own reply.
    Reply(Vec<u8>),
    /// Not the mesh's: forward it with this ID; `servfail` if no upstream answers.
    Forward { id: u16, servfail: Vec<u8> },
    /// Not a query: no reply.
    Drop,
}

/// Answers `message` from `table`, or decides to forward or drop it; also says how the
/// answer is counted (meaningful for replies only).
fn decide(table: &Table, message: &[u8]) -> (Decision, DnsAnswer) {
    let query = match wire::parse_query(message) {
        Ok(query) => query,
        Err(WireError::Malformed { header, reason }) => {
            tracing::debug!(reason, "DNS query not understood: FORMERR");
            return (
                Decision::Reply(header.failure(Rcode::FormErr)),
                DnsAnswer::FormErr,
            );
        }
        Err(e) => {
            tracing::debug!(error = %e, "DNS message dropped");
            return (Decision::Drop, DnsAnswer::FormErr);
        }
    };
    let q = &query.question;
    let found = if q.qclass == wire::CLASS_IN {
        table.lookup(&q.name)
    } else {
        Found::Forward
    };
    let (rcode, addresses, answer) = match found {
        Found::Forward => {
            let servfail = query.failure(Rcode::ServFail);
            let forward = Decision::Forward {
                id: query.header.id,
                servfail,
            };
            return (forward, DnsAnswer::Forwarded);
        }
        Found::NxDomain => (Rcode::NxDomain, Vec::new(), DnsAnswer::NxDomain),
        Found::Exists => (Rcode::NoError, Vec::new(), DnsAnswer::NoData),
        Found::Service { service, addresses } => {
            if addresses.is_empty() {
                tracing::debug!(name = %q.name, service, "mesh service has no addresses: NODATA");
            }
            let wanted = of_type(addresses, q.qtype);
            let answer = if wanted.is_empty() {
                DnsAnswer::NoData
            } else {
                DnsAnswer::Mesh
            };
            (Rcode::NoError, wanted, answer)
        }
    };
    let reply = query.answer(rcode, table.ttl, &addresses);
    tracing::debug!(name = %q.name, qtype = q.qtype, answer = answer.as_str(), records = addresses.len(), "answered a DNS query");
    (Decision::Reply(reply), answer)
}

/// The addresses a question of `qtype` asks for: A the IPv4 ones, AAAA the IPv6 ones, ANY
/// both; any other type none.
fn of_type(addresses: &[IpAddr], qtype: u16) -> Vec<IpAddr> {
    let wanted = |a: &&IpAddr| match qtype {
        TYPE_A => a.is_ipv4(),
        TYPE_AAAA => a.is_ipv6(),
        TYPE_ANY => true,
        _ => false,
    };
    addresses.iter().filter(wanted).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::ProxyConfig;
    use wire::encode_query;

    fn table() -> Table {
        let yaml = "workload: {name: w, service: web}
inbound: {ports: [{port: 80}]}
dns: {ttl: 7s}
destinations:
- {service: restaurant, ports: [{port: 80}], endpoints: [], addresses: ['198.18.1.10', 'fd00::10']}
- {service: ledger, ports: [{port: 80}], endpoints: []}
";
        Table::new(&ProxyConfig::from_yaml(yaml, "test").unwrap())
    }

    /// The reply's RCODE, answer count and addresses, for a question of `qtype`.
    fn ask(name: &str, qtype: u16) -> (DnsAnswer, u8, Vec<IpAddr>) {
        let (decision, answer) = decide(&table(), &encode_query(3, name, qtype));
        let Decision::Reply(reply) = decision else {
            panic!("expected a reply for {name}, got {decision:?}")
        };
        let question_end = encode_query(3, name, qtype).len();
        let mut addresses = Vec::new();
        let mut at = question_end;
        while at < reply.len() {
            let len = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
            let ttl = u32::from_be_bytes(reply[at + 6..at + 10].try_into().unwrap());
            assert_eq!(ttl, 7);
            let data = &reply[at + 12..at + 12 + len];
            addresses.push(match len {
                4 => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
            });
            at += 12 + len;
        }
        (answer, reply[3] & 0x0F, addresses)
    }

    #[test]
    fn a_and_aaaa_and_any_get_the_service_addresses() {
        let v4: IpAddr = "198.18.1.10".parse().unwrap();
        let v6: IpAddr = "fd00::10".parse().unwrap();
        assert_eq!(ask("restaurant", TYPE_A), (DnsAnswer::Mesh, 0, vec![v4]));
        assert_eq!(
            ask("restaurant.default.svc.cluster.local", TYPE_AAAA),
            (DnsAnswer::Mesh, 0, vec![v6])
        );
        assert_eq!(
            ask("RESTAURANT.default", TYPE_ANY),
            (DnsAnswer::Mesh, 0, vec![v4, v6])
        );
    }

    #[test]
    fn other_types_and_addressless_services_get_nodata() {
        for qtype in [16, 15, 33, 65] {
            assert_eq!(
                ask("restaurant", qtype),
                (DnsAnswer::NoData, 0, vec![]),
                "type {qtype}"
            );
        }
        assert_eq!(
            ask("ledger.default.svc", TYPE_A),
            (DnsAnswer::NoData, 0, vec![])
        );
        assert_eq!(
            ask("default.svc.cluster.local", TYPE_A),
            (DnsAnswer::NoData, 0, vec![])
        );
    }

    #[test]
    fn unknown_mesh_names_get_nxdomain_and_others_are_forwarded() {
        assert_eq!(
            ask("nosuch.default.svc.cluster.local", TYPE_A),
            (DnsAnswer::NxDomain, 3, vec![])
        );
        let query = encode_query(77, "outside.test", TYPE_A);
        let (decision, _) = decide(&table(), &query);
        let Decision::Forward { id, servfail } = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(id, 77);
        assert_eq!(servfail[3] & 0x0F, 2);
        let mut chaos = encode_query(78, "restaurant", TYPE_A);
        let last = chaos.len() - 1;
        chaos[last] = 3; // class CH
        assert!(matches!(
            decide(&table(), &chaos).0,
            Decision::Forward { .. }
        ));
    }

    #[tokio::test]
    async fn binds_udp_and_tcp_on_one_port_and_names_a_taken_address() {
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: vec!["127.0.0.1:53".parse().unwrap()],
            ..Default::default()
        };
        let dns = Dns::bind(&config).await.unwrap();
        let addr = dns.local_addr().unwrap();
        assert_eq!(dns.tcp.local_addr().unwrap(), addr);
        let taken = DnsConfig {
            listen: addr,
            ..config
        };
        let err = Dns::bind(&taken).await.err().unwrap().to_string();
        assert!(
            err.contains(&format!("cannot listen on {addr} for the DNS server (UDP)")),
            "{err}"
        );
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let (decision, answer) = decide(&table(), b"\x12\x34 not a dns query at all");
        let Decision::Reply(reply) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(
            (answer, reply[..2].to_vec(), reply[3] & 0x0F),
            (DnsAnswer::FormErr, vec![0x12, 0x34], 1)
        );
        assert_eq!(decide(&table(), b"short").0, Decision::Drop);
    }
}
