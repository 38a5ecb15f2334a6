//! `skein check`: pre-flight and health in one command, as `linkerd check` does it. Each
//! check is one line, `✔` passed, `‼` a warning (near a limit; does not fail the exit
//! code), `✘` failed with what to do beneath it, `○` skipped with why (a check that could
//! not run is never reported as passed).
//!
//! In order: the kernel features transparent capture needs ([`kernel`], root only), the
//! control plane (reachable, admin token, version, store) and its data directory
//! ([`local`]), the mesh CA, every proxy (connected, configuration acknowledged,
//! certificate, clock) and, with `--proxy`, one workload's capture rules. Judging what the
//! control plane answered is pure ([`mesh`]); fetching it is here.

mod kernel;
mod local;
mod mesh;

use crate::cli::Target;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// What capture needs from the kernel (groups are printed in the order listed here).
pub const KERNEL: &str = "kernel";
/// The control plane, its store and data directory.
pub const CONTROL: &str = "control plane";
/// The mesh CA.
pub const IDENTITY: &str = "identity";
/// The proxies connected to the control plane.
pub const PROXIES: &str = "proxies";
/// One workload's capture (`--proxy`).
pub const CAPTURE: &str = "capture";

/// How long one request to the control plane may take.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);
/// How long a proxy may take to acknowledge the version it was just sent before it counts
/// as not acknowledging.
const ACK_GRACE: Duration = Duration::from_secs(3);

/// `skein check` arguments.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Only the pre-flight checks of this host: what transparent capture needs from the
    /// kernel (network namespaces, iptables' nat table, SO_ORIGINAL_DST). Needs root; each
    /// fails without it. Without --pre they run too when root, and are skipped otherwise.
    #[arg(long)]
    pub pre: bool,
    /// Also check the capture rules of the `skein run` workload with this address (as
    /// `skein run` printed it) on this host. Needs root.
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<IpAddr>,
    /// table (lines with ✔/‼/✘) or json.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Where `skein run` records its workloads.
    #[arg(long, hide = true, default_value = crate::run_cmd::state::ROOT)]
    pub state_dir: PathBuf,
    /// The workload's network namespace (a file such as /run/netns/NAME), instead of
    /// looking the address up among `skein run`'s workloads.
    #[arg(long, hide = true, requires = "proxy")]
    pub netns: Option<PathBuf>,
    /// The proxy's admin listener inside that namespace (default ADDR:4191).
    #[arg(long, hide = true, requires = "proxy")]
    pub admin: Option<SocketAddr>,
    #[command(flatten)]
    pub target: Target,
}

/// Output formats of `skein check`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per check, grouped.
    Table,
    /// `{"checks": [{group, name, status, message, hint}], "ok": bool}`.
    Json,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Passed.
    Ok,
    /// Passed, but near a limit (or not measured yet); does not fail the exit code.
    Warn,
    /// Failed: the hint says what to do.
    Fail,
    /// Could not run (not root, or what it needs failed); never counted as passed.
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }

    fn glyph(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "‼",
            Status::Fail => "✘",
            Status::Skip => "○",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Status::Ok => "\x1b[32m",
            Status::Warn => "\x1b[33m",
            Status::Fail => "\x1b[31m",
            Status::Skip => "\x1b[2m",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Its group (`kernel`, `control plane`, …).
    pub group: &'static str,
    /// What is checked, e.g. `control plane reachable`.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found (for a failure: what is wrong).
    pub message: String,
    /// What to do; empty when nothing is to be done.
    pub hint: String,
}

impl Check {
    /// A passed check.
    pub fn ok(group: &'static str, name: &'static str, message: impl Into<String>) -> Check {
        Check::new(group, name, Status::Ok, message.into(), String::new())
    }

    /// A warning, with what to do.
    pub fn warn(
        group: &'static str,
        name: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(group, name, Status::Warn, message.into(), hint.into())
    }

    /// A failure, with what to do.
    pub fn fail(
        group: &'static str,
        name: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(group, name, Status::Fail, message.into(), hint.into())
    }

    /// A check that did not run, and why.
    pub fn skip(group: &'static str, name: &'static str, why: impl Into<String>) -> Check {
        Check::new(group, name, Status::Skip, why.into(), String::new())
    }

