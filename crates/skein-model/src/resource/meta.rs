//! The envelope every resource shares: [`ObjectMeta`] (name, namespace, labels, annotations
//! and the fields the store maintains) and [`Object`], which pairs it with a spec and an
//! optional status.

use super::kind::Kind;
use super::validate::{is_label_key, is_rfc3339, Problems, LABEL_KEY};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Largest total size of a resource's annotations (keys and values), as in Kubernetes.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Name, namespace and bookkeeping of a resource (`metadata:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The name, unique per kind and namespace: a DNS-1123 subdomain (a DNS-1123 label for
    /// `Service` and `Workload`, whose names become host names and proxy identities).
    pub name: String,
    /// The namespace: a DNS-1123 label. Default `default` for namespaced kinds; must be
    /// absent or empty for `Mesh`, which is cluster-scoped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels (Kubernetes key and value rules); services select workloads by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations; keys follow the label-key rules, at most 256 KiB in all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The store's version of this resource, increasing with every write. Set by the store;
    /// when given on apply, the write succeeds only if it still matches (optimistic
    /// concurrency). Written as a string like Kubernetes; a number is accepted too. `0` or
    /// absent: not set.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        serialize_with = "version_to_string",
        deserialize_with = "version_from_either"
    )]
    pub resource_version: u64,
    /// Incremented by the store on every change of `spec`; absent or `0`: not set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// When the store first saw this resource (RFC 3339, UTC). Set by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Metadata with just a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            ..ObjectMeta::default()
        }
    }

    /// Checks the metadata of a resource of `kind`.
    pub(crate) fn validate(&self, kind: Kind, p: &mut Problems) {
        if matches!(kind, Kind::Service | Kind::Workload) {
            p.dns_label("metadata.name", &self.name);
        } else {
            p.dns_subdomain("metadata.name", &self.name);
        }
        if kind.is_namespaced() {
            p.dns_label("metadata.namespace", &self.namespace);
        } else {
            p.check(
                self.namespace.is_empty(),
                "metadata.namespace",
                &self.namespace,
                &format!("no namespace: {kind} is cluster-scoped"),
            );
        }
        p.labels("metadata.labels", &self.labels);
        let mut size = 0;
        for (key, value) in &self.annotations {
            let path = format!("metadata.annotations.{key}");
            p.check(is_label_key(key), path, key, LABEL_KEY);
            size += key.len() + value.len();
        }
        p.check(
            size <= MAX_ANNOTATIONS_BYTES,
            "metadata.annotations",
            format!("{size} bytes"),
            "at most 262144 bytes of keys and values in all",
        );
        if let Some(ts) = &self.creation_timestamp {
            p.check(
                is_rfc3339(ts),
                "metadata.creationTimestamp",
                ts,
                "an RFC 3339 timestamp such as 2024-05-01T10:00:00Z",
            );
        }
    }
}

/// A resource of one kind: metadata, spec and an optional status. `apiVersion` and `kind`
/// are implied by the [`super::Resource`] variant and written out by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    bound(deserialize = "Spec: Deserialize<'de>, Status: Deserialize<'de>")
)]
pub struct Object<Spec, Status = serde_json::Value> {
    /// Name, namespace, labels and bookkeeping.
    pub metadata: ObjectMeta,
    /// The desired state, written by users.
    pub spec: Spec,
    /// What the system reports back; absent until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl<Spec, Status> Object<Spec, Status> {
    /// A resource without status.
    pub fn new(metadata: ObjectMeta, spec: Spec) -> Self {
        Object {
            metadata,
            spec,
            status: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn version_to_string<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn version_from_either<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match Either::deserialize(d) {
        Ok(Either::Number(n)) => Ok(n),
        Ok(Either::Text(t)) if t.is_empty() => Ok(0),
        Ok(Either::Text(t)) => t.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid value {t:?}: expected a resource version (a whole number, as the store wrote it)"
            ))
        }),
        Err(_) => Err(serde::de::Error::custom(
            "invalid value: expected a resource version (a whole number, as the store wrote it)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(kind: Kind, meta: &ObjectMeta) -> Vec<String> {
        let mut p = Problems::new();
        meta.validate(kind, &mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn names_and_namespaces() {
        let meta = ObjectMeta::new("Prod", "web.v1");
        assert_eq!(
            problems(Kind::Service, &meta),
            [
                "metadata.name: \"web.v1\" is not accepted; expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                "metadata.namespace: \"Prod\" is not accepted; expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
            ]
        );
        // Routes may use dotted names.
        assert_eq!(
            problems(Kind::HttpRoute, &ObjectMeta::new("a", "web.v1")).len(),
            0
        );
        assert_eq!(
            problems(Kind::HttpRoute, &ObjectMeta::new("a", "Web")),
            ["metadata.name: \"Web\" is not accepted; expected a DNS-1123 subdomain: at most 253 characters of lowercase letters, digits, '-' or '.', each dot-separated part starting and ending with a letter or digit"]
        );
    }

    #[test]
    fn mesh_has_no_namespace() {
        assert_eq!(
            problems(Kind::Mesh, &ObjectMeta::new("default", "default")),
            ["metadata.namespace: \"default\" is not accepted; expected no namespace: Mesh is cluster-scoped"]
        );
        assert!(problems(Kind::Mesh, &ObjectMeta::new("", "default")).is_empty());
    }

    #[test]
    fn labels_annotations_and_timestamp() {
        let mut meta = ObjectMeta::new("default", "web");
        meta.labels.insert("app".into(), "bad value".into());
        meta.labels.insert("-x".into(), "ok".into());
        meta.annotations.insert("a b".into(), "x".into());
        meta.annotations
            .insert("note".into(), "x".repeat(MAX_ANNOTATIONS_BYTES));
        meta.creation_timestamp = Some("yesterday".into());
        assert_eq!(
            problems(Kind::Service, &meta),
            [
                format!("metadata.labels.-x: \"-x\" is not accepted; expected {LABEL_KEY}"),
                format!(
                    "metadata.labels.app: \"bad value\" is not accepted; expected {}",
                    super::super::validate::LABEL_VALUE
                ),
                format!("metadata.annotations.a b: \"a b\" is not accepted; expected {LABEL_KEY}"),
                "metadata.annotations: \"262152 bytes\" is not accepted; expected at most 262144 bytes of keys and values in all".into(),
                "metadata.creationTimestamp: \"yesterday\" is not accepted; expected an RFC 3339 timestamp such as 2024-05-01T10:00:00Z".into(),
            ]
        );
    }

    #[test]
    fn resource_version_is_a_string_and_accepts_a_number() {
        let meta: ObjectMeta = serde_yaml_ng::from_str("{name: a, resourceVersion: 7}").unwrap();
        assert_eq!(meta.resource_version, 7);
        let meta: ObjectMeta = serde_yaml_ng::from_str("{name: a, resourceVersion: '8'}").unwrap();
        assert_eq!(meta.resource_version, 8);
        assert_eq!(
            serde_json::to_string(&meta).unwrap(),
            r#"{"name":"a","resourceVersion":"8"}"#
        );
        let err =
            serde_yaml_ng::from_str::<ObjectMeta>("{name: a, resourceVersion: x}").unwrap_err();
        assert!(
            err.to_string().contains("expected a resource version"),
            "{err}"
        );
    }
}
