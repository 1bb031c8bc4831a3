//! The authorization decision, as a pure function of the facts about one
//! staff member and one resource at one point in time, so that it can be
//! tested without a database, cached, and replayed for any date.

use chrono::{DateTime, Utc};
use confidant_proto::identity::v1::{AccessPath, DenialReason};

/// Permissions whose use touches a client's data: they need a client or
/// matter, current attestations, no wall, and an assignment.
pub fn is_client_scoped(permission: &str) -> bool {
    permission.starts_with("client_data.")
}

/// A grant with a validity interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// From.
    pub start: DateTime<Utc>,
    /// Lapses at (exclusive), if ever.
    pub expires: Option<DateTime<Utc>>,
    /// Revoked at, if it was.
    pub revoked: Option<DateTime<Utc>>,
}

impl Interval {
    /// Whether the grant holds at `at`.
    pub fn holds_at(&self, at: DateTime<Utc>) -> bool {
        self.start <= at
            && self.expires.is_none_or(|e| at < e)
            && self.revoked.is_none_or(|r| at < r)
    }
}

/// An attestation as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attestation {
    /// When signed or completed.
    pub completed: DateTime<Utc>,
    /// When it stops counting.
    pub expires: DateTime<Utc>,
    /// Whether it was passed (always true for an NDA).
    pub passed: bool,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `None`: no such staff member. `Some(disabled_at)` otherwise.
    pub staff: Option<Option<DateTime<Utc>>>,
    /// The staff member's role grants whose role has the permission.
    pub granting_roles: Vec<(String, Interval)>,
    /// Whether the client or matter named exists (and the matter belongs to
    /// the client, when both are named).
    pub resource_exists: bool,
    /// The staff member is the matter's responsible attorney.
    pub responsible_attorney: bool,
    /// NDA attestations.
    pub ndas: Vec<Attestation>,
    /// Training attestations.
    pub trainings: Vec<Attestation>,
    /// Walls screening the staff member from the client or matter.
    pub walls: Vec<Interval>,
    /// For each wall (same index), the exceptions that let the staff member
    /// through it for the matter asked about.
    pub wall_exceptions: Vec<Vec<Interval>>,
    /// The ids of those exceptions (same shape), to name the one used.
    pub wall_exception_ids: Vec<Vec<uuid::Uuid>>,
    /// Assignments to the matter (or to any matter of the client).
    pub assignments: Vec<Interval>,
    /// Break-glass grants for the matter.
    pub break_glass: Vec<Interval>,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Why not, or `Unspecified` when allowed.
    pub reason: DenialReason,
    /// The role that granted the permission.
    pub role: Option<String>,
    /// How access to the resource was granted.
    pub path: AccessPath,
    /// The wall exceptions that let the staff member through a standing
    /// wall, when allowed (one per wall passed).
    pub through_exceptions: Vec<uuid::Uuid>,
}

impl Decision {
    /// Whether it allows.
    pub fn allowed(&self) -> bool {
        self.reason == DenialReason::Unspecified
    }

    fn deny(reason: DenialReason) -> Self {
        Self {
            reason,
            role: None,
            path: AccessPath::Unspecified,
            through_exceptions: Vec::new(),
        }
    }

    /// The reason as a lowercase code, for audit events and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self.reason {
            DenialReason::Unspecified => "",
            DenialReason::UnknownStaff => "unknown_staff",
            DenialReason::AccountDisabled => "account_disabled",
            DenialReason::NoRolePermission => "no_role_permission",
            DenialReason::NdaMissing => "nda_missing",
            DenialReason::NdaExpired => "nda_expired",
            DenialReason::TrainingMissing => "training_missing",
            DenialReason::TrainingExpired => "training_expired",
            DenialReason::BehindWall => "behind_wall",
            DenialReason::NotAssigned => "not_assigned",
            DenialReason::UnknownResource => "unknown_resource",
        }
    }
}

/// The latest attestation completed by `at`: `None` if there is none.
fn latest(attestations: &[Attestation], at: DateTime<Utc>) -> Option<&Attestation> {
    attestations
        .iter()
        .filter(|a| a.completed <= at)
        .max_by_key(|a| a.completed)
}

