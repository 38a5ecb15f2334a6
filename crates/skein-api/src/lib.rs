//! The gRPC API between `skein control` and `skein proxy`: a proxy registers its workload
//! on a bidirectional stream, receives versioned configuration snapshots scoped to it, and
//! acknowledges (or refuses, with the reason) each one. [`convert`] turns resources into
//! their wire messages and back. [`json_body`] writes the admin endpoints' JSON answers
//! while they are sent.

pub mod convert;
pub mod json_body;
pub mod listen;

/// Generated packages, nested as their protobuf packages are (generated code names
/// another package by its relative path).
#[allow(missing_docs, clippy::all)]
pub mod skein {
    /// `skein.control`.
    pub mod control {
        /// Types and tonic client/server for `skein.control.v1`.
        pub mod v1 {
            tonic::include_proto!("skein.control.v1");
        }
    }
}

pub use skein::control::v1;

/// The OpenTelemetry protocol's trace signal (OTLP 1.10.0, vendored unchanged under
/// `proto/opentelemetry`): what proxies export and the control plane receives.
#[allow(missing_docs, clippy::all)]
pub mod opentelemetry {
    /// `opentelemetry.proto`.
    pub mod proto {
        /// `opentelemetry.proto.common.v1`: attributes and values.
        pub mod common {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        /// `opentelemetry.proto.resource.v1`: what emitted the spans.
        pub mod resource {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        /// `opentelemetry.proto.trace.v1`: spans.
        pub mod trace {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        /// `opentelemetry.proto.collector.trace.v1`: the `TraceService/Export` RPC.
        pub mod collector {
            /// `opentelemetry.proto.collector.trace`.
            pub mod trace {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

pub use opentelemetry::proto as otlp;
