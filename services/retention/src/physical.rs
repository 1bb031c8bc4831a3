//! Physical records: storage locations and their controls, the register of
//! files, boxes and original documents, and their custody, under the same
//! authorization decision as digital data. Every change commits with its
//! audit event.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use confidant_proto::audit::v1::Outcome;
use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::physical_records_service_server::PhysicalRecordsService;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::auth::Actor;
use confidant_runtime::decide::Decider;
use confidant_runtime::error::Violations;
use confidant_runtime::page::{self, Key, Part};
use confidant_runtime::portable::{Statement, TransactError, Value};
use confidant_runtime::storage::Database;
use confidant_vault::domain::{Category, optional_uuid, required_uuid};
use serde_json::json;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::disposal::Signer;
use crate::domain::due_at;
use crate::error::Error;
use crate::store::{self, LivePolicies, RetentionStore, ScopeRow, StoredCertificate};

/// Longest free text (site, room, container, reasons).
const MAX_TEXT: usize = 200;
/// Longest a check-out may last.
const MAX_CHECKOUT_DAYS: i64 = 90;

/// A SELECT of every item column, then `$rest` (a WHERE clause).
macro_rules! item_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, label, kind, client_id, matter_id, category, original, location_id, box_id, state, holder_staff_id, due_back_at, registered_at FROM physical_items ",
            $rest
        )
    };
}

/// A storage location as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LocationRow {
    /// Id.
    pub id: Uuid,
    /// Site.
    pub site: String,
    /// Room.
    pub room: String,
    /// Cabinet, shelf or bay.
    pub container: String,
    /// 1 when entries are controlled.
    pub controlled: i32,
    /// Code change interval (0: no code).
    pub code_change_days: i32,
    /// Last code change.
    pub code_changed_at: Option<DateTime<Utc>>,
    /// 1 for off-site storage.
    pub off_site: i32,
    /// When added.
    pub created_at: DateTime<Utc>,
}

impl LocationRow {
    /// When the next code change is due, if the location has a code.
    pub fn code_change_due(&self) -> Option<DateTime<Utc>> {
        (self.code_change_days > 0).then(|| {
            self.code_changed_at.unwrap_or(self.created_at)
                + Duration::days(i64::from(self.code_change_days))
        })
    }
}

/// A physical item as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    /// Id.
    pub id: Uuid,
    /// Label or barcode.
    pub label: String,
    /// file, box or original_document.
    pub kind: String,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category name.
    pub category: String,
    /// 1 for an original belonging to the client.
    pub original: i32,
    /// Location.
    pub location_id: Uuid,
    /// The box it is in.
    pub box_id: Option<Uuid>,
    /// in, checked_out, returned or destroyed.
    pub state: String,
    /// Who holds it.
    pub holder_staff_id: Option<String>,
    /// When it must be back.
    pub due_back_at: Option<DateTime<Utc>>,
    /// When registered.
    pub registered_at: DateTime<Utc>,
}

/// One custody log entry as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustodyRow {
    /// What happened.
    pub action: String,
    /// When.
    pub at: DateTime<Utc>,
    /// By whom.
    pub staff_id: String,
    /// Where it went.
    pub location_id: Option<Uuid>,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct AccessRow {
    staff_id: String,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn check(v: Violations) -> Result<(), Error> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v))
    }
}

fn text(v: &mut Violations, field: &str, value: &str, required: bool) -> String {
    let t = value.trim();
    if (required && t.is_empty()) || t.chars().count() > MAX_TEXT || t.chars().any(char::is_control)
    {
        v.add(
            field,
            format!(
                "{} to {MAX_TEXT} printable characters",
                if required { 1 } else { 0 }
            ),
        );
    }
    t.to_owned()
}

fn kind_name(kind: i32) -> Option<&'static str> {
    match pb::ItemKind::try_from(kind).ok()? {
        pb::ItemKind::File => Some("file"),
        pb::ItemKind::Box => Some("box"),
        pb::ItemKind::OriginalDocument => Some("original_document"),
        pb::ItemKind::Unspecified => None,
    }
}

fn item_proto(row: &ItemRow, now: DateTime<Utc>) -> pb::Item {
    let kind = match row.kind.as_str() {
        "box" => pb::ItemKind::Box,
        "original_document" => pb::ItemKind::OriginalDocument,
        _ => pb::ItemKind::File,
    };
    let state = match row.state.as_str() {
        "checked_out" => pb::ItemState::CheckedOut,
        "returned" => pb::ItemState::Returned,
        "destroyed" => pb::ItemState::Destroyed,
        _ => pb::ItemState::In,
    };
    pb::Item {
        id: row.id.to_string(),
        label: row.label.clone(),
        kind: kind as i32,
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        category: Category::parse(&row.category).map_or(
            confidant_proto::vault::v1::DataCategory::Unspecified,
            Category::to_proto,
        ) as i32,
        original: row.original != 0,
        location_id: row.location_id.to_string(),
        box_id: row.box_id.map(|b| b.to_string()).unwrap_or_default(),
        state: state as i32,
        holder_staff_id: row.holder_staff_id.clone().unwrap_or_default(),
        due_back_time: row.due_back_at.map(ts),
        overdue: row.state == "checked_out" && row.due_back_at.is_some_and(|d| d < now),
        register_time: Some(ts(row.registered_at)),
    }
}

/// The physical records register on the retention database.
#[derive(Debug, Clone)]
pub struct PhysicalStore {
    db: Database,
}

impl PhysicalStore {
    /// Over `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    async fn location(&self, id: Uuid) -> Result<Option<LocationRow>, sqlx::Error> {
        self.db
            .fetch_optional(
                "SELECT id, site, room, container, controlled, code_change_days, code_changed_at, off_site, created_at FROM physical_locations WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await
    }

