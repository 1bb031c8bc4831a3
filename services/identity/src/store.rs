//! The directory on PostgreSQL or SQLite, written once for both through
//! portable statements. Every change commits together with its audit event.

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::AuditEvent;
use confidant_runtime::portable::{Statement, TransactError, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::domain::{Attestation, Facts, Interval};
use confidant_proto::identity::v1::SignInState;

/// Storage failures, with the constraint cases the API reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row the change depends on does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with what is stored (e.g. a duplicate e-mail).
    #[error("{0}")]
    Conflict(&'static str),
    /// What is stored does not allow the change (e.g. the wall was lifted).
    #[error("{0}")]
    Precondition(&'static str),
    /// The database failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] confidant_runtime::outbox::Error),
}

impl From<TransactError> for StoreError {
    fn from(e: TransactError) -> Self {
        match e {
            TransactError::Sqlx(e) => StoreError::Sqlx(e),
            TransactError::Outbox(e) => StoreError::Outbox(e),
            TransactError::Unmet { .. } => StoreError::Conflict("the change was made concurrently"),
        }
    }
}

/// Attestation kinds as stored (the protobuf enum values).
pub const KIND_NDA: i32 = 1;
/// See [`KIND_NDA`].
pub const KIND_TRAINING: i32 = 2;

/// A new attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttestation {
    /// Staff member.
    pub staff_id: Uuid,
    /// [`KIND_NDA`] or [`KIND_TRAINING`].
    pub kind: i32,
    /// Agreement or course version.
    pub version: String,
    /// Signed or completed.
    pub completed: DateTime<Utc>,
    /// Lapses.
    pub expires: DateTime<Utc>,
    /// Training score.
    pub score: Option<i32>,
    /// Training pass mark.
    pub pass_mark: Option<i32>,
}

/// The identity directory.
#[derive(Debug, Clone)]
pub struct Directory {
    db: Database,
}

/// id, kind, version, completed, expires, score, pass mark.
type AttestationRow = (
    Uuid,
    i32,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<i32>,
    Option<i32>,
);
/// role, granted, expires, revoked.
type RoleRow = (
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);
type IntervalRow = (DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
type IdIntervalRow = (
    Uuid,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn interval((start, expires, revoked): IntervalRow) -> Interval {
    Interval {
        start,
        expires,
        revoked,
    }
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlx(s) if confidant_runtime::error::classify_sqlx(s)
        == confidant_runtime::error::StorageFault::AlreadyExists)
}

/// A matter's classification and state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MatterRow {
    /// Id.
    pub id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Practice area.
    pub practice_area: String,
    /// Jurisdiction (ISO 3166).
    pub jurisdiction: Option<String>,
    /// Opened.
    pub opened_at: DateTime<Utc>,
    /// Closed.
    pub closed_at: Option<DateTime<Utc>>,
}

impl Directory {
    /// The directory in `db` (migrated with [`crate::MIGRATIONS`]).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Every active staff member's attestations of `kind`: (staff, expires,
    /// score, pass mark), newest first per staff member; staff without one
    /// appear once with no attestation.
    pub async fn attestation_coverage(
        &self,
        kind: i32,
    ) -> Result<Vec<(Uuid, Option<DateTime<Utc>>, Option<i32>, Option<i32>)>, StoreError> {
        Ok(self
            .db
            .fetch_all(
                "SELECT s.id, a.expires_at, a.score, a.pass_mark FROM staff s \
                 LEFT JOIN attestations a ON a.staff_id = s.id AND a.kind = $1 \
                 WHERE s.disabled_at IS NULL ORDER BY s.id, a.completed_at DESC",
                vec![confidant_runtime::portable::Value::Int(kind)],
            )
            .await?)
    }

    /// Access review campaigns with their item counts: (id, name, deadline,
    /// items, decided), newest first.
    pub async fn review_progress(
        &self,
    ) -> Result<Vec<(Uuid, String, DateTime<Utc>, i64, i64)>, StoreError> {
        Ok(self
            .db
            .fetch_all(
                "SELECT c.id, c.name, c.deadline, COUNT(i.id), COUNT(i.decided_at) FROM review_campaigns c \
                 LEFT JOIN review_items i ON i.campaign_id = c.id \
                 GROUP BY c.id, c.name, c.deadline, c.created_at ORDER BY c.created_at DESC",
                vec![],
            )
            .await?)
    }

    /// The result of an earlier request with this idempotency key.
    async fn replay(
        &self,
        request_id: Option<Uuid>,
        operation: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        let row: Option<(String, Uuid)> = self
            .db
            .fetch_optional(
                "SELECT operation, result_id FROM request_ids WHERE request_id = $1",
                vec![Value::Uuid(request_id)],
            )
            .await?;
        match row {
            Some((op, id)) if op == operation => Ok(Some(id)),
            Some(_) => Err(StoreError::Conflict(
                "request_id was used for another operation",
            )),
            None => Ok(None),
        }
    }

    /// Runs a create: replays a known idempotency key, otherwise writes the
    /// statements, the key and the event in one transaction.
    async fn create(
        &self,
        request_id: Option<Uuid>,
        operation: &'static str,
        id: Uuid,
        mut statements: Vec<Statement>,
        event: AuditEvent,
    ) -> Result<Uuid, StoreError> {
        if let Some(existing) = self.replay(request_id, operation).await? {
            return Ok(existing);
        }
        if let Some(request_id) = request_id {
            statements.push(Statement::new(
                "INSERT INTO request_ids (request_id, operation, result_id, created_at) VALUES ($1, $2, $3, $4)",
                vec![
                    Value::Uuid(request_id),
                    Value::Text(operation.into()),
                    Value::Uuid(id),
                    Value::Time(Utc::now()),
                ],
            ));
        }
        match self
            .db
            .transact(statements, &[event])
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => Ok(id),
            // A concurrent retry with the same key won the race.
            Err(e) if is_unique_violation(&e) => match self.replay(request_id, operation).await? {
                Some(existing) => Ok(existing),
                None => Err(StoreError::Conflict(
                    "a row with these unique values exists",
                )),
            },
            Err(e) => Err(e),
        }
    }

    /// Gives a staff member a role, optionally until `expires`.
    /// Gives `staff` `role` from `at` (the time the event carries too).
    pub async fn grant_role(
        &self,
        staff: Uuid,
        role: &str,
        at: DateTime<Utc>,
        expires: Option<DateTime<Utc>>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        if !self.staff_exists(staff).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        self.db
            .transact(vec![role_granted(staff, role, at, expires)], &[event])
            .await?;
        Ok(())
    }

    /// Takes a role away now; NotFound if the staff member does not hold it.
    pub async fn revoke_role(
        &self,
        staff: Uuid,
        role: &str,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        let done = self
            .db
            .transact(vec![role_revoked(staff, role, Utc::now())], &[event])
            .await?;
        if done[0] == 0 {
            return Err(StoreError::NotFound("role membership"));
        }
        Ok(())
    }

    /// A wall's screened staff, clients and matters.
    pub async fn wall(&self, id: Uuid) -> Result<(Vec<Uuid>, Vec<Uuid>, Vec<Uuid>), StoreError> {
        let exists: Option<(Uuid,)> = self
            .db
            .fetch_optional("SELECT id FROM walls WHERE id = $1", vec![Value::Uuid(id)])
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("wall"));
        }
        let staff: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT staff_id FROM wall_members WHERE wall_id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        let (clients, matters) = self.wall_targets(id).await?;
        Ok((staff.into_iter().map(|(s,)| s).collect(), clients, matters))
    }

    /// The clients and the matters a wall screens.
    async fn wall_targets(&self, id: Uuid) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
        let targets: Vec<(Option<Uuid>, Option<Uuid>)> = self
            .db
            .fetch_all(
                "SELECT client_id, matter_id FROM wall_targets WHERE wall_id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        Ok((
            targets.iter().filter_map(|(c, _)| *c).collect(),
            targets.iter().filter_map(|(_, m)| *m).collect(),
        ))
    }

    /// The database underneath.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Records an event that goes with no change (a decision).
    pub async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.db.transact(Vec::new(), &[event]).await?;
        Ok(())
    }

    /// Which of `roles` exist.
    pub async fn known_roles(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .db
            .fetch_all("SELECT name FROM roles ORDER BY name", vec![])
            .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    async fn exists(&self, sql: &'static str, id: Uuid) -> Result<bool, StoreError> {
        let row: Option<(Uuid,)> = self.db.fetch_optional(sql, vec![Value::Uuid(id)]).await?;
        Ok(row.is_some())
    }

    /// `ids` split into those `sql` (a lookup by id) finds and the others.
    async fn split(
        &self,
        sql: &'static str,
        ids: &[Uuid],
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
        let (mut held, mut missing) = (Vec::new(), Vec::new());
        for id in ids {
            if self.exists(sql, *id).await? {
                held.push(*id);
            } else {
                missing.push(*id);
            }
        }
        Ok((held, missing))
    }

    /// Whether a wall exists.
    pub async fn wall_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM walls WHERE id = $1", id).await
    }

    /// Whether an assignment exists.
    pub async fn assignment_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM assignments WHERE id = $1", id)
            .await
    }

    /// A page of staff members by e-mail address, after the one `after`
    /// names (a key of one text part, the e-mail address): at most `limit`
    /// looked at, of those `filter` lets through (a role's expiry is
    /// checked by the caller, against [`StaffListing::live_roles`]); with
    /// their role grants and where their sign-in stands. Also
    /// returns, if there are more, the e-mail address of the last one
    /// looked at, for the next page to start after.
    pub async fn staff_page(
        &self,
        filter: &StaffFilter<'_>,
        after: Vec<Value>,
        limit: i64,
    ) -> Result<(Vec<StaffListing>, Option<String>), StoreError> {
        let mut values = vec![
            Value::Int(i32::from(filter.include_disabled)),
            Value::OptText(filter.role.map(str::to_owned)),
            Value::OptUuid(filter.only),
            Value::Text(crate::restore::LOCKED_HASH.to_owned()),
            Value::OptInt(filter.sign_in.map(|s| s as i32)),
            Value::OptText(filter.containing.map(|text| {
                // Matched literally: LIKE's own characters escaped.
                let escaped = text
                    .to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            })),
        ];
        values.extend(after.clone());
        values.push(Value::BigInt(limit + 1));
        type Row = (
            Uuid,
            String,
            String,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            i32,
        );
        let mut rows: Vec<Row> = self.db.fetch_all(&STAFF_PAGE, values).await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let Some(last) = rows.last().map(|r| r.1.clone()) else {
            return Ok((Vec::new(), None));
        };
        // The live grants of the staff members of the page: those whose
        // address lies between the page's bounds.
        let mut bounds = vec![Value::OptUuid(filter.only)];
        bounds.extend(after);
        bounds.push(Value::Text(last.clone()));
        let grants: Vec<(Uuid, String, Option<DateTime<Utc>>)> = self
            .db
            .fetch_all(
                "SELECT r.staff_id, r.role, r.expires_at FROM staff_roles r \
                 JOIN staff s ON s.id = r.staff_id WHERE r.revoked_at IS NULL \
                 AND ($1 IS NULL OR s.id = $1) \
                 AND ($2 IS NULL OR s.email > $2) AND s.email <= $3 ORDER BY r.role",
                bounds,
            )
            .await?;
        let listed = rows
            .into_iter()
            .map(
                |(id, email, display_name, created_at, disabled_at, sign_in)| StaffListing {
                    roles: grants
                        .iter()
                        .filter(|(staff, ..)| *staff == id)
                        .map(|(_, role, expires)| (role.clone(), *expires))
                        .collect(),
                    id,
                    email,
                    display_name,
                    created_at,
                    disabled_at,
                    sign_in: SignInState::try_from(sign_in).unwrap_or_default(),
                },
            )
            .collect();
        Ok((listed, more.then_some(last)))
    }

    /// A staff member's attestations, each with its kind ([`KIND_NDA`]
    /// or [`KIND_TRAINING`]) and version.
    pub async fn attestations(&self, staff: Uuid) -> Result<Vec<Attested>, StoreError> {
        let rows: Vec<AttestationRow> = self
            .db
            .fetch_all(
                "SELECT id, kind, version, completed_at, expires_at, score, pass_mark \
                 FROM attestations WHERE staff_id = $1",
                vec![Value::Uuid(staff)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, kind, version, completed, expires, score, pass_mark)| {
                    Attested::from_row(id, kind, version, completed, expires, score, pass_mark)
                },
            )
            .collect())
    }

    /// One staff member as [`Directory::staff_page`] lists them.
    pub async fn staff_member(&self, id: Uuid) -> Result<Option<StaffListing>, StoreError> {
        let (mut listed, _) = self
            .staff_page(
                &StaffFilter {
                    include_disabled: true,
                    only: Some(id),
                    ..StaffFilter::default()
                },
                vec![Value::OptText(None)],
                1,
            )
            .await?;
        Ok(listed.pop())
    }

    /// The matters `staff` has a way into at `now` (a live assignment,
    /// responsibility, open emergency access), by id after `after`, and
    /// the last id when more follow.
    pub async fn ways_in(
        &self,
        staff: Uuid,
        now: DateTime<Utc>,
        after: Vec<Value>,
        limit: i64,
    ) -> Result<(Vec<MatterWay>, Option<Uuid>), StoreError> {
        let mut values = vec![Value::Uuid(staff), Value::Time(now)];
        values.extend(after);
        values.push(Value::BigInt(limit + 1));
        let mut rows: Vec<MatterWay> = self
            .db
            .fetch_all(
                "SELECT m.id, m.client_id, m.closed_at, m.practice_area FROM matters m \
                 WHERE ($3 IS NULL OR m.id > $3) AND (m.responsible_attorney_id = $1 \
                 OR EXISTS (SELECT 1 FROM assignments a WHERE a.matter_id = m.id \
                 AND a.staff_id = $1 AND a.granted_at <= $2 \
                 AND (a.expires_at IS NULL OR a.expires_at > $2) \
                 AND (a.revoked_at IS NULL OR a.revoked_at > $2)) \
                 OR EXISTS (SELECT 1 FROM break_glass b WHERE b.matter_id = m.id \
                 AND b.staff_id = $1 AND b.opened_at <= $2 AND b.expires_at > $2)) \
                 ORDER BY m.id LIMIT $4",
                values,
            )
            .await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next = more.then(|| rows.last().map(|r| r.0)).flatten();
        Ok((rows, next))
    }

    /// The walls standing at `now` that screen `staff`, by when they went
    /// up, with their targets and the staff member's exceptions holding
    /// at `now`.
    pub async fn walls_screening(
        &self,
        staff: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Screening>, StoreError> {
        let walls: Vec<(Uuid, DateTime<Utc>)> = self
            .db
            .fetch_all(
                "SELECT w.id, w.created_at FROM walls w JOIN wall_members m ON m.wall_id = w.id \
                 WHERE m.staff_id = $1 AND w.created_at <= $2 \
                 AND (w.lifted_at IS NULL OR w.lifted_at > $2) ORDER BY w.created_at, w.id",
                vec![Value::Uuid(staff), Value::Time(now)],
            )
            .await?;
        let mut screening = Vec::with_capacity(walls.len());
        for (id, created_at) in walls {
            let (clients, matters) = self.wall_targets(id).await?;
            let passages: Vec<(Uuid, Uuid, DateTime<Utc>)> = self
                .db
                .fetch_all(
                    "SELECT id, matter_id, expires_at FROM wall_exceptions \
                     WHERE wall_id = $1 AND staff_id = $2 AND granted_at <= $3 \
                     AND expires_at > $3 AND (revoked_at IS NULL OR revoked_at > $3) ORDER BY id",
                    vec![Value::Uuid(id), Value::Uuid(staff), Value::Time(now)],
                )
                .await?;
            screening.push(Screening {
                id,
                created_at,
                clients,
                matters,
                passages,
            });
        }
        Ok(screening)
    }

    /// Whether a staff member exists.
    pub async fn staff_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM staff WHERE id = $1", id).await
    }

    /// Whether a client exists.
    pub async fn client_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM clients WHERE id = $1", id)
            .await
    }

    /// Whether a matter exists.
    pub async fn matter_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM matters WHERE id = $1", id)
            .await
    }

    /// Matters by id (unknown ids are left out).
    pub async fn matters(&self, ids: &[Uuid]) -> Result<Vec<MatterRow>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<MatterRow> = self
                .db
                .fetch_optional(
                    "SELECT id, client_id, practice_area, jurisdiction, opened_at, closed_at FROM matters WHERE id = $1",
                    vec![Value::Uuid(*id)],
                )
                .await?;
            rows.extend(row);
        }
        Ok(rows)
    }

    /// The client of a matter.
    pub async fn matter_client(&self, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT client_id FROM matters WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Creates a staff member with roles.
    pub async fn create_staff(
        &self,
        request_id: Option<Uuid>,
        email: &str,
        display_name: &str,
        roles: &[String],
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let now = Utc::now();
        let mut statements = vec![Statement::new(
            "INSERT INTO staff (id, email, display_name, created_at) VALUES ($1, $2, $3, $4)",
            vec![
                Value::Uuid(id),
                Value::Text(email.to_owned()),
                Value::Text(display_name.to_owned()),
                Value::Time(now),
            ],
        )];
        for role in roles {
            statements.push(Statement::new(
                "INSERT INTO staff_roles (staff_id, role, granted_at) VALUES ($1, $2, $3)",
                vec![Value::Uuid(id), Value::Text(role.clone()), Value::Time(now)],
            ));
        }
        self.create(request_id, "create_staff", id, statements, event(id))
            .await
    }

    /// Disables a staff member from now on.
    pub async fn disable_staff(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        let done = self
            .db
            .transact(
                vec![
                    staff_disabled(id, at),
                    crate::sessions::sessions_ended(id, DISABLED, at),
                ],
                &[event],
            )
            .await?;
        if done[0] == 0 && !self.staff_exists(id).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        Ok(())
    }

    /// Changes staff member `id`'s e-mail address (lower case) and/or
    /// displayed name at `at`; returns the address they had.
    pub async fn update_staff(
        &self,
        id: Uuid,
        (email, display_name): (Option<&str>, Option<&str>),
        at: DateTime<Utc>,
        event: AuditEvent,
    ) -> Result<String, StoreError> {
        let old: Option<(String,)> = self
            .db
            .fetch_optional(
                "SELECT email FROM staff WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        let (old,) = old.ok_or(StoreError::NotFound("staff member"))?;
        self.db
            .transact(
                vec![
                    Statement::new(
                        "UPDATE staff SET email = COALESCE($1, email), \
                         display_name = COALESCE($2, display_name), updated_at = $3 WHERE id = $4",
                        vec![
                            Value::OptText(email.map(str::to_owned)),
                            Value::OptText(display_name.map(str::to_owned)),
                            Value::Time(at),
                            Value::Uuid(id),
                        ],
                    )
                    .expecting(1),
                ],
                &[event],
            )
            .await?;
        Ok(old)
    }

    /// When staff member `id`'s address or name last changed (`None`:
    /// never, or no such staff member).
    pub async fn staff_updated_at(&self, id: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row: Option<(Option<DateTime<Utc>>,)> = self
            .db
            .fetch_optional(
                "SELECT updated_at FROM staff WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        Ok(row.and_then(|(at,)| at))
    }

    /// Enables a disabled staff member again (no change if enabled).
    pub async fn enable_staff(&self, id: Uuid, event: AuditEvent) -> Result<(), StoreError> {
        let done = self.db.transact(vec![staff_enabled(id)], &[event]).await?;
        if done[0] == 0 && !self.staff_exists(id).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        Ok(())
    }

    /// Registers a client.
    pub async fn create_client(
        &self,
        request_id: Option<Uuid>,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let statements = vec![client_created(id, Utc::now())];
        self.create(request_id, "create_client", id, statements, event(id))
            .await
    }

    /// Opens a matter.
    pub async fn create_matter(
        &self,
        request_id: Option<Uuid>,
        matter: &NewMatter,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        if !self.client_exists(matter.client_id).await? {
            return Err(StoreError::NotFound("client"));
        }
        if let Some(staff) = matter.responsible
            && !self.staff_exists(staff).await?
        {
            return Err(StoreError::NotFound("responsible attorney"));
        }
        let id = Uuid::now_v7();
        let statements = vec![matter.opened(id, Utc::now())];
        self.create(request_id, "create_matter", id, statements, event(id))
            .await
    }

    /// Closes a matter; returns when. Closing twice keeps the first time.
    pub async fn close_matter(
        &self,
        id: Uuid,
        event: AuditEvent,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.db
            .transact(vec![matter_closed(id, Utc::now())], &[event])
            .await?;
        let row: Option<(Option<DateTime<Utc>>,)> = self
            .db
            .fetch_optional(
                "SELECT closed_at FROM matters WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        row.and_then(|(c,)| c).ok_or(StoreError::NotFound("matter"))
    }

    /// Assigns a staff member to a matter.
    pub async fn assign(
        &self,
        matter: Uuid,
        staff: Uuid,
        expires: Option<DateTime<Utc>>,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        if !self.matter_exists(matter).await? {
            return Err(StoreError::NotFound("matter"));
        }
        if !self.staff_exists(staff).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        let id = Uuid::now_v7();
        let grant = Grant { staff, expires };
        self.db
            .transact(vec![grant.assignment(id, matter, Utc::now())], &[event(id)])
            .await?;
        Ok(id)
    }

    /// Revokes an assignment now.
    pub async fn revoke_assignment(&self, id: Uuid, event: AuditEvent) -> Result<(), StoreError> {
        let done = self
            .db
            .transact(vec![assignment_revoked(id, Utc::now())], &[event])
            .await?;
        if done[0] == 0
            && !self
                .exists("SELECT id FROM assignments WHERE id = $1", id)
                .await?
        {
            return Err(StoreError::NotFound("assignment"));
        }
        Ok(())
    }

    /// Puts up a wall.
    pub async fn create_wall(
        &self,
        wall: &WallMembers,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        let (_, missing) = wall.held_in(self).await?;
        if !missing.staff.is_empty() {
            return Err(StoreError::NotFound("staff member"));
        }
        if !missing.clients.is_empty() {
            return Err(StoreError::NotFound("client"));
        }
        if !missing.matters.is_empty() {
            return Err(StoreError::NotFound("matter"));
        }
        let id = Uuid::now_v7();
        let statements = wall.put_up(id, Utc::now());
        self.db.transact(statements, &[event(id)]).await?;
        Ok(id)
    }

    /// Lets a screened staff member through a wall for one matter. The wall
    /// must be standing, screen the staff member, and cover the matter
    /// (directly or through its client).
    pub async fn grant_wall_exception(
        &self,
        exception: &WallException,
        reason: &str,
        granted_by: &str,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        let WallException {
            wall,
            staff,
            matter,
            ..
        } = *exception;
        let standing: Option<(Option<DateTime<Utc>>,)> = self
            .db
            .fetch_optional(
                "SELECT lifted_at FROM walls WHERE id = $1",
                vec![Value::Uuid(wall)],
            )
            .await?;
        match standing {
            None => return Err(StoreError::NotFound("wall")),
            Some((Some(_),)) => return Err(StoreError::Precondition("the wall has been lifted")),
            Some((None,)) => {}
        }
        let member: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT staff_id FROM wall_members WHERE wall_id = $1 AND staff_id = $2",
                vec![Value::Uuid(wall), Value::Uuid(staff)],
            )
            .await?;
        if member.is_none() {
            return Err(StoreError::Precondition(
                "the wall does not screen this staff member",
            ));
        }
        let covered: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT m.id FROM matters m JOIN wall_targets t ON t.wall_id = $1 \
                 AND (t.matter_id = m.id OR t.client_id = m.client_id) WHERE m.id = $2",
                vec![Value::Uuid(wall), Value::Uuid(matter)],
            )
            .await?;
        if covered.is_none() {
            return Err(StoreError::Precondition(
                "the wall does not cover this matter",
            ));
        }
        let id = Uuid::now_v7();
        self.db
            .transact(
                vec![exception.granted(id, Utc::now(), reason, granted_by)],
                &[event(id)],
            )
            .await?;
        Ok(id)
    }

    /// Ends a wall exception.
    pub async fn revoke_wall_exception(
        &self,
        id: Uuid,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<(), StoreError> {
        let revoked = self
            .db
            .transact(
                vec![wall_exception_revoked(id, Utc::now()).expecting(1)],
                &[event(id)],
            )
            .await;
        match revoked {
            Ok(_) => Ok(()),
            // Nothing is written, the event included.
            Err(TransactError::Unmet { .. }) => Err(StoreError::NotFound("wall exception")),
            Err(e) => Err(e.into()),
        }
    }

    /// Records an attestation.
    pub async fn record_attestation(
        &self,
        a: &NewAttestation,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        if !self.staff_exists(a.staff_id).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        let id = Uuid::now_v7();
        self.db
            .transact(vec![a.recorded(id, Utc::now())], &[event(id)])
            .await?;
        Ok(id)
    }

    /// Whether a wall exception exists.
    pub async fn wall_exception_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM wall_exceptions WHERE id = $1", id)
            .await
    }

    /// Whether an attestation exists.
    pub async fn attestation_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.exists("SELECT id FROM attestations WHERE id = $1", id)
            .await
    }

    /// Opens break-glass access until `expires`.
    pub async fn open_break_glass(
        &self,
        staff: Uuid,
        matter: Uuid,
        justification: &str,
        expires: DateTime<Utc>,
        event: impl FnOnce(Uuid) -> AuditEvent,
    ) -> Result<Uuid, StoreError> {
        if !self.staff_exists(staff).await? {
            return Err(StoreError::NotFound("staff member"));
        }
        if !self.matter_exists(matter).await? {
            return Err(StoreError::NotFound("matter"));
        }
        let id = Uuid::now_v7();
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO break_glass (id, staff_id, matter_id, justification, opened_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    vec![
                        Value::Uuid(id),
                        Value::Uuid(staff),
                        Value::Uuid(matter),
                        Value::Text(justification.to_owned()),
                        Value::Time(Utc::now()),
                        Value::Time(expires),
                    ],
                )],
                &[event(id)],
            )
            .await?;
        Ok(id)
    }

    /// Staff connected to a matter in any way, at any time: assignments,
    /// responsibility, break-glass, walls over the matter or its client.
    pub async fn matter_candidates(&self, matter: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT staff_id FROM assignments WHERE matter_id = $1 \
                 UNION SELECT responsible_attorney_id FROM matters WHERE id = $1 AND responsible_attorney_id IS NOT NULL \
                 UNION SELECT staff_id FROM break_glass WHERE matter_id = $1 \
                 UNION SELECT m.staff_id FROM wall_members m JOIN wall_targets t ON t.wall_id = m.wall_id \
                 WHERE t.matter_id = $1 OR t.client_id = (SELECT client_id FROM matters WHERE id = $1)",
                vec![Value::Uuid(matter)],
            )
            .await?;
        let mut ids: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Gathers the facts of a decision: the staff member, the roles that
    /// grant `permission`, and for a client or matter the attestations,
    /// walls, assignments and break-glass grants that bear on it.
    pub async fn facts(
        &self,
        staff: Uuid,
        permission: &str,
        client: Option<Uuid>,
        matter: Option<Uuid>,
    ) -> Result<Facts, StoreError> {
        let mut facts = Facts::default();
        let row: Option<(Option<DateTime<Utc>>,)> = self
            .db
            .fetch_optional(
                "SELECT disabled_at FROM staff WHERE id = $1",
                vec![Value::Uuid(staff)],
            )
            .await?;
        let Some((disabled,)) = row else {
            return Ok(facts);
        };
        facts.staff = Some(disabled);
        let roles: Vec<RoleRow> = self
            .db
            .fetch_all(
                "SELECT sr.role, sr.granted_at, sr.expires_at, sr.revoked_at FROM staff_roles sr \
                 JOIN role_permissions rp ON rp.role = sr.role WHERE sr.staff_id = $1 AND rp.permission = $2",
                vec![Value::Uuid(staff), Value::Text(permission.to_owned())],
            )
            .await?;
        facts.granting_roles = roles
            .into_iter()
            .map(|(role, start, expires, revoked)| {
                (
                    role,
                    Interval {
                        start,
                        expires,
                        revoked,
                    },
                )
            })
            .collect();
        if client.is_none() && matter.is_none() {
            return Ok(facts);
        }

        // Resolve the resource: a matter (and its client), or a client.
        let (client_id, matter_row) = match matter {
            Some(m) => {
                let row: Option<(Uuid, Option<Uuid>)> = self
                    .db
                    .fetch_optional(
                        "SELECT client_id, responsible_attorney_id FROM matters WHERE id = $1",
                        vec![Value::Uuid(m)],
                    )
                    .await?;
                match row {
                    Some((c, attorney)) if client.is_none_or(|given| given == c) => {
                        (c, Some((m, attorney)))
                    }
                    _ => return Ok(facts),
                }
            }
            None => match client {
                Some(c) if self.client_exists(c).await? => (c, None),
                _ => return Ok(facts),
            },
        };
        facts.resource_exists = true;
        facts.responsible_attorney = matter_row.is_some_and(|(_, a)| a == Some(staff));

        facts.attested(&self.attestations(staff).await?);

        let matter_id = matter_row.map(|(m, _)| m);
        let walls: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = self
            .db
            .fetch_all(
                "SELECT DISTINCT w.id, w.created_at, w.lifted_at FROM walls w \
                 JOIN wall_members m ON m.wall_id = w.id JOIN wall_targets t ON t.wall_id = w.id \
                 WHERE m.staff_id = $1 AND (t.client_id = $2 OR t.matter_id = $3 \
                 OR t.matter_id IN (SELECT id FROM matters WHERE client_id = $2))",
                vec![
                    Value::Uuid(staff),
                    Value::Uuid(client_id),
                    Value::OptUuid(matter_id),
                ],
            )
            .await?;
        for (wall, start, lifted) in walls {
            facts.walls.push(Interval {
                start,
                expires: None,
                revoked: lifted,
            });
            // Exceptions are per matter: a question about the client as a
            // whole gets none.
            let exceptions: Vec<IdIntervalRow> = match matter_id {
                Some(m) => {
                    self.db
                        .fetch_all(
                            "SELECT id, granted_at, expires_at, revoked_at FROM wall_exceptions WHERE wall_id = $1 AND staff_id = $2 AND matter_id = $3",
                            vec![Value::Uuid(wall), Value::Uuid(staff), Value::Uuid(m)],
                        )
                        .await?
                }
                None => Vec::new(),
            };
            facts
                .wall_exception_ids
                .push(exceptions.iter().map(|(id, ..)| *id).collect());
            facts.wall_exceptions.push(
                exceptions
                    .into_iter()
                    .map(|(_, start, expires, revoked)| interval((start, expires, revoked)))
                    .collect(),
            );
        }

        let assignments: Vec<IntervalRow> = match matter_id {
            Some(m) => {
                self.db
                    .fetch_all(
                        "SELECT granted_at, expires_at, revoked_at FROM assignments WHERE staff_id = $1 AND matter_id = $2",
                        vec![Value::Uuid(staff), Value::Uuid(m)],
                    )
                    .await?
            }
            None => {
                self.db
                    .fetch_all(
                        "SELECT a.granted_at, a.expires_at, a.revoked_at FROM assignments a \
                         JOIN matters m ON m.id = a.matter_id WHERE a.staff_id = $1 AND m.client_id = $2",
                        vec![Value::Uuid(staff), Value::Uuid(client_id)],
                    )
                    .await?
            }
        };
        facts.assignments = assignments.into_iter().map(interval).collect();
        if matter_id.is_none() {
            // Responsible for any matter of the client counts too.
            let responsible: Vec<(Uuid,)> = self
                .db
                .fetch_all(
                    "SELECT id FROM matters WHERE client_id = $1 AND responsible_attorney_id = $2",
                    vec![Value::Uuid(client_id), Value::Uuid(staff)],
                )
                .await?;
            facts.responsible_attorney = !responsible.is_empty();
        }

        if let Some(m) = matter_id {
            let grants: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
                .db
                .fetch_all(
                    "SELECT opened_at, expires_at FROM break_glass WHERE staff_id = $1 AND matter_id = $2",
                    vec![Value::Uuid(staff), Value::Uuid(m)],
                )
                .await?;
            facts.break_glass = grants
                .into_iter()
                .map(|(start, expires)| Interval {
                    start,
                    expires: Some(expires),
                    revoked: None,
                })
                .collect();
        }
        Ok(facts)
    }
}

