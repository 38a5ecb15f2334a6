//! `skein stat`, `skein edges`, `skein map` and `skein policy suggest`: the control plane's central view of the
//! golden signals every proxy reports, as tables (in the manner of `linkerd viz stat` and
//! `edges`), JSON, or a graph (Graphviz DOT, Mermaid). See docs/telemetry.md for what each
//! figure means.

use crate::cli::{align, Client, Target};
use http::Method;
use serde_json::Value;

/// Output formats of `stat` and `edges`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The main columns.
    Table,
    /// Every column.
    Wide,
    /// The API's JSON.
    Json,
}

/// `skein stat services|workloads|routes|rules [NAME] [--window 1m]`.
pub async fn stat(
    target: &Target,
    kind: &str,
    name: Option<&str>,
    window: &str,
    output: Output,
) -> anyhow::Result<()> {
    let path = with_query(
        &format!("/api/v1/stat/{}", encode(&kind.to_lowercase())),
        &[("window", Some(window)), ("name", name)],
    );
    let empty = format!(
        "No traffic in the last {window} (proxies send summaries every few seconds; try a longer --window)."
    );
    let Some(rows) = fetch_rows(target, &path, output, &empty).await? else {
        return Ok(());
    };
    let by_service = rows.iter().any(|r| r.get("service").is_some());
    let by_rule = rows.iter().any(|r| r.get("rule").is_some());
    let mut headers = vec!["NAMESPACE", "NAME"];
    if by_service {
        headers.push("SERVICE");
    }
    if by_rule {
        headers.push("RULE");
    }
    headers.extend([
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]);
    if output == Output::Wide {
        headers.extend([
            "REQUESTS",
            "DENIED",
            "AUDITED",
            "RETRIES",
            "MTLS",
            "READ_BYTES",
            "WRITE_BYTES",
        ]);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![text(&r["namespace"]), text(&r["name"])];
            if by_service {
                row.push(text(&r["service"]));
            }
            if by_rule {
                row.push(text(&r["rule"]));
            }
            row.extend(signals(r, output == Output::Wide));
            row
        })
        .collect();
    print!("{}", align(&headers, &table));
    Ok(())
}

/// The rows `path` answers, or `None` when they were printed as JSON or there were
/// none (`empty` then says so on stderr).
async fn fetch_rows(
    target: &Target,
    path: &str,
    output: Output,
    empty: &str,
) -> anyhow::Result<Option<Vec<Value>>> {
    let answer = Client::new(target)?
        .call(Method::GET, path, String::new())
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(None);
    }
    let rows = answer["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("{empty}");
        return Ok(None);
    }
    Ok(Some(rows))
}

/// `skein edges [SERVICE] [--window 1m]`.
pub async fn edges(
    target: &Target,
    service: Option<&str>,
    window: &str,
    output: Output,
) -> anyhow::Result<()> {
    let path = with_query(
        "/api/v1/edges",
        &[("window", Some(window)), ("service", service)],
    );
    let empty = format!("No edges in the last {window}.");
    let Some(rows) = fetch_rows(target, &path, output, &empty).await? else {
        return Ok(());
    };
    let mut headers = vec![
        "SRC",
        "DST",
        "MTLS",
        "SUCCESS",
        "RPS",
        "LATENCY_P99",
        "DENIED",
        "TCP_CONN",
    ];
    if output == Output::Wide {
        headers.extend(["REQUESTS", "AUDITED", "RETRIES", "TCP_SENT", "TCP_RECEIVED"]);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                format!("{}/{}", text(&r["src_namespace"]), text(&r["src"])),
                format!("{}/{}", text(&r["dst_namespace"]), text(&r["dst"])),
                mtls(&r["mtls"]),
                percent(&r["success_rate"]),
                rate(&r["rps"]),
                millis(&r["p99_ms"]),
                text(&r["denied"]),
                text(&r["tcp_connections"]),
            ];
            if output == Output::Wide {
                row.extend([
                    text(&r["requests"]),
                    text(&r["audited"]),
                    text(&r["retries"]),
                    text(&r["tcp_sent_bytes"]),
                    text(&r["tcp_received_bytes"]),
                ]);
            }
            row
        })
        .collect();
    print!("{}", align(&headers, &table));
    Ok(())
}

