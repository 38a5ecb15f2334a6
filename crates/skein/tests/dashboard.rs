//! The dashboard's door: `skein control` serving `/ui/` over a real socket, as a browser
//! and the CLI meet it. Without a credential only the login page is served; the admin
//! token and a read-only dashboard token log in to a strict session cookie; a viewer
//! reads and changes nothing (the API refuses, whatever the page shows); a change made
//! with a session needs the dashboard's CSRF header; revoking a dashboard token ends its
//! sessions at their next request; bad logins say why and lose nothing.
//!
//! Addresses: 127.0.23.1–9, one control plane per test.

use skein_control::server::{ControlOptions, RunningControl};
use skein_testkit::control::{skein_cli, CliOutput, TempDir};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `skein` binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_skein");

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 23, n))
}

/// An answer: status, header lines (lower-cased names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) with `headers` and `body`.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {out}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Bodies of `Transfer-Encoding: chunked` answers are read as they come; the tests
    // look for text in them, which chunk sizes do not hide.
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `skein ARGS` against `cp` with its admin token.
async fn cli(cp: &RunningControl, args: &[&str]) -> CliOutput {
    let server = cp.http.to_string();
    let mut all = args.to_vec();
    all.extend(["--server", &server, "--token", &cp.token]);
    skein_cli(Path::new(BIN), &all, None).await
}

/// A Service to apply.
const SERVICE: &str = "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}\n";

/// [`SERVICE`] applied with session `cookie` and the header the dashboard's script sends.
async fn apply_as_dashboard(cp: &RunningControl, cookie: &str) -> Answer {
    let headers = [("Cookie", cookie), ("X-Skein-Csrf", "1")];
    send(cp.http, "POST", "/api/v1/apply", &headers, SERVICE).await
}

/// Services in the registry.
fn services(cp: &RunningControl) -> usize {
    cp.registry.list(skein_model::Kind::Service, None).len()
}

/// `GET path` with `headers`.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(addr, "GET", path, headers, "").await
}

/// The login form posted with `token` (as a browser sends it).
async fn post_login(addr: SocketAddr, token: &str) -> Answer {
    let form = format!("token={}", token.replace('+', "%2B"));
    let kind = [("Content-Type", "application/x-www-form-urlencoded")];
    send(addr, "POST", "/ui/login", &kind, &form).await
}

async fn control(n: u8, tag: &str) -> (RunningControl, TempDir) {
    skein_testkit::init_tracing();
    let dir = TempDir::new(&format!("dashboard-{tag}")).unwrap();
    let cp = RunningControl::start(ControlOptions::embedded(dir.path(), ip(n), "test"))
        .await
        .unwrap();
    (cp, dir)
}

/// Logs in with `token`; the session cookie (`name=value`) and the whole Set-Cookie line.
async fn login(cp: &RunningControl, token: &str) -> (String, String) {
    let a = post_login(cp.http, token).await;
    assert_eq!(a.status, 303, "login refused: {}", a.body);
    assert_eq!(a.header("location"), Some("/ui/"));
    let set = a
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let pair = set.split(';').next().unwrap().trim().to_string();
    (pair, set)
}

#[tokio::test]
async fn without_a_credential_only_the_login_page_is_served() {
    let (cp, _dir) = control(1, "door").await;
    let page = get(cp.http, "/ui/", &[]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.header("location"), Some("/ui/login"));
    let script = get(cp.http, "/ui/assets/app.js", &[]).await;
    assert_eq!(script.status, 401);
    let login = get(cp.http, "/ui/login", &[]).await;
    assert_eq!(login.status, 200);
    assert!(
        login
            .body
            .contains("<form method=\"post\" action=\"/ui/login\">"),
        "{}",
        login.body
    );
    let csp = login.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(get(cp.http, "/ui/login.css", &[]).await.status, 200);
    let api = get(cp.http, "/api/v1/stat/services", &[]).await;
    assert_eq!(api.status, 401);
    assert!(api.body.contains("missing credential"), "{}", api.body);
    assert!(api.body.contains("/ui/login"), "{}", api.body);
    // A cookie this control plane did not sign opens nothing.
    let forged = get(
        cp.http,
        "/api/v1/session",
        &[("Cookie", "skein_session=v1.a.99999999999.-.00.00")],
    )
    .await;
    assert_eq!(forged.status, 401);
    assert!(forged.body.contains("log in again"), "{}", forged.body);
}

