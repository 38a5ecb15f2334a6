//! Skein's control plane: it holds the desired state of the mesh (resources), keeps it in
//! a persistent store (embedded by default, etcd for several replicas), serves it to the
//! CLI over an HTTP API, and pushes to each proxy the configuration it needs.

pub mod api;
pub mod grpc;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod token;