/// Statement: staff member `id` is disabled from `at` (no change if
/// disabled already).
pub fn staff_disabled(id: Uuid, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE staff SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL",
        vec![Value::Time(at), Value::Uuid(id)],
    )
}

/// Why the sessions of a staff member being disabled end.
pub const DISABLED: &str = "account_disabled";

/// Statement: staff member `id` is enabled again (no change if enabled).
pub fn staff_enabled(id: Uuid) -> Statement {
    Statement::new(
        "UPDATE staff SET disabled_at = NULL WHERE id = $1 AND disabled_at IS NOT NULL",
        vec![Value::Uuid(id)],
    )
}

/// Statement: session `id` ends at `at`, for `reason` (no change if it
/// ended already).
pub fn session_ended(id: Uuid, reason: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        vec![
            Value::Time(at),
            Value::Text(reason.to_owned()),
            Value::Uuid(id),
        ],
    )
}

/// Statement: assignment `id` is revoked from `at` (no change if revoked
/// already).
pub fn assignment_revoked(id: Uuid, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE assignments SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![Value::Time(at), Value::Uuid(id)],
    )
}

/// Statement: every live grant of `role` to `staff` is revoked from `at`
/// (a role may have been granted more than once, a row each).
pub fn role_revoked(staff: Uuid, role: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE staff_roles SET revoked_at = $1 WHERE staff_id = $2 AND role = $3 AND revoked_at IS NULL",
        vec![
            Value::Time(at),
            Value::Uuid(staff),
            Value::Text(role.to_owned()),
        ],
    )
}

