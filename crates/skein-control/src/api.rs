//! The HTTP API the CLI and the dashboard use: list, get, apply and delete resources,
//! and see connected proxies. Every route but `/healthz` needs a credential
//! ([`crate::ui::caller`]): the admin token as `Authorization: Bearer TOKEN` (the CLI), a
//! read-only dashboard token the same way (reads only), or a dashboard session cookie
//! (changes only with `X-Skein-Csrf: 1`); errors are JSON `{"error": "..."}` that say what
//! to do. The dashboard's pages are under `/ui/` ([`crate::ui`]).
//!
//! ```text
//! GET    /healthz
//! GET    /api/v1/session                    who is asking: {"role": "admin"|"viewer", "session", "expiresUnix"?}
//! POST   /api/v1/apply                      body: YAML or JSON, one or more documents;
//!                                           answers results and warnings (references to
//!                                           resources that do not exist yet)
//! GET    /api/v1/resources/{kind}[?namespace=NS]
//!                                           {"items", "revision"}; for services also
//!                                           "addresses": {"NS/NAME": [virtual IPs]}, as
//!                                           proxies get them (allocated ones included)
//! GET    /api/v1/resources/{kind}/{name}[?namespace=NS]
//! DELETE /api/v1/resources/{kind}/{name}[?namespace=NS]
//! GET    /api/v1/connections
//! GET    /api/v1/status                     replica, version, leadership, store revision
//!                                           and health, workload certificate lifetime
//! POST   /api/v1/tokens                     body: {"service", "namespace"?, "ttl"?, "uses"?}
//!                                           → join token (and a warning if no such Service);
//!                                           or {"dashboard": true, "readOnly": true, "ttl"?}
//!                                           → read-only dashboard token
//! GET    /api/v1/tokens                     join tokens ("items") and dashboard tokens
//!                                           ("dashboard"), never their secrets
//! DELETE /api/v1/tokens/{id}                revoke (a join token: and every workload that
//!                                           joined with it; a dashboard token: its sessions)
//! POST   /api/v1/workloads/{namespace}/{name}/revoke   revoke one workload's join lineage
//! GET    /api/v1/revocations                the deny list proxies enforce
//! GET    /api/v1/ca                         trust domain, generation, rotation phase, root pins,
//!                                           validity of the root and the intermediate
//! POST   /api/v1/ca/rotate                  runs a root rotation; streams progress lines
//! POST   /api/v1/policy/check               body: {"from", "to", "port"?, "method"?, "path"?, …}
//!                                           → the decision a proxy would make
//! GET    /api/v1/stat/{services|workloads|routes|rules}[?name=N&window=1m]
//!                                           golden signals per row over the window
//! GET    /api/v1/series/{services|workloads|routes|rules}[?window=1h&step=1m&namespace=&name=]
//!                                           the same signals in steps, as columns (at most
//!                                           60 steps and 500 rows)
//! GET    /api/v1/endpoints/{namespace}/{name} the workloads a Service selects, connected,
//!                                           acknowledged version, certificate end
//! GET    /api/v1/updates                    server-sent events when the store or the
//!                                           telemetry moved (the dashboard's redraws)
//! GET    /api/v1/edges[?service=S&window=1m] caller account → service pairs
//! GET    /api/v1/map[?window=1m]             services as nodes, observed edges
//! GET    /api/v1/policy/suggest[?namespace=NS&window=1h]
//!                                           least-privilege AuthorizationPolicies for the
//!                                           observed pathways: {"yaml", "policies"}
//! GET    /api/v1/tap[?to=&from=&path=&method=&status=5xx&max_rps=100]
//!                                           live request metadata, one JSON object per
//!                                           line, until the client disconnects
//! GET    /api/v1/prometheus/targets         every connected proxy's admin address, in
//!                                           Prometheus HTTP service-discovery form
//! GET    /api/v1/why?request_id=ID | ?to=SVC what each proxy decided about that request
//!                                           (or the latest one to SVC the mesh failed or
//!                                           retried): {"requestId", "hops"}
//! GET    /api/v1/traces[?service=S&errors=true&min_duration=100ms&limit=20]
//!                                           recent traces, newest first: {"traces": […]}
//! GET    /api/v1/traces/{trace_id}          one trace's spans, earliest first
//! POST   /api/v1/canaries/{namespace}/{name}/{promote|abort|pause|resume}
//!                                           an operator's request to a rollout, recorded
//!                                           in its status for the controller: the Canary
//! ```

use crate::registry::{Registry, RegistryError};
use crate::state::Connections;
use crate::store::StoreError;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use skein_model::resource::{parse_documents, Kind, Resource, ResourceKey};
use std::sync::Arc;

/// Largest apply body accepted (4 MiB).
const MAX_BODY: usize = 4 << 20;

