//! The proxies' gRPC API: each proxy registers its workload on a `Sync` stream and
//! receives a snapshot of the configuration it needs, then a new one each time that
//! configuration changes — and nothing while it does not.
//!
//! The port is TLS only (see [`crate::tls_incoming`]). `Certify` issues workload
//! certificates (to a join token, or to the holder of a current certificate); `Sync` needs
//! that certificate, and a proxy can only register the service its certificate names.
//!
//! Session order: check the client certificate → read `Register` → validate it against the
//! identity (service and namespace from the certificate, the announced address against the
//! connection's source) → claim the workload name on this replica (one live session per
//! workload) → record the workload (refused if another account owns the name) → send the
//! first snapshot → loop { mesh or CA changed: recompute, send if different | proxy acked
//! or reported its certificate: record }.

use crate::catalog::{Catalog, CatalogCache};
use crate::pki::{Pki, PkiView, Presented};
use crate::push::Push;
use crate::snapshot::WorkloadView;
use crate::state::{CertReport, Connections, MeshState};
use futures_util::Stream;
use ipnet::IpNet;
use skein_api::v1::proxy_control_server::ProxyControl;
use skein_api::v1::{proxy_message, ProxyMessage, Register, Snapshot};
use skein_api::v1::{CertifyRequest, CertifyResponse};
use skein_identity::SpiffeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Records workloads as their proxies come and go (the store layer implements it).
pub trait Registrar: Send + Sync + 'static {
    /// A proxy registered `w`.
    fn register(&self, w: &WorkloadView)
        -> futures_util::future::BoxFuture<'_, Result<(), Status>>;
    /// The proxy of `w` disconnected; remove it after the grace period unless it is back.
    fn disconnected(&self, w: WorkloadView);
}

/// What the TLS listener learned about a gRPC client; it attaches this to every request.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The verified certificate it presented (`None`: it presented none). It may have
    /// expired: only `Certify` accepts that (renewal after an outage).
    pub cert: Option<Presented>,
    /// The address it connected from.
    pub remote: Option<SocketAddr>,
}

fn presented<T>(req: &Request<T>) -> Option<Presented> {
    req.extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.cert.clone())
}

fn peer_address<T>(req: &Request<T>) -> Option<IpAddr> {
    req.extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.remote)
        .map(|a| a.ip())
}

/// How long a new `Sync` stream may take to send its `Register`.
const REGISTER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The `ProxyControl` service.
pub struct ProxyControlService {
    state: watch::Receiver<Arc<MeshState>>,
    pki: Arc<Pki>,
    registrar: Arc<dyn Registrar>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
    workload_cidrs: Arc<[IpNet]>,
    central: Arc<crate::telemetry::Central>,
    taps: Arc<crate::tap::TapHub>,
    catalogs: Arc<CatalogCache>,
}

impl ProxyControlService {
    /// Serves snapshots computed from `state`. When `shutdown` fires, every session ends,
    /// so proxies reconnect (to another replica, if there is one).
    pub fn new(
        state: watch::Receiver<Arc<MeshState>>,
        pki: Arc<Pki>,
        registrar: Arc<dyn Registrar>,
        connections: Arc<Connections>,
        shutdown: CancellationToken,
    ) -> Self {
        ProxyControlService {
            state,
            pki,
            registrar,
            connections,
            shutdown,
            workload_cidrs: Arc::from([]),
            central: Default::default(),
            taps: Default::default(),
            catalogs: Default::default(),
        }
    }

    /// Serves the proxies' `Tap` streams through `hub`.
    pub fn taps(mut self, hub: Arc<crate::tap::TapHub>) -> Self {
        self.taps = hub;
        self
    }

    /// Takes the proxies' telemetry summaries into `central`.
    pub fn telemetry(mut self, central: Arc<crate::telemetry::Central>) -> Self {
        self.central = central;
        self
    }

