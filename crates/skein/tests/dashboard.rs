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

/// In Chromium, headless, driven over WebDriver: the demo's dashboard as a newcomer meets
/// it with the read-only login the demo prints. The login page first; the overview lists
/// the demo's services with their traffic; axe-core finds no violation on either page;
/// Tab reaches every control; the session cookie is out of the page script's reach; a
/// change tried from the page is refused by the API; the browser asks nothing of any
/// host but the control plane. Screenshots go to `target/tmp/dashboard-screenshots/`.
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
            "--duration",
            "180s",
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
    // Read up to the line that says traffic started, and keep reading after it: a demo
    // whose stdout closed would fail at its next line.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut printed = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            printed.push_str(&line);
            printed.push('\n');
            if line.trim_start().starts_with("traffic ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(printed.clone());
                }
            }
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(printed);
        }
    });
    let printed = rx.await.expect("the demo's output");
    assert!(
        printed
            .lines()
            .any(|l| l.trim_start().starts_with("traffic ")),
        "the demo ended before its traffic started:\n{printed}"
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
        .arg(&axe)
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(150), run)
        .await
        .expect("the browser run ends within 150 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run failed:\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    // The login page first, then the overview.
    assert_eq!(seen["login_url"], format!("{origin}/ui/login"), "{seen}");
    assert_eq!(seen["overview_url"], url.as_str(), "{seen}");
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

    // Accessibility: no axe-core violation; the keyboard reaches every control.
    for page in ["login", "overview"] {
        assert_eq!(
            seen[format!("{page}_axe")],
            serde_json::json!([]),
            "{page}: {seen}"
        );
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

    // The session is out of scripts' reach, and the API refuses what a viewer tries.
    assert_eq!(
        seen["cookie_http_only"],
        serde_json::json!([true]),
        "{seen}"
    );
    assert!(!seen["cookie_visible_to_script"]
        .as_str()
        .unwrap()
        .contains("skein_session"));
    assert_eq!(seen["viewer_change"]["status"], 403, "{seen}");
    assert!(seen["viewer_change"]["body"]
        .as_str()
        .unwrap()
        .contains("read-only credential"));

    // Nothing but the control plane was asked for anything.
    let requested = seen["requested"].as_array().unwrap();
    assert!(requested.len() >= 5, "{seen}");
    for u in requested {
        let u = u.as_str().unwrap();
        assert!(
            u.starts_with(&format!("{origin}/")) || u.starts_with("data:"),
            "the browser asked {u}"
        );
    }
    for page in ["login", "overview"] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{page}.png"
        );
    }
}
