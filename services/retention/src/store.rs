//! Retention's tables on PostgreSQL or SQLite, through the runtime's
//! portable statements.

use chrono::{DateTime, Utc};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use confidant_vault::domain::Category;
use uuid::Uuid;

use crate::domain::{Action, Period, Rules, ScopeFacts, Trigger};

/// A stored certificate: id, body, signature, the signing key's id, and
/// the public key that verifies it (`None` for one stored before
/// certificates kept it).
pub type StoredCertificate = (Uuid, String, String, String, Option<String>);

/// Query results.
pub type StoreResult<T> = Result<T, sqlx::Error>;

/// A policy version as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyRow {
    /// Id.
    pub id: Uuid,
    /// Version.
    pub version: i32,
    /// Category name.
    pub category: String,
    /// Years.
    pub period_years: i32,
    /// Months.
    pub period_months: i32,
    /// Days.
    pub period_days: i32,
    /// Trigger kind.
    pub trigger_kind: String,
    /// Named event.
    pub trigger_event_name: Option<String>,
    /// Action name.
    pub action: String,
    /// Notice days.
    pub client_notice_days: i32,
    /// Basis.
    pub basis: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
    /// Only matters of this practice area.
    pub practice_area: Option<String>,
    /// Only matters under this jurisdiction.
    pub jurisdiction: Option<String>,
}

impl PolicyRow {
    /// Its rules (`None` if the row holds values this version does not know).
    pub fn rules(&self) -> Option<Rules> {
        let n = |x: i32| u32::try_from(x).ok();
        Some(Rules {
            category: Category::parse(&self.category)?,
            period: Period {
                years: n(self.period_years)?,
                months: n(self.period_months)?,
                days: n(self.period_days)?,
            },
            trigger: Trigger::from_stored(&self.trigger_kind, self.trigger_event_name.as_deref())?,
            action: Action::parse(&self.action)?,
            client_notice_days: n(self.client_notice_days)?,
            basis: self.basis.clone(),
            practice_area: self.practice_area.clone(),
            jurisdiction: self.jurisdiction.clone(),
        })
    }
}

/// A scope as retention knows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScopeRow {
    /// The vault scope.
    pub scope_id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category name.
    pub category: String,
    /// Created in the vault.
    pub created_at: DateTime<Utc>,
    /// The vault's state at the last sync.
    pub vault_state: String,
    /// When it falls due.
    pub due_at: Option<DateTime<Utc>>,
    /// Originals the firm holds for the client in it (at the last sync).
    pub original_count: i64,
    /// Its matter's practice area, once identity told.
    pub practice_area: Option<String>,
    /// Its matter's jurisdiction, once identity told (if it has one).
    pub jurisdiction: Option<String>,
    /// Whether retention knows its matter (always, for client-level scopes).
    pub matter_known: bool,
}

/// The live policies, and which one governs a scope.
#[derive(Debug, Clone, Default)]
pub struct LivePolicies(Vec<(PolicyRow, Rules)>);

impl LivePolicies {
    /// From the live rows (rows this version cannot read are left out).
    pub fn new(rows: Vec<PolicyRow>) -> Self {
        Self(
            rows.into_iter()
                .filter_map(|p| {
                    let rules = p.rules()?;
                    Some((p, rules))
                })
                .collect(),
        )
    }

    /// The policy that governs `scope`: of its category's policies that fit
    /// its matter, the most specific.
    pub fn for_scope(&self, scope: &ScopeRow) -> Option<&(PolicyRow, Rules)> {
        self.0
            .iter()
            .filter_map(|entry| {
                let fit = entry.1.fit(
                    &scope.category,
                    scope.practice_area.as_deref(),
                    scope.jurisdiction.as_deref(),
                )?;
                Some((fit, entry))
            })
            .max_by_key(|(fit, _)| *fit)
            .map(|(_, entry)| entry)
    }
}

/// What identity says of a matter.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MatterRow {
    /// The matter.
    pub matter_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// Practice area (as compared: lower-cased).
    pub practice_area: String,
    /// Jurisdiction (ISO 3166).
    pub jurisdiction: Option<String>,
    /// When it closed.
    pub closed_at: Option<DateTime<Utc>>,
}

