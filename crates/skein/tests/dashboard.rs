//! The dashboard's door: `skein control` serving `/ui/` over a real socket, as a browser
//! and the CLI meet it. Without a credential only the login page is served; the admin
//! token and a read-only dashboard token log in to a strict session cookie; a viewer
//! reads and changes nothing (the API refuses, whatever the page shows); a change made
//! with a session needs the dashboard's CSRF header; revoking a dashboard token ends its
//! sessions at their next request; bad logins say why and lose nothing.
//!
//! Addresses: 127.0.23.1–9, one control plane per test; the browser test runs `skein
//! demo --net 77` (127.0.77.0/24).

use skein_control::server::{ControlOptions, RunningControl};
use skein_testkit::control::{skein_cli, CliOutput, TempDir};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
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

    // Another port of this host gets the browser's cookie too (SameSite does not tell
    // ports apart), but not the answers: the browser says where the request came from.
    let other_port = [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "same-site")];
    let cross = get(cp.http, "/api/v1/session", &other_port).await;
    assert_eq!(cross.status, 403);
    assert!(
        cross.body.contains("Sec-Fetch-Site: same-site"),
        "{}",
        cross.body
    );
    // A login form another page submits is refused: no one logs a browser in to their
    // session.
    let form = format!("token={}", cp.token);
    let planted = send(
        cp.http,
        "POST",
        "/ui/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://127.0.0.1:8080"),
        ],
        &form,
    )
    .await;
    assert_eq!(planted.status, 403);
    assert!(planted.header("set-cookie").is_none());
    assert!(
        planted.body.contains("accepted only from the dashboard"),
        "{}",
        planted.body
    );
    // API answers are never cached.
    assert_eq!(who.header("cache-control"), Some("no-store"));

    // Logging out clears the cookie.
    let out = send(cp.http, "POST", "/ui/logout", &[("Cookie", &cookie)], "").await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}

/// Live taps are bounded: a read-only token (or any credential) opens at most
/// `MAX_TAPS` at once, each of which asks every proxy for a stream of events.
#[tokio::test]
async fn live_taps_are_bounded_whoever_asks() {
    let (cp, _dir) = control(4, "taps").await;
    let (token, _) = cp
        .dashboard_tokens
        .create(
            std::time::Duration::from_secs(600),
            skein_control::ui::now_unix(),
        )
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1/tap HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        cp.http
    );
    let mut open = Vec::new();
    for _ in 0..skein_control::tap::MAX_TAPS {
        let mut s = tokio::net::TcpStream::connect(cp.http).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "a tap within the bound opens");
        open.push(s);
    }
    let bearer = format!("Bearer {token}");
    let one_more = get(cp.http, "/api/v1/tap", &[("Authorization", &bearer)]).await;
    assert_eq!(one_more.status, 429, "{}", one_more.body);
    assert!(
        one_more.body.contains("live taps are open"),
        "{}",
        one_more.body
    );
    drop(open);
}

