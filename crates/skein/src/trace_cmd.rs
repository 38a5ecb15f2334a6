//! `skein trace list` and `skein trace show`: recent traces from the control plane's
//! store, and one trace as a waterfall in the terminal (each span indented under its
//! parent, a bar where it ran in the trace's time, errors said in words).

use crate::cli::{align, Client, Target};
use http::Method;
use serde_json::Value;

/// Width of a waterfall bar, in characters.
const BAR: usize = 40;

/// `skein trace list`.
pub async fn list(
    target: &Target,
    service: Option<&str>,
    errors: bool,
    min_duration: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let limit = limit.to_string();
    let path = crate::signals::with_query(
        "/api/v1/traces",
        &[
            ("service", service),
            ("errors", errors.then_some("true")),
            ("min_duration", min_duration),
            ("limit", Some(&limit)),
        ],
    );
    print_answer(target, &path, json, list_text).await
}

/// `skein trace show ID`.
pub async fn show(target: &Target, id: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/traces/{}", crate::signals::encode(id));
    print_answer(target, &path, json, waterfall).await
}

/// GETs `path` and prints the answer: its JSON, or `text` of it.
async fn print_answer(
    target: &Target,
    path: &str,
    json: bool,
    text: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let answer = Client::new(target)?
        .call(Method::GET, path, String::new())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", text(&answer));
    }
    Ok(())
}

/// What a span or list field says, with no control characters (what applications and
/// proxies sent reaches the terminal printable only).
fn s(v: &Value, k: &str) -> String {
    printable(v[k].as_str().unwrap_or_default())
}

/// `text` with control characters and the invisible ones that reorder or hide text
/// (bidirectional overrides and isolates, zero-width marks) shown as `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let hidden = matches!(
                c,
                '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
            );
            if c.is_control() || hidden {
                '?'
            } else {
                c
            }
        })
        .collect()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_default()
}

/// A duration in microseconds, as people read it.
fn took(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// Seconds since the Unix epoch as `HH:MM:SS` UTC.
fn clock(unix_nano: u64) -> String {
    let secs = unix_nano / 1_000_000_000;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The list as a table.
fn list_text(answer: &Value) -> String {
    let traces = answer["traces"].as_array().cloned().unwrap_or_default();
    if traces.is_empty() {
        return "No traces match. Proxies record 1 % of new traces (Mesh spec.tracing.samplingPercent) and every request the mesh failed, and report them every few seconds.\n".into();
    }
    let rows: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            vec![
                s(t, "traceId"),
                clock(n(t, "startUnixNano")),
                took(n(t, "durationUs")),
                n(t, "spans").to_string(),
                n(t, "errors").to_string(),
                s(t, "root"),
            ]
        })
        .collect();
    let mut text = align(
        &[
            "TRACE",
            "START (UTC)",
            "DURATION",
            "SPANS",
            "ERRORS",
            "ROOT",
        ],
        &rows,
    );
    text.push_str(&kept_line(answer));
    text
}

/// What the store holds against its limits (the oldest traces go first), when the
/// control plane says.
fn kept_line(answer: &Value) -> String {
    let mib = |v: &Value| v.as_u64().map(|b| b as f64 / (1 << 20) as f64);
    let (kept, bytes) = (answer["kept"].as_u64(), mib(&answer["bytes"]));
    let limits = &answer["limits"];
    match (kept, bytes, limits["traces"].as_u64(), mib(&limits["bytes"])) {
        (Some(kept), Some(bytes), Some(max), Some(max_bytes)) => format!(
            "The control plane keeps {kept} traces ({bytes:.1} MiB) of at most {max} ({max_bytes:.0} MiB); the oldest go first.\n"
        ),
        _ => String::new(),
    }
}

