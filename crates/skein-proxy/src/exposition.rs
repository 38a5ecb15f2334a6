//! The two formats `/metrics` speaks, pure: which one a scraper asked for (its `Accept`
//! header), and the Prometheus text format (version 0.0.4) made from the OpenMetrics text
//! that `prometheus-client` writes.
//!
//! Prometheus asks for OpenMetrics first and gets it; a client that names neither (`curl`,
//! `promtool`, most scrapers of the classic format) gets the text format, which is what
//! the Prometheus exposition format documents as the default. The two differ where the
//! text format is older: a counter's `HELP` and `TYPE` name its sample (`x_total`), where
//! OpenMetrics names the family (`x`); the text format has no `# UNIT`, no `# EOF`, no
//! `_created` samples, no exemplars, and escapes only `\\` and `\n` in `HELP`.

use http::HeaderValue;

/// A `/metrics` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        })
    }
}

/// The format an `Accept` header asks for: OpenMetrics when it names
/// `application/openmetrics-text` at least as high (by `q`) as `text/plain`, otherwise the
/// text format (also without the header, or when it is not readable).
pub fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Format::Text;
    };
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let p = p.trim();
                let (name, rest) = (p.get(..2)?, p.get(2..)?);
                name.eq_ignore_ascii_case("q=").then_some(rest)
            })
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(q);
        } else if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// The text format (0.0.4) of an OpenMetrics exposition.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Families whose name or type the text format writes otherwise, by their TYPE line.
    let mut families: Vec<(&str, &str)> = Vec::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            families.push((name, kind));
        }
    }
    let kind_of = |name: &str| families.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
    // The name its HELP and TYPE take in the text format, and its type there.
    let renamed = |name: &str| -> (String, &'static str) {
        match kind_of(name) {
            Some("counter") => (format!("{name}_total"), "counter"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("gauge") | Some("stateset") => (name.to_string(), "gauge"),
            Some("histogram") => (name.to_string(), "histogram"),
            Some("summary") => (name.to_string(), "summary"),
            _ => (name.to_string(), "untyped"),
        }
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // OpenMetrics escapes `"` in HELP as well; the text format does not.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {} {help}\n", renamed(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (name, kind) = renamed(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# EOF`, `# UNIT` and comments.
        } else {
            let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
            let created = name
                .strip_suffix("_created")
                .is_some_and(|family| kind_of(family) == Some("counter"));
            if !created {
                out.push_str(without_exemplar(line));
                out.push('\n');
            }
        }
    }
    out
}

/// A sample line without its exemplar (` # {labels} value`, after the value).
fn without_exemplar(line: &str) -> &str {
    // Past the label set, whose quoted values may hold ` # ` themselves.
    let mut end = line.find(['{', ' ']).unwrap_or(line.len());
    if line[end..].starts_with('{') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    end += i + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    match line[end..].find(" # ") {
        Some(at) => &line[..end + at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Format {
        negotiate(Some(&HeaderValue::from_str(v).unwrap()))
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        // What Prometheus 2.x sends.
        assert_eq!(
            accept("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics
        );
        assert_eq!(
            accept("application/openmetrics-text; version=1.0.0"),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(None), Format::Text, "curl and promtool send none");
        assert_eq!(accept("*/*"), Format::Text);
        assert_eq!(accept("text/plain;version=0.0.4"), Format::Text);
        assert_eq!(
            accept("text/plain;q=1,application/openmetrics-text;q=0.5"),
            Format::Text,
            "the higher q wins"
        );
        assert_eq!(
            accept("application/openmetrics-text;q=0"),
            Format::Text,
            "q=0 refuses it"
        );
        assert_eq!(
            accept("application/openmetrics-text;Q=0"),
            Format::Text,
            "parameter names ignore case"
        );
    }

    const OPENMETRICS: &str = r#"# HELP skein_requests HTTP requests, by \"status\".
# TYPE skein_requests counter
skein_requests_total{status_code="200"} 3
skein_requests_created{status_code="200"} 1700000000.0
# HELP skein_open Open now.
# TYPE skein_open gauge
# UNIT skein_open connections
skein_open 2
# HELP skein_latency_seconds Latency.
# TYPE skein_latency_seconds histogram
skein_latency_seconds_sum 0.5
skein_latency_seconds_count 2
skein_latency_seconds_bucket{le="0.1"} 1 # {trace_id="abc"} 0.05 1700000000.0
skein_latency_seconds_bucket{le="+Inf",note="a # b"} 2
# HELP skein_build Build.
# TYPE skein_build info
skein_build_info{version="1"} 1
# EOF
"#;

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let text = to_text(OPENMETRICS);
        assert_eq!(
            text,
            r#"# HELP skein_requests_total HTTP requests, by "status".
# TYPE skein_requests_total counter
skein_requests_total{status_code="200"} 3
# HELP skein_open Open now.
# TYPE skein_open gauge
skein_open 2
# HELP skein_latency_seconds Latency.
# TYPE skein_latency_seconds histogram
skein_latency_seconds_sum 0.5
skein_latency_seconds_count 2
skein_latency_seconds_bucket{le="0.1"} 1
skein_latency_seconds_bucket{le="+Inf",note="a # b"} 2
# HELP skein_build_info Build.
# TYPE skein_build_info gauge
skein_build_info{version="1"} 1
"#
        );
    }
}
