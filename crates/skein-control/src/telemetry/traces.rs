//! The control plane's trace store: recent spans from proxies (with their telemetry
//! summaries) and from applications (the OTLP receiver), grouped by trace, for
//! `skein trace list|show` and the HTTP API.
//!
//! Bounded by count and bytes: at most [`MAX_TRACES`] traces, [`MAX_BYTES`] of span
//! data in all and [`MAX_SPANS_PER_TRACE`] spans in one trace; the oldest trace (by its
//! first span's arrival) goes first. A span's attributes are kept as text, at most
//! [`MAX_ATTRIBUTES`] of them, each value at most [`MAX_VALUE`] bytes.
//!
//! Who sent a span is part of it: proxy spans are attributed to the workload whose
//! verified stream sent them (whatever they say), application spans carry the service
//! name their SDK gives (`source: application`, unverified).

use serde::Serialize;
use skein_api::otlp::common::v1::{any_value, AnyValue, KeyValue};
use skein_api::otlp::trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, Span};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Traces kept.
pub const MAX_TRACES: usize = 10_000;
/// Bytes of span data kept in all (as counted by [`StoredSpan::size`]).
pub const MAX_BYTES: usize = 64 << 20;
/// Spans kept of one trace; later ones are counted, not kept.
pub const MAX_SPANS_PER_TRACE: usize = 1_000;
/// Attributes kept of one span.
pub const MAX_ATTRIBUTES: usize = 64;
/// The longest attribute value (or name, or status message) kept, in bytes.
pub const MAX_VALUE: usize = 1024;
/// Spans taken from one proxy summary (a proxy sends at most this many).
pub const PER_SUMMARY: usize = 1024;
/// Traces one list answers with at most.
pub const MAX_LIST: usize = 1_000;

/// One span as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Its parent's, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// The service that recorded it (`service.name`).
    pub service: String,
    /// The workload (proxies) or instance (applications that name one).
    pub workload: String,
    /// `proxy` (attributed by its verified stream) or `application`.
    pub source: &'static str,
    /// Its name.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Whether its status is an error.
    pub error: bool,
    /// The status message, when there is one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    /// Attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

/// Heap bytes a string of `len` bytes takes: the allocator rounds each allocation up to
/// a size class (16-byte steps for small ones, coarser above).
fn heap(len: usize) -> usize {
    match len {
        0 => 0,
        1..=128 => len.next_multiple_of(16),
        _ => len.next_multiple_of(64) + len / 8,
    }
}

/// A leaf node of a `BTreeMap<String, String>`: room for 11 entries (two string headers
/// each) and the node's links.
const MAP_LEAF: usize = 544;
/// An internal node: a leaf's room and 12 child pointers.
const MAP_INTERNAL: usize = 640;

/// The nodes of a `BTreeMap<String, String>` of `n` entries: one leaf up to 11, then
/// leaves about half full (as splits leave them) under internal nodes.
fn map_nodes(n: usize) -> usize {
    match n {
        0 => 0,
        1..=11 => MAP_LEAF,
        _ => {
            let leaves = n.div_ceil(6);
            leaves * MAP_LEAF + leaves.div_ceil(6) * MAP_INTERNAL
        }
    }
}

/// What a trace takes besides its spans: its entry in the map of traces (with the
/// table's slack), its place in the arrival order.
const TRACE_OVERHEAD: usize = 160;

impl StoredSpan {
    /// Bytes it counts for against [`MAX_BYTES`]: what it takes in memory, its strings'
    /// heap as the allocator rounds it, its attributes' map nodes, and its share of the
    /// trace's vector (which grows by doubling). Checked against an allocator that counts
    /// in `tests/trace_memory.rs`.
    fn size(&self) -> usize {
        let attrs: usize = map_nodes(self.attributes.len())
            + self
                .attributes
                .iter()
                .map(|(k, v)| heap(k.len()) + heap(v.len()))
                .sum::<usize>();
        std::mem::size_of::<Self>() * 3 / 2
            + heap(self.trace_id.len())
            + heap(self.span_id.len())
            + self.parent_span_id.as_ref().map_or(0, |p| heap(p.len()))
            + heap(self.service.len())
            + heap(self.workload.len())
            + heap(self.name.len())
            + heap(self.status_message.len())
            + attrs
    }
}

/// One trace in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    /// 32 hex digits.
    pub trace_id: String,
    /// The earliest span's service and name.
    pub root: String,
    /// Start of its earliest span, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// From the earliest start to the latest end, in microseconds.
    pub duration_us: u64,
    /// Spans kept.
    pub spans: usize,
    /// Spans whose status is an error.
    pub errors: usize,
    /// Services with spans in it, sorted.
    pub services: Vec<String>,
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only traces with a span of this service (`name` or `namespace/name`).
    pub service: Option<String>,
    /// Only traces with an error span.
    pub errors: bool,
    /// Only traces at least this long, in microseconds.
    pub min_duration_us: u64,
    /// At most this many (newest first); 0: 20.
    pub limit: usize,
}

