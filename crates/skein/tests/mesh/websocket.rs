//! WebSocket through the HTTP/1 upgrade path: the handshake crosses both proxies, then the
//! connection is a byte stream end to end.

use futures_util::{SinkExt, StreamExt};
use skein_model::Protocol;
use skein_testkit::{loopback, HttpBackend, MeshSpec, Side};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_echo_through_the_mesh() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(51), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(50, 51)
        .service("chat", backend.addr(), Protocol::Detect)
        .start()
        .await
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(mesh.upstream("chat"))
        .await
        .unwrap();
    let url = format!("ws://{}/ws", mesh.authority("chat"));
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![9u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    assert_eq!(backend.seen()[0].header("upgrade"), Some("websocket"));
    let upgraded = [
        "direction=\"inbound\"",
        "protocol=\"http1\"",
        "status_code=\"101\"",
    ];
    assert_eq!(
        mesh.metric(Side::Server, "skein_requests_total", &upgraded),
        1
    );
}
