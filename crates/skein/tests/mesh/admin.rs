//! The admin listener: liveness, readiness, metrics and the configuration in force.

use skein_model::Protocol;
use skein_testkit::client::curl;
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;

async fn get(admin: SocketAddr, path: &str) -> (String, String) {
    let out = curl(&["-i", &format!("http://{admin}{path}")])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, text)
}

#[tokio::test]
async fn admin_serves_live_ready_metrics_and_config() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(101), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(100, 101)
        .service("web", backend.addr(), Protocol::Detect)
        .start()
        .await
        .unwrap();
    // One request so that request counters exist.
    let url = format!("http://{}/", mesh.upstream("web"));
    assert!(curl(&[&url]).await.unwrap().status.success());

    let admin = mesh.client.addrs.admin;
    let (status, _) = get(admin, "/live").await;
    assert!(status.contains("200"), "{status}");
    let (status, _) = get(admin, "/ready").await;
    assert!(status.contains("200"), "{status}");

    let (status, metrics) = get(admin, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for family in [
        "skein_tcp_open_connections{direction=\"outbound\",protocol=\"http1\"}",
        "skein_tcp_connections_total{direction=\"outbound\",protocol=\"http1\"} 1",
        "skein_requests_total{direction=\"outbound\",protocol=\"http1\",tls=\"false\",\
         src_namespace=\"default\",src_account=\"client\",dst_namespace=\"default\",\
         dst_service=\"web\",route=\"\",rule=\"\",status_code=\"200\",grpc_status=\"\",error=\"\"} 1",
        "skein_response_latency_seconds_bucket{le=\"0.05\",direction=\"outbound\"",
        // curl asks for nothing in particular: the Prometheus text format.
        "content-type: text/plain; version=0.0.4; charset=utf-8",
        "# TYPE skein_requests_total counter",
    ] {
        assert!(metrics.contains(family), "missing {family} in:\n{metrics}");
    }
    assert!(!metrics.contains("# EOF"), "{metrics}");
    let asked = curl(&[
        "-i",
        "-H",
        "Accept: application/openmetrics-text; version=1.0.0",
        &format!("http://{admin}/metrics"),
    ])
    .await
    .unwrap();
    let open = String::from_utf8_lossy(&asked.stdout).into_owned();
    for part in [
        "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8",
        "# TYPE skein_requests counter",
        "# EOF",
    ] {
        assert!(open.contains(part), "missing {part} in:\n{open}");
    }

    let (status, config) = get(admin, "/config").await;
    assert!(status.contains("200"), "{status}");
    assert!(config.contains("application/json"), "{config}");
    let json = &config[config.find('{').unwrap()..];
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(parsed["workload"]["service"], "client");
    assert_eq!(parsed["destinations"][0]["service"], "web");
    assert_eq!(parsed["detectTimeout"], "300ms", "defaults are visible");

    let (status, body) = get(admin, "/nope").await;
    assert!(
        status.contains("404") && body.contains("try /live"),
        "{body}"
    );

    // Draining: no longer ready.
    mesh.client
        .ctx
        .drain
        .clone()
        .shutdown(std::time::Duration::from_millis(1))
        .await;
    let ready = curl(&["-i", &format!("http://{admin}/ready")])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ready.stdout);
    assert!(
        !text.contains("200 OK"),
        "a draining proxy is not ready: {text}"
    );
}
