//! The proxy's state in force: the configuration and the destination table built from
//! it, swapped together as one immutable snapshot.
//!
//! Every request reads the snapshot once, when it arrives ([`StateCell::load`]), and
//! routes, authorizes and connects with that one version: a push from the control plane
//! reaches the next request on every open connection (HTTP/1.1 keep-alive, HTTP/2 and
//! gRPC streams alike), and no request sees half of one version and half of the next.
//! Opaque TCP connections resolve once, when they open, and keep their backend for their
//! lifetime.

use crate::destinations::Destinations;
use skein_model::ProxyConfig;
use std::sync::{Arc, RwLock};

/// One version of everything a request needs to know.
#[derive(Debug)]
pub struct State {
    /// The configuration.
    pub config: Arc<ProxyConfig>,
    /// Where services are and who serves them, built from `config`.
    pub destinations: Destinations,
    /// This workload's service, as telemetry labels it (also its account until its
    /// certificate says otherwise: see `Ctx::own_account`).
    pub service: crate::telemetry::Named,
    /// The limit on requests sent to the application at once (`inbound.limit`), kept
    /// from the previous state (resized when changed) so that requests in flight still
    /// count.
    pub app_limit: Option<Arc<crate::inbound::AppLimit>>,
}

impl State {
    /// Builds the destination table for `config`, keeping what `previous` (the state it
    /// replaces) learnt about endpoints and holds in its limiters.
    pub fn new(config: ProxyConfig, previous: Option<&State>) -> Self {
        let destinations = Destinations::new(
            &config.destinations,
            &config.workload.namespace,
            previous.map(|p| &p.destinations),
        )
        .in_domain(
            config
                .dns
                .as_ref()
                .map_or(crate::destinations::DEFAULT_DOMAIN, |d| d.domain.as_str()),
        );
        let service =
            crate::telemetry::Named::new(&config.workload.namespace, &config.workload.service);
        let app_limit =
            config.inbound.limit.as_ref().map(|l| {
                crate::inbound::AppLimit::new(l, previous.and_then(|p| p.app_limit.as_ref()))
            });
        State {
            config: Arc::new(config),
            destinations,
            service,
            app_limit,
        }
    }
}

/// The snapshot in force, replaced whole.
#[derive(Debug)]
pub struct StateCell {
    current: RwLock<Arc<State>>,
}

impl StateCell {
    /// A cell holding `state`.
    pub fn new(state: State) -> Self {
        StateCell {
            current: RwLock::new(Arc::new(state)),
        }
    }

    /// The snapshot in force now: one atomic reference-count increment under a read lock
    /// held for no longer than the clone.
    pub fn load(&self) -> Arc<State> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the snapshot; requests already under way keep the one they loaded.
    pub fn store(&self, state: State) {
        let next = Arc::new(state);
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(service: &str) -> ProxyConfig {
        let yaml = format!(
            "{{workload: {{name: w, service: {service}}}, inbound: {{ports: [{{port: 80}}]}}, \
             destinations: [{{service: {service}, ports: [{{port: 80}}], endpoints: []}}]}}"
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    #[test]
    fn config_and_destinations_swap_together() {
        let cell = StateCell::new(State::new(config("a"), None));
        let before = cell.load();
        cell.store(State::new(config("b"), Some(&before)));
        assert!(before.destinations.resolve("a", 80).is_ok());
        assert!(cell.load().destinations.resolve("a", 80).is_err());
        assert!(cell.load().destinations.resolve("b", 80).is_ok());
        assert_eq!(
            before.config.workload.service, "a",
            "a loaded snapshot never changes"
        );
        assert_eq!(cell.load().config.workload.service, "b");
    }
}