/// Decides whether the staff member of `facts` may use `permission` at `at`.
///
/// Order: who (unknown, disabled), what the roles allow, then for client
/// data: the resource, the compliance gates (NDA, training), ethical walls
/// (which override everything below), and finally the path to the matter
/// (assignment, responsible attorney, break-glass).
pub fn decide(facts: &Facts, permission: &str, at: DateTime<Utc>) -> Decision {
    let Some(disabled) = facts.staff else {
        return Decision::deny(DenialReason::UnknownStaff);
    };
    if disabled.is_some_and(|d| d <= at) {
        return Decision::deny(DenialReason::AccountDisabled);
    }
    let Some(role) = facts
        .granting_roles
        .iter()
        .filter(|(_, grant)| grant.holds_at(at))
        .map(|(role, _)| role.clone())
        .min()
    else {
        return Decision::deny(DenialReason::NoRolePermission);
    };
    if !is_client_scoped(permission) {
        return Decision {
            reason: DenialReason::Unspecified,
            role: Some(role),
            path: AccessPath::FirmWide,
            through_exceptions: Vec::new(),
        };
    }
    if !facts.resource_exists {
        return Decision::deny(DenialReason::UnknownResource);
    }
    match latest(&facts.ndas, at) {
        None => return Decision::deny(DenialReason::NdaMissing),
        Some(nda) if nda.expires <= at => return Decision::deny(DenialReason::NdaExpired),
        Some(_) => {}
    }
    let passed: Vec<Attestation> = facts
        .trainings
        .iter()
        .filter(|t| t.passed)
        .copied()
        .collect();
    match latest(&passed, at) {
        None => return Decision::deny(DenialReason::TrainingMissing),
        Some(t) if t.expires <= at => return Decision::deny(DenialReason::TrainingExpired),
        Some(_) => {}
    }
    // For each wall standing at `at`, the exception holding then, if any.
    let mut through_exceptions = Vec::new();
    for (i, wall) in facts.walls.iter().enumerate() {
        if !wall.holds_at(at) {
            continue;
        }
        let holding = facts
            .wall_exceptions
            .get(i)
            .and_then(|e| e.iter().position(|x| x.holds_at(at)));
        let Some(j) = holding else {
            return Decision::deny(DenialReason::BehindWall);
        };
        if let Some(id) = facts.wall_exception_ids.get(i).and_then(|ids| ids.get(j)) {
            through_exceptions.push(*id);
        }
    }
    let path = if facts.assignments.iter().any(|a| a.holds_at(at)) {
        AccessPath::Assignment
    } else if facts.responsible_attorney {
        AccessPath::ResponsibleAttorney
    } else if facts.break_glass.iter().any(|b| b.holds_at(at)) {
        AccessPath::BreakGlass
    } else {
        return Decision::deny(DenialReason::NotAssigned);
    };
    Decision {
        reason: DenialReason::Unspecified,
        role: Some(role),
        path,
        through_exceptions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    fn open(from_days_ago: i64) -> Interval {
        Interval {
            start: now() - Duration::days(from_days_ago),
            expires: None,
            revoked: None,
        }
    }

    fn valid_attestation() -> Attestation {
        Attestation {
            completed: now() - Duration::days(30),
            expires: now() + Duration::days(300),
            passed: true,
        }
    }

    /// An associate assigned to the matter with current attestations.
    fn cleared() -> Facts {
        Facts {
            staff: Some(None),
            granting_roles: vec![("associate".into(), open(100))],
            resource_exists: true,
            responsible_attorney: false,
            ndas: vec![valid_attestation()],
            trainings: vec![valid_attestation()],
            walls: vec![],
            wall_exceptions: vec![],
            wall_exception_ids: vec![],
            assignments: vec![open(10)],
            break_glass: vec![],
        }
    }

    fn reason(facts: &Facts) -> DenialReason {
        decide(facts, "client_data.read", now()).reason
    }

    #[test]
    fn a_cleared_assigned_associate_may_read_and_the_path_is_explained() {
        let d = decide(&cleared(), "client_data.read", now());
        assert!(d.allowed());
        assert_eq!(d.role.as_deref(), Some("associate"));
        assert_eq!(d.path, AccessPath::Assignment);
    }

    #[test]
    fn each_missing_condition_has_its_own_reason() {
        let mut f = cleared();
        f.staff = None;
        assert_eq!(reason(&f), DenialReason::UnknownStaff);

        let mut f = cleared();
        f.staff = Some(Some(now() - Duration::hours(1)));
        assert_eq!(reason(&f), DenialReason::AccountDisabled);

        let mut f = cleared();
        f.granting_roles.clear();
        assert_eq!(reason(&f), DenialReason::NoRolePermission);

        let mut f = cleared();
        f.resource_exists = false;
        assert_eq!(reason(&f), DenialReason::UnknownResource);

        let mut f = cleared();
        f.ndas.clear();
        assert_eq!(reason(&f), DenialReason::NdaMissing);

        let mut f = cleared();
        f.ndas[0].expires = now() - Duration::days(1);
        assert_eq!(reason(&f), DenialReason::NdaExpired);

        let mut f = cleared();
        f.trainings[0].passed = false;
        assert_eq!(reason(&f), DenialReason::TrainingMissing);

        let mut f = cleared();
        f.trainings[0].expires = now();
        assert_eq!(reason(&f), DenialReason::TrainingExpired);

        let mut f = cleared();
        f.walls.push(open(1));
        assert_eq!(reason(&f), DenialReason::BehindWall);

        let mut f = cleared();
        f.assignments.clear();
        assert_eq!(reason(&f), DenialReason::NotAssigned);
    }

    #[test]
    fn an_exception_lets_one_through_its_wall_only_while_it_lasts() {
        let mut f = cleared();
        f.walls.push(open(5));
        f.walls.push(open(5));
        // Through the first wall, not the second: still behind a wall.
        f.wall_exceptions = vec![vec![open(1)]];
        assert_eq!(reason(&f), DenialReason::BehindWall);
        f.wall_exceptions.push(vec![open(1)]);
        assert_eq!(reason(&f), DenialReason::Unspecified);
        // The decision names the exception used at each wall.
        let (a, b, lapsed) = (
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
        );
        f.wall_exceptions[1].insert(
            0,
            Interval {
                expires: Some(now() - Duration::minutes(2)),
                ..open(3)
            },
        );
        f.wall_exception_ids = vec![vec![a], vec![lapsed, b]];
        let d = decide(&f, "client_data.read", now());
        assert!(d.allowed());
        assert_eq!(d.through_exceptions, vec![a, b]);
        f.wall_exceptions[1].remove(0);
        f.wall_exception_ids[1].remove(0);
        // A lapsed exception lets no one through.
        f.wall_exceptions[1][0].expires = Some(now() - Duration::minutes(1));
        assert_eq!(reason(&f), DenialReason::BehindWall);
    }

    #[test]
    fn a_wall_overrides_assignment_responsibility_and_break_glass() {
        let mut f = cleared();
        f.responsible_attorney = true;
        f.break_glass.push(open(0));
        f.walls.push(open(5));
        assert_eq!(reason(&f), DenialReason::BehindWall);
        // A lifted wall no longer screens.
        f.walls[0].revoked = Some(now() - Duration::hours(1));
        assert!(decide(&f, "client_data.read", now()).allowed());
    }

    #[test]
    fn break_glass_grants_until_it_expires() {
        let mut f = cleared();
        f.assignments.clear();
        f.break_glass.push(Interval {
            start: now() - Duration::minutes(30),
            expires: Some(now() + Duration::minutes(30)),
            revoked: None,
        });
        let d = decide(&f, "client_data.read", now());
        assert_eq!(d.path, AccessPath::BreakGlass);
        assert_eq!(
            decide(&f, "client_data.read", now() + Duration::minutes(31)).reason,
            DenialReason::NotAssigned
        );
    }

    #[test]
    fn grants_lapse_and_revocations_count_from_their_time() {
        let mut f = cleared();
        f.assignments[0].expires = Some(now() + Duration::days(1));
        assert!(decide(&f, "client_data.read", now()).allowed());
        assert_eq!(
            decide(&f, "client_data.read", now() + Duration::days(2)).reason,
            DenialReason::NotAssigned
        );
        // Point in time: before a revocation the grant held.
        f.assignments[0].revoked = Some(now() - Duration::days(1));
        assert_eq!(reason(&f), DenialReason::NotAssigned);
        assert!(decide(&f, "client_data.read", now() - Duration::days(2)).allowed());
    }

    #[test]
    fn firm_wide_permissions_need_no_client_or_attestations() {
        let f = Facts {
            staff: Some(None),
            granting_roles: vec![("auditor".into(), open(1))],
            ..Facts::default()
        };
        let d = decide(&f, "audit.read", now());
        assert!(d.allowed());
        assert_eq!(d.path, AccessPath::FirmWide);
    }
}
