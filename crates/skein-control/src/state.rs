//! Live state of the control plane: the mesh as proxies need it ([`MeshState`], rebuilt
//! from the store on every change and published to every proxy session), and the proxies
//! connected to this replica right now ([`Connections`]).

use crate::snapshot::{ServiceView, WorkloadView};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// The mesh at one store revision.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshState {
    /// Store revision this state reflects; used as the snapshot version.
    pub revision: u64,
    /// Every service.
    pub services: Vec<ServiceView>,
    /// Every workload (registered by proxies or declared).
    pub workloads: Vec<WorkloadView>,
    /// The mesh's SPIFFE trust domain (as the Mesh resource says; the CA's is fixed at
    /// first start).
    pub trust_domain: String,
    /// Whether inbound also accepts plaintext.
    pub mtls: skein_model::resource::MtlsMode,
    /// Lifetime of workload certificates.
    pub cert_ttl: std::time::Duration,
    /// What no AuthorizationPolicy decides.
    pub default_policy: skein_model::resource::PolicyAction,
    /// What proxies do with `%2F` / `%5C` in paths.
    pub encoded_slashes: skein_model::authz::path::EncodedSlashes,
    /// What proxies do with paths applications may resolve differently.
    pub ambiguous_paths: skein_model::authz::path::AmbiguousPaths,
    /// Every AuthorizationPolicy, sorted by namespace and name.
    pub policies: Vec<skein_model::authz::Policy>,
    /// How proxies sample and export spans.
    pub tracing: skein_model::TracingSpec,
    /// Where Services' virtual IPs are allocated (the Mesh's serviceCidrs).
    pub service_cidrs: Vec<ipnet::IpNet>,
}

impl Default for MeshState {
    /// An empty mesh with the Mesh resource's defaults.
    fn default() -> Self {
        MeshState {
            revision: 0,
            services: Vec::new(),
            workloads: Vec::new(),
            trust_domain: crate::registry::DEFAULT_TRUST_DOMAIN.into(),
            mtls: skein_model::resource::MtlsMode::default(),
            cert_ttl: skein_identity::DEFAULT_WORKLOAD_TTL,
            default_policy: Default::default(),
            encoded_slashes: Default::default(),
            ambiguous_paths: Default::default(),
            policies: Vec::new(),
            tracing: Default::default(),
            service_cidrs: Vec::new(),
        }
    }
}

/// One connected proxy, as `skein get workloads` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// Workload name.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// When its stream opened (seconds since the Unix epoch).
    pub since: u64,
    /// Last snapshot version sent.
    pub sent_version: u64,
    /// Last snapshot version it applied.
    pub acked_version: u64,
    /// How many destinations it holds (every Service, unless it discovers on demand).
    pub destinations: usize,
    /// What was sent to it on this stream.
    pub pushes: Pushes,
    /// Why it refused the last snapshot it refused, if any.
    pub last_error: Option<String>,
    /// The SPIFFE ID of the certificate it connected with.
    pub identity: String,
    /// Its current certificate, as it last reported.
    pub certificate: Option<CertReport>,
    /// The join lineage of the certificate it connected with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// Where its admin listener (`/metrics`) is, as it announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<std::net::SocketAddr>,
    /// How far the proxy's wall clock is ahead of this replica's (negative: behind), in
    /// milliseconds, from its telemetry summaries; `None` until the first one arrives.
    pub clock_skew_ms: Option<i64>,
    /// The latest few clock samples (the proxy's time minus ours at arrival).
    #[serde(skip)]
    pub clock_samples: ClockSamples,
    /// Its service account (which is its service).
    #[serde(skip)]
    pub account: String,
}

/// What a stream carried to its proxy: messages of each kind and the destinations in
/// them (what `skein get workloads -o yaml` shows, and what the scale driver reads).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pushes {
    /// Complete snapshots.
    pub complete: u64,
    /// Deltas.
    pub deltas: u64,
    /// Destinations sent (each time one was sent).
    pub destinations: u64,
    /// Destinations removed by deltas.
    pub removed: u64,
}

