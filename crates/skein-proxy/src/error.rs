//! The proxy's errors, each classified by where it came from and whether a retry could
//! help, and mapped to the HTTP status the caller sees.

use std::net::SocketAddr;

/// Where a failure originated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something wrong.
    Downstream,
    /// The peer proxy or application failed.
    Upstream,
    /// The proxy itself or its configuration.
    Internal,
}

/// Everything that can go wrong while proxying one request or connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The caller addressed a service this proxy has no destination for.
    #[error("no destination named {0:?}: no Service in the mesh answers to that name (apply one), or, for a proxy without a control plane, add it to `destinations` in the proxy config")]
    UnknownService(String),
    /// The caller addressed a name this proxy does not hold, and the control plane could
    /// not be asked about it (on-demand discovery).
    #[error("{name:?} is not among the destinations this proxy holds, and it could not look it up: {why}")]
    Undiscovered {
        /// The name asked about.
        name: String,
        /// Why there is no answer.
        why: String,
    },
    /// The destination exists but not on that port.
    #[error("service {service:?} has no port {port}; its ports are {ports:?}")]
    UnknownPort {
        /// The service.
        service: String,
        /// The requested port.
        port: u16,
        /// The ports it has.
        ports: Vec<u16>,
    },
    /// The destination has no endpoints to send to.
    #[error("service {0:?} has no endpoints: start a workload for it or check its selector")]
    NoEndpoints(String),
    /// HTTPRoutes are attached to the service port, and no rule of theirs matches the
    /// request.
    #[error(
        "no rule of the HTTPRoutes attached to {service} port {port} ({routes}) matches this request: \
         a Service with routes answers only what they match (Gateway API); add a rule for it, \
         e.g. one with a PathPrefix / match"
    )]
    NoRouteMatched {
        /// The addressed service.
        service: String,
        /// Its port.
        port: u16,
        /// The attached routes' `namespace/name`, comma-separated.
        routes: String,
    },
    /// The rule that matched sends the request to a backendRef that cannot be resolved.
    #[error(
        "HTTPRoute {route} rule {rule} matched, but {why}: the request was not sent \
         (Gateway API answers 500 for a backendRef that cannot be resolved); fix the rule's backendRefs"
    )]
    BackendUnresolved {
        /// The HTTPRoute's `namespace/name`.
        route: String,
        /// The rule's index.
        rule: usize,
        /// What cannot be resolved.
        why: String,
    },
    /// The request has no authority to route by.
    #[error("request has no Host header or authority to route by; send `Host: service[:port]`")]
    NoAuthority,
    /// Connecting to the peer proxy or the application failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the peer proxy or application failed.
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        /// The upstream address.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The application on a `detect` port failed the HTTP/2 exchange an HTTP/2 caller's
    /// request was sent in: most likely it speaks only HTTP/1.1.
    #[error("the application on port {port} failed an HTTP/2 exchange ({source}); the caller spoke HTTP/2 and the port's protocol is detect, so the request went to the application as HTTP/2: if it speaks only HTTP/1.1, declare the port `protocol: http` (the Service's spec.ports, or --port {port}/http) and the proxy will speak HTTP/1.1 to it")]
    AppNotH2 {
        /// The application port.
        port: u16,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The inbound side was asked for a port the application does not serve.
    #[error("port {0} is not an application port of this workload; allowed: {1:?}")]
    PortNotServed(u16, Vec<u16>),
    /// A request between proxies lacked a header the protocol needs.
    #[error("malformed request from peer proxy: {0}")]
    BadPeerRequest(&'static str),
    /// The client's request body failed while being forwarded.
    #[error("request body could not be read: {0}")]
    RequestBody(String),
    /// The peer proxy answered a CONNECT tunnel with an error.
    #[error("peer proxy {addr} refused the tunnel with {status}: {reason}")]
    TunnelRefused {
        /// The peer proxy.
        addr: SocketAddr,
        /// Its status code.
        status: u16,
        /// Its `skein-error` reason, if any.
        reason: String,
    },
    /// Authorization refused the request or connection.
    #[error("skein: {caller} may not call {target}: {reason}")]
    Denied {
        /// The caller's SPIFFE ID, or `unauthenticated`.
        caller: String,
        /// `service:port`.
        target: String,
        /// The decision, naming the policy (or default) that decided.
        reason: String,
        /// `namespace/name`, `default` or `not-allowed` (the `skein-denied-by` header).
        policy: String,
        /// The whole decision, with the rule that decided or the callers allowed: for the
        /// proxy's decision log (`skein why`), never for the caller.
        detail: String,
    },
    /// The request is ambiguous about what it asks for (e.g. which host), so it cannot be
    /// authorized.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request path cannot be normalised for authorization.
    #[error("{0}")]
    BadPath(skein_model::authz::path::PathError),
    /// A plaintext caller, after the mesh switched to `mtls: strict`.
    #[error("this workload accepts only mutual TLS from mesh proxies (Mesh spec.mtls is strict); call it through your own skein proxy")]
    MtlsRequired,
    /// The route's timeout passed before the response arrived; the request was cancelled.
    #[error(
        "no response from {service} within {after:?} ({field} of HTTPRoute {route}, rule {rule}); \
         the request was cancelled upstream. Raise the timeout (0s disables it) or make the \
         backend answer sooner"
    )]
    Timeout {
        /// The destination service.
        service: String,
        /// The timeout.
        after: std::time::Duration,
        /// `timeouts.request` or `timeouts.backendRequest`.
        field: &'static str,
        /// The HTTPRoute's `namespace/name`.
        route: String,
        /// The rule's index in it.
        rule: usize,
    },
    /// The proxy is shutting down.
    #[error("proxy is shutting down; retry on another endpoint")]
    ShuttingDown,
    /// A FaultInjection answered instead of the backend (resilience testing).
    #[error("skein: fault injected by FaultInjection {fault}: this request was answered {status} on purpose")]
    Injected {
        /// The status answered.
        status: u16,
        /// The FaultInjection's `namespace/name`.
        fault: String,
    },
    /// A limit of the destination's BackendPolicy refused the request at once, rather
    /// than let it queue.
    #[error(
        "skein: {service} is at its limit: {limit} {value} ({policy}) reached; \
         retry after a second, or raise the limit"
    )]
    Overloaded {
        /// The destination service.
        service: String,
        /// The BackendPolicy's `namespace/name`, or `the default BackendPolicy`.
        policy: String,
        /// The limit, as its field is written (`connectionPool.maxConcurrentRequests`).
        limit: &'static str,
        /// Its value.
        value: u32,
    },
    /// The proxy is at one of its own ceilings (`limits.maxRequests`): shed at once,
    /// before anything was sent anywhere. The text says which and what to do.
    #[error("{0}")]
    ProxyOverloaded(String),
}

