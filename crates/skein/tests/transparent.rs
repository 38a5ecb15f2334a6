//! Transparent interception end to end. An unmodified client (the real `curl`) inside a
//! network namespace dials a service's virtual address; iptables `REDIRECT` in that
//! namespace hands the connection to the client proxy's transparent listener, which reads
//! `SO_ORIGINAL_DST`, maps the virtual address to the service and forwards through the
//! server-side proxy to the backend. A redirected connection to an address no destination
//! claims passes through to where the client sent it.
//!
//! ```text
//! netns skein-tp-PID                          │ root namespace
//! curl ─REDIRECT─▶ client proxy 127.0.0.1:4140 ─veth─▶ server proxy 198.18.0.1:*
//!                  (`skein proxy` process,    │          └─▶ backend 127.0.0.81:*
//!                   admin 198.18.0.2:4191)    │        passthrough backend 198.18.0.1:*
//! ```
//!
//! Needs root plus `ip` and `iptables`; without them the test says why it skipped and
//! passes. CI runs it as root with iptables installed.

use skein_model::{Protocol, ProxyConfig};
use skein_proxy::metrics::sum_samples;
use skein_proxy::RunningProxy;
use skein_testkit::{loopback, HttpBackend, MeshSpec, ProxyProcess};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The root namespace's end of the veth pair: the server proxy and the passthrough backend.
const ROOT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The namespace's end of the veth pair: the client proxy's admin and inbound listeners.
const NS_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Where [`MeshSpec::virtual_ip`] hands out service addresses.
const VIRTUAL_NET: &str = "198.18.1.0/24";
/// The client proxy's transparent listener, the target of every `REDIRECT`.
const TRANSPARENT_PORT: u16 = 4140;
/// The client proxy runs with this group so iptables can exempt its own connections, as
/// Istio exempts its proxy's uid 1337. A group rather than a user keeps the proxy able to
/// read its binary and config wherever the test runs.
const PROXY_GID: u32 = 1337;

#[tokio::test]
async fn unmodified_client_is_intercepted_and_carried_by_both_proxies() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: transparent interception test, because {why}");
        return;
    }
    skein_testkit::init_tracing();
    // Declared first so it drops last: the proxy process inside is killed before the
    // namespace is deleted, on success and on panic alike.
    let ns = Netns::create();
    let backend = HttpBackend::start(SocketAddr::new(loopback(81), 0))
        .await
        .unwrap();
    let outside = HttpBackend::start(SocketAddr::new(ROOT_SIDE.into(), 0))
        .await
        .unwrap();
    ns.redirect_to_proxy(outside.addr());

    let spec = MeshSpec::new(80, 81).service("web", backend.addr(), Protocol::Detect);
    let mut server_config = spec.server_config();
    server_config.inbound.listen = SocketAddr::new(ROOT_SIDE.into(), 0);
    let server = RunningProxy::start(server_config).await.unwrap();
    let client_config = client_config(&spec, server.addrs.inbound);
    let bin = Path::new(env!("CARGO_BIN_EXE_skein"));
    let wrapper = ns.proxy_wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let client = ProxyProcess::spawn(bin, &client_config, &wrapper)
        .await
        .unwrap();

    // The service's virtual address exists nowhere: only the redirect can answer it.
    let virtual_addr = SocketAddr::new(MeshSpec::virtual_ip(0), backend.addr().port());
    let text = ns.curl(&format!("http://{virtual_addr}/intercepted")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-echo-path: /intercepted"), "{text}");
    let paths: Vec<_> = backend.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/intercepted"]);
    let outbound = ["direction=\"outbound\""];
    let client_requests = client.metric("skein_requests_total", &outbound).await;
    assert!(client_requests.unwrap() >= 1, "the client proxy carried it");
    let inbound_requests = || {
        let text = server.ctx.metrics.encode();
        sum_samples(&text, "skein_requests_total", &["direction=\"inbound\""])
    };
    assert!(inbound_requests() >= 1, "the server proxy carried it");

    // An address no destination claims, redirected all the same, passes through unchanged.
    let text = ns.curl(&format!("http://{}/passed", outside.addr())).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-echo-path: /passed"), "{text}");
    assert_eq!(outside.hits(), 1);
    let passthrough = ["direction=\"outbound\"", "protocol=\"passthrough\""];
    let passed = client
        .metric("skein_tcp_connections_total", &passthrough)
        .await;
    assert!(passed.unwrap() >= 1, "the client proxy passed it through");
    assert_eq!(backend.hits(), 1, "the mesh backend saw nothing more");
    assert_eq!(inbound_requests(), 1, "the server proxy saw nothing more");
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it is not running as root (namespaces and iptables need root)".into());
    }
    for (tool, version_flag) in [("ip", "-V"), ("iptables", "--version")] {
        if let Err(e) = Command::new(tool).arg(version_flag).output() {
            return Some(format!("`{tool}` cannot be run ({e}); install it"));
        }
    }
    None
}

