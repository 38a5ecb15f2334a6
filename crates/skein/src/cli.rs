//! The kubectl-like commands: `apply`, `get`, `delete`, talking to the control plane's
//! HTTP API with the admin token. Output follows kubectl's conventions: `kind/name
//! created`, aligned tables with upper-case headers, `-o yaml|json`.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the control plane is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The control plane's HTTP API.
    #[arg(
        long,
        env = "SKEIN_SERVER",
        default_value = "127.0.0.1:9990",
        global = true
    )]
    pub server: String,
    /// The admin token (default: read from DATA_DIR/admin.token).
    #[arg(long, env = "SKEIN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The control plane's data directory, where the admin token is.
    #[arg(long, env = "SKEIN_DATA_DIR", default_value_os_t = default_data_dir(), global = true)]
    pub data_dir: PathBuf,
}

/// `$HOME/.local/share/skein`, or `./skein-data` without a home.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/skein"))
        .unwrap_or_else(|| PathBuf::from("skein-data"))
}

/// Output formats of `get`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// YAML documents, as `apply` accepts them.
    Yaml,
    /// JSON.
    Json,
}

pub(crate) struct Client {
    server: String,
    token: String,
}

impl Client {
    pub(crate) fn new(t: &Target) -> anyhow::Result<Client> {
        let token = match &t.token {
            Some(token) => token.clone(),
            None => {
                let file = t.data_dir.join("admin.token");
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!(
                            "no admin token: {} is not readable; pass --token, set SKEIN_TOKEN, or point --data-dir at the control plane's data directory",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let server = t
            .server
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Ok(Client { server, token })
    }

    /// The control plane's HTTP address, as a URL (`http://HOST:PORT`).
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.server)
    }

    /// Sends a request and calls `on_line` for each line of a streamed 2xx answer as it
    /// arrives; fails with the API's own error message otherwise.
    pub(crate) async fn stream_lines(
        &self,
        method: Method,
        path: &str,
        mut on_line: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let resp = self.send(method, path, String::new()).await?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await);
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
        if !pending.is_empty() {
            on_line(String::from_utf8_lossy(&pending).trim_end());
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: String,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect(&self.server)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the control plane at {}: is `skein control` running? (--server / SKEIN_SERVER)",
                    self.server
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.server)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/yaml")
            .body(Full::new(Bytes::from(body)))?;
        Ok(sender.send_request(req).await?)
    }

    /// The API's error message from a failed response.
    async fn failure(resp: http::Response<hyper::body::Incoming>) -> anyhow::Error {
        let status = resp.status();
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return e.into(),
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        match status {
            StatusCode::UNAUTHORIZED => anyhow::anyhow!("unauthorized: {message}"),
            _ => anyhow::anyhow!("{message}"),
        }
    }

    /// Sends one request; returns the JSON body of a 2xx answer, or fails with the API's
    /// own error message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: String,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body).await?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await);
        }
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// `skein apply -f FILE|DIR|-`: every document in one atomic apply.
pub async fn apply(target: &Target, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut text = String::new();
    for f in files {
        for part in read_sources(f)? {
            text.push_str("\n---\n");
            text.push_str(&part);
        }
    }
    let client = Client::new(target)?;
    let result = client.call(Method::POST, "/api/v1/apply", text).await?;
    for r in result["results"].as_array().into_iter().flatten() {
        let resource = r["resource"].as_str().unwrap_or_default();
        // "HTTPRoute/default/restaurant" → "httproute/restaurant"
        let mut parts = resource.split('/');
        let kind = parts.next().unwrap_or_default().to_lowercase();
        let name = parts.next_back().unwrap_or_default();
        println!("{kind}/{name} {}", r["action"].as_str().unwrap_or_default());
    }
    for w in result["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    Ok(())
}

/// Reads `-` (stdin), a file, or every `.yaml`/`.yml`/`.json` file in a directory (sorted).
fn read_sources(path: &Path) -> anyhow::Result<Vec<String>> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(vec![text]);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        return files.iter().map(|f| read_file(f)).collect();
    }
    Ok(vec![read_file(path)?])
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn query(namespace: Option<&str>) -> String {
    namespace
        .map(|ns| format!("?namespace={ns}"))
        .unwrap_or_default()
}