/// What the handlers share.
pub struct Api {
    /// The golden signals proxies report.
    pub central: Arc<crate::telemetry::Central>,
    /// Live taps.
    pub taps: Arc<crate::tap::TapHub>,
    /// The resources.
    pub registry: Arc<Registry>,
    /// The mesh CA and join tokens.
    pub pki: Arc<crate::pki::Pki>,
    /// Proxies connected to this replica.
    pub connections: Arc<Connections>,
    /// The admin token.
    pub token: String,
    /// This replica's name.
    pub replica: String,
    /// Whether this replica leads.
    pub leader: tokio::sync::watch::Receiver<bool>,
    /// The store, probed by `/api/v1/status`.
    pub store: Arc<dyn crate::store::Store>,
    /// What the store is: `embedded`, or `etcd://HOST:PORT,…`.
    pub store_name: String,
    /// Dashboard sessions, signed with a key derived from the admin token.
    pub sessions: crate::ui::session::Sessions,
    /// Read-only dashboard tokens.
    pub dashboard_tokens: Arc<crate::ui::tokens::DashboardTokens>,
    /// Open streams of `GET /api/v1/updates`.
    pub watchers: crate::ui::updates::Watchers,
    /// Turns for queries over the central view ([`QUERIES_AT_ONCE`]).
    pub queries: Arc<tokio::sync::Semaphore>,
}

/// How long `/api/v1/status` waits for the store to answer its probe.
const STORE_PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// An error response: status plus a message that says what to do.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            RegistryError::Store(StoreError::Backend(_)) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Encode(..) => StatusCode::INTERNAL_SERVER_ERROR,
            RegistryError::Contradicts(_) => StatusCode::CONFLICT,
        };
        ApiError(status, e.to_string())
    }
}

/// The router, with authentication on every API route.
pub fn router(api: Arc<Api>) -> Router {
    let protected = Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/resources/{kind}", get(list))
        .route(
            "/api/v1/resources/{kind}/{name}",
            get(get_one).delete(delete),
        )
        .route("/api/v1/session", get(session))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/endpoints/{namespace}/{name}", get(endpoints))
        .route("/api/v1/status", get(status))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route(
            "/api/v1/workloads/{namespace}/{name}/revoke",
            post(revoke_workload),
        )
        .route("/api/v1/revocations", get(revocations))
        .route("/api/v1/ca", get(ca))
        .route("/api/v1/ca/rotate", post(rotate))
        .route("/api/v1/policy/check", post(policy_check))
        .route("/api/v1/stat/{kind}", get(stat))
        .route("/api/v1/series/{kind}", get(series))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/map", get(map))
        .route("/api/v1/tap", get(tap))
        .route("/api/v1/updates", get(updates))
        .route("/api/v1/policy/suggest", get(policy_suggest))
        .route("/api/v1/prometheus/targets", get(prometheus_targets))
        .route("/api/v1/why", get(why))
        .route("/api/v1/traces", get(traces))
        .route("/api/v1/traces/{id}", get(trace))
        .route(
            "/api/v1/canaries/{namespace}/{name}/{action}",
            post(canary_action),
        )
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .merge(crate::ui::router())
        .with_state(api)
}

/// Who is asking ([`crate::ui::caller`]), then whether they may ([`crate::ui::may`]); the
/// caller rides on the request for the handlers.
async fn authenticate(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    let caller = match crate::ui::caller(&api, req.headers(), crate::ui::now_unix()).await {
        Ok(c) => c,
        Err(e) => return ApiError(e.status(), e.to_string()).into_response(),
    };
    if let Err((status, why)) =
        crate::ui::may(&caller, req.method(), req.uri().path(), req.headers())
    {
        return ApiError(status, why).into_response();
    }
    req.extensions_mut().insert(caller);
    let mut response = next.run(req).await;
    // Answers a browser now reads too: never cached, never sniffed as another type.
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

async fn session(axum::Extension(caller): axum::Extension<crate::ui::Caller>) -> Response {
    Json(json!({
        "role": caller.role.name(),
        "session": caller.by_session,
        "expiresUnix": caller.expires_unix,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

fn kind(word: &str) -> Result<Kind, ApiError> {
    Kind::from_cli(word).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))
}

fn key(kind: Kind, name: &str, q: &NamespaceQuery) -> ResourceKey {
    let ns = if kind.is_namespaced() {
        q.namespace.as_deref().unwrap_or("default")
    } else {
        ""
    };
    ResourceKey::new(kind, ns, name)
}

async fn apply(State(api): State<Arc<Api>>, body: String) -> Result<Response, ApiError> {
    let mut docs = parse_documents(&body, "request body")
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    // An HTTPRoute's status is computed, never stored: what `get -o yaml` printed applies
    // back as it was.
    for doc in &mut docs {
        if let Resource::HttpRoute(r) = doc {
            r.status = None;
        }
    }
    if docs.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no resources in the request; send one or more YAML documents".into(),
        ));
    }
    let applying: Vec<ResourceKey> = docs.iter().map(|d| d.key()).collect();
    let mut warnings = skein_model::resource::dangling(&docs, |k| {
        applying.contains(k) || api.registry.get(k).is_some()
    });
    let results = api.registry.apply(docs).await?;
    // What the routes just stored mean now: every condition that is not True.
    for key in applying.iter().filter(|k| k.kind == Kind::HttpRoute) {
        let problems = api.registry.route_status(key).map(|s| s.problems());
        for problem in problems.into_iter().flatten() {
            let line = format!("{key}: {problem}");
            if !warnings.contains(&line) {
                warnings.push(line);
            }
        }
    }
    Ok(Json(json!({
        "results": results,
        "revision": api.registry.revision(),
        "warnings": warnings,
    }))
    .into_response())
}