/// Reads from `s` until `text` has come (at most 10 s); what came.
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, text: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains(text) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {text:?} within 10 s; read: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream closed; read: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// The dashboard is told of changes: `GET /api/v1/updates` is a server-sent event
/// stream whose first event carries the current versions and whose next comes when a
/// resource is applied; streams are bounded for every credential together.
#[tokio::test]
async fn changes_are_pushed_to_the_dashboard_as_server_sent_events() {
    let (cp, _dir) = control(5, "updates").await;
    let request = format!(
        "GET /api/v1/updates HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        cp.http, cp.token
    );
    let mut s = tokio::net::TcpStream::connect(cp.http).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut s, &mut seen, "event: change").await;
    read_until(&mut s, &mut seen, "}\n").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    let revision = |text: &str| -> u64 {
        let data = text.rsplit("data: ").next().unwrap();
        let json: serde_json::Value = serde_json::from_str(data.lines().next().unwrap()).unwrap();
        json["resources"].as_u64().unwrap()
    };
    let before = revision(&seen);
    // A change to the resources: the next event says so.
    let admin = format!("Bearer {}", cp.token);
    let applied = send(
        cp.http,
        "POST",
        "/api/v1/apply",
        &[("Authorization", &admin)],
        SERVICE,
    )
    .await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let mut next = String::new();
    read_until(&mut s, &mut next, "event: change").await;
    read_until(&mut s, &mut next, "}\n").await;
    assert!(revision(&next) > before, "{seen}\n--\n{next}");

    // One read-only token holds at most its share of the places; another credential
    // still gets one.
    let viewer = cli(
        &cp,
        &[
            "token",
            "create",
            "--dashboard",
            "--read-only",
            "--ttl",
            "1h",
        ],
    )
    .await;
    let viewer = viewer.ok().trim().to_string();
    let stream = |token: &str| {
        format!(
            "GET /api/v1/updates HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            cp.http
        )
    };
    let opened = async |request: &str| {
        let mut s = tokio::net::TcpStream::connect(cp.http).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s
    };
    let mut viewers = Vec::new();
    for _ in 0..skein_control::ui::updates::MAX_PER_TOKEN {
        viewers.push(opened(&stream(&viewer)).await);
    }
    let bearer = format!("Bearer {viewer}");
    let refused = get(cp.http, "/api/v1/updates", &[("Authorization", &bearer)]).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused.body.contains("read-only dashboard token")
            && refused.body.contains("polls instead"),
        "{}",
        refused.body
    );
    drop(viewers);

    // Bounded: with every place taken, one more is refused, saying why.
    let mut open = vec![s];
    for _ in 1..skein_control::ui::updates::MAX_WATCHERS {
        open.push(opened(&request).await);
    }
    let refused = get(cp.http, "/api/v1/updates", &[("Authorization", &admin)]).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("polls instead"), "{}", refused.body);
    drop(open);
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

/// `skein demo` run by a test: interrupted (as Ctrl-C would) and waited for when the
/// test ends, however it ends; the demo then stops its proxies and applications.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The venv Python with Selenium, if Chromium and its driver are here too; `None` (the
/// test skips) outside CI, a failure under it.
fn browser_tools() -> Option<PathBuf> {
    let browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| Path::new(p).exists());
    skein_testkit::python::venv_python(
        "selenium",
        browser,
        "the browser test needs Selenium and Debian's chromium and chromium-driver",
    )
}

/// In Chromium, headless, driven over WebDriver: the dashboard of `skein demo --canary`
/// as a newcomer meets it with the read-only login the demo prints, then as the admin.
/// The login page first; the overview lists the demo's services with their traffic; the
/// network map draws the demo's services and edges, the pair the mesh denies dashed, a
/// padlock on mutual TLS, and (once the admin has promoted a version that fails one
/// request in ten) the failing edge red; a viewer's rollout buttons are disabled and the
/// API refuses the viewer's change anyway; the admin's Promote button promotes; axe-core
/// finds no violation on any page; Tab reaches every control; the session cookie is out
/// of the page script's reach; the browser asks nothing of any host but the control
/// plane. Screenshots go to `target/tmp/dashboard-screenshots/`.
#[tokio::test]
async fn the_demos_dashboard_in_a_real_browser() {
    use std::io::BufRead;
    let Some(python) = browser_tools() else {
        return;
    };
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--loopback",
            "--canary",
            "--duration",
            "300s",
            "--rps",
            "25",
            "--net",
            "77",
        ])
        .env("SKEIN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run skein demo");
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    // Read up to the line that says both releases are done, and keep reading after it: a
    // demo whose stdout closed would fail at its next line.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut printed = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("both releases done") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(printed.clone());
                }
            }
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(printed);
        }
    });
    let printed = tokio::time::timeout(std::time::Duration::from_secs(240), rx)
        .await
        .expect("the demo's releases end within 240 s")
        .expect("the demo's output");
    assert!(
        printed.contains("both releases done"),
        "the demo ended before its releases did:\n{printed}"
    );
    let line = printed
        .lines()
        .find(|l| l.trim_start().starts_with("dashboard "))
        .unwrap_or_else(|| panic!("the demo prints no dashboard line:\n{printed}"));
    let url = line.split_whitespace().nth(1).unwrap().to_string();
    let token = line.split_whitespace().last().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.77.1:") && url.ends_with("/ui/"),
        "{line}"
    );
    assert!(token.starts_with("skein-dashboard."), "{line}");
    let origin = url.trim_end_matches("/ui/").to_string();
    // The admin token, where the CLI commands the demo prints find it.
    let data_dir = printed
        .split_whitespace()
        .skip_while(|w| *w != "--data-dir")
        .nth(1)
        .unwrap_or_else(|| panic!("the demo prints no --data-dir:\n{printed}"));
    let admin = std::fs::read_to_string(Path::new(data_dir).join("admin.token"))
        .unwrap()
        .trim()
        .to_string();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let axe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/axe.min.js");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/dashboard_browser.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&url)
        .arg(&token)
        .arg(&admin)
        .arg(&axe)
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(280), run)
        .await
        .expect("the browser run ends within 280 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run failed:\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    judge_browser_run(&seen, &url, &origin, &shots);
}

