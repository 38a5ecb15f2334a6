//! The proxy's DNS server end to end, with real third-party DNS software on both sides:
//! `dig` (Debian `bind9-dnsutils`) asks the proxy, which answers mesh names itself and
//! forwards every other query to a real resolver, `dnsmasq` (Debian `dnsmasq-base`),
//! running on a loopback address of its own.
//!
//! ```text
//! dig ──UDP/TCP──▶ proxy dns.listen 127.0.3.N:*  ──(not a mesh name)──▶ dnsmasq 127.0.3.M:*
//!                  (answers mesh names itself)                          outside.test → 198.18.9.9
//! ```
//!
//! Each test uses its own 127.0.3.x addresses. Without `dig` or `dnsmasq` the tests fail,
//! naming the package to install (CI's `.ci/run` installs both).

use skein_model::proxy::DnsConfig;
use skein_model::{Destination, Endpoint, PortSpec, Protocol, ProxyConfig};
use skein_proxy::metrics::sum_samples;
use skein_proxy::RunningProxy;
use skein_testkit::MeshSpec;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::UdpSocket;

/// `restaurant` in the caller's own namespace: a virtual IPv4 and IPv6 address.
const RESTAURANT_V4: &str = "198.18.1.10";
const RESTAURANT_V6: &str = "fd00::10";
/// `kitchen` in namespace `food`.
const KITCHEN_V4: &str = "198.18.2.20";
/// What dnsmasq answers for names outside the mesh.
const OUTSIDE_V4: &str = "198.18.9.9";
const BARE_KITCHEN_V4: &str = "198.18.9.10";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 3, last))
}

/// The path of `name`, or a failure naming the Debian package that provides it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
            panic!("`{name}` is not installed: the DNS tests need it; install the Debian package {package} (apt-get install {package})")
        })
}