async fn list(
    State(api): State<Arc<Api>>,
    Path(word): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let kind = kind(&word)?;
    Ok(streamed(move || {
        let namespace = q.namespace.as_deref();
        let mut items = api.registry.list(kind, namespace);
        for item in &mut items {
            with_status(&api, item);
        }
        Listing {
            items,
            revision: api.registry.revision(),
            // Allocated virtual IPs are computed, never stored: they travel beside the
            // items, so that what `get -o yaml` prints can be applied back unchanged.
            addresses: (kind == Kind::Service).then(|| api.registry.service_addresses(namespace)),
        }
    }))
}

/// What `GET /api/v1/resources/{kind}` answers.
#[derive(serde::Serialize)]
struct Listing {
    items: Vec<Resource>,
    revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<std::collections::BTreeMap<String, Vec<std::net::IpAddr>>>,
}

/// `make`'s value as a JSON response, written while it is sent (lists of every resource
/// or connection can be large; see [`skein_api::json_body`]).
fn streamed<T, F>(make: F) -> Response
where
    F: FnOnce() -> T + Send + 'static,
    T: serde::Serialize,
{
    let body = skein_api::json_body::compact(make);
    let mut resp = Response::new(axum::body::Body::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn get_one(
    State(api): State<Arc<Api>>,
    Path((word, name)): Path<(String, String)>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let key = key(kind(&word)?, &name, &q);
    match api.registry.get(&key) {
        Some(mut resource) => {
            with_status(&api, &mut resource);
            Ok(Json(resource).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{key} not found; `skein get {word}` lists what exists"),
        )),
    }
}

/// Fills in an HTTPRoute's computed status.
fn with_status(api: &Api, resource: &mut Resource) {
    let key = resource.key();
    if let Resource::HttpRoute(r) = resource {
        r.status = api
            .registry
            .route_status(&key)
            .and_then(|s| serde_json::to_value(s).ok());
    }
}

async fn delete(
    State(api): State<Arc<Api>>,
    Path((word, name)): Path<(String, String)>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let key = key(kind(&word)?, &name, &q);
    if api.registry.delete(&key).await? {
        Ok(Json(json!({ "deleted": key.to_string() })).into_response())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{key} not found; `skein get {word}` lists what exists"),
        ))
    }
}

/// `skein canary promote|abort|pause|resume`: writes the request into the Canary's status
/// (compare-and-set on its version, tried again if the controller wrote meanwhile).
async fn canary_action(
    State(api): State<Arc<Api>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    use skein_model::resource::{CanaryAction, CanaryPhase};
    let key = ResourceKey::new(Kind::Canary, &namespace, &name);
    if !["promote", "abort", "pause", "resume"].contains(&action.as_str()) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{action:?} is not a canary action; use promote, abort, pause or resume"),
        ));
    }
    for _ in 0..5 {
        let Some(Resource::Canary(mut canary)) = api.registry.get(&key) else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("{key} not found; `skein get canaries` lists what exists"),
            ));
        };
        let mut status = canary.status.clone().unwrap_or_default();
        if status.phase.is_final() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "{key} is {:?}: the rollout is over, there is nothing to {action}; a change of the Canary's spec starts the next one (after a rollback, a new version in its canary Service too)",
                    status.phase
                ),
            ));
        }
        match action.as_str() {
            "promote" => status.requested = Some(CanaryAction::Promote),
            "abort" => status.requested = Some(CanaryAction::Abort),
            "pause" => status.paused = true,
            _ => status.paused = false,
        }
        if status.phase == CanaryPhase::Promoting && action == "promote" {
            status.requested = None;
        }
        canary.status = Some(status);
        match api
            .registry
            .apply_with(vec![Resource::Canary(canary)], true)
            .await
        {
            Ok(_) => {
                return Ok(Json(json!({
                    "canary": key.to_string(),
                    "action": action,
                    "leader": *api.leader.borrow(),
                }))
                .into_response())
            }
            Err(RegistryError::Store(StoreError::Conflict { .. })) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError(
        StatusCode::CONFLICT,
        format!("{key} kept changing while the request was recorded; try again"),
    ))
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    // One read of an empty prefix: the store answers, or says why not.
    let probe = tokio::time::timeout(STORE_PROBE_WITHIN, api.store.list("health-probe/")).await;
    let store_error = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {}s",
            STORE_PROBE_WITHIN.as_secs()
        )),
    };
    let cert_ttl = api.registry.subscribe().borrow().cert_ttl;
    Json(json!({
        "replica": api.replica,
        "version": env!("CARGO_PKG_VERSION"),
        "leader": *api.leader.borrow(),
        "revision": api.registry.revision(),
        "connectedProxies": api.connections.list().len(),
        "store": {
            "kind": api.store_name,
            "healthy": store_error.is_none(),
            "error": store_error,
        },
        "workloadCertTtlSeconds": cert_ttl.as_secs(),
        "telemetry": api.central.history(crate::telemetry::unix_now()),
    }))
    .into_response()
}

