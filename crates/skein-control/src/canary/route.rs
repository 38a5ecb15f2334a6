//! The HTTPRoute a Canary owns: named after the Canary, in its namespace, annotated
//! `skein.dev/canary: NAME`, attached to the target Service (and port), sending traffic as
//! the status says ([`super::plan::shape`]): a weighted split of stable and canary, A/B
//! matching, or stable with every request mirrored to the canary. Written only when it
//! differs from what is stored; a deleted Canary's route is released, not deleted, so
//! traffic stays where it was.

use super::plan::{shape, Shape};
use crate::registry::Registry;
use skein_model::resource::{
    parse_documents, Canary, CanaryStatus, Kind, Resource, ResourceKey, CANARY_ANNOTATION,
    CANARY_RELEASED_ANNOTATION,
};

/// The route a Canary with this status wants (`None` only if it cannot be written, which
/// validation of the Canary rules out).
pub fn desired(canary: &Canary, status: &CanaryStatus) -> Option<Resource> {
    let spec = &canary.spec;
    // Names go in quoted (JSON strings are YAML): `123` or `true` are valid names too.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let (ns, name) = (q(&canary.metadata.namespace), q(&canary.metadata.name));
    let port = spec
        .target_ref
        .port
        .map_or(String::new(), |p| format!(", port: {p}"));
    let backend =
        |service: &str, weight: u32| format!("{{name: {}{port}, weight: {weight}}}", q(service));
    let rules = match shape(spec, status) {
        Shape::Split(w) => format!(
            "- backendRefs: [{}, {}]",
            backend(&spec.stable, 100 - w.min(100)),
            backend(&spec.canary, w.min(100))
        ),
        Shape::Ab => {
            // JSON is YAML: the matches as the user wrote them (defaults filled in).
            let matches = serde_json::to_string(&spec.analysis.matches).unwrap_or_default();
            format!(
                "- matches: {matches}\n  backendRefs: [{}]\n- backendRefs: [{}]",
                backend(&spec.canary, 1),
                backend(&spec.stable, 1)
            )
        }
        Shape::Mirror => format!(
            "- backendRefs: [{}]\n  filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: {}{port}}}}}}}]",
            backend(&spec.stable, 1),
            q(&spec.canary)
        ),
    };
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {ns}, annotations: {{{CANARY_ANNOTATION}: {name}}}}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: {}{port}}}]\n  rules:\n{}\n",
        q(&spec.target_ref.name),
        indent(&rules)
    );
    match parse_documents(&yaml, "canary route") {
        Ok(mut docs) if docs.len() == 1 => Some(docs.remove(0)),
        other => {
            tracing::error!(canary = %canary.metadata.name, result = ?other, "cannot build the canary's route");
            None
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the route if what is stored differs, unless a route the Canary does not own
/// stands in the way (the apply checks refuse that; a store written around them is
/// left alone and logged).
pub async fn ensure(registry: &Registry, canary: &Canary, status: &CanaryStatus) {
    let Some(want) = desired(canary, status) else {
        return;
    };
    let key = want.key();
    let name = &canary.metadata.name;
    if let Some(stored) = registry.get(&key) {
        let ann = &stored.meta().annotations;
        let ours = ann.get(CANARY_ANNOTATION) == Some(name)
            || ann.get(CANARY_RELEASED_ANNOTATION) == Some(name);
        if !ours {
            tracing::warn!(route = %key, canary = %name, "the route named after the Canary is not its own; leaving it alone");
            return;
        }
        if same(&stored, &want) {
            return;
        }
    }
    if let Err(e) = registry.apply_with(vec![want], false).await {
        tracing::warn!(route = %key, error = %e, "cannot write the canary's route; retrying at the next pass");
    }
}

fn same(a: &Resource, b: &Resource) -> bool {
    match (a, b) {
        (Resource::HttpRoute(a), Resource::HttpRoute(b)) => {
            a.spec == b.spec && a.metadata.annotations == b.metadata.annotations
        }
        _ => false,
    }
}

/// Releases routes whose Canary is gone: the annotation becomes
/// `skein.dev/released-by-canary`, the rules stay.
pub async fn release_orphans(registry: &Registry, canaries: &[Resource]) {
    for r in registry.list(Kind::HttpRoute, None) {
        let Resource::HttpRoute(mut route) = r else {
            continue;
        };
        let Some(owner) = route.metadata.annotations.get(CANARY_ANNOTATION).cloned() else {
            continue;
        };
        let key = ResourceKey::new(Kind::Canary, &route.metadata.namespace, &owner);
        if canaries.iter().any(|c| c.key() == key) {
            continue;
        }
        route.metadata.annotations.remove(CANARY_ANNOTATION);
        route
            .metadata
            .annotations
            .insert(CANARY_RELEASED_ANNOTATION.into(), owner.clone());
        let name = route.metadata.name.clone();
        match registry
            .apply_with(vec![Resource::HttpRoute(route)], false)
            .await
        {
            Ok(_) => {
                tracing::info!(route = %name, canary = %owner, "the Canary is gone: its route stays as it was, released")
            }
            Err(e) => {
                tracing::warn!(route = %name, error = %e, "cannot release the route of a deleted Canary")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::resource::CanaryPhase;

    fn canary(analysis: &str, port: &str) -> Canary {
        let yaml = format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {{name: web, namespace: shop}}\n\
             spec: {{targetRef: {{name: web{port}}}, stable: web-v1, canary: web-v2, analysis: {analysis}}}\n"
        );
        match parse_documents(&yaml, "t").unwrap().remove(0) {
            Resource::Canary(c) => *c,
            _ => unreachable!(),
        }
    }

    fn route(c: &Canary, s: &CanaryStatus) -> skein_model::resource::HttpRoute {
        let r = desired(c, s).unwrap();
        r.validate().unwrap();
        match r {
            Resource::HttpRoute(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn splits_follow_the_status() {
        let c = canary("{stepWeights: [5, 50]}", ", port: 8080");
        let mut s = CanaryStatus {
            phase: CanaryPhase::Progressing,
            iterations: 1,
            canary_weight: 50,
            ..CanaryStatus::default()
        };
        let r = route(&c, &s);
        assert_eq!(r.metadata.name, "web");
        assert_eq!(r.metadata.namespace, "shop");
        assert_eq!(r.metadata.annotations[CANARY_ANNOTATION], "web");
        assert_eq!(r.spec.parent_refs[0].name, "web");
        assert_eq!(r.spec.parent_refs[0].port, Some(8080));
        let b = &r.spec.rules[0].backend_refs;
        assert_eq!(
            b.iter()
                .map(|b| (b.name.as_str(), b.weight, b.port))
                .collect::<Vec<_>>(),
            [("web-v1", 50, Some(8080)), ("web-v2", 50, Some(8080))]
        );
        s.phase = CanaryPhase::Failed;
        let b = &route(&c, &s).spec.rules[0].backend_refs;
        assert_eq!((b[0].weight, b[1].weight), (100, 0));
        s.phase = CanaryPhase::Succeeded;
        let b = &route(&c, &s).spec.rules[0].backend_refs;
        assert_eq!((b[0].weight, b[1].weight), (0, 100));
    }

    #[test]
    fn names_that_read_as_other_yaml_types_stay_names() {
        let yaml = "apiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {name: 'true', namespace: '123'}\n\
             spec: {targetRef: {name: 'null'}, stable: '1e3', canary: 'no', analysis: {stepWeights: [10]}}\n";
        let Resource::Canary(c) = parse_documents(yaml, "t").unwrap().remove(0) else {
            unreachable!()
        };
        let r = route(&c, &CanaryStatus::default());
        assert_eq!(
            (r.metadata.name.as_str(), r.metadata.namespace.as_str()),
            ("true", "123")
        );
        assert_eq!(r.spec.parent_refs[0].name, "null");
        let b = &r.spec.rules[0].backend_refs;
        assert_eq!((b[0].name.as_str(), b[1].name.as_str()), ("1e3", "no"));
    }

    #[test]
    fn ab_and_mirror_routes() {
        let c = canary(
            "{iterations: 2, match: [{headers: [{name: x-canary, value: 'yes'}]}, {cookies: [{name: beta, value: '1'}]}]}",
            "",
        );
        let s = CanaryStatus {
            phase: CanaryPhase::Progressing,
            ..CanaryStatus::default()
        };
        let r = route(&c, &s);
        assert_eq!(r.spec.rules.len(), 2);
        assert_eq!(r.spec.rules[0].matches, c.spec.analysis.matches);
        assert_eq!(r.spec.rules[0].backend_refs[0].name, "web-v2");
        assert_eq!(r.spec.rules[1].backend_refs[0].name, "web-v1");
        assert_eq!(r.spec.parent_refs[0].port, None);

        let c = canary("{stepWeights: [10], mirror: true}", "");
        let r = route(&c, &s);
        let rule = &r.spec.rules[0];
        assert_eq!(rule.backend_refs.len(), 1);
        assert_eq!(rule.backend_refs[0].name, "web-v1");
        let mirror = rule.filters[0].request_mirror.as_ref().unwrap();
        assert_eq!(mirror.backend_ref.name, "web-v2");
    }
}
