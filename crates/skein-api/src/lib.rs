//! The gRPC API between `skein control` and `skein proxy`: a proxy registers its workload
//! on a bidirectional stream, receives versioned configuration snapshots scoped to it, and
//! acknowledges (or refuses, with the reason) each one. [`convert`] turns resources into
//! their wire messages and back.

pub mod convert;

/// Generated types and tonic client/server for `skein.control.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("skein.control.v1");
}