/// Why spans were not taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// How many.
    pub spans: usize,
    /// The first reason.
    pub why: String,
}

#[derive(Debug, Default)]
struct Trace {
    spans: Vec<StoredSpan>,
    bytes: usize,
    /// Spans that did not fit [`MAX_SPANS_PER_TRACE`].
    over: u64,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<u128, Trace>,
    /// Trace IDs by first arrival, oldest first.
    order: VecDeque<u128>,
    bytes: usize,
}

/// The store.
#[derive(Debug, Default)]
pub struct Traces {
    inner: Mutex<Inner>,
}

/// Who sent spans.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A proxy's verified stream: its namespace, service and workload.
    Proxy {
        /// Namespace.
        namespace: &'a str,
        /// Its service (account).
        service: &'a str,
        /// Its workload.
        workload: &'a str,
    },
    /// An application, through the OTLP receiver.
    Application,
}

impl Traces {
    /// Takes in a proxy's spans.
    pub fn add_proxy(&self, from: Origin<'_>, spans: &[Span]) -> Option<Rejected> {
        let (service, workload) = match from {
            Origin::Proxy {
                namespace,
                service,
                workload,
            } => (
                format!("{namespace}/{service}"),
                format!("{namespace}/{workload}"),
            ),
            Origin::Application => ("unknown".into(), String::new()),
        };
        self.add(
            spans
                .iter()
                .map(|s| (s, service.as_str(), workload.as_str(), "proxy")),
        )
    }

    /// Takes in an OTLP export's spans (from applications).
    pub fn add_otlp(&self, resource_spans: &[ResourceSpans]) -> Option<Rejected> {
        let mut all = Vec::new();
        for rs in resource_spans {
            let attrs = rs
                .resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or(&[]);
            let find = |key: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref())
                    .map(text_of)
            };
            let name = find("service.name").unwrap_or_else(|| "unknown_service".into());
            // Marked as an application's own word, so that it never reads as a mesh
            // service (`namespace/name`, attributed by a verified stream).
            let service = match find("service.namespace") {
                Some(ns) if !ns.is_empty() => format!("app:{ns}/{name}"),
                _ => format!("app:{name}"),
            };
            let workload = find("service.instance.id").unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    all.push((s, bounded(&service), bounded(&workload)));
                }
            }
        }
        self.add(
            all.iter()
                .map(|(s, svc, w)| (*s, svc.as_str(), w.as_str(), "application")),
        )
    }

    fn add<'a>(
        &self,
        spans: impl Iterator<Item = (&'a Span, &'a str, &'a str, &'static str)>,
    ) -> Option<Rejected> {
        // Converted before the lock: only the insertion holds it.
        let mut rejected: Option<Rejected> = None;
        let mut ready = Vec::new();
        for (span, service, workload, source) in spans {
            match stored(span, service, workload, source) {
                Ok(s) => {
                    let id = u128::from_be_bytes(span.trace_id[..].try_into().unwrap_or([0; 16]));
                    ready.push((id, s));
                }
                Err(why) => rejected.get_or_insert(Rejected { spans: 0, why }).spans += 1,
            }
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, stored) in ready {
            let size = stored.size();
            let Inner {
                traces,
                order,
                bytes,
            } = &mut *inner;
            let trace = traces.entry(id).or_insert_with(|| {
                order.push_back(id);
                *bytes += TRACE_OVERHEAD;
                Trace {
                    bytes: TRACE_OVERHEAD,
                    ..Trace::default()
                }
            });
            if trace.spans.len() >= MAX_SPANS_PER_TRACE {
                trace.over += 1;
                continue;
            }
            trace.spans.push(stored);
            trace.bytes += size;
            *bytes += size;
            // The oldest traces make room (never the one just added to, unless alone).
            while inner.order.len() > MAX_TRACES
                || (inner.bytes > MAX_BYTES && inner.order.len() > 1)
            {
                let Some(old) = inner.order.pop_front() else {
                    break;
                };
                if let Some(t) = inner.traces.remove(&old) {
                    inner.bytes -= t.bytes;
                }
            }
        }
        rejected
    }

    /// Traces matching `filter`, newest first.
    pub fn list(&self, filter: &Filter) -> Vec<TraceSummary> {
        let limit = match filter.limit {
            0 => 20,
            n => n.min(MAX_LIST),
        };
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for id in inner.order.iter().rev() {
            let Some(t) = inner.traces.get(id) else {
                continue;
            };
            let s = summary(*id, t);
            let service_ok = filter.service.as_deref().is_none_or(|want| {
                s.services
                    .iter()
                    .any(|have| have == want || have.rsplit('/').next() == Some(want))
            });
            if service_ok
                && (!filter.errors || s.errors > 0)
                && s.duration_us >= filter.min_duration_us
            {
                out.push(s);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// One trace's spans, earliest first; `None` when it is not (or no longer) kept.
    pub fn show(&self, trace_id: &str) -> Option<Vec<StoredSpan>> {
        let id = u128::from_str_radix(trace_id, 16).ok()?;
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut spans = inner.traces.get(&id)?.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_nano, std::cmp::Reverse(s.end_unix_nano)));
        Some(spans)
    }

    /// Traces and bytes kept.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.order.len(), inner.bytes)
    }
}

