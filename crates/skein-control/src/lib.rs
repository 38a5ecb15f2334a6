//! Skein's control plane: it holds the desired state of the mesh (resources), keeps it in
//! a persistent store (embedded by default, etcd for several replicas), serves it to the
//! CLI over an HTTP API, runs the mesh CA (join tokens, workload certificates, root
//! rotation), pushes to each proxy, over mutual TLS, the configuration it needs, and
//! drives canary rollouts from the telemetry proxies report.

pub mod api;
pub mod canary;
pub mod catalog;
pub mod grpc;
pub mod limits;
pub mod otlp;
pub mod pki;
pub mod policy_check;
pub mod push;
pub mod registrar;
pub mod registry;
pub mod replicas;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod tap;
pub mod telemetry;
pub mod tls_incoming;
pub mod token;
pub mod ui;
pub mod vip;

/// CIDR ranges (`--workload-cidr`), re-exported so the binary names the same type.
pub use ipnet::IpNet;
