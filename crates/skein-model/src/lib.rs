//! Skein's shared data model: pure data, parsing, validation and defaults, no I/O.
//!
//! The proxy's configuration lives here so that the standalone YAML file
//! (`skein proxy --config FILE`) and, later, the control plane's snapshots describe a
//! proxy with the same structures. The control plane's resources (`Mesh`, `Service`,
//! `HTTPRoute`, …) live in [`resource`].

pub mod authz;
pub mod duration;
pub mod latency;
pub mod proxy;
pub mod resource;
pub mod time;
pub mod trace_settings;

pub use proxy::{
    AdminConfig, AppLimit, Destination, DestinationPolicy, DestinationRoute, Endpoint,
    InboundConfig, Limits, OutboundConfig, PortSpec, Protocol, ProxyConfig, TelemetryConfig,
    Upstream, WorkloadInfo,
};
pub use resource::{parse_documents, Kind, Resource, ResourceKey, ResourceProblem};
pub use trace_settings::{TracingSpec, SAMPLING_FORM};

/// A problem found while reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The text is not YAML of the expected shape (unknown field, wrong type, …).
    #[error("cannot parse {what}: {source}")]
    Parse {
        /// What was being parsed (a file name or "proxy config").
        what: String,
        /// The parser's message, which names the line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The document parsed but breaks one or more rules; every problem is listed.
    #[error("invalid {what}:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// What was validated.
        what: String,
        /// Each broken rule, naming the field path, the bad value and what is accepted.
        problems: Vec<FieldError>,
    },
    /// Resource documents were refused; every problem of every document is listed, each
    /// naming its resource.
    #[error("invalid {origin} ({} problem{}):\n{}",
        .problems.len(),
        if .problems.len() == 1 { "" } else { "s" },
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Resources {
        /// What was read: a file name, `the request`, or the resource itself.
        origin: String,
        /// Each problem, naming the resource, the field path, the value and what is
        /// accepted.
        problems: Vec<ResourceProblem>,
    },
    /// A word that names no kind of resource (`skein get WORD`).
    #[error("unknown resource kind {word:?}; accepted: {}", Kind::accepted_words())]
    UnknownKind {
        /// The word as given.
        word: String,
    },
}

/// One broken validation rule: the field path, the offending value and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `outbound.upstreams[0].listen`.
    pub path: String,
    /// The value that was refused, as written.
    pub value: String,
    /// What the field accepts.
    pub expected: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?} is not accepted; expected {}",
            self.path, self.value, self.expected
        )
    }
}