/// An attestation with what the decision does not need of it.
#[derive(Debug, Clone)]
pub struct Attested {
    /// [`KIND_NDA`] or [`KIND_TRAINING`].
    pub kind: i32,
    /// The agreement's or course's version.
    pub version: String,
    /// As decisions see it.
    pub attestation: Attestation,
}

impl Attested {
    /// An attestation as stored: a training counts as passed when its
    /// score reaches its pass mark, an agreement always.
    pub fn from_row(
        id: Uuid,
        kind: i32,
        version: String,
        completed: DateTime<Utc>,
        expires: DateTime<Utc>,
        score: Option<i32>,
        pass_mark: Option<i32>,
    ) -> Self {
        Self {
            kind,
            version,
            attestation: Attestation {
                id,
                completed,
                expires,
                passed: match (score, pass_mark) {
                    (Some(s), Some(p)) => s >= p,
                    _ => kind == KIND_NDA,
                },
            },
        }
    }
}

impl Facts {
    /// Takes in a staff member's attestations.
    pub fn attested(&mut self, attestations: &[Attested]) {
        for a in attestations {
            if a.kind == KIND_NDA {
                self.ndas.push(a.attestation);
            } else if a.kind == KIND_TRAINING {
                self.trainings.push(a.attestation);
            }
        }
    }
}

