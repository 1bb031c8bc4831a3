//! Retention's operations, independent of gRPC: policies and their versions,
//! trigger events, the registry of vault scopes with due dates, legal holds
//! carried to the vault, and the due report. Each change is written with its
//! audit event in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{AuditEvent, Outcome};
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::audit::{Action as AuditAction, EventBuilder};
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, TransactError, Value};
use confidant_vault::domain::Category;
use confidant_vault::store::HoldCover;
use uuid::Uuid;

use crate::domain::{Rules, Trigger, due_at};
use crate::error::Error;
use crate::store::{
    self, HoldRow, Input, LivePolicies, MatterRow, PolicyRow, RetentionStore, ReturnRow, ScopeRow,
};

/// Who acts (shared with the other services).
pub use confidant_runtime::auth::Actor;

/// How long a call to the vault or the audit service may take: a call that
/// hangs fails, and the next sweep or sync resumes the work.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A request with the call timeout.
pub(crate) fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Statements written per transaction when many scopes change.
const CHUNK: usize = 500;

/// How often a recompute reads its inputs again when they keep changing.
const RECOMPUTE_ATTEMPTS: u32 = 8;

/// Which scopes a recompute covers.
#[derive(Debug, Clone)]
pub enum Scopes {
    /// Every scope of a category (its policies changed).
    Category(String),
    /// Every scope of a client (a trigger event or a matter changed).
    Client(Uuid),
    /// These scopes (new in the registry).
    Ids(Vec<Uuid>),
}

/// Due dates computed from the inputs as they were at their generations.
#[derive(Debug)]
pub struct RecomputePlan {
    /// The generations of the inputs, read before the inputs themselves:
    /// the policies', and those of the clients it may date (a client
    /// missing has generation 0).
    read: HashMap<Input, i64>,
    /// Each scope's client and its due-date statement.
    statements: Vec<(Uuid, Statement)>,
}

impl RecomputePlan {
    /// How many scopes it dates.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether it dates no scope.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// What became of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Its due dates are written (this many scopes).
    Written(usize),
    /// An input changed after it was read: nothing more was written.
    Stale,
}

/// Whether PostgreSQL stopped a statement for a deadlock or a
/// serialization failure (it can be run again).
fn lock_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// The retention service's operations.
#[derive(Debug, Clone)]
pub struct Retention {
    store: RetentionStore,
    vault: Option<PeerChannel>,
    audit: Option<PeerChannel>,
    identity: Option<PeerChannel>,
    trust_domain: String,
    release_approvers: usize,
}

impl Retention {
    /// Over `store`, sending holds to and reading scopes from `vault`.
    pub fn new(
        store: RetentionStore,
        vault: Option<PeerChannel>,
        trust_domain: &str,
        release_approvers: usize,
    ) -> Self {
        Self {
            store,
            vault,
            audit: None,
            identity: None,
            trust_domain: trust_domain.to_owned(),
            release_approvers,
        }
    }

    /// The store.
    pub fn store(&self) -> &RetentionStore {
        &self.store
    }

    /// Approvals a hold's release needs.
    pub fn release_approvers(&self) -> usize {
        self.release_approvers
    }

    /// With the audit service, for the evidence of each shred.
    pub fn with_audit(mut self, audit: Option<PeerChannel>) -> Self {
        self.audit = audit;
        self
    }

    /// With the identity service, for the matters' practice areas,
    /// jurisdictions and closings.
    pub fn with_identity(mut self, identity: Option<PeerChannel>) -> Self {
        self.identity = identity;
        self
    }

    /// The identity service.
    pub fn identity_channel(&self) -> Option<PeerChannel> {
        self.identity.clone()
    }