/// `skein get KIND [NAME]`.
pub async fn get(
    target: &Target,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let word = kind.to_lowercase();
    // Services' virtual IPs (allocated ones are computed, not stored) come beside the
    // list's items.
    let mut addresses = Value::Null;
    let mut items = match name {
        Some(name) => {
            let ns = Some(namespace.unwrap_or("default"));
            let path = format!("/api/v1/resources/{word}/{name}{}", query(ns));
            let one = client.call(Method::GET, &path, String::new()).await?;
            if one["kind"] == "Service" && output == Output::Table {
                let path = format!("/api/v1/resources/{word}{}", query(ns));
                let list = client.call(Method::GET, &path, String::new()).await?;
                addresses = list["addresses"].clone();
            }
            vec![one]
        }
        None => {
            let path = format!("/api/v1/resources/{word}{}", query(namespace));
            let mut list = client.call(Method::GET, &path, String::new()).await?;
            addresses = list["addresses"].take();
            list["items"].as_array().cloned().unwrap_or_default()
        }
    };
    let is_workloads = items.first().is_some_and(|i| i["kind"] == "Workload")
        || ["workload", "workloads", "wl"].contains(&word.as_str());
    if is_workloads {
        let live = client
            .call(Method::GET, "/api/v1/connections", String::new())
            .await?;
        merge_connections(&mut items, &live["items"]);
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&items_or_one(items, name))?
        ),
        Output::Yaml => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml_ng::to_string(item)?);
            }
        }
        Output::Table => {
            if items.is_empty() {
                let ns = namespace
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default();
                eprintln!("No resources found{ns}.");
                return Ok(());
            }
            print!("{}", table(&items, namespace.is_none(), &addresses));
        }
    }
    Ok(())
}

fn items_or_one(mut items: Vec<Value>, name: Option<&str>) -> Value {
    match (name, items.len()) {
        (Some(_), 1) => items.remove(0),
        _ => serde_json::json!({ "items": items }),
    }
}

/// Adds this replica's live view (acknowledged version) to workload statuses.
fn merge_connections(items: &mut [Value], live: &Value) {
    for item in items.iter_mut() {
        let (ns, name) = (&item["metadata"]["namespace"], &item["metadata"]["name"]);
        let conn = live
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| &c["namespace"] == ns && &c["workload"] == name);
        if let Some(conn) = conn {
            item["status"]["acknowledgedVersion"] = conn["ackedVersion"].clone();
            item["status"]["connected"] = Value::Bool(true);
            item["status"]["identity"] = conn["identity"].clone();
            item["status"]["certificate"] = conn["certificate"].clone();
        }
    }
}

