//! HTTPRoute filters (Gateway API v1), per rule and per backendRef: request and response
//! header modifiers, URL rewrites, redirects, request mirroring, and `ExtensionRef` to a
//! Skein `FaultInjection`, enforced by the caller's proxy.

use super::validate::{is_hostname, is_http_token, Problems, HTTP_TOKEN};
use serde::{Deserialize, Serialize};

/// Most filters in one rule or backendRef.
pub const MAX_FILTERS: usize = 16;
/// Most headers in one `set`, `add` or `remove` list.
pub const MAX_HEADER_CHANGES: usize = 16;

/// One filter: `type` says which of the other fields is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `URLRewrite`.
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// For `ExtensionRef`: a `FaultInjection` (group `skein.dev`) in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<ExtensionRef>,
    /// The FaultInjection an `ExtensionRef` names, filled in by the control plane for
    /// proxies (or written in a standalone proxy's file). Not a field of HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<super::fault::ResolvedFault>,
}

/// Gateway API's `LocalObjectReference` of an `ExtensionRef` filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionRef {
    /// Only `skein.dev`.
    pub group: String,
    /// Only `FaultInjection`.
    pub kind: String,
    /// The FaultInjection's name, in the route's namespace.
    pub name: String,
}

/// The filter types of Gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterType {
    /// Change request headers before the request is sent.
    RequestHeaderModifier,
    /// Change response headers before the response reaches the client.
    ResponseHeaderModifier,
    /// Rewrite the host and path sent to the backend.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Answer with a redirect instead of forwarding.
    RequestRedirect,
    /// Send a copy to another backend.
    RequestMirror,
    /// An implementation-specific filter.
    ExtensionRef,
}

/// Header changes, applied in this order: `set`, `add`, `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers replaced (or added when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Headers added; an existing value gets the new one appended after a comma.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    /// The name (case-insensitive).
    pub name: String,
    /// The value.
    pub value: String,
}

/// What a `URLRewrite` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// The `Host` (HTTP/1) or `:authority` (HTTP/2) the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// How a path is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// For `ReplaceFullPath`: the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`: what replaces the part of the path the rule's
    /// `PathPrefix` match matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// The two path modifiers of Gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathModifierType {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the prefix the rule matched (element by element).
    ReplacePrefixMatch,
}

/// A copy of each request (or of `percent` of them, or `fraction`) sent to another
/// Service, whose answer is thrown away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: MirrorRef,
    /// Share of requests copied, 0 to 100. Default 100.
    #[serde(default = "default_percent")]
    pub percent: u32,
    /// Share of requests copied as `numerator / denominator`; instead of `percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<MirrorFraction>,
}

/// A share as a fraction (Gateway API `Fraction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorFraction {
    /// At most `denominator`.
    pub numerator: u32,
    /// More than 0. Default 100.
    #[serde(default = "default_denominator")]
    pub denominator: u32,
}

fn default_denominator() -> u32 {
    100
}

impl RequestMirror {
    /// The share of requests copied, in millionths.
    pub fn per_million(&self) -> u32 {
        match self.fraction {
            Some(f) if f.denominator > 0 => {
                (u64::from(f.numerator.min(f.denominator)) * 1_000_000 / u64::from(f.denominator))
                    as u32
            }
            Some(_) => 0,
            None => self.percent.min(100) * 10_000,
        }
    }
}

fn default_percent() -> u32 {
    100
}

/// The Service a mirror sends copies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorRef {
    /// API group; only `""` (core). Default `""`.
    #[serde(default)]
    pub group: String,
    /// Only `Service`. Default `Service`.
    #[serde(default = "super::route::default_service_kind")]
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// Its namespace. Default: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its port. Default: the port the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Set by the control plane, never written in a route: why this mirror may not be
    /// followed (no ReferenceGrant permits it). A proxy sends no copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A redirect answered by the caller's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`. Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Default: the scheme's well-known port when the scheme changes, else the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `301`, `302`, `303`, `307` or `308`. Default `302`.
    #[serde(default = "default_redirect_code")]
    pub status_code: u16,
}

fn default_redirect_code() -> u16 {
    302
}

const MESH_HEADER: &str = "a header name other than skein-*, x-forwarded-client-cert (the mesh's own), host (use URLRewrite), and those that frame a message or belong to a connection (content-length, transfer-encoding, connection, keep-alive, te, trailer, upgrade, proxy-*)";

/// Names a route may not set or remove: the mesh's own headers, the client certificate
/// header the inbound proxy strips, and those that frame the message or belong to one
/// connection (setting them could desynchronise a connection).
fn is_mesh_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("skein-")
        || lower.starts_with("proxy-")
        || [
            "x-forwarded-client-cert",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
        ]
        .contains(&lower.as_str())
}

