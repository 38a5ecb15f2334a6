//! Live state of the control plane: the mesh as proxies need it ([`MeshState`], rebuilt
//! from the store on every change and published to every proxy session), and the proxies
//! connected to this replica right now ([`Connections`]).

use crate::snapshot::{ServiceView, WorkloadView};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

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
    /// Every AuthorizationPolicy, sorted by namespace and name.
    pub policies: Vec<skein_model::authz::Policy>,
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
            policies: Vec::new(),
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
    /// Why it refused the last snapshot it refused, if any.
    pub last_error: Option<String>,
    /// The SPIFFE ID of the certificate it connected with.
    pub identity: String,
    /// Its current certificate, as it last reported.
    pub certificate: Option<CertReport>,
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

/// Proxies connected to this control-plane replica.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Connection>>,
}

impl Connections {
    fn with(&self, id: u64, f: impl FnOnce(&mut Connection)) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.get_mut(&id) {
            f(c);
        }
    }

    /// Records a new session of the proxy holding `identity` for workload `w`; returns its
    /// id. Refused (with the session holding it) while another session of this replica
    /// holds the same workload: check and insert happen under one lock, so two proxies
    /// racing for a name cannot both win.
    pub fn claim(&self, w: &WorkloadView, identity: &str) -> Result<u64, Box<Connection>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open
            .values()
            .find(|c| c.namespace == w.namespace && c.workload == w.name)
        {
            return Err(Box::new(held.clone()));
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
            last_error: None,
            identity: identity.to_owned(),
            certificate: None,
        };
        open.insert(id, conn);
        Ok(id)
    }

    /// A snapshot was sent.
    pub fn sent(&self, id: u64, version: u64) {
        self.with(id, |c| c.sent_version = version);
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
            .any(|c| c.namespace == namespace && c.workload == name)
    }

    /// Every open session, sorted by namespace and workload.
    pub fn list(&self) -> Vec<Connection> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = open.values().cloned().collect();
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
        let first = c.claim(&web("web-1"), "id").unwrap();
        let held = c.claim(&web("web-1"), "other").unwrap_err();
        assert_eq!(held.identity, "id", "the refusal names the holder");
        assert!(c.claim(&web("web-2"), "id").is_ok(), "other names are free");
        c.close(first);
        assert!(c.claim(&web("web-1"), "other").is_ok(), "free once closed");
        assert!(c.is_connected("default", "web-1"));
    }
}