impl ProxyError {
    /// Where the failure came from.
    pub fn source_kind(&self) -> Source {
        match self {
            ProxyError::NoAuthority | ProxyError::RequestBody(_) => Source::Downstream,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::AppNotH2 { .. }
            | ProxyError::TunnelRefused { .. }
            | ProxyError::Timeout { .. } => Source::Upstream,
            ProxyError::BadPeerRequest(_)
            | ProxyError::PortNotServed(..)
            | ProxyError::MtlsRequired
            | ProxyError::Denied { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::BadPath(_) => Source::Downstream,
            _ => Source::Internal,
        }
    }

    /// Whether the request can safely be sent again elsewhere (nothing reached the app).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::NoEndpoints(_) | ProxyError::ShuttingDown
        ) || self.refused_stream()
    }

    /// Whether the peer reset the request's HTTP/2 stream with `REFUSED_STREAM`, which
    /// says it was closed before any processing (RFC 9113 §8.7: safe to retry, whatever
    /// the method). Streams a peer's `GOAWAY` cut off are not counted: h2 reports those
    /// the same way as ones the connection's end cut off after they were processed. A
    /// peer proxy never passes its application's `REFUSED_STREAM` on (it answers `502` for
    /// a refused request, and resets a failed response body with `INTERNAL_ERROR`, see
    /// `inbound::app`), so the reset is the peer's own word.
    pub fn refused_stream(&self) -> bool {
        let ProxyError::Upstream { source, .. } = self else {
            return false;
        };
        h2_error(source).is_some_and(|h2| {
            h2.is_reset() && h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        })
    }

    /// The status returned to an HTTP caller.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::UnknownService(_) | ProxyError::UnknownPort { .. } => S::BAD_GATEWAY,
            ProxyError::NoRouteMatched { .. } => S::NOT_FOUND,
            ProxyError::BackendUnresolved { .. } => S::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints(_)
            | ProxyError::ShuttingDown
            | ProxyError::Undiscovered { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::ProxyOverloaded(_) => S::SERVICE_UNAVAILABLE,
            ProxyError::NoAuthority | ProxyError::BadPeerRequest(_) => S::BAD_REQUEST,
            ProxyError::RequestBody(_) => S::BAD_REQUEST,
            ProxyError::PortNotServed(..)
            | ProxyError::MtlsRequired
            | ProxyError::Denied { .. } => S::FORBIDDEN,
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) => S::BAD_REQUEST,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::AppNotH2 { .. }
            | ProxyError::TunnelRefused { .. } => S::BAD_GATEWAY,
            ProxyError::Timeout { .. } => S::GATEWAY_TIMEOUT,
            ProxyError::Injected { status, .. } => {
                S::from_u16(*status).unwrap_or(S::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// What the mesh's decision log (`skein why`, an operator's view) says about this
    /// error: its message, and for a denial the whole decision (the rule that decided,
    /// or the callers the policies allow), which the caller is not told.
    pub fn explain(&self) -> String {
        match self {
            ProxyError::Denied {
                caller,
                target,
                detail,
                ..
            } => format!("skein: {caller} may not call {target}: {detail}"),
            e => e.to_string(),
        }
    }

    /// A short, stable label for metrics and the `skein-error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::UnknownService(_) => "unknown_service",
            ProxyError::Undiscovered { .. } => "undiscovered",
            ProxyError::UnknownPort { .. } => "unknown_port",
            ProxyError::NoEndpoints(_) => "no_endpoints",
            ProxyError::NoRouteMatched { .. } => "no_route",
            ProxyError::BackendUnresolved { .. } => "backend_unresolved",
            ProxyError::NoAuthority => "no_authority",
            ProxyError::Connect { .. } => "connect",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::AppNotH2 { .. } => "app_not_h2",
            ProxyError::PortNotServed(..) => "port_not_served",
            ProxyError::BadPeerRequest(_) => "bad_peer_request",
            ProxyError::RequestBody(_) => "request_body",
            ProxyError::TunnelRefused { .. } => "tunnel_refused",
            ProxyError::MtlsRequired => "mtls_required",
            ProxyError::Denied { .. } => "denied",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::ProxyOverloaded(_) => "proxy_overloaded",
            ProxyError::Injected { .. } => "fault_injected",
        }
    }

    /// Every [`ProxyError::reason`], for reading a peer proxy's `skein-error` header
    /// without trusting its text as a label.
    pub const REASONS: [&'static str; 23] = [
        "unknown_service",
        "unknown_port",
        "no_endpoints",
        "no_route",
        "backend_unresolved",
        "no_authority",
        "connect",
        "upstream",
        "app_not_h2",
        "port_not_served",
        "bad_peer_request",
        "request_body",
        "tunnel_refused",
        "mtls_required",
        "denied",
        "bad_path",
        "bad_request",
        "timeout",
        "shutting_down",
        "overloaded",
        "proxy_overloaded",
        "undiscovered",
        "fault_injected",
    ];

    /// The reason a `skein-error` header names, or `other` for one this proxy does not
    /// know (a newer peer's, or a refusal of the HTTP/1 framing guard).
    pub fn reason_of(header: &[u8]) -> &'static str {
        Self::REASONS
            .iter()
            .find(|r| r.as_bytes() == header)
            .copied()
            .unwrap_or("other")
    }

    /// The response the proxy sends in place of the upstream's.
    pub fn to_response(
        &self,
        request_id: Option<&http::HeaderValue>,
    ) -> http::Response<crate::http::Body> {
        let text = match request_id.and_then(|v| v.to_str().ok()) {
            Some(id) => format!("{self}\nrequest id: {id}\n"),
            None => format!("{self}\n"),
        };
        let mut resp = http::Response::new(crate::http::full(text));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        self.mark(headers);
        resp
    }

    /// The response for a gRPC caller: HTTP 200 with the status in `grpc-status`
    /// (trailers-only), so gRPC clients see `PERMISSION_DENIED`, `INVALID_ARGUMENT`, ….
    pub fn to_grpc_response(
        &self,
        request_id: Option<&http::HeaderValue>,
    ) -> http::Response<crate::http::Body> {
        let code = match self.status().as_u16() {
            400 => 3,        // INVALID_ARGUMENT
            403 => 7,        // PERMISSION_DENIED
            502 | 503 => 14, // UNAVAILABLE
            504 => 4,        // DEADLINE_EXCEEDED
            _ => 13,         // INTERNAL
        };
        let mut resp = http::Response::new(crate::http::empty());
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", http::HeaderValue::from(code));
        // grpc-message is percent-encoded (gRPC over HTTP/2 spec); keep it printable ASCII.
        let text = match request_id.and_then(|v| v.to_str().ok()) {
            Some(id) => format!("{self} (request id {id})"),
            None => self.to_string(),
        };
        let message: String = text
            .bytes()
            .flat_map(|b| match b {
                b' '..=b'~' if b != b'%' => vec![b as char],
                _ => format!("%{b:02X}").chars().collect(),
            })
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
        self.mark(headers);
        resp
    }

    /// `skein-error` (and for denials `skein-denied-by`), which the caller's proxy reads.
    fn mark(&self, headers: &mut http::HeaderMap) {
        headers.insert(
            crate::http::headers::ERROR,
            http::HeaderValue::from_static(self.reason()),
        );
        if let ProxyError::Denied { policy, .. } = self {
            if let Ok(v) = http::HeaderValue::from_str(policy) {
                headers.insert(crate::http::headers::DENIED_BY, v);
            }
        }
        if let ProxyError::ProxyOverloaded(_) = self {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        if let ProxyError::Overloaded { policy, limit, .. } = self {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&format!("{policy} {limit}")) {
                headers.insert(crate::http::headers::LIMITED_BY, v);
            }
        }
    }
}

