//! The configuration one proxy runs with: who it serves, where it listens, and which
//! destinations it can reach.
//!
//! Standalone proxies read it from YAML (`skein proxy --config FILE`); the control plane
//! will build the same structure per proxy. Unknown fields are refused, defaults are
//! applied on parse and visible when the config is printed back (`/config`).

use crate::{FieldError, ModelError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A list of shared values, written and read as a plain list.
mod shared_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer, T: Serialize>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|t| &**t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// Everything a proxy needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// The workload this proxy sits beside.
    pub workload: WorkloadInfo,
    /// Traffic arriving from other proxies for the local application.
    pub inbound: InboundConfig,
    /// Traffic leaving the local application.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// The admin listener (`/live`, `/ready`, `/metrics`, `/config`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Services this proxy may call and the peer proxies that serve them. Each is shared
    /// between the configurations that hold it unchanged, so that a change to one of
    /// thousands copies none of the others.
    #[serde(default, with = "shared_list")]
    pub destinations: Vec<Arc<Destination>>,
    /// Who may call this workload: the AuthorizationPolicies governing its inbound
    /// traffic and the mesh's default. Under a control plane it comes from there;
    /// standalone it may be written here. Default: no policies, allow.
    #[serde(default)]
    pub authorization: crate::authz::PolicySet,
    /// Protection limits for HTTP parsing.
    #[serde(default)]
    pub limits: Limits,
    /// How long protocol detection waits for the client's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols). Default `300ms`.
    #[serde(default = "default_detect_timeout", with = "crate::duration")]
    pub detect_timeout: Duration,
    /// How long in-flight requests and streams may run after a shutdown signal. Default `10s`.
    #[serde(default = "default_drain_timeout", with = "crate::duration")]
    pub drain_timeout: Duration,
    /// What the proxy records about the traffic it carries.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The DNS server for the workload (its queries redirected here): the proxy answers A
    /// and AAAA for mesh service names and forwards every other query to upstream
    /// resolvers. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
}

/// The proxy's DNS server (see `docs/proxy-config.md`, section `dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// Where it listens, UDP and TCP on the same address. Default `127.0.0.1:15053`.
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// Resolvers that every query it does not answer itself is forwarded to, tried in
    /// order. Default (empty): the `nameserver` lines of `/etc/resolv.conf` (port 53), read
    /// when the proxy starts.
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// The mesh DNS domain: services are answered as `NAME.NAMESPACE.svc.<domain>`. A
    /// DNS-1123 subdomain. Default `cluster.local`.
    #[serde(default = "default_dns_domain")]
    pub domain: String,
    /// The TTL of its own answers, in whole seconds from `0s` to `1h`. Default `5s`.
    #[serde(default = "default_dns_ttl", with = "crate::duration")]
    pub ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: default_dns_listen(),
            upstreams: Vec::new(),
            domain: default_dns_domain(),
            ttl: default_dns_ttl(),
        }
    }
}

fn default_dns_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15053))
}

fn default_dns_domain() -> String {
    "cluster.local".into()
}

fn default_dns_ttl() -> Duration {
    Duration::from_secs(5)
}

impl DnsConfig {
    /// Every broken rule as `(field, value, what is accepted)`, fields relative to `dns`.
    pub fn problems(&self) -> Vec<(String, String, &'static str)> {
        let mut problems = Vec::new();
        if !crate::resource::validate::is_dns_subdomain(&self.domain) {
            let expected = crate::resource::validate::DNS_SUBDOMAIN;
            problems.push(("domain".into(), self.domain.clone(), expected));
        }
        if self.ttl > Duration::from_secs(3600) || self.ttl.subsec_nanos() != 0 {
            let v = crate::duration::format(self.ttl);
            problems.push(("ttl".into(), v, "0s to 1h, in whole seconds"));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.port() == 0 {
                problems.push((
                    format!("upstreams[{i}]"),
                    u.to_string(),
                    "a port 1 to 65535",
                ));
            } else if self.loops_back(*u) {
                problems.push((
                    format!("upstreams[{i}]"),
                    u.to_string(),
                    "a resolver other than the proxy itself (dns.listen)",
                ));
            }
        }
        problems
    }

