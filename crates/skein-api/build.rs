//! Compiles the control-plane API and the vendored OTLP trace definitions with protox
//! (pure Rust: no `protoc` to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "skein/control/v1/control.proto",
            "opentelemetry/proto/collector/trace/v1/trace_service.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
