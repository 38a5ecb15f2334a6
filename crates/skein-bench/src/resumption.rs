//! What TLS 1.3 session resumption would save on a new mutual-TLS connection between two
//! skein proxies, measured in this process with no sockets.
//!
//! Skein's proxies never resume (`skein_identity::tls`): a resumed handshake skips
//! certificate verification, and the mesh's trust bundle and deny list can change between
//! the first connection and the next. This scenario measures what that choice costs, on
//! one thread, with the mesh's own configurations and certificates (a throwaway mesh CA,
//! P-256 keys, a client certificate for `loadgen`, the server `bench`):
//!
//! 1. the full handshake as the proxies make it today;
//! 2. a resumed handshake: the same configurations with a session cache on the server (one
//!    ticket per connection) and one on the client;
//! 3. a resumed handshake followed by what would keep resumption safe: both peers' chains
//!    verified again against the current bundle (webpki, as the mesh verifiers do before
//!    their SPIFFE and deny-list checks, which cost little beside it).
//!
//! Each handshake runs to the end on both sides, including the server's session ticket
//! where one is sent, and each is checked to be of the kind it is counted as. The three
//! kinds alternate in blocks, so that a change of the machine's speed touches them alike;
//! the figure is CPU time of this thread (client and server together) and the bytes each
//! side wrote.

use anyhow::{bail, Context};
use rustls::client::Resumption as ClientResumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use serde::Serialize;
use skein_identity::{tls, CertificateAuthority, SpiffeId, WorkloadCert, WorkloadKey};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Handshakes of each kind in one block; the kinds take turns block by block.
const BLOCK: u64 = 50;

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Resumption {
    /// Handshakes counted of each kind.
    pub handshakes: u64,
    /// One row per kind, the full handshake first.
    pub rows: Vec<Row>,
}

/// One kind of handshake.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub what: &'static str,
    /// CPU time per handshake, both sides together, µs.
    pub cpu_us: f64,
    /// Bytes the client wrote per handshake.
    pub client_bytes: u64,
    /// Bytes the server wrote per handshake (its session ticket included).
    pub server_bytes: u64,
}

/// The kinds measured, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    Resumed,
    ResumedReverified,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Full, Kind::Resumed, Kind::ResumedReverified];

    fn what(self) -> &'static str {
        match self {
            Kind::Full => "full handshake (what skein proxies do)",
            Kind::Resumed => "resumed (session cache, one ticket per connection)",
            Kind::ResumedReverified => "resumed, both chains verified again",
        }
    }
}

/// Both sides' configurations for one kind, and the verifier that re-checks chains.
struct Peers {
    full_client: Arc<ClientConfig>,
    full_server: Arc<ServerConfig>,
    resuming_client: Arc<ClientConfig>,
    resuming_server: Arc<ServerConfig>,
    server_name: ServerName<'static>,
    reverify: Arc<dyn ClientCertVerifier>,
}

impl Peers {
    fn new() -> anyhow::Result<Self> {
        const TRUST_DOMAIN: &str = "skein.local";
        let ca = CertificateAuthority::generate(TRUST_DOMAIN)?;
        let issue = |name: &str| -> anyhow::Result<WorkloadCert> {
            let id = SpiffeId::new(TRUST_DOMAIN, "default", name)?;
            let key = WorkloadKey::generate()?;
            let issued = ca.issue(key.csr(&id)?, &id, Duration::from_secs(3600))?;
            Ok(WorkloadCert::new(key, &issued.chain_pem)?)
        };
        let (client_cert, server_cert) = (issue("loadgen")?, issue("bench")?);
        let server_id = server_cert.identity().clone();
        let bundle = || tls::TrustBundle::new(&ca.trust_bundle());
        let full_client = tls::client_config(
            tls::CertResolver::new(&client_cert)?,
            bundle()?,
            server_id.clone(),
        )?;
        let full_server = tls::server_config(tls::CertResolver::new(&server_cert)?, bundle()?)?;
        let mut resuming_client = (*full_client).clone();
        resuming_client.resumption = ClientResumption::in_memory_sessions(64);
        let mut resuming_server = (*full_server).clone();
        resuming_server.session_storage = ServerSessionMemoryCache::new(1024);
        resuming_server.send_tls13_tickets = 1;
        let mut roots = rustls::RootCertStore::empty();
        for root in ca.trust_bundle() {
            roots.add(root)?;
        }
        let reverify = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .context("cannot build the chain verifier")?;
        Ok(Peers {
            full_client,
            full_server,
            resuming_client: Arc::new(resuming_client),
            resuming_server: Arc::new(resuming_server),
            server_name: tls::server_name(&server_id)?,
            reverify,
        })
    }

    /// One handshake of `kind` to its end; the bytes each side wrote.
    fn handshake(&self, kind: Kind) -> anyhow::Result<(u64, u64)> {
        self.connect(kind, true)
    }