    /// True when forwarding to `upstream` would reach this server again.
    pub fn loops_back(&self, upstream: SocketAddr) -> bool {
        let listen = self.listen;
        upstream == listen
            || (upstream.port() == listen.port()
                && listen.ip().is_unspecified()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))
    }
}

/// What the proxy records about traffic (see `docs/telemetry.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Per-request and per-TCP-edge golden signals (counts, latency histograms, bytes by
    /// caller, callee and route). Default `true`; `false` exists to measure their cost.
    #[serde(default = "yes")]
    pub requests: bool,
    /// How often a proxy under a control plane sends it a summary of what it recorded
    /// (100ms to 60s). Default `5s`.
    #[serde(default = "default_summary_interval", with = "crate::duration")]
    pub summary_interval: Duration,
    /// A series that records nothing for this long, with no connection open on it, is
    /// let go, and so are the label values no series uses any more (1s to 24h, and at
    /// least twice `summaryInterval`, so every series is summarised before it goes).
    /// Default `10m`.
    #[serde(default = "default_idle_series", with = "crate::duration")]
    pub idle_series: Duration,
    /// Tracing: the sampling percentage of new traces and an OTLP collector. Under a
    /// control plane, the Mesh's `spec.tracing` replaces it.
    #[serde(default)]
    pub tracing: crate::TracingSpec,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            requests: true,
            summary_interval: default_summary_interval(),
            idle_series: default_idle_series(),
            tracing: Default::default(),
        }
    }
}

fn default_summary_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_series() -> Duration {
    Duration::from_secs(600)
}

fn yes() -> bool {
    true
}

/// Identity of the workload beside the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadInfo {
    /// This workload's name, unique within its namespace (e.g. `restaurant-1`).
    pub name: String,
    /// The service the workload belongs to (e.g. `restaurant`).
    pub service: String,
    /// Namespace; default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels the control plane matches Service selectors against (default: `app` =
    /// the service name).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The inbound side: where peers connect and where the application listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundConfig {
    /// Address peer proxies connect to. Default `0.0.0.0:4143`.
    #[serde(default = "default_inbound_listen")]
    pub listen: SocketAddr,
    /// Host the application listens on; requests go to `appHost:PORT`. Default `127.0.0.1`.
    #[serde(default = "default_app_host")]
    pub app_host: IpAddr,
    /// The application's ports. Only these are reachable through the inbound side; none
    /// (`[]`) for a workload that only calls others.
    pub ports: Vec<PortSpec>,
    /// Requests sent to the application at once, from all callers together; beyond it
    /// the proxy refuses at once (503). Under a control plane it comes from the
    /// BackendPolicies (`spec.inbound`) of the Services selecting the workload. Default:
    /// no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<AppLimit>,
}

/// A limit on the requests the application is sent at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppLimit {
    /// Who set it, named in every refusal: the BackendPolicy's `namespace/name`. Default
    /// `inbound.limit` (this file).
    #[serde(default = "default_limit_source")]
    pub policy: String,
    /// Most requests the application is sent at once; 1 to 1000000.
    pub max_concurrent_requests: u32,
    /// Most requests waiting for one of those to finish; 0 to 1000000. Default 0.
    #[serde(default)]
    pub max_pending_requests: u32,
    /// Finds the limit from the application's latency, up to `maxConcurrentRequests`
    /// (as a BackendPolicy's `spec.inbound.adaptive`). Default: fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::resource::AdaptiveLimit>,
}

fn default_limit_source() -> String {
    "inbound.limit".into()
}

/// One application port and the protocol spoken on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// The port number.
    pub port: u16,
    /// What is spoken on it; `detect` (the default) sniffs each connection.
    #[serde(default)]
    pub protocol: Protocol,
    /// Inbound only: the port the application listens on for requests to `port` (a
    /// Service's `targetPort`). Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

impl PortSpec {
    /// The port with its protocol and no `targetPort`.
    pub fn new(port: u16, protocol: Protocol) -> Self {
        PortSpec {
            port,
            protocol,
            target_port: None,
        }
    }

    /// Where the application listens for this port.
    pub fn app_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// The protocol declared for a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sniff each connection: HTTP/1.x by its request line, HTTP/2 by its preface,
    /// otherwise opaque TCP (also after `detectTimeout` of client silence).
    #[default]
    Detect,
    /// HTTP: HTTP/1.x, or HTTP/2 with prior knowledge; never treated as opaque TCP.
    Http,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
    /// Opaque bytes; never inspected.
    Tcp,
}

