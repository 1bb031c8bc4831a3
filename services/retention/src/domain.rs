//! Retention rules parsed at the boundary, and the due date of a scope as a
//! pure function of its policy and the events recorded about its client and
//! matter.

use chrono::{DateTime, Months, Utc};
use confidant_proto::retention::v1 as pb;
use confidant_runtime::error::Violations;
use confidant_vault::domain::Category;

/// What a period counts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The scope's creation.
    Creation,
    /// The closing of the scope's matter.
    MatterClosed,
    /// The end of the client relationship.
    RelationshipEnded,
    /// A named event.
    Named(String),
}

impl Trigger {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Creation => "creation",
            Trigger::MatterClosed => "matter_closed",
            Trigger::RelationshipEnded => "relationship_ended",
            Trigger::Named(_) => "named_event",
        }
    }

    /// From the stored kind and name.
    pub fn from_stored(kind: &str, name: Option<&str>) -> Option<Self> {
        Some(match kind {
            "creation" => Trigger::Creation,
            "matter_closed" => Trigger::MatterClosed,
            "relationship_ended" => Trigger::RelationshipEnded,
            "named_event" => Trigger::Named(name?.to_owned()),
            _ => return None,
        })
    }

    /// The API value.
    pub fn to_proto(&self) -> pb::Trigger {
        match self {
            Trigger::Creation => pb::Trigger::Creation,
            Trigger::MatterClosed => pb::Trigger::MatterClosed,
            Trigger::RelationshipEnded => pb::Trigger::RelationshipEnded,
            Trigger::Named(_) => pb::Trigger::NamedEvent,
        }
    }
}

/// What happens at the end of the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Shred at once.
    Shred,
    /// Put before a records manager first.
    Review,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Shred => "shred",
            Action::Review => "review",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shred" => Some(Action::Shred),
            "review" => Some(Action::Review),
            _ => None,
        }
    }
}

/// A retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Years.
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Days.
    pub days: u32,
}

impl Period {
    /// `from` plus the period (calendar months, clamped to the month's end).
    pub fn after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        from.checked_add_months(Months::new(self.years * 12 + self.months))?
            .checked_add_signed(chrono::Duration::days(i64::from(self.days)))
    }
}

/// Validated policy rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The category governed.
    pub category: Category,
    /// The period.
    pub period: Period,
    /// What it counts from.
    pub trigger: Trigger,
    /// The action at the end.
    pub action: Action,
    /// Days of client notice required before disposal (0: none).
    pub client_notice_days: u32,
    /// The legal basis.
    pub basis: String,
    /// Only matters of this practice area (compared lower-cased).
    pub practice_area: Option<String>,
    /// Only matters under this jurisdiction (ISO 3166, upper-cased).
    pub jurisdiction: Option<String>,
}

impl Rules {
    /// What a policy's audit event names in `related` (its category is the
    /// event's): the period, the trigger, the action, the notice, the basis
    /// and what it is only for.
    pub fn related(&self) -> Vec<(&'static str, String)> {
        let mut related = vec![
            ("period_years", self.period.years.to_string()),
            ("period_months", self.period.months.to_string()),
            ("period_days", self.period.days.to_string()),
            ("trigger_kind", self.trigger.kind().to_owned()),
            ("action", self.action.as_str().to_owned()),
            ("client_notice_days", self.client_notice_days.to_string()),
            ("basis", self.basis.clone()),
        ];
        if let Trigger::Named(name) = &self.trigger {
            related.push(("trigger_event_name", name.clone()));
        }
        related.extend(self.practice_area.clone().map(|p| ("practice_area", p)));
        related.extend(self.jurisdiction.clone().map(|j| ("jurisdiction", j)));
        related
    }

    /// Read back from a policy event of `category`; `None` for one logged
    /// before policy events named their rules.
    pub fn from_related(
        category: &str,
        related: &[confidant_proto::audit::v1::RelatedResource],
    ) -> Option<Self> {
        let named = |kind: &str| confidant_runtime::audit::related_named(related, kind);
        let number = |kind: &str| named(kind)?.parse::<u32>().ok();
        Some(Self {
            category: Category::parse(category)?,
            period: Period {
                years: number("period_years")?,
                months: number("period_months")?,
                days: number("period_days")?,
            },
            trigger: Trigger::from_stored(named("trigger_kind")?, named("trigger_event_name"))?,
            action: Action::parse(named("action")?)?,
            client_notice_days: number("client_notice_days")?,
            basis: named("basis")?.to_owned(),
            practice_area: named("practice_area").map(str::to_owned),
            jurisdiction: named("jurisdiction").map(str::to_owned),
        })
    }

