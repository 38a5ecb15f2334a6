//! Trace context: reading the caller's (W3C Trace Context `traceparent`/`tracestate`, B3
//! single `b3` and multi `X-B3-*`), deciding whether a new trace is sampled, and writing
//! the context a proxy's own span passes on. Pure; proxies will record spans with it
//! (issue: distributed tracing), so nothing calls it on the request path yet.
//!
//! Rules, from the specifications:
//! - W3C: `traceparent` is `version-traceid-parentid-flags` in lowercase hex; version `ff`
//!   is invalid; version `00` is exactly 55 characters; a later version may append fields
//!   after a `-`, which are ignored; all-zero IDs are invalid. An invalid `traceparent`
//!   starts a new trace and its `tracestate` is dropped. `tracestate` headers are joined
//!   with `,` and passed on as they are (up to 512 bytes, the length the specification
//!   asks every vendor to carry; longer, dropped whole rather than cut mid-entry).
//! - B3: trace IDs of 16 or 32 hex digits (a 16-digit one stays 16 digits when passed on),
//!   span IDs of 16; sampling `1`, `0` or `d` (debug: sampled, and always recorded); a
//!   lone decision (`b3: 0`, `X-B3-Sampled: 1` without IDs) starts a new trace with that
//!   decision. Uppercase hex is accepted, as Zipkin's own parsers do.
//! - W3C wins when a request carries both; the context is passed on in the format it came
//!   in (a new trace in W3C's), and the other format's headers pass on as they came. Two
//!   `traceparent` headers are no context (the W3C test suite's rule).

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi headers.
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi: the span.
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi: the span's parent.
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi: the sampling decision.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi: `1` for debug.
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Every trace header, W3C and B3: what an application copies from its request to the
/// calls it makes for it, for its trace to join up.
pub const HEADERS: [HeaderName; 8] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_FLAGS,
];

/// The longest `tracestate` passed on.
pub const MAX_TRACESTATE: usize = 512;

/// How a context travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `traceparent` (and `tracestate`).
    W3c,
    /// `b3: trace-span-sampled-parent`.
    B3Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, ….
    B3Multi,
}

/// The caller's span, as its headers told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: u128,
    /// The caller's span.
    pub span_id: u64,
    /// Its sampling decision (`None`: B3's "defer", left to us).
    pub sampled: Option<bool>,
    /// B3 debug: sample and record whatever the ratio.
    pub debug: bool,
    /// How it came, and so how it goes on.
    pub format: Format,
    /// B3 trace IDs of 64 bits stay 64 bits.
    pub short_trace_id: bool,
    /// W3C `tracestate`, passed on untouched.
    pub tracestate: Option<HeaderValue>,
}

/// What a request's headers say about its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Nothing usable: a new trace.
    None,
    /// A sampling decision alone (B3): a new trace with that decision.
    Decision(bool),
    /// A parent span.
    Parent(Parent),
}

/// The context of this proxy's span, to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The trace.
    pub trace_id: u128,
    /// This proxy's span.
    pub span_id: u64,
    /// The span it is a child of (none: it starts the trace).
    pub parent_span_id: Option<u64>,
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// B3 debug.
    pub debug: bool,
    /// How it goes on.
    pub format: Format,
    /// 64-bit B3 trace ID.
    pub short_trace_id: bool,
    /// W3C `tracestate`.
    pub tracestate: Option<HeaderValue>,
}

/// Whether any header is a trace header (one pass over the names: most requests have
/// none, and this is cheaper than looking each one up).
fn any_trace_header(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str();
        k == "traceparent" || k == "tracestate" || k == "b3" || k.starts_with("x-b3-")
    })
}

