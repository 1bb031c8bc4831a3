//! The sweep's fencing epoch on every backend: once a later sweep claimed
//! an epoch, a stalled sweep under an earlier one can write nothing more;
//! and a coordinator that lost its state does not lock the sweep out.

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
    let disposer = Disposer::new(retention.clone(), coord, Signer::load(&key).unwrap(), 1);

    // A sweep through the lease; then a leader claims an epoch, and a later
    // leader the next; then the first wakes up and tries again.
    assert!(disposer.sweep().await.unwrap().is_some());
    let stalled = disposer.claim_epoch().await.unwrap();
    disposer.sweep_with_epoch(stalled).await.unwrap();
    let later = disposer.claim_epoch().await.unwrap();
    assert!(later > stalled);
    disposer.sweep_with_epoch(later).await.unwrap();
    assert!(matches!(
        disposer.sweep_with_epoch(stalled).await,
        Err(Error::Conflict(_))
    ));
    // The current leader goes on.
    disposer.sweep_with_epoch(later).await.unwrap();
    // A coordinator that lost its state (a Redis flush: its lease counter
    // starts again) does not lock the sweep out: epochs come from the
    // database.
    for _ in 0..5 {
        disposer.claim_epoch().await.unwrap();
    }
    let fresh: confidant_runtime::coord::SharedCoordinator =
        Arc::new(confidant_runtime::coord::InProcess::new());
    let after_reset = Disposer::new(retention.clone(), fresh, Signer::load(&key).unwrap(), 1);
    assert!(after_reset.sweep().await.unwrap().is_some());
}

/// Two replicas share one Redis coordinator: while one holds the sweep
/// lease the other's sweep does nothing, and takes over once it is free.
async fn one_replica_sweeps_at_a_time(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("certificates.key");
    confidant_runtime::keys::write_new_ed25519_key(&key).unwrap();
    let coord: confidant_runtime::coord::SharedCoordinator = Arc::new(
        confidant_runtime::coord::Redis::connect(
            &confidant_runtime::testing::redis_url(),
            &confidant_runtime::testing::unique_name("sweep"),
        )
        .await
        .unwrap(),
    );
    let replica = || {
        let retention = Arc::new(Retention::new(
            RetentionStore::new(db.db.clone()),
            None,
            "confidant.local",
            2,
        ));
        Disposer::new(retention, coord.clone(), Signer::load(&key).unwrap(), 1)
    };
    let (a, b) = (replica(), replica());
    let held = coord
        .acquire_lease(
            "retention-sweep",
            "replica-a-mid-sweep",
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("the lease is free");
    assert!(a.sweep().await.unwrap().is_none(), "another replica leads");
    assert!(b.sweep().await.unwrap().is_none(), "another replica leads");
    coord.release_lease(&held).await.unwrap();
    assert!(b.sweep().await.unwrap().is_some(), "free again: b sweeps");
    assert!(a.sweep().await.unwrap().is_some(), "and then a");
}

confidant_runtime::backend_tests!(confidant_retention::MIGRATIONS;
    a_stalled_leader_cannot_write_after_a_later_one,
    one_replica_sweeps_at_a_time,
);
