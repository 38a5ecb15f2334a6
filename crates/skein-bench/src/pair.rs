//! `skein-bench pair`: the skein pair of the benchmark, held up until Ctrl-C, for
//! profiling by hand.
//!
//! The same pair as the `skein` setup ([`crate::setups::skein`]: a control plane, join
//! tokens, mutual TLS 1.3, deny by default with one AuthorizationPolicy per Service,
//! telemetry and tracing at their defaults) on addresses of its own (outbound proxy
//! 127.0.0.176, inbound proxy, backend and sink 127.0.0.175, control plane 127.0.0.174).
//! It prints where to send load and the proxies' process ids, for `perf stat -p`,
//! `perf record -p` or `strace -c -p` while a load generator runs; Ctrl-C (or SIGTERM)
//! stops every process it started and removes its scratch directory.

use crate::setups::{self, ip, Env, Kind, SkeinPair};
use anyhow::Context;

/// The pair held up: the skein setup's, on its own addresses.
pub(crate) const PAIR: SkeinPair = SkeinPair {
    kind: Kind::Skein,
    label: "skein (pair)",
    tag: "pair",
    outbound: ip(176),
    inbound: ip(175),
    control: ip(174),
    telemetry_requests: true,
    tracing: true,
    under_callgrind: false,
};

/// Starts the pair, prints its addresses and process ids, and waits for Ctrl-C.
pub async fn hold() -> anyhow::Result<()> {
    let root = crate::run::workspace_root()?;
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let env = Env::scratch(&me, &crate::run::skein_binary(&root)?)?;
    eprintln!(
        "skein-bench: starting the skein pair with {} (scratch dir {})",
        env.skein.display(),
        env.dir.path().display()
    );
    let mut setup = setups::skein(&env, PAIR).await?;
    let [outbound, inbound] = [&setup.proxies[0], &setup.proxies[1]];
    println!("HTTP/1.1   http://{}/  (Host: bench)", setup.http);
    if let Ok(h2) = &setup.h2 {
        println!("HTTP/2     http://{h2}/  (prior knowledge)");
    }
    if let Ok(grpc) = &setup.grpc {
        println!("gRPC       http://{grpc}/bench.Bench/Call  (unary, prior knowledge)");
    }
    if let Ok(tcp) = &setup.tcp {
        println!("opaque TCP {tcp}  (a sink that discards)");
    }
    println!("outbound proxy pid {}", outbound.pid());
    println!("inbound proxy pid  {}", inbound.pid());
    println!(
        "e.g. h2load --h1 -c8 -t1 -n200000 http://{}/ while perf stat -p {},{} runs; \
         Ctrl-C stops the pair",
        setup.http,
        outbound.pid(),
        inbound.pid()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => setup.check_alive()?,
        }
    }
    eprintln!("skein-bench: stopping the pair");
    Ok(())
}
