//! Spans and metrics reach a collector that listens over TLS and asks for a
//! client certificate (`telemetry.otlp_ca_file`, `otlp_cert_file`,
//! `otlp_key_file`).
//!
//! This file holds a single test: it installs the process-wide subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confidant_runtime::telemetry::TelemetryConfig;
use confidant_runtime::testing::TestPki;
use confidant_runtime::tls::{LiveTls, TlsMaterial};
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
use tokio::net::TcpListener;

/// What the collector received.
#[derive(Debug, Default)]
struct Seen {
    spans: Vec<String>,
    metrics: Vec<String>,
    /// The client identity of each export.
    peers: Vec<Option<String>>,
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Seen>>);

fn peer_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<confidant_runtime::server::ConnectedPeer>()
        .and_then(|p| p.identity.as_ref())
        .map(|id| id.as_str().to_owned())
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let peer = peer_of(&request);
        let mut seen = self.0.lock().unwrap();
        seen.peers.push(peer);
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                seen.spans.extend(ss.spans.into_iter().map(|s| s.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let peer = peer_of(&request);
        let mut seen = self.0.lock().unwrap();
        seen.peers.push(peer);
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                seen.metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_a_collector_over_mutual_tls() {
    // The collector's own PKI, not the deployment's.
    let collector_pki = TestPki::new();
    let collector_tls: TlsMaterial = collector_pki.material("otel-collector");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Received::default();
    let tls = LiveTls::fixed(&collector_tls).unwrap();
    // The server configuration requires a client certificate from the
    // collector's CA.
    let incoming = confidant_runtime::server::tls_incoming(listener, move || tls.server_config());
    let (traces, metrics) = (
        TraceServiceServer::new(received.clone()),
        MetricsServiceServer::new(received.clone()),
    );
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(traces)
            .add_service(metrics)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let client = collector_pki.material("confidant-exporter");
    let guard = confidant_runtime::telemetry::init(
        "confidant-test",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("https://localhost:{port}")),
            otlp_ca_file: Some(write(dir.path(), "ca.pem", &collector_tls.ca_pem)),
            otlp_cert_file: Some(write(dir.path(), "client.pem", &client.cert_pem)),
            otlp_key_file: Some(write(dir.path(), "client-key.pem", &client.key_pem)),
            metrics_interval_seconds: 1,
            ..TelemetryConfig::default()
        },
    )
    .unwrap();
    opentelemetry::global::meter("confidant")
        .u64_counter("confidant.test.exported")
        .build()
        .add(1, &[]);
    tracing::info_span!("test.exported_over_tls").in_scope(|| {
        tracing::info!("inside");
    });
    guard.flush();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let seen = received.0.lock().unwrap();
            if seen.spans.iter().any(|s| s == "test.exported_over_tls")
                && seen.metrics.iter().any(|m| m == "confidant.test.exported")
            {
                // Every export came with the client certificate.
                assert!(
                    seen.peers
                        .iter()
                        .all(|p| p.as_deref()
                            == Some(collector_pki.id("confidant-exporter").as_str())),
                    "{:?}",
                    seen.peers
                );
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived over TLS: {:?}",
            received.0.lock().unwrap()
        );
        guard.flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
