//! What the services tell operators never carries client data, secrets or
//! tokens: identity, intake, vault and audit run as one `confidant serve` process
//! (PostgreSQL, Redis, the AWS KMS API) with debug logs and OTLP export to a
//! collector in this test, while a firm application stores, reads, lists
//! and uploads client data, makes mistakes and is refused. Then neither the
//! log, nor a span (names, attributes, events), nor a metric (names,
//! labels), nor an error answered to the caller holds any of the values,
//! the justification, the staff token or the document's content.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::directory::{as_staff, cleared, new_client, new_matter};
use common::{Process, confidant, field, free_ports, store_as, wait_serving};
use confidant::sandbox::{SandboxData, SandboxSpec, config_table};
use confidant_proto::vault::v1 as pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::storage::Backend;

/// Client data and secrets the run uses; none may come back out.
const SURNAME: &str = "Quillfeather";
const PASSPORT: &str = "QX7730219";
const EMAIL: &str = "canary.client@example.org";
const JUSTIFICATION: &str = "reviewing the Marlowe settlement terms";
const BAD_EMAIL: &str = "quillfeather-not-an-address";
const DOCUMENT: &str = "CANARY-DOCUMENT-CONTENT-7731";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_data_secret_or_token_reaches_logs_traces_metrics_or_errors() {
    // The collector: traces and metrics over OTLP/gRPC.
    let received = confidant_runtime::testing::otlp::Collector::default();
    let otlp_addr = received.listen_plain().await;

    let data = SandboxData::new(Backend::Postgres).await;
    let listen: BTreeMap<ServiceName, SocketAddr> = [
        ServiceName::Identity,
        ServiceName::Intake,
        ServiceName::Vault,
        ServiceName::Audit,
    ]
    .into_iter()
    .zip(free_ports::<4>())
    .map(|(s, port)| (s, SocketAddr::from(([127, 0, 0, 1], port))))
    .collect();
    let spec = SandboxSpec {
        listen: listen.clone(),
        peers: listen.clone(),
        ..SandboxSpec::of(&[])
    };
    let mut config = config_table(&data, &spec);
    let mut telemetry = toml::Table::new();
    telemetry.insert("otlp_endpoint".into(), format!("http://{otlp_addr}").into());
    telemetry.insert("log_level".into(), "debug".into());
    telemetry.insert("metrics_interval_seconds".into(), 1.into());
    config.insert("telemetry".into(), toml::Value::Table(telemetry));
    let config_file = data.path().join("serve.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let log_file = data.path().join("serve.log");
    let mut cmd = confidant();
    cmd.args([
        "serve",
        "--services",
        "identity,intake,vault,audit",
        "--migrate",
        "--config",
    ])
    .arg(&config_file);
    let process = Process::spawn(cmd, log_file.clone());
    let operator = data.client_tls("operator");
    for addr in listen.values() {
        wait_serving(*addr, &operator, Duration::from_secs(60), || process.log()).await;
    }

    // A firm with a matter, a partner and someone not on it.
    let url = |s: ServiceName| format!("https://{}", listen[&s]);
    let mut admin =
        confidant_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
            confidant_runtime::client::connect(&url(ServiceName::Identity), &operator, "localhost")
                .await
                .unwrap(),
        );
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@canary.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "probate").await;
    let outsider = cleared(&mut admin, "outsider@canary.example", "associate").await;
    let token = data.staff_token(&partner, &["partner"]);
    let outsider_token = data.staff_token(&outsider, &["associate"]);
    let mut app = VaultServiceClient::new(
        confidant_runtime::client::connect(
            &url(ServiceName::Vault),
            &data.client_tls("firm-app"),
            "localhost",
        )
        .await
        .unwrap(),
    );
    let mut answers = String::new();

    // Stored, read with a justification, read in a batch, listed.
    let record = |fields: Vec<pb::Field>| pb::NewRecord {
        client_id: client_id.clone(),
        matter_id: matter_id.clone(),
        category: pb::DataCategory::IdentityDocument as i32,
        fields,
        original: false,
    };
    let stored_id = store_as(
        &mut app,
        &token,
        record(vec![
            field("surname", pb::FieldType::Text, SURNAME),
            field("passport_number", pb::FieldType::NationalId, PASSPORT),
            field("email", pb::FieldType::Email, EMAIL),
        ]),
    )
    .await;
    let read = |justification: &str| pb::GetRecordRequest {
        record_id: stored_id.clone(),
        purpose: pb::Purpose::LegalAdvice as i32,
        justification: justification.into(),
        read_mask: None,
    };
    let got = app
        .get_record(as_staff(&token, read(JUSTIFICATION)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.fields[0].value, SURNAME, "the data is really there");
    app.batch_get_records(as_staff(
        &token,
        pb::BatchGetRecordsRequest {
            record_ids: vec![stored_id.clone(), uuid::Uuid::now_v7().to_string()],
            purpose: pb::Purpose::LegalAdvice as i32,
            justification: JUSTIFICATION.into(),
            read_mask: None,
        },
    ))
    .await
    .unwrap();
    app.list_records(as_staff(
        &token,
        pb::ListRecordsRequest {
            client_id: client_id.clone(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    // A document.
    let header = pb::UploadDocumentRequest {
        part: Some(pb::upload_document_request::Part::Header(
            pb::DocumentHeader {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                category: pb::DataCategory::IdentityDocument as i32,
                filename: "scan.pdf".into(),
                media_type: "application/pdf".into(),
                request_id: String::new(),
                size_bytes: DOCUMENT.len() as i64,
                sha256: Vec::new(),
                supersedes: String::new(),
                reason: String::new(),
            },
        )),
    };
    let chunk = pb::UploadDocumentRequest {
        part: Some(pb::upload_document_request::Part::Chunk(
            DOCUMENT.as_bytes().to_vec(),
        )),
    };
    app.upload_document(as_staff(&token, tokio_stream::iter(vec![header, chunk])))
        .await
        .unwrap();
    // Mistakes and refusals: a malformed e-mail, a read by someone not on
    // the matter, a read without a token, a forged token.
    let errors = [
        app.create_record(as_staff(
            &token,
            pb::CreateRecordRequest {
                record: Some(record(vec![field(
                    "email",
                    pb::FieldType::Email,
                    BAD_EMAIL,
                )])),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err(),
        app.get_record(as_staff(&outsider_token, read(JUSTIFICATION)))
            .await
            .unwrap_err(),
        app.get_record(read(JUSTIFICATION)).await.unwrap_err(),
        app.get_record(as_staff(&format!("{token}x"), read(JUSTIFICATION)))
            .await
            .unwrap_err(),
    ];
    assert_eq!(
        errors.iter().map(tonic::Status::code).collect::<Vec<_>>(),
        [
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::Unauthenticated
        ]
    );
    for e in &errors {
        answers.push_str(&format!("{e:?}"));
    }

    // The spans of the reads arrive (the exporter sends in batches).
    common::eventually(Duration::from_secs(30), "the vault's spans", || {
        let seen = received.text();
        async move { seen.contains("vault.get_record") && seen.contains("vault.batch_get_records") }
    })
    .await;
    // Metrics too: the calls' durations, when each service's certificate
    // expires, how far behind audit delivery and notices to staff are, and
    // how old the log's newest checkpoint.
    common::eventually(Duration::from_secs(30), "the metrics", || {
        let seen = received.text();
        async move {
            seen.contains("rpc.server.duration")
                && seen.contains("confidant.tls.certificate.expiry")
                && seen.contains("confidant.tls.reloads")
                && seen.contains("confidant.audit.delivery.lag")
                && seen.contains("confidant.audit.delivery.held_back")
                && seen.contains("confidant.audit.checkpoint.age")
                && seen.contains("confidant.staff_notices.lag")
        }
    })
    .await;
    // Every metric the chart's alerts name is one the services export,
    // under the name a collector's Prometheus exporter gives it.
    let exported_names: std::collections::BTreeSet<String> =
        received.metrics().iter().map(prometheus_name).collect();
    let rules = std::fs::read_to_string(
        common::repo_root().join("charts/confidant/templates/prometheusrule.yaml"),
    )
    .unwrap();
    let alerted: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|word| word.starts_with("confidant_"))
        .collect();
    assert_eq!(alerted.len(), 9, "{alerted:?}");
    for name in alerted {
        assert!(
            exported_names.contains(name),
            "the alerts name {name}, which no service exports; exported: {exported_names:?}"
        );
    }
    let mut process = process;
    process.terminate(Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    let exported = received.text();
    // Both carry what a request was about (its record id), so what they
    // lack below is really left out.
    assert!(log.contains(&stored_id), "the log names the record");
    assert!(exported.contains(&stored_id), "the spans name the record");

    // The token's signature is what makes it a credential; its claims are
    // the staff id and roles, which the log may name.
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let document_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(DOCUMENT)
    };
    for (secret, what) in [
        (SURNAME, "a field value"),
        (PASSPORT, "a national id"),
        (EMAIL, "an e-mail address"),
        (BAD_EMAIL, "a rejected value"),
        ("Marlowe settlement", "the justification"),
        (DOCUMENT, "the document's content"),
        (document_b64.as_str(), "the document's content (base64)"),
        (token.as_str(), "the staff token"),
        (signature.as_str(), "the staff token's signature"),
    ] {
        for (place, text) in [
            ("the log", &log),
            ("the traces and metrics", &exported),
            ("the errors answered", &answers),
        ] {
            assert!(!text.contains(secret), "{what} in {place}");
        }
    }
}

/// The name Prometheus knows an OpenTelemetry metric by, through a
/// collector's Prometheus exporter or Prometheus's OTLP receiver (their
/// default translation): dots become underscores, the unit is spelled out
/// as a suffix, and a counter ends in `_total`.
fn prometheus_name(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> String {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut name = metric.name.replace('.', "_");
    match metric.unit.as_str() {
        "" | "1" => {}
        "s" => name.push_str("_seconds"),
        "ms" => name.push_str("_milliseconds"),
        "By" => name.push_str("_bytes"),
        other => {
            name.push('_');
            name.push_str(other);
        }
    }
    if matches!(&metric.data, Some(Data::Sum(sum)) if sum.is_monotonic) {
        name.push_str("_total");
    }
    name
}