/// The workloads a Service selects (as its callers' proxies get them), each with what
/// its registration and this replica's connection say: connected, the configuration
/// version it acknowledged, its certificate's end.
async fn endpoints(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mesh = api.registry.subscribe().borrow().clone();
    let service = mesh
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "Service {namespace}/{name} not found; `skein get services` lists what exists"
                ),
            )
        })?;
    let connections = api.connections.list();
    let items: Vec<serde_json::Value> = mesh
        .workloads
        .iter()
        .filter(|w| service.selects(w))
        .map(|w| {
            let key = ResourceKey::new(Kind::Workload, &w.namespace, &w.name);
            let status = match api.registry.get(&key) {
                Some(Resource::Workload(r)) => r.status.unwrap_or_default(),
                _ => Default::default(),
            };
            let connection = connections
                .iter()
                .find(|c| c.namespace == w.namespace && c.workload == w.name);
            json!({
                "name": w.name,
                "address": w.address,
                "inboundPort": w.inbound_port,
                "account": w.account,
                "labels": w.labels,
                "connected": status.connected,
                "since": status.since,
                "acknowledgedVersion": connection
                    .map(|c| c.acked_version)
                    .or(status.acknowledged_version),
                "controlPlane": status.control_plane,
                "certificate": connection.and_then(|c| c.certificate.clone()),
            })
        })
        .collect();
    Ok(Json(json!({
        "service": format!("{namespace}/{name}"),
        "accounts": service.accounts,
        "items": items,
        "replica": api.replica,
    })))
}

async fn connections(State(api): State<Arc<Api>>) -> Response {
    #[derive(serde::Serialize)]
    struct Items<T> {
        items: T,
    }
    streamed(move || Items {
        items: api.connections.list(),
    })
}

impl From<crate::pki::PkiError> for ApiError {
    fn from(e: crate::pki::PkiError) -> Self {
        use crate::pki::PkiError;
        let status = match &e {
            PkiError::Identity(_) | PkiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PkiError::UnknownToken(_) => StatusCode::NOT_FOUND,
            PkiError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            PkiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            PkiError::Corrupt { .. } | PkiError::Secrets(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    /// The service a join token is for (join tokens only).
    #[serde(default)]
    service: String,
    /// A dashboard token instead of a join token.
    #[serde(default)]
    dashboard: bool,
    /// Required with `dashboard`: dashboard tokens are read-only.
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    namespace: Option<String>,
    /// A duration such as `30m` or `24h`.
    #[serde(default)]
    ttl: Option<String>,
    /// How many proxies may join with it (default 1).
    #[serde(default)]
    uses: Option<u32>,
}

async fn create_token(State(api): State<Arc<Api>>, body: String) -> Result<Response, ApiError> {
    let req: TokenRequest = serde_json::from_str(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the token request is not accepted: {e}; send {{\"service\": NAME, \"namespace\": NS, \"ttl\": \"1h\", \"uses\": 1}}"),
        )
    })?;
    let ttl = match &req.ttl {
        Some(t) => Some(skein_model::duration::parse(t).ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("ttl: {t:?} is not a duration; use e.g. 30m, 24h"),
            )
        })?),
        None => None,
    };
    if req.dashboard {
        return create_dashboard_token(&api, &req, ttl).await;
    }
    if req.read_only {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "readOnly applies to dashboard tokens only; add \"dashboard\": true (a join token grants a workload identity, not API access)".into(),
        ));
    }
    if req.service.is_empty() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a join token needs the service it is for: send {\"service\": NAME}; for a read-only dashboard token send {\"dashboard\": true, \"readOnly\": true}".into(),
        ));
    }
    let ttl = ttl.unwrap_or(crate::pki::DEFAULT_TOKEN_TTL);
    let namespace = req.namespace.as_deref().unwrap_or("default");
    let uses = req.uses.unwrap_or(1);
    let (token, record) = api
        .pki
        .create_token(namespace, &req.service, ttl, uses)
        .await?;
    let key = ResourceKey::new(Kind::Service, namespace, &req.service);
    let mut answer = json!({ "token": token.reveal(), "record": record });
    if api.registry.get(&key).is_none() {
        answer["warning"] = json!(format!(
            "no Service {namespace}/{} exists yet: a proxy that joins with this token serves nothing until a Service admits account {:?} (by its name or serviceAccounts)",
            req.service, req.service
        ));
    }
    Ok(Json(answer).into_response())
}

