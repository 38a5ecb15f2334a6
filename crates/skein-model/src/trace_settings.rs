//! How proxies trace requests: the share of new traces they sample and the OTLP collector
//! they export spans to. The same shape is a `Mesh`'s `spec.tracing` (sent to every
//! proxy) and a standalone proxy's `telemetry.tracing`.
//!
//! Requests the mesh fails (an error the mesh answered, a denial, a timeout) are recorded
//! whatever the ratio; a caller's own sampling decision (`traceparent` flags, B3
//! `sampled`) is followed.

use crate::resource::validate::Problems;
use serde::{Deserialize, Serialize};

/// `tracing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// Whether proxies trace at all. Default `true`; `false` leaves trace headers as
    /// the application sent them and records no span, not even for failed requests.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The percentage of new traces (requests that arrive without a caller's decision)
    /// recorded: 0 to 100, fractions allowed. Default 1.
    #[serde(default = "default_sampling_percent")]
    pub sampling_percent: f64,
    /// An OTLP/gRPC collector (Jaeger, Tempo, an OpenTelemetry Collector) that proxies
    /// send spans to as well, as `http://host:port`. Default none: spans go to the control
    /// plane only (`skein trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
}

// NaN is refused by validation; a spec that passed it compares as a total order would.
impl Eq for TracingSpec {}

impl Default for TracingSpec {
    fn default() -> Self {
        TracingSpec {
            enabled: true,
            sampling_percent: default_sampling_percent(),
            collector: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_sampling_percent() -> f64 {
    1.0
}

/// What `samplingPercent` accepts.
pub const SAMPLING_FORM: &str = "a percentage from 0 to 100 (e.g. 1 or 0.5)";

/// What `collector` accepts.
pub const COLLECTOR_FORM: &str =
    "an OTLP/gRPC endpoint http://host:port (TLS to collectors is not supported: run the collector beside the proxy or control plane, or reach it through the mesh)";

impl TracingSpec {
    /// Checks the spec; `at` is its path (`spec.tracing`, `telemetry.tracing`).
    pub(crate) fn validate(&self, at: &str, p: &mut Problems) {
        p.check(
            (0.0..=100.0).contains(&self.sampling_percent),
            format!("{at}.samplingPercent"),
            self.sampling_percent,
            SAMPLING_FORM,
        );
        if let Some(c) = &self.collector {
            p.check(
                collector_authority(c).is_some(),
                format!("{at}.collector"),
                c,
                COLLECTOR_FORM,
            );
        }
    }

    /// The sampling ratio, 0 to 1.
    pub fn ratio(&self) -> f64 {
        (self.sampling_percent / 100.0).clamp(0.0, 1.0)
    }
}

/// `host:port` of an `http://host:port` collector address (a trailing `/` allowed).
pub fn collector_authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && (crate::resource::validate::is_hostname(host)
            || host.parse::<std::net::IpAddr>().is_ok()
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    (host_ok && port_ok).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: TracingSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate("spec.tracing", &mut p);
        p.into_vec().into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_are_one_percent_and_no_collector() {
        let spec: TracingSpec = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(spec, TracingSpec::default());
        assert_eq!(spec.ratio(), 0.01);
        assert!(problems("{samplingPercent: 100, collector: 'http://127.0.0.1:4317'}").is_empty());
        assert!(
            problems("{samplingPercent: 0.5, collector: 'http://otel.observability:4317/'}")
                .is_empty()
        );
        assert!(problems("{collector: 'http://[::1]:4317'}").is_empty());
    }

    #[test]
    fn bad_ratios_and_collectors_are_refused_saying_what_is_accepted() {
        let p = problems("{samplingPercent: 101}");
        assert!(
            p[0].contains("spec.tracing.samplingPercent") && p[0].contains("0 to 100"),
            "{p:?}"
        );
        assert_eq!(problems("{samplingPercent: -1}").len(), 1);
        assert_eq!(problems("{samplingPercent: .nan}").len(), 1);
        for bad in [
            "https://collector:4317",
            "collector:4317",
            "http://collector",
            "http://collector:0",
            "http://:4317",
            "http://collector:4317/v1/traces",
            "http://user@collector:4317",
        ] {
            let p = problems(&format!("{{collector: '{bad}'}}"));
            assert!(
                p.len() == 1 && p[0].contains("http://host:port"),
                "{bad}: {p:?}"
            );
        }
    }
}
