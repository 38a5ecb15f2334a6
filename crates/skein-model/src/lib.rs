//! Skein's shared data model: pure data, parsing, validation and defaults, no I/O.
//!
//! The proxy's configuration lives here so that the standalone YAML file
//! (`skein proxy --config FILE`) and, later, the control plane's snapshots describe a
//! proxy with the same structures.

pub mod duration;
pub mod proxy;

pub use proxy::{
    AdminConfig, Destination, Endpoint, InboundConfig, Limits, OutboundConfig, PortSpec, Protocol,
    ProxyConfig, Upstream, WorkloadInfo,
};

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
}

/// One broken validation rule: the field path, the offending value and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
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