    async fn locations(&self) -> Result<Vec<LocationRow>, sqlx::Error> {
        self.db
            .fetch_all(
                "SELECT id, site, room, container, controlled, code_change_days, code_changed_at, off_site, created_at FROM physical_locations ORDER BY site, room, container",
                vec![],
            )
            .await
    }

    async fn access(&self, location: Uuid) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<AccessRow> = self
            .db
            .fetch_all(
                "SELECT staff_id FROM physical_location_access WHERE location_id = $1 ORDER BY staff_id",
                vec![Value::Uuid(location)],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.staff_id).collect())
    }

    async fn item(&self, id: Uuid) -> Result<Option<ItemRow>, sqlx::Error> {
        self.db
            .fetch_optional(item_select!("WHERE id = $1"), vec![Value::Uuid(id)])
            .await
    }

    async fn custody(&self, item: Uuid) -> Result<Vec<CustodyRow>, sqlx::Error> {
        self.db
            .fetch_all(
                "SELECT action, at, staff_id, location_id, reason FROM physical_custody WHERE item_id = $1 ORDER BY at, id",
                vec![Value::Uuid(item)],
            )
            .await
    }
}

fn custody(
    item: Uuid,
    action: &str,
    at: DateTime<Utc>,
    staff: &str,
    location: Option<Uuid>,
    reason: &str,
) -> Statement {
    Statement::new(
        "INSERT INTO physical_custody (id, item_id, action, at, staff_id, location_id, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            Value::Uuid(Uuid::now_v7()),
            Value::Uuid(item),
            Value::Text(action.to_owned()),
            Value::Time(at),
            Value::Text(staff.to_owned()),
            Value::OptUuid(location),
            Value::Text(reason.to_owned()),
        ],
    )
}

/// Handlers of `confidant.retention.v1.PhysicalRecordsService`.
#[derive(Debug, Clone)]
pub struct PhysicalApi {
    store: PhysicalStore,
    retention: RetentionStore,
    decider: Arc<Decider>,
    signer: Arc<Signer>,
    trust_domain: String,
}

/// An item with what the retention schedule says of it.
struct Planned {
    item: ItemRow,
    due: DateTime<Utc>,
    policy: (Uuid, i32),
    held: bool,
}

impl PhysicalApi {
    /// Handlers over `store` and retention's policies, holds and triggers,
    /// asking `decider`; certificates signed by `signer`.
    pub fn new(
        store: PhysicalStore,
        retention: RetentionStore,
        decider: Arc<Decider>,
        signer: Arc<Signer>,
        trust_domain: &str,
    ) -> Self {
        Self {
            store,
            retention,
            decider,
            signer,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The items still held by the firm with a due date under the live
    /// policies (as for a vault scope of the same client, matter and
    /// category, its registration standing for the scope's creation), and
    /// whether a legal hold covers them. Items whose matter retention does
    /// not know yet, or whose trigger has not happened, have no due date.
    async fn plan(&self, items: Vec<ItemRow>) -> Result<Vec<Planned>, Error> {
        let policies = LivePolicies::new(self.retention.live_policies().await?);
        let holds = self.retention.live_holds().await?;
        let mut held_scopes = std::collections::HashMap::new();
        for hold in holds.iter().filter(|h| h.scoped != 0) {
            for id in &hold.scope_ids {
                if let Some(scope) = self.retention.scope(*id).await? {
                    held_scopes.insert(*id, (scope.client_id, scope.matter_id, scope.category));
                }
            }
        }
        let mut triggers = std::collections::HashMap::new();
        let mut planned = Vec::new();
        for item in items {
            let matter = match item.matter_id {
                Some(m) => match self.retention.matter(m).await? {
                    Some(row) => Some(row),
                    None => continue,
                },
                None => None,
            };
            let scope = ScopeRow {
                scope_id: item.id,
                client_id: item.client_id,
                matter_id: item.matter_id,
                category: item.category.clone(),
                created_at: item.registered_at,
                vault_state: "active".into(),
                due_at: None,
                original_count: 0,
                practice_area: matter.as_ref().map(|m| m.practice_area.clone()),
                jurisdiction: matter.as_ref().and_then(|m| m.jurisdiction.clone()),
                matter_known: true,
            };
            let known = match triggers.entry(item.client_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.retention.trigger_facts(item.client_id).await?)
                }
            };
            let Some((policy, rules)) = policies.for_scope(&scope) else {
                continue;
            };
            let Some(due) = due_at(rules, &store::facts_of(&scope, known)) else {
                continue;
            };
            let held = holds.iter().any(|h| {
                if h.scoped != 0 {
                    h.released_at.is_none()
                        && h.scope_ids.iter().any(|id| {
                            held_scopes.get(id)
                                == Some(&(item.client_id, item.matter_id, item.category.clone()))
                        })
                } else {
                    h.covers(Uuid::nil(), item.client_id, item.matter_id, &item.category)
                }
            });
            planned.push(Planned {
                item,
                due,
                policy: (policy.id, policy.version),
                held,
            });
        }
        planned.sort_by_key(|p| p.due);
        Ok(planned)
    }

    async fn items_in_firm(&self) -> Result<Vec<ItemRow>, Error> {
        Ok(self
            .store
            .db
            .fetch_all(item_select!("WHERE state IN ('in', 'checked_out')"), vec![])
            .await?)
    }