/// A matter a staff member has a way into: id, client, when closed,
/// practice area.
pub type MatterWay = (Uuid, Uuid, Option<DateTime<Utc>>, String);

/// A wall screening a staff member.
#[derive(Debug, Clone)]
pub struct Screening {
    /// The wall.
    pub id: Uuid,
    /// When it went up.
    pub created_at: DateTime<Utc>,
    /// The clients it screens.
    pub clients: Vec<Uuid>,
    /// The matters it screens.
    pub matters: Vec<Uuid>,
    /// The staff member's exceptions holding: id, matter, lapse.
    pub passages: Vec<(Uuid, Uuid, DateTime<Utc>)>,
}

/// The query of [`Directory::staff_page`]. Where each staff member's
/// sign-in stands is worked out here alone (`$4` is the hash a restore
/// locks with), so that the filter and the listing agree.
static STAFF_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let state = format!(
        "CASE WHEN c.password_hash IS NULL THEN {no_password} \
         WHEN c.password_hash = $4 THEN {locked} \
         WHEN c.totp_confirmed_at IS NULL THEN {pending} \
         WHEN c.must_change_password <> 0 THEN {change} ELSE {ready} END",
        no_password = SignInState::NoPassword as i32,
        locked = SignInState::Locked as i32,
        pending = SignInState::TotpPending as i32,
        change = SignInState::PasswordChangeRequired as i32,
        ready = SignInState::Ready as i32,
    );
    format!(
        "SELECT s.id, s.email, s.display_name, s.created_at, s.disabled_at, {state} \
         FROM staff s LEFT JOIN credentials c ON c.staff_id = s.id \
         WHERE ($1 = 1 OR s.disabled_at IS NULL) \
         AND ($2 IS NULL OR EXISTS (SELECT 1 FROM staff_roles r WHERE r.staff_id = s.id \
         AND r.role = $2 AND r.revoked_at IS NULL)) \
         AND ($3 IS NULL OR s.id = $3) \
         AND ($5 IS NULL OR {state} = $5) \
         AND ($6 IS NULL OR lower(s.email) LIKE $6 ESCAPE '\\' \
         OR lower(s.display_name) LIKE $6 ESCAPE '\\') \
         AND ($7 IS NULL OR s.email > $7) ORDER BY s.email LIMIT $8"
    )
});

