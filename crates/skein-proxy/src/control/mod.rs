//! The control-plane client: obtains this proxy's workload certificate, registers its
//! workload with `skein control`, applies each configuration snapshot it pushes
//! (atomically, or not at all), acknowledges it, and renews the certificate.
//!
//! Order: generate a key → `Certify` with the join token over TLS that trusts only the
//! token's pinned root (no client certificate yet) → `Sync` over mutual TLS with the new
//! certificate → renew at 70 % of the certificate's life (or at once when the CA rolls to
//! a new generation), presenting the current certificate instead of the token.
//!
//! While the control plane is unreachable the proxy keeps serving on its last good
//! configuration and certificate and reconnects with exponential backoff and jitter; once
//! the certificate expires, new mTLS handshakes fail closed until a renewal succeeds (with
//! the expired certificate, which the control plane accepts for a day, or the token). A
//! snapshot that cannot be applied is refused with the reason (a NACK), and the old one
//! stays in force.
//!
//! A refusal that retrying cannot fix (the token or workload revoked, a token for another
//! service or used up, a control plane that is not the one the token pins) is
//! [`Failure::fatal`]: the proxy reports it through [`Ctx::fatal`] and stops trying, and
//! `skein proxy` exits non-zero. Only transient failures are retried.

mod channel;
mod snapshot;

pub use channel::{tls_channel, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
pub use snapshot::{apply_delta, next_config, to_config};

use crate::identity::Identity;
use crate::metrics::Direction;
use crate::Ctx;
use channel::channel;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_api::v1::{
    self as pb, proxy_message, Ack, CertifyRequest, ProxyMessage, Register, Snapshot,
};
use skein_identity::{CertificateDer, DenyList, JoinToken, WorkloadCert, WorkloadKey};
use skein_identity::{MeshClock, SpiffeId};
use skein_model::ProxyConfig;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// First reconnect delay; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Shortest time between two renewals, a floor under whatever the certificate's times
/// say (a renewal loop would flood the control plane).
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// gRPC address, e.g. `127.0.0.1:9991`, or several replicas separated by commas (an
    /// `http://` prefix is accepted and ignored; the connection is always TLS). The proxy
    /// fails over between them.
    pub endpoint: String,
    /// The address peers should use to reach this proxy's inbound listener.
    pub advertise: SocketAddr,
    /// The join token (`skein token create`).
    pub token: JoinToken,
}

