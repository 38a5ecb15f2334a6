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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshState {
    /// Store revision this state reflects; used as the snapshot version.
    pub revision: u64,
    /// Every service.
    pub services: Vec<ServiceView>,
    /// Every workload (registered by proxies or declared).
    pub workloads: Vec<WorkloadView>,
    /// The mesh's SPIFFE trust domain.
    pub trust_domain: String,
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

    /// Records a new session; returns its id.
    pub fn open(&self, w: &WorkloadView) -> u64 {
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
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(id, conn);
        id
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