    /// The audit service.
    pub fn audit_channel(&self) -> Option<PeerChannel> {
        self.audit.clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// An audit event by `actor`.
    pub fn actor_event(&self, actor: &Actor, action: AuditAction) -> EventBuilder {
        self.event(actor, action)
    }

    /// An audit event by the retention service itself (sweeps, syncs,
    /// orders it carries out).
    pub fn service_event(&self, action: AuditAction) -> EventBuilder {
        let me = crate::NAME.spiffe_id(&self.trust_domain);
        EventBuilder::new(crate::NAME, &self.trust_domain, action).actor(
            confidant_proto::audit::v1::ActorKind::Service,
            &me,
            &me,
        )
    }

    /// A client of the vault.
    pub fn vault_client(&self) -> Result<VaultServiceClient<PeerChannel>, Error> {
        self.vault()
    }

    /// One page of the vault's scopes.
    pub async fn scopes_page(
        &self,
        request: vault_pb::ListScopesRequest,
    ) -> Result<vault_pb::ListScopesResponse, Error> {
        Ok(self
            .vault()?
            .list_scopes(timed(request))
            .await
            .map_err(|s| Error::VaultUnavailable(s.message().to_owned()))?
            .into_inner())
    }

    fn event(&self, actor: &Actor, action: AuditAction) -> EventBuilder {
        actor.event(crate::NAME, &self.trust_domain, action)
    }

    /// Commits, reporting a unique-constraint hit as `Conflict(duplicate)`.
    pub(crate) async fn commit_unique(
        &self,
        statements: Vec<Statement>,
        events: &[AuditEvent],
        duplicate: &'static str,
    ) -> Result<(), Error> {
        match self.store.db().transact(statements, events).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_duplicate() => Err(Error::Conflict(duplicate)),
            Err(TransactError::Sqlx(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Audit(e.to_string())),
        }
    }

    async fn commit(&self, statements: Vec<Statement>, events: &[AuditEvent]) -> Result<(), Error> {
        match self.store.db().transact(statements, events).await {
            Ok(_) => Ok(()),
            Err(TransactError::Sqlx(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Audit(e.to_string())),
        }
    }

    fn vault(&self) -> Result<VaultServiceClient<PeerChannel>, Error> {
        self.vault
            .clone()
            .map(VaultServiceClient::new)
            .ok_or(Error::VaultUnavailable(
                "the vault is not configured".into(),
            ))
    }

    // ------------------------------------------------------------- policies

    /// Creates the policy of a category; returns it and how many scopes it
    /// gave a due date.
    pub async fn create_policy(
        &self,
        actor: &Actor,
        rules: &Rules,
    ) -> Result<(PolicyRow, usize), Error> {
        let id = Uuid::now_v7();
        let event = self
            .event(actor, AuditAction::RetentionPolicyCreated)
            .resource("policy", &id.to_string())
            .category(rules.category.as_str())
            .related(rules.related())
            .build();
        self.commit_unique(
            vec![
                store::insert_policy(id, 1, rules, actor.id(), Utc::now()),
                store::policies_changed(),
            ],
            &[event],
            "a policy for this category, practice area and jurisdiction exists already: update it instead",
        )
        .await?;
        let row = self
            .store
            .policy(id)
            .await?
            .ok_or(Error::NotFound("policy"))?;
        let n = self
            .recompute(&Scopes::Category(rules.category.as_str().to_owned()))
            .await?;
        Ok((row, n))
    }

    /// A new version of a policy, if `version` is still its live one.
    pub async fn update_policy(
        &self,
        actor: &Actor,
        id: Uuid,
        version: i32,
        rules: &Rules,
    ) -> Result<(PolicyRow, usize), Error> {
        let current = self
            .store
            .policy(id)
            .await?
            .ok_or(Error::NotFound("policy"))?;
        if current.category != rules.category.as_str() {
            let mut v = confidant_runtime::error::Violations::new();
            v.add(
                "rules.category",
                "cannot change: create a policy for the other category",
            );
            return Err(Error::Invalid(v));
        }
        if current.practice_area != rules.practice_area
            || current.jurisdiction != rules.jurisdiction
        {
            let mut v = confidant_runtime::error::Violations::new();
            v.add(
                "rules.practice_area",
                "cannot change, nor the jurisdiction: create a policy for the other matters",
            );
            return Err(Error::Invalid(v));
        }
        if current.version != version {
            return Err(Error::Conflict(
                "the policy changed since that version: read it again",
            ));
        }
        let next = version + 1;
        let event = self
            .event(actor, AuditAction::RetentionPolicyUpdated)
            .resource("policy", &id.to_string())
            .category(rules.category.as_str())
            .related(rules.related())
            .outcome(Outcome::Allowed, &format!("version-{next}"))
            .build();
        self.commit_unique(
            vec![
                store::insert_policy(id, next, rules, actor.id(), Utc::now()),
                store::policies_changed(),
            ],
            &[event],
            "the policy changed since that version: read it again",
        )
        .await?;
        let row = self
            .store
            .policy(id)
            .await?
            .ok_or(Error::NotFound("policy"))?;
        let n = self
            .recompute(&Scopes::Category(rules.category.as_str().to_owned()))
            .await?;
        Ok((row, n))
    }

    /// Records a trigger event; returns how many scopes were recomputed.
    pub async fn record_trigger(
        &self,
        actor: &Actor,
        client_id: Uuid,
        matter_id: Option<Uuid>,
        trigger: &Trigger,
        occurred_at: DateTime<Utc>,
    ) -> Result<usize, Error> {
        let recorded = store::RecordedTrigger::new(trigger.clone(), occurred_at);
        let event = self
            .event(actor, AuditAction::RetentionTriggerRecorded)
            .resource("trigger", trigger.kind())
            .scope(Some(client_id), matter_id)
            .related(recorded.related())
            .outcome(Outcome::Allowed, trigger.kind())
            .build();
        self.commit(
            vec![
                store::insert_trigger(&recorded, client_id, matter_id, actor.id(), Utc::now()),
                store::client_inputs_changed(client_id),
            ],
            &[event],
        )
        .await?;
        self.recompute(&Scopes::Client(client_id)).await
    }

    /// Computes the due dates of `which` again from the live policies, the
    /// matters and the clients' trigger events. Inputs that change while it
    /// runs (another request, another replica) make it read them again, so
    /// due dates from older inputs never replace those from newer ones.
    pub async fn recompute(&self, which: &Scopes) -> Result<usize, Error> {
        for attempt in 0..RECOMPUTE_ATTEMPTS {
            let plan = self.plan_recompute(which).await?;
            if let Applied::Written(n) = self.apply_recompute(plan).await? {
                return Ok(n);
            }
            tracing::debug!(
                attempt,
                "due-date inputs changed meanwhile; computing again"
            );
            let pause = 10u64 << attempt.min(6);
            tokio::time::sleep(std::time::Duration::from_millis(
                pause + rand::random_range(0..pause),
            ))
            .await;
        }
        Err(Error::Conflict(
            "the policies, trigger events or matters kept changing while due dates were computed: try again",
        ))
    }

    /// The due dates of `which` from the inputs as they are now. The
    /// inputs' generations are read first, so the plan is stale as soon as
    /// anything it read changes: the policies, or a trigger event or matter
    /// of a client whose scopes it dates.
    pub async fn plan_recompute(&self, which: &Scopes) -> Result<RecomputePlan, Error> {
        let generations = self
            .store
            .input_generations(match which {
                Scopes::Client(client) => Some(*client),
                _ => None,
            })
            .await?;
        let scopes = match which {
            Scopes::Category(category) => self.store.scopes(None, Some(category)).await?,
            Scopes::Client(client) => self.store.scopes(Some(*client), None).await?,
            Scopes::Ids(ids) => {
                let wanted: std::collections::HashSet<&Uuid> = ids.iter().collect();
                let mut rows = self.store.scopes(None, None).await?;
                rows.retain(|s| wanted.contains(&s.scope_id));
                rows
            }
        };
        let policies = LivePolicies::new(self.store.live_policies().await?);
        let mut triggers: HashMap<Uuid, Vec<store::TriggerRow>> = HashMap::new();
        let mut statements = Vec::with_capacity(scopes.len());
        for scope in &scopes {
            let known = match triggers.entry(scope.client_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.store.trigger_facts(scope.client_id).await?)
                }
            };
            let facts = store::facts_of(scope, known);
            let (due, policy) = match policies.for_scope(scope) {
                Some((row, rules)) => (due_at(rules, &facts), Some((row.id, row.version))),
                None => (None, None),
            };
            statements.push((scope.client_id, store::set_due(scope.scope_id, due, policy)));
        }
        Ok(RecomputePlan {
            read: generations,
            statements,
        })
    }