impl Pushes {
    fn count(&mut self, sent: crate::push::Sent) {
        if sent.delta {
            self.deltas += 1;
        } else {
            self.complete += 1;
        }
        self.destinations += sent.destinations as u64;
        self.removed += sent.removed as u64;
    }
}

/// The clock offsets of a proxy's latest summaries: each is the proxy's timestamp minus
/// the arrival time here, so transit and queueing only ever make a sample smaller than
/// the true offset. The largest recent one is the best estimate; several are kept because
/// summaries queued while the stream was down arrive late (and together, the freshest
/// last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockSamples(std::collections::VecDeque<i64>);

impl ClockSamples {
    /// How many samples the estimate looks at.
    const KEPT: usize = 4;

    /// Adds the sample of a summary taken at `taken_ms` (the proxy's clock) that arrived
    /// at `arrived_ms` (ours); returns the estimate.
    pub fn add(&mut self, taken_ms: i64, arrived_ms: i64) -> i64 {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(taken_ms.saturating_sub(arrived_ms));
        self.0.iter().copied().max().unwrap_or_default()
    }
}

/// A proxy's current certificate (never its key).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertReport {
    /// Serial number.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Expiry, RFC 3339.
    pub expires: String,
    /// The CA generation that signed it.
    pub ca_generation: u64,
}

/// Proxies connected to this control-plane replica, each with the token that ends its
/// session when a newer session of the same proxy replaces it.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (Connection, CancellationToken)>>,
}