/// kubectl-style columns per kind.
/// Items as aligned columns; `addresses` maps `NS/NAME` to a Service's virtual IPs.
fn table(items: &[Value], show_namespace: bool, addresses: &Value) -> String {
    let kind = items[0]["kind"].as_str().unwrap_or_default();
    let s = |v: &Value| match v {
        Value::Null => "<none>".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = match kind {
        "Service" => (
            vec!["NAME", "ADDRESSES", "PORTS", "SELECTOR", "ACCOUNTS"],
            items
                .iter()
                .map(|i| {
                    let ports = i["spec"]["ports"].as_array().into_iter().flatten();
                    let ports: Vec<String> = ports
                        .map(|p| format!("{}/{}", s(&p["port"]), s(&p["protocol"])))
                        .collect();
                    let sel = i["spec"]["selector"].as_object().into_iter().flatten();
                    let sel: Vec<String> = sel.map(|(k, v)| format!("{k}={}", s(v))).collect();
                    // Without serviceAccounts, the account named after the Service.
                    let accounts = match i["spec"]["serviceAccounts"].as_array() {
                        Some(list) => list.iter().map(s).collect::<Vec<_>>().join(","),
                        None => s(&i["metadata"]["name"]),
                    };
                    let key = format!(
                        "{}/{}",
                        s(&i["metadata"]["namespace"]),
                        s(&i["metadata"]["name"])
                    );
                    let ips = addresses[&key].as_array().into_iter().flatten();
                    let ips: Vec<String> = ips.map(s).collect();
                    vec![
                        s(&i["metadata"]["name"]),
                        match ips.is_empty() {
                            true => "<none>".into(),
                            false => ips.join(","),
                        },
                        ports.join(","),
                        sel.join(","),
                        accounts,
                    ]
                })
                .collect(),
        ),
        "Workload" => (
            vec![
                "NAME",
                "ADDRESS",
                "ACCOUNT",
                "CONNECTED",
                "SINCE",
                "VERSION",
                "IDENTITY",
                "CERT EXPIRES",
            ],
            items
                .iter()
                .map(|i| {
                    let st = &i["status"];
                    vec![
                        s(&i["metadata"]["name"]),
                        format!(
                            "{}:{}",
                            s(&i["spec"]["address"]),
                            s(&i["spec"]["inboundPort"])
                        ),
                        s(&i["spec"]["serviceAccount"]),
                        st["connected"].as_bool().unwrap_or(false).to_string(),
                        s(&st["since"]),
                        s(&st["acknowledgedVersion"]),
                        s(&st["identity"]),
                        s(&st["certificate"]["expires"]),
                    ]
                })
                .collect(),
        ),
        "HTTPRoute" => (
            vec!["NAME", "PARENTS", "RULES"],
            items
                .iter()
                .map(|i| {
                    let parents = i["spec"]["parentRefs"].as_array().into_iter().flatten();
                    let parents: Vec<String> = parents.map(|p| s(&p["name"])).collect();
                    let rules = i["spec"]["rules"].as_array().map(Vec::len).unwrap_or(0);
                    vec![
                        s(&i["metadata"]["name"]),
                        parents.join(","),
                        rules.to_string(),
                    ]
                })
                .collect(),
        ),
        "ReferenceGrant" => (
            vec!["NAME", "FROM", "TO"],
            items
                .iter()
                .map(|i| {
                    let from = i["spec"]["from"].as_array().into_iter().flatten();
                    let from: Vec<String> = from
                        .map(|f| format!("{}/{}", s(&f["kind"]), s(&f["namespace"])))
                        .collect();
                    let to = i["spec"]["to"].as_array().into_iter().flatten();
                    let to: Vec<String> = to
                        .map(|t| match t["name"].as_str() {
                            Some(name) => format!("{}/{name}", s(&t["kind"])),
                            None => format!("{}/*", s(&t["kind"])),
                        })
                        .collect();
                    vec![s(&i["metadata"]["name"]), from.join(","), to.join(",")]
                })
                .collect(),
        ),
        "Canary" => (
            vec![
                "NAME",
                "TARGET",
                "PHASE",
                "WEIGHT",
                "FAILED",
                "LAST TRANSITION",
            ],
            items
                .iter()
                .map(|i| {
                    let st = &i["status"];
                    vec![
                        s(&i["metadata"]["name"]),
                        s(&i["spec"]["targetRef"]["name"]),
                        st["phase"].as_str().unwrap_or("Initializing").to_string(),
                        format!("{}%", st["canaryWeight"].as_u64().unwrap_or(0)),
                        st["failedChecks"].as_u64().unwrap_or(0).to_string(),
                        s(&st["lastTransitionTime"]),
                    ]
                })
                .collect(),
        ),
        _ => (
            vec!["NAME", "CREATED"],
            items
                .iter()
                .map(|i| {
                    vec![
                        s(&i["metadata"]["name"]),
                        s(&i["metadata"]["creationTimestamp"]),
                    ]
                })
                .collect(),
        ),
    };
    let mut headers: Vec<String> = headers.into_iter().map(str::to_string).collect();
    let mut rows = rows;
    if show_namespace && kind != "Mesh" {
        headers.insert(0, "NAMESPACE".into());
        for (row, item) in rows.iter_mut().zip(items) {
            row.insert(0, s(&item["metadata"]["namespace"]));
        }
    }
    align(&headers, &rows)
}

/// Columns aligned like kubectl's: left-aligned, three spaces apart, headers first.
pub(crate) fn align<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].as_ref().chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let head: Vec<&str> = headers.iter().map(AsRef::as_ref).collect();
    let mut out = line(&head);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

/// `skein delete KIND NAME`.
/// `skein token create`: prints the token alone on stdout (so scripts can capture it) and
/// what it grants on stderr.
pub async fn token_create(
    target: &Target,
    service: &str,
    namespace: &str,
    ttl: &str,
    uses: u32,
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let body =
        serde_json::json!({ "service": service, "namespace": namespace, "ttl": ttl, "uses": uses });
    let result = client
        .call(Method::POST, "/api/v1/tokens", body.to_string())
        .await?;
    if let Some(warning) = result["warning"].as_str() {
        eprintln!("warning: {warning}");
    }
    let record = &result["record"];
    let joins = match uses {
        1 => "one proxy may join with it".to_string(),
        n => format!("{n} proxies may join with it"),
    };
    eprintln!(
        "join token {} for {} (expires {}; {joins}); pass it to `skein proxy --join-token` or SKEIN_JOIN_TOKEN:",
        record["id"].as_str().unwrap_or_default(),
        record["identity"].as_str().unwrap_or_default(),
        record["expires"].as_str().unwrap_or_default(),
    );
    println!("{}", result["token"].as_str().unwrap_or_default());
    Ok(())
}

