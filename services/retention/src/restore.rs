//! What `confidant restore retention` reads from a retention database
//! restored from a backup, to tell what the audit log records since that
//! the database lacks: legal holds, trigger events and policy versions
//! (made again), certificates it can only report, and erasures of single
//! records asked for since (to be asked for again). Disposals pause until
//! a records manager has looked.

use chrono::{DateTime, Utc};
use confidant_runtime::portable::Value;
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::store::StoreResult;

/// When the newest trigger event the database holds was recorded.
pub async fn newest_trigger(db: &Database) -> StoreResult<Option<DateTime<Utc>>> {
    let row: Option<(DateTime<Utc>,)> = db
        .fetch_optional(
            "SELECT recorded_at FROM retention_triggers ORDER BY recorded_at DESC LIMIT 1",
            vec![],
        )
        .await?;
    Ok(row.map(|(t,)| t))
}

/// Whether the database holds the certificate `id`: of disposal of a
/// scope, or of erasure of a record.
pub async fn certificate_exists(db: &Database, id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> = db
        .fetch_optional(
            "SELECT id FROM retention_certificates WHERE id = $1 \
             UNION ALL SELECT id FROM retention_erasure_certificates WHERE id = $1",
            vec![Value::Uuid(id)],
        )
        .await?;
    Ok(row.is_some())
}

/// Whether the database holds the erasure `id`.
pub async fn erasure_exists(db: &Database, id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> = db
        .fetch_optional(
            "SELECT id FROM retention_erasures WHERE id = $1",
            vec![Value::Uuid(id)],
        )
        .await?;
    Ok(row.is_some())
}

/// Whether the database holds the trigger event `id`.
pub async fn trigger_exists(db: &Database, id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> = db
        .fetch_optional(
            "SELECT id FROM retention_triggers WHERE id = $1",
            vec![Value::Uuid(id)],
        )
        .await?;
    Ok(row.is_some())
}