/// Statement: what identity says of a matter now.
pub fn upsert_matter(m: &MatterRow, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO retention_matters (matter_id, client_id, practice_area, jurisdiction, closed_at, synced_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (matter_id) DO UPDATE SET practice_area = excluded.practice_area, \
         jurisdiction = excluded.jurisdiction, closed_at = excluded.closed_at, synced_at = excluded.synced_at",
        vec![
            Value::Uuid(m.matter_id),
            Value::Uuid(m.client_id),
            Value::Text(m.practice_area.clone()),
            Value::OptText(m.jurisdiction.clone()),
            Value::OptTime(m.closed_at),
            Value::Time(now),
        ],
    )
}

macro_rules! scope_select {
    ($tail:literal) => {
        concat!(
            "SELECT s.scope_id, s.client_id, s.matter_id, s.category, s.created_at, s.vault_state, s.due_at, \
             s.original_count, m.practice_area, m.jurisdiction, \
             (s.matter_id IS NULL OR m.matter_id IS NOT NULL) AS matter_known \
             FROM retention_scopes s LEFT JOIN retention_matters m ON m.matter_id = s.matter_id ",
            $tail
        )
    };
}

/// An entry of the return-to-client list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReturnRow {
    /// Id.
    pub id: Uuid,
    /// The vault scope.
    pub scope_id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category name.
    pub category: String,
    /// Originals in the scope when it was listed.
    pub original_count: i64,
    /// When the scope fell due.
    pub due_at: DateTime<Utc>,
    /// The policy that made it due.
    pub policy_id: Option<Uuid>,
    /// Its version.
    pub policy_version: Option<i32>,
    /// listed or returned.
    pub state: String,
    /// When listed.
    pub listed_at: DateTime<Utc>,
    /// When the return was recorded.
    pub returned_at: Option<DateTime<Utc>>,
    /// Who recorded it.
    pub returned_by: Option<String>,
    /// How it went back.
    pub reference: Option<String>,
}

macro_rules! return_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, scope_id, client_id, matter_id, category, original_count, due_at, policy_id, \
             policy_version, state, listed_at, returned_at, returned_by, reference FROM retention_returns ",
            $tail
        )
    };
}

/// A hold.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    /// Id.
    pub id: Uuid,
    /// Why.
    pub reason: String,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category.
    pub category: Option<String>,
    /// By whom.
    pub placed_by: String,
    /// When.
    pub placed_at: DateTime<Utc>,
    /// Confirmed by the vault (1) or not yet (0).
    pub in_vault: i32,
    /// When released.
    pub released_at: Option<DateTime<Utc>>,
    /// 1 when it names its scopes.
    pub scoped: i32,
    /// The scopes it names (for a scoped hold).
    #[sqlx(skip)]
    pub scope_ids: Vec<Uuid>,
}

impl HoldRow {
    /// Whether it covers the scope `scope` of `client`, `matter`,
    /// `category`.
    pub fn covers(&self, scope: Uuid, client: Uuid, matter: Option<Uuid>, category: &str) -> bool {
        self.released_at.is_none()
            && self.client_id == client
            && if self.scoped != 0 {
                self.scope_ids.contains(&scope)
            } else {
                (self.matter_id.is_none() || self.matter_id == matter)
                    && self.category.as_deref().is_none_or(|c| c == category)
            }
    }
}

macro_rules! policy_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, version, category, period_years, period_months, period_days, trigger_kind, \
             trigger_event_name, action, client_notice_days, basis, created_at, created_by, \
             practice_area, jurisdiction FROM retention_policies p ",
            $tail
        )
    };
}

/// A recorded trigger event: (matter, kind, event name, when).
pub type TriggerRow = (Option<Uuid>, String, Option<String>, DateTime<Utc>);

/// Retention's storage.
#[derive(Debug, Clone)]
pub struct RetentionStore {
    db: Database,
}