    fn staff<T>(request: &Request<T>) -> Result<(Actor, String), Error> {
        let actor = Actor::of(request).ok_or(Error::Unauthenticated)?;
        match &actor {
            Actor::Staff { staff_id, .. } => {
                let id = staff_id.clone();
                Ok((actor, id))
            }
            Actor::Service { .. } => Err(Error::Unauthenticated),
        }
    }

    async fn staff_with<T>(
        &self,
        request: &Request<T>,
        permission: &str,
        client: Option<Uuid>,
        matter: Option<Uuid>,
    ) -> Result<(Actor, String), Error> {
        let (actor, id) = Self::staff(request)?;
        self.decider.decide(&id, permission, client, matter).await?;
        Ok((actor, id))
    }

    fn event(&self, actor: &Actor, action: Action) -> EventBuilder {
        actor.event(ServiceName::Retention, &self.trust_domain, action)
    }

    async fn location_proto(
        &self,
        row: &LocationRow,
        now: DateTime<Utc>,
    ) -> Result<pb::Location, Error> {
        let due = row.code_change_due();
        Ok(pb::Location {
            id: row.id.to_string(),
            site: row.site.clone(),
            room: row.room.clone(),
            container: row.container.clone(),
            controlled: row.controlled != 0,
            code_change_days: row.code_change_days,
            code_changed_time: row.code_changed_at.map(ts),
            code_change_due_time: due.map(ts),
            code_change_overdue: due.is_some_and(|d| d < now),
            off_site: row.off_site != 0,
            staff_with_access: self.store.access(row.id).await?,
        })
    }

    async fn known_location(
        &self,
        v: &mut Violations,
        field: &str,
        id: Option<Uuid>,
    ) -> Result<Option<LocationRow>, Error> {
        let Some(id) = id else { return Ok(None) };
        let row = self.store.location(id).await?;
        if row.is_none() {
            v.add(field, "no such location");
        }
        Ok(row)
    }

