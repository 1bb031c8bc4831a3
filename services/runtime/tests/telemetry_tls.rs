//! Spans and metrics reach a collector that listens over TLS and asks for a
//! client certificate (`telemetry.otlp_ca_file`, `otlp_cert_file`,
//! `otlp_key_file`).
//!
//! This file holds a single test: it installs the process-wide subscriber.

use std::time::Duration;

use confidant_runtime::telemetry::TelemetryConfig;
use confidant_runtime::testing::TestPki;
use confidant_runtime::testing::otlp::Collector;
use confidant_runtime::tls::{LiveTls, TlsMaterial};
use tokio::net::TcpListener;

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
    let received = Collector::default();
    let tls = LiveTls::fixed(&collector_tls).unwrap();
    // The server configuration requires a client certificate from the
    // collector's CA.
    let incoming = confidant_runtime::server::tls_incoming(listener, move || tls.server_config());
    let (traces, metrics) = received.services();
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
        let spans = received.spans();
        let metrics = received.metrics();
        if spans.iter().any(|s| s.name == "test.exported_over_tls")
            && metrics.iter().any(|m| m.name == "confidant.test.exported")
        {
            // Every export came with the client certificate.
            let peers = received.received().peers;
            let exporter = collector_pki.id("confidant-exporter");
            assert!(
                peers
                    .iter()
                    .all(|p| p.as_deref() == Some(exporter.as_str())),
                "{peers:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived over TLS: {:?}",
            received.received()
        );
        guard.flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