    /// How closely these rules fit a scope of `category` whose matter has
    /// `practice_area` and `jurisdiction` (none for client-level scopes or
    /// unknown matters): `None` if they do not apply, else a rank where
    /// higher is more specific — jurisdiction first, then practice area.
    pub fn fit(
        &self,
        category: &str,
        practice_area: Option<&str>,
        jurisdiction: Option<&str>,
    ) -> Option<(u8, u8)> {
        if self.category.as_str() != category {
            return None;
        }
        let area = match &self.practice_area {
            None => 0,
            Some(p)
                if practice_area
                    .map(confidant_runtime::matter::practice_area_key)
                    .as_ref()
                    == Some(p) =>
            {
                1
            }
            Some(_) => return None,
        };
        let place = confidant_runtime::matter::jurisdiction_fit(
            self.jurisdiction.as_deref(),
            jurisdiction,
        )?;
        Some((place, area))
    }
}

fn event_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn bounded(v: &mut Violations, field: &str, value: i32, max: i32) -> u32 {
    if value < 0 {
        v.add(field, "must not be negative");
        0
    } else if value > max {
        v.add(field, format!("must be at most {max}"));
        0
    } else {
        u32::try_from(value).unwrap_or(0)
    }
}

impl Rules {
    /// Validates API rules; every broken rule named under `prefix`.
    pub fn parse(rules: Option<&pb::PolicyRules>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let Some(r) = rules else {
            v.add(prefix, "is required");
            return Err(v);
        };
        let f = |name: &str| format!("{prefix}.{name}");
        let category =
            confidant_vault::domain::required_category(&mut v, &f("category"), r.category);
        let period = match &r.period {
            None => {
                v.add(f("period"), "is required");
                None
            }
            Some(p) => {
                let period = Period {
                    years: bounded(&mut v, &f("period.years"), p.years, 100),
                    months: bounded(&mut v, &f("period.months"), p.months, 1200),
                    days: bounded(&mut v, &f("period.days"), p.days, 36_500),
                };
                Some(period)
            }
        };
        let trigger = match pb::Trigger::try_from(r.trigger) {
            Ok(pb::Trigger::Creation) => Some(Trigger::Creation),
            Ok(pb::Trigger::MatterClosed) => Some(Trigger::MatterClosed),
            Ok(pb::Trigger::RelationshipEnded) => Some(Trigger::RelationshipEnded),
            Ok(pb::Trigger::NamedEvent) => {
                if event_name_ok(&r.trigger_event_name) {
                    Some(Trigger::Named(r.trigger_event_name.clone()))
                } else {
                    v.add(
                        f("trigger_event_name"),
                        "must be 1 to 64 lowercase letters, digits or '_' for a named event",
                    );
                    None
                }
            }
            Ok(pb::Trigger::Unspecified) => {
                v.add(f("trigger"), "is required");
                None
            }
            Err(_) => {
                v.add(f("trigger"), "is not a known trigger");
                None
            }
        };
        if !matches!(
            pb::Trigger::try_from(r.trigger),
            Ok(pb::Trigger::NamedEvent)
        ) && !r.trigger_event_name.is_empty()
        {
            v.add(f("trigger_event_name"), "is only for TRIGGER_NAMED_EVENT");
        }
        let action = match pb::DisposalAction::try_from(r.action) {
            Ok(pb::DisposalAction::Shred) => Some(Action::Shred),
            Ok(pb::DisposalAction::Review) => Some(Action::Review),
            Ok(pb::DisposalAction::Unspecified) => {
                v.add(f("action"), "is required");
                None
            }
            Err(_) => {
                v.add(f("action"), "is not a known action");
                None
            }
        };
        let client_notice_days =
            bounded(&mut v, &f("client_notice_days"), r.client_notice_days, 3650);
        if r.basis.trim().is_empty() || r.basis.chars().count() > 500 {
            v.add(f("basis"), "is required, at most 500 characters");
        }
        let practice_area = confidant_runtime::matter::practice_area_key(&r.practice_area);
        if practice_area.chars().count() > confidant_runtime::matter::PRACTICE_AREA_MAX
            || practice_area.chars().any(char::is_control)
        {
            v.add(
                f("practice_area"),
                "must be at most 64 characters, without control characters",
            );
        }
        let jurisdiction =
            confidant_runtime::matter::jurisdiction(&mut v, &f("jurisdiction"), &r.jurisdiction);
        match (category, period, trigger, action, v.is_empty()) {
            (Some(category), Some(period), Some(trigger), Some(action), true) => Ok(Self {
                category,
                period,
                trigger,
                action,
                client_notice_days,
                basis: r.basis.trim().to_owned(),
                practice_area: (!practice_area.is_empty()).then_some(practice_area),
                jurisdiction,
            }),
            _ => Err(v),
        }
    }
}

/// What is known about a scope when its due date is computed.
#[derive(Debug, Clone, Default)]
pub struct ScopeFacts {
    /// When the scope was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Whether the scope belongs to a matter.
    pub has_matter: bool,
    /// The latest closing of its matter.
    pub matter_closed_at: Option<DateTime<Utc>>,
    /// The latest end of the client relationship.
    pub relationship_ended_at: Option<DateTime<Utc>>,
    /// The latest occurrence of each named event (client-wide or of the
    /// scope's matter).
    pub named: Vec<(String, DateTime<Utc>)>,
}