    fn new(
        group: &'static str,
        name: &'static str,
        status: Status,
        message: String,
        hint: String,
    ) -> Check {
        Check {
            group,
            name,
            status,
            message,
            hint,
        }
    }
}

/// The control plane's own checks that need its API (and the admin token).
const NEEDS_API: &[(&str, &str)] = &[(CONTROL, mesh::VERSION), (CONTROL, mesh::STORE)];
/// The mesh's checks, which all need the API.
const MESH: &[(&str, &str)] = &[
    (IDENTITY, mesh::CA),
    (PROXIES, mesh::CONNECTED),
    (PROXIES, mesh::ACKNOWLEDGED),
    (PROXIES, mesh::CERTIFICATES),
    (PROXIES, mesh::CLOCK),
];

/// `checks`, each skipped because of `why`.
fn skipped<'a>(
    checks: &'a [(&'static str, &'static str)],
    why: &'a str,
) -> impl Iterator<Item = Check> + 'a {
    checks
        .iter()
        .map(move |(group, name)| Check::skip(group, name, why))
}

/// Runs the checks and prints them; returns whether none failed.
pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let mut checks = kernel::checks(args.pre);
    if !args.pre && args.proxy.is_none() {
        // A host that only runs the control plane or the CLI needs no capture: a kernel
        // that cannot do it is told, not failed, unless the question was asked (`--pre`,
        // or `--proxy` on a host that runs workloads).
        for c in checks.iter_mut().filter(|c| c.status == Status::Fail) {
            c.status = Status::Skip;
            c.message = format!(
                "{} (only hosts that run workloads need this; `skein check --pre` fails on it)",
                c.message
            );
        }
    }
    if !args.pre {
        checks.extend(control_plane(&args.target).await);
    }
    if let Some(address) = args.proxy {
        let target = local::CaptureTarget {
            address,
            state_dir: args.state_dir.clone(),
            netns: args.netns.clone(),
            admin: args.admin,
        };
        checks.push(local::capture(&target));
    }
    let passed = !checks.iter().any(|c| c.status == Status::Fail);
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&checks))?),
        Format::Table => {
            let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none();
            print!("{}", table(&checks, colour));
        }
    }
    Ok(passed)
}

/// The report as JSON: every check, and whether none failed.
pub fn to_json(checks: &[Check]) -> Value {
    let items: Vec<Value> = checks
        .iter()
        .map(|c| {
            json!({
                "group": c.group,
                "name": c.name,
                "status": c.status.word(),
                "message": c.message,
                "hint": c.hint,
            })
        })
        .collect();
    json!({ "checks": items, "ok": !checks.iter().any(|c| c.status == Status::Fail) })
}

/// The report as lines: a heading per group, `✔ name: message` per check, `→ hint` beneath
/// a failure or warning, and a closing count. Control characters in what remote parties
/// said (a proxy's error) are shown as `?`.
pub fn table(checks: &[Check], colour: bool) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let mut out = String::new();
    let mut group = "";
    for c in checks {
        if c.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            group = c.group;
            out.push_str(&format!("{group}\n"));
        }
        let glyph = match colour {
            true => format!("{}{}\x1b[0m", c.status.colour(), c.status.glyph()),
            false => c.status.glyph().to_string(),
        };
        match c.message.is_empty() {
            true => out.push_str(&format!("  {glyph} {}\n", c.name)),
            false => out.push_str(&format!("  {glyph} {}: {}\n", c.name, clean(&c.message))),
        }
        if !c.hint.is_empty() && matches!(c.status, Status::Fail | Status::Warn) {
            out.push_str(&format!("      → {}\n", clean(&c.hint)));
        }
    }
    out.push('\n');
    out.push_str(&summary(checks));
    out
}

