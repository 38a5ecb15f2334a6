//! Real backends for Skein's end-to-end tests: an HTTP/1.1 + HTTP/2 echo server with
//! streaming, trailers, slow, status and WebSocket routes ([`HttpBackend`]), a gRPC Echo
//! service ([`GrpcBackend`]), and raw TCP echo and banner servers ([`TcpEcho`],
//! [`BannerServer`]), and applications that reset, hang or crash mid-response
//! ([`faulty::FaultyApp`]). Each binds a real socket on the address a test gives it (tests use
//! distinct `127.0.0.x` addresses) and stops everything it runs when its handle is dropped.

pub mod client;
pub mod control;
pub mod etcd;
pub mod faulty;
pub mod grpc;
pub mod h2raw;
pub mod http;
pub mod mesh;
pub mod process;
pub mod python;
mod server;
pub mod tcp;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Once;

pub use grpc::{pb, GrpcBackend};
pub use http::{pattern_bytes, HttpBackend, SeenRequest};
pub use mesh::{Mesh, MeshSpec, Side};
pub use process::ProxyProcess;
pub use tcp::{BannerServer, TcpEcho};

/// Installs a `tracing` subscriber that writes through the test harness (so output is shown
/// only for failing tests) and filters with `RUST_LOG` (default: errors only). Safe to call
/// from every test; only the first call does anything, and an already installed global
/// subscriber is left in place.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        // Err only means another subscriber is already installed, which is fine.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The loopback address `127.0.0.n`, for giving each test workload its own address.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}