const HEADER_VALUE: &str = "a header value of at most 4096 visible characters, spaces or tabs";

impl RouteFilter {
    /// Checks the filter; `at` is its path. `prefix_matches` says whether every match of
    /// the rule is a `PathPrefix` one (what `ReplacePrefixMatch` needs).
    pub(crate) fn validate(&self, p: &mut Problems, at: &str, prefix_matches: bool) {
        let set = [
            (
                "requestHeaderModifier",
                self.request_header_modifier.is_some(),
            ),
            (
                "responseHeaderModifier",
                self.response_header_modifier.is_some(),
            ),
            ("urlRewrite", self.url_rewrite.is_some()),
            ("requestRedirect", self.request_redirect.is_some()),
            ("requestMirror", self.request_mirror.is_some()),
            ("extensionRef", self.extension_ref.is_some()),
        ];
        let wanted = match self.kind {
            FilterType::RequestHeaderModifier => "requestHeaderModifier",
            FilterType::ResponseHeaderModifier => "responseHeaderModifier",
            FilterType::UrlRewrite => "urlRewrite",
            FilterType::RequestRedirect => "requestRedirect",
            FilterType::RequestMirror => "requestMirror",
            FilterType::ExtensionRef => "extensionRef",
        };
        for (field, present) in set {
            if present != (field == wanted) {
                let expected = format!(
                    "{wanted} set, and no other filter field, for type {:?}",
                    self.kind
                );
                let shown = if present { "set" } else { "missing" };
                p.add(format!("{at}.{field}"), shown, &expected);
            }
        }
        if let Some(r) = &self.extension_ref {
            let at = format!("{at}.extensionRef");
            p.check(
                r.group == "skein.dev",
                format!("{at}.group"),
                &r.group,
                "skein.dev",
            );
            p.check(
                r.kind == "FaultInjection",
                format!("{at}.kind"),
                &r.kind,
                "FaultInjection (the one extension Skein's proxies carry out)",
            );
            p.dns_subdomain(format!("{at}.name"), &r.name);
        }
        if let Some(m) = &self.request_mirror {
            let r = &m.backend_ref;
            let at = format!("{at}.requestMirror");
            p.check(
                r.group.is_empty(),
                format!("{at}.backendRef.group"),
                &r.group,
                "\"\" (the core API group)",
            );
            p.check(
                r.kind == "Service",
                format!("{at}.backendRef.kind"),
                &r.kind,
                "Service",
            );
            p.dns_label(format!("{at}.backendRef.name"), &r.name);
            if let Some(ns) = &r.namespace {
                p.dns_label(format!("{at}.backendRef.namespace"), ns);
            }
            if let Some(port) = r.port {
                p.port(format!("{at}.backendRef.port"), port);
            }
            p.check(
                m.percent <= 100,
                format!("{at}.percent"),
                m.percent,
                "0 to 100",
            );
            if let Some(f) = m.fraction {
                p.check(
                    m.percent == 100,
                    format!("{at}.fraction"),
                    "set with percent",
                    "percent or fraction, not both",
                );
                p.check(
                    f.denominator > 0 && f.numerator <= f.denominator,
                    format!("{at}.fraction"),
                    format!("{}/{}", f.numerator, f.denominator),
                    "a numerator of at most the denominator, which is more than 0",
                );
            }
        }
        for (field, m) in [
            ("requestHeaderModifier", &self.request_header_modifier),
            ("responseHeaderModifier", &self.response_header_modifier),
        ] {
            if let Some(m) = m {
                m.validate(p, &format!("{at}.{field}"));
            }
        }
        if let Some(r) = &self.url_rewrite {
            if let Some(host) = &r.hostname {
                p.hostname(format!("{at}.urlRewrite.hostname"), host);
            }
            if let Some(path) = &r.path {
                path.validate(p, &format!("{at}.urlRewrite.path"), prefix_matches);
            }
        }
        if let Some(r) = &self.request_redirect {
            let at = format!("{at}.requestRedirect");
            if let Some(scheme) = &r.scheme {
                let ok = scheme == "http" || scheme == "https";
                p.check(ok, format!("{at}.scheme"), scheme, "http or https");
            }
            if let Some(host) = &r.hostname {
                p.check(
                    is_hostname(host) && !host.starts_with("*."),
                    format!("{at}.hostname"),
                    host,
                    "a hostname without wildcard",
                );
            }
            if let Some(path) = &r.path {
                path.validate(p, &format!("{at}.path"), prefix_matches);
            }
            if let Some(port) = r.port {
                p.port(format!("{at}.port"), port);
            }
            p.check(
                [301, 302, 303, 307, 308].contains(&r.status_code),
                format!("{at}.statusCode"),
                r.status_code,
                "301, 302, 303, 307 or 308",
            );
        }
    }
}

