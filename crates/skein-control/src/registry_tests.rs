//! Registry tests: what `mesh_state` makes of stored resources, through a real embedded
//! store.

use super::*;
use crate::snapshot::snapshot_for;
use skein_identity::DenyList;
use skein_model::resource::parse_documents;

async fn registry(name: &str) -> (Arc<Registry>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("skein-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = crate::store::embedded::EmbeddedStore::open(&dir).unwrap();
    (Registry::load(Arc::new(store)).await.unwrap(), dir)
}

async fn apply(registry: &Registry, yaml: &str) {
    registry
        .apply(parse_documents(yaml, "test").unwrap())
        .await
        .unwrap();
}

const SERVICES: &str = "
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: db}
spec: {selector: {app: db}, ports: [{port: 5432}], addresses: [198.18.0.10]}
";

#[tokio::test]
async fn a_service_without_addresses_gets_one_from_the_mesh_range_in_proxy_snapshots() {
    let (registry, dir) = registry("vip").await;
    apply(&registry, SERVICES).await;
    // No Mesh yet: the default range.
    let state = registry.subscribe().borrow().clone();
    let web = state.services.iter().find(|s| s.name == "web").unwrap();
    let default: IpNet = "10.240.0.0/16".parse().unwrap();
    assert_eq!(web.addresses.len(), 1);
    assert!(default.contains(&web.addresses[0]), "{:?}", web.addresses);

    apply(
        &registry,
        "{apiVersion: skein.dev/v1alpha1, kind: Mesh, metadata: {name: default}, \
          spec: {serviceCIDRs: [198.18.128.0/20, 'fd00:10:240::/112']}}",
    )
    .await;
    let state = registry.subscribe().borrow().clone();
    let me = crate::snapshot::WorkloadView {
        name: "client-1".into(),
        namespace: "default".into(),
        labels: BTreeMap::new(),
        address: [127, 0, 0, 9].into(),
        inbound_port: 4143,
        app_ports: vec![],
        account: "client".into(),
        lineage: None,
    };
    let snap = snapshot_for(
        &me,
        &state.services,
        &[],
        "skein.local",
        &DenyList::default(),
    );
    let addresses = |name: &str| {
        let d = snap
            .destinations
            .iter()
            .find(|d| d.service == name)
            .unwrap();
        d.addresses
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .collect::<Vec<_>>()
    };
    let web = addresses("web");
    assert_eq!(web.len(), 2, "one per family: {web:?}");
    assert!("198.18.128.0/20"
        .parse::<IpNet>()
        .unwrap()
        .contains(&web[0]));
    assert!("fd00:10:240::/112"
        .parse::<IpNet>()
        .unwrap()
        .contains(&web[1]));
    assert_eq!(
        addresses("db"),
        ["198.18.0.10".parse::<IpAddr>().unwrap()],
        "its own only"
    );
    // What the API shows; nothing was written to the stored Service.
    let shown = registry.service_addresses(Some("default"));
    assert_eq!(shown["default/web"], web);
    let Some(Resource::Service(stored)) =
        registry.get(&ResourceKey::new(Kind::Service, "default", "web"))
    else {
        panic!("web is stored");
    };
    assert!(stored.spec.addresses.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn services_a_full_range_leaves_without_an_address_are_reported_once() {
    let (registry, dir) = registry("vip-full").await;
    // A /30 holds two; db's own address is outside it.
    apply(
        &registry,
        "{apiVersion: skein.dev/v1alpha1, kind: Mesh, metadata: {name: default}, \
          spec: {serviceCIDRs: [198.18.0.4/30]}}",
    )
    .await;
    apply(&registry, SERVICES).await;
    let more = "---\n{apiVersion: skein.dev/v1alpha1, kind: Service, metadata: {name: api}, spec: {selector: {app: api}, ports: [{port: 80}]}}\n\
                ---\n{apiVersion: skein.dev/v1alpha1, kind: Service, metadata: {name: cache}, spec: {selector: {app: cache}, ports: [{port: 80}]}}\n";
    apply(&registry, more).await;
    let state = registry.subscribe().borrow().clone();
    let without: Vec<&str> = state
        .services
        .iter()
        .filter(|s| s.addresses.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(without.len(), 1, "two of web, api, cache fit: {without:?}");
    let reported = registry.unallocated.lock().unwrap().clone();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].name, without[0]);
    // Recomputing the state (any store change does) warns about nobody again.
    assert!(registry.report_unallocated(reported.clone()).is_empty());
    let db = vip::Unallocated {
        name: "db".into(),
        ..reported[0].clone()
    };
    let both = vec![db.clone(), reported[0].clone()];
    assert_eq!(registry.report_unallocated(both), [db], "only the newcomer");
    std::fs::remove_dir_all(&dir).unwrap();
}