    /// One handshake with the configurations of `kind`, checked to be of that kind when
    /// `check` (the first with the resuming configurations is full: it fetches the ticket).
    fn connect(&self, kind: Kind, check: bool) -> anyhow::Result<(u64, u64)> {
        let (client, server) = match kind {
            Kind::Full => (&self.full_client, &self.full_server),
            _ => (&self.resuming_client, &self.resuming_server),
        };
        let mut c = ClientConnection::new(client.clone(), self.server_name.clone())?;
        let mut s = ServerConnection::new(server.clone())?;
        let (mut to_server, mut to_client) = (0u64, 0u64);
        // Until both are done and nothing is left to deliver (the ticket comes last).
        for _ in 0..16 {
            let sent = transfer(&mut *c, &mut *s)?;
            to_server += sent;
            s.process_new_packets()
                .context("the server refused the handshake")?;
            let back = transfer(&mut *s, &mut *c)?;
            to_client += back;
            c.process_new_packets()
                .context("the client refused the handshake")?;
            if !c.is_handshaking() && !s.is_handshaking() && sent == 0 && back == 0 {
                break;
            }
        }
        if c.is_handshaking() || s.is_handshaking() {
            bail!("the in-memory handshake did not finish");
        }
        let want = match kind {
            Kind::Full => HandshakeKind::Full,
            _ => HandshakeKind::Resumed,
        };
        if check && (c.handshake_kind() != Some(want) || s.handshake_kind() != Some(want)) {
            bail!(
                "a {:?} handshake was {:?} (client) / {:?} (server)",
                kind,
                c.handshake_kind(),
                s.handshake_kind()
            );
        }
        if kind == Kind::ResumedReverified {
            self.verify_again(s.peer_certificates(), "client")?;
            self.verify_again(c.peer_certificates(), "server")?;
        }
        Ok((to_server, to_client))
    }

    /// The chain a resumed session remembers, verified as of now against the roots.
    fn verify_again(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        whose: &str,
    ) -> anyhow::Result<()> {
        let chain = chain.with_context(|| format!("the resumed session has no {whose} chain"))?;
        let (leaf, intermediates) = chain
            .split_first()
            .with_context(|| format!("the resumed session's {whose} chain is empty"))?;
        self.reverify
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .with_context(|| format!("the {whose} chain no longer verifies"))?;
        Ok(())
    }
}

/// Moves what `from` has to write into `to`; the number of bytes.
fn transfer<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> anyhow::Result<u64> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf)?;
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
    }
    Ok(buf.len() as u64)
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `handshakes` handshakes of each kind (rounded up to whole blocks) after a warm-up.
pub fn run(handshakes: u64) -> anyhow::Result<Resumption> {
    let peers = Peers::new()?;
    // The first ticket, then a warm-up that pages everything in.
    peers.connect(Kind::Resumed, false)?;
    for kind in Kind::ALL {
        for _ in 0..4 {
            peers.handshake(kind)?;
        }
    }
    let blocks = handshakes.div_ceil(BLOCK).max(1);
    let mut cpu = [Duration::ZERO; 3];
    let mut bytes = [(0u64, 0u64); 3];
    for _ in 0..blocks {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let began = thread_cpu();
            for _ in 0..BLOCK {
                let (c, s) = peers.handshake(kind)?;
                bytes[i].0 += c;
                bytes[i].1 += s;
            }
            cpu[i] += thread_cpu() - began;
        }
    }
    let n = blocks * BLOCK;
    let rows = Kind::ALL
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Row {
            what: kind.what(),
            cpu_us: cpu[i].as_secs_f64() * 1e6 / n as f64,
            client_bytes: bytes[i].0 / n,
            server_bytes: bytes[i].1 / n,
        })
        .collect();
    Ok(Resumption {
        handshakes: n,
        rows,
    })
}

/// The report's section.
pub fn markdown(o: &mut String, r: &Resumption) {
    let _ = writeln!(
        o,
        "### Session resumption between proxies (in process, no sockets)\n\n\
         What a new mutual-TLS connection between two proxies costs with the mesh's own \
         configurations, and what TLS 1.3 session resumption would save (skein does not \
         resume: a resumed session skips verification against the current trust bundle and \
         deny list). {} handshakes of each kind, alternating in blocks of {BLOCK}; CPU time \
         of client and server together.\n",
        crate::report::thousands(r.handshakes as f64)
    );
    let _ = writeln!(
        o,
        "| | CPU µs per handshake | ratio to full | client bytes | server bytes |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    let full = r.rows.first().map_or(0.0, |f| f.cpu_us);
    for row in &r.rows {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.2}× | {} | {} |",
            row.what,
            row.cpu_us,
            if full > 0.0 { row.cpu_us / full } else { 0.0 },
            crate::report::thousands(row.client_bytes as f64),
            crate::report::thousands(row.server_bytes as f64)
        );
    }
    o.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_completes_and_resumption_sends_fewer_bytes() {
        let r = run(BLOCK).unwrap();
        assert_eq!(r.handshakes, BLOCK);
        assert_eq!(r.rows.len(), 3);
        let (full, resumed) = (&r.rows[0], &r.rows[1]);
        // A resumed handshake carries no certificates: far fewer bytes either way.
        assert!(resumed.client_bytes * 2 < full.client_bytes, "{r:?}");
        assert!(full.cpu_us > 0.0 && resumed.cpu_us > 0.0, "{r:?}");
        let mut md = String::new();
        markdown(&mut md, &r);
        assert!(
            md.contains("| full handshake (what skein proxies do) |"),
            "{md}"
        );
    }
}
