//! Access reviews: a campaign snapshots every live grant; reviewers certify
//! or revoke each before the deadline; revocations take effect at once;
//! items still undecided after the deadline are reported overdue.
//!
//! Reviewers are the firm's administrators' tools (an admin certificate) or
//! staff signed in through a firm application: holders of `reviews.manage`
//! review every grant, a matter's responsible attorney the assignments to
//! that matter; nobody reviews their own grants.

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::auth::Actor;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::store::StoreError;

/// A verdict stored for an item.
pub const CERTIFY: i32 = 1;
/// See [`CERTIFY`].
pub const REVOKE: i32 = 2;

/// One item as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Item {
    /// Item id.
    pub id: Uuid,
    /// `assignment` or `role`.
    pub kind: String,
    /// Holder.
    pub staff_id: Uuid,
    /// Matter id or role name.
    pub subject: String,
    /// The assignment id, or empty for a role membership.
    pub grant_id: String,
    /// Verdict.
    pub decision: Option<i32>,
    /// Who gave it: a staff id, or an admin tool's identity.
    pub decided_by: Option<String>,
}

impl Item {
    /// The matter of an assignment.
    pub fn matter(&self) -> Option<Uuid> {
        if self.kind == "assignment" {
            Uuid::parse_str(&self.subject).ok()
        } else {
            None
        }
    }
}

/// What a staff member may review: every item but their own with
/// `reviews.manage`, else the assignments to matters they are the
/// responsible attorney of.
#[derive(Debug, Clone)]
pub struct StaffReviewer {
    /// The staff member.
    pub id: Uuid,
    /// They hold `reviews.manage` now.
    pub manages: bool,
    /// The matters they are the responsible attorney of (when they do not
    /// manage reviews).
    pub responsible: std::collections::HashSet<Uuid>,
}

/// The permission that makes a staff member a reviewer of every grant.
pub const REVIEWS_MANAGE: &str = "reviews.manage";

/// An undecided item, with its campaign.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingItem {
    /// The campaign.
    pub campaign_id: Uuid,
    /// Its name.
    pub campaign_name: String,
    /// Its deadline.
    pub deadline: DateTime<Utc>,
    /// The item.
    #[sqlx(flatten)]
    pub item: Item,
}

/// The items of one campaign waiting for one reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting<'a> {
    /// The campaign.
    pub campaign: Uuid,
    /// Its name.
    pub name: &'a str,
    /// Its deadline.
    pub deadline: DateTime<Utc>,
    /// How many of its items they may decide.
    pub items: usize,
}

impl StaffReviewer {
    /// Of `pending` (a campaign's items together), the items they may
    /// decide, counted by campaign.
    pub fn waiting<'a>(&self, pending: &'a [PendingItem]) -> Vec<Waiting<'a>> {
        let mut waiting: Vec<Waiting<'a>> = Vec::new();
        for p in pending.iter().filter(|p| self.may_decide(&p.item).is_ok()) {
            match waiting.last_mut() {
                Some(w) if w.campaign == p.campaign_id => w.items += 1,
                _ => waiting.push(Waiting {
                    campaign: p.campaign_id,
                    name: &p.campaign_name,
                    deadline: p.deadline,
                    items: 1,
                }),
            }
        }
        waiting
    }

    /// Whether they may decide `item`, and if not: a reason code and why.
    pub fn may_decide(&self, item: &Item) -> Result<(), (&'static str, &'static str)> {
        if item.staff_id == self.id {
            return Err(("own_grant", "nobody reviews their own grants"));
        }
        if self.manages || item.matter().is_some_and(|m| self.responsible.contains(&m)) {
            Ok(())
        } else {
            Err((
                "not_reviewer",
                "this item is reviewed by holders of reviews.manage (or, for an assignment, the matter's responsible attorney)",
            ))
        }
    }
}

/// A campaign's state.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Deadline.
    pub deadline: DateTime<Utc>,
    /// Items.
    pub items: Vec<Item>,
}

