//! Warnings `apply` answers alongside its results: references to resources that do not
//! exist (yet), stored, not refused, since the resource they name may be applied next (the
//! warning says what happens meanwhile); and settings whose effect reaches further than
//! the line that sets them (a Mesh's `defaultPolicy: deny`).

use super::{Kind, Resource, ResourceKey};

/// Warnings for `docs` (being applied); `exists` says whether a resource is stored or
/// among `docs`.
pub fn dangling(docs: &[Resource], exists: impl Fn(&ResourceKey) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for r in docs {
        if let Resource::Mesh(m) = r {
            if m.spec.default_policy == super::PolicyAction::Deny {
                out.push(format!(
                    "{}: defaultPolicy is deny: every request and connection that no AuthorizationPolicy allows is refused (403, PERMISSION_DENIED, or the TCP connection closed), between services that talked freely until now too; `defaultPolicy: audit` first shows what deny would refuse, and `skein policy suggest` writes policies for the traffic observed",
                    r.key()
                ));
            }
            continue;
        }
        if let Resource::Canary(c) = r {
            let ns = c.metadata.namespace.as_str();
            let spec = &c.spec;
            let roles = [
                (
                    "targetRef",
                    &spec.target_ref.name,
                    "the rollout waits until it does",
                ),
                ("stable", &spec.stable, "the rollout waits until it does"),
                ("canary", &spec.canary, "the rollout waits until it does"),
            ];
            for (field, name, meanwhile) in roles {
                let k = ResourceKey::new(Kind::Service, ns, name);
                if !exists(&k) {
                    out.push(format!(
                        "{}: {field} names {k}, which does not exist: {meanwhile}",
                        r.key()
                    ));
                }
            }
            continue;
        }
        let Resource::HttpRoute(route) = r else {
            continue;
        };
        let (key, ns) = (r.key(), route.metadata.namespace.as_str());
        let service = |name: &str, namespace: Option<&String>| {
            ResourceKey::new(Kind::Service, namespace.map_or(ns, |n| n.as_str()), name)
        };
        for parent in &route.spec.parent_refs {
            let k = service(&parent.name, parent.namespace.as_ref());
            if !exists(&k) {
                out.push(format!("{key}: parentRefs names {k}, which does not exist: the route applies once it does"));
            }
        }
        for (i, rule) in route.spec.rules.iter().enumerate() {
            for b in &rule.backend_refs {
                if !b.is_service() {
                    let group = if b.group.is_empty() { "core" } else { &b.group };
                    out.push(format!("{key}: rules[{i}] sends to a {} of group {group} named {}, which Skein does not resolve (only Services): those requests are answered 500 backend_unresolved", b.kind, b.name));
                    continue;
                }
                let k = service(&b.name, b.namespace.as_ref());
                if !exists(&k) {
                    out.push(format!("{key}: rules[{i}] sends to {k}, which does not exist: those requests are answered 500 backend_unresolved until it does"));
                }
            }
            let filters = rule
                .filters
                .iter()
                .chain(rule.backend_refs.iter().flat_map(|b| &b.filters));
            for f in filters {
                if let Some(m) = &f.request_mirror {
                    let k = service(&m.backend_ref.name, m.backend_ref.namespace.as_ref());
                    if !exists(&k) {
                        out.push(format!("{key}: rules[{i}] mirrors to {k}, which does not exist: copies are dropped until it does"));
                    }
                }
                if let Some(e) = &f.extension_ref {
                    let k = ResourceKey::new(Kind::FaultInjection, ns, &e.name);
                    if !exists(&k) {
                        out.push(format!("{key}: rules[{i}] names {k}, which does not exist: every request of the rule is answered 500 until it does"));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    #[test]
    fn a_deny_by_default_mesh_says_what_it_does() {
        let mesh = |policy: &str| {
            let text = format!("apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{defaultPolicy: {policy}}}\n");
            parse_documents(&text, "test").unwrap()
        };
        let w = dangling(&mesh("deny"), |_| true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("Mesh/default: defaultPolicy is deny: every request and connection that no AuthorizationPolicy allows is refused"),
            "{}",
            w[0]
        );
        assert!(dangling(&mesh("allow"), |_| true).is_empty());
        assert!(dangling(&mesh("audit"), |_| true).is_empty());
    }

    #[test]
    fn a_canary_names_its_missing_services() {
        let docs = parse_documents(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n\
             ---\napiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {name: web}\n\
             spec: {targetRef: {name: web}, stable: web-v1, canary: web-v2, analysis: {stepWeight: 10}}\n",
            "test",
        )
        .unwrap();
        let keys: Vec<ResourceKey> = docs.iter().map(Resource::key).collect();
        let w = dangling(&docs, |k| keys.contains(k));
        assert_eq!(
            w,
            [
                "Canary/default/web: stable names Service/default/web-v1, which does not exist: the rollout waits until it does",
                "Canary/default/web: canary names Service/default/web-v2, which does not exist: the rollout waits until it does",
            ]
        );
    }

    #[test]
    fn references_to_missing_resources_are_named() {
        let docs = parse_documents(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n\
             spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: web-v2}], filters: [\
             {type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}, \
             {type: ExtensionRef, extensionRef: {group: skein.dev, kind: FaultInjection, name: chaos}}]}]}\n",
            "test",
        )
        .unwrap();
        let keys: Vec<ResourceKey> = docs.iter().map(Resource::key).collect();
        let w = dangling(&docs, |k| keys.contains(k));
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].contains("sends to Service/default/web-v2, which does not exist"),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("mirrors to Service/default/shadow"),
            "{}",
            w[1]
        );
        assert!(w[2].contains("names FaultInjection/default/chaos, which does not exist: every request of the rule is answered 500"), "{}", w[2]);
        assert!(dangling(&docs, |_| true).is_empty());
    }
}