/// Revokes one workload: the join lineage its proxy's certificate records.
async fn revoke_workload(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = ResourceKey::new(Kind::Workload, &namespace, &name);
    let Some(Resource::Workload(w)) = api.registry.get(&key) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no workload {namespace}/{name}; `skein get workloads` lists them"),
        ));
    };
    let Some(lineage) = w.status.and_then(|s| s.join_lineage) else {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("workload {namespace}/{name} has no recorded join lineage (declared by hand, or its proxy never registered); revoke the token it joined with: `skein token revoke ID`"),
        ));
    };
    let entry = api
        .pki
        .revoke_lineage(&lineage, format!("workload {namespace}/{name}"))
        .await?;
    // Whoever holds the token could otherwise join again with a use it has left.
    let token = api.pki.close_token(&lineage).await?;
    Ok(Json(json!({ "revoked": entry, "tokenClosed": token })).into_response())
}

async fn revocations(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "items": api.pki.deny_list() })).into_response())
}

/// A read-only dashboard token: the only kind (changes need the admin token).
async fn create_dashboard_token(
    api: &Api,
    req: &TokenRequest,
    ttl: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    if !req.read_only {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "dashboard tokens are read-only: ask for one with \"readOnly\": true (`skein token create --dashboard --read-only`); changes are made with the admin token".into(),
        ));
    }
    if !req.service.is_empty() || req.namespace.is_some() || req.uses.is_some() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "service, namespace and uses belong to join tokens; a dashboard token takes only \"ttl\"".into(),
        ));
    }
    let ttl = ttl.unwrap_or(crate::ui::tokens::DEFAULT_TTL);
    let (token, record) = api
        .dashboard_tokens
        .create(ttl, crate::ui::now_unix())
        .await
        .map_err(dashboard_error)?;
    Ok(Json(json!({ "token": token, "record": record })).into_response())
}

fn dashboard_error(e: crate::ui::tokens::TokenError) -> ApiError {
    use crate::ui::tokens::TokenError as E;
    let status = match &e {
        E::Lifetime(_) => StatusCode::UNPROCESSABLE_ENTITY,
        E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::Unknown | E::Revoked(_) | E::Expired(_) => StatusCode::UNAUTHORIZED,
        E::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

async fn list_tokens(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let dashboard = api.dashboard_tokens.list().await.map_err(dashboard_error)?;
    Ok(
        Json(json!({ "items": api.pki.list_tokens().await?, "dashboard": dashboard }))
            .into_response(),
    )
}

async fn revoke_token(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = crate::ui::now_unix();
    if let Some(record) = api
        .dashboard_tokens
        .revoke(&id, now)
        .await
        .map_err(dashboard_error)?
    {
        return Ok(Json(json!({ "revoked": record, "kind": "dashboard" })).into_response());
    }
    Ok(Json(json!({ "revoked": api.pki.revoke_token(&id).await? })).into_response())
}

async fn policy_check(State(api): State<Arc<Api>>, body: String) -> Result<Response, ApiError> {
    let q: crate::policy_check::CheckRequest = serde_json::from_str(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the check request is not accepted: {e}; send {{\"from\": SERVICE, \"to\": SERVICE, \"port\"?, \"method\"?, \"path\"?, \"host\"?, \"namespace\"?, \"fromNamespace\"?}}"),
        )
    })?;
    let state = api.registry.subscribe().borrow().clone();
    let answer = crate::policy_check::check(&state, &q)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(answer).into_response())
}

