//! Assembling a control plane: store → registry → HTTP API and proxy gRPC API, with the
//! registrar ([`crate::registrar`]) recording proxies as Workload resources.

use crate::api::{self, Api};
use crate::grpc::ProxyControlService;
use crate::registrar::StoreRegistrar;
use crate::registry::{Registry, RegistryError};
use crate::state::Connections;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::{Election, EtcdStore};
use crate::store::{Op, Store, StoreError};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which store holds the mesh's state.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// `DATA_DIR/store.redb`.
    Embedded,
    /// etcd at these `host:port` endpoints, under this key prefix.
    Etcd {
        /// Client endpoints.
        endpoints: Vec<String>,
        /// Key prefix (default `/skein/`).
        prefix: String,
    },
}

/// How to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Where the embedded store and the admin token live.
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreChoice,
    /// HTTP API listener (default `127.0.0.1:9990`).
    pub http: SocketAddr,
    /// Proxy gRPC listener (default `0.0.0.0:9991`).
    pub grpc: SocketAddr,
    /// How long a disconnected proxy's workload stays an endpoint (default 30 s).
    pub workload_grace: Duration,
    /// This replica's name, recorded in the workloads it registers.
    pub replica: String,
    /// A team's own CA to use at first start instead of generating one.
    pub ca_import: Option<skein_identity::CaPem>,
    /// Address ranges proxies may announce although they connect from another address
    /// (NAT). Default none: a proxy announces the address it connects from.
    pub workload_cidrs: Vec<ipnet::IpNet>,
    /// Connection caps and deadlines of both listeners.
    pub limits: crate::limits::ListenerLimits,
    /// The key that encrypts the CA record and the admin token in the store. Required with
    /// etcd (whoever reads etcd must not read the CA's keys); optional with the embedded
    /// store, whose file is the control plane's own (0600 in a 0700 directory).
    pub secrets_key: Option<crate::secrets::SecretsKey>,
    /// The OTLP/gRPC receiver's listener (applications' spans); `None`: no receiver.
    pub otlp: Option<SocketAddr>,
}