/// One trace as a waterfall: spans in tree order (children under their parent, by start
/// time), each with its service, name, duration, a bar placed in the trace's time, and
/// what went wrong when it did.
fn waterfall(answer: &Value) -> String {
    let spans = answer["spans"].as_array().cloned().unwrap_or_default();
    let id = s(answer, "traceId");
    if spans.is_empty() {
        return format!("Trace {id} has no spans.\n");
    }
    let start = spans
        .iter()
        .map(|sp| n(sp, "startUnixNano"))
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .map(|sp| n(sp, "endUnixNano"))
        .max()
        .unwrap_or(0);
    let total = end.saturating_sub(start).max(1);
    let errors = spans
        .iter()
        .filter(|sp| sp["error"].as_bool() == Some(true))
        .count();
    let mut out = format!(
        "Trace {id}: {} spans, {}, {} {}\n",
        spans.len(),
        took(total / 1000),
        errors,
        if errors == 1 { "error" } else { "errors" }
    );
    // Tree order: roots are spans whose parent is not in the trace.
    let ids: std::collections::HashSet<String> = spans.iter().map(|sp| s(sp, "spanId")).collect();
    let mut order: Vec<(usize, usize)> = Vec::new(); // (index, depth)
    let mut stack: Vec<(usize, usize)> = spans
        .iter()
        .enumerate()
        .filter(|(_, sp)| !ids.contains(&s(sp, "parentSpanId")))
        .map(|(i, _)| (i, 0))
        .collect();
    stack.reverse();
    let mut seen = vec![false; spans.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        let me = s(&spans[i], "spanId");
        let mut children: Vec<usize> = (0..spans.len())
            .filter(|&c| !seen[c] && s(&spans[c], "parentSpanId") == me)
            .collect();
        children.sort_by_key(|&c| n(&spans[c], "startUnixNano"));
        for c in children.into_iter().rev() {
            stack.push((c, depth + 1));
        }
    }
    // A span in a parent cycle (malformed input) is shown at the top level.
    for (i, done) in seen.iter().enumerate() {
        if !done {
            order.push((i, 0));
        }
    }
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|&(i, depth)| {
            let sp = &spans[i];
            let (a, b) = (n(sp, "startUnixNano"), n(sp, "endUnixNano"));
            let at =
                |t: u64| (t.saturating_sub(start) as u128 * BAR as u128 / total as u128) as usize;
            // At least one block, inside the bar, whatever the span's times say.
            let from = at(a).min(BAR - 1);
            let to = at(b).clamp(from + 1, BAR);
            let bar = format!(
                "{}{}{}",
                " ".repeat(from),
                "█".repeat(to - from),
                " ".repeat(BAR - to)
            );
            let mut what = Vec::new();
            if let Some(code) = sp["attributes"]["http.response.status_code"].as_str() {
                what.push(printable(code));
            }
            if sp["error"].as_bool() == Some(true) {
                let msg = s(sp, "statusMessage");
                what.push(if msg.is_empty() {
                    "error".into()
                } else {
                    format!("error: {msg}")
                });
            }
            vec![
                format!("{}{}", "  ".repeat(depth.min(12)), s(sp, "service")),
                s(sp, "name"),
                took(b.saturating_sub(a) / 1000),
                format!("|{bar}|"),
                what.join(" "),
            ]
        })
        .collect();
    out.push_str(&align(&["SERVICE", "SPAN", "TOOK", "WHEN", ""], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(id: &str, parent: &str, service: &str, name: &str, start: u64, end: u64) -> Value {
        json!({"spanId": id, "parentSpanId": parent, "service": service, "name": name,
               "startUnixNano": start, "endUnixNano": end, "error": false, "attributes": {}})
    }

    #[test]
    fn a_waterfall_nests_children_under_parents_with_bars_in_trace_time() {
        let mut failed = span(
            "d",
            "c",
            "default/restaurant",
            "inbound GET restaurant",
            3_000_000,
            9_000_000,
        );
        failed["error"] = json!(true);
        failed["statusMessage"] = json!("503: no endpoint\u{1b}[2J");
        failed["attributes"]["http.response.status_code"] = json!("503");
        let answer = json!({"traceId": "abc", "spans": [
            failed,
            span("a", "", "default/traffic", "outbound GET frontend", 0, 10_000_000),
            span("c", "b", "default/frontend", "inbound GET frontend", 2_000_000, 9_500_000),
            span("b", "a", "default/traffic", "try 1 GET frontend", 1_000_000, 10_000_000),
        ]});
        let text = waterfall(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Trace abc: 4 spans, 10.0ms, 1 error");
        assert!(lines[2].starts_with("default/traffic "), "{text}");
        assert!(lines[3].starts_with("  default/traffic "), "{text}");
        assert!(lines[4].starts_with("    default/frontend "), "{text}");
        assert!(lines[5].starts_with("      default/restaurant "), "{text}");
        assert!(
            lines[2].contains(&format!("|{}|", "█".repeat(BAR))),
            "{text}"
        );
        // 30 % to 90 % of the trace: 12 spaces, 24 blocks, 4 spaces.
        let bar = format!("|{}{}{}|", " ".repeat(12), "█".repeat(24), " ".repeat(4));
        assert!(lines[5].contains(&bar), "{text}");
        assert!(
            lines[5].contains("503 error: 503: no endpoint?[2J"),
            "{text}"
        );
    }

    #[test]
    fn malformed_spans_draw_without_panicking_or_hidden_characters() {
        // A zero-length span at the very end, one ending before it starts, a parent cycle,
        // and names that reverse or hide the terminal's text.
        let answer = json!({"traceId": "t", "spans": [
            span("a", "", "svc", "root", 0, 10),
            span("b", "a", "svc", "at the end", 10, 10),
            span("c", "a", "svc", "backwards", 8, 2),
            span("x", "y", "svc", "cycle x", 3, 4),
            span("y", "x", "svc", "cycle y", 3, 4),
            span("d", "a", "svc\u{202e}txt", "evil\u{2066}name", 1, 2),
        ]});
        let text = waterfall(&answer);
        assert_eq!(text.lines().count(), 2 + 6, "{text}");
        assert!(
            !text.contains('\u{202e}') && !text.contains('\u{2066}'),
            "{text}"
        );
        assert!(
            text.contains("svc?txt") && text.contains("evil?name"),
            "{text}"
        );
    }

    #[test]
    fn lists_are_tables_and_empty_ones_say_why() {
        let answer = json!({"traces": [{"traceId": "0af7651916cd43dd8448eb211c80319c",
            "startUnixNano": 3_723_000_000_000u64, "durationUs": 1500, "spans": 4, "errors": 0,
            "root": "default/traffic outbound GET frontend"}]});
        let text = list_text(&answer);
        assert!(text.starts_with("TRACE"), "{text}");
        assert!(
            text.contains("0af7651916cd43dd8448eb211c80319c   01:02:03"),
            "{text}"
        );
        assert!(text.contains("1.5ms"), "{text}");
        assert!(!text.contains("keeps"), "no limits, no line: {text}");
        assert!(list_text(&json!({"traces": []})).starts_with("No traces match"));
        let mut full = answer.clone();
        full["kept"] = json!(5448);
        full["bytes"] = json!(67_108_392u64);
        full["limits"] = json!({"traces": 10_000, "bytes": 64 << 20});
        let text = list_text(&full);
        assert!(
            text.ends_with(
                "keeps 5448 traces (64.0 MiB) of at most 10000 (64 MiB); the oldest go first.\n"
            ),
            "{text}"
        );
    }
}