/// Which staff members [`Directory::staff_page`] lists.
#[derive(Debug, Clone, Default)]
pub struct StaffFilter<'a> {
    /// Only those holding this role (some grant of it not revoked).
    pub role: Option<&'a str>,
    /// Disabled ones too.
    pub include_disabled: bool,
    /// Only this one.
    pub only: Option<Uuid>,
    /// Only those whose sign-in stands so.
    pub sign_in: Option<SignInState>,
    /// Only those whose e-mail address or displayed name contains this
    /// (letters of either case).
    pub containing: Option<&'a str>,
}

/// A staff member as the directory lists them.
#[derive(Debug, Clone)]
pub struct StaffListing {
    /// Their id.
    pub id: Uuid,
    /// Work e-mail address.
    pub email: String,
    /// Name shown to colleagues.
    pub display_name: String,
    /// When they were added.
    pub created_at: DateTime<Utc>,
    /// When they were disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Where their sign-in stands.
    pub sign_in: SignInState,
    /// Their role grants not revoked: (role, expiry), some maybe lapsed.
    pub roles: Vec<(String, Option<DateTime<Utc>>)>,
}

impl StaffListing {
    /// The roles they hold at `now`, with their expiries, each once (the
    /// latest-lapsing grant of it).
    pub fn live_roles(&self, now: DateTime<Utc>) -> Vec<(String, Option<DateTime<Utc>>)> {
        let mut live: Vec<(String, Option<DateTime<Utc>>)> = Vec::new();
        for (role, expires) in &self.roles {
            if expires.is_some_and(|e| e <= now) {
                continue;
            }
            match live.iter_mut().find(|(r, _)| r == role) {
                // Until revoked (no expiry) outlasts any expiry.
                Some((_, held)) => *held = held.zip(*expires).map(|(a, b)| a.max(b)),
                None => live.push((role.clone(), *expires)),
            }
        }
        live
    }
}

