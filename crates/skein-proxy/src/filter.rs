//! HTTPRoute filters as the caller's proxy applies them (Gateway API semantics, pure):
//! header modifiers on the request and the response, URL rewrites, redirects, and the
//! faults of a `FaultInjection` an `ExtensionRef` names. The rule's filters apply first,
//! then the chosen backendRef's.

use crate::ProxyError;
use http::header::{HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, StatusCode};
use skein_model::resource::filter::{
    HeaderModifier, PathModifier, PathModifierType, RequestRedirect,
};
use skein_model::resource::ResolvedFault;

/// Applies `m` to `headers`: `set` replaces, `add` appends to an existing value after a
/// comma, `remove` deletes. Names or values a header cannot carry (refused at apply
/// anyway) are skipped.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for h in &m.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(h.name.as_str()),
            HeaderValue::try_from(h.value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    for h in &m.add {
        let Ok(name) = HeaderName::try_from(h.name.as_str()) else {
            continue;
        };
        let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(existing) => format!("{existing},{}", h.value),
            None => h.value.clone(),
        };
        if let Ok(value) = HeaderValue::try_from(joined) {
            headers.insert(name, value);
        }
    }
    for name in &m.remove {
        if let Ok(name) = HeaderName::try_from(name.as_str()) {
            headers.remove(name);
        }
    }
}