fn summary(id: u128, t: &Trace) -> TraceSummary {
    let start = t.spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = t.spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
    let root = t
        .spans
        .iter()
        .min_by_key(|s| (s.start_unix_nano, std::cmp::Reverse(s.end_unix_nano)))
        .map(|s| format!("{} {}", s.service, s.name))
        .unwrap_or_default();
    let mut services: Vec<String> = t.spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    TraceSummary {
        trace_id: format!("{id:032x}"),
        root,
        start_unix_nano: start,
        duration_us: end.saturating_sub(start) / 1000,
        spans: t.spans.len(),
        errors: t.spans.iter().filter(|s| s.error).count(),
        services,
    }
}

/// The span as stored, or why it is refused.
fn stored(
    s: &Span,
    service: &str,
    workload: &str,
    source: &'static str,
) -> Result<StoredSpan, String> {
    if s.trace_id.len() != 16 || s.trace_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "a span's trace_id has {} bytes or is all zero; OTLP trace IDs are 16 bytes, not all zero",
            s.trace_id.len()
        ));
    }
    if s.span_id.len() != 8 || s.span_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "a span's span_id has {} bytes or is all zero; OTLP span IDs are 8 bytes, not all zero",
            s.span_id.len()
        ));
    }
    if !(s.parent_span_id.is_empty() || s.parent_span_id.len() == 8) {
        return Err(format!(
            "a span's parent_span_id has {} bytes; OTLP parent span IDs are empty or 8 bytes",
            s.parent_span_id.len()
        ));
    }
    if s.end_time_unix_nano < s.start_time_unix_nano {
        return Err(
            "a span ends before it starts (end_time_unix_nano < start_time_unix_nano)".into(),
        );
    }
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let kind = match SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Internal => "internal",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Unspecified => "unspecified",
    };
    let (error, status_message) = match &s.status {
        Some(st) => (st.code == StatusCode::Error as i32, bounded(&st.message)),
        None => (false, String::new()),
    };
    let attributes = s
        .attributes
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv: &KeyValue| {
            (
                bounded(&kv.key),
                kv.value
                    .as_ref()
                    .map(text_of)
                    .map(|v| bounded(&v))
                    .unwrap_or_default(),
            )
        })
        .collect();
    Ok(StoredSpan {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
        service: service.to_string(),
        workload: workload.to_string(),
        source,
        name: bounded(&s.name),
        kind,
        start_unix_nano: s.start_time_unix_nano,
        end_unix_nano: s.end_time_unix_nano,
        error,
        status_message,
        attributes,
    })
}

/// An attribute value as text.
fn text_of(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::DoubleValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::BytesValue(b)) => format!("<{} bytes>", b.len()),
        Some(any_value::Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values.iter().map(text_of).collect::<Vec<_>>().join(", ")
        ),
        Some(any_value::Value::KvlistValue(l)) => format!("{{{} entries}}", l.values.len()),
        _ => String::new(),
    }
}

