//! Two-proxy test meshes: `client → proxy A (outbound) → proxy B (inbound) → backends`.
//!
//! [`MeshSpec`] describes the services behind proxy B; [`MeshSpec::start`] runs both
//! proxies in this process, and [`MeshSpec::server_config`] / [`MeshSpec::client_config`]
//! produce the same two configurations for tests that run `skein proxy` as real processes
//! (memory, signals, network namespaces). Every listener binds port 0 on the test's own 127.0.0.x address.

use skein_model::{
    AdminConfig, Destination, Endpoint, InboundConfig, Limits, OutboundConfig, PortSpec, Protocol,
    ProxyConfig, Upstream, WorkloadInfo,
};
use skein_proxy::metrics::sum_samples;
use skein_proxy::RunningProxy;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One service behind the server-side proxy.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name the client side uses.
    pub name: String,
    /// The backend's address (its IP must be the server proxy's `appHost`).
    pub backend: SocketAddr,
    /// Declared protocol.
    pub protocol: Protocol,
}

/// The shape of a test mesh.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// Address of proxy A (the caller's side).
    pub client_ip: IpAddr,
    /// Address of proxy B (the server's side) and of its backends.
    pub server_ip: IpAddr,
    /// Services behind proxy B.
    pub services: Vec<ServiceSpec>,
    /// Detection timeout for proxy A.
    pub detect_timeout: Duration,
    /// Limits for both proxies.
    pub limits: Limits,
}

impl MeshSpec {
    /// A mesh with no services yet; client on 127.0.0.`client`, server on 127.0.0.`server`.
    pub fn new(client: u8, server: u8) -> Self {
        MeshSpec {
            client_ip: crate::loopback(client),
            server_ip: crate::loopback(server),
            services: Vec::new(),
            detect_timeout: Duration::from_millis(300),
            limits: Limits::default(),
        }
    }

    /// Adds a service served by `backend`.
    pub fn service(mut self, name: &str, backend: SocketAddr, protocol: Protocol) -> Self {
        assert_eq!(
            backend.ip(),
            self.server_ip,
            "backends must listen on the server proxy's address"
        );
        self.services.push(ServiceSpec {
            name: name.into(),
            backend,
            protocol,
        });
        self
    }

    /// Proxy B's configuration (inbound listener on port 0).
    pub fn server_config(&self) -> ProxyConfig {
        let ports = self
            .services
            .iter()
            .map(|s| PortSpec {
                port: s.backend.port(),
                protocol: s.protocol,
                target_port: None,
            })
            .collect();
        ProxyConfig {
            workload: WorkloadInfo {
                name: "server-1".into(),
                service: "server".into(),
                namespace: "default".into(),
                labels: Default::default(),
            },
            inbound: InboundConfig {
                listen: SocketAddr::new(self.server_ip, 0),
                app_host: self.server_ip,
                ports,
                limit: None,
            },
            outbound: OutboundConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::new(self.server_ip, 0),
            },
            destinations: Vec::new(),
            authorization: Default::default(),
            limits: self.limits,
            detect_timeout: self.detect_timeout,
            drain_timeout: Duration::from_secs(10),
            telemetry: skein_model::TelemetryConfig {
                // Tests read the control plane's view soon after traffic.
                summary_interval: Duration::from_millis(200),
                ..Default::default()
            },
            dns: None,
        }
    }

    /// Proxy A's configuration, given where proxy B's inbound listener is. Each service
    /// gets an upstream listener (in service order) and the virtual address
    /// `198.18.1.<i+10>` for transparent interception.
    pub fn client_config(&self, server_inbound: SocketAddr) -> ProxyConfig {
        let destinations = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Destination {
                service: s.name.clone(),
                namespace: "default".into(),
                ports: vec![PortSpec {
                    port: s.backend.port(),
                    protocol: s.protocol,
                    target_port: None,
                }],
                addresses: vec![Self::virtual_ip(i)],
                endpoints: vec![Endpoint {
                    address: server_inbound,
                    identity: None,
                }],
                routes: Vec::new(),
                identities: Vec::new(),
                policies: Vec::new(),
            })
            .map(std::sync::Arc::new)
            .collect();
        let upstreams = self
            .services
            .iter()
            .map(|s| Upstream {
                listen: SocketAddr::new(self.client_ip, 0),
                service: s.name.clone(),
                port: s.backend.port(),
            })
            .collect();
        ProxyConfig {
            workload: WorkloadInfo {
                name: "client-1".into(),
                service: "client".into(),
                namespace: "default".into(),
                labels: Default::default(),
            },
            inbound: InboundConfig {
                listen: SocketAddr::new(self.client_ip, 0),
                app_host: self.client_ip,
                ports: vec![PortSpec {
                    port: 1,
                    protocol: Protocol::Detect,
                    target_port: None,
                }],
                limit: None,
            },
            outbound: OutboundConfig {
                listen: None,
                http_proxy: Some(SocketAddr::new(self.client_ip, 0)),
                upstreams,
            },
            admin: AdminConfig {
                listen: SocketAddr::new(self.client_ip, 0),
            },
            destinations,
            authorization: Default::default(),
            limits: self.limits,
            detect_timeout: self.detect_timeout,
            drain_timeout: Duration::from_secs(10),
            telemetry: skein_model::TelemetryConfig {
                // Tests read the control plane's view soon after traffic.
                summary_interval: Duration::from_millis(200),
                ..Default::default()
            },
            dns: None,
        }
    }

    /// The virtual (intercepted) address of the `i`-th service.
    pub fn virtual_ip(i: usize) -> IpAddr {
        IpAddr::from([198, 18, 1, 10 + i as u8])
    }

    /// Starts both proxies in this process.
    pub async fn start(self) -> anyhow::Result<Mesh> {
        let server = RunningProxy::start(self.server_config()).await?;
        let client = RunningProxy::start(self.client_config(server.addrs.inbound)).await?;
        Ok(Mesh {
            spec: self,
            client,
            server,
        })
    }
}

/// A running two-proxy mesh.
pub struct Mesh {
    /// What it was built from.
    pub spec: MeshSpec,
    /// Proxy A, the caller's side.
    pub client: RunningProxy,
    /// Proxy B, in front of the backends.
    pub server: RunningProxy,
}

impl Mesh {
    /// The local upstream listener on proxy A that leads to `service`.
    pub fn upstream(&self, service: &str) -> SocketAddr {
        let i = self
            .spec
            .services
            .iter()
            .position(|s| s.name == service)
            .unwrap_or_else(|| panic!("no service {service} in this mesh"));
        self.client.addrs.upstreams[i]
    }

    /// Proxy A's explicit HTTP proxy listener.
    pub fn http_proxy(&self) -> SocketAddr {
        self.client
            .addrs
            .http_proxy
            .expect("test meshes enable the HTTP proxy")
    }

    /// The authority (`service:port`) clients use for `service`.
    pub fn authority(&self, service: &str) -> String {
        let s = self.spec.services.iter().find(|s| s.name == service);
        let s = s.unwrap_or_else(|| panic!("no service {service} in this mesh"));
        format!("{}:{}", s.name, s.backend.port())
    }

    /// Sum of a metric on proxy A (`client`) or B (`server`) over matching label sets.
    pub fn metric(&self, proxy: Side, name: &str, labels: &[&str]) -> u64 {
        let p = match proxy {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        sum_samples(&p.ctx.metrics.encode(), name, labels)
    }

    /// Stops both proxies (drain).
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// Which proxy of a [`Mesh`].
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// Proxy A.
    Client,
    /// Proxy B.
    Server,
}
