//! The vault's metrics, exported with the process's other OpenTelemetry
//! metrics: how scope keys were obtained (from the data-key cache or from
//! the KMS) and how many the cache dropped. Attributes name operations,
//! never scopes, clients or keys.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::KeyValue;

use crate::keys::KeyStats;

/// Cache hits.
pub const CACHE_HITS: &str = "confidant.vault.key_cache.hits";
/// KMS calls, by `operation` (`decrypt`, `generate_data_key`).
pub const KMS_CALLS: &str = "confidant.vault.kms.calls";
/// Keys dropped from the cache (age, uses, capacity, shredding).
pub const CACHE_EVICTIONS: &str = "confidant.vault.key_cache.evictions";
/// Failed KMS calls, by `reason` (see [`crate::keys::KMS_FAILURE_REASONS`]).
pub const KMS_FAILURES: &str = "confidant.vault.kms.failures";
/// Reads that found stored data that does not open, by `reason` (see
/// [`crate::keys::UNREADABLE_REASONS`]).
pub const UNREADABLE: &str = "confidant.vault.records.unreadable";

/// Registers the vault's counters on the global meter provider; they read
/// `stats` whenever metrics are collected, so the hot path only bumps the
/// atomics it already keeps for `GetKeyStats`.
pub fn register(stats: &Arc<KeyStats>) {
    let meter = opentelemetry::global::meter("confidant.vault");
    let hits = stats.clone();
    meter
        .u64_observable_counter(CACHE_HITS)
        .with_description("Scope keys served from the data-key cache")
        .with_callback(move |o| o.observe(hits.cache_hits.load(Ordering::Relaxed), &[]))
        .build();
    let calls = stats.clone();
    meter
        .u64_observable_counter(KMS_CALLS)
        .with_description("Calls to the KMS for scope keys")
        .with_callback(move |o| {
            o.observe(
                calls.kms_decrypt_calls.load(Ordering::Relaxed),
                &[KeyValue::new("operation", "decrypt")],
            );
            o.observe(
                calls.kms_generate_calls.load(Ordering::Relaxed),
                &[KeyValue::new("operation", "generate_data_key")],
            );
        })
        .build();
    let by_reason = |name: &'static str,
                     description: &'static str,
                     counts: fn(&KeyStats) -> Vec<(&'static str, u64)>| {
        let stats = stats.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                for (reason, n) in counts(&stats) {
                    o.observe(n, &[KeyValue::new("reason", reason)]);
                }
            })
            .build();
    };
    by_reason(KMS_FAILURES, "Failed calls to the KMS, by reason", |s| {
        s.kms_failure_counts().collect()
    });
    by_reason(
        UNREADABLE,
        "Reads that found stored data that does not open, by reason",
        |s| s.unreadable_counts().collect(),
    );
    let evictions = stats.clone();
    meter
        .u64_observable_counter(CACHE_EVICTIONS)
        .with_description("Scope keys dropped from the data-key cache (and zeroized)")
        .with_callback(move |o| o.observe(evictions.evictions.load(Ordering::Relaxed), &[]))
        .build();
}