/// `skein token create --dashboard --read-only`: prints the token alone on stdout and
/// what it grants on stderr.
pub async fn dashboard_token_create(target: &Target, ttl: Option<&str>) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let mut body = serde_json::json!({ "dashboard": true, "readOnly": true });
    if let Some(ttl) = ttl {
        body["ttl"] = ttl.into();
    }
    let result = client
        .call(Method::POST, "/api/v1/tokens", body.to_string())
        .await?;
    let record = &result["record"];
    eprintln!(
        "read-only dashboard token {} (expires {}); log in with it at {}/ui/ to see the mesh and change nothing:",
        record["id"].as_str().unwrap_or_default(),
        record["expires"].as_str().unwrap_or_default(),
        client.base(),
    );
    println!("{}", result["token"].as_str().unwrap_or_default());
    Ok(())
}

/// A single-use join token for `namespace/service`, valid for ten minutes (what
/// `skein run` asks for when it is given none).
pub async fn create_join_token(
    target: &Target,
    service: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let client = Client::new(target)?;
    let body =
        serde_json::json!({ "service": service, "namespace": namespace, "ttl": "10m", "uses": 1 });
    let result = client
        .call(Method::POST, "/api/v1/tokens", body.to_string())
        .await?;
    if let Some(warning) = result["warning"].as_str() {
        eprintln!("warning: {warning}");
    }
    result["token"]
        .as_str()
        .map(String::from)
        .context("the control plane answered without a token")
}

/// `skein token list`.
pub async fn token_list(target: &Target) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let result = client
        .call(Method::GET, "/api/v1/tokens", String::new())
        .await?;
    let items = result["items"].as_array().cloned().unwrap_or_default();
    let dashboard = result["dashboard"].as_array().cloned().unwrap_or_default();
    if items.is_empty() && dashboard.is_empty() {
        eprintln!("No tokens; create one with `skein token create --service NAME` (join) or `skein token create --dashboard --read-only`.");
        return Ok(());
    }
    // Dashboard tokens as rows of the same table: their identity is the role they grant.
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .chain(dashboard.into_iter().map(|mut t| {
            t["identity"] = "dashboard (read-only)".into();
            t["uses"] = serde_json::Value::Null;
            t
        }))
        .collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| {
            let state = match t["revoked"].as_str() {
                Some(when) => format!("revoked {when}"),
                None => "active".into(),
            };
            let used = match t["uses"].as_u64() {
                Some(uses) => format!("{}/{uses}", t["used"].as_u64().unwrap_or(0)),
                None => "-".into(),
            };
            [&t["id"], &t["identity"], &t["expires"]]
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .chain([used, state])
                .collect()
        })
        .collect();
    let headers = ["ID", "IDENTITY", "EXPIRES", "USED", "STATE"];
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(headers.map(String::from).to_vec()).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
    Ok(())
}

/// `skein workload revoke`.
pub async fn workload_revoke(target: &Target, namespace: &str, name: &str) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let result = client
        .call(
            Method::POST,
            &format!("/api/v1/workloads/{namespace}/{name}/revoke"),
            String::new(),
        )
        .await?;
    let entry = &result["revoked"];
    println!(
        "workload {namespace}/{name} revoked (join lineage {}); proxies refuse its certificate from their next handshake",
        entry["lineage"].as_str().unwrap_or_default()
    );
    if let Some(token) = result["tokenClosed"].as_str() {
        println!(
            "join token {token} can join no more proxies (the others that joined with it stay; `skein token revoke {token}` takes them too)"
        );
    }
    Ok(())
}