/// Output formats of `policy suggest`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuggestOutput {
    /// AuthorizationPolicy documents with a comment per rule.
    Yaml,
    /// The API's JSON.
    Json,
}

/// `skein policy suggest [-n NS] [--window 1h] [-o yaml|json]`.
pub async fn suggest(
    target: &Target,
    namespace: Option<&str>,
    window: &str,
    output: SuggestOutput,
) -> anyhow::Result<()> {
    let path = with_query(
        "/api/v1/policy/suggest",
        &[("window", Some(window)), ("namespace", namespace)],
    );
    let answer = Client::new(target)?
        .call(Method::GET, &path, String::new())
        .await?;
    match output {
        SuggestOutput::Json => println!("{}", serde_json::to_string_pretty(&answer["policies"])?),
        SuggestOutput::Yaml => print!("{}", answer["yaml"].as_str().unwrap_or_default()),
    }
    Ok(())
}

/// Which requests `skein tap` and `skein top` follow.
#[derive(clap::Args, Debug, Clone)]
pub struct TapFilter {
    /// Requests to this service.
    #[arg(long)]
    pub to: Option<String>,
    /// Requests from this service account.
    #[arg(long)]
    pub from: Option<String>,
    /// Requests whose path starts with this prefix.
    #[arg(long)]
    pub path: Option<String>,
    /// Requests with this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Responses of this class: 1xx to 5xx.
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many events per second (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub max_rps: u32,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

impl TapFilter {
    fn path(&self) -> String {
        let max = self.max_rps.to_string();
        with_query(
            "/api/v1/tap",
            &[
                ("max_rps", Some(&max)),
                ("to", self.to.as_deref()),
                ("from", self.from.as_deref()),
                ("path", self.path.as_deref()),
                ("method", self.method.as_deref()),
                ("status", self.status.as_deref()),
            ],
        )
    }
}

/// `path?k=v&…` with each given value percent-encoded; absent ones left out.
pub(crate) fn with_query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Percent-encodes a query value.
pub(crate) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the tap stream, calling `on_event` per event, until `duration` (if any) ends.
async fn follow(
    target: &Target,
    filter: &TapFilter,
    mut on_event: impl FnMut(&Value),
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let path = filter.path();
    let stream = client.stream_lines(Method::GET, &path, |line| {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            on_event(&v);
        }
    });
    match filter.duration {
        Some(d) => match tokio::time::timeout(d, stream).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        },
        None => stream.await,
    }
}

/// `skein tap [--to SVC] [--from SVC] [--path PREFIX] [--method M] [--status 5xx]`: one
/// line per request as proxies see it end (metadata only: never bodies, query strings or
/// header values).
pub async fn tap(target: &Target, filter: &TapFilter, json: bool) -> anyhow::Result<()> {
    follow(target, filter, |e| {
        if json {
            println!("{e}");
        } else {
            println!("{}", tap_line(e));
        }
    })
    .await
}

/// One tap event as a line, in the manner of `linkerd viz tap`.
fn tap_line(e: &Value) -> String {
    let mut line = format!(
        "rsp dir={} workload={} src={} dst={} tls={} :method={} :path={} :status={}",
        text(&e["direction"]),
        text(&e["workload"]),
        text(&e["src"]),
        text(&e["dst"]),
        text(&e["tls"]),
        text(&e["method"]),
        text(&e["path"]),
        text(&e["status"]),
    );
    if !e["grpc_status"].is_null() {
        line += &format!(" grpc-status={}", text(&e["grpc_status"]));
    }
    line += &format!(
        " latency={} duration={} bytes={}/{}",
        millis(&e["latency_ms"]),
        millis(&e["duration_ms"]),
        text(&e["request_bytes"]),
        text(&e["response_bytes"])
    );
    for k in ["route", "error"] {
        if e[k].as_str().is_some_and(|s| !s.is_empty()) {
            line += &format!(" {k}={}", text(&e[k]));
        }
    }
    line
}

/// What `skein top` shows per path.
#[derive(Debug, Default, Clone)]
struct TopRow {
    count: u64,
    failures: u64,
    best_ms: f64,
    worst_ms: f64,
    last_ms: f64,
}