/// Statement: a policy version.
pub fn insert_policy(
    id: Uuid,
    version: i32,
    rules: &Rules,
    by: &str,
    now: DateTime<Utc>,
) -> Statement {
    let i = |x: u32| Value::Int(i32::try_from(x).unwrap_or(i32::MAX));
    Statement::new(
        "INSERT INTO retention_policies (id, version, category, period_years, period_months, period_days, \
         trigger_kind, trigger_event_name, action, client_notice_days, basis, created_at, created_by, \
         practice_area, jurisdiction) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        vec![
            Value::Uuid(id),
            Value::Int(version),
            Value::Text(rules.category.as_str().to_owned()),
            i(rules.period.years),
            i(rules.period.months),
            i(rules.period.days),
            Value::Text(rules.trigger.kind().to_owned()),
            Value::OptText(match &rules.trigger {
                Trigger::Named(n) => Some(n.clone()),
                _ => None,
            }),
            Value::Text(rules.action.as_str().to_owned()),
            i(rules.client_notice_days),
            Value::Text(rules.basis.clone()),
            Value::Time(now),
            Value::Text(by.to_owned()),
            Value::OptText(rules.practice_area.clone()),
            Value::OptText(rules.jurisdiction.clone()),
        ],
    )
}

/// Statement: a trigger event.
pub fn insert_trigger(
    recorded: &RecordedTrigger,
    client_id: Uuid,
    matter_id: Option<Uuid>,
    by: &str,
    now: DateTime<Utc>,
) -> Statement {
    Statement::new(
        "INSERT INTO retention_triggers (id, client_id, matter_id, kind, event_name, occurred_at, recorded_by, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        vec![
            Value::Uuid(recorded.id),
            Value::Uuid(client_id),
            Value::OptUuid(matter_id),
            Value::Text(recorded.trigger.kind().to_owned()),
            Value::OptText(match &recorded.trigger {
                Trigger::Named(n) => Some(n.clone()),
                _ => None,
            }),
            Value::Time(recorded.occurred_at),
            Value::Text(by.to_owned()),
            Value::Time(now),
        ],
    )
}

/// A trigger event as it is recorded, and as its audit event names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTrigger {
    /// Its id.
    pub id: Uuid,
    /// What happened.
    pub trigger: Trigger,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

impl RecordedTrigger {
    /// A new one.
    pub fn new(trigger: Trigger, occurred_at: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            trigger,
            occurred_at,
        }
    }

    /// What its audit event names in `related`: its id, when it happened
    /// (RFC 3339) and a named event's name (its kind is the reason).
    pub fn related(&self) -> Vec<(&'static str, String)> {
        let mut related = vec![
            ("trigger", self.id.to_string()),
            (
                "occurred_at",
                self.occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
        ];
        if let Trigger::Named(name) = &self.trigger {
            related.push(("event_name", name.clone()));
        }
        related
    }

    /// Read back from a `retention.trigger.recorded` event of `kind`;
    /// `None` for one logged before trigger events named them.
    pub fn from_related(
        kind: &str,
        related: &[confidant_proto::audit::v1::RelatedResource],
    ) -> Option<Self> {
        let named = |t: &str| confidant_runtime::audit::related_named(related, t);
        Some(Self {
            id: Uuid::parse_str(named("trigger")?).ok()?,
            trigger: Trigger::from_stored(kind, named("event_name"))?,
            occurred_at: DateTime::parse_from_rfc3339(named("occurred_at")?)
                .ok()?
                .with_timezone(&Utc),
        })
    }
}

/// Statement: a scope's due date and the policy version it came from.
pub fn set_due(
    scope_id: Uuid,
    due: Option<DateTime<Utc>>,
    policy: Option<(Uuid, i32)>,
) -> Statement {
    Statement::new(
        "UPDATE retention_scopes SET due_at = $2, policy_id = $3, policy_version = $4 WHERE scope_id = $1",
        vec![
            Value::Uuid(scope_id),
            Value::OptTime(due),
            Value::OptUuid(policy.map(|p| p.0)),
            Value::OptInt(policy.map(|p| p.1)),
        ],
    )
}

/// The key of the policies' generation in `retention_inputs`; each
/// client's trigger events and matters count under the client's id.
const POLICIES: &str = "policies";

/// Statement: the policies change in this transaction. Every recompute
/// that read them before then writes nothing ([`inputs_unchanged`]).
pub fn policies_changed() -> Statement {
    Statement::new(
        "UPDATE retention_inputs SET generation = generation + 1 WHERE input_key = $1",
        vec![Value::Text(POLICIES.to_owned())],
    )
    .expecting(1)
}