async fn ca(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let view = api.pki.view();
    let validity = api.pki.validity()?;
    Ok(Json(json!({
        "trustDomain": view.trust_domain,
        "generation": view.generation,
        "phase": view.phase,
        "rootPins": view.bundle.iter().map(|r| skein_identity::ca_pin(r)).collect::<Vec<_>>(),
        "rootCertificate": api.pki.root_pem(),
        "root": validity.root,
        "intermediate": validity.intermediate,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct RotateQuery {
    /// Longest wait for proxies per phase, e.g. `2m` (default `5m`).
    #[serde(default)]
    timeout: Option<String>,
}

/// Runs a rotation and streams one progress line per step (text/plain), ending with
/// `done` or `error: …`.
async fn rotate(
    State(api): State<Arc<Api>>,
    Query(q): Query<RotateQuery>,
) -> Result<Response, ApiError> {
    let phase_timeout = match &q.timeout {
        Some(t) => skein_model::duration::parse(t).ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("timeout: {t:?} is not a duration; use e.g. 30s, 5m"),
            )
        })?,
        None => std::time::Duration::from_secs(300),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let opts = crate::pki::RotateOptions { phase_timeout };
        let say = |line: String| {
            tracing::info!("CA rotation: {line}");
            let _ = tx.send(format!("{line}\n"));
        };
        match crate::pki::rotate(&api.pki, &api.connections, opts, say).await {
            Ok(()) => drop(tx.send("done\n".into())),
            Err(e) => drop(tx.send(format!("error: {e}\n"))),
        }
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|l| (Ok::<_, std::convert::Infallible>(l), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

/// `?window=` (default `1m`, at most the hour held) and a row filter.
#[derive(Debug, Deserialize)]
struct SignalsQuery {
    window: Option<String>,
    name: Option<String>,
    service: Option<String>,
    namespace: Option<String>,
}

impl SignalsQuery {
    fn window(&self) -> Result<std::time::Duration, ApiError> {
        use crate::telemetry::query::MAX_WINDOW;
        let Some(text) = self.window.as_deref() else {
            return Ok(std::time::Duration::from_secs(60));
        };
        let bad = |why: &str| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("window {text:?} is not accepted: {why}; use e.g. 30s, 1m, 15m or 1h"),
            )
        };
        let w = skein_model::duration::parse(text)
            .ok_or_else(|| bad("not a duration (a whole number and ms, s, m or h)"))?;
        if w < std::time::Duration::from_secs(10) || w > MAX_WINDOW {
            return Err(bad(
                "it must be 10s to 1h (the control plane keeps an hour in 10 s slots)",
            ));
        }
        Ok(w)
    }
}

/// Queries over the central view run at once at most: each reads every proxy's hour under
/// the view's read lock (up to about a tenth of a second for 200 services), so a client
/// asking many at once waits its turn instead of taking every core and holding off the
/// summaries proxies send.
const QUERIES_AT_ONCE: usize = 2;

/// The turns [`query`] takes.
pub fn query_turns() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(QUERIES_AT_ONCE))
}

/// Runs `f` over the central view on a blocking thread, [`QUERIES_AT_ONCE`] at a time.
async fn query<T: Send + 'static>(
    api: &Arc<Api>,
    f: impl FnOnce(&crate::telemetry::Central) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = api.queries.clone().acquire_owned().await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is stopping".into(),
        )
    })?;
    let central = api.central.clone();
    tokio::task::spawn_blocking(move || f(&central))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the query failed: {e}"),
            )
        })
}

async fn stat(
    State(api): State<Arc<Api>>,
    Path(kind): Path<String>,
    Query(q): Query<SignalsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind: crate::telemetry::query::StatKind = kind
        .parse()
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e))?;
    let window = q.window()?;
    let now = crate::telemetry::unix_now();
    let name = q.name.clone();
    let rows = query(&api, move |c| c.stat(kind, name.as_deref(), window, now)).await?;
    Ok(Json(json!({
        "window": skein_model::duration::format(window),
        "replica": api.replica,
        "rows": rows,
    })))
}

/// `?window=&step=&namespace=&name=` of a series.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    window: Option<String>,
    step: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// Steps a series is cut into by default, and at most.
const SERIES_STEPS: u64 = 60;

async fn series(
    State(api): State<Arc<Api>>,
    Path(kind): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::telemetry::SLOT_SECS;
    let kind: crate::telemetry::query::StatKind = kind
        .parse()
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e))?;
    let window = SignalsQuery {
        window: q.window.clone().or_else(|| Some("1h".into())),
        name: None,
        service: None,
        namespace: None,
    }
    .window()?;
    let slot = SLOT_SECS as u64;
    let fewest = window.as_secs().div_ceil(SERIES_STEPS).div_ceil(slot) * slot;
    let step = match q.step.as_deref() {
        None => std::time::Duration::from_secs(fewest),
        Some(text) => {
            let step = skein_model::duration::parse(text).filter(|s| {
                s.subsec_nanos() == 0 && s.as_secs() % slot == 0 && s.as_secs() >= fewest
            });
            step.filter(|s| *s <= window).ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "step {text:?} is not accepted: it must be a whole number of 10 s slots, at least {fewest} s (at most {SERIES_STEPS} steps) and at most the window; use e.g. 10s, 1m or 5m"
                    ),
                )
            })?
        }
    };
    let now = crate::telemetry::unix_now();
    let series = query(&api, move |c| {
        let only = (q.namespace.as_deref(), q.name.as_deref());
        c.series(kind, only, window, step, now)
    })
    .await?;
    Ok(Json(json!({
        "window": skein_model::duration::format(window),
        "replica": api.replica,
        "step_seconds": series.step_seconds,
        "t": series.t,
        "rows": series.rows,
        "truncated": series.truncated,
    })))
}

