//! What `confidant restore retention` reads from a retention database
//! restored from a backup, to tell what the audit log records since that
//! the database lacks: legal holds, trigger events and policy versions
//! (made again), certificates it can only report, erasures of single
//! records asked for since (to be asked for again), and the movements of
//! physical items (made again on the register). Disposals pause until
//! a records manager has looked.

use chrono::{DateTime, Utc};
use confidant_runtime::portable::{Statement, Value};
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
/// scope or of physical items, or of erasure of a record.
pub async fn certificate_exists(db: &Database, id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> = db
        .fetch_optional(
            "SELECT id FROM retention_certificates WHERE id = $1 \
             UNION ALL SELECT id FROM retention_erasure_certificates WHERE id = $1 \
             UNION ALL SELECT id FROM physical_certificates WHERE id = $1",
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

/// A movement of a physical item, as its audit event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// Put on the register (its event names no label: a registration the
    /// database lacks cannot be made again).
    Registered,
    /// Handed to the staff member who acted, due back then (`None` when
    /// its event was logged before check-outs named it).
    CheckedOut {
        /// When it is due back.
        due_back: Option<DateTime<Utc>>,
    },
    /// Put back, where the event names (`None`: where it was).
    CheckedIn {
        /// Where it was put.
        location: Option<Uuid>,
    },
    /// Moved, where the event names (`None`: not named).
    Transferred {
        /// Where to.
        location: Option<Uuid>,
    },
    /// An original handed back to its client.
    Returned,
    /// Destroyed by the shredding vendor, under this certificate.
    Destroyed {
        /// The certificate of disposal its event names.
        certificate: Option<Uuid>,
    },
}

impl Movement {
    /// Its action in the custody log (`None` for a registration).
    pub fn custody_action(&self) -> Option<&'static str> {
        match self {
            Movement::Registered => None,
            Movement::CheckedOut { .. } => Some("checked_out"),
            Movement::CheckedIn { .. } => Some("checked_in"),
            Movement::Transferred { .. } => Some("transferred"),
            Movement::Returned => Some("returned"),
            Movement::Destroyed { .. } => Some("destroyed"),
        }
    }

    /// The location it names, if any.
    pub fn location(&self) -> Option<Uuid> {
        match self {
            Movement::CheckedIn { location } | Movement::Transferred { location } => *location,
            _ => None,
        }
    }

    /// Statements: the movement made again on item `item` as of `at`, by
    /// `staff`, with `note` in the custody log; `location` is where the
    /// item goes, if the database holds it (else it stays where it is).
    pub fn made_again(
        &self,
        item: Uuid,
        at: DateTime<Utc>,
        staff: &str,
        location: Option<Uuid>,
        note: &str,
    ) -> Vec<Statement> {
        let update = match self {
            Movement::Registered => return Vec::new(),
            // A due date the log does not name: overdue at once, so that a
            // records manager asks for the item.
            Movement::CheckedOut { due_back } => Statement::new(
                "UPDATE physical_items SET state = 'checked_out', holder_staff_id = $1, \
                 due_back_at = $2 WHERE id = $3",
                vec![
                    Value::Text(staff.to_owned()),
                    Value::Time(due_back.unwrap_or(at)),
                    Value::Uuid(item),
                ],
            ),
            Movement::CheckedIn { .. } => Statement::new(
                "UPDATE physical_items SET state = 'in', holder_staff_id = NULL, \
                 due_back_at = NULL, location_id = COALESCE($1, location_id) WHERE id = $2",
                vec![Value::OptUuid(location), Value::Uuid(item)],
            ),
            Movement::Transferred { .. } => Statement::new(
                "UPDATE physical_items SET location_id = COALESCE($1, location_id) WHERE id = $2",
                vec![Value::OptUuid(location), Value::Uuid(item)],
            ),
            Movement::Returned => Statement::new(
                "UPDATE physical_items SET state = 'returned', holder_staff_id = NULL, \
                 due_back_at = NULL WHERE id = $1",
                vec![Value::Uuid(item)],
            ),
            Movement::Destroyed { certificate } => Statement::new(
                "UPDATE physical_items SET state = 'destroyed', holder_staff_id = NULL, \
                 due_back_at = NULL, certificate_id = COALESCE($1, certificate_id) WHERE id = $2",
                vec![Value::OptUuid(*certificate), Value::Uuid(item)],
            ),
        };
        let custody = Statement::new(
            "INSERT INTO physical_custody (id, item_id, action, at, staff_id, location_id, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                Value::Uuid(Uuid::now_v7()),
                Value::Uuid(item),
                Value::Text(self.custody_action().unwrap_or_default().to_owned()),
                Value::Time(at),
                Value::Text(staff.to_owned()),
                Value::OptUuid(location),
                Value::Text(note.to_owned()),
            ],
        );
        vec![update.expecting(1), custody]
    }
}

/// Whether item `item`'s custody log shows `action` within two seconds of
/// `at` (the logged event's time, taken as the movement was made).
pub async fn item_moved(
    db: &Database,
    item: Uuid,
    action: &str,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let times: Vec<(DateTime<Utc>,)> = db
        .fetch_all(
            "SELECT at FROM physical_custody WHERE item_id = $1 AND action = $2",
            vec![Value::Uuid(item), Value::Text(action.to_owned())],
        )
        .await?;
    let near = chrono::Duration::seconds(2);
    Ok(times.iter().any(|(t,)| (*t - at).abs() <= near))
}

/// Whether the database holds storage location `id`.
pub async fn location_exists(db: &Database, id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> = db
        .fetch_optional(
            "SELECT id FROM physical_locations WHERE id = $1",
            vec![Value::Uuid(id)],
        )
        .await?;
    Ok(row.is_some())
}

/// The client and matter of physical item `id`, if the database holds it
/// (`None`: it does not).
pub async fn item_scope(db: &Database, id: Uuid) -> StoreResult<Option<(Uuid, Option<Uuid>)>> {
    db.fetch_optional(
        "SELECT client_id, matter_id FROM physical_items WHERE id = $1",
        vec![Value::Uuid(id)],
    )
    .await
}