impl ControlOptions {
    /// One replica named `replica` with the embedded store in `data_dir`, its HTTP and
    /// gRPC listeners on ephemeral ports of `ip`, everything else at its default: a 30 s
    /// workload grace, a CA of its own, no NAT ranges, default limits, no secrets key,
    /// no OTLP receiver. Tests and tools override fields from there.
    pub fn embedded(data_dir: impl Into<PathBuf>, ip: std::net::IpAddr, replica: &str) -> Self {
        ControlOptions {
            data_dir: data_dir.into(),
            store: StoreChoice::Embedded,
            http: SocketAddr::new(ip, 0),
            grpc: SocketAddr::new(ip, 0),
            workload_grace: Duration::from_secs(30),
            replica: replica.to_string(),
            ca_import: None,
            workload_cidrs: Vec::new(),
            limits: Default::default(),
            secrets_key: None,
            otlp: None,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading resources failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A listener or file failed.
    #[error("{0}")]
    Io(String),
}

/// A running control plane.
pub struct RunningControl {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Where the OTLP receiver listens, if it does.
    pub otlp: Option<SocketAddr>,
    /// Where proxies connect.
    pub grpc: SocketAddr,
    /// The admin token.
    pub token: String,
    /// The resources.
    pub registry: Arc<Registry>,
    /// The mesh CA and join tokens.
    pub pki: Arc<crate::pki::Pki>,
    /// Connected proxies.
    pub connections: Arc<Connections>,
    /// The golden signals proxies connected to this replica report.
    pub central: Arc<crate::telemetry::Central>,
    /// Live taps and the proxies' tap streams.
    pub taps: Arc<crate::tap::TapHub>,
    /// Read-only dashboard tokens.
    pub dashboard_tokens: Arc<crate::ui::tokens::DashboardTokens>,
    /// True while this replica leads (always, with the embedded store).
    pub leader: tokio::sync::watch::Receiver<bool>,
    election: Option<Election>,
    /// This replica's presence key (etcd), which tells the others it is alive.
    presence: Option<Election>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// The largest message a proxy may send on its stream (a telemetry summary with spans).
pub const MAX_PROXY_MESSAGE: usize = 8 << 20;

/// Lease of the leader election: a dead leader is replaced within about this long.
const LEADER_TTL: Duration = Duration::from_secs(5);

impl RunningControl {
    /// Opens the store, loads every resource and starts both APIs.
    pub async fn start(opts: ControlOptions) -> Result<RunningControl, ControlError> {
        let io = |what: &str, e: std::io::Error| ControlError::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|e| io(&format!("cannot create {}", opts.data_dir.display()), e))?;
        // The data directory holds the admin token (and later the CA's keys): owner only.
        std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(&format!("cannot restrict {}", opts.data_dir.display()), e))?;
        // Work that must run once in the mesh (the canary controller, the sweep of dead
        // replicas' workloads) runs on the leader: with etcd, the replica holding the election's lease; embedded, always us.
        if matches!(opts.store, StoreChoice::Etcd { .. }) && opts.secrets_key.is_none() {
            return Err(ControlError::Io(
                "--store etcd needs a secrets key, which encrypts the mesh CA's keys and the admin token in etcd: give every replica the same 64 hex characters with --secrets-key-file FILE or SKEIN_SECRETS_KEY (make one with `od -An -vtx1 -N32 /dev/urandom | tr -d ' \\n'`)".into(),
            ));
        }
        let sealer = crate::secrets::Sealer::new(opts.secrets_key.clone());
        type Elections = (Option<Election>, Option<Election>);
        let (store, (election, presence)): (Arc<dyn Store>, Elections) = match &opts.store {
            StoreChoice::Embedded => (Arc::new(EmbeddedStore::open(&opts.data_dir)?), (None, None)),
            StoreChoice::Etcd { endpoints, prefix } => {
                let etcd = EtcdStore::connect(endpoints, prefix).await?;
                let presence = crate::replicas::announce(&etcd, &opts.replica).await?;
                let election =
                    Election::campaign(&etcd, "controller", &opts.replica, LEADER_TTL).await?;
                (Arc::new(etcd), (Some(election), Some(presence)))
            }
        };
        let leader = match &election {
            Some(e) => e.subscribe(),
            None => tokio::sync::watch::channel(true).1,
        };
        let token = shared_token(&*store, &opts, &sealer).await?;
        let registry = Registry::load(store.clone()).await?;
        let shutdown = CancellationToken::new();
        // The CA's trust domain is the Mesh resource's at first start, then fixed.
        let trust_domain = registry.subscribe().borrow().trust_domain.clone();
        let pki =
            crate::pki::Pki::open(store.clone(), &trust_domain, opts.ca_import.clone(), sealer)
                .await
                .map_err(|e| ControlError::Io(format!("mesh CA: {e}")))?;
        pki.spawn_maintenance(shutdown.clone());
        if pki.trust_domain() != trust_domain {
            tracing::warn!(ca = %pki.trust_domain(), mesh = %trust_domain, "the Mesh resource names another trust domain than the CA's; identities keep the CA's (it is fixed at first start)");
        }
        let connections = Arc::new(Connections::default());
        let mut tasks = tokio::task::JoinSet::new();

        let http = skein_api::listen::bind(opts.http, "the HTTP API")
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        let http_addr = http.local_addr().map_err(|e| io("local address", e))?;
        let central = crate::telemetry::Central::new();
        let taps = crate::tap::TapHub::new();
        let dashboard_tokens = Arc::new(crate::ui::tokens::DashboardTokens::new(store.clone()));
        let router = api::router(Arc::new(Api {
            central: central.clone(),
            taps: taps.clone(),
            registry: registry.clone(),
            pki: pki.clone(),
            connections: connections.clone(),
            token: token.clone(),
            replica: opts.replica.clone(),
            leader: leader.clone(),
            store: store.clone(),
            store_name: match &opts.store {
                StoreChoice::Embedded => "embedded".into(),
                StoreChoice::Etcd { endpoints, .. } => format!("etcd://{}", endpoints.join(",")),
            },
            sessions: crate::ui::session::Sessions::new(&token),
            dashboard_tokens: dashboard_tokens.clone(),
            watchers: Default::default(),
            queries: api::query_turns(),
        }));
        let mut follow = leader.clone();
        let replica = opts.replica.clone();
        tasks.spawn(async move {
            loop {
                let is_leader = *follow.borrow_and_update();
                tracing::info!(%replica, leader = is_leader, "leadership");
                if follow.changed().await.is_err() {
                    return;
                }
            }
        });
        // Canary analysis reads this replica's proxies' reports; with replicas, every one
        // publishes its share and the leader adds them up (`canary::shared`).
        let canary_source: Arc<dyn crate::canary::metrics::MetricsSource> = if presence.is_some() {
            let shared = crate::canary::shared::Shared::new(central.clone(), &opts.replica);
            tasks.spawn(
                shared
                    .clone()
                    .follow(store.clone(), leader.clone(), shutdown.clone()),
            );
            tasks.spawn(crate::canary::shared::publish(
                store.clone(),
                registry.clone(),
                central.clone(),
                opts.replica.clone(),
                shutdown.clone(),
            ));
            shared
        } else {
            central.clone()
        };
        tasks.spawn(crate::canary::run(
            registry.clone(),
            canary_source,
            leader.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::limits::serve_api(
            http,
            router,
            opts.limits.api,
            shutdown.clone(),
        ));

        let grpc = skein_api::listen::bind(opts.grpc, "proxies")
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        let grpc_addr = grpc.local_addr().map_err(|e| io("local address", e))?;
        let (live_tx, live) = tokio::sync::watch::channel(None);
        if presence.is_some() {
            tasks.spawn(crate::replicas::watch(
                store.clone(),
                registry.clone(),
                leader.clone(),
                live_tx,
                opts.workload_grace,
                shutdown.clone(),
            ));
        }
        let registrar = Arc::new(StoreRegistrar {
            registry: registry.clone(),
            writes: crate::registrar::Writes::start(registry.clone()),
            connections: connections.clone(),
            grace: opts.workload_grace,
            replica: opts.replica.clone(),
            any_replica: matches!(opts.store, StoreChoice::Embedded),
            live,
        });
        registrar.sweep();
        let svc = ProxyControlService::new(
            registry.subscribe(),
            pki.clone(),
            registrar,
            connections.clone(),
            shutdown.clone(),
        )
        .workload_cidrs(&opts.workload_cidrs)
        .telemetry(central.clone())
        .taps(taps.clone());
        let stop = shutdown.clone();
        let tls = pki
            .server_tls()
            .map_err(|e| ControlError::Io(format!("proxy API TLS: {e}")))?;
        let incoming = crate::tls_incoming::incoming(
            grpc,
            tls,
            opts.limits.proxy_api,
            pki.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let serve = tonic::transport::Server::builder()
                // Dead proxies are noticed (their streams end, their workloads retire)
                // even when the network drops packets instead of resetting.
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                // A proxy needs one Sync stream and now and then a Certify.
                .max_concurrent_streams(Some(16))
                // A summary is bounded by the proxy (spans at most 1 MiB, decisions 256,
                // series by its telemetry ceiling); this is the limit, said outright.
                .add_service(
                    skein_api::v1::proxy_control_server::ProxyControlServer::new(svc)
                        .max_decoding_message_size(MAX_PROXY_MESSAGE),
                )
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "proxy gRPC API stopped");
            }
        });
        let otlp = match opts.otlp {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    io(
                        &format!("cannot listen on {addr} for OTLP spans (--otlp; `--otlp off` runs without the receiver)"),
                        e,
                    )
                })?;
                let bound = listener.local_addr().map_err(|e| io("local address", e))?;
                tasks.spawn(crate::otlp::serve(
                    listener,
                    central.clone(),
                    shutdown.clone(),
                ));
                Some(bound)
            }
        };
        tracing::info!(http = %http_addr, grpc = %grpc_addr, otlp = ?otlp, "control plane ready");
        Ok(RunningControl {
            http: http_addr,
            otlp,
            grpc: grpc_addr,
            token,
            registry,
            pki,
            connections,
            central,
            taps,
            dashboard_tokens,
            leader,
            election,
            presence,
            shutdown,
            tasks,
        })
    }

    /// Stops both APIs; proxies' streams end so they reconnect elsewhere.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(presence) = self.presence.take() {
            if let Err(e) = presence.resign().await {
                tracing::warn!(error = %e, "could not withdraw this replica's presence; its lease will expire");
            }
        }
        if let Some(election) = self.election.take() {
            if let Err(e) = election.resign().await {
                tracing::warn!(error = %e, "could not resign leadership; its lease will expire");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// The admin token: with etcd it is shared by every replica (created once, in the store),
/// and each replica also writes it to its data dir (0600) for the CLI.
/// Sealed with the secrets key; a plaintext record (from before sealing) is sealed now.
async fn shared_token(
    store: &dyn Store,
    opts: &ControlOptions,
    sealer: &crate::secrets::Sealer,
) -> Result<String, ControlError> {
    let io = |e: std::io::Error| ControlError::Io(format!("admin token: {e}"));
    if matches!(opts.store, StoreChoice::Embedded) {
        return crate::token::load_or_create(&opts.data_dir).map_err(io);
    }
    const KEY: &str = "secrets/admin-token";
    let secret = |e: crate::secrets::SecretsError| ControlError::Io(e.to_string());
    let read = async || -> Result<Option<(String, bool, u64)>, ControlError> {
        let (found, _) = store.list(KEY).await?;
        match found.into_iter().find(|e| e.key == KEY) {
            None => Ok(None),
            Some(e) => {
                let (plain, sealed) = sealer.open(KEY, &e.value).map_err(secret)?;
                Ok(Some((
                    String::from_utf8_lossy(&plain).into_owned(),
                    sealed,
                    e.revision,
                )))
            }
        }
    };
    let put = |token: &str, expect: u64| -> Result<Op, ControlError> {
        Ok(Op::Put {
            key: KEY.into(),
            value: sealer.seal(KEY, token.as_bytes()).map_err(secret)?,
            expect: Some(expect),
        })
    };
    let token = match read().await? {
        Some((token, sealed, revision)) => {
            if sealer.seals() && !sealed {
                match store.commit(vec![put(&token, revision)?]).await {
                    Ok(_) => tracing::info!("sealed the admin token record with the secrets key"),
                    // Another replica sealed it first.
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            token
        }
        None => {
            let fresh = crate::token::load_or_create(&opts.data_dir).map_err(io)?;
            match store.commit(vec![put(&fresh, 0)?]).await {
                Ok(_) => fresh,
                // Another replica created it first: use theirs.
                Err(StoreError::Conflict { .. }) => {
                    read().await?.map(|(token, _, _)| token).unwrap_or(fresh)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    crate::token::write(&opts.data_dir, &token).map_err(io)?;
    Ok(token)
}