impl Connections {
    fn with(&self, id: u64, f: impl FnOnce(&mut Connection)) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, _)) = open.get_mut(&id) {
            f(c);
        }
    }

    /// Records a new session of the proxy holding `identity` for workload `w`; returns its
    /// id and the token that ends it early. Refused (with the session holding it) while
    /// another proxy's session on this replica holds the same workload: check and insert
    /// happen under one lock, so two proxies racing for a name cannot both win. A held
    /// session of the same join lineage is the same proxy's earlier stream, which it has
    /// abandoned (it keeps one): that one is ended and replaced.
    pub fn claim(
        &self,
        w: &WorkloadView,
        identity: &str,
    ) -> Result<(u64, CancellationToken), Box<Connection>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open
            .iter()
            .find(|(_, (c, _))| c.namespace == w.namespace && c.workload == w.name)
            .map(|(id, (c, token))| (*id, c.clone(), token.clone()));
        if let Some((id, held, token)) = held {
            if held.lineage.is_none() || held.lineage != w.lineage {
                return Err(Box::new(held));
            }
            token.cancel();
            open.remove(&id);
        }
        // One proxy, one workload: a certificate cannot hold several names at once.
        if let Some((_, (other, _))) = open
            .iter()
            .find(|(_, (c, _))| w.lineage.is_some() && c.lineage == w.lineage)
        {
            return Err(Box::new(other.clone()));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let conn = Connection {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            since,
            sent_version: 0,
            acked_version: 0,
            destinations: 0,
            pushes: Pushes::default(),
            last_error: None,
            identity: identity.to_owned(),
            certificate: None,
            lineage: w.lineage.clone(),
            admin: None,
            clock_skew_ms: None,
            clock_samples: ClockSamples::default(),
            account: w.account.clone(),
        };
        let token = CancellationToken::new();
        open.insert(id, (conn, token.clone()));
        Ok((id, token))
    }

    /// Where the proxy's admin listener is, as it announced.
    pub fn admin(&self, id: u64, admin: std::net::SocketAddr) {
        self.with(id, |c| c.admin = Some(admin));
    }

    /// A snapshot or delta was sent.
    pub fn sent(&self, id: u64, version: u64, sent: crate::push::Sent) {
        self.with(id, |c| {
            c.sent_version = version;
            c.destinations = sent.held;
            c.pushes.count(sent);
        });
    }

    /// The proxy applied `version`.
    pub fn acked(&self, id: u64, version: u64) {
        self.with(id, |c| {
            c.acked_version = version;
            c.last_error = None;
        });
    }

    /// The proxy refused `version`.
    pub fn refused(&self, id: u64, version: u64, error: &str) {
        self.with(id, |c| {
            c.last_error = Some(format!("version {version}: {error}"))
        });
    }

    /// The proxy reported the certificate it now presents.
    pub fn certificate(&self, id: u64, cert: CertReport) {
        self.with(id, |c| c.certificate = Some(cert));
    }

    /// The proxy sent a telemetry summary taken at `taken_ms` on its clock, which arrived
    /// at `arrived_ms` on ours (both Unix milliseconds).
    pub fn clock(&self, id: u64, taken_ms: i64, arrived_ms: i64) {
        self.with(id, |c| {
            c.clock_skew_ms = Some(c.clock_samples.add(taken_ms, arrived_ms));
        });
    }

    /// Connected proxies that have not applied a snapshot of at least `version`.
    pub fn lagging_config(&self, version: u64) -> Vec<String> {
        self.lagging(|c| c.acked_version < version)
    }

    /// Connected proxies whose certificate is from a CA generation before `generation`.
    pub fn lagging_cert(&self, generation: u64) -> Vec<String> {
        self.lagging(|c| {
            c.certificate
                .as_ref()
                .is_none_or(|x| x.ca_generation < generation)
        })
    }

    fn lagging(&self, behind: impl Fn(&Connection) -> bool) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|c| behind(c))
            .map(|c| format!("{}/{}", c.namespace, c.workload))
            .collect()
    }

    /// The session ended.
    pub fn close(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
    }

    /// Whether any session for the workload is open.
    pub fn is_connected(&self, namespace: &str, name: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values()
            .any(|(c, _)| c.namespace == namespace && c.workload == name)
    }

    /// Every open session, sorted by namespace and workload.
    pub fn list(&self) -> Vec<Connection> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = open.values().map(|(c, _)| c.clone()).collect();
        all.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(name: &str) -> WorkloadView {
        WorkloadView {
            name: name.into(),
            namespace: "default".into(),
            labels: Default::default(),
            address: [127, 0, 0, 5].into(),
            inbound_port: 4143,
            app_ports: vec![],
            account: "web".into(),
            lineage: None,
        }
    }

    #[test]
    fn one_live_session_per_workload() {
        let c = Connections::default();
        let (first, _) = c.claim(&web("web-1"), "id").unwrap();
        let held = c.claim(&web("web-1"), "other").unwrap_err();
        assert_eq!(held.identity, "id", "the refusal names the holder");
        assert!(c.claim(&web("web-2"), "id").is_ok(), "other names are free");
        c.close(first);
        assert!(c.claim(&web("web-1"), "other").is_ok(), "free once closed");
        assert!(c.is_connected("default", "web-1"));
    }

    #[test]
    fn clock_skew_is_the_least_delayed_of_the_latest_samples() {
        let mut s = ClockSamples::default();
        assert_eq!(s.add(10_000, 10_040), -40, "40 ms in transit");
        // Summaries queued while the stream was down arrive late, the freshest last.
        assert_eq!(s.add(2_000, 12_000), -40);
        assert_eq!(s.add(7_000, 12_000), -40);
        assert_eq!(s.add(11_990, 12_001), -11);
        assert_eq!(s.add(13_000, 13_002), -2);
        // A proxy 31 s ahead shows so once its old samples are gone.
        for t in 0..4 {
            s.add(50_000 + t, 19_000 + t);
        }
        assert_eq!(s.add(50_100, 19_100), 31_000);
    }

    #[test]
    fn the_same_proxy_reconnecting_replaces_its_abandoned_session() {
        let c = Connections::default();
        let mut me = web("web-1");
        me.lineage = Some("aa.1".into());
        let (first, ended) = c.claim(&me, "id").unwrap();
        let (second, _) = c.claim(&me, "id").expect("same lineage: replaced");
        assert!(ended.is_cancelled(), "the abandoned session is told to end");
        assert_ne!(first, second);
        assert_eq!(c.list().len(), 1);
        let mut other = me.clone();
        other.lineage = Some("aa.2".into());
        assert!(
            c.claim(&other, "id").is_err(),
            "another proxy of the same token"
        );
        let mut second_name = web("web-9");
        second_name.lineage = Some("aa.1".into());
        let held = c.claim(&second_name, "id").unwrap_err();
        assert_eq!(held.workload, "web-1", "one proxy, one workload");
    }
}