/// A grant of access to a staff member (an assignment to a matter, a
/// role), until an expiry if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Who was given access.
    pub staff: Uuid,
    /// Until when, if not for good.
    pub expires: Option<DateTime<Utc>>,
}

impl Grant {
    /// Statement: it is assignment `id` to `matter`, from `at`.
    pub fn assignment(&self, id: Uuid, matter: Uuid, at: DateTime<Utc>) -> Statement {
        Statement::new(
            "INSERT INTO assignments (id, matter_id, staff_id, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Value::Uuid(id),
                Value::Uuid(matter),
                Value::Uuid(self.staff),
                Value::Time(at),
                Value::OptTime(self.expires),
            ],
        )
    }

    /// What its audit event names in `related`: the staff member, and the
    /// expiry (RFC 3339) if it has one.
    pub fn related(&self) -> Vec<(&'static str, String)> {
        let mut related = vec![("staff", self.staff.to_string())];
        related.extend(self.expires.map(|e| {
            (
                "expires_at",
                e.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            )
        }));
        related
    }

    /// Read back from a grant's event; `None` for one logged before grant
    /// events named their staff member and expiry.
    pub fn from_related(related: &[confidant_proto::audit::v1::RelatedResource]) -> Option<Self> {
        let named = |kind: &str| confidant_runtime::audit::related_named(related, kind);
        Some(Self {
            staff: Uuid::parse_str(named("staff")?).ok()?,
            expires: match named("expires_at") {
                None => None,
                Some(at) => Some(DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc)),
            },
        })
    }
}