    /// Also accepts registrations announcing an address inside `cidrs` that differs from
    /// the one the proxy connects from (proxies behind NAT). Default: none, so a proxy may
    /// announce only the address it connects from.
    pub fn workload_cidrs(mut self, cidrs: &[IpNet]) -> Self {
        self.workload_cidrs = Arc::from(cidrs);
        self
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send + 'static>>;
type TapCommandStream =
    Pin<Box<dyn Stream<Item = Result<skein_api::v1::TapCommand, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ProxyControl for ProxyControlService {
    type SyncStream = SnapshotStream;
    type TapStream = TapCommandStream;

    async fn tap(
        &self,
        request: Request<Streaming<skein_api::v1::TapEvent>>,
    ) -> Result<Response<TapCommandStream>, Status> {
        let cert = presented(&request).ok_or_else(|| {
            Status::unauthenticated(
                "Tap needs the workload certificate as the TLS client certificate",
            )
        })?;
        if cert.expired() {
            return Err(Status::failed_precondition(
                "the certificate has expired; renew it with Certify before Tap",
            ));
        }
        let lineage = cert.lineage.clone().unwrap_or_default();
        // The proxy's Sync session on this replica names its workload; without one, no taps.
        let conn = self
            .connections
            .list()
            .into_iter()
            .find(|c| !lineage.is_empty() && c.lineage.as_deref() == Some(lineage.as_str()))
            .ok_or_else(|| {
                Status::failed_precondition(
                    "Tap needs this proxy's Sync session on the same control plane; open Sync first",
                )
            })?;
        let (tx, rx) = mpsc::channel(64);
        let hub = self.taps.clone();
        let key = hub.attach(tx);
        let mut inbound = request.into_inner();
        let shutdown = self.shutdown.clone();
        let own = skein_api::v1::Account {
            namespace: conn.namespace.clone(),
            name: conn.account.clone(),
        };
        let workload = format!("{}/{}", conn.namespace, conn.workload);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = inbound.message() => match msg {
                        Ok(Some(mut event)) => {
                            // Attributed like summaries: inbound events are calls to this
                            // workload's service, outbound ones calls from its account.
                            if event.inbound {
                                event.dst = Some(own.clone());
                            } else {
                                event.src = Some(own.clone());
                            }
                            event.workload = workload.clone();
                            hub.deliver(event);
                        }
                        _ => break,
                    },
                }
            }
            hub.detach(key);
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let presented = presented(&request);
        let ttl = self.state.borrow().cert_ttl;
        let issued = self
            .pki
            .certify(request.get_ref(), presented.as_ref(), ttl)
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e.message(), "refused a certificate request"),
            )?;
        Ok(Response::new(issued))
    }

    async fn sync(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let cert = presented(&request).ok_or_else(|| {
            Status::unauthenticated(
                "Sync needs the workload certificate from Certify as the TLS client certificate; start the proxy with --join-token (or SKEIN_JOIN_TOKEN)",
            )
        })?;
        let identity = cert.id.clone();
        if cert.expired() {
            return Err(Status::failed_precondition(format!(
                "the certificate of {identity} has expired; renew it with Certify before Sync"
            )));
        }
        let Some(lineage) = cert.lineage.clone() else {
            return Err(Status::permission_denied(format!(
                "the certificate of {identity} records no join lineage (issued before lineages were recorded), so it could not be revoked; restart the proxy with a new join token"
            )));
        };
        if let Some(entry) = self.pki.revoked(&lineage) {
            return Err(Status::permission_denied(format!(
                "{identity} (join lineage {lineage}) is revoked: {} was revoked at {}; the workload is out of the mesh until it joins with a new token",
                entry.what, entry.revoked
            )));
        }
        let seen = peer_address(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_WITHIN, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Register within {REGISTER_WITHIN:?} of opening the Sync stream"
                ))
            })?;
        let (me, admin, register) = match first? {
            Some(ProxyMessage {
                message: Some(proxy_message::Message::Register(r)),
            }) => {
                let mut me = workload_from(&r, &identity)?;
                me.lineage = cert.lineage.clone();
                (me, admin_from(&r)?, r)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Sync stream must be Register",
                ))
            }
        };
        let refused = |e: Status| {
            tracing::warn!(workload = %me.name, namespace = %me.namespace, %identity, error = %e.message(), "refused a registration");
            e
        };
        check_address(me.address, seen, &self.workload_cidrs).map_err(refused)?;
        let (session, replaced) = self
            .connections
            .claim(&me, &identity.to_string())
            .map_err(|held| refused(held_elsewhere(&me, &held)))?;
        if let Err(e) = self.registrar.register(&me).await {
            self.connections.close(session);
            return Err(refused(e));
        }
        if let Some(admin) = admin {
            self.connections.admin(session, admin);
        }
        tracing::info!(workload = %me.name, namespace = %me.namespace, "proxy connected");
        let (tx, rx) = mpsc::channel::<Result<Snapshot, Status>>(4);
        let mut state = self.state.clone();
        let mut pki = self.pki.subscribe();
        let (registrar, connections) = (self.registrar.clone(), self.connections.clone());
        let shutdown = self.shutdown.clone();
        let central = self.central.clone();
        let catalogs = self.catalogs.clone();
        let reporter = crate::telemetry::Reporter {
            namespace: me.namespace.clone(),
            workload: me.name.clone(),
            account: me.account.clone(),
        };
        tokio::spawn(async move {
            let mut push = Push::new(&me.namespace, &register);
            drop(register);
            let mut summary_refused = false;
            // Something the proxy may hold changed (or it asked for something): plan.
            let mut dirty = true;
            let mut catalog: Option<Arc<Catalog>> = None;
            // What the local part was last computed from, and what it was.
            let mut local_inputs = None;
            let mut last_local = Snapshot::default();
            loop {
                if std::mem::take(&mut dirty) {
                    let current = state.borrow_and_update().clone();
                    let ca = pki.borrow_and_update().clone();
                    if let Some(entry) = denied(&ca, &lineage) {
                        tracing::warn!(workload = %me.name, namespace = %me.namespace, %lineage, "closing the stream of a revoked workload");
                        let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "{identity} (join lineage {lineage}) was revoked ({entry}); the workload is out of the mesh until it joins with a new token"
                            ))))
                            .await;
                        break;
                    }
                    let shared = catalogs.get(&current, &ca);
                    let inputs = Some((
                        shared.mesh_generation,
                        shared.namespace_generation(&me.namespace),
                        ca.revision,
                        ca.denied_revision,
                    ));
                    // A change to nothing this proxy holds or computes from costs a few
                    // lookups: most changes in a large mesh are such.
                    let same_local = inputs == local_inputs;
                    if same_local && push.unchanged(&shared) {
                        catalog = Some(shared);
                        continue;
                    }
                    if !same_local {
                        last_local = local_snapshot(&me, &shared, &ca);
                        local_inputs = inputs;
                    }
                    // The revisions come from one store, so the largest is always newer.
                    let floor = current.revision.max(ca.revision).max(ca.denied_revision);
                    if let Some((mut next, sent)) = push.next(&shared, last_local.clone(), floor) {
                        // The proxy keeps this clock for checking certificates.
                        next.sent_unix_ms = unix_ms_now();
                        connections.sent(session, next.version, sent);
                        if tx.send(Ok(next)).await.is_err() {
                            break;
                        }
                    }
                    catalog = Some(shared);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    // The same proxy opened a new stream: this one is abandoned.
                    _ = replaced.cancelled() => {
                        tracing::info!(workload = %me.name, namespace = %me.namespace, "a newer stream of this proxy replaced this one");
                        break;
                    }
                    r = state.changed() => if r.is_err() { break } else { dirty = true },
                    r = pki.changed() => if r.is_err() { break } else { dirty = true },
                    msg = inbound.message() => match msg {
                        Ok(Some(ProxyMessage { message: Some(proxy_message::Message::Ack(ack)) })) => {
                            if ack.sent_unix_ms > 0 {
                                connections.clock(session, ack.sent_unix_ms, unix_ms_now());
                            }
                            if ack.error.is_empty() {
                                connections.acked(session, ack.version);
                            } else {
                                connections.refused(session, ack.version, &ack.error);
                                tracing::warn!(workload = %me.name, version = ack.version, error = %ack.error, "proxy refused a snapshot");
                                // What it holds is no longer known here: the next
                                // message is complete; at once if the refusal was of a
                                // delta that did not fit what the proxy holds, at the
                                // next change otherwise (the same content would be
                                // refused again).
                                push.refused();
                                if ack.stale {
                                    dirty = true;
                                }
                            }
                        }
                        Ok(Some(ProxyMessage { message: Some(proxy_message::Message::Want(want)) })) => {
                            if want.names.len() + want.addresses.len() > crate::push::MAX_PER_WANT {
                                let _ = tx
                                    .send(Err(Status::invalid_argument(format!(
                                        "a Want asks about {} names and addresses; at most {} are accepted in one message",
                                        want.names.len() + want.addresses.len(),
                                        crate::push::MAX_PER_WANT
                                    ))))
                                    .await;
                                break;
                            }
                            if let Some(c) = &catalog {
                                push.want(&want, c);
                                dirty = true;
                            }
                        }
                        Ok(Some(ProxyMessage { message: Some(proxy_message::Message::Cert(cert)) })) => {
                            if cert.sent_unix_ms > 0 {
                                connections.clock(session, cert.sent_unix_ms, unix_ms_now());
                            }
                            connections.certificate(session, CertReport {
                                expires: skein_model::time::UtcTime::from_unix(cert.not_after_unix.max(0) as u64).rfc3339(),
                                serial: cert.serial,
                                not_after: cert.not_after_unix,
                                ca_generation: cert.ca_generation,
                            });
                        }
                        Ok(Some(ProxyMessage { message: Some(proxy_message::Message::Summary(summary)) })) => {
                            connections.clock(session, summary.taken_unix_ms, unix_ms_now());
                            let now = crate::telemetry::unix_now();
                            if let Err(e) = central.ingest(&reporter, &summary, now) {
                                if !std::mem::replace(&mut summary_refused, true) {
                                    tracing::warn!(workload = %me.name, namespace = %me.namespace, error = %e, "ignoring this proxy's telemetry summaries");
                                }
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            connections.close(session);
            tracing::info!(workload = %me.name, namespace = %me.namespace, "proxy disconnected");
            registrar.disconnected(me);
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// This host's wall clock, Unix milliseconds.
fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The deny-list entry of `ca` that revokes `lineage`, if any.
fn denied(ca: &PkiView, lineage: &str) -> Option<String> {
    if ca.denied.is_empty() || lineage.is_empty() {
        return None;
    }
    ca.denied.denies(lineage).map(str::to_owned)
}

/// Everything `me`'s configuration holds but destinations: its own ports and limits
/// from the Services of its namespace, its authorization, the trust bundle, CA generation
/// and deny list from the CA, the mTLS mode and tracing from the Mesh resource.
fn local_snapshot(me: &WorkloadView, catalog: &Catalog, ca: &PkiView) -> Snapshot {
    let mesh = &catalog.mesh;
    // Only the Services that select it matter (policies_for and local_for look no
    // further), so that this is linear in the namespace's Services and policies.
    let own: Vec<&crate::snapshot::ServiceView> = catalog
        .services_in(&me.namespace)
        .iter()
        .map(|i| &mesh.services[*i])
        .filter(|s| s.selects(me))
        .collect();
    let mut snapshot = crate::snapshot::local_for(me, own.iter().copied(), &ca.trust_domain);
    snapshot.trust_bundle = ca.bundle.clone();
    snapshot.ca_generation = ca.generation;
    snapshot.revoked_lineages = ca.denied.entries().to_vec();
    snapshot.mtls = match mesh.mtls {
        skein_model::resource::MtlsMode::Strict => skein_api::v1::MtlsMode::Strict,
        skein_model::resource::MtlsMode::Permissive => skein_api::v1::MtlsMode::Permissive,
    } as i32;
    let authorization = crate::snapshot::policies_for(
        me,
        own.iter().copied(),
        mesh.policies.iter().filter(|p| p.namespace == me.namespace),
        mesh.default_policy,
        mesh.encoded_slashes,
        mesh.ambiguous_paths,
    );
    snapshot.authorization = Some(skein_api::convert::authorization_to_wire(&authorization));
    snapshot.tracing = Some(skein_api::v1::Tracing {
        sampling_percent: mesh.tracing.sampling_percent,
        collector: mesh.tracing.collector.clone().unwrap_or_default(),
        disabled: !mesh.tracing.enabled,
    });
    snapshot
}

/// Whether a proxy that connects from `seen` may announce `announced` as the address peers
/// reach it on: only its own address, or one inside `cidrs` (proxies behind NAT, where the
/// control plane sees a translated source). Otherwise any token holder could point a
/// workload record at someone else's address.
pub fn check_address(
    announced: IpAddr,
    seen: Option<IpAddr>,
    cidrs: &[IpNet],
) -> Result<(), Status> {
    let announced = announced.to_canonical();
    if seen.map(|s| s.to_canonical()) == Some(announced)
        || cidrs.iter().any(|c| c.contains(&announced))
    {
        return Ok(());
    }
    let seen = seen.map_or("an unknown address".into(), |s| s.to_string());
    let ranges = if cidrs.is_empty() {
        "none are set".to_string()
    } else {
        cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Status::permission_denied(format!(
        "Register.address {announced} is not the address this proxy connects from ({seen}); a proxy may announce only its own address, or one inside the control plane's --workload-cidr ranges ({ranges}). Set --advertise to this host's address, or behind NAT start the control plane with --workload-cidr"
    )))
}

/// The refusal for a workload name another live session holds.
fn held_elsewhere(me: &WorkloadView, held: &crate::state::Connection) -> Status {
    if held.workload != me.name || held.namespace != me.namespace {
        return Status::already_exists(format!(
            "this proxy's certificate already holds workload {}/{} on this control plane; one proxy registers one workload",
            held.namespace, held.workload
        ));
    }
    Status::already_exists(format!(
        "workload {}/{} is held by another live proxy connection (since {} Unix time); each proxy needs its own workload name (workload.name in its config). This proxy retries, in case the other one is its own earlier connection that has not closed yet",
        me.namespace, me.name, held.since
    ))
}

/// Validates a registration against the caller's certificate; the message names the field
/// and what is accepted.
fn workload_from(r: &Register, identity: &SpiffeId) -> Result<WorkloadView, Status> {
    let bad = |field: &str, value: &str, expected: &str| {
        Status::invalid_argument(format!(
            "Register.{field}: {value:?} is not accepted; expected {expected}"
        ))
    };
    for (field, value) in [
        ("workload", &r.workload),
        ("namespace", &r.namespace),
        ("service", &r.service),
    ] {
        if !is_dns_label(value) {
            return Err(bad(
                field,
                value,
                "a DNS label (lowercase letters, digits, '-')",
            ));
        }
    }
    let address: IpAddr = r
        .address
        .parse()
        .map_err(|_| bad("address", &r.address, "an IP address"))?;
    let inbound_port = u16::try_from(r.inbound_port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("inbound_port", &r.inbound_port.to_string(), "1 to 65535"))?;
    let app_ports = r
        .app_ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("app_ports", &p.to_string(), "1 to 65535"))
        })
        .collect::<Result<_, _>>()?;
    if r.namespace != identity.namespace() || r.service != identity.account() {
        return Err(Status::permission_denied(format!(
            "Register: the certificate is for {identity}, which may register service {:?} in namespace {:?}, not {:?} in {:?}",
            identity.account(),
            identity.namespace(),
            r.service,
            r.namespace
        )));
    }
    let mut labels: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
    labels
        .entry("app".into())
        .or_insert_with(|| r.service.clone());
    Ok(WorkloadView {
        name: r.workload.clone(),
        namespace: r.namespace.clone(),
        labels,
        address,
        inbound_port,
        app_ports,
        account: identity.account().to_owned(),
        lineage: None,
    })
}