/// What the browser saw, judged.
fn judge_browser_run(seen: &serde_json::Value, url: &str, origin: &str, shots: &Path) {
    // The login page first, then the overview.
    assert_eq!(seen["login_url"], format!("{origin}/ui/login"), "{seen}");
    assert_eq!(seen["overview_url"], url, "{seen}");
    assert_eq!(seen["who"], "read-only viewer", "{seen}");
    let rows = seen["overview_rows"].as_array().unwrap();
    let row = |service: &str| -> Vec<String> {
        rows.iter()
            .find(|r| r["service"] == service)
            .unwrap_or_else(|| panic!("no {service} on the overview: {seen}"))["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    for service in ["default/frontend", "default/restaurant"] {
        let cells = row(service);
        let rps: f64 = cells[1].parse().unwrap_or(0.0);
        assert!(rps > 0.0, "{service} shows no requests: {cells:?}");
        assert_eq!(cells[5], "yes", "{service}: mutual TLS: {cells:?}");
    }
    let ledger = row("default/ledger");
    assert!(
        ledger[7].parse::<u64>().unwrap_or(0) > 0,
        "ledger's TCP: {ledger:?}"
    );

    // The page follows the control plane's change events rather than polling.
    assert_eq!(seen["updates"][0], "pushed", "{seen}");

    // The map: the demo's services and edges; the pair no policy allows, denied and
    // dashed; mutual TLS padlocked; every edge listed in the table too.
    let map = &seen["map"];
    let nodes: Vec<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for node in [
        "default/traffic",
        "default/frontend",
        "default/restaurant",
        "default/ledger",
    ] {
        assert!(nodes.contains(&node), "no {node} on the map: {map}");
    }
    let edge = |state: &serde_json::Value, name: &str| -> serde_json::Value {
        state["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["edge"] == name)
            .unwrap_or_else(|| panic!("no edge {name} on the map: {state}"))
            .clone()
    };
    let called = edge(map, "default/traffic → default/frontend");
    assert_eq!(called["authorization"], "allowed", "{called}");
    assert_eq!(called["mtls"], "true", "{called}");
    assert_eq!(called["lock"], "lock", "a closed padlock: {called}");
    assert_eq!(called["dash"], "none", "{called}");
    let tcp = edge(map, "default/frontend → default/ledger");
    assert_eq!(tcp["health"], "tcp", "{tcp}");
    let denied = edge(map, "default/traffic → default/restaurant");
    assert_eq!(denied["authorization"], "denied", "{denied}");
    assert_eq!(denied["health"], "denied", "{denied}");
    assert_ne!(denied["dash"], "none", "a denied edge is dashed: {denied}");
    assert!(
        denied["label"].as_str().unwrap().contains("denied"),
        "{denied}"
    );
    let listed = map["rows"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        map["edges"].as_array().unwrap().len(),
        "{map}"
    );
    let detail = seen["map_detail"].as_str().unwrap();
    assert!(
        detail.contains("default/traffic → default/frontend") && detail.contains("Requests/s"),
        "{detail}"
    );

    // The live tap streams requests; filtered to 4xx, only the mesh's denials (403) of
    // the traffic generator's calls to the restaurant.
    let tapped = seen["tap_rows"].as_array().unwrap();
    assert!(tapped.len() >= 5, "{seen}");
    assert!(
        tapped
            .iter()
            .any(|r| r[3] == "default/frontend" || r[3] == "default/restaurant"),
        "{tapped:?}"
    );
    let denied_rows = seen["tap_denied_rows"].as_array().unwrap();
    assert!(denied_rows.len() >= 2, "{seen}");
    for r in denied_rows {
        assert_eq!(r[6], "403", "only 4xx after the filter: {r}");
        assert_eq!(r[2], "default/traffic", "{r}");
    }

    // Traces: failing ones listed, one's waterfall with its failing span, and `skein why`'s
    // explanation of its request.
    let failing_traces = seen["failing_traces"].as_array().unwrap();
    assert!(
        !failing_traces.is_empty(),
        "no failing trace listed: {seen}"
    );
    for t in failing_traces {
        assert_ne!(t["cells"][5], "0", "a listed trace has errors: {t}");
    }
    let spans = seen["waterfall_spans"].as_array().unwrap();
    assert!(spans.len() >= 2, "{seen}");
    assert!(spans.iter().any(|s| s["error"] == true), "{spans:?}");
    // The newest failures are the mesh's denials of the traffic generator's direct calls
    // (or the promoted version's 500s): either way, each proxy's word on it.
    let hops = seen["why_hops"].as_array().unwrap();
    assert!(!hops.is_empty(), "{seen}");
    assert!(
        hops.iter().any(|h| {
            let status = h[7].as_str().unwrap();
            status.starts_with("403 (denied)") || status.starts_with('5')
        }),
        "the explanation names the failure: {hops:?}"
    );
    assert!(
        hops.iter().all(|h| !h[8].as_str().unwrap().is_empty()),
        "each proxy says why: {hops:?}"
    );

    // The restaurant's page: its workloads connected, with a configuration version and a
    // certificate end; its callers, the frontend allowed and the traffic generator denied;
    // three charts; the top paths from its tap.
    assert_eq!(
        seen["service_heading"], "Service default/restaurant",
        "{seen}"
    );
    let workloads = seen["service_workloads"].as_array().unwrap();
    assert!(!workloads.is_empty(), "{seen}");
    for w in workloads {
        assert_eq!(w[2], "yes", "connected: {w}");
        assert!(
            w[3].as_str().unwrap().parse::<u64>().is_ok(),
            "a config version: {w}"
        );
        assert!(
            w[4].as_str().unwrap().contains('('),
            "a certificate end: {w}"
        );
    }
    let callers = seen["service_callers"].as_array().unwrap();
    let caller = |name: &str| {
        callers
            .iter()
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("no caller {name}: {callers:?}"))
    };
    assert_eq!(
        caller("default/frontend")[3],
        "0",
        "the frontend is allowed"
    );
    let intruder = caller("default/traffic");
    assert_eq!(
        intruder[2], "0",
        "the traffic generator is never allowed: {intruder}"
    );
    assert_ne!(intruder[3], "0", "{intruder}");
    assert_eq!(seen["service_charts"], 3, "{seen}");
    let paths = seen["service_paths"].as_array().unwrap();
    assert!(
        paths.iter().any(|p| p[0] == "GET" && p[1] == "/menu"),
        "{paths:?}"
    );
    // The release's HTTPRoute, rule by rule, with the traffic through its rule.
    let rules = seen["service_rules"].as_array().unwrap();
    let first = rules
        .iter()
        .find(|r| r[0] == "default/restaurant" && r[1] == "0")
        .unwrap_or_else(|| panic!("no rule 0 of default/restaurant: {rules:?}"));
    assert!(
        first[4].as_str().unwrap().parse::<f64>().unwrap_or(0.0) > 0.0,
        "traffic through the rule: {first}"
    );

    // Policies: the mesh denies by default; the traffic generator is the denied caller;
    // the suggestion is YAML ready to copy, allowing what the traffic used.
    assert_eq!(seen["policies_default"][0], "deny", "{seen}");
    let listed = seen["policies_listed"].as_array().unwrap();
    for p in ["default/frontend", "default/restaurant", "default/ledger"] {
        assert!(listed.iter().any(|l| l == p), "{p} not listed: {listed:?}");
    }
    let denied_callers = seen["policies_denied"].as_array().unwrap();
    assert!(
        denied_callers
            .iter()
            .any(|d| d[0] == "default/traffic" && d[1] == "default/restaurant" && d[3] == "0"),
        "{denied_callers:?}"
    );
    // The demo's audit policy dry-runs cutting the frontend off the ledger: each of its
    // connections passed and was counted as audited.
    let audited = seen["policies_audited"].as_array().unwrap();
    let ledger = audited
        .iter()
        .find(|a| a[0] == "default/frontend" && a[1] == "default/ledger")
        .unwrap_or_else(|| panic!("no audited frontend → ledger: {audited:?}"));
    let count = |i: usize| ledger[i].as_str().unwrap().parse::<u64>().unwrap_or(0);
    assert!(
        count(2) > 0 && count(4) > 0,
        "audited TCP connections: {ledger}"
    );
    let yaml = seen["policies_yaml"].as_str().unwrap();
    assert!(
        yaml.contains("kind: AuthorizationPolicy") && yaml.contains("frontend"),
        "{yaml}"
    );
    assert!(
        !seen["policies_copied"].as_str().unwrap().is_empty(),
        "{seen}"
    );

    // A viewer's buttons are disabled, and the API refuses what a viewer tries.
    let buttons = seen["viewer_buttons"].as_array().unwrap();
    assert_eq!(buttons.len(), 3, "{seen}");
    assert!(
        buttons.iter().all(|b| b["disabled"] == true),
        "a viewer's buttons: {buttons:?}"
    );
    assert_eq!(seen["viewer_change"]["status"], 403, "{seen}");
    assert!(seen["viewer_change"]["body"]
        .as_str()
        .unwrap()
        .contains("read-only credential"));

    // The admin's Promote button promotes the rollout waiting at its first step.
    assert_eq!(seen["next_release_phase"], "Progressing", "{seen}");
    assert_eq!(seen["admin_who"], "admin", "{seen}");
    assert_eq!(seen["admin_phase_before"], "Progressing", "{seen}");
    assert!(
        seen["admin_buttons"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["disabled"] == false),
        "{seen}"
    );
    let after = seen["admin_phase_after"].as_str().unwrap();
    assert!(
        after == "Promoting" || after == "Succeeded",
        "after Promote: {after}: {seen}"
    );
    assert!(
        seen["admin_phase_text"]
            .as_str()
            .unwrap()
            .contains("restaurant-v3"),
        "{seen}"
    );
    let events = seen["promoted_status"]["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("promot")),
        "the controller recorded the promotion: {events:?}"
    );

    // v3 serves everything and fails one request in ten: the edge into the restaurant is
    // drawn failing, in red.
    let failing = edge(
        &seen["map_failing"],
        "default/frontend → default/restaurant",
    );
    assert_eq!(failing["health"], "failing", "{failing}");
    assert_eq!(failing["stroke"], "rgb(185, 28, 28)", "{failing}");

    // Accessibility: no axe-core violation; the keyboard reaches every control.
    for page in [
        "login",
        "overview",
        "map",
        "tap",
        "traces",
        "service",
        "policies",
        "viewer_canaries",
        "canaries",
    ] {
        assert_eq!(
            seen[format!("{page}_axe")],
            serde_json::json!([]),
            "{page}: {seen}"
        );
    }
    for page in [
        "login", "overview", "map", "tap", "traces", "service", "policies", "canaries",
    ] {
        let keyboard = &seen[format!("{page}_keyboard")];
        let reached: Vec<&serde_json::Value> =
            keyboard["reached"].as_array().unwrap().iter().collect();
        let controls = keyboard["controls"].as_array().unwrap();
        assert!(!controls.is_empty(), "{page}: {keyboard}");
        for control in controls {
            assert!(
                reached.contains(&control),
                "{page}: Tab never reaches {control}: {keyboard}"
            );
        }
    }

    // The session is out of scripts' reach.
    assert_eq!(
        seen["cookie_http_only"],
        serde_json::json!([true]),
        "{seen}"
    );
    assert!(!seen["cookie_visible_to_script"]
        .as_str()
        .unwrap()
        .contains("skein_session"));

    // Nothing but the control plane was asked for anything.
    let requested = seen["requested"].as_array().unwrap();
    assert!(requested.len() >= 10, "{seen}");
    for u in requested {
        let u = u.as_str().unwrap();
        assert!(
            u.starts_with(&format!("{origin}/")) || u.starts_with("data:"),
            "the browser asked {u}"
        );
    }
    for page in [
        "login",
        "overview",
        "map",
        "tap",
        "traces",
        "service",
        "policies",
        "canaries-viewer",
        "canaries",
        "canaries-promoted",
        "map-failing",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{page}.png"
        );
    }
}
