//! Compiles the etcd v3 API subset in `proto/etcd/` with protox (pure Rust, so no `protoc`
//! is needed) and generates tonic clients for etcd's KV, Watch and Lease services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd");
    let fds = protox::compile(["etcd/rpc.proto", "etcd/kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