/// `skein token revoke`.
pub async fn token_revoke(target: &Target, id: &str) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let result = client
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            String::new(),
        )
        .await?;
    if result["kind"] == "dashboard" {
        println!("dashboard token {id} revoked (its sessions end at their next request)");
    } else {
        println!(
            "token {id} revoked ({})",
            result["revoked"]["identity"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `skein ca show`.
pub async fn ca_show(target: &Target) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let ca = client
        .call(Method::GET, "/api/v1/ca", String::new())
        .await?;
    println!(
        "trust domain:  {}",
        ca["trustDomain"].as_str().unwrap_or_default()
    );
    println!("generation:    {}", ca["generation"]);
    println!(
        "rotation:      {}",
        ca["phase"].as_str().unwrap_or_default()
    );
    for pin in ca["rootPins"].as_array().into_iter().flatten() {
        println!("trusted root:  sha256:{}", pin.as_str().unwrap_or_default());
    }
    Ok(())
}

/// The question `skein policy check` asks.
#[derive(clap::Args)]
pub struct PolicyCheck {
    /// The caller: a service (`reservation`, `reservation.shop`), a SPIFFE ID, or
    /// `unauthenticated` (plaintext under mtls: permissive).
    #[arg(long)]
    from: String,
    /// The caller's namespace, when --from is a bare service name.
    #[arg(long, default_value = "default")]
    from_namespace: String,
    /// The target Service.
    #[arg(long)]
    to: String,
    /// The target's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The service port (default: its first).
    #[arg(long)]
    port: Option<u16>,
    /// HTTP method (default GET on an HTTP port).
    #[arg(long)]
    method: Option<String>,
    /// HTTP path (default /).
    #[arg(long)]
    path: Option<String>,
    /// HTTP host (default: the service name).
    #[arg(long)]
    host: Option<String>,
    /// `text` or `json`.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    #[command(flatten)]
    target: Target,
}

/// `skein policy check`: the decision, the request as checked, and what decided.
/// Returns whether the request would reach the application (allowed or audited), so that
/// the command can exit as `kubectl auth can-i` does.
pub async fn policy_check(q: &PolicyCheck) -> anyhow::Result<bool> {
    let client = Client::new(&q.target)?;
    let body = serde_json::json!({
        "from": q.from,
        "fromNamespace": q.from_namespace,
        "to": q.to,
        "namespace": q.namespace,
        "port": q.port,
        "method": q.method,
        "path": q.path,
        "host": q.host,
    });
    let answer = client
        .call(Method::POST, "/api/v1/policy/check", body.to_string())
        .await?;
    match q.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&answer)?),
        "text" => {
            println!("{}", answer["message"].as_str().unwrap_or_default());
            println!(
                "  checked: {} → {} {}",
                answer["caller"].as_str().unwrap_or_default(),
                answer["target"].as_str().unwrap_or_default(),
                answer["request"].as_str().unwrap_or_default()
            );
        }
        other => anyhow::bail!("-o {other:?} is not accepted; use text or json"),
    }
    Ok(answer["verdict"] != "denied")
}

/// `skein ca rotate`: streams the control plane's progress lines.
pub async fn ca_rotate(target: &Target, timeout: &str) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let path = format!("/api/v1/ca/rotate?timeout={timeout}");
    let mut failed = None;
    client
        .stream_lines(Method::POST, &path, |line| {
            println!("{line}");
            if let Some(e) = line.strip_prefix("error: ") {
                failed = Some(e.to_string());
            }
        })
        .await?;
    match failed {
        Some(e) => bail!("the rotation stopped: {e}"),
        None => Ok(()),
    }
}

pub async fn delete(
    target: &Target,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let ns = Some(namespace.unwrap_or("default"));
    let path = format!(
        "/api/v1/resources/{}/{name}{}",
        kind.to_lowercase(),
        query(ns)
    );
    let result = client.call(Method::DELETE, &path, String::new()).await?;
    // "Service/default/web" → `service "web" deleted`, as kubectl says it.
    let deleted = result["deleted"].as_str().unwrap_or_default();
    let canonical = deleted.split('/').next().unwrap_or(kind).to_lowercase();
    println!("{canonical} \"{name}\" deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_like_kubectl() {
        let items = vec![
            json!({"kind": "Service", "metadata": {"name": "restaurant", "namespace": "default"},
                   "spec": {"ports": [{"port": 8080, "protocol": "http"}], "selector": {"app": "restaurant"}}}),
            json!({"kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
                   "spec": {"ports": [{"port": 5432, "protocol": "tcp"}], "selector": {"app": "db"},
                            "serviceAccounts": ["db", "db-admin"]}}),
        ];
        let addresses = json!({"default/restaurant": ["10.240.3.7"]});
        let out = table(&items, true, &addresses);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE   NAME         ADDRESSES    PORTS       SELECTOR         ACCOUNTS"
        );
        assert_eq!(
            lines[1],
            "default     restaurant   10.240.3.7   8080/http   app=restaurant   restaurant"
        );
        assert_eq!(
            lines[2],
            "shop        db           <none>       5432/tcp    app=db           db,db-admin"
        );
    }
}