/// The admin address a registration announces, if any.
fn admin_from(r: &Register) -> Result<Option<std::net::SocketAddr>, Status> {
    if r.admin_address.is_empty() {
        return Ok(None);
    }
    r.admin_address.parse().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "Register.admin_address: {:?} is not accepted; expected IP:PORT or empty",
            r.admin_address
        ))
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> Register {
        Register {
            workload: "web-1".into(),
            namespace: "default".into(),
            service: "web".into(),
            labels: Default::default(),
            address: "127.0.0.5".into(),
            inbound_port: 4143,
            app_ports: vec![8080],
            last_version: 0,
            admin_address: String::new(),
            ..Default::default()
        }
    }

    fn web() -> SpiffeId {
        SpiffeId::new("skein.local", "default", "web").unwrap()
    }

    #[test]
    fn an_admin_address_is_ip_port_or_nothing() {
        let mut r = register();
        assert_eq!(admin_from(&r).unwrap(), None);
        r.admin_address = "10.0.0.5:4191".into();
        assert_eq!(
            admin_from(&r).unwrap(),
            Some("10.0.0.5:4191".parse().unwrap())
        );
        r.admin_address = "web:4191".into();
        let e = admin_from(&r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("expected IP:PORT or empty"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn registration_must_match_the_certificate() {
        let evil = SpiffeId::new("skein.local", "default", "evil").unwrap();
        let e = workload_from(&register(), &evil).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("may register service \"evil\""),
            "{}",
            e.message()
        );
        let other_ns = SpiffeId::new("skein.local", "shop", "web").unwrap();
        assert!(workload_from(&register(), &other_ns).is_err());
        assert_eq!(workload_from(&register(), &web()).unwrap().account, "web");
    }

    #[test]
    fn a_proxy_announces_only_its_own_address_or_one_in_the_nat_ranges() {
        let own: IpAddr = "127.0.0.5".parse().unwrap();
        let other: IpAddr = "127.0.0.6".parse().unwrap();
        assert!(check_address(own, Some(own), &[]).is_ok());
        let mapped: IpAddr = "::ffff:127.0.0.5".parse().unwrap();
        assert!(
            check_address(own, Some(mapped), &[]).is_ok(),
            "an IPv4-mapped source is the same address"
        );
        let e = check_address(other, Some(own), &[]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().starts_with("Register.address 127.0.0.6 is not the address this proxy connects from (127.0.0.5)")
                && e.message().contains("none are set"),
            "{}",
            e.message()
        );
        let nat: IpNet = "127.0.0.0/29".parse().unwrap();
        assert!(check_address(other, Some("10.0.0.1".parse().unwrap()), &[nat]).is_ok());
        let outside: IpAddr = "127.0.0.9".parse().unwrap();
        let e = check_address(outside, Some(own), &[nat]).unwrap_err();
        assert!(e.message().contains("(127.0.0.0/29)"), "{}", e.message());
        assert!(check_address(own, None, &[]).is_err(), "unknown source");
    }

    #[test]
    fn registration_is_validated_with_clear_messages() {
        let w = workload_from(&register(), &web()).unwrap();
        assert_eq!(w.labels["app"], "web");
        let mut r = register();
        r.address = "localhost".into();
        let e = workload_from(&r, &web()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("Register.address: \"localhost\""),
            "{}",
            e.message()
        );
        let mut r = register();
        r.workload = "Web_1".into();
        assert!(workload_from(&r, &web())
            .unwrap_err()
            .message()
            .contains("DNS label"));
        let mut r = register();
        r.inbound_port = 0;
        assert!(workload_from(&r, &web()).is_err());
    }
}
