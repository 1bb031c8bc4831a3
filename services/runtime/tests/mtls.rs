//! Mutual TLS at the service port: who can connect, who can call what.

use std::net::SocketAddr;

use confidant_runtime::ServiceName;
use confidant_runtime::peer::PeerPolicy;
use confidant_runtime::server::{GrpcServer, health};
use confidant_runtime::testing::TestPki;
use confidant_runtime::tls::TlsMaterial;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// The gRPC service the test server says it serves.
const VAULT_SERVICE: &str = confidant_proto::vault::v1::vault_service_server::SERVICE_NAME;

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap();
    }
}

async fn start(pki: &TestPki, policy: PeerPolicy, reflection: bool) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = GrpcServer {
        name: ServiceName::Vault,
        listener,
        tls: confidant_runtime::tls::LiveTls::fixed(&pki.material("vault")).unwrap(),
        routes: tonic::service::Routes::default(),
        grpc_services: vec![VAULT_SERVICE],
        policy,
        reflection,
        auth: None,
        max_in_flight: confidant_runtime::in_flight::DEFAULT_MAX_IN_FLIGHT,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(health(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn check(addr: SocketAddr, tls: &TlsMaterial) -> Result<i32, tonic::Status> {
    let channel = confidant_runtime::client::connect(&format!("https://{addr}"), tls, "localhost")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status)
}

/// Connects with raw rustls and reports whether the server accepted us.
async fn raw_handshake(addr: SocketAddr, config: rustls::ClientConfig) -> Result<(), String> {
    confidant_runtime::testing::tls_handshake_with(addr, config)
        .await
        .and_then(|(_, accepted)| accepted)
}

fn roots(pki: &TestPki) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_ca_gets_serving() {
    let pki = TestPki::new();
    let server = start(&pki, PeerPolicy::new(), true).await;
    let status = check(server.addr, &pki.material("operator")).await.unwrap();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_cannot_connect() {
    let pki = TestPki::new();
    let server = start(&pki, PeerPolicy::new(), true).await;
    let config = rustls::ClientConfig::builder_with_provider(confidant_runtime::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    let err = raw_handshake(server.addr, config).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificaterequired"), "{err}");

    // And the control: the same client with a certificate gets through.
    let m = pki.material("operator");
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&m.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&m.key_pem).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(confidant_runtime::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_client_auth_cert(certs, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    raw_handshake(server.addr, config).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let server = start(&pki, PeerPolicy::new(), true).await;
    // The stranger trusts our CA (so it would accept the server) but its own
    // certificate comes from another CA.
    let mut m = stranger.material("operator");
    m.ca_pem = pki.ca.cert_pem.as_bytes().to_vec();
    assert!(check(server.addr, &m).await.is_err());
    // The service keeps serving others.
    assert!(check(server.addr, &pki.material("operator")).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn tls_1_2_is_refused() {
    let pki = TestPki::new();
    let server = start(&pki, PeerPolicy::new(), true).await;
    let m = pki.material("operator");
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&m.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&m.key_pem).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(confidant_runtime::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_client_auth_cert(certs, key)
        .unwrap();
    let err = raw_handshake(server.addr, config).await.unwrap_err();
    assert!(err.to_lowercase().contains("protocolversion"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn an_rpc_restricted_to_other_identities_is_permission_denied() {
    let pki = TestPki::new();
    let policy = PeerPolicy::new().allow("/grpc.health.v1.Health/Check", [pki.id("audit")]);
    let server = start(&pki, policy, true).await;

    let denied = check(server.addr, &pki.material("intake"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let details = denied.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("peer_not_allowed")
    );

    assert!(check(server.addr, &pki.material("audit")).await.is_ok());
    server.stop().await;
}

/// One reflection request's answer.
async fn reflect(
    addr: SocketAddr,
    tls: &TlsMaterial,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Result<tonic_reflection::pb::v1::server_reflection_response::MessageResponse, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;

    let channel = confidant_runtime::client::connect(&format!("https://{addr}"), tls, "localhost")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = stream.message().await?.expect("one response");
    Ok(response.message_response.expect("an answer"))
}

async fn reflected_services(
    addr: SocketAddr,
    tls: &TlsMaterial,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    match reflect(addr, tls, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// The files reflection gives for a symbol (the file that defines it
/// first, then those it imports) or a file name, or the error it answers
/// with.
async fn reflected_files(
    addr: SocketAddr,
    tls: &TlsMaterial,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Result<Vec<prost_types::FileDescriptorProto>, String> {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    match reflect(addr, tls, request)
        .await
        .map_err(|e| e.to_string())?
    {
        MessageResponse::FileDescriptorResponse(files) => Ok(files
            .file_descriptor_proto
            .iter()
            .map(|raw| {
                prost_types::FileDescriptorProto::decode(raw.as_slice()).expect("a file descriptor")
            })
            .collect()),
        MessageResponse::ErrorResponse(e) => Err(e.error_message),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_what_the_port_serves_and_the_error_details_unless_switched_off() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let pki = TestPki::new();
    let operator = pki.material("operator");
    let on = start(&pki, PeerPolicy::new(), true).await;
    // This port's own service, health and reflection; not the other
    // services whose descriptors are in the same set.
    assert_eq!(
        reflected_services(on.addr, &operator).await.unwrap(),
        [
            "confidant.vault.v1.VaultService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );
    let vault = reflected_files(
        on.addr,
        &operator,
        MessageRequest::FileContainingSymbol(VAULT_SERVICE.to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(vault[0].name(), "confidant/vault/v1/vault_service.proto");
    // The details of an INVALID_ARGUMENT or a refusal can be decoded by a
    // client that learns their types here (grpcurl, for one): the file
    // defining each, and every file it imports.
    for detail in ["BadRequest", "ErrorInfo"] {
        let files = reflected_files(
            on.addr,
            &operator,
            MessageRequest::FileContainingSymbol(format!("google.rpc.{detail}")),
        )
        .await
        .unwrap();
        assert_eq!(files[0].package(), "google.rpc");
        assert!(
            files[0].message_type.iter().any(|m| m.name() == detail),
            "{:?}",
            files[0]
        );
        for import in &files[0].dependency {
            let imported = reflected_files(
                on.addr,
                &operator,
                MessageRequest::FileByFilename(import.clone()),
            )
            .await;
            assert!(imported.is_ok(), "{import}: {imported:?}");
        }
    }
    on.stop().await;

    let off = start(&pki, PeerPolicy::new(), false).await;
    let err = reflected_services(off.addr, &operator).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    off.stop().await;
}