/// When a scope falls due under `rules`, or `None` while its trigger has not
/// happened (the scope is kept until it does).
pub fn due_at(rules: &Rules, facts: &ScopeFacts) -> Option<DateTime<Utc>> {
    let from = match &rules.trigger {
        Trigger::Creation => facts.created_at?,
        Trigger::MatterClosed if facts.has_matter => facts.matter_closed_at?,
        Trigger::MatterClosed => return None,
        Trigger::RelationshipEnded => facts.relationship_ended_at?,
        Trigger::Named(name) => facts
            .named
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, at)| *at)
            .max()?,
    };
    rules.period.after(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    fn rules(trigger: Trigger, years: u32, months: u32, days: u32) -> Rules {
        Rules {
            category: Category::MatterFile,
            period: Period {
                years,
                months,
                days,
            },
            trigger,
            action: Action::Review,
            client_notice_days: 0,
            basis: "test".into(),
            practice_area: None,
            jurisdiction: None,
        }
    }

    #[test]
    fn the_most_specific_policy_fits_a_matter() {
        let class = |area: Option<&str>, place: Option<&str>| Rules {
            practice_area: area.map(str::to_owned),
            jurisdiction: place.map(str::to_owned),
            ..rules(Trigger::Creation, 1, 0, 0)
        };
        let plain = class(None, None);
        let probate = class(Some("probate"), None);
        let us = class(None, Some("US"));
        let ny = class(None, Some("US-NY"));
        let ny_probate = class(Some("probate"), Some("US-NY"));
        let all = [&plain, &probate, &us, &ny, &ny_probate];
        let best = |area: Option<&str>, place: Option<&str>| {
            all.iter()
                .filter_map(|r| Some((r.fit("matter_file", area, place)?, *r)))
                .max_by_key(|(fit, _)| *fit)
                .map(|(_, r)| r.clone())
        };
        assert_eq!(
            best(Some("Probate"), Some("US-NY")),
            Some(ny_probate.clone())
        );
        assert_eq!(best(Some("tax"), Some("US-NY")), Some(ny.clone()));
        assert_eq!(best(Some("probate"), Some("US-CA")), Some(us.clone()));
        assert_eq!(best(Some("probate"), Some("GB")), Some(probate.clone()));
        assert_eq!(best(None, None), Some(plain.clone()));
        assert_eq!(plain.fit("contact_details", None, None), None);
    }

    #[test]
    fn periods_count_in_calendar_terms_from_their_trigger() {
        let facts = ScopeFacts {
            created_at: Some(at(2020, 1, 31)),
            has_matter: true,
            matter_closed_at: Some(at(2021, 6, 30)),
            relationship_ended_at: None,
            named: vec![
                ("limitation_expiry".into(), at(2022, 3, 1)),
                ("limitation_expiry".into(), at(2023, 3, 1)),
            ],
        };
        // Month ends clamp: 31 January plus one month is 29 February.
        assert_eq!(
            due_at(&rules(Trigger::Creation, 0, 1, 0), &facts),
            Some(at(2020, 2, 29))
        );
        assert_eq!(
            due_at(&rules(Trigger::MatterClosed, 6, 0, 0), &facts),
            Some(at(2027, 6, 30))
        );
        assert_eq!(
            due_at(
                &rules(Trigger::Named("limitation_expiry".into()), 0, 0, 10),
                &facts
            ),
            Some(at(2023, 3, 11)),
            "the latest occurrence counts"
        );
        // Not happened yet: kept until it does.
        assert_eq!(
            due_at(&rules(Trigger::RelationshipEnded, 1, 0, 0), &facts),
            None
        );
        assert_eq!(
            due_at(&rules(Trigger::Named("other".into()), 1, 0, 0), &facts),
            None
        );
        // A client-level scope never falls due on a matter closing.
        let client_level = ScopeFacts {
            has_matter: false,
            ..facts
        };
        assert_eq!(
            due_at(&rules(Trigger::MatterClosed, 6, 0, 0), &client_level),
            None
        );
    }

    #[test]
    fn bad_rules_are_named_field_by_field() {
        let bad = pb::PolicyRules {
            category: 42,
            period: Some(pb::Period {
                years: -1,
                months: 2000,
                days: 0,
            }),
            trigger: pb::Trigger::NamedEvent as i32,
            trigger_event_name: "Bad Name".into(),
            action: 0,
            client_notice_days: -3,
            basis: String::new(),
            practice_area: "x".repeat(65),
            jurisdiction: "USA".into(),
        };
        let err = Rules::parse(Some(&bad), "rules").unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules.category",
                "rules.period.years",
                "rules.period.months",
                "rules.trigger_event_name",
                "rules.action",
                "rules.client_notice_days",
                "rules.basis",
                "rules.practice_area",
                "rules.jurisdiction"
            ]
        );
    }
}
