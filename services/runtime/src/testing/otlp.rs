//! A real OTLP/gRPC receiver for tests: it keeps every trace and metric
//! export it is sent, and who sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What a [`Collector`] received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Trace exports, in arrival order.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Metric exports, in arrival order.
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// The SPIFFE id of the client of each export (over mutual TLS), or
    /// `None` (plaintext, or a certificate without one).
    pub peers: Vec<Option<String>>,
}

/// The receiver; clones share what it received.
#[derive(Debug, Clone, Default)]
pub struct Collector(Arc<Mutex<Received>>);

impl Collector {
    /// Everything received so far.
    pub fn received(&self) -> Received {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received()
            .traces
            .into_iter()
            .flat_map(|t| t.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// Every metric received so far (one entry per export of it).
    pub fn metrics(&self) -> Vec<Metric> {
        self.received()
            .metrics
            .into_iter()
            .flat_map(|m| m.resource_metrics)
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .collect()
    }

    /// Everything received, as the exports' debug text: for checks that
    /// something appears nowhere.
    pub fn text(&self) -> String {
        let received = self.received();
        format!("{:?}{:?}", received.traces, received.metrics)
    }

    /// The trace and metric services, to serve on a transport of the
    /// test's choosing.
    pub fn services(&self) -> (TraceServiceServer<Self>, MetricsServiceServer<Self>) {
        (
            TraceServiceServer::new(self.clone()),
            MetricsServiceServer::new(self.clone()),
        )
    }

    /// Serves in plaintext on a free port of 127.0.0.1 until the test ends;
    /// returns the address (`http://` it).
    pub async fn listen_plain(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound address");
        let (traces, metrics) = self.services();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(metrics)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn record(&self, peer: Option<String>, add: impl FnOnce(&mut Received)) {
        let mut received = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        received.peers.push(peer);
        add(&mut received);
    }
}

fn peer_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<crate::server::ConnectedPeer>()
        .and_then(|p| p.identity.as_ref())
        .map(|id| id.as_str().to_owned())
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let peer = peer_of(&request);
        self.record(peer, |r| r.traces.push(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let peer = peer_of(&request);
        self.record(peer, |r| r.metrics.push(request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}
