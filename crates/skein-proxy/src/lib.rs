//! Skein's data plane: the sidecar proxy.
//!
//! A proxy has two mirrored sides. The **outbound** side accepts the local application's
//! connections (transparently redirected, through the explicit HTTP proxy, or on a local
//! upstream listener), detects the protocol, resolves the destination service, picks a peer
//! proxy and sends the traffic there over one shared HTTP/2 connection. The **inbound**
//! side accepts those HTTP/2 connections from peers, authorizes each stream, and forwards
//! it to the local application in the protocol the original client spoke. The **admin**
//! listener serves health, metrics and the configuration in force, and the optional
//! [`dns`] server answers the workload's DNS queries for mesh names.
//!
//! Read [`outbound`] and [`inbound`] top to bottom: accept → detect → authorize → route →
//! connect.

pub mod adaptive;
pub mod admin;
pub mod balance;
pub mod connect;
pub mod control;
pub mod decisions;
pub mod destinations;
pub mod detect;
pub mod discovery;
pub mod dns;
pub mod drain;
pub mod error;
pub mod exposition;
pub mod filter;
pub mod heap;
pub mod http;
pub mod identity;
pub mod ids;
pub mod inbound;
pub mod io;
pub mod limit;
pub mod metrics;
pub mod outbound;
pub mod overload;
pub mod request;
pub mod retry;
pub mod route;
pub mod server;
pub mod spans;
pub mod state;
pub mod telemetry;
pub mod trace;
pub mod transport;