/// Why a call to the control plane failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong, for the log and the operator.
    pub message: String,
    /// True when retrying cannot help: revoked, used up, for another service, or a control
    /// plane the token does not pin.
    pub fatal: bool,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            fatal: false,
        }
    }

    fn fatal(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            fatal: true,
        }
    }

    /// A refusal from the control plane: permission, authentication and argument errors
    /// are answers about this proxy, not about the network, so retrying cannot change them.
    fn from_status(s: &tonic::Status, what: &str) -> Self {
        use tonic::Code;
        let message = format!("{what}: {}", s.message());
        match s.code() {
            Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument => {
                Failure::fatal(message)
            }
            _ => Failure::transient(message),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reports a failure retrying cannot fix and stops: `/ready` turns false and
/// [`crate::RunningProxy::fatal`] returns it (`skein proxy` then exits non-zero).
fn give_up(ctx: &Ctx, failure: &Failure) {
    tracing::error!(error = %failure, "the control plane refused this proxy for good; stopping (fix the cause, then start the proxy with a new join token)");
    ctx.ready.store(false, Ordering::SeqCst);
    ctx.fatal.send_replace(Some(failure.message.clone()));
}

/// Keeps a session with the control plane until shutdown: first the certificate, then
/// the configuration stream, with renewal alongside.
pub async fn run(ctx: Arc<Ctx>, control: ControlConfig) {
    let mut failures = 0u32;
    while ctx.identity.get().is_none() {
        let result = tokio::select! {
            _ = ctx.drain.signalled() => return,
            r = bootstrap(&ctx, &control) => r,
        };
        match result {
            Ok(identity) => {
                ctx.metrics.cert_renewals("issued");
                tracing::info!(identity = %identity.id(), expires = %identity.status().expires, "obtained the workload certificate");
                ctx.identity.set(identity);
            }
            Err(e) if e.fatal => {
                ctx.metrics.cert_renewals("failed");
                return give_up(&ctx, &e);
            }
            Err(e) => {
                ctx.metrics.cert_renewals("failed");
                failures = failures.saturating_add(1);
                tracing::error!(endpoint = %control.endpoint, error = %e, failures, "cannot obtain a workload certificate with the join token; retrying");
                tokio::select! {
                    _ = ctx.drain.signalled() => return,
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
            }
        }
    }
    tokio::spawn(renew_loop(ctx.clone(), control.clone()));
    let mut failures = 0u32;
    let mut fatal = ctx.fatal.subscribe();
    loop {
        let result = tokio::select! {
            _ = ctx.drain.signalled() => return,
            // Renewal gave up: so does the session.
            _ = fatal.wait_for(Option::is_some) => return,
            r = session(&ctx, &control) => r,
        };
        ctx.metrics.control_connected.set(0);
        match result {
            Ok(()) => {
                tracing::warn!(endpoint = %control.endpoint, "control plane closed the stream; reconnecting");
                failures = 0;
            }
            Err(e) if e.fatal => return give_up(&ctx, &e),
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(endpoint = %control.endpoint, error = %e, failures, "control plane unreachable; serving the last good configuration");
            }
        }
        let delay = backoff(failures);
        tokio::select! {
            _ = ctx.drain.signalled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff with full jitter: a random delay in [d/2, d].
fn backoff(failures: u32) -> Duration {
    let exp = MIN_BACKOFF.saturating_mul(1u32 << failures.min(16));
    let capped = exp.min(MAX_BACKOFF);
    let random = RandomState::new().hash_one(failures) % 1000;
    capped / 2 + capped / 2 * random as u32 / 1000
}

/// The identity the control plane must present: its own, in the token's trust domain.
pub fn control_identity(token: &JoinToken) -> Result<SpiffeId, tonic::Status> {
    SpiffeId::new(token.trust_domain(), "skein-system", "skein-control")
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

/// The identity this proxy's workload claims: its service in its namespace.
fn claimed_identity(ctx: &Ctx, trust_domain: &str) -> Result<SpiffeId, String> {
    let w = ctx.config().workload.clone();
    SpiffeId::new(trust_domain, &w.namespace, &w.service).map_err(|e| e.to_string())
}

/// First certificate: a fresh key, a CSR, and the join token, over TLS that trusts only
/// the root the token pins.
async fn bootstrap(ctx: &Ctx, control: &ControlConfig) -> Result<Arc<Identity>, Failure> {
    let claimed = claimed_identity(ctx, control.token.trust_domain()).map_err(Failure::fatal)?;
    certify(control, &claimed).await
}

/// Obtains a certificate for `claimed` with the join token in `control` (what a proxy does
/// at start; public for tests and tools that run a proxy with a fixed identity).
pub async fn certify(
    control: &ControlConfig,
    claimed: &SpiffeId,
) -> Result<Arc<Identity>, Failure> {
    let issued = certify_with_token(control, claimed).await?;
    let clock = Arc::new(MeshClock::new());
    clock.observe(issued.control_unix_ms);
    Identity::with_clock(&issued.cert, issued.roots, issued.generation, clock)
        .map_err(|e| Failure::transient(e.to_string()))
}

/// What `Certify` hands back.
struct Issued {
    /// The certificate, with our key.
    cert: WorkloadCert,
    /// The trust bundle.
    roots: Vec<CertificateDer<'static>>,
    /// The CA generation that signed it.
    generation: u64,
    /// The control plane's clock when it answered (0: not said).
    control_unix_ms: i64,
}

/// A certificate obtained with the join token, over TLS that trusts only the pinned root.
async fn certify_with_token(
    control: &ControlConfig,
    claimed: &SpiffeId,
) -> Result<Issued, Failure> {
    let token = &control.token;
    let tls = skein_identity::tls::bootstrap_client_config(
        token.ca_pin(),
        control_identity(token).map_err(|e| Failure::fatal(e.message()))?,
    )
    .map_err(|e| Failure::fatal(e.to_string()))?;
    request_cert(control, tls, token.reveal(), claimed).await
}

/// One `Certify` call over `tls`: a fresh key and CSR for `claimed`, authenticated by
/// `token` (empty: by the client certificate in `tls`). Checks the issued identity.
async fn request_cert(
    control: &ControlConfig,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    claimed: &SpiffeId,
) -> Result<Issued, Failure> {
    let key = WorkloadKey::generate().map_err(|e| Failure::transient(e.to_string()))?;
    let csr = key
        .csr(claimed)
        .map_err(|e| Failure::fatal(e.to_string()))?;
    let mut client = ProxyControlClient::new(channel(control, tls).await?);
    let resp = client
        .certify(CertifyRequest {
            token,
            csr_pem: csr,
        })
        .await
        .map_err(|e| Failure::from_status(&e, "the control plane refused"))?
        .into_inner();
    let cert =
        WorkloadCert::new(key, &resp.chain_pem).map_err(|e| Failure::transient(e.to_string()))?;
    if cert.identity() != claimed {
        return Err(Failure::fatal(format!(
            "the control plane issued {} instead of {claimed}",
            cert.identity()
        )));
    }
    let roots = resp
        .trust_bundle
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Ok(Issued {
        cert,
        roots,
        generation: resp.ca_generation,
        control_unix_ms: resp.issued_unix_ms,
    })
}

/// Renews the certificate at 70 % of its life (or when told to, after a CA rotation),
/// retrying failures with backoff; keeps the expiry gauge current. Times are read off the
/// identity's clock (the control plane's time), and the backoff off the monotonic clock,
/// so that a jump of the host's wall clock neither renews early nor stalls renewal.
async fn renew_loop(ctx: Arc<Ctx>, control: ControlConfig) {
    let Some(identity) = ctx.identity.get().cloned() else {
        return;
    };
    let mut failures = 0u32;
    let mut next_try = tokio::time::Instant::now();
    let mut forced = false;
    loop {
        let now = identity.clock().now();
        let expires_in = identity
            .not_after()
            .duration_since(now)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
        ctx.metrics.cert_expiry_seconds.set(expires_in);
        if (forced || now >= identity.renew_at()) && tokio::time::Instant::now() >= next_try {
            match renew(&control, &identity).await {
                Ok(()) => {
                    failures = 0;
                    forced = false;
                    // Whatever the clocks say next, never more than one renewal a second.
                    next_try = tokio::time::Instant::now() + MIN_RENEWAL_INTERVAL;
                    ctx.metrics.cert_renewals("issued");
                    let s = identity.status();
                    tracing::info!(serial = %s.serial, expires = %s.expires, generation = s.ca_generation, "renewed the workload certificate");
                    continue;
                }
                Err(e) if e.fatal => {
                    ctx.metrics.cert_renewals("failed");
                    return give_up(&ctx, &e);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    ctx.metrics.cert_renewals("failed");
                    next_try = tokio::time::Instant::now() + backoff(failures);
                    let valid = identity.is_valid();
                    tracing::warn!(error = %e, failures, valid, expires = %identity.status().expires, "certificate renewal failed; retrying with backoff");
                }
            }
        }
        tokio::select! {
            _ = ctx.drain.signalled() => return,
            _ = identity.renew_now.notified() => forced = true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One renewal: a fresh key and CSR, authenticated by the current certificate. Once that
/// expired (the control plane was unreachable too long) the expired certificate still
/// authenticates for a day; if it is refused, the join token is tried (it has a use left
/// only if it was made with `--uses`).
async fn renew(control: &ControlConfig, identity: &Identity) -> Result<(), Failure> {
    let id = identity.id();
    let expected = control_identity(&control.token).map_err(|e| Failure::fatal(e.message()))?;
    let tls = identity
        .client_config(&expected)
        .map_err(|e| Failure::transient(e.to_string()))?;
    let issued = match request_cert(control, tls, String::new(), &id).await {
        Ok(issued) => issued,
        Err(e) if identity.is_valid() || !e.fatal => return Err(e),
        Err(by_cert) => certify_with_token(control, &id).await.map_err(|by_token| Failure {
            message: format!(
                "the certificate expired and neither it ({by_cert}) nor the join token ({by_token}) could renew it; restart the proxy with a new token"
            ),
            fatal: by_token.fatal,
        })?,
    };
    identity.clock().observe(issued.control_unix_ms);
    // Roots first, so a certificate from a new root is presented only once peers' bundles
    // (pushed the same way) can verify it.
    identity
        .install_bundle(issued.roots)
        .map_err(|e| Failure::transient(e.to_string()))?;
    identity
        .install_cert(&issued.cert, issued.generation)
        .map_err(|e| Failure::transient(e.to_string()))
}

fn cert_message(identity: &Identity) -> ProxyMessage {
    let s = identity.status();
    ProxyMessage {
        message: Some(proxy_message::Message::Cert(pb::CertStatus {
            identity: s.identity,
            serial: s.serial,
            not_after_unix: s.not_after_unix,
            ca_generation: s.ca_generation,
            sent_unix_ms: unix_ms_now(),
        })),
    }
}

/// This host's wall clock, Unix milliseconds: sent with certificate reports and acks so
/// that the control plane can tell how far apart the clocks are (`skein check`).
fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Applies what a snapshot says about identity: trusted roots, mTLS mode, and whether the
/// CA moved to a generation our certificate predates. Returns the revoked lineages, which
/// [`apply_denied`] installs once the snapshot's endpoints are in force (so no request
/// picks a revoked endpoint that the old table still listed).
fn apply_identity(identity: &Identity, snapshot: &Snapshot) -> Result<DenyList, String> {
    if !snapshot.trust_bundle.is_empty() {
        let roots = snapshot
            .trust_bundle
            .iter()
            .map(|r| CertificateDer::from(r.clone()))
            .collect();
        if identity
            .install_bundle(roots)
            .map_err(|e| format!("trust bundle: {e}"))?
        {
            tracing::info!(
                roots = snapshot.trust_bundle.len(),
                "installed a new trust bundle"
            );
        }
    }
    let denied = DenyList::new(snapshot.revoked_lineages.clone())
        .map_err(|e| format!("revoked lineages: {e}"))?;
    identity.set_permissive(snapshot.mtls == pb::MtlsMode::Permissive as i32);
    if snapshot.ca_generation > identity.ca_generation() {
        identity.renew_now.notify_one();
    }
    Ok(denied)
}

/// Refuses peers of the revoked lineages in `denied` from now on. Connections already
/// open to a peer that is now revoked must not carry on: every pooled peer connection is
/// dropped, so each is dialled (and verified) anew; streams in flight finish.
fn apply_denied(ctx: &Ctx, identity: &Identity, denied: DenyList) {
    let count = denied.entries().len();
    if identity.install_denied(denied) {
        ctx.peers.clear();
        tracing::info!(
            revoked = count,
            "installed a new list of revoked lineages; peer connections re-verify"
        );
    }
}

/// Takes a telemetry summary every `telemetry.summaryInterval` and queues it for the
/// control-plane stream ([`session`] sends it); never waits on the stream.
pub async fn report(ctx: Arc<Ctx>) {
    let mut summarizer = crate::telemetry::summary::Summarizer::default();
    let mut dropped = 0;
    ctx.spans.send_to_control_plane();
    loop {
        let interval = ctx.config().telemetry.summary_interval;
        tokio::select! {
            _ = ctx.drain.signalled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
        if let Some(summary) = summarizer.take(
            &ctx.metrics.telemetry,
            &ctx.decisions,
            &ctx.spans,
            now_ms,
            interval_ms,
        ) {
            ctx.summaries.push(summary);
        }
        let now_dropped = ctx.summaries.dropped();
        ctx.metrics.summaries_dropped.inc_by(now_dropped - dropped);
        dropped = now_dropped;
    }
}

/// One stream: register, then apply and acknowledge snapshots until it ends; send the
/// telemetry summaries [`report`] queues.
async fn session(ctx: &Arc<Ctx>, control: &ControlConfig) -> Result<(), Failure> {
    let identity = ctx
        .identity
        .get()
        .cloned()
        .ok_or_else(|| Failure::transient("no workload certificate"))?;
    let expected = control_identity(&control.token).map_err(|e| Failure::fatal(e.message()))?;
    let tls = identity
        .client_config(&expected)
        .map_err(|e| Failure::transient(e.to_string()))?;
    let mut client = ProxyControlClient::new(channel(control, tls).await?);
    let (tx, rx) = mpsc::channel::<ProxyMessage>(8);
    tx.send(register_message(&ctx.config(), control.advertise, ctx))
        .await
        .map_err(|_| Failure::transient("stream closed"))?;
    let mut cert_changes = identity.subscribe();
    cert_changes.mark_changed();
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let refused =
        |e: tonic::Status| Failure::from_status(&e, "the control plane refused the session");
    let mut snapshots = client.sync(outgoing).await.map_err(refused)?.into_inner();
    ctx.discovery.connected(tx.clone());
    ctx.metrics.control_connected.set(1);
    tracing::info!(endpoint = %control.endpoint, "connected to the control plane");
    let mut taps = open_taps(ctx, &mut client).await;
    let result = serve_session(
        ctx,
        &identity,
        &tx,
        &mut snapshots,
        &mut cert_changes,
        &mut taps,
    )
    .await;
    ctx.metrics.telemetry.taps.clear();
    ctx.discovery.disconnected();
    result
}

type TapCommands = Option<tonic::Streaming<pb::TapCommand>>;

/// Opens the `Tap` stream beside `Sync`: the control plane starts and stops taps on it.
/// A control plane without it (older) or a failure leaves taps off; the session goes on.
async fn open_taps(
    ctx: &Ctx,
    client: &mut ProxyControlClient<tonic::transport::Channel>,
) -> TapCommands {
    let (events, rx) = mpsc::channel::<pb::TapEvent>(256);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    match client.tap(outgoing).await {
        Ok(resp) => {
            ctx.metrics.telemetry.taps.connect(events);
            Some(resp.into_inner())
        }
        Err(e) => {
            tracing::debug!(error = %e.message(), "the control plane offers no taps");
            None
        }
    }
}

/// The next tap command, or never when there is no tap stream.
async fn next_tap(taps: &mut TapCommands) -> Option<Result<Option<pb::TapCommand>, tonic::Status>> {
    match taps {
        Some(stream) => Some(stream.message().await),
        None => std::future::pending().await,
    }
}

/// Applies and acknowledges snapshots, reports certificates and sends summaries until
/// the stream ends; applies tap commands.
async fn serve_session(
    ctx: &Arc<Ctx>,
    identity: &Arc<Identity>,
    tx: &mpsc::Sender<ProxyMessage>,
    snapshots: &mut tonic::Streaming<Snapshot>,
    cert_changes: &mut tokio::sync::watch::Receiver<u64>,
    taps: &mut TapCommands,
) -> Result<(), Failure> {
    let identity = identity.clone();
    let refused =
        |e: tonic::Status| Failure::from_status(&e, "the control plane refused the session");
    loop {
        let snapshot = tokio::select! {
            command = next_tap(taps) => {
                match command {
                    Some(Ok(Some(c))) => ctx.metrics.telemetry.taps.command(c),
                    _ => {
                        ctx.metrics.telemetry.taps.clear();
                        *taps = None;
                    }
                }
                continue;
            }
            changed = cert_changes.changed() => {
                if changed.is_ok() && tx.send(cert_message(&identity)).await.is_err() {
                    break;
                }
                continue;
            }
            _ = ctx.summaries.ready() => {
                for summary in ctx.summaries.drain() {
                    let message = ProxyMessage {
                        message: Some(proxy_message::Message::Summary(summary)),
                    };
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            msg = snapshots.message() => match msg.map_err(refused)? {
                Some(s) => s,
                None => break,
            },
        };
        identity.clock().observe(snapshot.sent_unix_ms);
        let version = snapshot.version;
        let held = ctx.config_version.load(Ordering::SeqCst);
        // What identity, trust and mesh settings say: a complete snapshot's, or what a
        // delta's `rest` replaces.
        let local = match &snapshot.delta {
            None => Some(&snapshot),
            Some(d) => d.rest.as_deref(),
        };
        let applied = local
            .map(|l| apply_identity(&identity, l))
            .transpose()
            .and_then(|denied| Ok((next_config(&ctx.config(), held, &snapshot)?, denied)));
        let error = match applied.map(|(config, denied)| (ctx.apply(config), denied)) {
            Ok((Ok(()), denied)) => {
                if let Some(denied) = denied {
                    apply_denied(ctx, &identity, denied);
                }
                ctx.discovery.applied(&snapshot);
                let received = match &snapshot.delta {
                    None => snapshot.destinations.len(),
                    Some(d) => d.destinations.len(),
                };
                ctx.metrics
                    .config_destinations(received, ctx.discovery.held());
                ctx.config_version.store(version, Ordering::SeqCst);
                ctx.metrics.config_version.set(version as i64);
                ctx.metrics.config_updates("applied");
                ctx.ready.store(true, Ordering::SeqCst);
                tracing::info!(version, "applied configuration snapshot");
                String::new()
            }
            Ok((Err(e), _)) => e.to_string(),
            Err(e) => e,
        };
        if !error.is_empty() {
            ctx.discovery.refused(&snapshot);
            ctx.metrics.config_updates("refused");
            ctx.metrics.error(Direction::Inbound, "config_refused");
            tracing::error!(version, %error, "refused configuration snapshot; keeping the previous one");
        }
        let stale = !error.is_empty()
            && snapshot
                .delta
                .as_ref()
                .is_some_and(|d| d.base_version != held);
        let ack = ProxyMessage {
            message: Some(proxy_message::Message::Ack(Ack {
                version,
                error,
                sent_unix_ms: unix_ms_now(),
                stale,
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Where Prometheus reaches the admin listener: its address, or the advertised IP with its
/// port when it listens on every address.
fn admin_address(admin: SocketAddr, advertise: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        SocketAddr::new(advertise.ip(), admin.port())
    } else {
        admin
    }
}

fn register_message(config: &ProxyConfig, advertise: SocketAddr, ctx: &Ctx) -> ProxyMessage {
    let w = &config.workload;
    let mut labels: std::collections::HashMap<String, String> =
        w.labels.clone().into_iter().collect();
    labels
        .entry("app".into())
        .or_insert_with(|| w.service.clone());
    let mut register = Register {
        workload: w.name.clone(),
        namespace: w.namespace.clone(),
        service: w.service.clone(),
        labels,
        address: advertise.ip().to_string(),
        inbound_port: u32::from(advertise.port()),
        app_ports: config
            .inbound
            .ports
            .iter()
            .map(|p| u32::from(p.port))
            .collect(),
        last_version: ctx.config_version.load(Ordering::SeqCst),
        admin_address: admin_address(
            ctx.admin_addr.get().copied().unwrap_or(config.admin.listen),
            advertise,
        )
        .to_string(),
        supports: Vec::new(),
        held: Vec::new(),
        wanted: None,
    };
    ctx.discovery.register(&mut register);
    ProxyMessage {
        message: Some(proxy_message::Message::Register(register)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let first = backoff(1);
        assert!(
            first >= MIN_BACKOFF && first <= MIN_BACKOFF * 2,
            "{first:?}"
        );
        for failures in [10, 20, 100] {
            let d = backoff(failures);
            assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
        }
    }
}