/// `skein top`: the busiest paths, from the tap stream, redrawn every second.
pub async fn top(target: &Target, filter: &TapFilter) -> anyhow::Result<()> {
    let mut rows: std::collections::HashMap<(String, String, String, String), TopRow> =
        Default::default();
    let mut drawn = std::time::Instant::now();
    let draw = |rows: &std::collections::HashMap<(String, String, String, String), TopRow>| {
        // Clear the screen and go home, then the table.
        print!("\x1b[H\x1b[2J{}", top_table(rows));
    };
    follow(target, filter, |e| {
        // Each request once: as its callee's proxy saw it when there is one.
        if e["direction"] == "outbound" && filter.from.is_none() {
            return;
        }
        let key = (
            text(&e["src"]),
            text(&e["dst"]),
            text(&e["method"]),
            text(&e["path"]),
        );
        let ms = e["latency_ms"].as_f64().unwrap_or(0.0);
        let row = rows.entry(key).or_default();
        if row.count == 0 || ms < row.best_ms {
            row.best_ms = ms;
        }
        row.worst_ms = row.worst_ms.max(ms);
        row.last_ms = ms;
        row.count += 1;
        let status = e["status"].as_u64().unwrap_or(0);
        if status >= 500 || e["grpc_status"].as_u64().is_some_and(|g| g != 0) {
            row.failures += 1;
        }
        if drawn.elapsed() >= std::time::Duration::from_secs(1) {
            draw(&rows);
            drawn = std::time::Instant::now();
        }
    })
    .await?;
    draw(&rows);
    Ok(())
}

fn top_table(rows: &std::collections::HashMap<(String, String, String, String), TopRow>) -> String {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let headers = [
        "SOURCE",
        "DESTINATION",
        "METHOD",
        "PATH",
        "COUNT",
        "BEST",
        "WORST",
        "LAST",
        "SUCCESS",
    ];
    let table: Vec<Vec<String>> = sorted
        .into_iter()
        .take(40)
        .map(|((src, dst, method, path), r)| {
            let ms = |v: f64| millis(&Value::from(v));
            vec![
                src.clone(),
                dst.clone(),
                method.clone(),
                path.clone(),
                r.count.to_string(),
                ms(r.best_ms),
                ms(r.worst_ms),
                ms(r.last_ms),
                percent(&Value::from(1.0 - r.failures as f64 / r.count as f64)),
            ]
        })
        .collect();
    align(&headers, &table)
}

/// How `skein map` draws the mesh.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFormat {
    /// One line per edge.
    Table,
    /// Graphviz DOT (`skein map --format dot | dot -Tsvg > mesh.svg`).
    Dot,
    /// A Mermaid flowchart (renders in Markdown on GitHub and GitLab).
    Mermaid,
    /// The API's JSON.
    Json,
}

/// `skein map [--format table|dot|mermaid|json] [--window 1m]`.
pub async fn map(target: &Target, window: &str, format: MapFormat) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let answer = client
        .call(
            Method::GET,
            &format!("/api/v1/map?window={window}"),
            String::new(),
        )
        .await?;
    let out = match format {
        MapFormat::Json => serde_json::to_string_pretty(&answer)? + "\n",
        MapFormat::Table => map_table(&answer),
        MapFormat::Dot => dot(&answer),
        MapFormat::Mermaid => mermaid(&answer),
    };
    if format == MapFormat::Table && answer["edges"].as_array().is_none_or(Vec::is_empty) {
        eprintln!("No traffic in the last {window}.");
        return Ok(());
    }
    print!("{out}");
    Ok(())
}

fn node_id(namespace: &Value, name: &Value) -> String {
    format!("{}/{}", text(namespace), text(name))
}

/// What an edge label says: protocol, rate, success, p99, mTLS, denials.
fn edge_label(e: &Value) -> String {
    let mut parts = vec![text(&e["protocol"])];
    if e["requests"].as_u64().unwrap_or(0) > 0 {
        parts.push(format!("{} rps", rate(&e["rps"])));
        parts.push(percent(&e["success_rate"]));
        parts.push(format!("p99 {}", millis(&e["p99_ms"])));
    }
    if e["tcp_connections"].as_u64().unwrap_or(0) > 0 {
        parts.push(format!("{} conns", text(&e["tcp_connections"])));
    }
    parts.push(if e["mtls"] == true {
        "mTLS".into()
    } else {
        "no mTLS".into()
    });
    if e["denied"].as_u64().unwrap_or(0) > 0 {
        parts.push(format!("{} denied", text(&e["denied"])));
    }
    if e["audited"].as_u64().unwrap_or(0) > 0 {
        parts.push(format!("{} audited", text(&e["audited"])));
    }
    parts.join(", ")
}

