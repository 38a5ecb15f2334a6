//! The dashboard, served by `skein control` on its HTTP port under `/ui/`, and who is
//! asking: the credential behind every API request.
//!
//! Request order: a request for `/ui/…` or `/api/v1/…` is first resolved to a
//! [`Caller`] ([`caller`]: the admin token or a read-only dashboard token as
//! `Authorization: Bearer`, or a session cookie the login page set), then allowed or
//! refused by what that caller may do ([`may`]), then served. The pages are static files
//! embedded in the binary ([`assets`]) that read the same typed API the CLI uses; nothing
//! is fetched from another host (the Content-Security-Policy says so to the browser).
//!
//! - `GET /ui/login` and `/ui/login.css`: the login page, the only thing served without a
//!   credential.
//! - `POST /ui/login` (form field `token`): a session cookie (`HttpOnly`,
//!   `SameSite=Strict`, at most 8 hours; [`session`]) and a redirect to `/ui/`, or the
//!   login page again saying why not.
//! - `POST /ui/logout`: clears the cookie.
//! - `GET /ui/`, `/ui/assets/…`: the dashboard, with a session (else a redirect to the
//!   login page).
//!
//! Changes made with a session cookie must carry the header `X-Skein-Csrf: 1`, which the
//! dashboard's own script sends and which another site's page cannot (a custom header
//! makes a cross-origin request need a CORS preflight, which is never granted), on top of
//! `SameSite=Strict`.

pub mod assets;
pub mod session;
pub mod tokens;
pub mod updates;

use crate::api::Api;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use session::{Role, SessionError};
use std::sync::Arc;

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The session cookie's name.
pub const COOKIE: &str = "skein_session";
/// The header a change made with a session cookie must carry.
pub const CSRF_HEADER: &str = "x-skein-csrf";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What it may do.
    pub role: Role,
    /// Whether the credential came in a session cookie (a browser).
    pub by_session: bool,
    /// When its session ends (Unix seconds), for a session.
    pub expires_unix: Option<u64>,
    /// The read-only dashboard token it holds (or its session was made with), by id;
    /// none for the admin token.
    pub token_id: Option<String>,
}

/// Why a request has no caller.
#[derive(Debug, thiserror::Error)]
pub enum Unauthenticated {
    /// Neither header nor cookie.
    #[error("missing credential: send `Authorization: Bearer TOKEN` with the admin token from DATA_DIR/admin.token (or a read-only dashboard token), or log in at /ui/login")]
    Missing,
    /// A bearer token that is neither.
    #[error("the credential is wrong: use the admin token in DATA_DIR/admin.token (skein finds it with --data-dir, or pass --token / SKEIN_TOKEN), or a dashboard token from `skein token create --dashboard --read-only`")]
    WrongToken,
    /// A dashboard token that no longer counts.
    #[error(transparent)]
    Token(tokens::TokenError),
    /// A session cookie that does not count.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store could not say whether a dashboard token counts.
    #[error("the control plane cannot check dashboard tokens now (its store did not answer); try again shortly")]
    Unavailable,
}

