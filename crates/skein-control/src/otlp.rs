//! The control plane as an OTLP receiver: applications (and any OpenTelemetry SDK or
//! collector) export spans to it over OTLP/gRPC (`TraceService/Export`, plaintext, the
//! standard port 4317 by default), and they join the proxies' spans in the trace store
//! (`skein trace`).
//!
//! Spans received here are an application's word about itself: they are stored with
//! `source: application` and the service their resource names, never as a proxy's. What
//! the store cannot take (a malformed ID, a span that ends before it starts) is reported
//! back in the response's `partial_success`, as OTLP specifies, and the rest is kept.

use crate::telemetry::Central;
use skein_api::otlp::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use skein_api::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The largest export request accepted (OTLP exporters batch well under it).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// `TraceService` over the control plane's store.
pub struct Receiver {
    central: Arc<Central>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let rejected = self
            .central
            .traces
            .add_otlp(&request.get_ref().resource_spans);
        if let Some(r) = &rejected {
            tracing::debug!(spans = r.spans, why = %r.why, "refused spans from an OTLP exporter");
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: rejected.map(|r| ExportTracePartialSuccess {
                rejected_spans: r.spans as i64,
                error_message: r.why,
            }),
        }))
    }
}

/// Serves OTLP/gRPC on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    central: Arc<Central>,
    stop: CancellationToken,
) {
    let service =
        TraceServiceServer::new(Receiver { central }).max_decoding_message_size(MAX_REQUEST_BYTES);
    let serve = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(64))
        .concurrency_limit_per_connection(64)
        .timeout(std::time::Duration::from_secs(10))
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stop.cancelled_owned(),
        );
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "OTLP receiver stopped");
    }
}