#[tokio::test]
async fn the_admin_token_logs_in_to_a_strict_session_whose_changes_need_the_csrf_header() {
    let (cp, _dir) = control(2, "admin").await;
    // A wrong token: the login page again, saying why, and no cookie.
    let wrong = post_login(cp.http, "not-the-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("role=\"alert\""), "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("neither the admin token nor a dashboard token")
            || wrong.body.contains("the credential is wrong"),
        "{}",
        wrong.body
    );

    let (cookie, set) = login(&cp, &cp.token).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(
        !set.contains(&cp.token),
        "the admin token is not in the cookie"
    );
    let page = get(cp.http, "/ui/", &[("Cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/assets/app.js"));
    let who = get(cp.http, "/api/v1/session", &[("Cookie", &cookie)]).await;
    assert_eq!(who.status, 200, "{}", who.body);
    assert!(
        who.body.contains("\"role\":\"admin\"") && who.body.contains("\"session\":true"),
        "{}",
        who.body
    );

    // A change with the cookie alone (another site's form) is refused, saying why; with
    // the header the dashboard sends, it goes through.
    let bare = send(
        cp.http,
        "POST",
        "/api/v1/apply",
        &[("Cookie", &cookie)],
        SERVICE,
    )
    .await;
    assert_eq!(bare.status, 403);
    assert!(bare.body.contains("X-Skein-Csrf: 1"), "{}", bare.body);
    assert_eq!(services(&cp), 0, "nothing was applied");
    let with = apply_as_dashboard(&cp, &cookie).await;
    assert_eq!(with.status, 200, "{}", with.body);
    assert_eq!(services(&cp), 1);

    // Logging out clears the cookie.
    let out = send(cp.http, "POST", "/ui/logout", &[("Cookie", &cookie)], "").await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn a_read_only_dashboard_token_sees_everything_and_changes_nothing() {
    let (cp, _dir) = control(3, "viewer").await;
    // Made with the CLI, as the docs say.
    let made = cli(
        &cp,
        &[
            "token",
            "create",
            "--dashboard",
            "--read-only",
            "--ttl",
            "2h",
        ],
    )
    .await;
    let token = made.ok().trim().to_string();
    assert!(token.starts_with("skein-dashboard."), "{token}");
    assert!(
        made.stderr.contains("read-only dashboard token"),
        "{}",
        made.stderr
    );
    assert!(made.stderr.contains("/ui/"), "{}", made.stderr);
    // Asked for without --read-only, the CLI says what is needed.
    let refused = cli(&cp, &["token", "create", "--dashboard"]).await;
    assert!(!refused.success());
    assert!(refused.stderr.contains("--read-only"), "{}", refused.stderr);
    // The API refuses a writable dashboard token, saying so.
    let admin = format!("Bearer {}", cp.token);
    let writable = send(
        cp.http,
        "POST",
        "/api/v1/tokens",
        &[("Authorization", &admin)],
        "{\"dashboard\": true}",
    )
    .await;
    assert_eq!(writable.status, 422);
    assert!(writable.body.contains("read-only"), "{}", writable.body);

    let (cookie, set) = login(&cp, &token).await;
    assert!(set.contains("SameSite=Strict"));
    let who = get(cp.http, "/api/v1/session", &[("Cookie", &cookie)]).await;
    assert!(who.body.contains("\"role\":\"viewer\""), "{}", who.body);
    assert_eq!(
        get(cp.http, "/api/v1/stat/services", &[("Cookie", &cookie)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(cp.http, "/ui/", &[("Cookie", &cookie)]).await.status,
        200
    );

    // What a viewer presses is refused by the API itself, with or without the header,
    // as a session or as a bearer token; tokens are the admin's to list.
    let pressed = apply_as_dashboard(&cp, &cookie).await;
    assert_eq!(pressed.status, 403);
    assert!(
        pressed.body.contains("read-only credential"),
        "{}",
        pressed.body
    );
    let bearer = format!("Bearer {token}");
    let promote = send(
        cp.http,
        "POST",
        "/api/v1/canaries/default/web/promote",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(promote.status, 403, "{}", promote.body);
    assert_eq!(
        get(cp.http, "/api/v1/tokens", &[("Cookie", &cookie)])
            .await
            .status,
        403
    );
    assert_eq!(services(&cp), 0, "nothing changed");

    // Listed for the admin, without its secret; revoked, its session ends at once.
    let list = get(cp.http, "/api/v1/tokens", &[("Authorization", &admin)]).await;
    let secret = token.rsplit('.').next().unwrap();
    assert!(list.body.contains("\"dashboard\""), "{}", list.body);
    assert!(!list.body.contains(secret), "the secret is never listed");
    let id = token.split('.').nth(1).unwrap();
    let revoked = cli(&cp, &["token", "revoke", id]).await;
    assert!(revoked.success(), "{}", revoked.stderr);
    let after = get(cp.http, "/api/v1/stat/services", &[("Cookie", &cookie)]).await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("was revoked"), "{}", after.body);
    let again = post_login(cp.http, &token).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("was revoked"), "{}", again.body);
}