    /// Writes `plan`, a chunk per transaction, each only while the inputs
    /// it depends on (the policies and the chunk's clients) are unchanged:
    /// `Stale` once one changed (the chunks written before are rewritten by
    /// the next plan).
    pub async fn apply_recompute(&self, plan: RecomputePlan) -> Result<Applied, Error> {
        let n = plan.statements.len();
        let mut statements = plan.statements.into_iter().peekable();
        while statements.peek().is_some() {
            let writes: Vec<(Uuid, Statement)> = statements.by_ref().take(CHUNK).collect();
            // The policies' guard first, then the clients' in one order, so
            // that chunks of concurrent recomputes lock rows in one order.
            let inputs: std::collections::BTreeSet<Input> = std::iter::once(Input::Policies)
                .chain(writes.iter().map(|(client, _)| Input::Client(*client)))
                .collect();
            let mut chunk = Vec::with_capacity(inputs.len() + writes.len());
            for input in inputs {
                let generation = plan.read.get(&input).copied().unwrap_or(0);
                chunk.push(store::inputs_unchanged(input, generation));
            }
            chunk.extend(writes.into_iter().map(|(_, statement)| statement));
            match self.store.db().transact(chunk, &[]).await {
                Ok(_) => {}
                Err(TransactError::Unmet { .. }) => return Ok(Applied::Stale),
                // Two writers waiting on each other's rows: one of them is
                // stopped, and computes again like a stale plan.
                Err(TransactError::Sqlx(e)) if lock_conflict(&e) => return Ok(Applied::Stale),
                Err(TransactError::Sqlx(e)) => return Err(Error::Store(e)),
                Err(e) => return Err(Error::Audit(e.to_string())),
            }
        }
        Ok(Applied::Written(n))
    }