fn summary(checks: &[Check]) -> String {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (failed, warned, skipped) = (
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Skip),
    );
    let mut extra = Vec::new();
    if warned > 0 {
        extra.push(format!("{warned} warning{}", plural(warned)));
    }
    if skipped > 0 {
        extra.push(format!("{skipped} skipped"));
    }
    let extra = match extra.is_empty() {
        true => String::new(),
        false => format!(" ({})", extra.join(", ")),
    };
    match failed {
        0 => format!("✔ no check failed{extra}\n"),
        n => format!(
            "✘ {n} of {} check{} failed{extra}\n",
            checks.len(),
            plural(checks.len())
        ),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The control plane's checks: each one the API answered for, the others skipped; the
/// data directory's, which needs no API, in between.
async fn control_plane(target: &Target) -> Vec<Check> {
    let server = target
        .server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut checks = Vec::new();
    let api = Api::new(server.clone(), target);
    // Something else listening there answers, but not `ok` from /healthz.
    let health = match get(&server, "/healthz", None).await {
        Ok((code, body)) if code != StatusCode::OK || body.trim_ascii() != b"ok" => Err(format!(
            "something answers on {server}, but not as a Skein control plane (/healthz: {code})"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot connect to {server} ({e})")),
    };
    let status = match health {
        Err(e) => {
            let why = "the control plane is not reachable";
            checks.push(Check::fail(
                CONTROL,
                mesh::REACHABLE,
                e,
                "start it with `skein control --data-dir DIR`, or point --server (SKEIN_SERVER) at it",
            ));
            checks.push(Check::skip(CONTROL, mesh::TOKEN, why));
            Err(why)
        }
        Ok(_) => {
            checks.push(Check::ok(CONTROL, mesh::REACHABLE, server.clone()));
            match api.status().await {
                Ok(status) => {
                    checks.push(Check::ok(CONTROL, mesh::TOKEN, ""));
                    Ok(status)
                }
                Err(check) => {
                    checks.push(*check);
                    Err("the control plane did not accept the admin token")
                }
            }
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(why) => {
            checks.extend(skipped(NEEDS_API, why));
            checks.push(local::data_dir(&target.data_dir));
            checks.extend(skipped(MESH, why));
            return checks;
        }
    };
    checks.push(mesh::version(&status, env!("CARGO_PKG_VERSION")));
    checks.push(mesh::store(&status));
    checks.push(local::data_dir(&target.data_dir));
    checks.extend(mesh_checks(&api, &status).await);
    checks
}

/// The CA's and the proxies' checks.
async fn mesh_checks(api: &Api, status: &Value) -> Vec<Check> {
    let now = unix_now();
    let mut checks = vec![match api.fetch("/api/v1/ca").await {
        Ok(ca) => mesh::ca(&ca, now),
        Err(e) => Check::fail(IDENTITY, mesh::CA, e, "look at the control plane's log"),
    }];
    match api.proxies().await {
        Ok((workloads, connections)) => {
            let view = mesh::View {
                workloads: &workloads,
                connections: &connections,
                status,
                now,
            };
            checks.extend(mesh::proxies(&view));
        }
        Err(e) => {
            let why = "the control plane did not list its proxies";
            checks.push(Check::fail(
                PROXIES,
                mesh::CONNECTED,
                e,
                "look at the control plane's log",
            ));
            checks.extend(skipped(&MESH[2..], why));
        }
    }
    checks
}

/// The control plane's HTTP API with the admin token.
struct Api {
    server: String,
    token: Result<String, String>,
}

impl Api {
    fn new(server: String, target: &Target) -> Api {
        let token = match &target.token {
            Some(t) => Ok(t.clone()),
            None => {
                let file = target.data_dir.join("admin.token");
                std::fs::read_to_string(&file)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        format!("no admin token: {} is not readable ({e})", file.display())
                    })
            }
        };
        Api { server, token }
    }

    /// `/api/v1/status`, or the failed admin-token check.
    async fn status(&self) -> Result<Value, Box<Check>> {
        let token = self.token.as_ref().map_err(|e| {
            Box::new(Check::fail(
                CONTROL,
                mesh::TOKEN,
                e.clone(),
                "pass --token or set SKEIN_TOKEN, or point --data-dir at the control plane's data directory",
            ))
        })?;
        match get(&self.server, "/api/v1/status", Some(token)).await {
            Ok((StatusCode::UNAUTHORIZED, _)) => Err(Box::new(Check::fail(
                CONTROL,
                mesh::TOKEN,
                "the control plane refused the admin token (401)",
                "use the token in the control plane's DATA_DIR/admin.token: --data-dir, --token or SKEIN_TOKEN",
            ))),
            Ok((code, body)) if code.is_success() => serde_json::from_slice(&body).map_err(|e| {
                Box::new(Check::fail(
                    CONTROL,
                    mesh::TOKEN,
                    format!("/api/v1/status answered something that is not JSON ({e})"),
                    "is --server the control plane's HTTP API (default 127.0.0.1:9990)?",
                ))
            }),
            Ok((code, body)) => Err(Box::new(Check::fail(
                CONTROL,
                mesh::TOKEN,
                format!("/api/v1/status answered {code}: {}", api_error(&body)),
                "is --server the control plane's HTTP API (default 127.0.0.1:9990)?",
            ))),
            Err(e) => Err(Box::new(Check::fail(
                CONTROL,
                mesh::TOKEN,
                format!("/api/v1/status: {e}"),
                "look at the control plane's log",
            ))),
        }
    }

    /// A GET answered 2xx with JSON, or why not.
    async fn fetch(&self, path: &str) -> Result<Value, String> {
        let token = self.token.as_deref().map_err(|e| e.to_string())?;
        match get(&self.server, path, Some(token)).await {
            Ok((code, body)) if code.is_success() => {
                serde_json::from_slice(&body).map_err(|e| format!("{path}: not JSON ({e})"))
            }
            Ok((code, body)) => Err(format!("{path} answered {code}: {}", api_error(&body))),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }

    /// The registered workloads and this replica's connections; a proxy that has not yet
    /// acknowledged what it was just sent gets [`ACK_GRACE`] to do so.
    async fn proxies(&self) -> Result<(Value, Value), String> {
        let workloads = self.fetch("/api/v1/resources/workloads").await?;
        let deadline = Instant::now() + ACK_GRACE;
        loop {
            let connections = self.fetch("/api/v1/connections").await?;
            if mesh::behind(&connections).is_empty() || Instant::now() >= deadline {
                return Ok((workloads, connections));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The `error` of an API's JSON error body, or the body.
fn api_error(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    value["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// One HTTP/1.1 GET to `server`, within [`REQUEST_WITHIN`]; a connection failure is
/// described the way an operator says it ("connection refused").
async fn get(server: &str, path: &str, token: Option<&str>) -> Result<(StatusCode, Bytes), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| describe_io(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(path).header(http::header::HOST, server);
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(REQUEST_WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", REQUEST_WITHIN.as_secs()))?
}

/// An I/O error in an operator's words: `connection refused`, not `Connection refused
/// (os error 111)`.
fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Now, Unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_check_with_advice_under_failures_and_no_colour_when_asked() {
        let checks = vec![
            Check::ok(CONTROL, mesh::REACHABLE, "127.0.0.1:9990"),
            Check::fail(CONTROL, mesh::TOKEN, "refused\x1b[2J", "use the right one"),
            Check::skip(IDENTITY, mesh::CA, "needs the admin token"),
        ];
        let text = table(&checks, false);
        assert_eq!(
            text,
            "control plane\n  ✔ control plane reachable: 127.0.0.1:9990\n  ✘ admin token accepted: refused?[2J\n      → use the right one\n\nidentity\n  ○ mesh CA valid: needs the admin token\n\n✘ 1 of 3 checks failed (1 skipped)\n"
        );
        assert!(!text.contains('\x1b'));
        assert!(table(&checks, true).contains("\x1b[31m✘\x1b[0m"));
        let json = to_json(&checks);
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["hint"], "use the right one");
        assert_eq!(json["checks"][2]["status"], "skip");
    }

    #[test]
    fn warnings_and_skips_do_not_fail() {
        let checks = vec![
            Check::ok(KERNEL, kernel::NAMESPACES, ""),
            Check::warn(IDENTITY, mesh::CA, "expires in 12 days", "rotate"),
            Check::skip(KERNEL, kernel::IPTABLES, "not root"),
        ];
        assert_eq!(to_json(&checks)["ok"], true);
        assert!(table(&checks, false).ends_with("✔ no check failed (1 warning, 1 skipped)\n"));
    }
}