/// Reads the caller's trace context.
pub fn extract(headers: &HeaderMap) -> Incoming {
    if !any_trace_header(headers) {
        return Incoming::None;
    }
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    if let Some(v) = parents.next() {
        if parents.next().is_some() {
            // Two traceparent headers: which is meant cannot be known.
            return Incoming::None;
        }
        return match w3c(v.as_bytes()) {
            Some((trace_id, span_id, sampled)) => Incoming::Parent(Parent {
                trace_id,
                span_id,
                sampled: Some(sampled),
                debug: false,
                format: Format::W3c,
                short_trace_id: false,
                tracestate: tracestate(headers),
            }),
            // Invalid: a new trace, and its tracestate is not carried.
            None => Incoming::None,
        };
    }
    if let Some(v) = headers.get(&B3) {
        return b3_single(v.as_bytes());
    }
    b3_multi(headers)
}

/// The context for this proxy's span: a child of `incoming`'s parent, or the root of a
/// new trace sampled with probability `ratio` (0 to 1) when the caller did not decide;
/// `random` is 128 fresh random bits (IDs and the draw).
pub fn child(incoming: &Incoming, ratio: f64, random: u128) -> Context {
    let span_id = nonzero(random as u64);
    let draw = (random >> 64) as u64;
    let sampled_by_ratio = || {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        // `draw` is uniform over u64: sampled when below ratio × 2⁶⁴ (saturating).
        ratio >= 1.0 || draw < (ratio * 18_446_744_073_709_551_616.0) as u64
    };
    let new = |sampled: bool| Context {
        trace_id: nonzero128(crate::ids::random_u128()),
        span_id,
        parent_span_id: None,
        sampled,
        debug: false,
        format: Format::W3c,
        short_trace_id: false,
        tracestate: None,
    };
    match incoming {
        Incoming::None => new(sampled_by_ratio()),
        Incoming::Decision(sampled) => new(*sampled),
        Incoming::Parent(p) => Context {
            trace_id: p.trace_id,
            span_id,
            parent_span_id: Some(p.span_id),
            sampled: p.debug || p.sampled.unwrap_or_else(sampled_by_ratio),
            debug: p.debug,
            format: p.format,
            short_trace_id: p.short_trace_id,
            tracestate: p.tracestate.clone(),
        },
    }
}

/// Removes every trace header (W3C and B3).
pub fn strip(headers: &mut HeaderMap) {
    if !any_trace_header(headers) {
        return;
    }
    for name in HEADERS {
        headers.remove(name);
    }
}

/// Writes `ctx` into `headers` for the next hop (its span as the parent), in its format,
/// replacing that format's headers. Another format's headers pass on as they came (an
/// application that reads only B3 behind a W3C caller keeps its trace, under the
/// caller's span).
pub fn inject(headers: &mut HeaderMap, ctx: &Context) {
    let own: &[HeaderName] = match ctx.format {
        Format::W3c => &[TRACEPARENT, TRACESTATE],
        Format::B3Single => &[B3],
        Format::B3Multi => &[
            B3_TRACE_ID,
            B3_SPAN_ID,
            B3_PARENT_SPAN_ID,
            B3_SAMPLED,
            B3_FLAGS,
        ],
    };
    for name in own {
        headers.remove(name);
    }
    let mut trace_buf = [0u8; 32];
    let trace: &[u8] = if ctx.short_trace_id {
        hex_into(&mut trace_buf[..16], ctx.trace_id as u64 as u128)
    } else {
        hex_into(&mut trace_buf, ctx.trace_id)
    };
    let mut span_buf = [0u8; 16];
    let span = hex_into(&mut span_buf, u128::from(ctx.span_id));
    let mut parent_buf = [0u8; 16];
    let parent = ctx
        .parent_span_id
        .map(|p| hex_into(&mut parent_buf, u128::from(p)));
    // Every value is new per request: marked sensitive, HPACK never enters it in the
    // connection's table (indexing would only evict useful entries).
    let value = |parts: &[&[u8]]| {
        let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            v.extend_from_slice(p);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
    };
    match ctx.format {
        Format::W3c => {
            let flags: &[u8] = if ctx.sampled { b"01" } else { b"00" };
            if let Some(v) = value(&[b"00-", trace, b"-", span, b"-", flags]) {
                headers.insert(TRACEPARENT, v);
            }
            if let Some(state) = &ctx.tracestate {
                headers.insert(TRACESTATE, state.clone());
            }
        }
        Format::B3Single => {
            let decision: &[u8] = match (ctx.debug, ctx.sampled) {
                (true, _) => b"d",
                (false, true) => b"1",
                (false, false) => b"0",
            };
            let v = match parent {
                Some(p) => value(&[trace, b"-", span, b"-", decision, b"-", p]),
                None => value(&[trace, b"-", span, b"-", decision]),
            };
            if let Some(v) = v {
                headers.insert(B3, v);
            }
        }
        Format::B3Multi => {
            if let Some(v) = value(&[trace]) {
                headers.insert(B3_TRACE_ID, v);
            }
            if let Some(v) = value(&[span]) {
                headers.insert(B3_SPAN_ID, v);
            }
            if let Some(v) = parent.and_then(|p| value(&[p])) {
                headers.insert(B3_PARENT_SPAN_ID, v);
            }
            if ctx.debug {
                headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
            } else {
                let sampled = if ctx.sampled { "1" } else { "0" };
                headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
            }
        }
    }
}