    // ---------------------------------------------------------- the registry

    /// Reads every scope from the vault into the registry and gives new ones
    /// a due date; sends holds the vault has not confirmed again. Returns
    /// (new scopes, known scopes).
    pub async fn sync(&self) -> Result<(usize, i64), Error> {
        let mut token = String::new();
        let mut added = Vec::new();
        let now = Utc::now();
        // Legal holds as the vault's live scopes show them: the holds they
        // show, and this service's active holds that one of them lacks.
        let active = self.store.live_holds().await?;
        let mut by_client: HashMap<Uuid, Vec<&HoldRow>> = HashMap::new();
        for hold in &active {
            by_client.entry(hold.client_id).or_default().push(hold);
        }
        let mut lacking: HashSet<Uuid> = active
            .iter()
            .filter(|h| h.in_vault == 0)
            .map(|h| h.id)
            .collect();
        let mut shown = HashSet::new();
        loop {
            let page = self
                .scopes_page(vault_pb::ListScopesRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await?;
            let mut statements = Vec::with_capacity(page.scopes.len());
            for scope in &page.scopes {
                let (Ok(id), Ok(client_id)) = (
                    Uuid::parse_str(&scope.id),
                    Uuid::parse_str(&scope.client_id),
                ) else {
                    continue;
                };
                let matter_id = Uuid::parse_str(&scope.matter_id).ok();
                let Some(category) = Category::from_proto(scope.category) else {
                    continue;
                };
                let state = match vault_pb::ScopeState::try_from(scope.state) {
                    Ok(vault_pb::ScopeState::Shredded) => "shredded",
                    Ok(vault_pb::ScopeState::PendingDestruction) => "pending_destruction",
                    _ => "active",
                };
                let created = scope
                    .create_time
                    .as_ref()
                    .and_then(|t| {
                        DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                    })
                    .unwrap_or(now);
                if !self.store.known(id).await? {
                    added.push((id, client_id));
                }
                if state != "shredded" {
                    let holds: Vec<Uuid> = scope
                        .hold_ids
                        .iter()
                        .filter_map(|h| Uuid::parse_str(h).ok())
                        .collect();
                    for hold in by_client.get(&client_id).into_iter().flatten() {
                        if hold.covers(id, client_id, matter_id, category.as_str())
                            && !holds.contains(&hold.id)
                        {
                            lacking.insert(hold.id);
                        }
                    }
                    shown.extend(holds);
                }
                statements.push(store::upsert_scope(
                    &ScopeRow {
                        scope_id: id,
                        client_id,
                        matter_id,
                        category: category.as_str().to_owned(),
                        created_at: created,
                        vault_state: state.to_owned(),
                        due_at: None,
                        original_count: scope.original_count,
                        practice_area: None,
                        jurisdiction: None,
                        matter_known: false,
                    },
                    now,
                ));
            }
            self.commit(statements, &[]).await?;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let changed_clients = match self.sync_matters().await {
            Ok(clients) => clients,
            Err(e) => {
                tracing::warn!(error = %e, "matters not refreshed from identity; retried on the next sync");
                Vec::new()
            }
        };
        let added_count = added.len();
        for client in changed_clients {
            added.retain(|(_, of)| *of != client);
            self.recompute(&Scopes::Client(client)).await?;
        }
        if !added.is_empty() {
            self.recompute(&Scopes::Ids(added.into_iter().map(|(id, _)| id).collect()))
                .await?;
        }
        self.reconcile_holds(&active, &lacking, &shown).await?;
        Ok((added_count, self.store.scope_count().await?))
    }

    /// Brings the vault's legal holds in line with this service's, which
    /// are the record: an active hold the vault `lacking` (not yet pushed,
    /// or lost with a restore of its database from before the hold) is
    /// placed there again; a hold the vault has `shown` that was released
    /// here is released there. Both calls are idempotent in the vault, and
    /// a hold that fails is retried on the next sync. A hold the vault
    /// shows and this service does not know is left in force.
    async fn reconcile_holds(
        &self,
        active: &[HoldRow],
        lacking: &HashSet<Uuid>,
        shown: &HashSet<Uuid>,
    ) -> Result<(), Error> {
        let report = |hold_id: Uuid, pushed: Result<(), Error>| {
            if let Err(e) = pushed {
                tracing::warn!(hold_id = %hold_id, error = %e, "hold not reconciled with the vault; retried on the next sync");
            }
        };
        for hold in active.iter().filter(|h| lacking.contains(&h.id)) {
            report(hold.id, self.push_hold(hold).await);
        }
        for &id in shown {
            if active.iter().any(|h| h.id == id) {
                continue;
            }
            // Normally none: only a hold released here after the vault's
            // backup is shown there and not active here.
            if self
                .store
                .hold(id)
                .await?
                .is_some_and(|h| h.released_at.is_some())
            {
                report(id, self.push_release(id).await);
            }
        }
        Ok(())
    }

    /// Asks identity about the matters of known scopes that are open or new
    /// here: their practice area and jurisdiction (which policy governs) and
    /// their closing. A closing identity could not report when it happened
    /// is recorded here as a matter-closed trigger, so no closing is lost.
    /// Returns the clients whose matters changed.
    async fn sync_matters(&self) -> Result<Vec<Uuid>, Error> {
        use confidant_proto::identity::v1::GetMattersRequest;
        use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
        let ids = self.store.matters_to_refresh().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self
            .identity
            .clone()
            .ok_or(Error::Conflict("identity is not configured"))?;
        let mut identity = IdentityServiceClient::new(channel);
        let me = crate::NAME.spiffe_id(&self.trust_domain);
        let now = Utc::now();
        let mut changed = Vec::new();
        for chunk in ids.chunks(1000) {
            let matters = identity
                .get_matters(timed(GetMattersRequest {
                    matter_ids: chunk.iter().map(Uuid::to_string).collect(),
                }))
                .await
                .map_err(Error::Identity)?
                .into_inner()
                .matters;
            for m in matters {
                let (Ok(matter_id), Ok(client_id)) =
                    (Uuid::parse_str(&m.matter_id), Uuid::parse_str(&m.client_id))
                else {
                    continue;
                };
                let row = MatterRow {
                    matter_id,
                    client_id,
                    practice_area: confidant_runtime::matter::practice_area_key(&m.practice_area),
                    jurisdiction: (!m.jurisdiction.is_empty()).then_some(m.jurisdiction),
                    closed_at: m.close_time.and_then(|t| {
                        DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                    }),
                };
                let before = self.store.matter(matter_id).await?;
                if before.as_ref() == Some(&row) {
                    continue;
                }
                let mut statements = vec![
                    store::upsert_matter(&row, now),
                    store::client_inputs_changed(client_id),
                ];
                let mut events = Vec::new();
                if let Some(closed) = row.closed_at {
                    let recorded = self.store.trigger_facts(client_id).await?.iter().any(
                        |(matter, kind, _, _)| {
                            *matter == Some(matter_id) && kind == "matter_closed"
                        },
                    );
                    if !recorded {
                        let closing = store::RecordedTrigger::new(Trigger::MatterClosed, closed);
                        statements.push(store::insert_trigger(
                            &closing,
                            client_id,
                            Some(matter_id),
                            &me,
                            now,
                        ));
                        events.push(
                            self.service_event(AuditAction::RetentionTriggerRecorded)
                                .resource("trigger", Trigger::MatterClosed.kind())
                                .scope(Some(client_id), Some(matter_id))
                                .related(closing.related())
                                .outcome(Outcome::Allowed, Trigger::MatterClosed.kind())
                                .build(),
                        );
                    }
                }
                self.commit(statements, &events).await?;
                if !changed.contains(&client_id) {
                    changed.push(client_id);
                }
            }
        }
        Ok(changed)
    }

    // ------------------------------------------------------ return to client

    /// Records that a listed scope's originals went back to the client. The
    /// vault releases them first (a repeat there is a no-op), then the entry
    /// is closed here; if this step fails, calling again finishes it, and
    /// until then the scope stays listed and unshredded.
    pub async fn record_return(
        &self,
        actor: &Actor,
        id: Uuid,
        reference: &str,
    ) -> Result<ReturnRow, Error> {
        let entry = self
            .store
            .return_entry(id)
            .await?
            .ok_or(Error::NotFound("return"))?;
        if entry.state == "returned" {
            return Ok(entry);
        }
        self.vault()?
            .release_originals(timed(vault_pb::ReleaseOriginalsRequest {
                scope_id: entry.scope_id.to_string(),
                return_id: id.to_string(),
            }))
            .await
            .map_err(|s| Error::VaultUnavailable(s.message().to_owned()))?;
        let event = self
            .event(actor, AuditAction::RetentionReturnRecorded)
            .resource("return", &id.to_string())
            .scope(Some(entry.client_id), entry.matter_id)
            .category(&entry.category)
            .build();
        let statements = vec![
            Statement::new(
                "UPDATE retention_returns SET state = 'returned', returned_at = $2, returned_by = $3, reference = $4 \
                 WHERE id = $1 AND state = 'listed'",
                vec![
                    Value::Uuid(id),
                    Value::Time(Utc::now()),
                    Value::Text(actor.id().to_owned()),
                    Value::Text(reference.to_owned()),
                ],
            )
            .expecting(1),
            Statement::new(
                "UPDATE retention_scopes SET original_count = 0 WHERE scope_id = $1",
                vec![Value::Uuid(entry.scope_id)],
            ),
        ];
        match self.store.db().transact(statements, &[event]).await {
            // Unmet: another request recorded it meanwhile.
            Ok(_) | Err(TransactError::Unmet { .. }) => {}
            Err(TransactError::Sqlx(e)) => return Err(Error::Store(e)),
            Err(e) => return Err(Error::Audit(e.to_string())),
        }
        Ok(self.store.return_entry(id).await?.unwrap_or(entry))
    }

    // ----------------------------------------------------------------- holds

    /// Records a hold and carries it to the vault. If the vault cannot be
    /// reached the hold stands here (the due report and future sweeps honour
    /// it) and is sent again on every sync.
    pub async fn place_hold(
        &self,
        actor: &Actor,
        reason: &str,
        client_id: Uuid,
        cover: HoldCover,
    ) -> Result<HoldRow, Error> {
        let (matter_id, category, scope_ids) = match cover {
            HoldCover::Filter(m, c) => (m, c, Vec::new()),
            HoldCover::Scopes(mut ids) => {
                ids.sort();
                ids.dedup();
                let mut v = confidant_runtime::error::Violations::new();
                for (i, id) in ids.iter().enumerate() {
                    let known = self.store.scope(*id).await?;
                    if known.is_none_or(|s| s.client_id != client_id) {
                        v.add(
                            format!("scope_ids[{i}]"),
                            "is not a scope of this client known to retention (sync first)",
                        );
                    }
                }
                if !v.is_empty() {
                    return Err(Error::Invalid(v));
                }
                (None, None, ids)
            }
        };
        let hold = HoldRow {
            id: Uuid::now_v7(),
            reason: reason.to_owned(),
            client_id,
            matter_id,
            category: category.map(|c| c.as_str().to_owned()),
            placed_by: actor.id().to_owned(),
            placed_at: Utc::now(),
            in_vault: 0,
            released_at: None,
            scoped: i32::from(!scope_ids.is_empty()),
            scope_ids,
        };
        let mut event = self
            .event(actor, AuditAction::RetentionHoldPlaced)
            .resource("hold", &hold.id.to_string())
            .scope(Some(client_id), matter_id);
        if let Some(c) = category {
            event = event.category(c.as_str());
        }
        if hold.scoped != 0 {
            event = event.outcome(Outcome::Allowed, "scoped").related(
                hold.scope_ids
                    .iter()
                    .map(|scope| ("scope", scope.to_string())),
            );
        }
        self.commit(store::insert_hold(&hold), &[event.build()])
            .await?;
        if let Err(e) = self.push_hold(&hold).await {
            tracing::warn!(hold_id = %hold.id, error = %e, "hold not yet in the vault; retried on sync");
        }
        Ok(self.store.hold(hold.id).await?.unwrap_or(hold))
    }

    /// Releases a hold in the vault (done when the vault never had it).
    async fn push_release(&self, hold_id: Uuid) -> Result<(), Error> {
        self.vault()?
            .release_hold(crate::service::timed(vault_pb::ReleaseHoldRequest {
                hold_id: hold_id.to_string(),
            }))
            .await
            .map(|_| ())
            .or_else(|s| {
                if s.code() == tonic::Code::NotFound {
                    Ok(())
                } else {
                    Err(Error::VaultUnavailable(s.message().to_owned()))
                }
            })
    }

    async fn push_hold(&self, hold: &HoldRow) -> Result<(), Error> {
        self.vault()?
            .place_hold(crate::service::timed(vault_pb::PlaceHoldRequest {
                hold_id: hold.id.to_string(),
                client_id: hold.client_id.to_string(),
                matter_id: hold.matter_id.map(|m| m.to_string()).unwrap_or_default(),
                category: hold
                    .category
                    .as_deref()
                    .and_then(Category::parse)
                    .map_or(0, |c| c.to_proto() as i32),
                scope_ids: hold.scope_ids.iter().map(Uuid::to_string).collect(),
            }))
            .await
            .map_err(|s| Error::VaultUnavailable(s.message().to_owned()))?;
        self.commit(vec![store::hold_in_vault(hold.id)], &[]).await
    }

    /// One approval of a hold's release; releases it (here and in the
    /// vault) once enough different staff members approved. Returns the
    /// hold and the approvals still needed.
    pub async fn approve_release(
        &self,
        actor: &Actor,
        hold_id: Uuid,
    ) -> Result<(HoldRow, usize), Error> {
        let hold = self
            .store
            .hold(hold_id)
            .await?
            .ok_or(Error::NotFound("hold"))?;
        if hold.released_at.is_some() {
            return Err(Error::Conflict("the hold is released already"));
        }
        let approvers = self.store.approvers(hold_id).await?;
        if !approvers.iter().any(|a| a == actor.id()) {
            let event = self
                .event(actor, AuditAction::RetentionHoldReleaseApproved)
                .resource("hold", &hold_id.to_string())
                .scope(Some(hold.client_id), hold.matter_id)
                .build();
            let now = Utc::now();
            let mut statements = vec![store::approve_release(hold_id, actor.id(), now)];
            // Others are told that it waits for them (once per hold).
            if approvers.len() + 1 < self.release_approvers {
                statements.push(crate::notices::hold_release_awaiting(
                    hold_id,
                    actor.id(),
                    now,
                ));
            }
            match self.store.db().transact(statements, &[event]).await {
                Ok(_) => {}
                // A concurrent call approved for the same person first.
                Err(e) if e.is_duplicate() => {}
                Err(TransactError::Sqlx(e)) => return Err(Error::Store(e)),
                Err(e) => return Err(Error::Audit(e.to_string())),
            }
        } else if approvers.len() < self.release_approvers {
            return Err(Error::Conflict(
                "you approved this release already: another person must approve it",
            ));
        }
        let approvers = self.store.approvers(hold_id).await?;
        let needed = self.release_approvers.saturating_sub(approvers.len());
        if needed > 0 {
            return Ok((hold, needed));
        }
        // Enough approvals. Released in the vault first: if that fails the
        // hold stays in force everywhere, and approving again retries.
        self.push_release(hold_id).await?;
        let event = self
            .event(actor, AuditAction::RetentionHoldReleased)
            .resource("hold", &hold_id.to_string())
            .scope(Some(hold.client_id), hold.matter_id)
            .build();
        self.commit(vec![store::release(hold_id, Utc::now())], &[event])
            .await?;
        let hold = self
            .store
            .hold(hold_id)
            .await?
            .ok_or(Error::NotFound("hold"))?;
        Ok((hold, 0))
    }

    // ----------------------------------------------------------- the report

    /// Live scopes falling due before `before`, grouped by category, client
    /// and matter, with whether a hold covers them and the policy's action.
    pub async fn due_report(&self, before: DateTime<Utc>) -> Result<Vec<DueGroup>, Error> {
        let due = self.store.due_before(before).await?;
        let holds = self.store.live_holds().await?;
        let policies = LivePolicies::new(self.store.live_policies().await?);
        let mut groups: Vec<DueGroup> = Vec::new();
        for scope in due {
            let key = (scope.category.clone(), scope.client_id, scope.matter_id);
            let held = holds.iter().any(|h| {
                h.covers(
                    scope.scope_id,
                    scope.client_id,
                    scope.matter_id,
                    &scope.category,
                )
            });
            match groups
                .iter_mut()
                .find(|g| (g.category.clone(), g.client_id, g.matter_id) == key)
            {
                Some(g) => {
                    g.scopes += 1;
                    g.held |= held;
                }
                None => groups.push(DueGroup {
                    category: scope.category.clone(),
                    client_id: scope.client_id,
                    matter_id: scope.matter_id,
                    scopes: 1,
                    first_due: scope.due_at.unwrap_or(before),
                    held,
                    action: policies.for_scope(&scope).map(|(_, r)| r.action),
                }),
            }
        }
        Ok(groups)
    }
}

/// One line of the due report.
#[derive(Debug, Clone)]
pub struct DueGroup {
    /// Category name.
    pub category: String,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Scopes falling due.
    pub scopes: i64,
    /// The earliest due time.
    pub first_due: DateTime<Utc>,
    /// Whether a hold covers them.
    pub held: bool,
    /// The action at the end.
    pub action: Option<crate::domain::Action>,
}
