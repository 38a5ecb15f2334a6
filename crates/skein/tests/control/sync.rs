//! The control plane with proxies: persistence across a restart (resources back, proxies
//! resync), workloads following their proxies, and two replicas on one etcd.

use crate::{client_proxy, json, row, start_control, status_via, write, Web, BIN, SOON};
use skein_model::Protocol;
use skein_proxy::Ctx;
use skein_testkit::control::{eventually, free_port, ControlProcess, ControlledProxy, TempDir};
use skein_testkit::etcd::Etcd;
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Every declared resource as `get -o json` prints it (the proxy-registered workloads are
/// left out: they are re-registered, with a new status, when their proxy reconnects).
async fn declared(cp: &ControlProcess) -> Vec<String> {
    // A route condition's lastTransitionTime is when this replica saw it change (status
    // is computed, never stored), so a restarted control plane may say a later second.
    let computed = |text: String| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("\"lastTransitionTime\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut all = Vec::new();
    for word in ["meshes", "services", "routes", "authz", "backendpolicies"] {
        all.push(computed(
            cp.cli(&["get", word, "-o", "json"]).await.ok().to_string(),
        ));
    }
    all.push(
        cp.cli(&["get", "workload", "web-1", "-o", "json"])
            .await
            .ok()
            .to_string(),
    );
    all
}

/// The endpoints of `service` in a proxy's configuration in force.
fn endpoints(ctx: &Ctx, service: &str) -> Vec<SocketAddr> {
    ctx.config()
        .destinations
        .iter()
        .filter(|d| d.service == service)
        .flat_map(|d| d.endpoints.iter().map(|e| e.address))
        .collect()
}

/// `get workloads` as a table, row by name.
async fn workload_row(
    cp: &ControlProcess,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let out = cp.cli(&["get", "workloads"]).await;
    row(out.ok(), name)
}

#[tokio::test]
async fn resources_survive_a_restart_and_proxies_resync() {
    skein_testkit::init_tracing();
    let (data, files) = (
        TempDir::new("ctl-data").unwrap(),
        TempDir::new("ctl-files").unwrap(),
    );
    let mut cp = start_control(123, data.path(), &[]).await;
    let web = Web::start(124, &cp).await;
    let token = cp.token();

    // One resource of every kind (the route and policies name another service, so that
    // they do not change how requests to `web` are handled).
    let mut yaml = web.resources("web", true);
    yaml.push_str(
        "---\napiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: skein.local}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, labels: {team: a}}\n\
         spec:\n  parentRefs: [{name: api}]\n  rules: [{backendRefs: [{name: api, weight: 3}], retry: {attempts: 2}}]\n\
         ---\napiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api}\nspec: {targetRef: {name: api}, action: audit}\n\
         ---\napiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: api, annotations: {note: kept}}\nspec: {targetRef: {name: api}, loadBalancer: least-request}\n",
    );
    let file = write(&files, "all.yaml", &yaml);
    cp.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();
    // A second generation, so that bookkeeping other than 1 must survive too.
    let changed = yaml.replace("retry: {attempts: 2}", "retry: {attempts: 3}");
    let file2 = write(&files, "changed.yaml", &changed);
    let out = cp.cli(&["apply", "-f", file2.to_str().unwrap()]).await;
    assert!(out.ok().contains("httproute/api configured"), "{out:?}");

    // A proxy that stays up across the restart.
    let a = client_proxy(125, "client-1", &cp).await;
    a.discover(&["web"]).await.unwrap();
    let (a_proxy, url) = (a.addrs.http_proxy.unwrap(), web.url("web", "before"));
    eventually("proxy A configured", SOON, async || {
        a.ctx.config_version.load(Ordering::SeqCst) > 0
    })
    .await
    .unwrap();
    assert_eq!(status_via(a_proxy, &url).await, "200");
    let before = declared(&cp).await;
    let version_before = a.ctx.config_version.load(Ordering::SeqCst);

    // SIGTERM: a clean exit.
    cp.signal("TERM").unwrap();
    let status = cp.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        cp.log()
    );
    let (http, grpc) = (cp.http, cp.grpc);
    drop(cp);
    // The proxy keeps serving on its last good configuration meanwhile.
    assert_eq!(status_via(a_proxy, &url).await, "200");

    // A new control plane on the same data dir (and addresses).
    let started = Instant::now();
    let cp = ControlProcess::start(Path::new(BIN), data.path(), http, grpc, &[])
        .await
        .expect("restart skein control");
    assert_eq!(cp.token(), token, "the admin token is kept");
    let after = declared(&cp).await;
    assert_eq!(
        after, before,
        "every resource is back, bookkeeping included"
    );
    let route = json(&after[2]);
    assert_eq!(route["items"][0]["metadata"]["generation"], 2);

    // A proxy that connects now gets the destinations…
    let b = client_proxy(125, "client-2", &cp).await;
    b.discover(&["web"]).await.unwrap();
    eventually("proxy B configured", SOON, async || {
        b.ctx.config_version.load(Ordering::SeqCst) > 0
    })
    .await
    .unwrap();
    assert_eq!(endpoints(&b.ctx, "web"), [web.proxy.addrs.inbound]);
    assert_eq!(
        status_via(b.addrs.http_proxy.unwrap(), &web.url("web", "b")).await,
        "200"
    );
    // …numbered after the versions of the first run (the store's revision persisted).
    assert!(
        b.ctx.config_version.load(Ordering::SeqCst) > version_before,
        "versions keep increasing across the restart"
    );
    // …and the proxy that lived through the restart reconnected and acknowledged.
    eventually("proxy A reconnected", SOON, async || {
        a.ctx.metrics.control_connected.get() == 1
            && a.ctx.config_version.load(Ordering::SeqCst) > version_before
    })
    .await
    .unwrap();
    let resynced = started.elapsed();
    eventually("both proxies acknowledged", SOON, async || {
        let (ra, rb) = (
            workload_row(&cp, "client-1").await,
            workload_row(&cp, "client-2").await,
        );
        let acked = |r: &Option<std::collections::BTreeMap<String, String>>, v: u64| {
            r.as_ref()
                .is_some_and(|r| r["CONNECTED"] == "true" && r["VERSION"] == v.to_string())
        };
        acked(&ra, a.ctx.config_version.load(Ordering::SeqCst))
            && acked(&rb, b.ctx.config_version.load(Ordering::SeqCst))
    })
    .await
    .unwrap();
    assert_eq!(status_via(a_proxy, &web.url("web", "after")).await, "200");
    eprintln!("persistence: restarted and both proxies resynced in {resynced:?}");
    a.shutdown().await;
    b.shutdown().await;
    web.proxy.shutdown().await;
}

#[tokio::test]
async fn workloads_follow_their_proxies() {
    skein_testkit::init_tracing();
    let (data, files) = (
        TempDir::new("ctl-data").unwrap(),
        TempDir::new("ctl-files").unwrap(),
    );
    let cp = start_control(126, data.path(), &["--workload-grace", "1s"]).await;
    let backend = HttpBackend::start(SocketAddr::new(loopback(127), 0))
        .await
        .unwrap();
    let port = backend.addr().port();
    let service = format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
         spec:\n  selector: {{app: web}}\n  ports: [{{port: {port}, protocol: http}}]\n"
    );
    let file = write(&files, "web.yaml", &service);
    cp.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();

    // `web-1`: a real `skein proxy --control` process in front of the backend. It registers
    // itself (service web → label app=web), so the Service selects it.
    let mut config = MeshSpec::new(127, 127)
        .service("web", backend.addr(), Protocol::Http)
        .server_config();
    config.workload.name = "web-1".into();
    config.workload.service = "web".into();
    config.inbound.listen = free_port(loopback(127)).unwrap();
    config.admin.listen = free_port(loopback(127)).unwrap();
    let inbound = config.inbound.listen;
    let token = cp.join_token("web").await.unwrap();
    let mut web = ControlledProxy::start(Path::new(BIN), &config, cp.grpc, &token)
        .await
        .expect("start skein proxy --control");

    // An in-process proxy calling it.
    let client = client_proxy(128, "client-1", &cp).await;
    client.discover(&["web"]).await.unwrap();
    let url = format!("http://web:{port}/hello");
    eventually("client sees web-1", SOON, async || {
        endpoints(&client.ctx, "web") == [inbound]
    })
    .await
    .unwrap();
    assert_eq!(
        status_via(client.addrs.http_proxy.unwrap(), &url).await,
        "200"
    );

    // Both are listed as connected, with the version they acknowledged.
    let listed = eventually("both listed with acknowledged versions", SOON, async || {
        let (w, c) = (
            workload_row(&cp, "web-1").await,
            workload_row(&cp, "client-1").await,
        );
        let client_version = client.ctx.config_version.load(Ordering::SeqCst).to_string();
        w.is_some_and(|w| {
            w["CONNECTED"] == "true"
                && w["ADDRESS"] == inbound.to_string()
                && w["VERSION"].parse::<u64>().is_ok_and(|v| v > 0)
        }) && c.is_some_and(|c| c["CONNECTED"] == "true" && c["VERSION"] == client_version)
    })
    .await;
    if let Err(e) = listed {
        panic!("{e}\n{}", cp.cli(&["get", "workloads"]).await.stdout);
    }
    let w = json(
        cp.cli(&["get", "workload", "web-1", "-o", "json"])
            .await
            .ok(),
    );
    assert_eq!(w["metadata"]["labels"]["app"], "web");
    assert_eq!(w["spec"]["ports"][0], port);
    assert_eq!(w["status"]["connected"], true);
    assert!(w["status"]["since"].is_string(), "{w}");

    // web-1's proxy stops: after the 1 s grace its workload is gone, and with it the
    // client's endpoint.
    let left = Instant::now();
    web.signal("TERM").unwrap();
    let status = web.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "proxy exit: {status}");
    eprintln!(
        "lifecycle: right after the proxy exited:\n{}",
        cp.cli(&["get", "workloads"]).await.stdout
    );
    eventually("web-1 leaves `get workloads`", SOON, async || {
        workload_row(&cp, "web-1").await.is_none()
    })
    .await
    .unwrap();
    let removed = left.elapsed();
    eventually("client's endpoints drop web-1", SOON, async || {
        endpoints(&client.ctx, "web").is_empty()
    })
    .await
    .unwrap();
    let dropped = left.elapsed();
    // The stream ended after the signal, and the grace period counts from there.
    assert!(
        removed >= Duration::from_millis(990),
        "removed after the grace period, not before ({removed:?})"
    );
    assert_ne!(
        status_via(client.addrs.http_proxy.unwrap(), &url).await,
        "200"
    );
    // The client itself is still there and connected.
    let c = workload_row(&cp, "client-1")
        .await
        .expect("client-1 listed");
    assert_eq!(c["CONNECTED"], "true");
    eprintln!("lifecycle: workload removed {removed:?} after SIGTERM to its proxy, endpoint dropped after {dropped:?}");
    client.shutdown().await;
}