/// A wall exception as it is granted: one screened staff member let
/// through one wall for one matter, until it lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallException {
    /// The wall.
    pub wall: Uuid,
    /// The screened staff member let through.
    pub staff: Uuid,
    /// The matter they are let through for.
    pub matter: Uuid,
    /// When it lapses.
    pub expires: DateTime<Utc>,
}

impl WallException {
    /// Statement: it is exception `id`, granted at `at` by `granted_by`
    /// for `reason`.
    pub fn granted(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: &str,
        granted_by: &str,
    ) -> Statement {
        Statement::new(
            "INSERT INTO wall_exceptions (id, wall_id, staff_id, matter_id, reason, granted_by, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                Value::Uuid(id),
                Value::Uuid(self.wall),
                Value::Uuid(self.staff),
                Value::Uuid(self.matter),
                Value::Text(reason.to_owned()),
                Value::Text(granted_by.to_owned()),
                Value::Time(at),
                Value::Time(self.expires),
            ],
        )
    }

    /// What its audit event names in `related`: the wall, the staff
    /// member, the matter and the expiry (RFC 3339); never the reason,
    /// which is free text.
    pub fn related(&self) -> Vec<(&'static str, String)> {
        vec![
            ("wall", self.wall.to_string()),
            ("staff", self.staff.to_string()),
            ("matter", self.matter.to_string()),
            (
                "expires_at",
                self.expires
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
        ]
    }

    /// Read back from its event; `None` for one logged before exception
    /// events named their wall, staff member, matter and expiry.
    pub fn from_related(related: &[confidant_proto::audit::v1::RelatedResource]) -> Option<Self> {
        let named = |kind: &str| confidant_runtime::audit::related_named(related, kind);
        let id = |kind: &str| Uuid::parse_str(named(kind)?).ok();
        Some(Self {
            wall: id("wall")?,
            staff: id("staff")?,
            matter: id("matter")?,
            expires: DateTime::parse_from_rfc3339(named("expires_at")?)
                .ok()?
                .with_timezone(&Utc),
        })
    }

    /// Those of its wall, staff member and matter the database does not
    /// hold, as (kind, id).
    pub async fn missing_from(
        &self,
        directory: &Directory,
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        let mut missing = Vec::new();
        if !directory.wall_exists(self.wall).await? {
            missing.push(("wall", self.wall.to_string()));
        }
        if !directory.staff_exists(self.staff).await? {
            missing.push(("staff", self.staff.to_string()));
        }
        if !directory.matter_exists(self.matter).await? {
            missing.push(("matter", self.matter.to_string()));
        }
        Ok(missing)
    }
}

impl NewAttestation {
    /// Statement: it is attestation `id`, recorded at `at`.
    pub fn recorded(&self, id: Uuid, at: DateTime<Utc>) -> Statement {
        Statement::new(
            "INSERT INTO attestations (id, staff_id, kind, version, completed_at, expires_at, score, pass_mark, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                Value::Uuid(id),
                Value::Uuid(self.staff_id),
                Value::Int(self.kind),
                Value::Text(self.version.clone()),
                Value::Time(self.completed),
                Value::Time(self.expires),
                Value::OptInt(self.score),
                Value::OptInt(self.pass_mark),
                Value::Time(at),
            ],
        )
    }

    /// What its audit event names in `related`: the staff member, the kind
    /// (`nda` or `training`), the version, when it was completed and when
    /// it lapses (RFC 3339), and a training's score and pass mark.
    pub fn related(&self) -> Vec<(&'static str, String)> {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let mut related = vec![
            ("staff", self.staff_id.to_string()),
            (
                "kind",
                if self.kind == KIND_TRAINING {
                    "training"
                } else {
                    "nda"
                }
                .to_owned(),
            ),
            ("version", self.version.clone()),
            ("completed_at", time(self.completed)),
            ("expires_at", time(self.expires)),
        ];
        related.extend(self.score.map(|s| ("score", s.to_string())));
        related.extend(self.pass_mark.map(|p| ("pass_mark", p.to_string())));
        related
    }

    /// Read back from its event; `None` for one logged before attestation
    /// events named what was attested.
    pub fn from_related(related: &[confidant_proto::audit::v1::RelatedResource]) -> Option<Self> {
        let named = |kind: &str| confidant_runtime::audit::related_named(related, kind);
        let time = |kind: &str| -> Option<DateTime<Utc>> {
            Some(
                DateTime::parse_from_rfc3339(named(kind)?)
                    .ok()?
                    .with_timezone(&Utc),
            )
        };
        let number = |kind: &str| -> Option<Option<i32>> {
            match named(kind) {
                None => Some(None),
                Some(n) => Some(Some(n.parse().ok()?)),
            }
        };
        Some(Self {
            staff_id: Uuid::parse_str(named("staff")?).ok()?,
            kind: match named("kind")? {
                "nda" => KIND_NDA,
                "training" => KIND_TRAINING,
                _ => return None,
            },
            version: named("version")?.to_owned(),
            completed: time("completed_at")?,
            expires: time("expires_at")?,
            score: number("score")?,
            pass_mark: number("pass_mark")?,
        })
    }
}

/// Statement: `staff` holds `role` from `at`, until `expires` if set.
pub fn role_granted(
    staff: Uuid,
    role: &str,
    at: DateTime<Utc>,
    expires: Option<DateTime<Utc>>,
) -> Statement {
    Statement::new(
        "INSERT INTO staff_roles (staff_id, role, granted_at, expires_at) VALUES ($1, $2, $3, $4)",
        vec![
            Value::Uuid(staff),
            Value::Text(role.to_owned()),
            Value::Time(at),
            Value::OptTime(expires),
        ],
    )
}

/// Statement: client `id` is registered from `at`.
pub fn client_created(id: Uuid, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO clients (id, created_at) VALUES ($1, $2)",
        vec![Value::Uuid(id), Value::Time(at)],
    )
}