impl Unauthenticated {
    /// The HTTP status for it: 503 when the store failed, 401 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Unauthenticated::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A dashboard token's refusal as a caller's: a failing store is not a wrong token (and
/// its text stays in the log, not in the answer).
fn token_refusal(e: tokens::TokenError) -> Unauthenticated {
    match e {
        tokens::TokenError::Unknown => Unauthenticated::WrongToken,
        tokens::TokenError::Store(_) | tokens::TokenError::Corrupt { .. } => {
            tracing::warn!(error = %e, "cannot check a dashboard token");
            Unauthenticated::Unavailable
        }
        other => Unauthenticated::Token(other),
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller of a request with `headers`, at `now_unix`: a bearer token wins over a
/// cookie.
pub async fn caller(
    api: &Api,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<Caller, Unauthenticated> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let (role, token) = credential_role(api, token.trim(), now_unix).await?;
        return Ok(Caller {
            role,
            by_session: false,
            expires_unix: None,
            token_id: token.map(|(id, _)| id),
        });
    }
    let Some(value) = cookie_value(headers, COOKIE) else {
        return Err(Unauthenticated::Missing);
    };
    let s = api.sessions.verify(value, now_unix)?;
    if let Some(id) = &s.token_id {
        api.dashboard_tokens
            .still_valid(id, now_unix)
            .await
            .map_err(token_refusal)?;
    }
    Ok(Caller {
        role: s.role,
        by_session: true,
        expires_unix: Some(s.expires_unix),
        token_id: s.token_id,
    })
}

/// The role `token` grants, and for a dashboard token its id and end.
async fn credential_role(
    api: &Api,
    token: &str,
    now_unix: u64,
) -> Result<(Role, Option<(String, u64)>), Unauthenticated> {
    if crate::token::matches(&api.token, token) {
        return Ok((Role::Admin, None));
    }
    if !token.starts_with(tokens::TOKEN_START) {
        return Err(Unauthenticated::WrongToken);
    }
    match api.dashboard_tokens.check(token, now_unix).await {
        Ok(t) => Ok((Role::Viewer, Some((t.id, t.expires_unix)))),
        Err(e) => Err(token_refusal(e)),
    }
}

/// Whether `caller` may make a request of `method` to `path` with `headers`; why not,
/// as a status and a message that says what would be allowed.
pub fn may(
    caller: &Caller,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    // Browsers send a host's cookies to all of its ports, and `SameSite` does not tell
    // ports apart: a page served by another port of this host could make the browser ask
    // with the session. Browsers say where a request comes from (`Sec-Fetch-Site`); the
    // dashboard's own requests say `same-origin`.
    if caller.by_session {
        if let Some(site) = headers.get("sec-fetch-site") {
            if site != "same-origin" {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("a dashboard session answers only the dashboard's own pages; this request came from another site or port (Sec-Fetch-Site: {}); use the dashboard at /ui/, or send a token as `Authorization: Bearer`", site.to_str().unwrap_or("?")),
                ));
            }
        }
    }
    if caller.role == Role::Viewer {
        if !reads {
            return Err((
                StatusCode::FORBIDDEN,
                format!("read-only credential: {method} {path} changes the mesh, which a dashboard token may not; log in with the admin token to do it"),
            ));
        }
        if path.starts_with("/api/v1/tokens") {
            return Err((
                StatusCode::FORBIDDEN,
                "read-only credential: tokens are listed to the admin token only".into(),
            ));
        }
    }
    if caller.by_session && !reads && headers.get(CSRF_HEADER).is_none_or(|v| v != "1") {
        return Err((
            StatusCode::FORBIDDEN,
            format!("a change made with a dashboard session must carry the header `X-Skein-Csrf: 1`, which the dashboard's pages send; {method} {path} came without it (another site's page?)"),
        ));
    }
    Ok(())
}

/// The `/ui/` routes.
pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_page).post(login))
        .route(
            "/ui/login.css",
            get(|| async { assets::serve("login.css") }),
        )
        .route("/ui/logout", post(logout))
        .route("/ui/", get(page))
        .route("/ui/assets/{file}", get(asset))
}

/// The login page, with `error` (escaped) above the form when there is one.
fn login_html(status: StatusCode, error: Option<&str>) -> Response {
    assets::html(status, login_body(error))
}

fn login_body(error: Option<&str>) -> String {
    let note = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    assets::LOGIN_HTML.replace("<!--error-->", &note)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn login_page() -> Response {
    login_html(StatusCode::OK, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// Whether a form came from this origin's own page: browsers say where a POST comes from
/// (`Sec-Fetch-Site`, `Origin`); a form another site or port submits is refused, so that
/// nobody can log a browser in to their own session, or out of its own.
fn from_own_page(headers: &HeaderMap) -> bool {
    let site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|v| v == "same-origin");
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => host
            .is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}")),
    };
    site_ok && origin_ok
}

/// The answer to a form that did not come from the dashboard's own page.
fn not_from_own_page() -> Response {
    login_html(
        StatusCode::FORBIDDEN,
        Some("This form is accepted only from the dashboard's own login page; open /ui/login and log in there."),
    )
}

async fn login(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !from_own_page(&headers) {
        return not_from_own_page();
    }
    let now = now_unix();
    let token = form.token.trim();
    if token.is_empty() {
        return login_html(
            StatusCode::UNAUTHORIZED,
            Some("Enter a token: the admin token (DATA_DIR/admin.token) or a read-only dashboard token."),
        );
    }
    let (role, dashboard) = match credential_role(&api, token, now).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(reason = %e, "dashboard login refused");
            return login_html(e.status(), Some(&e.to_string()));
        }
    };
    let lifetime = match &dashboard {
        Some((_, ends)) => ends.saturating_sub(now).min(session::MAX_LIFETIME_SECS),
        None => session::MAX_LIFETIME_SECS,
    };
    let mut nonce = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        return login_html(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("the system's random source failed; try again"),
        );
    }
    let value = api.sessions.issue(
        role,
        dashboard.as_ref().map(|(id, _)| id.as_str()),
        now,
        lifetime,
        nonce,
    );
    tracing::info!(%role, token = dashboard.as_ref().map(|(id, _)| id.as_str()), "dashboard login");
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={lifetime}");
    let mut response = Redirect::to("/ui/").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    assets::harden(response)
}