/// Statement: a trigger event or a matter of `client` changes in this
/// transaction. Recomputes that read the client's inputs before then write
/// nothing ([`inputs_unchanged`]).
pub fn client_inputs_changed(client: Uuid) -> Statement {
    Statement::new(
        "INSERT INTO retention_inputs (input_key, generation) VALUES ($1, 1) \
         ON CONFLICT (input_key) DO UPDATE SET generation = retention_inputs.generation + 1",
        vec![Value::Text(client.to_string())],
    )
    .expecting(1)
}

/// Statement: the guard of a recompute's writes, one per input it read
/// (the policies, and each client whose scopes it dates). The transaction
/// commits only while the input's generation is still `generation` (0: no
/// change recorded yet); on PostgreSQL it also holds the input's row until
/// it commits, so a change commits either before the guard (and fails it)
/// or after the writes (and its own recompute comes after them).
pub fn inputs_unchanged(input: Input, generation: i64) -> Statement {
    Statement::new(
        "INSERT INTO retention_inputs (input_key, generation) VALUES ($1, $2) \
         ON CONFLICT (input_key) DO UPDATE SET generation = retention_inputs.generation \
         WHERE retention_inputs.generation = $2",
        vec![Value::Text(input.key()), Value::BigInt(generation)],
    )
    .expecting(1)
}

/// An input of due dates whose changes are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    /// The policies.
    Policies,
    /// A client's trigger events and matters.
    Client(Uuid),
}

impl Input {
    fn key(self) -> String {
        match self {
            Input::Policies => POLICIES.to_owned(),
            Input::Client(id) => id.to_string(),
        }
    }
}

/// Statement: a scope seen in the vault (new, or its state and originals
/// refreshed; its due date is retention's own).
pub fn upsert_scope(scope: &ScopeRow, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO retention_scopes (scope_id, client_id, matter_id, category, created_at, vault_state, synced_at, original_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (scope_id) DO UPDATE SET vault_state = excluded.vault_state, synced_at = excluded.synced_at, \
         original_count = excluded.original_count",
        vec![
            Value::Uuid(scope.scope_id),
            Value::Uuid(scope.client_id),
            Value::OptUuid(scope.matter_id),
            Value::Text(scope.category.clone()),
            Value::Time(scope.created_at),
            Value::Text(scope.vault_state.clone()),
            Value::Time(now),
            Value::BigInt(scope.original_count),
        ],
    )
}

/// Statement: a hold.
/// Statement: disposals pause (until [`resume`]), for `reason`.
pub fn pause(reason: &str, now: DateTime<Utc>) -> Statement {
    Statement::per_backend(
        "INSERT INTO retention_pause (id, reason, since) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        "INSERT OR IGNORE INTO retention_pause (id, reason, since) VALUES (1, $1, $2)",
        vec![Value::Text(reason.to_owned()), Value::Time(now)],
    )
}

/// Statement `sql` moves row `id` from state `from` to `to` (unmet if it
/// is not in `from`): `sql` sets `state = $3, updated_at = $4` where
/// `id = $1 AND state = $2`.
pub fn state_change(sql: &'static str, id: Uuid, from: &str, to: &str) -> Statement {
    Statement::new(
        sql,
        vec![
            Value::Uuid(id),
            Value::Text(from.to_owned()),
            Value::Text(to.to_owned()),
            Value::Time(Utc::now()),
        ],
    )
    .expecting(1)
}

/// Statement: disposals run again; changes a row only if they were paused.
pub fn resume() -> Statement {
    Statement::new("DELETE FROM retention_pause WHERE id = 1", vec![])
}

pub fn insert_hold(hold: &HoldRow) -> Vec<Statement> {
    let mut statements = vec![insert_hold_row(hold)];
    statements.extend(hold.scope_ids.iter().map(|scope| {
        Statement::new(
            "INSERT INTO retention_hold_scopes (hold_id, scope_id) VALUES ($1, $2)",
            vec![Value::Uuid(hold.id), Value::Uuid(*scope)],
        )
    }));
    statements
}