/// The client proxy's config: a transparent listener, no explicit ways in, and fixed
/// listeners on the namespace's address so the test can reach its admin port.
fn client_config(spec: &MeshSpec, server_inbound: SocketAddr) -> ProxyConfig {
    let mut config = spec.client_config(server_inbound);
    config.outbound.listen = Some(SocketAddr::from(([127, 0, 0, 1], TRANSPARENT_PORT)));
    config.outbound.http_proxy = None;
    config.outbound.upstreams.clear();
    config.inbound.listen = SocketAddr::new(NS_SIDE.into(), 4143);
    config.admin.listen = SocketAddr::new(NS_SIDE.into(), 4191);
    config
}

/// Runs a command given as whitespace-separated words, killed after 10 s.
fn run(command: &str) -> Result<(), String> {
    let out = Command::new("timeout")
        .args(["--kill-after=2", "10"])
        .args(command.split_whitespace())
        .output()
        .map_err(|e| format!("`{command}` could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("`{command}` failed ({}): {stderr}", out.status))
    }
}

/// A network namespace joined to the root namespace by a veth pair; dropping it deletes
/// both, and the namespace's iptables rules with them.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    /// Creates `skein-tp-PID` with the namespace side at 198.18.0.2/30, the root side at
    /// 198.18.0.1/30, and a route for the virtual range over the veth so that it is
    /// routable before `nat OUTPUT` rewrites it.
    fn create() -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("skein-tp-{pid}"),
            host_if: format!("sktp{pid}h"),
        };
        // A test killed before its cleanup leaves the same names behind.
        ns.remove();
        let (name, host_if, ns_if) = (&ns.name, &ns.host_if, format!("sktp{pid}n"));
        for command in [
            format!("ip netns add {name}"),
            format!("ip link add {host_if} type veth peer name {ns_if}"),
            format!("ip link set {ns_if} netns {name}"),
            format!("ip addr add {ROOT_SIDE}/30 dev {host_if}"),
            format!("ip link set {host_if} up"),
            format!("ip -n {name} addr add {NS_SIDE}/30 dev {ns_if}"),
            format!("ip -n {name} link set {ns_if} up"),
            format!("ip -n {name} link set lo up"),
            format!("ip -n {name} route add {VIRTUAL_NET} via {ROOT_SIDE}"),
        ] {
            run(&command).unwrap_or_else(|e| panic!("network setup: {e}"));
        }
        ns
    }

    /// Sends the application's TCP connections to the virtual range, and to `extra` (an
    /// address no destination claims), to the client proxy's transparent listener.
    fn redirect_to_proxy(&self, extra: SocketAddr) {
        let (name, port) = (&self.name, extra.port());
        let iptables = format!("ip netns exec {name} iptables -w 5 -t nat -A OUTPUT -p tcp");
        let redirect = format!("-j REDIRECT --to-ports {TRANSPARENT_PORT}");
        for rule in [
            // The proxy's own connections (to the server proxy, and the passthrough
            // connection to `extra` itself) must not be redirected back to it.
            format!("-m owner --gid-owner {PROXY_GID} -j RETURN"),
            // Only the virtual range and `extra`: everything else keeps its route.
            format!("-d {VIRTUAL_NET} {redirect}"),
            format!("-d {} --dport {port} {redirect}", extra.ip()),
        ] {
            run(&format!("{iptables} {rule}")).unwrap_or_else(|e| panic!("iptables: {e}"));
        }
    }

    /// The command prefix that runs the proxy inside the namespace with [`PROXY_GID`].
    fn proxy_wrapper(&self) -> Vec<String> {
        let regid = format!("--regid={PROXY_GID}");
        let wrapper = ["ip", "netns", "exec", &self.name, "setpriv", &regid];
        wrapper
            .into_iter()
            .chain(["--clear-groups"])
            .map(String::from)
            .collect()
    }

    /// Runs `curl -i URL` inside the namespace and returns what it printed; panics when
    /// curl fails.
    async fn curl(&self, url: &str) -> String {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.name,
            "curl",
            "--silent",
            "--show-error",
        ])
        // A proxy from the environment would bypass the interception under test.
        .args(["--noproxy", "*", "--max-time", "10", "--include", url])
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("curl {url} did not finish"))
            .expect("curl runs inside the namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {url}: {stderr}{text}");
        text
    }

    /// Deletes the host end of the veth (which removes both ends at once; namespace
    /// deletion alone frees them only later) and the namespace. Errors mean already gone.
    fn remove(&self) {
        let _ = run(&format!("ip link del {}", self.host_if));
        let _ = run(&format!("ip netns del {}", self.name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}
