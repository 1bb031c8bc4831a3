//! One request across two services arrives at an OTLP collector as one
//! trace with the right parents, and without request data in attributes;
//! the servers' call-duration histogram arrives too.
//!
//! This file holds a single test: it installs the process-wide subscriber.

use std::time::Duration;

use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::peer::PeerPolicy;
use confidant_runtime::server::{GrpcServer, health};
use confidant_runtime::telemetry::TelemetryConfig;
use confidant_runtime::testing::TestPki;
use confidant_runtime::testing::otlp::Collector;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tracing::Instrument;

const SECRET: &str = "Jane Roe, passport X1234567";

/// Service A: a health service whose handler asks service B.
struct Forwarding {
    b: PeerChannel,
}

#[tonic::async_trait]
impl Health for Forwarding {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        HealthClient::new(self.b.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    }

    type WatchStream = tokio_stream::Once<Result<HealthCheckResponse, tonic::Status>>;

    /// Reports B's current status once.
    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let status = self.check(request).await.map(tonic::Response::into_inner);
        Ok(tonic::Response::new(tokio_stream::once(status)))
    }
}

async fn serve(server: GrpcServer) {
    tokio::spawn(async move {
        server
            .serve(health(), std::future::pending())
            .await
            .unwrap();
    });
}

fn attribute_values(span: &Span) -> Vec<String> {
    span.attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
        .collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_two_services_is_one_trace_with_the_right_parents() {
    // A real OTLP/gRPC receiver.
    let collector = Collector::default();
    let otlp_addr = collector.listen_plain().await;

    let guard = confidant_runtime::telemetry::init(
        "confidant-test",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{otlp_addr}")),
            ..TelemetryConfig::default()
        },
    )
    .unwrap();

    let pki = TestPki::new();
    // Service B: health only.
    let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    serve(GrpcServer {
        name: ServiceName::Audit,
        listener: b_listener,
        tls: confidant_runtime::tls::LiveTls::fixed(&pki.material("audit")).unwrap(),
        routes: tonic::service::Routes::default(),
        grpc_services: vec![],
        policy: PeerPolicy::new(),
        reflection: false,
        auth: None,
        max_in_flight: confidant_runtime::in_flight::DEFAULT_MAX_IN_FLIGHT,
    })
    .await;
    // Service A: calls B from its handler.
    let a_tls = confidant_runtime::tls::LiveTls::fixed(&pki.material("vault")).unwrap();
    let to_b =
        confidant_runtime::client::connect_lazy(&format!("https://{b_addr}"), &a_tls, "localhost")
            .unwrap();
    // A runs the same layers as every service, around its own health handler.
    let a_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = a_listener.local_addr().unwrap();
    let incoming =
        confidant_runtime::server::tls_incoming(a_listener, move || a_tls.server_config());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(
                tower::ServiceBuilder::new()
                    .layer(confidant_runtime::telemetry::ServerTraceLayer)
                    .layer(confidant_runtime::peer::PeerLayer::new(PeerPolicy::new())),
            )
            .add_service(HealthServer::new(Forwarding { b: to_b }))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    // The caller, inside a span of its own.
    let to_a = confidant_runtime::client::connect(
        &format!("https://{a_addr}"),
        &pki.material("operator"),
        "localhost",
    )
    .await
    .unwrap();
    // The request carries a value that must not reach any span.
    let root = tracing::info_span!("test.request");
    HealthClient::new(to_a)
        .check(HealthCheckRequest {
            service: SECRET.to_owned(),
        })
        .instrument(root)
        .await
        .unwrap();

    // Wait for the five spans to arrive.
    let mut spans = Vec::new();
    for _ in 0..100 {
        guard.flush();
        spans = collector.spans();
        if spans.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root = spans
        .iter()
        .find(|s| s.name == "test.request")
        .expect("root span")
        .clone();
    let named = |kind: SpanKind| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.name == "grpc.health.v1.Health/Check" && s.kind == kind as i32)
            .cloned()
            .collect()
    };
    let servers = named(SpanKind::Server);
    let clients = named(SpanKind::Client);
    let server_of = |peer: &str| {
        servers
            .iter()
            .find(|s| attribute(s, "peer.identity").as_deref() == Some(peer))
            .unwrap_or_else(|| panic!("no server span for {peer}"))
            .clone()
    };
    let a_server = server_of(&pki.id("operator"));
    let b_server = server_of(&pki.id("vault"));
    let child_of = |parent: &Span| {
        clients
            .iter()
            .find(|s| s.parent_span_id == parent.span_id)
            .unwrap_or_else(|| panic!("no client span under {}", parent.name))
            .clone()
    };
    let a_client = child_of(&root);
    let b_client = child_of(&a_server);

    for span in [&a_client, &a_server, &b_client, &b_server] {
        assert_eq!(
            span.trace_id, root.trace_id,
            "{} is in another trace",
            span.name
        );
    }
    assert_eq!(a_client.parent_span_id, root.span_id);
    assert_eq!(
        a_server.parent_span_id, a_client.span_id,
        "server span is a child of the caller's client span"
    );
    assert_eq!(
        b_client.parent_span_id, a_server.span_id,
        "A's outgoing call is inside its handler span"
    );
    assert_eq!(b_server.parent_span_id, b_client.span_id);

    assert_eq!(attribute(&a_server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(&a_server, "rpc.method").as_deref(), Some("Check"));
    assert_eq!(
        attribute(&a_server, "peer.identity").as_deref(),
        Some(pki.id("operator").as_str()),
        "the server span names the calling identity"
    );
    assert_eq!(
        attribute(&b_server, "peer.identity").as_deref(),
        Some(pki.id("vault").as_str())
    );

    for span in &spans {
        for value in attribute_values(span) {
            assert!(
                !value.contains("Jane Roe"),
                "request data leaked into span {}: {value}",
                span.name
            );
        }
    }

    // Each server recorded the call's duration under its method and status.
    let mut durations = Vec::new();
    for _ in 0..100 {
        guard.flush();
        durations = collector
            .metrics()
            .into_iter()
            .filter(|m| m.name == "rpc.server.duration")
            .collect();
        if !durations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metric = durations.last().expect("rpc.server.duration exported");
    assert_eq!(metric.unit, "ms");
    let Some(Data::Histogram(histogram)) = &metric.data else {
        panic!("not a histogram: {metric:?}");
    };
    let check_calls: u64 = histogram
        .data_points
        .iter()
        .filter(|p| {
            let attrs: Vec<(String, String)> = p
                .attributes
                .iter()
                .map(|kv| {
                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        Some(Value::IntValue(i)) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect();
            attrs.contains(&("rpc.method".into(), "Check".into()))
                && attrs.contains(&("rpc.grpc.status_code".into(), "0".into()))
        })
        .map(|p| p.count)
        .sum();
    assert_eq!(check_calls, 2, "one call handled by each server");
    assert!(!format!("{durations:?}").contains("Jane Roe"));
    guard.shutdown();
}
