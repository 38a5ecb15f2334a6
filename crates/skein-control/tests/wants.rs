//! Hostile `Want`s on a real control plane (embedded store, mutual-TLS gRPC on 127.0.0.134):
//! an oversized one ends its own stream with an error naming the limit, names that cannot
//! be host names are answered "nothing", and another proxy's session is served throughout.

use futures_util::StreamExt;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_api::v1::{proxy_message, ProxyMessage, Register, Snapshot, Want};
use skein_control::server::{ControlOptions, RunningControl};
use skein_testkit::control::TempDir;
use skein_testkit::loopback;
use std::time::Duration;
use tokio::sync::mpsc;

mod common;

/// A simulated proxy's stream: where to send, what arrives.
struct Stream {
    tx: mpsc::Sender<ProxyMessage>,
    rx: tonic::Streaming<Snapshot>,
}

async fn open(control: &RunningControl, name: &str, token: &skein_identity::JoinToken) -> Stream {
    let identity = common::identity_with(&control.pki, "sim", token).await;
    let channel = common::channel(control.grpc, &control.pki, &identity, loopback(134)).await;
    let (tx, rx) = mpsc::channel::<ProxyMessage>(8);
    let register = Register {
        workload: name.into(),
        namespace: "default".into(),
        service: "sim".into(),
        address: loopback(134).to_string(),
        inbound_port: 4143,
        supports: vec!["deltas".into(), "on-demand".into()],
        ..Default::default()
    };
    tx.send(ProxyMessage {
        message: Some(proxy_message::Message::Register(register)),
    })
    .await
    .unwrap();
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let rx = ProxyControlClient::new(channel)
        .sync(outgoing)
        .await
        .unwrap()
        .into_inner();
    Stream { tx, rx }
}

async fn want(s: &Stream, names: Vec<String>) {
    s.tx.send(ProxyMessage {
        message: Some(proxy_message::Message::Want(Want {
            names,
            addresses: vec![],
        })),
    })
    .await
    .unwrap();
}

async fn next(s: &mut Stream) -> Result<Option<Snapshot>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), s.rx.next())
        .await
        .expect("a message within 10 s")
        .transpose()
}

#[tokio::test]
async fn an_oversized_want_ends_only_its_own_stream() {
    let data = TempDir::new("wants").unwrap();
    let control = RunningControl::start(ControlOptions::embedded(
        data.path(),
        loopback(134),
        "wants",
    ))
    .await
    .unwrap();
    let docs = skein_model::resource::parse_documents(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n\
         spec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}\n",
        "test",
    )
    .unwrap();
    control.registry.apply(docs).await.unwrap();
    let (token, _) = control
        .pki
        .create_token("default", "sim", Duration::from_secs(600), 2)
        .await
        .unwrap();
    let mut good = open(&control, "sim-1", &token).await;
    let mut bad = open(&control, "sim-2", &token).await;
    assert!(next(&mut good)
        .await
        .unwrap()
        .unwrap()
        .destinations
        .is_empty());
    next(&mut bad).await.unwrap().unwrap();

    // Names that cannot be host names: answered "nothing", nothing held.
    want(&bad, vec!["x".repeat(254), "web/../etc".into()]).await;
    let answered = next(&mut bad).await.unwrap().unwrap();
    assert_eq!(answered.answers.len(), 2);
    assert!(answered.answers.iter().all(|a| a.destination.is_empty()));

    // More than a Want may carry: the stream ends, saying what is accepted.
    want(&bad, (0..300).map(|i| format!("n{i}")).collect()).await;
    let refused = next(&mut bad).await.expect_err("the stream is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("at most 256"),
        "{}",
        refused.message()
    );

    // The other proxy is served as before: it asks for web and gets it.
    want(&good, vec!["web".into()]).await;
    let got = next(&mut good).await.unwrap().unwrap();
    let delta = got.delta.expect("a delta");
    assert_eq!(delta.destinations[0].service, "web");
    assert_eq!(got.answers[0].destination, "default/web");
    control.shutdown().await;
}