fn insert_hold_row(hold: &HoldRow) -> Statement {
    Statement::new(
        "INSERT INTO retention_holds (id, reason, client_id, matter_id, category, placed_by, placed_at, in_vault, scoped) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)",
        vec![
            Value::Uuid(hold.id),
            Value::Text(hold.reason.clone()),
            Value::Uuid(hold.client_id),
            Value::OptUuid(hold.matter_id),
            Value::OptText(hold.category.clone()),
            Value::Text(hold.placed_by.clone()),
            Value::Time(hold.placed_at),
            Value::Int(hold.scoped),
        ],
    )
}

/// Statement: the vault confirmed a hold.
pub fn hold_in_vault(id: Uuid) -> Statement {
    Statement::new(
        "UPDATE retention_holds SET in_vault = 1 WHERE id = $1",
        vec![Value::Uuid(id)],
    )
}

/// Statement: one approval of a hold's release (a second by the same
/// person is refused by the primary key).
pub fn approve_release(hold_id: Uuid, staff_id: &str, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO retention_hold_approvals (hold_id, staff_id, approved_at) VALUES ($1, $2, $3)",
        vec![
            Value::Uuid(hold_id),
            Value::Text(staff_id.to_owned()),
            Value::Time(now),
        ],
    )
}

/// Statement: a hold is released.
pub fn release(hold_id: Uuid, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE retention_holds SET released_at = $2 WHERE id = $1 AND released_at IS NULL",
        vec![Value::Uuid(hold_id), Value::Time(now)],
    )
}

impl RetentionStore {
    /// Over `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Every version of every policy, newest first per policy.
    pub async fn policy_versions(&self) -> StoreResult<Vec<PolicyRow>> {
        self.db
            .fetch_all(
                policy_select!("ORDER BY category, id, version DESC"),
                vec![],
            )
            .await
    }

    /// The live version of each policy.
    pub async fn live_policies(&self) -> StoreResult<Vec<PolicyRow>> {
        let mut live: Vec<PolicyRow> = Vec::new();
        for row in self.policy_versions().await? {
            if live.last().is_none_or(|l| l.id != row.id) {
                live.push(row);
            }
        }
        Ok(live)
    }

    /// One version of a policy.
    pub async fn policy_version(&self, id: Uuid, version: i32) -> StoreResult<Option<PolicyRow>> {
        self.db
            .fetch_optional(
                policy_select!("WHERE id = $1 AND version = $2"),
                vec![Value::Uuid(id), Value::Int(version)],
            )
            .await
    }