fn node_label(n: &Value) -> String {
    let s = &n["signals"];
    if s.is_null() {
        return text(&n["name"]);
    }
    format!(
        "{} ({} rps, {}, p99 {})",
        text(&n["name"]),
        rate(&s["rps"]),
        percent(&s["success_rate"]),
        millis(&s["p99_ms"])
    )
}

fn map_table(answer: &Value) -> String {
    let headers = [
        "SRC",
        "DST",
        "PROTOCOL",
        "AUTHZ",
        "SUCCESS",
        "RPS",
        "LATENCY_P99",
        "MTLS",
    ];
    let rows: Vec<Vec<String>> = answer["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                node_id(&e["src_namespace"], &e["src"]),
                node_id(&e["dst_namespace"], &e["dst"]),
                text(&e["protocol"]),
                text(&e["authorization"]),
                percent(&e["success_rate"]),
                rate(&e["rps"]),
                millis(&e["p99_ms"]),
                mtls(&e["mtls"]),
            ]
        })
        .collect();
    align(&headers, &rows)
}

/// A DOT string literal.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(answer: &Value) -> String {
    let mut out = String::from("digraph skein {\n  rankdir=LR;\n  node [shape=box];\n");
    for n in answer["nodes"].as_array().into_iter().flatten() {
        let id = node_id(&n["namespace"], &n["name"]);
        out += &format!("  {} [label={}];\n", quoted(&id), quoted(&node_label(n)));
    }
    for e in answer["edges"].as_array().into_iter().flatten() {
        let style = match e["authorization"].as_str() {
            Some("denied") => ", color=red, style=dashed",
            Some("partly denied") => ", color=orange",
            _ => "",
        };
        out += &format!(
            "  {} -> {} [label={}{style}];\n",
            quoted(&node_id(&e["src_namespace"], &e["src"])),
            quoted(&node_id(&e["dst_namespace"], &e["dst"])),
            quoted(&edge_label(e)),
        );
    }
    out + "}\n"
}