    async fn item_or_invalid(&self, raw: &str) -> Result<ItemRow, Error> {
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "item_id", raw);
        check(v)?;
        let Some(id) = id else {
            return Err(Error::NotFound("item"));
        };
        self.store.item(id).await?.ok_or(Error::NotFound("item"))
    }

    /// One move of an item: its guarded update, its custody log entry and
    /// its audit event, committed together; `conflict` when the guard did
    /// not hold (the item changed meanwhile). Returns the item now.
    #[allow(clippy::too_many_arguments)]
    async fn move_item(
        &self,
        actor: &Actor,
        item: &ItemRow,
        action: Action,
        update: Statement,
        (log, at): (Statement, DateTime<Utc>),
        (outcome, reason, related): (Outcome, &str, Vec<(&'static str, String)>),
        conflict: &'static str,
    ) -> Result<pb::Item, Error> {
        // At the custody log's time, which a restore matches it by.
        let event = self
            .event(actor, action)
            .at(at)
            .resource("item", &item.id.to_string())
            .scope(Some(item.client_id), item.matter_id)
            .category(&item.category)
            .related(related)
            .outcome(outcome, reason)
            .build();
        self.store
            .db
            .transact(vec![update.expecting(1), log], &[event])
            .await
            .map_err(|e| unmet(e, conflict))?;
        self.reload(item.id).await
    }

    async fn reload(&self, id: Uuid) -> Result<pb::Item, Error> {
        let row = self.store.item(id).await?.ok_or(Error::NotFound("item"))?;
        Ok(item_proto(&row, Utc::now()))
    }
}

fn unmet(e: TransactError, message: &'static str) -> Error {
    match e {
        TransactError::Unmet { .. } => Error::Conflict(message),
        TransactError::Sqlx(e) => Error::Store(e),
        other => Error::Audit(other.to_string()),
    }
}

#[tonic::async_trait]
impl PhysicalRecordsService for PhysicalApi {
    #[tracing::instrument(name = "physical.create_location", skip_all)]
    async fn create_location(
        &self,
        request: Request<pb::CreateLocationRequest>,
    ) -> Result<Response<pb::CreateLocationResponse>, Status> {
        let (actor, staff) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let site = text(&mut v, "site", &req.site, true);
        let room = text(&mut v, "room", &req.room, false);
        let container = text(&mut v, "container", &req.container, false);
        if !(0..=3650).contains(&req.code_change_days) {
            v.add("code_change_days", "0 to 3650");
        }
        check(v)?;
        let now = Utc::now();
        let row = LocationRow {
            id: Uuid::now_v7(),
            site,
            room,
            container,
            controlled: i32::from(req.controlled),
            code_change_days: req.code_change_days,
            code_changed_at: (req.code_change_days > 0).then_some(now),
            off_site: i32::from(req.off_site),
            created_at: now,
        };
        let event = self
            .event(&actor, Action::RetentionLocationCreated)
            .resource("location", &row.id.to_string())
            .outcome(Outcome::Allowed, "")
            .build();
        let result = self
            .store
            .db
            .transact(
                vec![Statement::new(
                    "INSERT INTO physical_locations (id, site, room, container, controlled, code_change_days, code_changed_at, off_site, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    vec![
                        Value::Uuid(row.id),
                        Value::Text(row.site.clone()),
                        Value::Text(row.room.clone()),
                        Value::Text(row.container.clone()),
                        Value::Int(row.controlled),
                        Value::Int(row.code_change_days),
                        Value::OptTime(row.code_changed_at),
                        Value::Int(row.off_site),
                        Value::Time(now),
                        Value::Text(staff),
                    ],
                )],
                &[event],
            )
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.is_duplicate() => {
                let mut v = Violations::new();
                v.add("container", "this site, room and container exist already");
                return Err(Error::Invalid(v).into());
            }
            Err(e) => return Err(unmet(e, "not created").into()),
        }
        Ok(Response::new(pb::CreateLocationResponse {
            location: Some(self.location_proto(&row, now).await?),
        }))
    }

    async fn list_locations(
        &self,
        request: Request<pb::ListLocationsRequest>,
    ) -> Result<Response<pb::ListLocationsResponse>, Status> {
        self.staff_with(&request, "retention.manage", None, None)
            .await?;
        let now = Utc::now();
        let mut locations = Vec::new();
        for row in self.store.locations().await.map_err(Error::from)? {
            locations.push(self.location_proto(&row, now).await?);
        }
        locations.sort_by_key(|l| !l.code_change_overdue);
        Ok(Response::new(pb::ListLocationsResponse { locations }))
    }

    #[tracing::instrument(name = "physical.record_code_change", skip_all)]
    async fn record_code_change(
        &self,
        request: Request<pb::RecordCodeChangeRequest>,
    ) -> Result<Response<pb::RecordCodeChangeResponse>, Status> {
        let (actor, _) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "location_id", &request.get_ref().location_id);
        let location = self.known_location(&mut v, "location_id", id).await?;
        check(v)?;
        let Some(location) = location else {
            return Err(Error::NotFound("location").into());
        };
        if location.code_change_days == 0 {
            return Err(Error::Conflict("this location has no access code").into());
        }
        let now = Utc::now();
        let event = self
            .event(&actor, Action::RetentionLocationCodeChanged)
            .resource("location", &location.id.to_string())
            .outcome(Outcome::Allowed, "")
            .build();
        self.store
            .db
            .transact(
                vec![Statement::new(
                    "UPDATE physical_locations SET code_changed_at = $1 WHERE id = $2",
                    vec![Value::Time(now), Value::Uuid(location.id)],
                )],
                &[event],
            )
            .await
            .map_err(|e| unmet(e, "not changed"))?;
        let row = self
            .store
            .location(location.id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("location"))?;
        Ok(Response::new(pb::RecordCodeChangeResponse {
            location: Some(self.location_proto(&row, now).await?),
        }))
    }

    #[tracing::instrument(name = "physical.set_location_access", skip_all)]
    async fn set_location_access(
        &self,
        request: Request<pb::SetLocationAccessRequest>,
    ) -> Result<Response<pb::SetLocationAccessResponse>, Status> {
        let (actor, granted_by) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "location_id", &req.location_id);
        let staff = required_uuid(&mut v, "staff_id", &req.staff_id);
        let location = self.known_location(&mut v, "location_id", id).await?;
        check(v)?;
        let (Some(location), Some(staff)) = (location, staff) else {
            return Err(Error::NotFound("location").into());
        };
        if location.controlled == 0 {
            return Err(Error::Conflict("entries to this location are not controlled").into());
        }
        let now = Utc::now();
        let event = self
            .event(&actor, Action::RetentionLocationAccessChanged)
            .resource("location", &location.id.to_string())
            .outcome(
                Outcome::Allowed,
                if req.allowed { "granted" } else { "revoked" },
            )
            .build();
        let statement = if req.allowed {
            Statement::new(
                "INSERT INTO physical_location_access (location_id, staff_id, granted_at, granted_by) VALUES ($1, $2, $3, $4) ON CONFLICT (location_id, staff_id) DO NOTHING",
                vec![
                    Value::Uuid(location.id),
                    Value::Text(staff.to_string()),
                    Value::Time(now),
                    Value::Text(granted_by),
                ],
            )
        } else {
            Statement::new(
                "DELETE FROM physical_location_access WHERE location_id = $1 AND staff_id = $2",
                vec![Value::Uuid(location.id), Value::Text(staff.to_string())],
            )
        };
        self.store
            .db
            .transact(vec![statement], &[event])
            .await
            .map_err(|e| unmet(e, "not changed"))?;
        Ok(Response::new(pb::SetLocationAccessResponse {
            location: Some(self.location_proto(&location, now).await?),
        }))
    }

    #[tracing::instrument(name = "physical.record_entry", skip_all)]
    async fn record_entry(
        &self,
        request: Request<pb::RecordEntryRequest>,
    ) -> Result<Response<pb::RecordEntryResponse>, Status> {
        let (actor, caller) = Self::staff(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "location_id", &req.location_id);
        let who =
            optional_uuid(&mut v, "staff_id", &req.staff_id).map_or(caller, |s| s.to_string());
        let location = self.known_location(&mut v, "location_id", id).await?;
        check(v)?;
        let Some(location) = location else {
            return Err(Error::NotFound("location").into());
        };
        if location.controlled == 0 {
            return Err(Error::Conflict("entries to this location are not controlled").into());
        }
        let allowed = self
            .store
            .access(location.id)
            .await
            .map_err(Error::from)?
            .contains(&who);
        let now = Utc::now();
        let event = self
            .event(&actor, Action::RetentionLocationEntered)
            .resource("location", &location.id.to_string())
            .outcome(
                if allowed {
                    Outcome::Allowed
                } else {
                    Outcome::Denied
                },
                if allowed { "" } else { "no_access" },
            )
            .build();
        self.store
            .db
            .transact(
                vec![Statement::new(
                    "INSERT INTO physical_entries (id, location_id, staff_id, at, allowed) VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        Value::Uuid(Uuid::now_v7()),
                        Value::Uuid(location.id),
                        Value::Text(who),
                        Value::Time(now),
                        Value::Int(i32::from(allowed)),
                    ],
                )],
                &[event],
            )
            .await
            .map_err(|e| unmet(e, "not recorded"))?;
        if !allowed {
            return Err(Error::Denied {
                reason: "no_location_access".into(),
                message: "this staff member may not enter the location".into(),
            }
            .into());
        }
        Ok(Response::new(pb::RecordEntryResponse {
            entry_time: Some(ts(now)),
        }))
    }

    #[tracing::instrument(name = "physical.register_item", skip_all)]
    async fn register_item(
        &self,
        request: Request<pb::RegisterItemRequest>,
    ) -> Result<Response<pb::RegisterItemResponse>, Status> {
        Self::staff(&request)?;
        let req = request.get_ref().clone();
        let mut v = Violations::new();
        let label = req.label.trim().to_owned();
        if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
            v.add("label", "1 to 100 printable characters");
        }
        let kind = kind_name(req.kind);
        if kind.is_none() {
            v.add("kind", "must be set to a known item kind");
        }
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let category = Category::from_proto(req.category);
        if category.is_none() {
            v.add("category", "must be set to a data category");
        }
        let location_id = required_uuid(&mut v, "location_id", &req.location_id);
        let location = self
            .known_location(&mut v, "location_id", location_id)
            .await?;
        let box_id = optional_uuid(&mut v, "box_id", &req.box_id);
        if let Some(b) = box_id {
            match self.store.item(b).await.map_err(Error::from)? {
                Some(bx) if bx.kind == "box" && Some(bx.client_id) == client => {}
                _ => v.add("box_id", "must be a box of the same client"),
            }
        }
        check(v)?;
        let (Some(kind), Some(client), Some(category), Some(location)) =
            (kind, client, category, location)
        else {
            return Err(Status::internal("validated request incomplete"));
        };
        let (actor, staff) = self
            .staff_with(&request, "client_data.write", Some(client), matter)
            .await?;
        let original = req.original || kind == "original_document";
        let now = Utc::now();
        let id = Uuid::now_v7();
        let event = self
            .event(&actor, Action::RetentionItemRegistered)
            .resource("item", &id.to_string())
            .scope(Some(client), matter)
            .category(category.as_str())
            .outcome(Outcome::Allowed, "")
            .build();
        let result = self
            .store
            .db
            .transact(
                vec![
                    Statement::new(
                        "INSERT INTO physical_items (id, label, kind, client_id, matter_id, category, original, location_id, box_id, state, registered_at, registered_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'in', $10, $11)",
                        vec![
                            Value::Uuid(id),
                            Value::Text(label),
                            Value::Text(kind.to_owned()),
                            Value::Uuid(client),
                            Value::OptUuid(matter),
                            Value::Text(category.as_str().to_owned()),
                            Value::Int(i32::from(original)),
                            Value::Uuid(location.id),
                            Value::OptUuid(box_id),
                            Value::Time(now),
                            Value::Text(staff.clone()),
                        ],
                    ),
                    custody(id, "registered", now, &staff, Some(location.id), ""),
                ],
                &[event],
            )
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.is_duplicate() => {
                let mut v = Violations::new();
                v.add("label", "another item has this label");
                return Err(Error::Invalid(v).into());
            }
            Err(e) => return Err(unmet(e, "not registered").into()),
        }
        Ok(Response::new(pb::RegisterItemResponse {
            item: Some(self.reload(id).await?),
        }))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        Self::staff(&request)?;
        let req = request.get_ref().clone();
        let mut v = Violations::new();
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let location = optional_uuid(&mut v, "location_id", &req.location_id);
        if client.is_none() && location.is_none() && v.is_empty() {
            v.add("client_id", "name a client (and matter) or a location");
        }
        if matter.is_some() && client.is_none() {
            v.add("client_id", "is required with a matter");
        }
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 1000),
            &[Part::Text, Part::Uuid],
        );
        let after = after.values();
        let known = self.known_location(&mut v, "location_id", location).await?;
        check(v)?;
        let rows: Vec<ItemRow> = if let Some(client) = client {
            self.staff_with(&request, "client_data.read", Some(client), matter)
                .await?;
            let mut values = vec![Value::Uuid(client), Value::OptUuid(matter)];
            values.extend(after);
            values.push(Value::BigInt(limit + 1));
            self.store
                .db
                .fetch_all(
                    item_select!(
                        "WHERE client_id = $1 AND ($2 IS NULL OR matter_id = $2) \
                         AND ($3 IS NULL OR (label, id) > ($3, $4)) ORDER BY label, id LIMIT $5"
                    ),
                    values,
                )
                .await
                .map_err(Error::from)?
        } else {
            self.staff_with(&request, "retention.manage", None, None)
                .await?;
            let Some(location) = known else {
                return Err(Error::NotFound("location").into());
            };
            let mut values = vec![Value::Uuid(location.id)];
            values.extend(after);
            values.push(Value::BigInt(limit + 1));
            self.store
                .db
                .fetch_all(
                    item_select!(
                        "WHERE location_id = $1 AND ($2 IS NULL OR (label, id) > ($2, $3)) \
                         ORDER BY label, id LIMIT $4"
                    ),
                    values,
                )
                .await
                .map_err(Error::from)?
        };
        let (rows, next_page_token) = page::split(rows, limit, |r| {
            page::token(&[Key::Text(&r.label), Key::Uuid(r.id)])
        });
        let now = Utc::now();
        Ok(Response::new(pb::ListItemsResponse {
            items: rows.iter().map(|r| item_proto(r, now)).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "physical.check_out_item", skip_all)]
    async fn check_out_item(
        &self,
        request: Request<pb::CheckOutItemRequest>,
    ) -> Result<Response<pb::CheckOutItemResponse>, Status> {
        let (actor, staff) = Self::staff(&request)?;
        let item = self.item_or_invalid(&request.get_ref().item_id).await?;
        let req = request.get_ref().clone();
        let now = Utc::now();
        let mut v = Violations::new();
        let due = req
            .due_back_time
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0));
        match due {
            Some(d) if d > now && d <= now + Duration::days(MAX_CHECKOUT_DAYS) => {}
            _ => v.add(
                "due_back_time",
                format!("in the future, at most {MAX_CHECKOUT_DAYS} days ahead"),
            ),
        }
        let reason = text(&mut v, "reason", &req.reason, false);
        check(v)?;
        let Some(due) = due else {
            return Err(Status::internal("validated request incomplete"));
        };
        // The same decision as a digital read of the matter; a refusal is
        // itself a custody event worth recording.
        if let Err(refusal) = self
            .decider
            .decide(
                &staff,
                "client_data.read",
                Some(item.client_id),
                item.matter_id,
            )
            .await
        {
            let error = Error::from(refusal);
            if let Error::Denied { reason, .. } = &error {
                let event = self
                    .event(&actor, Action::RetentionItemCheckedOut)
                    .resource("item", &item.id.to_string())
                    .scope(Some(item.client_id), item.matter_id)
                    .outcome(Outcome::Denied, reason)
                    .build();
                if let Err(e) = self.store.db.transact(vec![], &[event]).await {
                    tracing::warn!(error = %e, "refused check-out not recorded");
                }
            }
            return Err(error.into());
        }
        if item.state != "in" {
            return Err(Error::Conflict(if item.state == "checked_out" {
                "the item is already checked out"
            } else {
                "the item is no longer held by the firm"
            })
            .into());
        }
        let moved = self
            .move_item(
                &actor,
                &item,
                Action::RetentionItemCheckedOut,
                Statement::new(
                        "UPDATE physical_items SET state = 'checked_out', holder_staff_id = $1, due_back_at = $2 WHERE id = $3 AND state = 'in'",
                        vec![Value::Text(staff.clone()), Value::Time(due), Value::Uuid(item.id)],
                    ),
                (
                    custody(item.id, "checked_out", now, &staff, None, &reason),
                    now,
                ),
                (
                    Outcome::Allowed,
                    "",
                    vec![(
                        "due_back_at",
                        due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    )],
                ),
                "the item is already checked out",
            )
            .await?;
        Ok(Response::new(pb::CheckOutItemResponse {
            item: Some(moved),
        }))
    }

    #[tracing::instrument(name = "physical.check_in_item", skip_all)]
    async fn check_in_item(
        &self,
        request: Request<pb::CheckInItemRequest>,
    ) -> Result<Response<pb::CheckInItemResponse>, Status> {
        let (actor, staff) = Self::staff(&request)?;
        let item = self.item_or_invalid(&request.get_ref().item_id).await?;
        let mut v = Violations::new();
        let to = optional_uuid(&mut v, "location_id", &request.get_ref().location_id);
        let known = self.known_location(&mut v, "location_id", to).await?;
        check(v)?;
        // The holder puts it back, or a records manager does.
        if item.holder_staff_id.as_deref() != Some(staff.as_str()) {
            self.staff_with(&request, "retention.manage", None, None)
                .await?;
        }
        if item.state != "checked_out" {
            return Err(Error::Conflict("the item is not checked out").into());
        }
        let location = known.map_or(item.location_id, |l| l.id);
        let now = Utc::now();
        let moved = self
            .move_item(
                &actor,
                &item,
                Action::RetentionItemCheckedIn,
                Statement::new(
                        "UPDATE physical_items SET state = 'in', holder_staff_id = NULL, due_back_at = NULL, location_id = $1 WHERE id = $2 AND state = 'checked_out'",
                        vec![Value::Uuid(location), Value::Uuid(item.id)],
                    ),
                (
                    custody(item.id, "checked_in", now, &staff, Some(location), ""),
                    now,
                ),
                (
                    Outcome::Allowed,
                    "",
                    vec![("location", location.to_string())],
                ),
                "the item is not checked out",
            )
            .await?;
        Ok(Response::new(pb::CheckInItemResponse { item: Some(moved) }))
    }

    #[tracing::instrument(name = "physical.transfer_item", skip_all)]
    async fn transfer_item(
        &self,
        request: Request<pb::TransferItemRequest>,
    ) -> Result<Response<pb::TransferItemResponse>, Status> {
        let (actor, staff) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let item = self.item_or_invalid(&request.get_ref().item_id).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let to = required_uuid(&mut v, "location_id", &req.location_id);
        let known = self.known_location(&mut v, "location_id", to).await?;
        let reason = text(&mut v, "reason", &req.reason, false);
        check(v)?;
        let Some(location) = known else {
            return Err(Error::NotFound("location").into());
        };
        if item.state != "in" {
            return Err(Error::Conflict("only an item that is in can be transferred").into());
        }
        let now = Utc::now();
        let moved = self
            .move_item(
                &actor,
                &item,
                Action::RetentionItemTransferred,
                Statement::new(
                    "UPDATE physical_items SET location_id = $1 WHERE id = $2 AND state = 'in'",
                    vec![Value::Uuid(location.id), Value::Uuid(item.id)],
                ),
                (
                    custody(
                        item.id,
                        "transferred",
                        now,
                        &staff,
                        Some(location.id),
                        &reason,
                    ),
                    now,
                ),
                (
                    Outcome::Allowed,
                    if location.off_site != 0 {
                        "off_site"
                    } else {
                        ""
                    },
                    vec![("location", location.id.to_string())],
                ),
                "only an item that is in can be transferred",
            )
            .await?;
        Ok(Response::new(pb::TransferItemResponse {
            item: Some(moved),
        }))
    }

    async fn list_overdue_checkouts(
        &self,
        request: Request<pb::ListOverdueCheckoutsRequest>,
    ) -> Result<Response<pb::ListOverdueCheckoutsResponse>, Status> {
        self.staff_with(&request, "retention.manage", None, None)
            .await?;
        let now = Utc::now();
        let rows: Vec<ItemRow> = self
            .store
            .db
            .fetch_all(
                item_select!(
                    "WHERE state = 'checked_out' AND due_back_at < $1 ORDER BY due_back_at"
                ),
                vec![Value::Time(now)],
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListOverdueCheckoutsResponse {
            items: rows.iter().map(|r| item_proto(r, now)).collect(),
        }))
    }

    async fn get_item_history(
        &self,
        request: Request<pb::GetItemHistoryRequest>,
    ) -> Result<Response<pb::GetItemHistoryResponse>, Status> {
        Self::staff(&request)?;
        let item = self.item_or_invalid(&request.get_ref().item_id).await?;
        self.staff_with(
            &request,
            "client_data.read",
            Some(item.client_id),
            item.matter_id,
        )
        .await?;
        let entries = self
            .store
            .custody(item.id)
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|c| pb::CustodyEntry {
                action: match c.action.as_str() {
                    "registered" => pb::CustodyAction::Registered,
                    "checked_out" => pb::CustodyAction::CheckedOut,
                    "checked_in" => pb::CustodyAction::CheckedIn,
                    "transferred" => pb::CustodyAction::Transferred,
                    "returned" => pb::CustodyAction::Returned,
                    "destroyed" => pb::CustodyAction::Destroyed,
                    _ => pb::CustodyAction::Unspecified,
                } as i32,
                time: Some(ts(c.at)),
                staff_id: c.staff_id,
                location_id: c.location_id.map(|l| l.to_string()).unwrap_or_default(),
                reason: c.reason,
            })
            .collect();
        Ok(Response::new(pb::GetItemHistoryResponse {
            item: Some(item_proto(&item, Utc::now())),
            entries,
        }))
    }
    async fn get_disposal_lists(
        &self,
        request: Request<pb::GetDisposalListsRequest>,
    ) -> Result<Response<pb::GetDisposalListsResponse>, Status> {
        self.staff_with(&request, "retention.manage", None, None)
            .await?;
        let now = Utc::now();
        let before = request
            .get_ref()
            .before_time
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
            .unwrap_or(now);
        let planned = self.plan(self.items_in_firm().await?).await?;
        let mut response = pb::GetDisposalListsResponse::default();
        for p in planned.into_iter().filter(|p| p.due <= before) {
            if p.held {
                response.held += 1;
                continue;
            }
            let due = pb::DueItem {
                item: Some(item_proto(&p.item, now)),
                due_time: Some(ts(p.due)),
                policy_id: p.policy.0.to_string(),
                policy_version: p.policy.1,
            };
            if p.item.original != 0 {
                response.return_to_client.push(due);
            } else {
                response.destroy.push(due);
            }
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(name = "physical.confirm_destruction", skip_all)]
    async fn confirm_destruction(
        &self,
        request: Request<pb::ConfirmDestructionRequest>,
    ) -> Result<Response<pb::ConfirmDestructionResponse>, Status> {
        let (actor, staff) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.item_ids.is_empty() || req.item_ids.len() > 500 {
            v.add("item_ids", "1 to 500 items");
        }
        let mut ids = Vec::new();
        for (i, raw) in req.item_ids.iter().enumerate() {
            if let Some(id) = required_uuid(&mut v, &format!("item_ids[{i}]"), raw) {
                if ids.contains(&id) {
                    v.add(format!("item_ids[{i}]"), "named twice");
                }
                ids.push(id);
            }
        }
        let vendor = text(&mut v, "vendor_reference", &req.vendor_reference, true);
        let now = Utc::now();
        match chrono::NaiveDate::parse_from_str(&req.destroyed_on, "%Y-%m-%d") {
            Ok(day) if day <= now.date_naive() => {}
            _ => v.add("destroyed_on", "a date, YYYY-MM-DD, not in the future"),
        }
        let witness = required_uuid(&mut v, "witness_staff_id", &req.witness_staff_id);
        if witness.is_some_and(|w| w.to_string() == staff) {
            v.add(
                "witness_staff_id",
                "must be someone other than the records manager confirming",
            );
        }
        check(v)?;
        let Some(witness) = witness else {
            return Err(Status::internal("validated request incomplete"));
        };
        let mut items = Vec::with_capacity(ids.len());
        for id in &ids {
            items.push(
                self.store
                    .item(*id)
                    .await
                    .map_err(Error::from)?
                    .ok_or(Error::NotFound("item"))?,
            );
        }
        // Refused whole, naming the first item that may not be destroyed.
        for item in &items {
            let refusal = if item.original != 0 {
                Some(("originals", "is an original: it goes back to the client"))
            } else if item.state == "checked_out" {
                Some(("checked_out", "is checked out"))
            } else if item.state != "in" {
                Some(("gone", "is no longer held by the firm"))
            } else {
                None
            };
            if let Some((reason, what)) = refusal {
                return Err(Error::Denied {
                    reason: reason.into(),
                    message: format!("item {} {what}", item.label),
                }
                .into());
            }
        }
        let planned = self.plan(items.clone()).await?;
        for item in &items {
            match planned.iter().find(|p| p.item.id == item.id) {
                Some(p) if p.held => {
                    return Err(Error::Denied {
                        reason: "held".into(),
                        message: format!("item {} is under a legal hold", item.label),
                    }
                    .into());
                }
                Some(p) if p.due <= now => {}
                _ => {
                    return Err(Error::Denied {
                        reason: "not_due".into(),
                        message: format!("item {} is not due for destruction", item.label),
                    }
                    .into());
                }
            }
        }
        let certificate_id = Uuid::now_v7();
        let body = json!({
            "type": "confidant.certificate-of-disposal.v1",
            "certificate_id": certificate_id.to_string(),
            "issuer": crate::NAME.spiffe_id(&self.trust_domain),
            "issued_at": now.to_rfc3339(),
            "destroyed_items": planned.iter().map(|p| json!({
                "item_id": p.item.id.to_string(),
                "label": p.item.label,
                "kind": p.item.kind,
                "client_id": p.item.client_id.to_string(),
                "matter_id": p.item.matter_id.map(|m| m.to_string()),
                "category": p.item.category,
                "due_at": p.due.to_rfc3339(),
                "policy": { "policy_id": p.policy.0.to_string(), "version": p.policy.1 },
            })).collect::<Vec<_>>(),
            "method": "physical destruction by the shredding vendor",
            "vendor_reference": vendor,
            "destroyed_on": req.destroyed_on,
            "witness_staff_id": witness.to_string(),
            "confirmed_by": staff,
        })
        .to_string();
        let signature = self.signer.sign(&body);
        let mut statements = vec![Statement::new(
            "INSERT INTO physical_certificates (id, body, signature, key_id, public_key, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Value::Uuid(certificate_id),
                Value::Text(body.clone()),
                Value::Text(signature.clone()),
                Value::Text(self.signer.key_id().to_owned()),
                Value::Text(self.signer.public_key()),
                Value::Time(now),
            ],
        )];
        let mut events = Vec::new();
        for item in &items {
            statements.push(
                Statement::new(
                    "UPDATE physical_items SET state = 'destroyed', certificate_id = $1 WHERE id = $2 AND state = 'in'",
                    vec![Value::Uuid(certificate_id), Value::Uuid(item.id)],
                )
                .expecting(1),
            );
            statements.push(custody(item.id, "destroyed", now, &staff, None, &vendor));
            events.push(
                self.event(&actor, Action::RetentionItemDestroyed)
                    .at(now)
                    .resource("item", &item.id.to_string())
                    .scope(Some(item.client_id), item.matter_id)
                    .category(&item.category)
                    .outcome(Outcome::Allowed, &certificate_id.to_string())
                    .build(),
            );
        }
        events.push(
            self.event(&actor, Action::RetentionCertificateIssued)
                .resource("certificate", &certificate_id.to_string())
                .outcome(Outcome::Allowed, "physical")
                .build(),
        );
        self.store
            .db
            .transact(statements, &events)
            .await
            .map_err(|e| unmet(e, "an item changed meanwhile; nothing was recorded"))?;
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            out.push(self.reload(item.id).await?);
        }
        Ok(Response::new(pb::ConfirmDestructionResponse {
            certificate: Some(pb::SignedCertificate {
                certificate_id: certificate_id.to_string(),
                body,
                signature,
                key_id: self.signer.key_id().to_owned(),
                public_key: self.signer.public_key(),
            }),
            items: out,
        }))
    }

    #[tracing::instrument(name = "physical.record_item_returned", skip_all)]
    async fn record_item_returned(
        &self,
        request: Request<pb::RecordItemReturnedRequest>,
    ) -> Result<Response<pb::RecordItemReturnedResponse>, Status> {
        let (actor, staff) = self
            .staff_with(&request, "retention.manage", None, None)
            .await?;
        let item = self.item_or_invalid(&request.get_ref().item_id).await?;
        let mut v = Violations::new();
        let reference = text(&mut v, "reference", &request.get_ref().reference, true);
        check(v)?;
        if item.original == 0 {
            return Err(Error::Conflict("only originals are returned to the client").into());
        }
        if item.state != "in" {
            return Err(Error::Conflict("the item is not in").into());
        }
        let now = Utc::now();
        let moved = self
            .move_item(
                &actor,
                &item,
                Action::RetentionItemReturned,
                Statement::new(
                    "UPDATE physical_items SET state = 'returned' WHERE id = $1 AND state = 'in'",
                    vec![Value::Uuid(item.id)],
                ),
                (
                    custody(item.id, "returned", now, &staff, None, &reference),
                    now,
                ),
                (Outcome::Allowed, "", Vec::new()),
                "the item is not in",
            )
            .await?;
        Ok(Response::new(pb::RecordItemReturnedResponse {
            item: Some(moved),
        }))
    }

    async fn get_destruction_certificate(
        &self,
        request: Request<pb::GetDestructionCertificateRequest>,
    ) -> Result<Response<pb::GetDestructionCertificateResponse>, Status> {
        self.staff_with(&request, "retention.manage", None, None)
            .await?;
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "certificate_id", &request.get_ref().certificate_id);
        check(v)?;
        let Some(id) = id else {
            return Err(Error::NotFound("certificate").into());
        };
        let row: Option<StoredCertificate> = self
            .store
            .db
            .fetch_optional(
                "SELECT id, body, signature, key_id, public_key FROM physical_certificates WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await
            .map_err(Error::from)?;
        let (id, body, signature, key_id, public_key) =
            row.ok_or(Error::NotFound("certificate"))?;
        Ok(Response::new(pb::GetDestructionCertificateResponse {
            certificate: Some(pb::SignedCertificate {
                certificate_id: id.to_string(),
                body,
                signature,
                public_key: self.signer.public_key_of(&key_id, public_key),
                key_id,
            }),
        }))
    }
}