impl HeaderModifier {
    fn validate(&self, p: &mut Problems, at: &str) {
        for (field, list) in [("set", &self.set), ("add", &self.add)] {
            p.max_items(&format!("{at}.{field}"), list.len(), MAX_HEADER_CHANGES);
            for (i, h) in list.iter().enumerate() {
                let h_at = format!("{at}.{field}[{i}]");
                p.check(
                    is_http_token(&h.name),
                    format!("{h_at}.name"),
                    &h.name,
                    HTTP_TOKEN,
                );
                p.check(
                    !is_mesh_header(&h.name),
                    format!("{h_at}.name"),
                    &h.name,
                    MESH_HEADER,
                );
                let ok = h.value.len() <= 4096
                    && h.value
                        .bytes()
                        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
                p.check(ok, format!("{h_at}.value"), &h.value, HEADER_VALUE);
            }
        }
        p.max_items(
            &format!("{at}.remove"),
            self.remove.len(),
            MAX_HEADER_CHANGES,
        );
        for (i, name) in self.remove.iter().enumerate() {
            p.check(
                is_http_token(name),
                format!("{at}.remove[{i}]"),
                name,
                HTTP_TOKEN,
            );
            p.check(
                !is_mesh_header(name),
                format!("{at}.remove[{i}]"),
                name,
                MESH_HEADER,
            );
        }
        let names: Vec<String> = self
            .set
            .iter()
            .chain(&self.add)
            .map(|h| h.name.to_ascii_lowercase())
            .chain(self.remove.iter().map(|n| n.to_ascii_lowercase()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                p.add(
                    at.to_string(),
                    name,
                    "each header name once across set, add and remove (case-insensitive)",
                );
            }
        }
    }
}

impl PathModifier {
    fn validate(&self, p: &mut Problems, at: &str, prefix_matches: bool) {
        let clean = |v: &str| super::route::is_clean_path(v);
        match self.kind {
            PathModifierType::ReplaceFullPath => match &self.replace_full_path {
                Some(v) => p.check(
                    clean(v),
                    format!("{at}.replaceFullPath"),
                    v,
                    "a path starting with '/'",
                ),
                None => p.add(
                    format!("{at}.replaceFullPath"),
                    "missing",
                    "a path for type ReplaceFullPath",
                ),
            },
            PathModifierType::ReplacePrefixMatch => {
                match &self.replace_prefix_match {
                    Some(v) => p.check(
                        clean(v),
                        format!("{at}.replacePrefixMatch"),
                        v,
                        "a path starting with '/'",
                    ),
                    None => p.add(
                        format!("{at}.replacePrefixMatch"),
                        "missing",
                        "a path for type ReplacePrefixMatch",
                    ),
                }
                p.check(
                    prefix_matches,
                    format!("{at}.type"),
                    "ReplacePrefixMatch",
                    "ReplacePrefixMatch only in a rule whose matches are all PathPrefix",
                );
            }
        }
    }
}

/// Checks a list of filters; `at` is the list's path.
pub(crate) fn validate_filters(
    p: &mut Problems,
    at: &str,
    filters: &[RouteFilter],
    prefix_matches: bool,
) {
    p.max_items(at, filters.len(), MAX_FILTERS);
    for (i, f) in filters.iter().enumerate() {
        f.validate(p, &format!("{at}[{i}]"), prefix_matches);
    }
    let count = |t: FilterType| filters.iter().filter(|f| f.kind == t).count();
    // RequestMirror may repeat, each to another backend.
    let mirrors: Vec<&MirrorRef> = filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref))
        .collect();
    for (i, m) in mirrors.iter().enumerate() {
        let same = mirrors[..i]
            .iter()
            .any(|o| o.name == m.name && o.namespace == m.namespace && o.port == m.port);
        p.check(
            !same,
            at.to_string(),
            format!("two RequestMirrors to {}", m.name),
            "each RequestMirror to a different backend",
        );
    }
    for t in [
        FilterType::RequestHeaderModifier,
        FilterType::ResponseHeaderModifier,
        FilterType::UrlRewrite,
        FilterType::RequestRedirect,
    ] {
        p.check(
            count(t) <= 1,
            at.to_string(),
            format!("{t:?} twice"),
            "each filter type at most once",
        );
    }
    p.check(
        count(FilterType::RequestRedirect) == 0 || count(FilterType::UrlRewrite) == 0,
        at.to_string(),
        "RequestRedirect with URLRewrite",
        "RequestRedirect or URLRewrite, not both",
    );
}