async fn edges(
    State(api): State<Arc<Api>>,
    Query(q): Query<SignalsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = q.window()?;
    let now = crate::telemetry::unix_now();
    let service = q.service.clone();
    let rows = query(&api, move |c| c.edges(service.as_deref(), window, now)).await?;
    Ok(Json(json!({
        "window": skein_model::duration::format(window),
        "replica": api.replica,
        "rows": rows,
    })))
}

#[derive(serde::Deserialize)]
struct WhyQuery {
    request_id: Option<String>,
    to: Option<String>,
}

/// What the proxies decided about one request: by ID, or the latest to a service.
async fn why(
    State(api): State<Arc<Api>>,
    Query(q): Query<WhyQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = match (q.request_id, q.to) {
        (Some(id), _) => id,
        (None, Some(to)) => api.central.why.last_to(&to).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no failed or retried request to {to} is recorded (the mesh keeps the latest 10,000)"),
            )
        })?,
        (None, None) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give request_id=ID (a skein-request-id) or to=SERVICE".into(),
            ))
        }
    };
    let hops = api.central.why.of(&id);
    Ok(Json(
        json!({ "requestId": id, "hops": hops, "replica": api.replica }),
    ))
}

#[derive(Deserialize)]
struct TracesQuery {
    service: Option<String>,
    errors: Option<bool>,
    min_duration: Option<String>,
    limit: Option<usize>,
}

/// Recent traces matching the query, newest first.
async fn traces(
    State(api): State<Arc<Api>>,
    Query(q): Query<TracesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let min = match q.min_duration.as_deref() {
        None | Some("") => std::time::Duration::ZERO,
        Some(text) => skein_model::duration::parse(text).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("min_duration {text:?} is not a duration; use e.g. 100ms or 2s"),
            )
        })?,
    };
    let filter = crate::telemetry::traces::Filter {
        service: q.service.filter(|s| !s.is_empty()),
        errors: q.errors.unwrap_or(false),
        min_duration_us: min.as_micros() as u64,
        limit: q.limit.unwrap_or(20),
    };
    let (kept, bytes) = api.central.traces.size();
    Ok(Json(json!({
        "traces": api.central.traces.list(&filter),
        "kept": kept,
        "bytes": bytes,
        "limits": {
            "traces": crate::telemetry::traces::MAX_TRACES,
            "bytes": crate::telemetry::traces::MAX_BYTES,
        },
        "replica": api.replica,
    })))
}

/// One trace's spans, earliest first.
async fn trace(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a trace ID; give its 32 hex digits (from `skein trace list` or a traceparent header)"),
        ));
    }
    let id = id.to_ascii_lowercase();
    let spans = api.central.traces.show(&id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("trace {id} is not kept here: not sampled, not yet reported (proxies report every few seconds), or older than the newest 10,000 traces"),
        )
    })?;
    Ok(Json(
        json!({ "traceId": id, "spans": spans, "replica": api.replica }),
    ))
}

/// Prometheus `http_sd_configs` (and, saved to a file, `file_sd_configs`): one target
/// group per connected proxy that announced its admin address, labelled with its
/// workload, namespace and service.
async fn prometheus_targets(State(api): State<Arc<Api>>) -> Response {
    /// One group of Prometheus's HTTP service discovery format.
    #[derive(serde::Serialize)]
    struct Group {
        targets: [String; 1],
        labels: Labels,
    }
    #[derive(serde::Serialize)]
    struct Labels {
        skein_namespace: String,
        skein_workload: String,
        skein_service: String,
        #[serde(rename = "__metrics_path__")]
        metrics_path: &'static str,
    }
    streamed(move || {
        api.connections
            .list()
            .into_iter()
            .filter_map(|c| {
                Some(Group {
                    targets: [c.admin?.to_string()],
                    labels: Labels {
                        skein_namespace: c.namespace,
                        skein_workload: c.workload,
                        skein_service: c.account,
                        metrics_path: "/metrics",
                    },
                })
            })
            .collect::<Vec<_>>()
    })
}

async fn map(
    State(api): State<Arc<Api>>,
    Query(q): Query<SignalsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = q.window()?;
    let now = crate::telemetry::unix_now();
    let view = query(&api, move |c| c.map(window, now)).await?;
    Ok(Json(json!({
        "window": skein_model::duration::format(window),
        "replica": api.replica,
        "nodes": view.nodes,
        "edges": view.edges,
    })))
}

async fn policy_suggest(
    State(api): State<Arc<Api>>,
    Query(q): Query<SignalsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = match q.window {
        None => crate::telemetry::query::MAX_WINDOW,
        Some(_) => q.window()?,
    };
    let now = crate::telemetry::unix_now();
    let (policies, yaml) = query(&api, move |c| {
        let policies = c.suggest(q.namespace.as_deref(), window, now);
        let yaml = crate::telemetry::suggest::to_yaml(&policies, window, now);
        (policies, yaml)
    })
    .await?;
    Ok(Json(json!({ "yaml": yaml, "policies": policies })))
}