/// `s` cut to [`MAX_VALUE`] bytes at a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_VALUE {
        return s.to_string();
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_api::otlp::trace::v1::Status;

    fn span(trace: u128, id: u64, parent: Option<u64>, start: u64, end: u64) -> Span {
        Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: format!("span {id}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
    }

    const WEB: Origin<'static> = Origin::Proxy {
        namespace: "default",
        service: "web",
        workload: "web-1",
    };

    #[test]
    fn spans_group_by_trace_and_lists_filter_by_service_errors_and_duration() {
        let store = Traces::default();
        let mut failed = span(2, 21, None, 5_000_000, 9_000_000);
        failed.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "504".into(),
        });
        assert_eq!(
            store.add_proxy(WEB, &[span(1, 11, None, 1_000, 2_000_000)]),
            None
        );
        store.add_proxy(WEB, &[span(1, 12, Some(11), 10_000, 1_000_000), failed]);
        let all = store.list(&Filter::default());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].trace_id, format!("{:032x}", 2), "newest first");
        assert_eq!((all[1].spans, all[1].duration_us), (2, 1_999));
        assert_eq!(all[1].services, ["default/web"]);
        let errors = store.list(&Filter {
            errors: true,
            ..Default::default()
        });
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].errors, 1);
        let long = Filter {
            min_duration_us: 3_000,
            ..Default::default()
        };
        assert_eq!(store.list(&long)[0].trace_id, format!("{:032x}", 2));
        let web = Filter {
            service: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(store.list(&web).len(), 2);
        let other = Filter {
            service: Some("db".into()),
            ..Default::default()
        };
        assert!(store.list(&other).is_empty());
        let shown = store.show(&format!("{:032x}", 1)).unwrap();
        assert_eq!(shown[0].span_id, format!("{:016x}", 11), "earliest first");
        assert_eq!(
            shown[1].parent_span_id.as_deref(),
            Some(&*format!("{:016x}", 11))
        );
        assert_eq!(shown[0].source, "proxy");
        assert!(store.show("ffff").is_none());
        assert!(store.show("not hex").is_none());
    }

    #[test]
    fn malformed_spans_are_refused_with_the_reason_and_the_rest_kept() {
        let store = Traces::default();
        let mut short = span(1, 1, None, 0, 1);
        short.trace_id = vec![1; 8];
        let mut backwards = span(1, 2, None, 5, 1);
        backwards.name = "x".into();
        let r = store
            .add_proxy(
                WEB,
                &[
                    short,
                    span(1, 3, None, 0, 1),
                    backwards,
                    span(1, 0, None, 0, 1),
                ],
            )
            .unwrap();
        assert_eq!(r.spans, 3);
        assert!(r.why.contains("16 bytes"), "{}", r.why);
        assert_eq!(store.list(&Filter::default())[0].spans, 1);
    }

    #[test]
    fn the_store_is_bounded_by_traces_spans_and_bytes() {
        let store = Traces::default();
        for t in 1..=(MAX_TRACES as u128 + 10) {
            store.add_proxy(WEB, &[span(t, 1, None, 0, 1)]);
        }
        let (traces, _) = store.size();
        assert_eq!(traces, MAX_TRACES);
        assert!(
            store.show(&format!("{:032x}", 1)).is_none(),
            "the oldest went"
        );
        assert!(store.show(&format!("{:032x}", MAX_TRACES + 10)).is_some());
        let many: Vec<Span> = (1..=(MAX_SPANS_PER_TRACE as u64 + 5))
            .map(|i| span(u128::MAX, i, None, 0, 1))
            .collect();
        store.add_proxy(WEB, &many);
        assert_eq!(
            store.show(&format!("{:032x}", u128::MAX)).unwrap().len(),
            MAX_SPANS_PER_TRACE
        );
        // Bytes: spans with long attributes push old traces out before the count does.
        let store = Traces::default();
        let big = |t: u128| {
            let mut s = span(t, 1, None, 0, 1);
            s.attributes = (0..MAX_ATTRIBUTES)
                .map(|i| KeyValue {
                    key: format!("k{i}"),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("v".repeat(5000))),
                    }),
                    ..Default::default()
                })
                .collect();
            s
        };
        for t in 1..=2000u128 {
            store.add_proxy(WEB, &[big(t)]);
        }
        let (traces, bytes) = store.size();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(traces < 2000, "{traces}");
        let kept = store.show(&format!("{:032x}", 2000)).unwrap();
        assert!(
            kept[0].attributes["k0"].len() <= MAX_VALUE + 3,
            "values are cut"
        );
    }

    #[test]
    fn application_spans_name_their_service_and_proxies_are_attributed_by_stream() {
        use skein_api::otlp::resource::v1::Resource;
        use skein_api::otlp::trace::v1::ScopeSpans;
        let store = Traces::default();
        let attr = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let rs = ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr("service.name", "frontend")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span(7, 1, None, 0, 10)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(store.add_otlp(&[rs]), None);
        let mut claims = span(7, 2, Some(1), 1, 9);
        claims.attributes.push(attr("service.name", "admin"));
        store.add_proxy(WEB, &[claims]);
        let spans = store.show(&format!("{:032x}", 7)).unwrap();
        assert_eq!(
            (spans[0].service.as_str(), spans[0].source),
            ("app:frontend", "application")
        );
        assert_eq!(
            (spans[1].service.as_str(), spans[1].source),
            ("default/web", "proxy")
        );
        assert_eq!(spans[1].workload, "default/web-1");
    }
}