/// `n`'s lowest `buf.len()` hex digits, lowercase, into `buf`.
fn hex_into(buf: &mut [u8], n: u128) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let len = buf.len();
    for (i, b) in buf.iter_mut().enumerate() {
        let shift = 4 * (len - 1 - i);
        *b = DIGITS[((n >> shift) & 0xf) as usize];
    }
    buf
}

/// A W3C `traceparent`: trace ID, parent span ID, sampled.
fn w3c(v: &[u8]) -> Option<(u128, u64, bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = lower_hex(&v[0..2])? as u8;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex(&v[3..35])?;
    let span_id = lower_hex(&v[36..52])? as u64;
    let flags = lower_hex(&v[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags & 1 == 1))
}

/// Every `tracestate` header joined, if short enough to carry whole.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(&TRACESTATE).iter();
    let first = all.next()?;
    let Some(second) = all.next() else {
        return (first.len() <= MAX_TRACESTATE).then(|| first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(all) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    (joined.len() <= MAX_TRACESTATE)
        .then(|| HeaderValue::from_bytes(&joined).ok())
        .flatten()
}

/// `b3: trace-span[-sampled[-parent]]`, or `b3: sampled`.
fn b3_single(v: &[u8]) -> Incoming {
    let Ok(text) = std::str::from_utf8(v) else {
        return Incoming::None;
    };
    let parts: Vec<&str> = text.trim().split('-').collect();
    if let [decision] = parts.as_slice() {
        return match *decision {
            "0" => Incoming::Decision(false),
            "1" | "d" => Incoming::Decision(true),
            _ => Incoming::None,
        };
    }
    let (Some(trace), Some(span)) = (parts.first(), parts.get(1)) else {
        return Incoming::None;
    };
    let (sampled, debug) = match parts.get(2).copied() {
        None => (None, false),
        Some("1") => (Some(true), false),
        Some("0") => (Some(false), false),
        Some("d") => (Some(true), true),
        Some(_) => return Incoming::None,
    };
    if parts.len() > 4 || parts.get(3).is_some_and(|p| any_hex(p, 16).is_none()) {
        return Incoming::None;
    }
    b3_parent(trace, span, sampled, debug, Format::B3Single)
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`.
fn b3_multi(headers: &HeaderMap) -> Incoming {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let debug = text(&B3_FLAGS) == Some("1");
    let sampled = match text(&B3_SAMPLED) {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    match (text(&B3_TRACE_ID), text(&B3_SPAN_ID)) {
        (Some(trace), Some(span)) => b3_parent(trace, span, sampled, debug, Format::B3Multi),
        _ if debug => Incoming::Decision(true),
        _ => sampled.map_or(Incoming::None, Incoming::Decision),
    }
}

fn b3_parent(
    trace: &str,
    span: &str,
    sampled: Option<bool>,
    debug: bool,
    format: Format,
) -> Incoming {
    let short = trace.len() == 16;
    let trace_id = if short {
        any_hex(trace, 16)
    } else {
        any_hex(trace, 32)
    };
    match (trace_id, any_hex(span, 16)) {
        (Some(t), Some(s)) if t != 0 && s != 0 => Incoming::Parent(Parent {
            trace_id: t,
            span_id: s as u64,
            sampled: if debug { Some(true) } else { sampled },
            debug,
            format,
            short_trace_id: short,
            tracestate: None,
        }),
        _ => Incoming::None,
    }
}

/// Lowercase hex digits only (W3C).
fn lower_hex(v: &[u8]) -> Option<u128> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    v.iter().try_fold(0u128, |n, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// Exactly `len` hex digits of either case (B3).
fn any_hex(s: &str, len: usize) -> Option<u128> {
    (s.len() == len)
        .then(|| lower_hex(s.to_ascii_lowercase().as_bytes()))
        .flatten()
}

fn nonzero(n: u64) -> u64 {
    n.max(1)
}

fn nonzero128(n: u128) -> u128 {
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    #[test]
    fn w3c_traceparent_is_read_as_the_specification_writes_it() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let Incoming::Parent(p) = extract(&headers(&[
            ("traceparent", ok),
            ("tracestate", "congo=t61rcWkgMzE"),
        ])) else {
            panic!("valid");
        };
        assert_eq!(
            (p.trace_id, p.span_id, p.sampled),
            (TRACE, SPAN, Some(true))
        );
        assert_eq!(p.tracestate.unwrap(), "congo=t61rcWkgMzE");
        // A later version may add fields after a dash; unknown flag bits are ignored.
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08-what-the-future-holds";
        let Incoming::Parent(p) = extract(&headers(&[("traceparent", future)])) else {
            panic!("a later version");
        };
        assert_eq!(p.sampled, Some(false));
        let twice = headers(&[("traceparent", ok), ("traceparent", ok)]);
        assert_eq!(extract(&twice), Incoming::None, "two are none");
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x",
            "",
        ] {
            // Invalid: a new trace, the tracestate not carried.
            let h = headers(&[("traceparent", bad), ("tracestate", "a=1")]);
            assert_eq!(extract(&h), Incoming::None, "{bad:?}");
        }
    }

    #[test]
    fn tracestate_headers_are_joined_and_an_overlong_one_dropped_whole() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = headers(&[
            ("traceparent", tp),
            ("tracestate", "a=1"),
            ("tracestate", "b=2,c=3"),
        ]);
        let Incoming::Parent(p) = extract(&h) else {
            panic!()
        };
        assert_eq!(p.tracestate.unwrap(), "a=1,b=2,c=3");
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let Incoming::Parent(p) = extract(&headers(&[("traceparent", tp), ("tracestate", &long)]))
        else {
            panic!()
        };
        assert_eq!(p.tracestate, None);
    }

    #[test]
    fn b3_single_and_multi_are_read_with_their_sampling_states() {
        let single = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let Incoming::Parent(p) = extract(&headers(&[("b3", single)])) else {
            panic!()
        };
        assert_eq!(p.span_id, 0xe457_b5a2_e4d8_6bd1);
        assert_eq!(
            (p.sampled, p.debug, p.format),
            (Some(true), false, Format::B3Single)
        );
        let Incoming::Parent(p) =
            extract(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]))
        else {
            panic!()
        };
        assert!(p.short_trace_id && p.debug && p.sampled == Some(true));
        let Incoming::Parent(p) = extract(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]))
        else {
            panic!()
        };
        assert_eq!(p.sampled, None, "deferred");
        assert_eq!(extract(&headers(&[("b3", "0")])), Incoming::Decision(false));
        assert_eq!(extract(&headers(&[("b3", "d")])), Incoming::Decision(true));
        for bad in [
            "x",
            "1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-xyz",
        ] {
            assert_eq!(extract(&headers(&[("b3", bad)])), Incoming::None, "{bad}");
        }
        let multi = headers(&[
            ("X-B3-TraceId", "80F198EE56343BA864FE8B2A57D3EFF7"),
            ("X-B3-SpanId", "e457b5a2e4d86bd1"),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "0"),
        ]);
        let Incoming::Parent(p) = extract(&multi) else {
            panic!()
        };
        assert_eq!((p.sampled, p.format), (Some(false), Format::B3Multi));
        assert_eq!(p.trace_id, 0x80f1_98ee_5634_3ba8_64fe_8b2a_57d3_eff7);
        assert_eq!(
            extract(&headers(&[("X-B3-Sampled", "1")])),
            Incoming::Decision(true)
        );
        assert_eq!(
            extract(&headers(&[("X-B3-Flags", "1")])),
            Incoming::Decision(true)
        );
        assert_eq!(extract(&HeaderMap::new()), Incoming::None);
    }

    #[test]
    fn w3c_wins_over_b3_and_the_context_goes_on_in_the_format_it_came() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = headers(&[("traceparent", tp), ("b3", "0"), ("tracestate", "a=1")]);
        let incoming = extract(&h);
        let ctx = child(&incoming, 0.0, 0x1234);
        assert_eq!(
            (ctx.trace_id, ctx.parent_span_id, ctx.sampled),
            (TRACE, Some(SPAN), true)
        );
        inject(&mut h, &ctx);
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE:032x}-{:016x}-01", ctx.span_id)
        );
        assert_eq!(h["tracestate"], "a=1");
        assert_eq!(h["b3"], "0", "another format passes on as it came");

        let mut h = headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]);
        let ctx = child(&extract(&h), 0.0, 0x99);
        inject(&mut h, &ctx);
        assert_eq!(
            h["b3"],
            format!("64fe8b2a57d3eff7-{:016x}-d-e457b5a2e4d86bd1", ctx.span_id)
        );

        let mut h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        let ctx = child(&extract(&h), 0.0, 0x42);
        inject(&mut h, &ctx);
        assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], format!("{:016x}", ctx.span_id));
        assert_eq!(h["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["x-b3-sampled"], "1");

        // No context: a new W3C trace.
        let mut h = HeaderMap::new();
        let ctx = child(&Incoming::None, 1.0, 7);
        inject(&mut h, &ctx);
        let Incoming::Parent(p) = extract(&h) else {
            panic!()
        };
        assert_eq!(
            (p.trace_id, p.span_id, p.sampled),
            (ctx.trace_id, ctx.span_id, Some(true))
        );
        assert_eq!(ctx.parent_span_id, None);
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio_and_decisions_are_inherited() {
        let draws = 20_000u32;
        let sampled = (0..draws)
            .filter(|_| child(&Incoming::None, 0.01, crate::ids::random_u128()).sampled)
            .count();
        // 1 % of 20,000 is 200; a binomial's 5 standard deviations are ±70.
        assert!((130..=270).contains(&sampled), "{sampled}");
        assert!(!child(&Incoming::None, 0.0, u128::MAX).sampled);
        assert!(child(&Incoming::None, 1.0, u128::MAX).sampled);
        assert!(!child(&Incoming::None, f64::NAN, 0).sampled);
        // The caller decided: its decision, whatever the ratio.
        assert!(!child(&Incoming::Decision(false), 1.0, 0).sampled);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let unsampled = extract(&headers(&[("traceparent", tp)]));
        assert!(!child(&unsampled, 1.0, 0).sampled);
        // B3 deferred: ours to make.
        let deferred = extract(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]));
        assert!(child(&deferred, 1.0, 0).sampled);
        assert!(!child(&deferred, 0.0, 0).sampled);
    }

    #[test]
    fn strip_removes_every_trace_header_and_nothing_else() {
        let mut h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "a=1"),
            ("b3", "0"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-sampled", "1"),
            ("x-request-id", "keep"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-request-id"], "keep");
        assert_eq!(extract(&h), Incoming::None);
    }
}