/// A matter as it is opened: its client and classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMatter {
    /// Its client.
    pub client_id: Uuid,
    /// The responsible attorney, who has access without assignment.
    pub responsible: Option<Uuid>,
    /// Its practice area, trimmed.
    pub practice_area: String,
    /// Its jurisdiction (ISO 3166, upper case), if any.
    pub jurisdiction: Option<String>,
}

impl NewMatter {
    /// Statement: it is open as matter `id` from `at`.
    pub fn opened(&self, id: Uuid, at: DateTime<Utc>) -> Statement {
        Statement::new(
            "INSERT INTO matters (id, client_id, responsible_attorney_id, practice_area, opened_at, jurisdiction) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Value::Uuid(id),
                Value::Uuid(self.client_id),
                Value::OptUuid(self.responsible),
                Value::Text(self.practice_area.clone()),
                Value::Time(at),
                Value::OptText(self.jurisdiction.clone()),
            ],
        )
    }

    /// What its audit event names in `related`: the responsible attorney,
    /// the practice area and the jurisdiction (the client is the event's
    /// scope).
    pub fn related(&self) -> Vec<(&'static str, String)> {
        let mut related = vec![("practice_area", self.practice_area.clone())];
        related.extend(
            self.responsible
                .map(|s| ("responsible_attorney", s.to_string())),
        );
        related.extend(self.jurisdiction.clone().map(|j| ("jurisdiction", j)));
        related
    }

    /// Read back from an `identity.matter.created` event of `client_id`;
    /// `None` for one logged before matter events named their practice area.
    pub fn from_related(
        client_id: Uuid,
        related: &[confidant_proto::audit::v1::RelatedResource],
    ) -> Option<Self> {
        let named =
            |kind: &str| confidant_runtime::audit::related_named(related, kind).map(str::to_owned);
        Some(Self {
            client_id,
            responsible: named("responsible_attorney").and_then(|s| Uuid::parse_str(&s).ok()),
            practice_area: named("practice_area")?,
            jurisdiction: named("jurisdiction"),
        })
    }
}

/// A wall as its audit event names it: whom it screens from what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WallMembers {
    /// The staff members it screens.
    pub staff: Vec<Uuid>,
    /// The clients it screens them from.
    pub clients: Vec<Uuid>,
    /// The matters it screens them from.
    pub matters: Vec<Uuid>,
}

impl WallMembers {
    /// Read from an `identity.wall.created` event's related resources
    /// (entries of other types, or that are not UUIDs, are left out).
    pub fn from_related(related: &[confidant_proto::audit::v1::RelatedResource]) -> Self {
        let mut wall = Self::default();
        for r in related {
            let Ok(id) = Uuid::parse_str(&r.id) else {
                continue;
            };
            match r.r#type.as_str() {
                "staff" => wall.staff.push(id),
                "client" => wall.clients.push(id),
                "matter" => wall.matters.push(id),
                _ => {}
            }
        }
        wall
    }

    /// The related resources its audit event names.
    pub fn related(&self) -> Vec<(&'static str, String)> {
        [
            ("staff", &self.staff),
            ("client", &self.clients),
            ("matter", &self.matters),
        ]
        .into_iter()
        .flat_map(|(kind, ids)| ids.iter().map(move |id| (kind, id.to_string())))
        .collect()
    }

    /// Whether it names no one (an event logged before walls named their
    /// members).
    pub fn is_empty(&self) -> bool {
        self.staff.is_empty() && self.clients.is_empty() && self.matters.is_empty()
    }

    /// Whether it screens someone from something.
    pub fn screens(&self) -> bool {
        let targets = self.clients.len() + self.matters.len();
        !self.staff.is_empty() && targets > 0
    }

    /// Splits it into what the database holds and what it does not.
    pub async fn held_in(&self, directory: &Directory) -> Result<(Self, Self), StoreError> {
        let (staff, staff_missing) = directory
            .split("SELECT id FROM staff WHERE id = $1", &self.staff)
            .await?;
        let (clients, clients_missing) = directory
            .split("SELECT id FROM clients WHERE id = $1", &self.clients)
            .await?;
        let (matters, matters_missing) = directory
            .split("SELECT id FROM matters WHERE id = $1", &self.matters)
            .await?;
        Ok((
            Self {
                staff,
                clients,
                matters,
            },
            Self {
                staff: staff_missing,
                clients: clients_missing,
                matters: matters_missing,
            },
        ))
    }

    /// Statements: wall `id` stands from `at`, screening these (all of
    /// which the database holds).
    pub fn put_up(&self, id: Uuid, at: DateTime<Utc>) -> Vec<Statement> {
        let mut statements = vec![Statement::new(
            "INSERT INTO walls (id, created_at) VALUES ($1, $2)",
            vec![Value::Uuid(id), Value::Time(at)],
        )];
        let rows = |sql: &'static str, ids: &[Uuid]| -> Vec<Statement> {
            ids.iter()
                .map(|other| Statement::new(sql, vec![Value::Uuid(id), Value::Uuid(*other)]))
                .collect()
        };
        statements.extend(rows(
            "INSERT INTO wall_members (wall_id, staff_id) VALUES ($1, $2)",
            &self.staff,
        ));
        statements.extend(rows(
            "INSERT INTO wall_targets (wall_id, client_id) VALUES ($1, $2)",
            &self.clients,
        ));
        statements.extend(rows(
            "INSERT INTO wall_targets (wall_id, matter_id) VALUES ($1, $2)",
            &self.matters,
        ));
        statements
    }
}

/// Statement: wall exception `id` is revoked from `at` (no change if
/// revoked already).
pub fn wall_exception_revoked(id: Uuid, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE wall_exceptions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![Value::Time(at), Value::Uuid(id)],
    )
}

/// Statement: matter `id` is closed from `at` (no change if closed
/// already).
pub fn matter_closed(id: Uuid, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE matters SET closed_at = $1 WHERE id = $2 AND closed_at IS NULL",
        vec![Value::Time(at), Value::Uuid(id)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_shows_each_live_role_once_with_its_latest_lapse() {
        // The auditor role lapsed yesterday: not listed.
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let listing = StaffListing {
            id: Uuid::now_v7(),
            email: "a@firm.example".into(),
            display_name: "A".into(),
            created_at: now,
            disabled_at: None,
            sign_in: SignInState::NoPassword,
            roles: vec![
                ("auditor".into(), Some(now - day)),
                ("paralegal".into(), Some(now + day)),
                ("paralegal".into(), Some(now + day * 7)),
                ("partner".into(), Some(now + day)),
                ("partner".into(), None),
                ("partner".into(), Some(now + day * 30)),
            ],
        };
        assert_eq!(
            listing.live_roles(now),
            [
                ("paralegal".to_owned(), Some(now + day * 7)),
                ("partner".to_owned(), None)
            ]
        );
    }
}