    /// The live version of one policy.
    pub async fn policy(&self, id: Uuid) -> StoreResult<Option<PolicyRow>> {
        self.db
            .fetch_optional(
                policy_select!("WHERE id = $1 ORDER BY version DESC LIMIT 1"),
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// The trigger events recorded about `client_id`.
    pub async fn trigger_facts(&self, client_id: Uuid) -> StoreResult<Vec<TriggerRow>> {
        self.db
            .fetch_all(
                "SELECT matter_id, kind, event_name, occurred_at FROM retention_triggers WHERE client_id = $1",
                vec![Value::Uuid(client_id)],
            )
            .await
    }

    /// Scopes, optionally of one client or one category.
    pub async fn scopes(
        &self,
        client_id: Option<Uuid>,
        category: Option<&str>,
    ) -> StoreResult<Vec<ScopeRow>> {
        self.db
            .fetch_all(
                scope_select!(
                    "WHERE ($1 IS NULL OR s.client_id = $1) AND ($2 IS NULL OR s.category = $2) ORDER BY s.scope_id"
                ),
                vec![
                    Value::OptUuid(client_id),
                    Value::OptText(category.map(str::to_owned)),
                ],
            )
            .await
    }

    /// One scope.
    pub async fn scope(&self, id: Uuid) -> StoreResult<Option<ScopeRow>> {
        self.db
            .fetch_optional(
                scope_select!("WHERE s.scope_id = $1"),
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// Live scopes due before `before`, earliest first (the due index;
    /// RFC 3339 UTC text on SQLite orders like the times it holds).
    pub async fn due_before(&self, before: DateTime<Utc>) -> StoreResult<Vec<ScopeRow>> {
        self.db
            .fetch_all(
                scope_select!(
                    "WHERE s.due_at IS NOT NULL AND s.due_at <= $1 AND s.vault_state <> 'shredded' ORDER BY s.due_at"
                ),
                vec![Value::Time(before)],
            )
            .await
    }

    /// Due live scopes that no disposal has taken yet, earliest first, at
    /// most `limit`: what a sweep plans.
    pub async fn due_untaken(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<ScopeRow>> {
        self.db
            .fetch_all(
                scope_select!(
                    "WHERE s.due_at IS NOT NULL AND s.due_at <= $1 AND s.vault_state <> 'shredded' \
                 AND (s.matter_id IS NULL OR m.matter_id IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM retention_disposals d WHERE d.scope_id = s.scope_id AND d.state <> 'cancelled') \
                 AND NOT EXISTS (SELECT 1 FROM retention_disposals d WHERE d.scope_id = s.scope_id AND d.state = 'cancelled' \
                     AND d.cancel_reason = 'destruction_cancelled' AND d.due_at = s.due_at) \
                 AND NOT EXISTS (SELECT 1 FROM retention_returns r WHERE r.scope_id = s.scope_id AND r.state = 'listed') \
                 ORDER BY s.due_at LIMIT $2"
                ),
                vec![Value::Time(before), Value::BigInt(limit)],
            )
            .await
    }

    /// A page of the return-to-client list: open entries first, then
    /// returned ones, earliest due first, at most `limit` after the entry
    /// `after` names, optionally of one client.
    pub async fn returns(
        &self,
        client_id: Option<Uuid>,
        include_returned: bool,
        after: Vec<Value>,
        limit: i64,
    ) -> StoreResult<Vec<ReturnRow>> {
        let mut values = vec![
            Value::OptUuid(client_id),
            Value::Int(i32::from(include_returned)),
        ];
        values.extend(after);
        values.push(Value::BigInt(limit));
        self.db
            .fetch_all(
                return_select!(
                    "WHERE ($1 IS NULL OR client_id = $1) AND ($2 = 1 OR state = 'listed') \
                     AND ($3 IS NULL OR (state, due_at, id) > ($3, $4, $5)) \
                     ORDER BY state, due_at, id LIMIT $6"
                ),
                values,
            )
            .await
    }

    /// One entry of the return-to-client list.
    pub async fn return_entry(&self, id: Uuid) -> StoreResult<Option<ReturnRow>> {
        self.db
            .fetch_optional(return_select!("WHERE id = $1"), vec![Value::Uuid(id)])
            .await
    }

    /// Matters of known scopes and physical items that are open or not
    /// known here yet: the ones to ask identity about.
    pub async fn matters_to_refresh(&self) -> StoreResult<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT DISTINCT s.matter_id FROM \
                 (SELECT matter_id FROM retention_scopes UNION SELECT matter_id FROM physical_items) s \
                 LEFT JOIN retention_matters m ON m.matter_id = s.matter_id \
                 WHERE s.matter_id IS NOT NULL AND (m.matter_id IS NULL OR m.closed_at IS NULL)",
                vec![],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// What retention knows of a matter.
    pub async fn matter(&self, id: Uuid) -> StoreResult<Option<MatterRow>> {
        self.db
            .fetch_optional(
                "SELECT matter_id, client_id, practice_area, jurisdiction, closed_at FROM retention_matters WHERE matter_id = $1",
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// The generations of the inputs of due dates: of the policies and of
    /// `client`'s, or of every client's (`None`). A client missing from the
    /// map has generation 0.
    pub async fn input_generations(
        &self,
        client: Option<Uuid>,
    ) -> StoreResult<std::collections::HashMap<Input, i64>> {
        let rows: Vec<(String, i64)> = self
            .db
            .fetch_all(
                "SELECT input_key, generation FROM retention_inputs \
                 WHERE $1 IS NULL OR input_key = $1 OR input_key = $2",
                vec![
                    Value::OptText(client.map(|c| c.to_string())),
                    Value::Text(POLICIES.to_owned()),
                ],
            )
            .await?;
        let generations: std::collections::HashMap<Input, i64> = rows
            .into_iter()
            .filter_map(|(key, generation)| {
                let input = if key == POLICIES {
                    Input::Policies
                } else {
                    Input::Client(Uuid::parse_str(&key).ok()?)
                };
                Some((input, generation))
            })
            .collect();
        if generations.contains_key(&Input::Policies) {
            Ok(generations)
        } else {
            Err(sqlx::Error::RowNotFound)
        }
    }

    /// Whether disposals are paused since a restore.
    pub async fn paused(&self) -> StoreResult<bool> {
        let row: Option<(i32,)> = self
            .db
            .fetch_optional("SELECT id FROM retention_pause WHERE id = 1", vec![])
            .await?;
        Ok(row.is_some())
    }

    /// How many scopes retention knows.
    pub async fn scope_count(&self) -> StoreResult<i64> {
        let row: Option<(i64,)> = self
            .db
            .fetch_optional("SELECT COUNT(*) FROM retention_scopes", vec![])
            .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// Who approved something, in order: the staff ids `sql` selects for
    /// `id` (a hold release's, a batch's or an erasure's approvals).
    pub async fn staff_ids(&self, sql: &'static str, id: Uuid) -> StoreResult<Vec<String>> {
        Ok(self
            .db
            .fetch_all::<(String,)>(sql, vec![Value::Uuid(id)])
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// A signed certificate `sql` selects for `id`: (id, body, signature,
    /// key id).
    pub async fn certificate(
        &self,
        sql: &'static str,
        id: Uuid,
    ) -> StoreResult<Option<StoredCertificate>> {
        self.db.fetch_optional(sql, vec![Value::Uuid(id)]).await
    }

    /// Whether a scope is known.
    pub async fn known(&self, scope_id: Uuid) -> StoreResult<bool> {
        let row: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT scope_id FROM retention_scopes WHERE scope_id = $1",
                vec![Value::Uuid(scope_id)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// The live holds (not released), newest first, each with its scopes.
    pub async fn live_holds(&self) -> StoreResult<Vec<HoldRow>> {
        let mut holds: Vec<HoldRow> = self
            .db
            .fetch_all(
                "SELECT id, reason, client_id, matter_id, category, placed_by, placed_at, in_vault, released_at, scoped \
                 FROM retention_holds WHERE released_at IS NULL ORDER BY id DESC",
                vec![],
            )
            .await?;
        self.attach_scopes(&mut holds).await?;
        Ok(holds)
    }

    /// A page of holds, newest first: at most `limit` older than the one
    /// `after` names, optionally of one client, optionally with released
    /// ones. Each with its scopes and its release's approvers.
    pub async fn hold_page(
        &self,
        client_id: Option<Uuid>,
        include_released: bool,
        after: Vec<Value>,
        limit: i64,
    ) -> StoreResult<Vec<(HoldRow, Vec<String>)>> {
        let mut values = vec![
            Value::OptUuid(client_id),
            Value::Int(i32::from(include_released)),
        ];
        values.extend(after);
        values.push(Value::BigInt(limit));
        let mut rows: Vec<HoldRow> = self
            .db
            .fetch_all(
                "SELECT id, reason, client_id, matter_id, category, placed_by, placed_at, in_vault, released_at, scoped \
                 FROM retention_holds WHERE ($1 IS NULL OR client_id = $1) AND ($2 = 1 OR released_at IS NULL) \
                 AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                values,
            )
            .await?;
        self.attach_scopes(&mut rows).await?;
        let ids: Vec<Uuid> = rows.iter().map(|h| h.id).collect();
        let mut approvers = self
            .children::<String>(
                "SELECT hold_id, staff_id FROM retention_hold_approvals WHERE hold_id BETWEEN $1 AND $2 ORDER BY hold_id, approved_at",
                &ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|hold| {
                let approvers = approvers.remove(&hold.id).unwrap_or_default();
                (hold, approvers)
            })
            .collect())
    }

    /// A page of disposal batches, newest first: at most `limit` older than
    /// the one `after` names, optionally in one state; each with its
    /// scopes and its approvers.
    pub async fn batch_page(
        &self,
        state: Option<&'static str>,
        after: Vec<Value>,
        limit: i64,
    ) -> StoreResult<Vec<(crate::disposal::BatchRow, Vec<Uuid>, Vec<String>)>> {
        let mut values = vec![Value::OptText(state.map(str::to_owned))];
        values.extend(after);
        values.push(Value::BigInt(limit));
        let rows: Vec<crate::disposal::BatchRow> = self
            .db
            .fetch_all(
                "SELECT id, action, state, approvals_needed, created_at FROM retention_batches \
                 WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                values,
            )
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|b| b.id).collect();
        let mut scopes = self
            .children::<Uuid>(
                "SELECT batch_id, scope_id FROM retention_disposals WHERE batch_id BETWEEN $1 AND $2 ORDER BY batch_id, scope_id",
                &ids,
            )
            .await?;
        let mut approvers = self
            .children::<String>(
                "SELECT batch_id, staff_id FROM retention_batch_approvals WHERE batch_id BETWEEN $1 AND $2 ORDER BY batch_id, approved_at",
                &ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let id = row.id;
                (
                    row,
                    scopes.remove(&id).unwrap_or_default(),
                    approvers.remove(&id).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// What `sql` selects for the items `ids` of one page, as (item id,
    /// value) rows, grouped by item (see `Database::children`).
    pub async fn children<T>(
        &self,
        sql: &'static str,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<T>>>
    where
        (Uuid, T): confidant_runtime::portable::PortableRow,
    {
        Ok(self
            .db
            .children::<(Uuid, T)>(sql, ids, |row| row.0)
            .await?
            .into_iter()
            .map(|(id, rows)| (id, rows.into_iter().map(|(_, value)| value).collect()))
            .collect())
    }

    /// One hold.
    pub async fn hold(&self, id: Uuid) -> StoreResult<Option<HoldRow>> {
        let row: Option<HoldRow> = self
            .db
            .fetch_optional(
                "SELECT id, reason, client_id, matter_id, category, placed_by, placed_at, in_vault, released_at, scoped \
                 FROM retention_holds WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        let Some(mut hold) = row else {
            return Ok(None);
        };
        self.attach_scopes(std::slice::from_mut(&mut hold)).await?;
        Ok(Some(hold))
    }

    /// Gives each hold that names its scopes (`scoped`) their ids, with one
    /// statement for all of them.
    async fn attach_scopes(&self, holds: &mut [HoldRow]) -> StoreResult<()> {
        let ids: Vec<Uuid> = holds
            .iter()
            .filter(|h| h.scoped != 0)
            .map(|h| h.id)
            .collect();
        let mut scopes = self
            .children::<Uuid>(
                "SELECT hold_id, scope_id FROM retention_hold_scopes WHERE hold_id BETWEEN $1 AND $2 ORDER BY hold_id, scope_id",
                &ids,
            )
            .await?;
        for hold in holds.iter_mut().filter(|h| h.scoped != 0) {
            hold.scope_ids = scopes.remove(&hold.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Who approved a hold's release.
    pub async fn approvers(&self, hold_id: Uuid) -> StoreResult<Vec<String>> {
        self.staff_ids(
            "SELECT staff_id FROM retention_hold_approvals WHERE hold_id = $1 ORDER BY approved_at",
            hold_id,
        )
        .await
    }
}

/// The facts about `scope` from its client's recorded triggers.
pub fn facts_of(scope: &ScopeRow, triggers: &[TriggerRow]) -> ScopeFacts {
    let latest = |kind: &str, matter_scoped: bool| {
        triggers
            .iter()
            .filter(|(m, k, _, _)| {
                k == kind && (!matter_scoped || (m.is_some() && *m == scope.matter_id))
            })
            .map(|(_, _, _, at)| *at)
            .max()
    };
    ScopeFacts {
        created_at: Some(scope.created_at),
        has_matter: scope.matter_id.is_some(),
        matter_closed_at: latest("matter_closed", true),
        relationship_ended_at: latest("relationship_ended", false),
        named: triggers
            .iter()
            .filter(|(m, k, _, _)| k == "named_event" && (m.is_none() || *m == scope.matter_id))
            .filter_map(|(_, _, name, at)| name.clone().map(|n| (n, *at)))
            .collect(),
    }
}
