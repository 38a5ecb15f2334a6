//! The HTTP API the CLI (and later the dashboard) uses: list, get, apply and delete
//! resources, and see connected proxies. Every route but `/healthz` needs the admin token
//! (`Authorization: Bearer TOKEN`); errors are JSON `{"error": "..."}` that say what to do.
//!
//! ```text
//! GET    /healthz
//! POST   /api/v1/apply                      body: YAML or JSON, one or more documents
//! GET    /api/v1/resources/{kind}[?namespace=NS]
//! GET    /api/v1/resources/{kind}/{name}[?namespace=NS]
//! DELETE /api/v1/resources/{kind}/{name}[?namespace=NS]
//! GET    /api/v1/connections
//! GET    /api/v1/status                     replica, leadership, store revision
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
use skein_model::resource::{parse_documents, Kind, ResourceKey};
use std::sync::Arc;

/// Largest apply body accepted (4 MiB).
const MAX_BODY: usize = 4 << 20;

/// What the handlers share.
pub struct Api {
    /// The resources.
    pub registry: Arc<Registry>,
    /// Proxies connected to this replica.
    pub connections: Arc<Connections>,
    /// The admin token.
    pub token: String,
    /// This replica's name.
    pub replica: String,
    /// Whether this replica leads.
    pub leader: tokio::sync::watch::Receiver<bool>,
}

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
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/status", get(status))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(api)
}

async fn authenticate(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if crate::token::matches(&api.token, token.trim()) => next.run(req).await,
        Some(_) => ApiError(
            StatusCode::UNAUTHORIZED,
            "the admin token is wrong; use the one in DATA_DIR/admin.token (skein finds it with --data-dir, or pass --token / SKEIN_TOKEN)".into(),
        )
        .into_response(),
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing credential: send `Authorization: Bearer TOKEN` with the token from DATA_DIR/admin.token".into(),
        )
        .into_response(),
    }
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
    let docs = parse_documents(&body, "request body")
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if docs.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no resources in the request; send one or more YAML documents".into(),
        ));
    }
    let results = api.registry.apply(docs).await?;
    Ok(Json(json!({ "results": results, "revision": api.registry.revision() })).into_response())
}

async fn list(
    State(api): State<Arc<Api>>,
    Path(word): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let kind = kind(&word)?;
    let items = api.registry.list(kind, q.namespace.as_deref());
    Ok(Json(json!({ "items": items, "revision": api.registry.revision() })).into_response())
}

async fn get_one(
    State(api): State<Arc<Api>>,
    Path((word, name)): Path<(String, String)>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let key = key(kind(&word)?, &name, &q);
    match api.registry.get(&key) {
        Some(resource) => Ok(Json(resource).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{key} not found; `skein get {word}` lists what exists"),
        )),
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

async fn status(State(api): State<Arc<Api>>) -> Response {
    Json(json!({
        "replica": api.replica,
        "leader": *api.leader.borrow(),
        "revision": api.registry.revision(),
        "connectedProxies": api.connections.list().len(),
    }))
    .into_response()
}

async fn connections(State(api): State<Arc<Api>>) -> Response {
    Json(json!({ "items": api.connections.list() })).into_response()
}
