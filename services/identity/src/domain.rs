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
    /// Its id.
    pub id: uuid::Uuid,
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

impl Facts {
    /// The agreement decisions count at `at`: the latest signed by then.
    pub fn counted_nda(&self, at: DateTime<Utc>) -> Option<&Attestation> {
        self.ndas
            .iter()
            .filter(|a| a.completed <= at)
            .max_by_key(|a| a.completed)
    }

    /// The training decisions count at `at`: the latest passed by then.
    pub fn counted_training(&self, at: DateTime<Utc>) -> Option<&Attestation> {
        self.trainings
            .iter()
            .filter(|t| t.passed && t.completed <= at)
            .max_by_key(|t| t.completed)
    }

    /// The staff member's way into the matter or client at `at`, in the
    /// order decisions take them, and when it lapses (`None`: not by
    /// itself).
    pub fn way_in(&self, at: DateTime<Utc>) -> Option<(AccessPath, Option<DateTime<Utc>>)> {
        // Of grants holding at `at`, the latest lapse; none if one holds
        // without end.
        fn until(grants: &[Interval], at: DateTime<Utc>) -> Option<Option<DateTime<Utc>>> {
            let holding: Vec<&Interval> = grants.iter().filter(|g| g.holds_at(at)).collect();
            if holding.is_empty() {
                return None;
            }
            Some(if holding.iter().any(|g| g.expires.is_none()) {
                None
            } else {
                holding.iter().filter_map(|g| g.expires).max()
            })
        }
        if let Some(lapses) = until(&self.assignments, at) {
            Some((AccessPath::Assignment, lapses))
        } else if self.responsible_attorney {
            Some((AccessPath::ResponsibleAttorney, None))
        } else {
            until(&self.break_glass, at).map(|lapses| (AccessPath::BreakGlass, lapses))
        }
    }

    /// What denies `permission` at `at` on every client and matter alike:
    /// the decision for a resource the staff member is responsible for
    /// and screened from by no wall, so that only the account, its roles
    /// and the compliance gates can deny it. `Unspecified` when nothing
    /// does.
    pub fn blocked_everywhere(&self, permission: &str, at: DateTime<Utc>) -> DenialReason {
        let open = Facts {
            resource_exists: true,
            responsible_attorney: true,
            walls: Vec::new(),
            wall_exceptions: Vec::new(),
            wall_exception_ids: Vec::new(),
            ..self.clone()
        };
        decide(&open, permission, at).reason
    }
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
    match facts.counted_nda(at) {
        None => return Decision::deny(DenialReason::NdaMissing),
        Some(nda) if nda.expires <= at => return Decision::deny(DenialReason::NdaExpired),
        Some(_) => {}
    }
    match facts.counted_training(at) {
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
    let Some((path, _)) = facts.way_in(at) else {
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
            id: uuid::Uuid::nil(),
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

    #[test]
    fn a_way_in_lapses_with_the_last_grant_holding() {
        let mut f = cleared();
        let soon = now() + Duration::days(1);
        let later = now() + Duration::days(9);
        f.assignments = vec![open(3), open(2)];
        f.assignments[0].expires = Some(soon);
        assert_eq!(f.way_in(now()), Some((AccessPath::Assignment, None)));
        f.assignments[1].expires = Some(later);
        assert_eq!(f.way_in(now()), Some((AccessPath::Assignment, Some(later))));
        // One lapsed or revoked no longer counts.
        f.assignments[1].revoked = Some(now() - Duration::hours(1));
        assert_eq!(f.way_in(now()), Some((AccessPath::Assignment, Some(soon))));
        f.assignments.clear();
        f.break_glass = vec![Interval {
            expires: Some(soon),
            ..open(0)
        }];
        assert_eq!(f.way_in(now()), Some((AccessPath::BreakGlass, Some(soon))));
        f.responsible_attorney = true;
        assert_eq!(
            f.way_in(now()),
            Some((AccessPath::ResponsibleAttorney, None))
        );
        f.responsible_attorney = false;
        assert_eq!(f.way_in(soon), None);
    }

    #[test]
    fn what_blocks_everywhere_ignores_the_matter_but_not_the_gates() {
        let mut f = cleared();
        f.assignments.clear();
        f.walls.push(open(1));
        f.resource_exists = false;
        let blocked = |f: &Facts| f.blocked_everywhere("client_data.read", now());
        assert_eq!(blocked(&f), DenialReason::Unspecified);
        f.trainings[0].passed = false;
        assert_eq!(blocked(&f), DenialReason::TrainingMissing);
        f.ndas[0].expires = now();
        assert_eq!(blocked(&f), DenialReason::NdaExpired);
        f.granting_roles.clear();
        assert_eq!(blocked(&f), DenialReason::NoRolePermission);
        f.staff = Some(Some(now() - Duration::days(1)));
        assert_eq!(blocked(&f), DenialReason::AccountDisabled);
    }
}
