//! Settings the control plane accepts and stores but no proxy enforces yet. Applying a
//! resource that uses one answers with a warning naming the field and what happens
//! instead, so nothing is silently ignored. Each entry leaves this list in the change that
//! makes proxies enforce it.

use super::Resource;

/// Warnings for the settings of `r` that nothing enforces yet (empty: everything in it
/// takes effect).
pub fn unenforced(r: &Resource) -> Vec<String> {
    let key = r.key();
    let mut out = Vec::new();
    match r {
        Resource::HttpRoute(route) if !route.spec.hostnames.is_empty() => out.push(format!(
            "{key}: spec.hostnames is not used yet: the route applies to every request to its parent Services"
        )),
        Resource::Service(service) => {
            for p in service
                .spec
                .ports
                .iter()
                .filter(|p| p.target_port != p.port)
            {
                out.push(format!(
                    "{key}: ports[port {}].targetPort {} is not used yet: traffic reaches the workloads on port {}",
                    p.port, p.target_port, p.port
                ));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    fn warnings(yaml: &str) -> Vec<String> {
        parse_documents(yaml, "test")
            .unwrap()
            .iter()
            .flat_map(unenforced)
            .collect()
    }

    #[test]
    fn what_is_not_enforced_is_named_and_the_rest_is_quiet() {
        assert!(warnings(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n"
        )
        .is_empty());
        let w = warnings(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n\
             ---\napiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec: {targetRef: {name: web}}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n\
             spec: {parentRefs: [{name: web}], hostnames: [web.example], rules: [{matches: [{headers: [{type: RegularExpression, name: cookie, value: 'v=2'}]}], backendRefs: [{name: web}]}]}\n",
        );
        // BackendPolicy and regular expressions are enforced: no word about them.
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].contains("targetPort 8080 is not used yet"), "{}", w[0]);
        assert!(w[1].contains("spec.hostnames is not used yet"), "{}", w[1]);
    }
}