async fn logout(headers: HeaderMap) -> Response {
    if !from_own_page(&headers) {
        return not_from_own_page();
    }
    let mut response = Redirect::to("/ui/login").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("skein_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    assets::harden(response)
}

/// Whether a page request comes with a valid credential.
async fn signed_in(api: &Api, headers: &HeaderMap) -> bool {
    caller(api, headers, now_unix()).await.is_ok()
}

async fn page(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if signed_in(&api, &headers).await {
        assets::html(StatusCode::OK, assets::INDEX_HTML.to_string())
    } else {
        assets::harden(Redirect::to("/ui/login").into_response())
    }
}

async fn asset(
    State(api): State<Arc<Api>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if signed_in(&api, &headers).await {
        assets::serve(&file)
    } else {
        assets::harden((StatusCode::UNAUTHORIZED, "log in at /ui/login\n").into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(by_session: bool) -> Caller {
        Caller {
            role: Role::Viewer,
            by_session,
            expires_unix: None,
            token_id: Some("t1".into()),
        }
    }

    fn admin(by_session: bool) -> Caller {
        Caller {
            role: Role::Admin,
            ..viewer(by_session)
        }
    }

    #[test]
    fn viewers_read_and_admins_change_with_the_csrf_header_from_a_browser() {
        let none = HeaderMap::new();
        let mut csrf = HeaderMap::new();
        csrf.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        let get = Method::GET;
        let post = Method::POST;
        let promote = "/api/v1/canaries/default/web/promote";
        assert!(may(&viewer(true), &get, "/api/v1/stat/services", &none).is_ok());
        assert!(may(&viewer(false), &get, "/api/v1/map", &none).is_ok());
        let (status, why) = may(&viewer(true), &post, promote, &csrf).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(why.contains("read-only credential: POST"), "{why}");
        assert!(may(
            &viewer(false),
            &Method::DELETE,
            "/api/v1/resources/services/web",
            &none
        )
        .is_err());
        assert!(may(&viewer(true), &get, "/api/v1/tokens", &none).is_err());
        // The admin token as a bearer (the CLI) needs no header; a browser's session does.
        assert!(may(&admin(false), &post, promote, &none).is_ok());
        let (_, why) = may(&admin(true), &post, promote, &none).unwrap_err();
        assert!(why.contains("X-Skein-Csrf: 1"), "{why}");
        assert!(may(&admin(true), &post, promote, &csrf).is_ok());
        let mut wrong = HeaderMap::new();
        wrong.insert(CSRF_HEADER, HeaderValue::from_static("yes"));
        assert!(may(&admin(true), &post, promote, &wrong).is_err());
    }

    #[test]
    fn a_session_answers_only_its_own_origin_and_forms_come_from_their_page() {
        let mut cross = HeaderMap::new();
        cross.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        cross.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        let (_, why) = may(&admin(true), &Method::GET, "/api/v1/tap", &cross).unwrap_err();
        assert!(why.contains("Sec-Fetch-Site: same-site"), "{why}");
        // A bearer token is not a browser's ambient credential: no such check.
        assert!(may(&admin(false), &Method::GET, "/api/v1/tap", &cross).is_ok());
        let mut own = HeaderMap::new();
        own.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(may(&viewer(true), &Method::GET, "/api/v1/map", &own).is_ok());

        let form = |site: Option<&'static str>, origin: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9990"));
            if let Some(s) = site {
                h.insert("sec-fetch-site", HeaderValue::from_static(s));
            }
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            from_own_page(&h)
        };
        assert!(form(None, None), "a client that says nothing (curl)");
        assert!(form(Some("same-origin"), Some("http://127.0.0.1:9990")));
        assert!(
            !form(Some("same-site"), Some("http://127.0.0.1:8080")),
            "another port"
        );
        assert!(!form(Some("cross-site"), None));
        assert!(!form(None, Some("http://evil.example")));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; skein_session=v1.x; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("v1.x"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("skein_session=v2"));
        assert_eq!(cookie_value(&h, COOKIE), Some("v2"));
        assert_eq!(cookie_value(&HeaderMap::new(), COOKIE), None);
    }

    #[test]
    fn the_login_page_escapes_what_it_repeats() {
        let body = login_body(Some("<script>x</script> & 'y'"));
        assert!(
            body.contains("&lt;script&gt;x&lt;/script&gt; &amp; &#39;y&#39;"),
            "{body}"
        );
        assert!(!body.contains("<script>x"));
        let r = login_html(StatusCode::UNAUTHORIZED, None);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
}