/// The path `path` becomes under `m`; `matched` is the prefix the rule's `PathPrefix`
/// match matched (for `ReplacePrefixMatch`). The query is not part of `path`.
pub fn rewrite_path(path: &str, m: &PathModifier, matched: Option<&str>) -> String {
    match m.kind {
        PathModifierType::ReplaceFullPath => m
            .replace_full_path
            .clone()
            .unwrap_or_else(|| path.to_string()),
        PathModifierType::ReplacePrefixMatch => {
            let (Some(with), Some(prefix)) = (m.replace_prefix_match.as_deref(), matched) else {
                return path.to_string();
            };
            let prefix = prefix.trim_end_matches('/');
            // A path that no longer starts with the prefix (an earlier rewrite changed
            // it) is left as it is.
            let Some(rest) = path.strip_prefix(prefix) else {
                return path.to_string();
            };
            let joined = format!("{}{rest}", with.trim_end_matches('/'));
            if joined.is_empty() {
                "/".into()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// Whether a roll (any uniformly random number) falls within `percent`.
pub fn hits(percent: f64, roll: u64) -> bool {
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    roll % 1_000_000 < per_million
}

/// Carries out `fault` for one request: first the delay (if `delay_roll` falls within
/// its share), then the abort (if `abort_roll` does), as an error answered in place of
/// the backend.
pub async fn inject(
    fault: &ResolvedFault,
    delay_roll: u64,
    abort_roll: u64,
) -> Result<(), ProxyError> {
    if let Some(d) = &fault.spec.delay {
        if hits(d.percent, delay_roll) {
            tokio::time::sleep(d.fixed_delay).await;
        }
    }
    match &fault.spec.abort {
        Some(a) if hits(a.percent, abort_roll) => Err(ProxyError::Injected {
            status: a.http_status,
            fault: fault.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// The redirect answer to a request for `host` (without port) on `port`, path `path` and
/// query `query`, with scheme `scheme`.
pub fn redirect(
    r: &RequestRedirect,
    scheme: &str,
    host: &str,
    port: Option<u16>,
    path: &str,
    query: Option<&str>,
    matched: Option<&str>,
) -> http::Response<crate::http::Body> {
    let to_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let to_host = r.hostname.as_deref().unwrap_or(host);
    let well_known = |s: &str| if s == "https" { 443 } else { 80 };
    // The port: as written; else none when the scheme changes (its well-known one); else
    // the request's. A well-known port is left out of the URL.
    let to_port = match r.port {
        Some(p) => Some(p),
        None if r.scheme.is_some() && to_scheme != scheme => None,
        None => port,
    }
    .filter(|p| *p != well_known(to_scheme));
    let to_path = match &r.path {
        Some(m) => rewrite_path(path, m, matched),
        None => path.to_string(),
    };
    let mut location = format!("{to_scheme}://{to_host}");
    if let Some(p) = to_port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&to_path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = http::Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::resource::filter::HttpHeader;

    fn header(name: &str, value: &str) -> HttpHeader {
        HttpHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn headers_are_set_added_and_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("a"));
        h.insert("x-add", HeaderValue::from_static("foo"));
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("bye"));
        modify_headers(
            &mut h,
            &HeaderModifier {
                set: vec![header("X-Set", "new"), header("x-fresh", "1")],
                add: vec![header("x-add", "bar"), header("x-new", "baz")],
                remove: vec!["X-Gone".into()],
            },
        );
        assert_eq!(h["x-set"], "new");
        assert_eq!(h["x-fresh"], "1");
        assert_eq!(h["x-add"], "foo,bar", "appended, as Gateway API specifies");
        assert_eq!(h["x-new"], "baz");
        assert!(h.get("x-gone").is_none());
        assert_eq!(h["x-keep"], "a");
    }

    fn prefix(with: &str) -> PathModifier {
        PathModifier {
            kind: PathModifierType::ReplacePrefixMatch,
            replace_full_path: None,
            replace_prefix_match: Some(with.into()),
        }
    }

    #[test]
    fn prefixes_are_replaced_element_by_element() {
        let m = prefix("/one");
        assert_eq!(
            rewrite_path("/prefix/one/two", &prefix("/one"), Some("/prefix/one")),
            "/one/two"
        );
        assert_eq!(rewrite_path("/prefix", &m, Some("/prefix")), "/one");
        assert_eq!(rewrite_path("/prefix/", &m, Some("/prefix")), "/one/");
        assert_eq!(
            rewrite_path("/prefix/x", &prefix("/"), Some("/prefix")),
            "/x"
        );
        assert_eq!(rewrite_path("/prefix", &prefix("/"), Some("/prefix")), "/");
        assert_eq!(rewrite_path("/a/b", &prefix("/c/"), Some("/a/")), "/c/b");
        assert_eq!(
            rewrite_path("/x/b", &m, Some("/prefix")),
            "/x/b",
            "prefix gone: unchanged"
        );
        let full = PathModifier {
            kind: PathModifierType::ReplaceFullPath,
            replace_full_path: Some("/elsewhere".into()),
            replace_prefix_match: None,
        };
        assert_eq!(rewrite_path("/any/thing", &full, None), "/elsewhere");
    }

    #[test]
    fn shares_are_rolled_in_millionths() {
        let hit = |percent: f64| (0..1_000_000u64).filter(|r| hits(percent, *r)).count();
        assert_eq!(hit(12.5), 125_000);
        assert_eq!(hit(0.0), 0);
        assert_eq!(hit(100.0), 1_000_000);
        assert_eq!(hit(0.0001), 1);
    }

    #[tokio::test]
    async fn a_fault_delays_then_aborts_by_its_shares() {
        let fault: ResolvedFault = serde_yaml_ng::from_str(
            "{name: default/chaos, spec: {delay: {percent: 50, fixedDelay: 20ms}, abort: {percent: 50, httpStatus: 503}}}",
        )
        .unwrap();
        let start = tokio::time::Instant::now();
        assert!(
            inject(&fault, 999_999, 999_999).await.is_ok(),
            "neither roll hits"
        );
        assert!(start.elapsed() < std::time::Duration::from_millis(20));
        let err = inject(&fault, 0, 0).await.unwrap_err();
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(20),
            "delayed first"
        );
        assert_eq!(err.status(), 503);
        assert!(
            err.to_string().contains("FaultInjection default/chaos"),
            "{err}"
        );
    }

    #[test]
    fn redirects_build_their_location() {
        let r = |yaml: &str| -> RequestRedirect { serde_yaml_ng::from_str(yaml).unwrap() };
        let loc = |resp: http::Response<crate::http::Body>| {
            (
                resp.status().as_u16(),
                resp.headers()[LOCATION].to_str().unwrap().to_string(),
            )
        };
        assert_eq!(
            loc(redirect(
                &r("{scheme: https}"),
                "http",
                "web",
                Some(8080),
                "/a",
                Some("q=1"),
                None
            )),
            (302, "https://web/a?q=1".into()),
            "a new scheme drops the port for its well-known one"
        );
        assert_eq!(
            loc(redirect(
                &r("{hostname: example.com, statusCode: 301}"),
                "http",
                "web",
                Some(8080),
                "/a",
                None,
                None
            )),
            (301, "http://example.com:8080/a".into())
        );
        assert_eq!(
            loc(redirect(
                &r("{port: 80}"),
                "http",
                "web",
                Some(8080),
                "/",
                None,
                None
            )),
            (302, "http://web/".into()),
            "the well-known port is left out"
        );
        let with_path = r("{path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}");
        assert_eq!(
            loc(redirect(
                &with_path,
                "http",
                "web",
                None,
                "/old/page",
                None,
                Some("/old")
            )),
            (302, "http://web/new/page".into())
        );
    }
}