/// Two `skein control` replicas (`r1`, `r2`) on one real etcd, on 127.0.0.`o1` and `o2`,
/// with a 2 s workload grace period and the test secrets key.
struct Replicas {
    etcd: Etcd,
    d1: TempDir,
    _d2: TempDir,
    files: TempDir,
    r1: ControlProcess,
    r2: ControlProcess,
}

async fn two_replicas(tag: &str, o1: u8, o2: u8) -> Replicas {
    let etcd = Etcd::start().expect("start etcd");
    let store = format!("etcd://{}", etcd.endpoint());
    let (d1, d2, files) = (
        TempDir::new(&format!("{tag}-r1")).unwrap(),
        TempDir::new(&format!("{tag}-r2")).unwrap(),
        TempDir::new(&format!("{tag}-files")).unwrap(),
    );
    let key = skein_testkit::control::secrets_key_file(files.path()).unwrap();
    let args = [
        "--store",
        store.as_str(),
        "--workload-grace",
        "2s",
        "--secrets-key-file",
        key.to_str().unwrap(),
    ];
    let replica = async |octet: u8, dir: &Path, name: &str| {
        start_control(octet, dir, &[&args[..], &["--replica", name][..]].concat()).await
    };
    let r1 = replica(o1, d1.path(), "r1").await;
    let r2 = replica(o2, d2.path(), "r2").await;
    Replicas {
        etcd,
        d1,
        _d2: d2,
        files,
        r1,
        r2,
    }
}

