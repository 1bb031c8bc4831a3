//! Certificates that follow their files: a renewed certificate, a CA added
//! to the bundle, and files a service must refuse, all without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::ServiceName;
use confidant_runtime::peer::PeerPolicy;
use confidant_runtime::pki::{LeafSpec, issue};
use confidant_runtime::server::{GrpcServer, health};
use confidant_runtime::testing::TestPki;
use confidant_runtime::tls::live::{CertificateFacts, Refused, Reloaded};
use confidant_runtime::tls::{LiveTls, TlsFiles, TlsMaterial};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The three files of a TLS identity in a directory, replaced as a
/// Kubernetes secret volume or cert-manager's csi driver replaces them:
/// each file written aside, then renamed over the old one.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(material: &TlsMaterial) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write(material);
        files
    }

    fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.dir.path().join("ca.crt"),
            cert_file: self.dir.path().join("tls.crt"),
            key_file: self.dir.path().join("tls.key"),
        }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        let aside = self.dir.path().join(format!(".{name}.new"));
        std::fs::write(&aside, bytes).unwrap();
        std::fs::rename(&aside, self.dir.path().join(name)).unwrap();
    }

    fn write(&self, material: &TlsMaterial) {
        self.put("ca.crt", &material.ca_pem);
        self.put("tls.crt", &material.cert_pem);
        self.put("tls.key", &material.key_pem);
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A leaf of `pki` for `name`, valid for `validity`, for localhost.
fn leaf(pki: &TestPki, name: &str, validity: time::Duration) -> TlsMaterial {
    let mut spec = LeafSpec::client(&pki.trust_domain, name);
    spec.dns_names = vec!["localhost".to_owned()];
    spec.validity = validity;
    let leaf = issue(&pki.ca, &spec).unwrap();
    TlsMaterial {
        ca_pem: pki.ca.cert_pem.as_bytes().to_vec(),
        cert_pem: leaf.cert_pem.as_bytes().to_vec(),
        key_pem: zeroize::Zeroizing::new(leaf.key_pem.as_bytes().to_vec()),
    }
}

fn serial_of(material: &TlsMaterial) -> String {
    CertificateFacts::from_pem(&material.cert_pem)
        .unwrap()
        .serial
}

async fn serve(tls: Arc<LiveTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = GrpcServer {
        name: ServiceName::Vault,
        listener,
        tls,
        routes: tonic::service::Routes::default(),
        grpc_services: vec![],
        policy: PeerPolicy::new(),
        reflection: false,
        auth: None,
        max_in_flight: confidant_runtime::in_flight::DEFAULT_MAX_IN_FLIGHT,
    };
    tokio::spawn(async move {
        server
            .serve(health(), std::future::pending::<()>())
            .await
            .unwrap();
    });
    addr
}

async fn handshake(addr: SocketAddr, client: &TlsMaterial) -> (String, Result<(), String>) {
    let (facts, accepted) = confidant_runtime::testing::tls_handshake(addr, client).await;
    (facts.serial, accepted)
}

async fn health_check(
    channel: confidant_runtime::client::PeerChannel,
) -> Result<i32, tonic::Status> {
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_connection() {
    let pki = TestPki::new();
    let first = leaf(&pki, "vault", time::Duration::days(30));
    let files = Files::new(&first);
    let live = LiveTls::open(files.tls_files()).unwrap();
    let addr = serve(live.clone()).await;
    let operator = pki.material("operator");
    assert_eq!(handshake(addr, &operator).await.0, serial_of(&first));
    // A client that connected before the renewal.
    let before =
        confidant_runtime::client::connect(&format!("https://{addr}"), &operator, "localhost")
            .await
            .unwrap();
    assert!(health_check(before.clone()).await.is_ok());

    // Nothing changed: nothing to do.
    assert_eq!(live.reload().unwrap(), Reloaded::Unchanged);

    let renewed = leaf(&pki, "vault", time::Duration::days(30));
    files.write(&renewed);
    match live.reload().unwrap() {
        Reloaded::Replaced(facts) => {
            assert_eq!(facts.serial, serial_of(&renewed));
            assert_eq!(facts.spiffe_id.as_deref(), Some(pki.id("vault").as_str()));
        }
        other => panic!("expected the renewed certificate in service, got {other:?}"),
    }
    let (serial, accepted) = handshake(addr, &operator).await;
    assert_eq!(serial, serial_of(&renewed));
    assert_eq!(accepted, Ok(()));
    // The connection made before goes on.
    assert!(health_check(before).await.is_ok());
    assert_eq!(live.counts(), (0, 1));
}

#[tokio::test]
async fn a_ca_added_to_the_bundle_admits_its_clients_without_a_restart() {
    let old_ca = TestPki::new();
    let new_ca = TestPki::new();
    let own = leaf(&old_ca, "vault", time::Duration::days(30));
    let files = Files::new(&own);
    let live = LiveTls::open(files.tls_files()).unwrap();
    let addr = serve(live.clone()).await;
    let mut newcomer = new_ca.material("operator");
    // The newcomer trusts both CAs; the service does not trust its CA yet.
    newcomer.ca_pem = [old_ca.ca.cert_pem.as_bytes(), new_ca.ca.cert_pem.as_bytes()].concat();
    assert!(handshake(addr, &newcomer).await.1.is_err());

    // The first step of a CA rotation: the bundle holds both CAs.
    let mut both = own.clone();
    both.ca_pem = newcomer.ca_pem.clone();
    files.write(&both);
    assert!(matches!(live.reload().unwrap(), Reloaded::Replaced(_)));
    assert_eq!(handshake(addr, &newcomer).await.1, Ok(()));
    assert_eq!(
        handshake(addr, &old_ca.material("operator")).await.1,
        Ok(())
    );
}

#[tokio::test]
async fn files_a_service_cannot_use_are_refused_and_the_running_certificate_stays() {
    let pki = TestPki::new();
    let running = leaf(&pki, "vault", time::Duration::days(30));
    let files = Files::new(&running);
    let live = LiveTls::open(files.tls_files()).unwrap();
    let addr = serve(live.clone()).await;
    let operator = pki.material("operator");

    let other = leaf(&pki, "vault", time::Duration::days(30));
    type Expected = fn(&Refused) -> bool;
    let cases: Vec<(&str, TlsMaterial, Expected)> = vec![
        (
            "a key that is not a key",
            TlsMaterial {
                key_pem: zeroize::Zeroizing::new(
                    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                ),
                ..other.clone()
            },
            |r| matches!(r, Refused::Unusable(_)),
        ),
        (
            // Half of a renewal: the new certificate with the old key.
            "a key of another certificate",
            TlsMaterial {
                key_pem: running.key_pem.clone(),
                ..other.clone()
            },
            |r| matches!(r, Refused::Unusable(_)),
        ),
        (
            "a certificate of another service",
            leaf(&pki, "audit", time::Duration::days(30)),
            |r| matches!(r, Refused::OtherIdentity { .. }),
        ),
        (
            "an expired certificate",
            leaf(&pki, "vault", time::Duration::minutes(-1)),
            |r| matches!(r, Refused::Expired { .. }),
        ),
        (
            "an empty bundle",
            TlsMaterial {
                ca_pem: Vec::new(),
                ..other.clone()
            },
            |r| matches!(r, Refused::Unusable(_)),
        ),
    ];
    let count = cases.len() as u64;
    for (case, material, expected) in cases {
        files.write(&material);
        let refused = live.reload().expect_err(case);
        assert!(expected(&refused), "{case}: {refused}");
        let message = refused.to_string();
        assert!(!message.contains("PRIVATE KEY"), "{case}: {message}");
        // Still the running certificate, and still serving.
        let (serial, accepted) = handshake(addr, &operator).await;
        assert_eq!(serial, serial_of(&running), "{case}");
        assert_eq!(accepted, Ok(()), "{case}");
    }
    // A missing file too.
    std::fs::remove_file(files.path().join("tls.key")).unwrap();
    assert!(matches!(live.reload(), Err(Refused::Unusable(_))));
    assert_eq!(live.counts(), (count + 1, 0));

    // The files made whole again are taken.
    files.write(&other);
    assert!(matches!(live.reload().unwrap(), Reloaded::Replaced(_)));
    assert_eq!(handshake(addr, &operator).await.0, serial_of(&other));
}

#[tokio::test]
async fn a_peer_channel_reconnects_with_the_renewed_certificate() {
    let old_ca = TestPki::new();
    let new_ca = TestPki::new();
    // A peer that trusts only the new CA (already rotated).
    let peer = serve(LiveTls::fixed(&new_ca.material("audit")).unwrap()).await;
    let files = Files::new(&leaf(&old_ca, "vault", time::Duration::days(30)));
    let live = LiveTls::open(files.tls_files()).unwrap();
    let channel =
        confidant_runtime::client::connect_lazy(&format!("https://{peer}"), &live, "localhost")
            .unwrap();
    assert!(health_check(channel.clone()).await.is_err());

    // The service's own certificate and bundle move to the new CA.
    files.write(&leaf(&new_ca, "vault", time::Duration::days(30)));
    assert!(matches!(live.reload().unwrap(), Reloaded::Replaced(_)));
    // The same channel's next connection presents the new certificate.
    let mut status = health_check(channel.clone()).await;
    for _ in 0..50 {
        if status.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = health_check(channel.clone()).await;
    }
    assert_eq!(
        status.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_service_follows_its_files_on_a_timer_and_when_asked() {
    let pki = TestPki::new();
    let files = Files::new(&leaf(&pki, "vault", time::Duration::days(30)));
    let operator = pki.material("operator");
    let (stop, shutdown) = tokio::sync::watch::channel(false);

    // On a timer.
    let timed = LiveTls::open(files.tls_files()).unwrap();
    let addr = serve(timed.clone()).await;
    let (hangup, hangups) = tokio::sync::watch::channel(0u64);
    let follow = tokio::spawn(timed.clone().follow(
        "vault",
        Some(Duration::from_millis(100)),
        hangups.clone(),
        shutdown.clone(),
    ));
    let renewed = leaf(&pki, "vault", time::Duration::days(30));
    files.write(&renewed);
    let mut serial = handshake(addr, &operator).await.0;
    for _ in 0..100 {
        if serial == serial_of(&renewed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        serial = handshake(addr, &operator).await.0;
    }
    assert_eq!(serial, serial_of(&renewed));

    // With no timer, only when asked (SIGHUP), and once is enough.
    let asked = LiveTls::open(files.tls_files()).unwrap();
    let on_request = tokio::spawn(asked.clone().follow("vault", None, hangups, shutdown));
    let again = leaf(&pki, "vault", time::Duration::days(30));
    files.write(&again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        asked.certificate().serial,
        serial_of(&renewed),
        "not asked yet"
    );
    hangup.send_modify(|n| *n += 1);
    for _ in 0..100 {
        if asked.certificate().serial == serial_of(&again) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(asked.certificate().serial, serial_of(&again));

    // Both stop with the process.
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), follow)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), on_request)
        .await
        .unwrap()
        .unwrap();
}
