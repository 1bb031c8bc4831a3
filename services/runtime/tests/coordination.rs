//! The coordination conformance suite, run against the in-process
//! implementation and a real Redis.

use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::coord::{Coordinator, InProcess, Redis};

async fn redis() -> Arc<dyn Coordinator> {
    let prefix = format!("{}:", confidant_runtime::testing::unique_name("test"));
    Arc::new(
        Redis::connect(&confidant_runtime::testing::redis_url(), &prefix)
            .await
            .expect("redis reachable"),
    )
}

async fn in_process() -> Arc<dyn Coordinator> {
    Arc::new(InProcess::new())
}

async fn keys_expire_after_their_ttl(c: Arc<dyn Coordinator>) {
    c.put("session:a", b"one", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        c.get("session:a").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get("session:a").await.unwrap(), None);
}

async fn many_keys_are_read_at_once_in_their_order(c: Arc<dyn Coordinator>) {
    assert_eq!(
        c.get_many(&[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    c.put("revoked:s1", b"1", Duration::from_secs(5))
        .await
        .unwrap();
    c.put("revoked:s3", b"3", Duration::from_secs(5))
        .await
        .unwrap();
    c.put("revoked:gone", b"x", Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let keys: Vec<String> = [
        "revoked:s3",
        "revoked:s2",
        "revoked:gone",
        "revoked:s1",
        "revoked:s3",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(
        c.get_many(&keys).await.unwrap(),
        vec![
            Some(b"3".to_vec()),
            None,
            None,
            Some(b"1".to_vec()),
            Some(b"3".to_vec())
        ]
    );
    assert_eq!(
        c.get_many(&["revoked:s1".to_owned()]).await.unwrap(),
        vec![Some(b"1".to_vec())]
    );
}

async fn put_if_absent_stores_only_once(c: Arc<dyn Coordinator>) {
    assert!(
        c.put_if_absent("code:1", b"x", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !c.put_if_absent("code:1", b"y", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(c.get("code:1").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert!(c.delete("code:1").await.unwrap());
    assert!(!c.delete("code:1").await.unwrap());
    assert!(
        c.put_if_absent("code:1", b"z", Duration::from_secs(5))
            .await
            .unwrap()
    );
}

async fn counters_count_within_their_window_then_reset(c: Arc<dyn Coordinator>) {
    for expected in 1..=3 {
        assert_eq!(
            c.increment("login:alice", Duration::from_millis(400))
                .await
                .unwrap(),
            expected
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.increment("login:alice", Duration::from_millis(400))
            .await
            .unwrap(),
        1
    );
}

async fn a_lease_has_one_holder_and_fencing_tokens_grow(c: Arc<dyn Coordinator>) {
    let ttl = Duration::from_millis(400);
    let first = c
        .acquire_lease("sweep", "replica-a", ttl)
        .await
        .unwrap()
        .expect("free lease");
    assert!(
        c.acquire_lease("sweep", "replica-b", ttl)
            .await
            .unwrap()
            .is_none()
    );
    assert!(c.holds(&first).await.unwrap());
    assert!(c.renew_lease(&first, ttl).await.unwrap());

    // The holder stalls past its TTL; another replica takes over with a
    // larger token, and the stale holder can neither renew nor release.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second = c
        .acquire_lease("sweep", "replica-b", ttl)
        .await
        .unwrap()
        .expect("expired lease");
    assert!(second.token > first.token);
    assert!(!c.holds(&first).await.unwrap());
    assert!(!c.renew_lease(&first, ttl).await.unwrap());
    assert!(!c.release_lease(&first).await.unwrap());
    assert!(c.holds(&second).await.unwrap());

    assert!(c.release_lease(&second).await.unwrap());
    let third = c
        .acquire_lease("sweep", "replica-a", ttl)
        .await
        .unwrap()
        .expect("released lease");
    assert!(third.token > second.token);
}

async fn announcements_reach_every_subscriber_in_order(c: Arc<dyn Coordinator>) {
    use futures::StreamExt;
    async fn next(notices: &mut confidant_runtime::coord::Notices) -> String {
        tokio::time::timeout(Duration::from_secs(5), notices.next())
            .await
            .expect("announcement arrives")
            .expect("subscription lives")
    }
    // Nobody listening yet: published to nobody, not an error.
    c.publish("revocations", "early").await.unwrap();
    let mut first = c
        .subscribe("revocations")
        .await
        .unwrap()
        .expect("subscriptions");
    let mut second = c
        .subscribe("revocations")
        .await
        .unwrap()
        .expect("subscriptions");
    let mut elsewhere = c.subscribe("other").await.unwrap().expect("subscriptions");
    c.publish("revocations", "s1").await.unwrap();
    c.publish("other", "x").await.unwrap();
    c.publish("revocations", "s2").await.unwrap();
    for notices in [&mut first, &mut second] {
        assert_eq!(next(notices).await, "s1");
        assert_eq!(next(notices).await, "s2");
    }
    assert_eq!(next(&mut elsewhere).await, "x");
}

macro_rules! coordination_tests {
    ($($name:ident),+ $(,)?) => {
        mod in_process_backend {
            $( #[tokio::test] async fn $name() { super::$name(super::in_process().await).await } )+
        }
        mod redis_backend {
            $( #[tokio::test] async fn $name() { super::$name(super::redis().await).await } )+
        }
    };
}

coordination_tests!(
    keys_expire_after_their_ttl,
    many_keys_are_read_at_once_in_their_order,
    put_if_absent_stores_only_once,
    counters_count_within_their_window_then_reset,
    a_lease_has_one_holder_and_fencing_tokens_grow,
    announcements_reach_every_subscriber_in_order,
);