/// Server-sent events telling the dashboard what may have changed ([`crate::ui::updates`]).
async fn updates(
    State(api): State<Arc<Api>>,
    axum::Extension(caller): axum::Extension<crate::ui::Caller>,
) -> Result<Response, ApiError> {
    use crate::ui::updates::{news, Versions, EVERY, LOOKS, TELEMETRY_EVERY};
    use axum::response::sse::{Event, KeepAlive, Sse};
    let watching = api
        .watchers
        .enter(caller.token_id.as_deref())
        .map_err(|full| ApiError(StatusCode::TOO_MANY_REQUESTS, full.to_string()))?;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (api, watching, None::<Versions>, tick, 0u64);
    let events = futures_util::stream::unfold(
        state,
        |(api, watching, told, mut tick, mut looks)| async move {
            loop {
                tick.tick().await;
                looks += 1;
                if looks > LOOKS {
                    // The browser opens the stream again, asking with its credential as
                    // it is now: a revoked token or an ended session stops here.
                    return None;
                }
                let now = Versions {
                    resources: api.registry.revision(),
                    telemetry: match told {
                        Some(t) if looks % TELEMETRY_EVERY != 1 => t.telemetry,
                        _ => api.central.ingested(),
                    },
                };
                if news(told, now) {
                    let event = Event::default()
                        .event("change")
                        .json_data(now)
                        .unwrap_or_default();
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (api, watching, Some(now), tick, looks),
                    ));
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// `?to=&from=&path=&method=&status=&max_rps=` of a tap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TapQuery {
    to: Option<String>,
    from: Option<String>,
    path: Option<String>,
    method: Option<String>,
    status: Option<String>,
    max_rps: Option<u32>,
}

/// Streams live request metadata, one JSON object per line, until the client goes; then
/// every proxy stops tapping.
async fn tap(State(api): State<Arc<Api>>, Query(q): Query<TapQuery>) -> Result<Response, ApiError> {
    let bad = |what: String| ApiError(StatusCode::BAD_REQUEST, what);
    let status_class = match q.status.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.as_bytes() {
            [c @ b'1'..=b'5', b'x', b'x'] => u32::from(c - b'0'),
            _ => {
                return Err(bad(format!(
                    "status {s:?} is not accepted; use 1xx, 2xx, 3xx, 4xx or 5xx"
                )))
            }
        },
    };
    let max = q.max_rps.unwrap_or(100);
    if !(1..=1000).contains(&max) {
        return Err(bad(format!(
            "max_rps {max} is not accepted; use 1 to 1000 events per second"
        )));
    }
    if q.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
        return Err(bad(
            "path must start with '/' (a path prefix such as /menu)".into(),
        ));
    }
    let filter = skein_api::v1::TapFilter {
        to: q.to.unwrap_or_default(),
        from: q.from.unwrap_or_default(),
        path_prefix: q.path.unwrap_or_default(),
        method: q.method.unwrap_or_default().to_ascii_uppercase(),
        status_class,
        max_per_second: max,
    };
    // Each tap starts a stream of events from every proxy: a bounded number at once, so
    // that no credential (a read-only one included) can load the data plane with taps.
    if api.taps.subscribers() >= crate::tap::MAX_TAPS {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} live taps are open, the most the control plane runs at once; end one (its `skein tap` or dashboard page) and try again",
                crate::tap::MAX_TAPS
            ),
        ));
    }
    let subscription = api.taps.subscribe(filter);
    let lines = futures_util::stream::unfold(subscription, |mut sub| async move {
        let event = sub.events.recv().await?;
        let mut line = serde_json::to_vec(&tap_json(&event)).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
            sub,
        ))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .unwrap_or_default())
}

/// A tap event as the API shows it.
fn tap_json(e: &skein_api::v1::TapEvent) -> serde_json::Value {
    let who = |a: &Option<skein_api::v1::Account>| {
        a.as_ref()
            .map(|a| format!("{}/{}", a.namespace, a.name))
            .unwrap_or_default()
    };
    json!({
        "direction": if e.inbound { "inbound" } else { "outbound" },
        "workload": e.workload,
        "src": who(&e.src),
        "dst": who(&e.dst),
        "tls": e.tls,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "grpc_status": e.grpc_status,
        "latency_ms": e.latency_us as f64 / 1000.0,
        "duration_ms": e.duration_us as f64 / 1000.0,
        "request_bytes": e.request_bytes,
        "response_bytes": e.response_bytes,
        "route": e.route,
        "error": e.error,
        "unix_ms": e.unix_ms,
    })
}
