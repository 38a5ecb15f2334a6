//! The HTTP proxy listener's authority parsing: an authority (from a request's absolute
//! URI or its `Host` header) resolved against a table of mesh services, as
//! `outbound.httpProxy` does for every request. Properties: only a mesh form of a
//! service's name (`name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`, a final
//! `.` allowed) resolves, to the service of that name and the port it names; case does
//! not matter; the fully qualified name resolves to the same; a request built from the
//! authority (absolute URI or `Host`) plans to the same place; a refusal says something.
#![no_main]

use http::Request;
use libfuzzer_sys::fuzz_target;
use skein_model::Destination;
use skein_proxy::destinations::{mesh_name, split_authority, Destinations, Target};
use skein_proxy::outbound::{plan, Addressed};
use std::sync::{Arc, OnceLock};

const TABLE: &str = "
- {service: web, namespace: default, ports: [{port: 80}, {port: 8080}], endpoints: []}
- {service: web, namespace: shop, ports: [{port: 80}], endpoints: []}
- {service: api, namespace: shop, ports: [{port: 9000}], endpoints: []}
- {service: svc, namespace: svc, ports: [{port: 443}], endpoints: []}
";

fn table() -> &'static Destinations {
    static TABLE_ONCE: OnceLock<Destinations> = OnceLock::new();
    TABLE_ONCE.get_or_init(|| {
        let specs: Vec<Destination> = serde_yaml_ng::from_str(TABLE).unwrap();
        let specs: Vec<_> = specs.into_iter().map(Arc::new).collect();
        Destinations::new(&specs, "default", None).in_domain("mesh.example")
    })
}

/// The forms Kubernetes DNS gives a Service in domain `mesh.example`, written here apart
/// from the proxy's parser: `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.mesh.example`,
/// with one optional final dot; name and namespace DNS labels.
fn kubernetes_form(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    let is_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let rest = labels.get(2..).unwrap_or(&[]);
    labels.iter().take(2).all(|l| is_label(l))
        && match rest {
            [] => true,
            [svc] => svc.eq_ignore_ascii_case("svc"),
            [svc, domain @ ..] => {
                svc.eq_ignore_ascii_case("svc")
                    && domain.join(".").eq_ignore_ascii_case("mesh.example")
            }
        }
}

fn same(a: &Target, b: &Target) -> bool {
    Arc::ptr_eq(&a.service, &b.service) && a.port.port == b.port.port
}

fuzz_target!(|data: &[u8]| {
    let Ok(authority) = std::str::from_utf8(data) else {
        return;
    };
    let t = table();
    let resolved = t.resolve_authority(authority);
    match &resolved {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(target) => {
            let (host, port) = split_authority(authority).expect("resolved, so it splits");
            assert!(
                kubernetes_form(host),
                "{authority:?} resolved but is no mesh form"
            );
            let (name, namespace) = mesh_name(host, "mesh.example")
                .unwrap_or_else(|| panic!("{authority:?} resolved but mesh_name refuses it"));
            let spec = &target.service.spec;
            assert!(spec.service.eq_ignore_ascii_case(name), "{authority:?}");
            if let Some(ns) = namespace {
                assert!(spec.namespace.eq_ignore_ascii_case(ns), "{authority:?}");
            }
            if let Some(p) = port {
                assert_eq!(target.port.port, p, "{authority:?}");
            }
            let full = format!(
                "{}.{}.svc.mesh.example.:{}",
                spec.service, spec.namespace, target.port.port
            );
            let again = t.resolve_authority(&full).expect("the full name resolves");
            assert!(same(target, &again), "{authority:?} and {full:?}");
        }
    }
    for case in [
        authority.to_ascii_uppercase(),
        authority.to_ascii_lowercase(),
    ] {
        match (&resolved, t.resolve_authority(&case)) {
            (Ok(a), Ok(b)) => assert!(same(a, &b), "{authority:?} and {case:?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{authority:?}: {a:?}, but {case:?}: {b:?}"),
        }
    }
    // As the HTTP proxy meets it: in an absolute URI, or in a Host header.
    let requests = [
        Request::builder()
            .uri(format!("http://{authority}/"))
            .body(()),
        Request::builder()
            .uri("/")
            .header("host", authority)
            .body(()),
    ];
    for req in requests.into_iter().flatten() {
        let planned = plan::target(t, &Addressed::Authority, &req);
        // A Host that is not visible ASCII names nothing: refused.
        let Some(named) = plan::authority_of(&req) else {
            assert!(planned.is_err(), "{authority:?}");
            continue;
        };
        match (t.resolve_authority(&named), planned) {
            (Ok(a), Ok(b)) => assert!(same(&a, &b), "{named:?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{named:?}: {a:?}, but planned {b:?}"),
        }
    }
});