/// Access reviews over the directory.
#[derive(Debug, Clone)]
pub struct Reviews {
    db: Database,
    trust_domain: String,
}

impl Reviews {
    /// Reviews in `db`.
    pub fn new(db: Database, trust_domain: &str) -> Self {
        Self {
            db,
            trust_domain: trust_domain.to_owned(),
        }
    }

    fn event(&self, action: Action, by: &Actor, kind: &str, id: Uuid) -> EventBuilder {
        by.event(ServiceName::Identity, &self.trust_domain, action)
            .resource(kind, &id.to_string())
    }

    /// One item.
    pub async fn item(&self, id: Uuid) -> Result<Item, StoreError> {
        let row: Option<Item> = self
            .db
            .fetch_optional(
                "SELECT id, kind, staff_id, subject, grant_id, decision, decided_by FROM review_items WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        row.ok_or(StoreError::NotFound("review item"))
    }

    /// What staff member `id` may review now.
    pub async fn reviewer(
        &self,
        directory: &crate::store::Directory,
        id: Uuid,
    ) -> Result<StaffReviewer, StoreError> {
        let facts = directory.facts(id, REVIEWS_MANAGE, None, None).await?;
        let manages = crate::domain::decide(&facts, REVIEWS_MANAGE, Utc::now()).allowed();
        let responsible = if manages {
            std::collections::HashSet::new()
        } else {
            self.responsible_for(id).await?
        };
        Ok(StaffReviewer {
            id,
            manages,
            responsible,
        })
    }

    /// The matters `staff` is the responsible attorney of.
    pub async fn responsible_for(
        &self,
        staff: Uuid,
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        let rows: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT id FROM matters WHERE responsible_attorney_id = $1",
                vec![Value::Uuid(staff)],
            )
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Every undecided item, of the campaigns whose deadline is after
    /// `open_at` if given, with its campaign: by deadline, a campaign's
    /// items together.
    pub async fn pending(
        &self,
        open_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<PendingItem>, StoreError> {
        Ok(self
            .db
            .fetch_all(
                "SELECT c.id AS campaign_id, c.name AS campaign_name, c.deadline, i.id, i.kind, \
                 i.staff_id, i.subject, i.grant_id, i.decision, i.decided_by FROM review_items i \
                 JOIN review_campaigns c ON c.id = i.campaign_id \
                 WHERE i.decision IS NULL AND ($1 IS NULL OR c.deadline > $1) \
                 ORDER BY c.deadline, c.id",
                vec![Value::OptTime(open_at)],
            )
            .await?)
    }

    /// Opens a campaign over every grant live now; returns its id and size.
    pub async fn start(
        &self,
        name: &str,
        deadline: DateTime<Utc>,
        by: &Actor,
    ) -> Result<(Uuid, usize), StoreError> {
        let now = Utc::now();
        let assignments: Vec<(Uuid, Uuid, Uuid, Option<DateTime<Utc>>)> = self
            .db
            .fetch_all(
                "SELECT id, staff_id, matter_id, expires_at FROM assignments WHERE revoked_at IS NULL",
                vec![],
            )
            .await?;
        let roles: Vec<(Uuid, String)> = self
            .db
            .fetch_all(
                "SELECT r.staff_id, r.role FROM staff_roles r JOIN staff s ON s.id = r.staff_id \
                 WHERE r.revoked_at IS NULL AND s.disabled_at IS NULL \
                 AND (r.expires_at IS NULL OR r.expires_at > $1)",
                vec![Value::Time(now)],
            )
            .await?;
        let id = Uuid::now_v7();
        let mut statements = vec![Statement::new(
            "INSERT INTO review_campaigns (id, name, created_at, deadline, created_by) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Value::Uuid(id),
                Value::Text(name.to_owned()),
                Value::Time(now),
                Value::Time(deadline),
                Value::Text(by.id().to_owned()),
            ],
        )];
        let item = |kind: &str, staff: Uuid, subject: String, grant: String| {
            Statement::new(
                "INSERT INTO review_items (id, campaign_id, kind, staff_id, subject, grant_id) VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Text(kind.to_owned()),
                    Value::Uuid(staff),
                    Value::Text(subject),
                    Value::Text(grant),
                ],
            )
        };
        for (grant, staff, matter, expires) in assignments {
            if expires.is_none_or(|e| e > now) {
                statements.push(item(
                    "assignment",
                    staff,
                    matter.to_string(),
                    grant.to_string(),
                ));
            }
        }
        for (staff, role) in roles {
            statements.push(item("role", staff, role, String::new()));
        }
        let count = statements.len() - 1;
        let event = self
            .event(Action::IdentityReviewStarted, by, "review", id)
            .build();
        self.db.transact(statements, &[event]).await?;
        Ok((id, count))
    }

