//! The retention service killed in the middle of a disposal sweep: a real
//! `confidant serve --services retention` process on PostgreSQL and Redis,
//! beside identity, vault and audit, is killed with SIGKILL while it shreds
//! hundreds of due scopes; a second process finishes the work. Every due
//! scope is shredded exactly once and certified once, and no held scope is
//! touched.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::directory::{as_staff, cleared, staff_token};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::audit::v1::AuditEvent;
use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::retention_service_client::RetentionServiceClient;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::portable::Value;
use confidant_runtime::storage::{Backend, Database};
use prost::Message;

const CLIENTS: usize = 400;
const HELD: usize = 40;

fn retention_config(data: &SandboxData, sandbox: &Sandbox, port: u16) -> std::path::PathBuf {
    let pki = data.path().join("pki");
    let p = |name: &str| pki.join(name).display().to_string();
    let url = |s: ServiceName| format!("https://{}", sandbox.addr(s));
    let path = data.path().join("retention.toml");
    std::fs::write(
        &path,
        format!(
            "ca_file = \"{ca}\"\nshutdown_grace_seconds = 2\n\
             [redis]\nurl = \"{redis}\"\nkey_prefix = \"{prefix}:\"\n\
             [telemetry]\nlog_format = \"json\"\n\
             [retention]\nsigning_key_file = \"{key}\"\nsweep_interval_seconds = 1\nsync_interval_seconds = 1\nhold_release_approvers = 1\n\
             [peers]\nidentity = \"{identity}\"\nvault = \"{vault}\"\naudit = \"{audit}\"\n\
             [services.retention]\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\ncert_file = \"{cert}\"\nkey_file = \"{certkey}\"\n",
            ca = p("ca.pem"),
            redis = confidant_runtime::testing::redis_url(),
            prefix = confidant_runtime::testing::unique_name("crash"),
            key = data.path().join("retention-certificates.key").display(),
            identity = url(ServiceName::Identity),
            vault = url(ServiceName::Vault),
            audit = url(ServiceName::Audit),
            db = data.database_url(ServiceName::Retention),
            cert = p("retention.pem"),
            certkey = p("retention-key.pem"),
        ),
    )
    .unwrap();
    path
}

fn start_retention(config: &std::path::Path, log: std::path::PathBuf) -> common::Process {
    let mut cmd = common::confidant();
    cmd.args(["serve", "--services", "retention", "--migrate", "--config"])
        .arg(config);
    common::Process::spawn(cmd, log)
}