/// The HTTP/2 error in `e`'s chain of causes (`e` included), if any: what an HTTP/2
/// stream was reset with.
pub(crate) fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        cause = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason missing from `REASONS` reads as `other` at the caller's proxy, so what
    /// it means there (a shed request to send elsewhere) is lost. Read from this file's
    /// own `reason` arms, since not every variant can be built here.
    #[test]
    fn every_reason_a_proxy_sends_is_one_a_proxy_reads() {
        let source = include_str!("error.rs");
        let start = source.find("pub fn reason(&self)").unwrap();
        let end = start + source[start..].find("\n    }\n").unwrap();
        let sent: Vec<&str> = source[start..end]
            .split("=> \"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        assert!(sent.len() >= 20, "{sent:?}");
        for reason in &sent {
            assert_eq!(ProxyError::reason_of(reason.as_bytes()), *reason);
        }
        assert_eq!(sent.len(), ProxyError::REASONS.len(), "{sent:?}");
    }

    #[test]
    fn a_shed_request_asks_to_come_back_and_counts_as_unsent_at_the_callers_proxy() {
        let e = ProxyError::ProxyOverloaded("skein: this proxy holds …".into());
        let resp = e.to_response(None);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let reason = ProxyError::reason_of(resp.headers()["skein-error"].as_bytes());
        assert!(crate::retry::unsent_by_peer(503, reason));
    }

    #[test]
    fn an_overload_refusal_names_its_policy_and_limit_and_asks_to_come_back() {
        let e = ProxyError::Overloaded {
            service: "api".into(),
            policy: "default/api".into(),
            limit: "connectionPool.maxConcurrentRequests",
            value: 10,
        };
        let resp = e.to_response(None);
        assert_eq!(resp.status(), 503);
        let h = resp.headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["skein-error"], "overloaded");
        assert_eq!(
            h["skein-limited-by"],
            "default/api connectionPool.maxConcurrentRequests"
        );
        assert!(e.to_string().contains(
            "api is at its limit: connectionPool.maxConcurrentRequests 10 (default/api) reached"
        ));
        let grpc = e.to_grpc_response(None);
        assert_eq!(grpc.headers()["grpc-status"], "14", "UNAVAILABLE");
        assert_eq!(grpc.headers()["retry-after"], "1");
        // Both forms name the request.
        let id = http::HeaderValue::from_static("order-7");
        let message = e.to_grpc_response(Some(&id)).headers()["grpc-message"].clone();
        assert!(
            message.to_str().unwrap().ends_with("(request id order-7)"),
            "{message:?}"
        );
        assert!(ProxyError::REASONS.contains(&"overloaded"));
    }

    #[test]
    fn errors_say_what_to_do_and_map_to_statuses() {
        let e = ProxyError::UnknownService("payments".into());
        assert_eq!(e.status(), 502);
        assert!(e.to_string().contains("add it to `destinations`"));
        let resp = e.to_response(None);
        assert_eq!(resp.headers()["skein-error"], "unknown_service");
        assert!(ProxyError::NoEndpoints("x".into()).retryable());
        assert!(!ProxyError::NoAuthority.retryable());
        assert_eq!(ProxyError::NoAuthority.source_kind(), Source::Downstream);
        assert_eq!(ProxyError::reason_of(b"denied"), "denied");
        assert_eq!(ProxyError::reason_of(b"<script>"), "other");
        assert!(ProxyError::REASONS.contains(&ProxyError::ShuttingDown.reason()));
    }
}
