//! Generated types and tonic clients for the subset of etcd's v3 gRPC API declared in
//! `proto/etcd/` (see `build.rs`). The two packages are siblings here because the generated
//! `etcdserverpb` code names `super::mvccpb`.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod mvccpb {
    //! etcd's storage records: `KeyValue` and watch `Event`.
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    //! etcd's KV, Watch and Lease services with their messages.
    tonic::include_proto!("etcdserverpb");
}
