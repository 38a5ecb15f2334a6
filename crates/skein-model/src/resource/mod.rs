//! Kubernetes-shaped resources of the control plane: `apiVersion`, `kind`, `metadata`,
//! `spec` and, where the system reports back, `status`.
//!
//! Users write them in YAML ([`parse_documents`] reads many documents at once and reports
//! every problem of every document); the store keeps them as JSON (`Resource` implements
//! `Serialize` and `Deserialize`). Unknown fields are refused with their full path,
//! defaults are applied on parse so that printing a resource shows them, and
//! [`Resource::validate`] names the resource, the field, the value and what is accepted.
//!
//! | kind | apiVersion | scope |
//! |---|---|---|
//! | `Mesh` | `skein.dev/v1alpha1` | cluster |
//! | `Service`, `Workload`, `AuthorizationPolicy`, `BackendPolicy`, `FaultInjection`, `Canary` | `skein.dev/v1alpha1` | namespace |
//! | `HTTPRoute` | `gateway.networking.k8s.io/v1` | namespace |
//! | `ReferenceGrant` | `gateway.networking.k8s.io/v1beta1` | namespace |

mod backend;
mod canary;
mod fault;
pub mod filter;
mod grant;
mod kind;
mod mesh;
mod meta;
mod opt_duration;
mod parse;
mod policy;
mod problem;
mod route;
mod route_status;
mod service;
pub mod validate;
mod warnings;
mod workload;

pub use backend::{
    AdaptiveLimit, BackendPolicySpec, ConnectionPool, InboundLimit, LoadBalancer, OutlierDetection,
    RetryBudget,
};
pub use canary::{
    webhook_addr, Analysis, CanaryAction, CanaryEvent, CanaryMetric, CanaryPhase, CanarySpec,
    CanaryStatus, CanaryTarget, CheckRecord, CheckResult, MetricName, ThresholdRange, Webhook,
    WebhookType, CANARY_ANNOTATION, CANARY_RELEASED_ANNOTATION, DEFAULT_MAX_WEIGHT, MAX_HISTORY,
};
pub use fault::{FaultAbort, FaultDelay, FaultInjectionSpec, ResolvedFault};
pub use grant::{GrantFrom, GrantTo, ReferenceGrantSpec, GATEWAY_GROUP};
pub use kind::{
    Kind, ResourceKey, GATEWAY_API_BETA_VERSION, GATEWAY_API_VERSION, SKEIN_API_VERSION,
};
pub use mesh::{
    MeshSpec, MtlsMode, PolicyAction, DEFAULT_SERVICE_CIDR, MAX_CERT_TTL, MIN_CERT_TTL,
    SERVICE_CIDR,
};
pub use meta::{Object, ObjectMeta};
pub use parse::parse_documents;
pub use policy::{AuthorizationPolicySpec, AuthorizationRule, Operation, Source, TargetRef};
pub use problem::{Cause, ResourceProblem};
pub use route::{
    compile_regex, BackendRef, HeaderMatch, HttpRouteSpec, ParentRef, PathMatch, PathMatchType,
    QueryParamMatch, RouteMatch, RouteRetry, RouteRule, RouteTimeouts, TryDeadline, ValueMatchType,
    MAX_RULES, REGEX_SIZE_LIMIT,
};
pub use route_status::{Condition, RouteParentStatus, RouteStatus, CONTROLLER_NAME};
pub use service::{ServicePort, ServiceSpec};
pub use warnings::dangling;
pub use workload::{WorkloadSpec, WorkloadStatus};

use crate::{FieldError, ModelError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use validate::Problems;

/// A `Mesh` resource.
pub type Mesh = Object<MeshSpec>;
/// A `Service` resource.
pub type Service = Object<ServiceSpec>;
/// A `Workload` resource, with its connection status.
pub type Workload = Object<WorkloadSpec, WorkloadStatus>;
/// An `HTTPRoute` resource.
pub type HttpRoute = Object<HttpRouteSpec>;
/// An `AuthorizationPolicy` resource.
pub type AuthorizationPolicy = Object<AuthorizationPolicySpec>;
/// A `BackendPolicy` resource.
pub type BackendPolicy = Object<BackendPolicySpec>;
/// A `FaultInjection` resource.
pub type FaultInjection = Object<FaultInjectionSpec>;
/// A `Canary` resource, with the controller's status.
pub type Canary = Object<CanarySpec, CanaryStatus>;
/// A `ReferenceGrant` resource.
pub type ReferenceGrant = Object<ReferenceGrantSpec>;

/// Any resource, one variant per [`Kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// Mesh-wide settings.
    Mesh(Mesh),
    /// A service.
    Service(Service),
    /// A workload.
    Workload(Workload),
    /// An HTTP route.
    HttpRoute(HttpRoute),
    /// An authorization policy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A backend policy.
    BackendPolicy(BackendPolicy),
    /// Injected faults.
    FaultInjection(FaultInjection),
    /// A progressive rollout (boxed: its status makes it the largest kind by far).
    Canary(Box<Canary>),
    /// Permission to refer to Services across namespaces.
    ReferenceGrant(ReferenceGrant),
}