use connect::{Connect, H1Pool, H2Pool, TcpConnector};
use drain::Drain;
use metrics::Metrics;
use skein_model::ProxyConfig;
use state::{State, StateCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use error::ProxyError;

/// State shared by every connection of one proxy.
pub struct Ctx {
    /// The configuration and destinations in force; replaced whole by [`Ctx::apply`].
    state: StateCell,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// HTTP/2 connections to peer proxies.
    pub peers: Arc<H2Pool>,
    /// Mirrored requests in flight (`RequestMirror`), bounded.
    pub mirrors: limit::Limiter,
    /// The proxy's own ceilings on connections, requests and held bodies (`limits`).
    pub overload: Arc<overload::Overload>,
    /// HTTP/1 connections to the local application.
    pub app_h1: H1Pool,
    /// HTTP/2 connections to the local application.
    pub app_h2: H2Pool,
    /// Connects to the local application (plain TCP).
    pub app_connector: Arc<dyn Connect>,
    /// Shutdown coordination.
    pub drain: Drain,
    /// True once every listener is bound (and, under a control plane, the first
    /// snapshot is applied).
    pub ready: AtomicBool,
    /// Version of the control-plane snapshot in force (0: none).
    pub config_version: AtomicU64,
    /// The workload identity (mutual TLS), once the control plane issued it.
    pub identity: Arc<identity::IdentitySlot>,
    /// When each caller → target pair's denials were last logged.
    /// Requests the mesh failed or retried, for `/decisions` (and `skein why`).
    pub decisions: decisions::DecisionLog,
    pub authz_log: inbound::authorize::DecisionLog,
    /// Retries allowed per destination service (route `retry`).
    pub retry_budget: retry::Budget,
    /// Where the admin listener was bound (announced to the control plane for
    /// Prometheus service discovery).
    pub admin_addr: std::sync::OnceLock<SocketAddr>,
    /// Where spans go (the control plane, a collector).
    pub spans: Arc<spans::Spans>,
    /// Telemetry summaries waiting for the control-plane stream.
    pub summaries: telemetry::summary::Outbox,
    /// On-demand discovery of destinations, and what is held (see [`discovery`]).
    pub discovery: discovery::Discovery,
    /// This workload's account, once its certificate says (see [`Ctx::own_account`]).
    own_account: std::sync::OnceLock<telemetry::Named>,
    /// Set once the control plane refused this proxy for good (revoked, used-up or
    /// foreign token): the reason. See [`RunningProxy::fatal`].
    pub fatal: tokio::sync::watch::Sender<Option<String>>,
}

impl Ctx {
    /// Counts and (at most once per 10 s) logs work shed at the `resource` ceiling of
    /// side `direction`.
    pub fn shed(
        &self,
        resource: overload::Resource,
        direction: metrics::Direction,
        listener: &str,
    ) {
        self.metrics.overload_shed(resource.label(), direction);
        if self.overload.should_log(resource, direction) {
            tracing::warn!(listener, "{}", self.overload.why(resource, direction));
        }
    }

    /// The state in force now. A request reads it once and keeps it to the end.
    pub fn state(&self) -> Arc<State> {
        self.state.load()
    }

    /// This workload's service account as telemetry labels the outbound side: its
    /// certificate's once issued; before that (and without a control plane), its
    /// namespace and service name from the configuration.
    pub fn own_account(&self, state: &State) -> telemetry::Named {
        if let Some(known) = self.own_account.get() {
            return known.clone();
        }
        match self.identity.get() {
            Some(identity) => {
                let id = identity.id();
                self.own_account
                    .get_or_init(|| telemetry::Named::new(id.namespace(), id.account()))
                    .clone()
            }
            None => state.service.clone(),
        }
    }

    /// The configuration in force now (for what is not per request: listeners, limits
    /// of a new connection, the control-plane session).
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.state.load().config.clone()
    }

    /// `skein_inbound_concurrency_limit` for `state` (0: no limit).
    fn show_app_limit(&self, state: &State) {
        let limit = state.app_limit.as_ref().map_or(0, |l| l.current());
        self.metrics.inbound_limit.set(i64::from(limit));
    }

    /// Replaces the configuration (and the destination table built from it) atomically.
    /// Refuses, keeping the current configuration, a config that fails validation or that
    /// changes what cannot change while running (the workload and listener addresses).
    pub fn apply(&self, next: ProxyConfig) -> Result<(), ApplyError> {
        let current = self.config();
        next.validate_since("new configuration", Some(&current))?;
        let fixed = |c: &ProxyConfig| {
            (
                c.workload.clone(),
                c.inbound.listen,
                c.outbound.clone(),
                c.admin.clone(),
                c.dns.as_ref().map(|d| (d.listen, d.upstreams.clone())),
            )
        };
        if fixed(&current) != fixed(&next) {
            return Err(ApplyError::Restart);
        }
        let current = self.state();
        let state = State::new(next, Some(&current));
        // Per-service state outside the table goes with the services that went.
        self.retry_budget
            .retain(|key| state.destinations.has_key(key));
        self.show_app_limit(&state);
        self.spans.configure(&state.config.telemetry.tracing);
        self.state.store(state);
        Ok(())
    }
}

/// Why a new configuration was refused; the old one stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It breaks a validation rule.
    #[error(transparent)]
    Invalid(#[from] skein_model::ModelError),
    /// It changes listeners, DNS upstreams or the workload, which needs a restart.
    #[error(
        "the workload, a listener address or dns.upstreams changed; restart the proxy to apply it"
    )]
    Restart,
}

/// The addresses the proxy actually bound (useful when the config asked for port 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Transparent outbound listener, if configured.
    pub outbound: Option<SocketAddr>,
    /// Explicit HTTP proxy listener, if configured.
    pub http_proxy: Option<SocketAddr>,
    /// Local upstream listeners, in config order.
    pub upstreams: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// DNS server (UDP and TCP), if configured.
    pub dns: Option<SocketAddr>,
}

/// A running proxy. Dropping it does not stop it; call [`RunningProxy::shutdown`].
pub struct RunningProxy {
    /// Where it listens.
    pub addrs: BoundAddrs,
    /// Shared state, for inspection (metrics, destinations).
    pub ctx: Arc<Ctx>,
}