/// A dnsmasq on `ip`, answering `outside.test` and `kitchen` itself and refusing the rest;
/// killed when dropped, also when the test fails.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    async fn start(ip: IpAddr) -> Dnsmasq {
        let bin = tool("dnsmasq", "dnsmasq-base");
        let addr = skein_testkit::control::free_port(ip).unwrap();
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--conf-file=/dev/null",
            ])
            .args([
                "--pid-file",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--address=/outside.test/{OUTSIDE_V4}"))
            .arg(format!("--address=/kitchen/{BARE_KITCHEN_V4}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq");
        let mut dnsmasq = Dnsmasq { child, addr };
        dnsmasq.wait_answering().await;
        dnsmasq
    }

    /// Waits until it answers over UDP, failing with its log if it exits first.
    async fn wait_answering(&mut self) {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut log = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
                }
                panic!("dnsmasq on {} exited ({status}):\n{log}", self.addr);
            }
            if dig(self.addr, &["+short", "outside.test"]).await.trim() == OUTSIDE_V4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("dnsmasq on {} did not answer within 5 s", self.addr);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dig @server -p PORT +time=2 +tries=1 ARGS` and returns its output.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new(tool("dig", "bind9-dnsutils"))
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The RCODE dig reports (`NOERROR`, `NXDOMAIN`, …).
fn status(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status line in:\n{dig_output}"))
}

fn destination(service: &str, namespace: &str, addresses: &[&str]) -> Destination {
    Destination {
        service: service.into(),
        namespace: namespace.into(),
        ports: vec![PortSpec::new(80, Protocol::Http)],
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        endpoints: vec![Endpoint {
            address: "127.0.3.250:4143".parse().unwrap(),
            identity: None,
        }],
        routes: Vec::new(),
        identities: Vec::new(),
        policies: Vec::new(),
    }
}

/// A proxy on `proxy_ip` in namespace `default` whose DNS server listens on
/// `proxy_ip:0` and forwards to `upstream`.
async fn proxy(proxy_ip: IpAddr, upstream: SocketAddr) -> (RunningProxy, SocketAddr) {
    let mut spec = MeshSpec::new(1, 1);
    spec.client_ip = proxy_ip;
    let mut config: ProxyConfig = spec.client_config(SocketAddr::new(proxy_ip, 9));
    config.destinations = vec![
        destination("restaurant", "default", &[RESTAURANT_V4, RESTAURANT_V6]).into(),
        destination("kitchen", "food", &[KITCHEN_V4]).into(),
    ];
    config.dns = Some(DnsConfig {
        listen: SocketAddr::new(proxy_ip, 0),
        upstreams: vec![upstream],
        ..Default::default()
    });
    config.validate("the test proxy").unwrap();
    let proxy = RunningProxy::start(config).await.unwrap();
    let dns = proxy.addrs.dns.expect("the DNS server is bound at start");
    (proxy, dns)
}

/// `skein_dns_queries_total{answer="ANSWER"}` as the proxy's `/metrics` shows it.
async fn dns_queries(proxy: &RunningProxy, answer: &str) -> u64 {
    use http_body_util::BodyExt;
    let mut sender = skein_testkit::client::h1(proxy.addrs.admin).await.unwrap();
    let req = http::Request::get("/metrics")
        .header("host", "admin")
        .body(skein_proxy::http::empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let label = format!("answer=\"{answer}\"");
    sum_samples(&text, "skein_dns_queries_total", &[&label])
}

#[tokio::test]
async fn mesh_names_are_answered_and_the_rest_forwarded_to_dnsmasq() {
    skein_testkit::init_tracing();
    let upstream = Dnsmasq::start(ip(1)).await;
    let (proxy, dns) = proxy(ip(2), upstream.addr).await;

    for name in [
        "restaurant",
        "restaurant.default",
        "restaurant.default.svc",
        "restaurant.default.svc.cluster.local",
        "Restaurant.Default.SVC.cluster.local.",
    ] {
        let out = dig(dns, &["+short", name, "A"]).await;
        assert_eq!(out.trim(), RESTAURANT_V4, "{name}");
    }
    let out = dig(dns, &["+short", "restaurant", "AAAA"]).await;
    assert_eq!(out.trim(), RESTAURANT_V6);
    let out = dig(dns, &["+short", "kitchen.food.svc.cluster.local"]).await;
    assert_eq!(out.trim(), KITCHEN_V4);
    // A bare name is the caller's own namespace only; `kitchen` is not, so dnsmasq answers.
    let out = dig(dns, &["+short", "kitchen"]).await;
    assert_eq!(out.trim(), BARE_KITCHEN_V4);
    let out = dig(dns, &["+short", "outside.test"]).await;
    assert_eq!(out.trim(), OUTSIDE_V4, "forwarded to dnsmasq");

    let out = dig(dns, &["nosuch.default.svc.cluster.local"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("flags: qr aa rd ra;"), "authoritative: {out}");
    let out = dig(dns, &["restaurant", "TXT"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0,"), "NODATA: {out}");

    assert_eq!(dns_queries(&proxy, "mesh").await, 7);
    assert_eq!(dns_queries(&proxy, "forwarded").await, 2);
    assert_eq!(dns_queries(&proxy, "nxdomain").await, 1);
    assert_eq!(dns_queries(&proxy, "nodata").await, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn tcp_queries_are_answered_and_forwarded_over_tcp() {
    skein_testkit::init_tracing();
    let upstream = Dnsmasq::start(ip(3)).await;
    let (proxy, dns) = proxy(ip(4), upstream.addr).await;

    let out = dig(
        dns,
        &["+tcp", "+short", "restaurant.default.svc.cluster.local"],
    )
    .await;
    assert_eq!(out.trim(), RESTAURANT_V4);
    // Several queries on one connection, a mesh name and a forwarded one.
    let args = [
        "+tcp",
        "+keepopen",
        "+short",
        "restaurant",
        "AAAA",
        "outside.test",
        "A",
    ];
    let out = dig(dns, &args).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, [RESTAURANT_V6, OUTSIDE_V4], "{out}");
    let out = dig(dns, &["+tcp", "nosuch.svc"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    assert_eq!(dns_queries(&proxy, "mesh").await, 2);
    assert_eq!(dns_queries(&proxy, "forwarded").await, 1);
    assert_eq!(dns_queries(&proxy, "nxdomain").await, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn garbage_gets_formerr_and_the_server_keeps_answering() {
    skein_testkit::init_tracing();
    let upstream = Dnsmasq::start(ip(5)).await;
    let (proxy, dns) = proxy(ip(6), upstream.addr).await;

    let client = UdpSocket::bind(SocketAddr::new(ip(6), 0)).await.unwrap();
    client.connect(dns).await.unwrap();
    let garbage: [&[u8]; 3] = [
        b"\x12\x34 this is not a DNS query",
        b"short",
        // A question whose name is a compression pointer.
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
    ];
    for bytes in garbage {
        client.send(bytes).await.unwrap();
        let mut buf = [0u8; 512];
        let reply = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await;
        if let Ok(Ok(n)) = reply {
            assert!(n >= 12, "a reply carries a header");
            assert_eq!(buf[..2], bytes[..2], "the query's ID");
            assert_eq!(buf[3] & 0x0F, 1, "FORMERR");
        }
    }
    let out = dig(dns, &["+short", "restaurant"]).await;
    assert_eq!(out.trim(), RESTAURANT_V4, "still answering");
    let out = dig(dns, &["+short", "outside.test"]).await;
    assert_eq!(out.trim(), OUTSIDE_V4, "still forwarding");
    assert_eq!(dns_queries(&proxy, "formerr").await, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_gets_servfail() {
    skein_testkit::init_tracing();
    // Nothing listens here: the upstream refuses at once.
    let nobody = skein_testkit::control::free_port(ip(7)).unwrap();
    let (proxy, dns) = proxy(ip(8), nobody).await;

    let out = dig(dns, &["outside.test"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    let out = dig(dns, &["+short", "restaurant"]).await;
    assert_eq!(out.trim(), RESTAURANT_V4, "mesh names need no upstream");
    assert_eq!(dns_queries(&proxy, "servfail").await, 1);
    proxy.shutdown().await;
}
