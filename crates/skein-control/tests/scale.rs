//! Scale smoke test: 500 simulated proxies — each with its own certificate (one join of a
//! fleet token) and its own mutual-TLS connection carrying one watch stream of the
//! generated gRPC client — against one in-process control plane with the embedded store. Measures (and prints) how long the first snapshots take, how long one
//! change takes to reach every stream, and the process's memory; asserts only correctness.

use futures_util::StreamExt;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_api::v1::{proxy_message, Ack, ProxyMessage, Register};
use skein_control::server::{ControlOptions, RunningControl};
use skein_model::resource::parse_documents;
use skein_testkit::control::{eventually, self_rss_kib, TempDir};
use skein_testkit::loopback;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;

mod common;

const STREAMS: usize = 500;
/// The service every simulated proxy receives once it is applied.
const TARGET: &str = "scale-target";

/// What one simulated proxy has seen.
#[derive(Default)]
struct Seen {
    /// Snapshots received.
    snapshots: AtomicUsize,
    /// Version of the last snapshot that listed [`TARGET`] (0: none yet).
    target_version: AtomicU64,
}

/// One simulated proxy: registers as `sim-<i>`, acknowledges every snapshot.
async fn simulate(i: usize, channel: Channel, seen: Arc<Seen>) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel::<ProxyMessage>(4);
    let register = Register {
        workload: format!("sim-{i}"),
        namespace: "default".into(),
        service: "sim".into(),
        labels: Default::default(),
        address: "127.0.0.133".into(),
        inbound_port: 20_000 + i as u32,
        app_ports: vec![8080],
        last_version: 0,
        admin_address: String::new(),
        ..Default::default()
    };
    let first = ProxyMessage {
        message: Some(proxy_message::Message::Register(register)),
    };
    tx.send(first)
        .await
        .map_err(|_| tonic::Status::internal("closed"))?;
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut client = ProxyControlClient::new(channel);
    let mut snapshots = client.sync(outgoing).await?.into_inner();
    while let Some(snapshot) = snapshots.next().await {
        let snapshot = snapshot?;
        if snapshot.destinations.iter().any(|d| d.service == TARGET) {
            seen.target_version
                .store(snapshot.version, Ordering::SeqCst);
        }
        seen.snapshots.fetch_add(1, Ordering::SeqCst);
        let ack = ProxyMessage {
            message: Some(proxy_message::Message::Ack(Ack {
                version: snapshot.version,
                ..Ack::default()
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_watch_streams_all_get_one_change() {
    skein_testkit::init_tracing();
    let data = TempDir::new("scale").unwrap();
    let control = RunningControl::start(ControlOptions::embedded(
        data.path(),
        loopback(133),
        "scale",
    ))
    .await
    .expect("start the control plane");
    let rss_before = self_rss_kib().unwrap();

    let bounded = tokio::time::timeout(Duration::from_secs(55), async {
        let started_certs = Instant::now();
        // Every simulated proxy holds its own certificate for `sim` (one join of a fleet
        // token each) and its own mutual-TLS connection, as real ones do.
        let (token, _) = control
            .pki
            .create_token("default", "sim", Duration::from_secs(600), STREAMS as u32)
            .await
            .unwrap();
        let mut channels = Vec::new();
        for _ in 0..STREAMS {
            let identity = common::identity_with(&control.pki, "sim", &token).await;
            channels.push(common::channel(control.grpc, &control.pki, &identity, loopback(133)).await);
        }
        let certified = started_certs.elapsed();

        // 500 streams, all at once.
        let started = Instant::now();
        let seen: Vec<Arc<Seen>> = (0..STREAMS).map(|_| Arc::default()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, s) in seen.iter().enumerate() {
            let (channel, s) = (channels[i].clone(), s.clone());
            tasks.spawn(simulate(i, channel, s));
        }
        let all_first = async || seen.iter().all(|s| s.snapshots.load(Ordering::SeqCst) >= 1);
        let waited = eventually("all first snapshots", Duration::from_secs(40), all_first).await;
        if let Err(e) = waited {
            let got = seen
                .iter()
                .filter(|s| s.snapshots.load(Ordering::SeqCst) >= 1)
                .count();
            // A stream that failed says why.
            let failed = tasks.try_join_next().map(|r| format!("{r:?}"));
            panic!("{e}: {got} of {STREAMS} streams have a snapshot; a finished stream: {failed:?}");
        }
        let first_snapshot = started.elapsed();
        assert_eq!(control.connections.list().len(), STREAMS);
        // Registration settled: nobody got more than the first snapshot (sim workloads
        // are selected by no service, so no proxy's configuration changed).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let extra = seen
            .iter()
            .filter(|s| s.snapshots.load(Ordering::SeqCst) != 1)
            .count();
        assert_eq!(extra, 0, "streams whose configuration did not change got snapshots");

        // One change: a new Service every proxy may call.
        let docs = parse_documents(
            &format!(
                "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {TARGET}}}\n\
                 spec:\n  selector: {{app: target}}\n  ports: [{{port: 80, protocol: http}}]\n"
            ),
            "scale test",
        )
        .unwrap();
        let changed = Instant::now();
        let applied = control.registry.apply(docs).await.expect("apply");
        assert_eq!(applied[0].action, "created");
        let revision = control.registry.revision();
        let all_changed = async || {
            seen.iter()
                .all(|s| s.target_version.load(Ordering::SeqCst) >= revision)
        };
        eventually("the change reached every stream", Duration::from_secs(10), all_changed)
            .await
            .unwrap_or_else(|e| {
                let got = seen
                    .iter()
                    .filter(|s| s.target_version.load(Ordering::SeqCst) >= revision)
                    .count();
                panic!("{e}: {got} of {STREAMS}")
            });
        let one_change = changed.elapsed();
        // Exactly one more snapshot each, and every ack recorded.
        assert!(seen.iter().all(|s| s.snapshots.load(Ordering::SeqCst) == 2));
        eventually("every ack recorded", Duration::from_secs(10), async || {
            let list = control.connections.list();
            list.len() == STREAMS && list.iter().all(|c| c.acked_version >= revision)
        })
        .await
        .unwrap();
        let rss_after = self_rss_kib().unwrap();
        eprintln!("scale: {STREAMS} certificates and connections in {} ms", certified.as_millis());
        eprintln!(
            "scale: {STREAMS} streams: first snapshot in {} ms, one change reached all in {} ms, RSS {:.1} MiB → {:.1} MiB",
            first_snapshot.as_millis(),
            one_change.as_millis(),
            mib(rss_before),
            mib(rss_after),
        );
        // Not asserted either: how many OS threads the process (client side included) has.
        let threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).map(|t| t.trim().to_string()))
            .unwrap_or_default();
        eprintln!("scale: {threads} OS threads after registration (client and control plane in one process)");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    })
    .await;
    control.shutdown().await;
    bounded.expect("the scale test finishes within 55 s");
}