/// Runs `$body` with `$r` bound to the object inside any variant.
macro_rules! each {
    ($resource:expr, $r:ident => $body:expr) => {
        match $resource {
            Resource::Mesh($r) => $body,
            Resource::Service($r) => $body,
            Resource::Workload($r) => $body,
            Resource::HttpRoute($r) => $body,
            Resource::AuthorizationPolicy($r) => $body,
            Resource::BackendPolicy($r) => $body,
            Resource::FaultInjection($r) => $body,
            Resource::Canary($r) => $body,
            Resource::ReferenceGrant($r) => $body,
        }
    };
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Mesh(_) => Kind::Mesh,
            Resource::Service(_) => Kind::Service,
            Resource::Workload(_) => Kind::Workload,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::BackendPolicy(_) => Kind::BackendPolicy,
            Resource::FaultInjection(_) => Kind::FaultInjection,
            Resource::Canary(_) => Kind::Canary,
            Resource::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        each!(self, r => &r.metadata)
    }

    /// Its metadata, to change (the store sets `resourceVersion`, `generation`,
    /// `creationTimestamp`).
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, r => &mut r.metadata)
    }

    /// Its identity in the store.
    pub fn key(&self) -> ResourceKey {
        let meta = self.meta();
        ResourceKey::new(self.kind(), &meta.namespace, &meta.name)
    }

    /// Drops the status (what the system reported), leaving the desired state.
    pub fn clear_status(&mut self) {
        each!(self, r => r.status = None)
    }

    /// Whether the resource carries a status.
    pub fn has_status(&self) -> bool {
        each!(self, r => r.status.is_some())
    }

    /// How messages name it: `HTTPRoute default/restaurant`, `Mesh default`.
    pub fn describe(&self) -> String {
        let meta = self.meta();
        if self.kind().is_namespaced() {
            format!("{} {}/{}", self.kind(), meta.namespace, meta.name)
        } else {
            format!("{} {}", self.kind(), meta.name)
        }
    }

    /// The resource as YAML, defaults included; [`parse_documents`] reads it back.
    pub fn to_yaml(&self) -> String {
        // Plain data with string keys always serialises.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// The resource as pretty-printed JSON, defaults included.
    pub fn to_json(&self) -> String {
        // Plain data with string keys always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every rule and reports every problem at once, each naming this resource.
    pub fn validate(&self) -> Result<(), ModelError> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let resource = self.describe();
        Err(ModelError::Resources {
            origin: resource.clone(),
            problems: problems
                .into_iter()
                .map(|field| ResourceProblem::invalid(&resource, field))
                .collect(),
        })
    }

    /// Every broken rule, paths relative to the document (`spec.ports[0].port`).
    pub(crate) fn problems(&self) -> Vec<FieldError> {
        let mut p = Problems::new();
        self.meta().validate(self.kind(), &mut p);
        match self {
            Resource::Mesh(r) => r.spec.validate(&mut p),
            Resource::Service(r) => r.spec.validate(&mut p),
            Resource::Workload(r) => {
                r.spec.validate(&mut p);
                if let Some(status) = &r.status {
                    status.validate(&mut p);
                }
            }
            Resource::HttpRoute(r) => r.spec.validate(&mut p),
            Resource::AuthorizationPolicy(r) => r.spec.validate(&mut p),
            Resource::BackendPolicy(r) => r.spec.validate(&mut p),
            Resource::FaultInjection(r) => r.spec.validate(&mut p),
            Resource::Canary(r) => r.spec.validate(&mut p),
            Resource::ReferenceGrant(r) => r.spec.validate(&mut p),
        }
        p.into_vec()
    }

    /// Defaults that depend on the kind: namespaced kinds without a namespace are in
    /// `default`.
    fn apply_defaults(&mut self) {
        let namespaced = self.kind().is_namespaced();
        let meta = self.meta_mut();
        if namespaced && meta.namespace.is_empty() {
            meta.namespace = "default".to_string();
        }
    }
}

/// The wire form: `apiVersion` and `kind` first, then the object's own fields.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    object: &'a T,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (api_version, kind) = (self.kind().api_version(), self.kind().name());
        each!(self, object => Tagged { api_version, kind, object }.serialize(s))
    }
}

impl<'de> Deserialize<'de> for Resource {
    /// Reads any one resource document (YAML or JSON) and applies its defaults; does not
    /// validate (see [`Resource::validate`]). Errors name the field path.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml_ng::Value::deserialize(d)?;
        parse::from_value(value)
            .map_err(|(cause, field)| serde::de::Error::custom(problem::detail(cause, &field)))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