/// The outbound side: the ways the application's connections reach the proxy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundConfig {
    /// Listener for connections redirected by iptables (`REDIRECT`); the original
    /// destination is read with `SO_ORIGINAL_DST`. Unset: no transparent listener.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Explicit HTTP proxy listener (`http_proxy=http://ADDR`): absolute-form requests and
    /// `CONNECT`, routed by the authority `service[:port]`. Unset: disabled.
    #[serde(default)]
    pub http_proxy: Option<SocketAddr>,
    /// Local listeners that each lead to one service port (`127.0.0.1:PORT` → service).
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

/// A local listener bound to one destination service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// Where the application connects, e.g. `127.0.0.1:15001`.
    pub listen: SocketAddr,
    /// The destination service's name.
    pub service: String,
    /// The destination service port.
    pub port: u16,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:4191`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

/// A service this proxy can call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service name, as callers address it (`service[:port]` or `service.namespace`).
    pub service: String,
    /// Namespace; default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service's ports and protocols. A port not listed is refused.
    pub ports: Vec<PortSpec>,
    /// Virtual addresses (cluster IPs) that transparently intercepted connections use to
    /// reach this service. Optional.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Peer proxies (their inbound listeners) serving this service.
    pub endpoints: Vec<Endpoint>,
    /// HTTP routing rules for requests to this service (from HTTPRoutes whose parent is
    /// this service). Without a matching rule, requests go to the service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<DestinationRoute>,
    /// The SPIFFE IDs the service admits (its `serviceAccounts`). When set, every
    /// endpoint's identity must be one of them: a proxy verifies a peer against what the
    /// Service allows, never only against what a registrant announced. Set by the control
    /// plane; optional in a static file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// BackendPolicies for calls to this service: load balancing, limits, outlier
    /// detection and the retry budget. One naming a port (`targetRef.port`) governs that
    /// port; one without, every other port. None: every default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<DestinationPolicy>,
}

/// A `BackendPolicy` attached to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicy {
    /// The BackendPolicy's `namespace/name`, named in every refusal it decides.
    pub name: String,
    /// Its spec.
    pub spec: crate::resource::BackendPolicySpec,
}

impl Destination {
    /// The policy governing calls to `port`, if any.
    pub fn policy(&self, port: u16) -> Option<&DestinationPolicy> {
        let scoped = self
            .policies
            .iter()
            .find(|p| p.spec.target_ref.port == Some(port));
        scoped.or_else(|| {
            self.policies
                .iter()
                .find(|p| p.spec.target_ref.port.is_none())
        })
    }
}

/// The rules of one HTTPRoute attached to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRoute {
    /// The HTTPRoute's `namespace/name`, for diagnostics.
    #[serde(default)]
    pub name: String,
    /// Only requests to this service port; default every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only requests whose host (`Host` or `:authority`, port ignored) is one of these
    /// (`*.` wildcard: any subdomain); default any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Gateway API rules: the most specific fitting match wins, the order written breaks
    /// ties (as the order of `routes` does between routes).
    pub rules: Vec<crate::resource::RouteRule>,
}

/// A peer proxy that serves a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The peer proxy's inbound address.
    pub address: SocketAddr,
    /// The SPIFFE ID the peer must present (`spiffe://<td>/ns/<ns>/sa/<account>`); set by
    /// the control plane. Without it, traffic to this endpoint is plaintext, which only a
    /// proxy running without a control plane allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Limits that protect the proxy and applications from abusive HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes; beyond it: 431.
    /// Default 65536.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request; beyond it: 431. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest request line in bytes; beyond it: 414. Default 8192.
    #[serde(default = "default_max_request_line")]
    pub max_request_line: usize,
    /// Most connections the proxy holds open at once from its clients, on every listener
    /// but the admin one together (the application's outbound connections and peers'
    /// inbound ones); beyond it a new connection is accepted and closed at once. Default
    /// 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most requests the proxy handles at once, both directions together, from arrival to
    /// the response head; beyond it: 503 `overloaded`. Default 10000.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Most bytes of request bodies the proxy holds at once to send again (retries) or to
    /// copy (mirrors); beyond it a request is sent without a held copy (no retry, no
    /// mirror). Default 67108864 (64 MiB).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Longest an HTTP/1 client may take to send a request head, counted from when the
    /// proxy waits for one (so an idle keep-alive connection is closed after it too).
    /// Default `30s`.
    #[serde(default = "default_header_timeout", with = "crate::duration")]
    pub header_timeout: Duration,
    /// Longest a peer may take to start and finish its TLS handshake on the inbound
    /// listener. Default `10s`.
    #[serde(default = "default_handshake_timeout", with = "crate::duration")]
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_request_line: default_max_request_line(),
            max_connections: default_max_connections(),
            max_requests: default_max_requests(),
            max_buffered_bytes: default_max_buffered_bytes(),
            header_timeout: default_header_timeout(),
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}
fn default_inbound_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4143))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4191))
}
fn default_app_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_detect_timeout() -> Duration {
    Duration::from_millis(300)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_request_line() -> usize {
    8 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_requests() -> usize {
    10_000
}
fn default_max_buffered_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ProxyConfig {
    /// Parses YAML and validates it; `what` names the source in error messages.
    pub fn from_yaml(text: &str, what: &str) -> Result<Self, ModelError> {
        let config: ProxyConfig =
            serde_yaml_ng::from_str(text).map_err(|source| ModelError::Parse {
                what: what.to_string(),
                source,
            })?;
        config.validate(what)?;
        Ok(config)
    }

    /// The configuration as YAML, defaults included; [`ProxyConfig::from_yaml`] reads it back.
    pub fn to_yaml(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// Checks every rule and reports every problem at once.
    pub fn validate(&self, what: &str) -> Result<(), ModelError> {
        self.validate_since(what, None)
    }

    /// [`Self::validate`], taking the destinations `previous` (a configuration that
    /// passed) holds as they are: those shared with it are checked only for being listed
    /// once. What a change costs then grows with what changed, not with what is held.
    pub fn validate_since(
        &self,
        what: &str,
        previous: Option<&ProxyConfig>,
    ) -> Result<(), ModelError> {
        let checked: HashSet<*const Destination> = previous
            .map(|p| p.destinations.iter().map(Arc::as_ptr).collect())
            .unwrap_or_default();
        let mut problems = Vec::new();
        let mut bad = |path: String, value: String, expected: &str| {
            problems.push(FieldError {
                path,
                value,
                expected: expected.to_string(),
            })
        };
        for (path, name) in [
            ("workload.name", &self.workload.name),
            ("workload.service", &self.workload.service),
            ("workload.namespace", &self.workload.namespace),
        ] {
            if !is_dns_label(name) {
                bad(path.into(), name.clone(), DNS_LABEL);
            }
        }
        check_ports("inbound.ports", &self.inbound.ports, &mut bad);
        if let Some(l) = &self.inbound.limit {
            if !(1..=1_000_000).contains(&l.max_concurrent_requests) {
                let v = l.max_concurrent_requests.to_string();
                bad(
                    "inbound.limit.maxConcurrentRequests".into(),
                    v,
                    "1 to 1000000",
                );
            }
            if l.max_pending_requests > 1_000_000 {
                let v = l.max_pending_requests.to_string();
                bad("inbound.limit.maxPendingRequests".into(), v, "0 to 1000000");
            }
            let adaptive = l.adaptive.as_ref();
            for (field, value, expected) in adaptive
                .map(|a| a.problems(l.max_concurrent_requests))
                .unwrap_or_default()
            {
                bad(format!("inbound.limit.adaptive.{field}"), value, expected);
            }
        }
        let (limits, l) = ("limits", &self.limits);
        if !(1024..=1 << 20).contains(&l.max_header_bytes) {
            let v = l.max_header_bytes.to_string();
            bad(format!("{limits}.maxHeaderBytes"), v, "1024 to 1048576");
        }
        if !(1..=1000).contains(&l.max_headers) {
            bad(
                format!("{limits}.maxHeaders"),
                l.max_headers.to_string(),
                "1 to 1000",
            );
        }
        if !(64..=l.max_header_bytes).contains(&l.max_request_line) {
            let v = l.max_request_line.to_string();
            bad(
                format!("{limits}.maxRequestLine"),
                v,
                "64 up to limits.maxHeaderBytes",
            );
        }
        for (field, value, range) in [
            ("maxConnections", l.max_connections, 16..=1_000_000),
            ("maxRequests", l.max_requests, 16..=1_000_000),
            ("maxBufferedBytes", l.max_buffered_bytes, 0..=(64 << 30)),
        ] {
            if !range.contains(&value) {
                let expected = format!("{} to {}", range.start(), range.end());
                bad(format!("{limits}.{field}"), value.to_string(), &expected);
            }
        }
        for (field, value) in [
            ("headerTimeout", l.header_timeout),
            ("handshakeTimeout", l.handshake_timeout),
        ] {
            if value < Duration::from_millis(100) || value > Duration::from_secs(300) {
                let v = crate::duration::format(value);
                bad(format!("{limits}.{field}"), v, "100ms to 300s");
            }
        }
        if self.detect_timeout.is_zero() || self.detect_timeout > Duration::from_secs(10) {
            let v = crate::duration::format(self.detect_timeout);
            bad("detectTimeout".into(), v, "more than 0 and at most 10s");
        }
        let interval = self.telemetry.summary_interval;
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
            let v = crate::duration::format(interval);
            bad("telemetry.summaryInterval".into(), v, "100ms to 60s");
        }
        let idle = self.telemetry.idle_series;
        if idle < Duration::from_secs(1)
            || idle > Duration::from_secs(24 * 3600)
            || idle < interval.saturating_mul(2)
        {
            let v = crate::duration::format(idle);
            bad(
                "telemetry.idleSeries".into(),
                v,
                "1s to 24h, and at least twice telemetry.summaryInterval",
            );
        }
        if let Some(dns) = &self.dns {
            for (field, value, expected) in dns.problems() {
                bad(format!("dns.{field}"), value, expected);
            }
        }
        let mut p = crate::resource::validate::Problems::new();
        self.telemetry.tracing.validate("telemetry.tracing", &mut p);
        for e in p.into_vec() {
            bad(e.path, e.value, &e.expected);
        }
        for (i, policy) in self.authorization.policies.iter().enumerate() {
            let at = format!("authorization.policies[{i}]");
            for (field, name) in [("namespace", &policy.namespace), ("name", &policy.name)] {
                if !is_dns_label(name) {
                    bad(format!("{at}.{field}"), name.clone(), DNS_LABEL);
                }
            }
            let mut p = crate::resource::validate::Problems::new();
            policy.spec.validate(&mut p);
            for e in p.into_vec() {
                bad(format!("{at}.{}", e.path), e.value, &e.expected);
            }
        }
        let mut seen = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = || format!("destinations[{i}]");
            if !seen.insert((d.service.as_str(), d.namespace.as_str())) {
                let v = d.service.clone();
                bad(
                    format!("{}.service", at()),
                    v,
                    "a service listed once per namespace",
                );
            }
            if checked.contains(&Arc::as_ptr(d)) {
                continue;
            }
            let at = at();
            if !is_dns_label(&d.service) {
                bad(format!("{at}.service"), d.service.clone(), DNS_LABEL);
            }
            if !is_dns_label(&d.namespace) {
                bad(format!("{at}.namespace"), d.namespace.clone(), DNS_LABEL);
            }
            if d.ports.is_empty() {
                bad(format!("{at}.ports"), "[]".into(), "at least one port");
            }
            check_ports(&format!("{at}.ports"), &d.ports, &mut bad);
            let mut p = crate::resource::validate::Problems::new();
            for (j, route) in d.routes.iter().enumerate() {
                for (k, rule) in route.rules.iter().enumerate() {
                    rule.validate(&mut p, &format!("routes[{j}].rules[{k}]"));
                }
            }
            for (j, policy) in d.policies.iter().enumerate() {
                let mut q = crate::resource::validate::Problems::new();
                policy.spec.validate(&mut q);
                for e in q.into_vec() {
                    p.add(format!("policies[{j}].{}", e.path), e.value, &e.expected);
                }
            }
            for e in p.into_vec() {
                bad(format!("{at}.{}", e.path), e.value, &e.expected);
            }
            if !d.identities.is_empty() {
                for (j, e) in d.endpoints.iter().enumerate() {
                    let id = e.identity.as_deref().unwrap_or_default();
                    if !d.identities.iter().any(|a| a == id) {
                        bad(
                            format!("{at}.endpoints[{j}].identity"),
                            id.to_owned(),
                            &format!(
                                "one of the identities service {} admits ({})",
                                d.service,
                                d.identities.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        for (i, u) in self.outbound.upstreams.iter().enumerate() {
            let at = format!("outbound.upstreams[{i}]");
            let named = match u.service.split_once('.') {
                Some((name, namespace)) => is_dns_label(name) && is_dns_label(namespace),
                None => is_dns_label(&u.service),
            };
            if !named {
                bad(
                    format!("{at}.service"),
                    u.service.clone(),
                    "a service name, or name.namespace, each a DNS label (lowercase letters, digits and '-', at most 63)",
                );
            }
            if u.port == 0 {
                bad(format!("{at}.port"), "0".into(), "1 to 65535");
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Invalid {
                what: what.to_string(),
                problems,
            })
        }
    }

    /// Upstream listeners whose service (or port) no destination provides yet. Not an
    /// error: under a control plane, destinations arrive (and may go) at run time, and a
    /// connection to such a listener is refused with a message naming the service.
    pub fn warnings(&self) -> Vec<String> {
        self.outbound
            .upstreams
            .iter()
            .filter_map(|u| match self.destination(&u.service) {
                None => Some(format!(
                    "upstream {} leads to service {:?}, which no destination provides yet",
                    u.listen, u.service
                )),
                Some(d) if d.port(u.port).is_none() => Some(format!(
                    "upstream {} leads to port {} of {:?}, which has no such port",
                    u.listen, u.port, u.service
                )),
                Some(_) => None,
            })
            .collect()
    }

    /// Finds a destination by `service` or `service.namespace`.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        let (service, namespace) = match name.split_once('.') {
            Some((s, rest)) => (s, rest.split('.').next().unwrap_or("default")),
            None => (name, ""),
        };
        self.destinations
            .iter()
            .find(|d| d.service == service && (namespace.is_empty() || d.namespace == namespace))
            .map(|d| &**d)
    }

    /// The declared protocol of an application port, if the port is served.
    pub fn inbound_port(&self, port: u16) -> Option<PortSpec> {
        self.inbound.ports.iter().find(|p| p.port == port).copied()
    }
}

impl Destination {
    /// The port spec for `port`, if the service has that port.
    pub fn port(&self, port: u16) -> Option<PortSpec> {
        self.ports.iter().find(|p| p.port == port).copied()
    }
}

const DNS_LABEL: &str =
    "a DNS label: 1-63 lowercase letters, digits or '-', starting and ending alphanumeric";

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn check_ports(at: &str, ports: &[PortSpec], bad: &mut impl FnMut(String, String, &str)) {
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        if p.port == 0 {
            bad(format!("{at}[{i}].port"), "0".into(), "1 to 65535");
        }
        if !seen.insert(p.port) {
            bad(
                format!("{at}[{i}].port"),
                p.port.to_string(),
                "each port listed once",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
workload: {name: web-1, service: web}
inbound: {ports: [{port: 8080}]}
";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = ProxyConfig::from_yaml(MINIMAL, "test").unwrap();
        assert_eq!(c.workload.namespace, "default");
        assert_eq!(c.inbound.listen, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.inbound.ports[0].protocol, Protocol::Detect);
        assert_eq!(c.admin.listen, "127.0.0.1:4191".parse().unwrap());
        assert_eq!(c.detect_timeout, Duration::from_millis(300));
        assert_eq!(c.limits.max_headers, 100);
        // Defaults are visible when printed back.
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"detectTimeout\":\"300ms\""), "{json}");
    }

    #[test]
    fn destinations_shared_with_a_passed_configuration_are_not_checked_again() {
        let yaml = format!(
            "{MINIMAL}destinations:\n- {{service: api, ports: [{{port: 80}}], endpoints: []}}\n- {{service: db, ports: [{{port: 5432}}], endpoints: []}}\n"
        );
        let held = ProxyConfig::from_yaml(&yaml, "test").unwrap();
        let mut next = held.clone();
        // Shared: taken as checked, though a copy of it would not pass now.
        Arc::make_mut(&mut next.destinations[0]).ports.clear();
        let broken = next.destinations[0].clone();
        let mut shared = held.clone();
        shared.destinations[0] = broken.clone();
        let passed = ProxyConfig {
            destinations: vec![broken.clone()],
            ..held.clone()
        };
        shared.validate_since("next", Some(&passed)).unwrap();
        let err = next.validate("next").unwrap_err().to_string();
        assert!(err.contains("destinations[0].ports"), "{err}");
        // New or changed: checked.
        let err = next
            .validate_since("next", Some(&held))
            .unwrap_err()
            .to_string();
        assert!(err.contains("destinations[0].ports"), "{err}");
        // Listed twice: refused, shared or not.
        let mut twice = held.clone();
        twice.destinations.push(held.destinations[1].clone());
        let err = twice
            .validate_since("next", Some(&held))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("destinations[2].service: \"db\"")
                && err.contains("a service listed once per namespace"),
            "{err}"
        );
    }

    #[test]
    fn authorization_is_validated_like_an_applied_policy() {
        let ok = format!(
            "{MINIMAL}authorization:\n  default: deny\n  policies:\n  - namespace: default\n    name: web\n    spec: {{targetRef: {{name: web}}, rules: [{{from: [{{unauthenticated: true}}], to: [{{paths: ['/open/*']}}]}}]}}\n"
        );
        let c = ProxyConfig::from_yaml(&ok, "test").unwrap();
        assert_eq!(c.authorization.default, crate::resource::PolicyAction::Deny);
        assert_eq!(c.authorization.policies.len(), 1);
        let bad = format!(
            "{MINIMAL}authorization:\n  policies:\n  - namespace: Default\n    name: web\n    spec: {{targetRef: {{name: web}}, rules: [{{from: [{{}}], to: [{{paths: [menu]}}]}}]}}\n"
        );
        let err = ProxyConfig::from_yaml(&bad, "test")
            .unwrap_err()
            .to_string();
        for want in [
            "authorization.policies[0].namespace: \"Default\"",
            "authorization.policies[0].spec.rules[0].from[0]",
            "authorization.policies[0].spec.rules[0].to[0].paths[0]: \"menu\"",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
        let unknown = format!("{MINIMAL}authorization: {{defaults: deny}}\n");
        let err = ProxyConfig::from_yaml(&unknown, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `defaults`"), "{err}");
    }

    #[test]
    fn yaml_round_trips() {
        let c = ProxyConfig::from_yaml(MINIMAL, "test").unwrap();
        assert_eq!(ProxyConfig::from_yaml(&c.to_yaml(), "again").unwrap(), c);
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let text = format!("{MINIMAL}\nbogus: 1\n");
        let err = ProxyConfig::from_yaml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "
workload: {name: Web_1, service: web}
inbound: {ports: [{port: 0}, {port: 0}]}
destinations:
  - {service: api, ports: [], endpoints: []}
outbound:
  upstreams: [{listen: '127.0.0.1:15001', service: Nope, port: 80}]
detectTimeout: 0ms
telemetry: {summaryInterval: 0ms, idleSeries: 500ms}
";
        let err = ProxyConfig::from_yaml(text, "test").unwrap_err();
        let ModelError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err}")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "workload.name",
                "inbound.ports[0].port",
                "inbound.ports[1].port",
                "inbound.ports[1].port",
                "detectTimeout",
                "telemetry.summaryInterval",
                "telemetry.idleSeries",
                "destinations[0].ports",
                "outbound.upstreams[0].service",
            ]
        );
        assert!(err.to_string().contains("\"Web_1\" is not accepted"));
    }

    #[test]
    fn idle_series_outlive_two_summaries() {
        let with = |t: &str| format!("{MINIMAL}telemetry: {{{t}}}\n");
        let config = ProxyConfig::from_yaml(&with(""), "test").unwrap();
        assert_eq!(config.telemetry.idle_series, Duration::from_secs(600));
        let ok = "summaryInterval: 1s, idleSeries: 2s";
        let config = ProxyConfig::from_yaml(&with(ok), "test").unwrap();
        assert_eq!(config.telemetry.idle_series, Duration::from_secs(2));
        for bad in [
            "idleSeries: 9s",
            "idleSeries: 25h",
            "summaryInterval: 1s, idleSeries: 900ms",
        ] {
            let err = ProxyConfig::from_yaml(&with(bad), "test")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("telemetry.idleSeries")
                    && err.contains("at least twice telemetry.summaryInterval"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_upstream_names_its_service_with_or_without_a_namespace() {
        let with = |service: &str| {
            format!("{MINIMAL}outbound: {{upstreams: [{{listen: '127.0.0.1:15001', service: '{service}', port: 80}}]}}\n")
        };
        for ok in ["api", "api.shop"] {
            assert!(ProxyConfig::from_yaml(&with(ok), "test").is_ok(), "{ok}");
        }
        for bad in ["api.shop.svc", "api.", ".shop", "Api.shop"] {
            let err = ProxyConfig::from_yaml(&with(bad), "test")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected a service name, or name.namespace"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn upstreams_to_unknown_services_are_warnings_not_errors() {
        let text = format!("{MINIMAL}outbound: {{upstreams: [{{listen: '127.0.0.1:15001', service: api, port: 80}}]}}\n");
        let c = ProxyConfig::from_yaml(&text, "test").unwrap();
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("no destination provides yet"),
            "{warnings:?}"
        );
    }

    #[test]
    fn destination_lookup_accepts_namespace_suffix() {
        let text = format!(
            "{MINIMAL}destinations: [{{service: api, namespace: shop, ports: [{{port: 80}}], endpoints: []}}]"
        );
        let c = ProxyConfig::from_yaml(&text, "test").unwrap();
        assert!(c.destination("api").is_some());
        assert!(c.destination("api.shop").is_some());
        assert!(c.destination("api.shop.svc.cluster.local").is_some());
        assert!(c.destination("api.other").is_none());
        assert!(c.destination("web").is_none());
    }

    #[test]
    fn dns_is_off_unless_set_and_gets_defaults() {
        let c = ProxyConfig::from_yaml(MINIMAL, "test").unwrap();
        assert_eq!(c.dns, None);
        assert!(!c.to_yaml().contains("dns"), "{}", c.to_yaml());
        let c = ProxyConfig::from_yaml(&format!("{MINIMAL}dns: {{}}\n"), "test").unwrap();
        let dns = c.dns.clone().unwrap();
        assert_eq!(dns, DnsConfig::default());
        assert_eq!(dns.listen, "127.0.0.1:15053".parse().unwrap());
        assert_eq!(
            (dns.domain.as_str(), dns.ttl),
            ("cluster.local", Duration::from_secs(5))
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"dns\":{\"listen\":\"127.0.0.1:15053\",\"upstreams\":[],\"domain\":\"cluster.local\",\"ttl\":\"5s\"}"), "{json}");
        assert_eq!(ProxyConfig::from_yaml(&c.to_yaml(), "again").unwrap(), c);
    }

    #[test]
    fn bad_dns_settings_say_what_is_accepted() {
        let text = format!(
            "{MINIMAL}dns: {{listen: '0.0.0.0:53', upstreams: ['10.0.0.1:53', '127.0.0.1:53', '10.0.0.2:0'], domain: Cluster_Local, ttl: 2h}}\n"
        );
        let err = ProxyConfig::from_yaml(&text, "test").unwrap_err();
        let ModelError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err}")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dns.domain",
                "dns.ttl",
                "dns.upstreams[1]",
                "dns.upstreams[2]"
            ]
        );
        let text = err.to_string();
        for want in [
            "dns.domain: \"Cluster_Local\" is not accepted; expected a DNS-1123 subdomain",
            "dns.ttl: \"2h\" is not accepted; expected 0s to 1h, in whole seconds",
            "dns.upstreams[1]: \"127.0.0.1:53\" is not accepted; expected a resolver other than the proxy itself",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        for ok in ["ttl: 0s", "ttl: 1h", "domain: mesh.example.org"] {
            let text = format!("{MINIMAL}dns: {{{ok}}}\n");
            ProxyConfig::from_yaml(&text, "test").unwrap();
        }
        let text = format!("{MINIMAL}dns: {{ttl: 1500ms}}\n");
        let err = ProxyConfig::from_yaml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns.ttl: \"1500ms\""), "{err}");
        let text = format!("{MINIMAL}dns: {{domains: x}}\n");
        let err = ProxyConfig::from_yaml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `domains`"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_accepted_form() {
        let text = format!("{MINIMAL}drainTimeout: soon\n");
        let err = ProxyConfig::from_yaml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a whole number followed by ms"),
            "{err}"
        );
    }
}