/// A Mermaid node id: letters, digits and `_` only.
fn mermaid_id(namespace: &Value, name: &Value) -> String {
    node_id(namespace, name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mermaid(answer: &Value) -> String {
    // Mermaid text in quotes may not hold `"`; the names are DNS labels.
    let clean = |s: String| s.replace('"', "'");
    let mut out = String::from("flowchart LR\n");
    for n in answer["nodes"].as_array().into_iter().flatten() {
        out += &format!(
            "  {}[\"{}\"]\n",
            mermaid_id(&n["namespace"], &n["name"]),
            clean(node_label(n))
        );
    }
    for e in answer["edges"].as_array().into_iter().flatten() {
        let arrow = if e["authorization"] == "denied" {
            "-.->"
        } else {
            "-->"
        };
        out += &format!(
            "  {} {arrow}|\"{}\"| {}\n",
            mermaid_id(&e["src_namespace"], &e["src"]),
            clean(edge_label(e)),
            mermaid_id(&e["dst_namespace"], &e["dst"]),
        );
    }
    out
}

/// The signal columns of a stat row.
fn signals(r: &Value, wide: bool) -> Vec<String> {
    let mut out = vec![
        percent(&r["success_rate"]),
        rate(&r["rps"]),
        millis(&r["p50_ms"]),
        millis(&r["p95_ms"]),
        millis(&r["p99_ms"]),
        text(&r["tcp_connections"]),
    ];
    if wide {
        let sum = |a: &str, b: &str| {
            (r[a].as_u64().unwrap_or(0) + r[b].as_u64().unwrap_or(0)).to_string()
        };
        out.extend([
            text(&r["requests"]),
            text(&r["denied"]),
            text(&r["audited"]),
            text(&r["retries"]),
            mtls(&r["mtls"]),
            sum("request_bytes", "tcp_sent_bytes"),
            sum("response_bytes", "tcp_received_bytes"),
        ]);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn percent(v: &Value) -> String {
    v.as_f64()
        .map(|f| format!("{:.2}%", f * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn rate(v: &Value) -> String {
    v.as_f64()
        .map(|f| format!("{f:.1}"))
        .unwrap_or_else(|| "-".into())
}

fn millis(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

fn mtls(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "√".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_map() -> Value {
        json!({
            "nodes": [
                {"namespace": "default", "name": "api", "signals": {"rps": 2.0, "success_rate": 1.0, "p99_ms": 5.0}},
                {"namespace": "default", "name": "web", "signals": null}
            ],
            "edges": [
                {"src_namespace": "default", "src": "web", "dst_namespace": "default", "dst": "api",
                 "protocol": "http", "authorization": "allowed", "requests": 120, "rps": 2.0,
                 "success_rate": 1.0, "p99_ms": 5.0, "tcp_connections": 0, "mtls": true, "denied": 0},
                {"src_namespace": "default", "src": "intruder", "dst_namespace": "default", "dst": "api",
                 "protocol": "http", "authorization": "denied", "requests": 5, "rps": 0.1,
                 "success_rate": 1.0, "p99_ms": 1.0, "tcp_connections": 0, "mtls": true, "denied": 5}
            ]
        })
    }

    #[test]
    fn the_map_draws_nodes_and_edges_with_denials_apart() {
        let m = sample_map();
        let d = dot(&m);
        assert!(d.starts_with("digraph skein {"), "{d}");
        assert!(d.contains("\"default/web\" -> \"default/api\" [label=\"http, 2.0 rps, 100.00%, p99 5.00ms, mTLS\"];"), "{d}");
        assert!(
            d.contains("\"default/intruder\" -> \"default/api\"")
                && d.contains("color=red, style=dashed"),
            "{d}"
        );
        let mm = mermaid(&m);
        assert!(mm.starts_with("flowchart LR\n"), "{mm}");
        assert!(mm.contains("default_web -->|\"http, 2.0 rps"), "{mm}");
        assert!(mm.contains("default_intruder -.->|"), "{mm}");
        let t = map_table(&m);
        assert!(t.lines().nth(2).unwrap().contains("denied"), "{t}");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn tap_lines_and_top_rows_read_like_linkerd_viz() {
        let e = json!({"direction": "inbound", "workload": "default/api-1", "src": "default/web",
            "dst": "default/api", "tls": true, "method": "GET", "path": "/menu/1", "status": 503,
            "grpc_status": null, "latency_ms": 1.5, "duration_ms": 1.75, "request_bytes": 0,
            "response_bytes": 12, "route": "", "error": "connect"});
        assert_eq!(
            tap_line(&e),
            "rsp dir=inbound workload=default/api-1 src=default/web dst=default/api tls=true :method=GET :path=/menu/1 :status=503 latency=1.50ms duration=1.75ms bytes=0/12 error=connect"
        );
        let mut rows = std::collections::HashMap::new();
        rows.insert(
            (
                "default/web".to_string(),
                "default/api".to_string(),
                "GET".to_string(),
                "/menu/1".to_string(),
            ),
            TopRow {
                count: 4,
                failures: 1,
                best_ms: 1.0,
                worst_ms: 3.0,
                last_ms: 2.0,
            },
        );
        let t = top_table(&rows);
        assert!(
            t.lines().nth(1).unwrap().contains("/menu/1") && t.contains("75.00%"),
            "{t}"
        );
        let f = TapFilter {
            to: Some("api".into()),
            from: None,
            path: Some("/a b".into()),
            method: None,
            status: Some("5xx".into()),
            max_rps: 10,
            duration: None,
        };
        assert_eq!(
            f.path(),
            "/api/v1/tap?max_rps=10&to=api&path=/a%20b&status=5xx"
        );
    }

    #[test]
    fn figures_read_like_linkerd_viz() {
        assert_eq!(percent(&json!(0.975)), "97.50%");
        assert_eq!(percent(&Value::Null), "-");
        assert_eq!(rate(&json!(1.25)), "1.2");
        assert_eq!(millis(&json!(52.4)), "52ms");
        assert_eq!(millis(&json!(1.234)), "1.23ms");
        assert_eq!(mtls(&json!(true)), "√");
        let row = json!({"success_rate": 1.0, "rps": 2.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
            "tcp_connections": 0, "requests": 120, "denied": 0, "audited": 3, "retries": 1, "mtls": true,
            "request_bytes": 10, "tcp_sent_bytes": 5, "response_bytes": 7, "tcp_received_bytes": 0});
        assert_eq!(
            signals(&row, true),
            [
                "100.00%", "2.0", "1.00ms", "2.00ms", "3.00ms", "0", "120", "0", "3", "1", "√",
                "15", "7"
            ]
        );
    }
}

/// `skein why`: what each proxy decided about a request the mesh failed or retried, in
/// words, caller's proxy first.
pub async fn why(
    target: &Target,
    request_id: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let path = with_query("/api/v1/why", &[("request_id", request_id), ("to", to)]);
    let answer = Client::new(target)?
        .call(Method::GET, &path, String::new())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print!("{}", why_text(&answer));
    Ok(())
}

/// The API's answer in words.
fn why_text(answer: &Value) -> String {
    let id = answer["requestId"].as_str().unwrap_or_default();
    let hops = answer["hops"].as_array().cloned().unwrap_or_default();
    if hops.is_empty() {
        return format!(
            "Nothing recorded for request {id}: the mesh records requests it failed or retried \
             (the latest 10,000), and a proxy reports them within a summary interval. A request \
             the application answered on its first try has no record (unless the try ejected \
             its endpoint).\n"
        );
    }
    let mut out = format!("Request {id}:\n");
    for h in &hops {
        // What proxies sent, printed: no control characters reach the terminal.
        let s = |k: &str| -> String {
            h[k].as_str()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        };
        let n = |k: &str| h[k].as_u64().unwrap_or_default();
        let side = if s("direction") == "outbound" {
            "caller's proxy"
        } else {
            "callee's proxy"
        };
        let mut line = format!("- {side} {}", s("workload"));
        let mut about = Vec::new();
        if !s("service").is_empty() {
            about.push(format!("to {}", s("service")));
        }
        if !s("route").is_empty() {
            about.push(format!("HTTPRoute {} rule {}", s("route"), n("rule")));
        }
        if !about.is_empty() {
            line.push_str(&format!(" ({})", about.join(", ")));
        }
        if n("status") == 0 {
            line.push_str(": cancelled by the caller");
        } else if n("tries") == 0 {
            line.push_str(&format!(": {}, answered by this proxy", n("status")));
        } else {
            line.push_str(&format!(
                ": {} after {} {}",
                n("status"),
                n("tries"),
                if n("tries") == 1 { "try" } else { "tries" }
            ));
        }
        if !s("endpoint").is_empty() {
            line.push_str(&format!(", last to {}", s("endpoint")));
        }
        out.push_str(&line);
        out.push('\n');
        out.push_str(&format!("  {}\n", s("why")));
    }
    out
}

#[cfg(test)]
mod why_tests {
    use super::*;

    #[test]
    fn each_hop_is_said_in_words_caller_first() {
        let answer = serde_json::json!({
            "requestId": "order-9",
            "hops": [
                {"workload": "default/frontend-1", "direction": "outbound", "service": "default/restaurant",
                 "route": "default/restaurant", "rule": 1, "endpoint": "10.0.0.2:4143", "tries": 2,
                 "status": 504, "reason": "timeout",
                 "why": "no response from restaurant within 500ms (timeouts.request of HTTPRoute default/restaurant, rule 1)"},
                {"workload": "default/restaurant-2", "direction": "inbound", "service": "default/restaurant",
                 "endpoint": "127.0.0.1:8080", "tries": 1, "status": 502, "reason": "connect", "why": "cannot connect"}
            ]
        });
        let text = why_text(&answer);
        assert_eq!(
            text,
            "Request order-9:\n\
             - caller's proxy default/frontend-1 (to default/restaurant, HTTPRoute default/restaurant rule 1): 504 after 2 tries, last to 10.0.0.2:4143\n  \
             no response from restaurant within 500ms (timeouts.request of HTTPRoute default/restaurant, rule 1)\n\
             - callee's proxy default/restaurant-2 (to default/restaurant): 502 after 1 try, last to 127.0.0.1:8080\n  \
             cannot connect\n"
        );
        let escape = serde_json::json!({"requestId": "x", "hops": [
            {"workload": "w", "direction": "inbound", "service": "s", "tries": 1, "status": 403,
             "why": "denied\u{1b}[2J by p"}]});
        assert!(why_text(&escape).contains("denied?[2J by p"));
        let none = why_text(&serde_json::json!({"requestId": "x", "hops": []}));
        assert!(none.starts_with("Nothing recorded for request x"), "{none}");
    }
}