    /// A campaign and its items.
    pub async fn campaign(&self, id: Uuid) -> Result<Campaign, StoreError> {
        let row: Option<(DateTime<Utc>,)> = self
            .db
            .fetch_optional(
                "SELECT deadline FROM review_campaigns WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        let (deadline,) = row.ok_or(StoreError::NotFound("review campaign"))?;
        let items: Vec<Item> = self
            .db
            .fetch_all(
                "SELECT id, kind, staff_id, subject, grant_id, decision, decided_by FROM review_items WHERE campaign_id = $1 ORDER BY id",
                vec![Value::Uuid(id)],
            )
            .await?;
        Ok(Campaign { deadline, items })
    }

    /// Records a verdict by `by` (whose right to give it the caller checked);
    /// a revocation ends the grant in the same transaction.
    pub async fn decide(&self, item: &Item, decision: i32, by: &Actor) -> Result<(), StoreError> {
        if item.decision.is_some() {
            return Err(StoreError::Conflict("the item was decided already"));
        }
        let now = Utc::now();
        let mut statements = vec![Statement::new(
            "UPDATE review_items SET decision = $1, decided_at = $2, decided_by = $3 WHERE id = $4 AND decision IS NULL",
            vec![
                Value::Int(decision),
                Value::Time(now),
                Value::Text(by.id().to_owned()),
                Value::Uuid(item.id),
            ],
        )
        // A concurrent verdict won: nothing of this one is written.
        .expecting(1)];
        if decision == REVOKE {
            statements.push(if item.kind == "assignment" {
                crate::store::assignment_revoked(
                    Uuid::parse_str(&item.grant_id).unwrap_or_default(),
                    now,
                )
            } else {
                crate::store::role_revoked(item.staff_id, &item.subject, now)
            });
        }
        let verdict = if decision == REVOKE {
            "revoke"
        } else {
            "certify"
        };
        let mut events = vec![
            self.event(Action::IdentityReviewDecided, by, "review_item", item.id)
                .outcome(Outcome::Allowed, verdict)
                .build(),
        ];
        // A revocation by review is a revocation like any other in the
        // log, by the reviewer.
        if decision == REVOKE {
            events.push(if item.kind == "assignment" {
                by.event(
                    ServiceName::Identity,
                    &self.trust_domain,
                    Action::IdentityAssignmentRevoked,
                )
                .resource("assignment", &item.grant_id)
                .build()
            } else {
                by.event(
                    ServiceName::Identity,
                    &self.trust_domain,
                    Action::IdentityRoleRevoked,
                )
                .resource("role", &item.subject)
                .outcome(Outcome::Allowed, &format!("staff-{}", item.staff_id))
                .build()
            });
        }
        match self.db.transact(statements, &events).await {
            Ok(_) => Ok(()),
            Err(confidant_runtime::portable::TransactError::Unmet { .. }) => {
                Err(StoreError::Conflict("the item was decided already"))
            }
            Err(e) => Err(e.into()),
        }
    }
}