async fn certificates(db: &Database) -> usize {
    db.fetch_all::<(uuid::Uuid,)>("SELECT id FROM retention_certificates", vec![])
        .await
        .map(|r| r.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_killed_midway_is_finished_by_the_next_process_without_double_shreds() {
    let data = SandboxData::new(Backend::Postgres).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Audit,
        ]),
    )
    .await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let token = staff_token(&data, &manager, &["records_manager"]);

    // Contact details of many clients, one scope each.
    let mut vault = VaultServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Vault),
            &data.client_tls("intake"),
            "localhost",
        )
        .await
        .unwrap(),
    );
    let mut scope_of_client = HashMap::new();
    for _ in 0..CLIENTS {
        let client_id = uuid::Uuid::now_v7().to_string();
        let scope = common::store_note(
            &mut vault,
            &client_id,
            "",
            vault_pb::DataCategory::ContactDetails,
        )
        .await;
        scope_of_client.insert(client_id, scope);
    }
    let clients: Vec<String> = scope_of_client.keys().cloned().collect();
    let (held, free) = clients.split_at(HELD);

    // The retention service as its own process.
    let port = common::free_port();
    let config = retention_config(&data, &sandbox, port);
    let mut first = start_retention(&config, data.path().join("retention-1.log"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_serving(
        addr,
        &data.client_tls("operator"),
        Duration::from_secs(60),
        || first.log(),
    )
    .await;
    let mut retention = RetentionServiceClient::new(
        confidant_runtime::client::connect(
            &format!("https://{addr}"),
            &data.client_tls("firm-app"),
            "localhost",
        )
        .await
        .unwrap(),
    );
    for client_id in held {
        retention
            .place_hold(as_staff(
                &token,
                pb::PlaceHoldRequest {
                    reason: "litigation".into(),
                    client_id: client_id.clone(),
                    matter_id: String::new(),
                    category: 0,
                    scope_ids: Vec::new(),
                },
            ))
            .await
            .unwrap();
    }
    // Everything falls due at once.
    retention
        .create_policy(as_staff(
            &token,
            pb::CreatePolicyRequest {
                rules: Some(pb::PolicyRules {
                    category: vault_pb::DataCategory::ContactDetails as i32,
                    period: Some(pb::Period::default()),
                    trigger: pb::Trigger::Creation as i32,
                    trigger_event_name: String::new(),
                    action: pb::DisposalAction::Shred as i32,
                    client_notice_days: 0,
                    basis: "test schedule".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();

    // Kill it mid-sweep: some certificates issued, not all.
    let retention_db = common::service_db(&data, ServiceName::Retention).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = certificates(&retention_db).await;
        if n >= 20 {
            break;
        }
        if Instant::now() >= deadline {
            let states: Vec<(String,)> = retention_db
                .fetch_all("SELECT state FROM retention_disposals", vec![])
                .await
                .unwrap_or_default();
            let due: Vec<(uuid::Uuid,)> = retention_db
                .fetch_all(
                    "SELECT scope_id FROM retention_scopes WHERE due_at IS NOT NULL",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!(
                "no sweep progress: {} disposals {:?}, {} scopes with a due date\n{}",
                states.len(),
                states.iter().take(5).collect::<Vec<_>>(),
                due.len(),
                first.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let at_kill = certificates(&retention_db).await;
    assert!(
        at_kill < CLIENTS - HELD,
        "the sweep finished before the kill ({at_kill}); nothing was interrupted"
    );

    // A new process finishes the work.
    let second = start_retention(&config, data.path().join("retention-2.log"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while certificates(&retention_db).await < CLIENTS - HELD {
        assert!(
            Instant::now() < deadline,
            "the sweep was not finished:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every free scope shredded, every held one intact.
    let mut as_retention = VaultServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Vault),
            &data.client_tls("retention"),
            "localhost",
        )
        .await
        .unwrap(),
    );
    let mut states = HashMap::new();
    let mut page = String::new();
    loop {
        let listed = as_retention
            .list_scopes(vault_pb::ListScopesRequest {
                page_size: 1000,
                page_token: page.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for s in listed.scopes {
            states.insert(s.id.clone(), s.state());
        }
        if listed.next_page_token.is_empty() {
            break;
        }
        page = listed.next_page_token;
    }
    for client in free {
        assert_eq!(
            states[&scope_of_client[client]],
            vault_pb::ScopeState::Shredded
        );
    }
    for client in held {
        assert_eq!(
            states[&scope_of_client[client]],
            vault_pb::ScopeState::Active
        );
    }

    // Shredded once each: one shred event per scope in the audit log, once
    // the vault's outbox has delivered everything (a second shred of a
    // scope would be a second event, with an id of its own).
    let vault_db = common::service_db(&data, ServiceName::Vault).await;
    let outbox = confidant_runtime::outbox::Outbox::new(vault_db);
    common::eventually(
        Duration::from_secs(30),
        "the vault's events delivered",
        || {
            let outbox = outbox.clone();
            async move { outbox.backlog().await.is_ok_and(|n| n == 0) }
        },
    )
    .await;
    let audit_db = common::service_db(&data, ServiceName::Audit).await;
    let payloads: Vec<(Vec<u8>,)> = audit_db
        .fetch_all(
            "SELECT payload FROM audit_events WHERE action = 'vault.scope.shredded'",
            vec![],
        )
        .await
        .unwrap();
    let mut shreds: HashMap<String, usize> = HashMap::new();
    for (payload,) in payloads {
        let event = AuditEvent::decode(payload.as_slice()).unwrap();
        if event.action == "vault.scope.shredded" && event.outcome == 1 {
            *shreds.entry(event.resource.unwrap().id).or_default() += 1;
        }
    }
    assert_eq!(shreds.len(), CLIENTS - HELD);
    assert!(
        shreds.values().all(|n| *n == 1),
        "a scope was shredded twice"
    );
    // One certificate per shredded scope, none for a held one.
    let certified: Vec<(uuid::Uuid,)> = retention_db
        .fetch_all("SELECT scope_id FROM retention_certificates", vec![])
        .await
        .unwrap();
    assert_eq!(certified.len(), CLIENTS - HELD);
    for client in held {
        let scope = uuid::Uuid::parse_str(&scope_of_client[client]).unwrap();
        let rows: Vec<(String,)> = retention_db
            .fetch_all(
                "SELECT state FROM retention_disposals WHERE scope_id = $1",
                vec![Value::Uuid(scope)],
            )
            .await
            .unwrap();
        assert!(rows.iter().all(|(s,)| s == "cancelled"), "{rows:?}");
    }
    drop(second);
    sandbox.stop().await;
}