#[tokio::test]
async fn etcd_replicas_share_the_mesh_and_survive_losing_one() {
    skein_testkit::init_tracing();
    if !Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return;
    }
    let Replicas {
        etcd,
        d1,
        _d2,
        files,
        mut r1,
        r2,
    } = two_replicas("ctl", 129, 130).await;
    assert_eq!(
        r1.token(),
        r2.token(),
        "both replicas use the same admin token"
    );

    // Applied through replica 1…
    let web = Web::start(131, &r1).await;
    let file = write(&files, "web.yaml", &web.resources("web", true));
    let out = r1.cli(&["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.ok(), "service/web created\nworkload/web-1 created\n");
    // …reaches a proxy connected to replica 2.
    let started = Instant::now();
    let client = client_proxy(132, "client-1", &r2).await;
    client.discover(&["web"]).await.unwrap();
    let proxy = client.addrs.http_proxy.unwrap();
    eventually("proxy on replica 2 sees web", SOON, async || {
        endpoints(&client.ctx, "web") == [web.proxy.addrs.inbound]
    })
    .await
    .unwrap();
    let reached = started.elapsed();
    assert_eq!(status_via(proxy, &web.url("web", "via-r2")).await, "200");
    // Replica 1 sees the workload replica 2 registered.
    eventually("replica 1 lists client-1", SOON, async || {
        workload_row(&r1, "client-1").await.is_some()
    })
    .await
    .unwrap();
    let w = json(
        r1.cli(&["get", "workload", "client-1", "-o", "json"])
            .await
            .ok(),
    );
    assert_eq!(w["status"]["controlPlane"], "r2", "{w}");

    // Replica 1 dies.
    r1.signal("KILL").unwrap();
    r1.wait_exit(SOON).await.unwrap();
    let r1_data = d1.path().to_path_buf();
    drop(r1);
    // Replica 2 still serves the API, with replica 1's token.
    let out = r2.cli_with(&["get", "services"], &r1_data, None).await;
    assert!(row(out.ok(), "web").is_some(), "{out:?}");
    // A new apply through replica 2 reaches the proxy.
    let file = write(&files, "web2.yaml", &web.resources("web2", false));
    let out = r2
        .cli_with(&["apply", "-f", file.to_str().unwrap()], &r1_data, None)
        .await;
    assert_eq!(out.ok(), "service/web2 created\n");
    let applied = Instant::now();
    eventually("web2 reaches the proxy", SOON, async || {
        status_via(proxy, &web.url("web2", "after-loss")).await == "200"
    })
    .await
    .unwrap();
    eprintln!(
        "etcd: replica 1 → proxy on replica 2 in {reached:?}; after losing replica 1, a change reached the proxy in {:?}",
        applied.elapsed()
    );
    assert_eq!(status_via(proxy, &web.url("web", "still")).await, "200");
    client.shutdown().await;
    web.proxy.shutdown().await;
    drop(r2);
    drop(etcd);
}

/// An in-process proxy for `service` on 127.0.0.`octet` (its app there too) that knows the
/// control plane at `endpoints` (one or several replicas), joined with a token from `cp`.
async fn proxy_of(
    octet: u8,
    service: &str,
    endpoints: &str,
    cp: &ControlProcess,
) -> (HttpBackend, skein_proxy::RunningProxy) {
    let app = HttpBackend::start(SocketAddr::new(loopback(octet), 18090))
        .await
        .unwrap();
    let mut config = MeshSpec::new(octet, octet)
        .service(service, app.addr(), Protocol::Http)
        .client_config(SocketAddr::new(loopback(octet), 1));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    config.inbound.ports = vec![skein_model::PortSpec {
        port: 18090,
        protocol: Protocol::Http,
        target_port: None,
    }];
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.inbound.listen = SocketAddr::new(loopback(octet), 4143);
    let control = skein_proxy::control::ControlConfig {
        endpoint: endpoints.to_string(),
        advertise: config.inbound.listen,
        token: cp.join_token(service).await.unwrap(),
    };
    let proxy = skein_proxy::RunningProxy::start_with_control(config, Some(control))
        .await
        .unwrap();
    (app, proxy)
}

#[tokio::test]
async fn proxies_fail_over_when_their_replica_dies_and_its_orphans_are_swept() {
    skein_testkit::init_tracing();
    if !Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return;
    }
    let Replicas {
        etcd,
        d1,
        _d2,
        files,
        mut r1,
        r2,
    } = two_replicas("ha", 134, 135).await;
    let services = "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n\
                    spec: {selector: {app: web}, ports: [{port: 18090, protocol: http}]}\n---\n\
                    apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: solo}\n\
                    spec: {selector: {app: solo}, ports: [{port: 18090, protocol: http}]}\n";
    let file = write(&files, "services.yaml", services);
    r1.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();
    // Both proxies know both replicas and start on r1; solo knows only r1.
    let both = format!("{},{}", r1.grpc, r2.grpc);
    let (_web_app, web) = proxy_of(137, "web", &both, &r1).await;
    let (caller_app, caller) = proxy_of(136, "client", &both, &r2).await;
    caller.discover(&["web", "solo"]).await.unwrap();
    let (_solo_app, _solo) = proxy_of(138, "solo", &r1.grpc.to_string(), &r1).await;
    drop(caller_app);
    let proxy = caller.addrs.http_proxy.unwrap();
    eventually("caller sees web and solo", SOON, async || {
        endpoints(&caller.ctx, "web").len() == 1 && endpoints(&caller.ctx, "solo").len() == 1
    })
    .await
    .unwrap();
    assert_eq!(status_via(proxy, "http://web:18090/before").await, "200");
    let via = |name: &'static str| {
        let r2 = &r2;
        async move {
            let out = r2.cli(&["get", "workload", name, "-o", "json"]).await;
            out.success()
                .then(|| {
                    json(&out.stdout)["status"]["controlPlane"]
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        }
    };
    // r2 learns r1's records through etcd's watch: a moment later, on a busy machine.
    eventually("client-1 on r1 first, as r2 sees it", SOON, async || {
        via("client-1").await.as_deref() == Some("r1")
    })
    .await
    .unwrap();

    // r1 dies: both proxies move to r2, and a route change made there reaches the caller.
    r1.signal("KILL").unwrap();
    r1.wait_exit(SOON).await.unwrap();
    drop(r1);
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n\
                 spec: {parentRefs: [{name: web}], rules: [{timeouts: {request: 7s}, backendRefs: [{name: web, port: 18090}]}]}\n";
    let file = write(&files, "route.yaml", route);
    let out = r2
        .cli_with(&["apply", "-f", file.to_str().unwrap()], d1.path(), None)
        .await;
    assert_eq!(out.ok(), "httproute/web created\n");
    let applied = Instant::now();
    eventually(
        "the caller applies the route within 5 s",
        Duration::from_secs(5),
        async || {
            caller
                .ctx
                .config()
                .destinations
                .iter()
                .any(|d| d.service == "web" && !d.routes.is_empty())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "failover: the route reached the caller {:?} after it was applied on r2",
        applied.elapsed()
    );
    assert_eq!(status_via(proxy, "http://web:18090/after").await, "200");
    eventually("both proxies re-registered through r2", SOON, async || {
        via("client-1").await.as_deref() == Some("r2")
            && via("web-1").await.as_deref() == Some("r2")
    })
    .await
    .unwrap();
    assert!(web.ctx.ready.load(Ordering::SeqCst));

    // solo could not follow: its record (connected through dead r1) is swept by r2 after
    // the grace period, and callers stop seeing it as an endpoint.
    eventually("solo-1 swept", Duration::from_secs(30), async || {
        !r2.cli(&["get", "workload", "solo-1"]).await.success()
    })
    .await
    .unwrap();
    eventually("the caller drops solo's endpoint", SOON, async || {
        endpoints(&caller.ctx, "solo").is_empty()
    })
    .await
    .unwrap();
    caller.shutdown().await;
    web.shutdown().await;
    drop(r2);
    drop(etcd);
}
