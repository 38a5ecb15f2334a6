//! An HTTPRoute's `status`, in the Gateway API's shape: per parent Service, whether the
//! route is `Accepted` there and whether its references resolve (`ResolvedRefs`), each a
//! condition with the spec's reasons and a message saying what to fix.
//!
//! The control plane computes it from the mesh as it is (it is never written by users,
//! and never stored): `skein get httproute NAME -o yaml` shows it, and `skein apply`
//! warns about a route it just stored whose conditions are not `True`.

use super::route::ParentRef;
use serde::{Deserialize, Serialize};

/// The `controllerName` Skein reports its conditions under.
pub const CONTROLLER_NAME: &str = "skein.dev/mesh";

/// `status` of an HTTPRoute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// One entry per `parentRefs` entry, in order.
    pub parents: Vec<RouteParentStatus>,
}

/// The route's conditions at one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent, namespace filled in.
    pub parent_ref: ParentRef,
    /// Always [`CONTROLLER_NAME`].
    pub controller_name: String,
    /// `Accepted`, then `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

/// One condition (Kubernetes `metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    /// The spec's reason (`Accepted`, `NoMatchingParent`, `ResolvedRefs`,
    /// `BackendNotFound`, `RefNotPermitted`).
    pub reason: String,
    /// What holds, or what is wrong and how to fix it.
    pub message: String,
    /// The route's `metadata.generation` the condition was computed for.
    pub observed_generation: u64,
    /// When the condition last changed status or reason, as this control plane saw it
    /// (RFC 3339, UTC).
    pub last_transition_time: String,
}

impl RouteStatus {
    /// Every condition that is not `True`, as `parent: Type (Reason): message` lines.
    pub fn problems(&self) -> Vec<String> {
        self.parents
            .iter()
            .flat_map(|p| {
                let parent = match &p.parent_ref.namespace {
                    Some(ns) => format!("{ns}/{}", p.parent_ref.name),
                    None => p.parent_ref.name.clone(),
                };
                p.conditions
                    .iter()
                    .filter(|c| c.status != "True")
                    .map(move |c| {
                        format!(
                            "parent Service/{parent}: {} is False ({}): {}",
                            c.kind, c.reason, c.message
                        )
                    })
            })
            .collect()
    }
}