impl RunningProxy {
    /// Validates `config`, binds every listener and starts serving. Fails without serving
    /// anything if the configuration is invalid (`InvalidInput`, naming every problem) or a
    /// listener cannot be bound.
    pub async fn start(config: ProxyConfig) -> std::io::Result<RunningProxy> {
        Self::start_with_control(config, None).await
    }

    /// Like [`RunningProxy::start`], and with `control` set, takes its destinations and
    /// application ports from the control plane; ready once the first snapshot applies.
    pub async fn start_with_control(
        config: ProxyConfig,
        control: Option<control::ControlConfig>,
    ) -> std::io::Result<RunningProxy> {
        Self::start_inner(config, control, None).await
    }

    /// Asks the control plane for `names` (services, as a first request would name them)
    /// once the first configuration is in force, so that they are held before any
    /// request: for tools and tests that check what a proxy holds before sending traffic.
    /// Does nothing without on-demand discovery (such a proxy holds every destination).
    pub async fn discover(&self, names: &[&str]) -> Result<(), discovery::Unanswered> {
        let deadline = tokio::time::Instant::now() + discovery::WAIT;
        while self.ctx.config_version.load(Ordering::SeqCst) == 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for name in names {
            match self.ctx.discovery.ask(name).await {
                Ok(_) | Err(discovery::Unanswered::NotOnDemand) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Like [`RunningProxy::start`] with a workload identity issued elsewhere (tests and
    /// benchmarks that drive the CA directly): mutual TLS between proxies, no renewal.
    pub async fn start_with_identity(
        config: ProxyConfig,
        identity: Arc<identity::Identity>,
    ) -> std::io::Result<RunningProxy> {
        Self::start_inner(config, None, Some(identity)).await
    }

    async fn start_inner(
        config: ProxyConfig,
        control: Option<control::ControlConfig>,
        fixed_identity: Option<Arc<identity::Identity>>,
    ) -> std::io::Result<RunningProxy> {
        // A configuration built in code is held to the rules a file is, so that no setting
        // is taken that the proxy would refuse in a file or a later change.
        config
            .validate("the proxy configuration")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        // With a control plane (or a given identity), peers are reached only over mTLS.
        let identity = Arc::new(identity::IdentitySlot::new(
            control.is_some() || fixed_identity.is_some(),
        ));
        let with_identity = fixed_identity.is_some();
        if let Some(fixed) = fixed_identity {
            identity.set(fixed);
        }
        let peer_connector: Arc<dyn Connect> =
            Arc::new(identity::PeerConnector::new(identity.clone()));
        let app_connector: Arc<dyn Connect> = Arc::new(TcpConnector::default());
        let metrics = Arc::new(Metrics::new());
        let spans = Arc::new(spans::Spans::new(&config.workload, metrics.clone()));
        spans.configure(&config.telemetry.tracing);
        let overload = Arc::new(overload::Overload::new(&config.limits));
        let ctx = Arc::new(Ctx {
            overload,
            state: StateCell::new(State::new(config, None)),
            metrics,
            spans,
            peers: Arc::new(H2Pool::new(peer_connector)),
            mirrors: limit::Limiter::new(outbound::MIRRORS_IN_FLIGHT, 0),
            app_h1: H1Pool::new(app_connector.clone()),
            app_h2: H2Pool::new(app_connector.clone()),
            app_connector,
            drain: Drain::new(),
            ready: AtomicBool::new(false),
            config_version: AtomicU64::new(0),
            identity,
            authz_log: Default::default(),
            decisions: Default::default(),
            retry_budget: Default::default(),
            own_account: Default::default(),
            summaries: Default::default(),
            discovery: Default::default(),
            admin_addr: Default::default(),
            fatal: tokio::sync::watch::Sender::new(None),
        });
        ctx.show_app_limit(&ctx.state());
        let c = ctx.config();
        let inbound = transport::bind(c.inbound.listen, "the inbound listener").await?;
        let admin = transport::bind(c.admin.listen, "the admin listener").await?;
        let outbound = match c.outbound.listen {
            Some(a) => Some(transport::bind(a, "the transparent outbound listener").await?),
            None => None,
        };
        let http_proxy = match c.outbound.http_proxy {
            Some(a) => Some(transport::bind(a, "the HTTP proxy listener").await?),
            None => None,
        };
        let mut upstreams = Vec::new();
        for u in &c.outbound.upstreams {
            let what = format!("the upstream listener for {}:{}", u.service, u.port);
            upstreams.push((transport::bind(u.listen, &what).await?, u.clone()));
        }
        let dns = match &c.dns {
            Some(d) => Some(dns::Dns::bind(d).await?),
            None => None,
        };
        let addrs = BoundAddrs {
            inbound: inbound.local_addr()?,
            outbound: outbound.as_ref().map(|l| l.local_addr()).transpose()?,
            http_proxy: http_proxy.as_ref().map(|l| l.local_addr()).transpose()?,
            upstreams: upstreams
                .iter()
                .map(|(l, _)| l.local_addr())
                .collect::<Result<_, _>>()?,
            admin: admin.local_addr()?,
            dns: dns.as_ref().map(|d| d.local_addr()).transpose()?,
        };
        let _ = ctx.admin_addr.set(addrs.admin);
        // Accept loops are not drained tasks: they end as soon as the signal fires.
        tokio::spawn(admin::serve(ctx.clone(), admin));
        tokio::spawn(inbound::accept(ctx.clone(), inbound));
        if let Some(l) = outbound {
            tokio::spawn(outbound::accept_transparent(ctx.clone(), l));
        }
        if let Some(l) = http_proxy {
            tokio::spawn(outbound::accept_http_proxy(ctx.clone(), l));
        }
        for (l, u) in upstreams {
            tokio::spawn(outbound::accept_upstream(ctx.clone(), l, u));
        }
        let (swept, idle) = (ctx.clone(), ctx.clone());
        tokio::spawn(metrics::sweep_until(
            ctx.metrics.clone(),
            move || idle.config().telemetry.idle_series,
            async move { swept.drain.signalled().await },
        ));
        // Unlike them, the DNS server answers until the drain ends (see `dns`).
        if let Some(d) = dns {
            d.spawn(ctx.clone());
        }
        match control {
            Some(control) => {
                tokio::spawn(control::report(ctx.clone()));
                tokio::spawn(control::run(ctx.clone(), control));
            }
            None => {
                if !with_identity {
                    tracing::warn!("no control plane: this proxy has no workload identity, so traffic between proxies is plaintext (run with --control and --join-token for mutual TLS)");
                }
                ctx.ready.store(true, Ordering::SeqCst)
            }
        }
        tracing::info!(
            workload = %c.workload.name,
            service = %c.workload.service,
            inbound = %addrs.inbound,
            admin = %addrs.admin,
            dns = addrs.dns.map(|a| a.to_string()).as_deref().unwrap_or("off"),
            "proxy listening"
        );
        Ok(RunningProxy { addrs, ctx })
    }

    /// Waits until the control plane refused this proxy for good (its token or workload
    /// was revoked, the token is used up or for another service, the control plane is not
    /// the one the token pins) and returns why. Never returns otherwise.
    pub async fn fatal(&self) -> String {
        let mut rx = self.ctx.fatal.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight requests and streams finish up to the configured
    /// drain deadline, then stops what remains. Returns true when all finished in time.
    pub async fn shutdown(&self) -> bool {
        self.ctx.ready.store(false, Ordering::SeqCst);
        let clean = self
            .ctx
            .drain
            .shutdown(self.ctx.config().drain_timeout)
            .await;
        tracing::info!(clean, "proxy stopped");
        clean
    }
}
