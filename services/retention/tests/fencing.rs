//! The sweep's fencing token on every backend: once a sweep under a later
//! lease has written, a stalled sweep under an earlier lease can write
//! nothing more.

use std::sync::Arc;

use confidant_retention::disposal::{Disposer, Signer};
use confidant_retention::error::Error;
use confidant_retention::service::Retention;
use confidant_retention::store::RetentionStore;
use confidant_runtime::testing::TestDatabase;

async fn a_stalled_leader_cannot_write_after_a_later_one(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("certificates.key");
    confidant_runtime::keys::write_new_ed25519_key(&key).unwrap();
    let retention = Arc::new(Retention::new(
        RetentionStore::new(db.db.clone()),
        None,
        "confidant.local",
        2,
    ));
    let coord: confidant_runtime::coord::SharedCoordinator =
        Arc::new(confidant_runtime::coord::InProcess::new());
    let disposer = Disposer::new(retention, coord, Signer::load(&key).unwrap(), 1);

    // A sweep through the lease (the coordinator's first token), then a
    // leader with token 3, then a later leader (token 5); then the one with
    // token 3 wakes up and tries again.
    assert!(disposer.sweep().await.unwrap().is_some());
    disposer.sweep_with_token(3).await.unwrap();
    disposer.sweep_with_token(5).await.unwrap();
    assert!(matches!(
        disposer.sweep_with_token(3).await,
        Err(Error::Conflict(_))
    ));
    // The current leader goes on.
    disposer.sweep_with_token(5).await.unwrap();
}

confidant_runtime::backend_tests!(confidant_retention::MIGRATIONS;
    a_stalled_leader_cannot_write_after_a_later_one,
);
