//! Audit events as the log accepts them: parsed and checked at the
//! boundary, so the store only ever sees valid events.

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{ActorKind, AuditEvent, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, MAX_RECORD_FIELDS, MAX_RELATED};
use confidant_runtime::error::Violations;
use prost::Message;
use uuid::Uuid;

/// Most events in one append.
pub const MAX_BATCH: usize = 1000;
/// Largest encoded event.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest sealed free text.
pub const MAX_SEALED_TEXT_BYTES: usize = 16 * 1024;
/// How far in the future an event's time may lie (clock skew).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

const MAX_ID_LEN: usize = 128;
/// Longest id or code of a related resource, in characters: a retention
/// policy's legal basis (at most 500) is one.
const MAX_RELATED_ID_CHARS: usize = 512;
const MAX_SHORT_TEXT: usize = 64;

/// An event that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    /// The event id (a UUIDv7).
    pub id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The action.
    pub action: Action,
    /// The actor kind.
    pub actor_kind: ActorKind,
    /// The actor id.
    pub actor_id: String,
    /// The client concerned, if any.
    pub client_id: Option<Uuid>,
    /// The matter concerned, if any.
    pub matter_id: Option<Uuid>,
    /// The outcome.
    pub outcome: Outcome,
    /// The producing service.
    pub source_service: String,
    /// The event as received, encoded: what the log stores and commits to.
    pub payload: Vec<u8>,
}

fn uuid_field(v: &mut Violations, field: &str, value: &str, required: bool) -> Option<Uuid> {
    if value.is_empty() {
        if required {
            v.add(field, "is required");
        }
        return None;
    }
    match Uuid::parse_str(value) {
        Ok(id) => Some(id),
        Err(_) => {
            v.add(field, "must be a UUID");
            None
        }
    }
}

fn short_code(v: &mut Violations, field: &str, value: &str) {
    if value.len() > MAX_SHORT_TEXT {
        v.add(
            field,
            format!("must be at most {MAX_SHORT_TEXT} characters"),
        );
    } else if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        v.add(
            field,
            "must use only lowercase letters, digits, '-' and '_'",
        );
    }
}

/// Checks one event of a batch sent by `caller` (the service name from the
/// peer certificate). Violations are reported under `prefix`
/// (e.g. `events[3]`).
pub fn validate_event(
    event: &AuditEvent,
    caller: &str,
    now: DateTime<Utc>,
    prefix: &str,
    v: &mut Violations,
) -> Option<ValidEvent> {
    let f = |name: &str| format!("{prefix}.{name}");
    let before = v.as_slice().len();

    let encoded_len = event.encoded_len();
    if encoded_len > MAX_EVENT_BYTES {
        v.add(
            prefix,
            format!("encoded event must be at most {MAX_EVENT_BYTES} bytes"),
        );
    }
    let id = uuid_field(v, &f("id"), &event.id, true);
    if let Some(id) = id
        && id.get_version_num() != 7
    {
        v.add(f("id"), "must be a UUIDv7");
    }
    let occurred_at = match &event.time {
        None => {
            v.add(f("time"), "is required");
            None
        }
        Some(ts) => match DateTime::<Utc>::from_timestamp(
            ts.seconds,
            u32::try_from(ts.nanos).unwrap_or(u32::MAX),
        ) {
            None => {
                v.add(f("time"), "must be a valid timestamp");
                None
            }
            Some(t) if (t - now).num_seconds() > MAX_CLOCK_SKEW_SECS => {
                v.add(f("time"), "must not lie in the future");
                None
            }
            Some(t) => Some(t),
        },
    };
    if event.source_service != caller {
        v.add(f("source_service"), "must name the calling service");
    }
    let action = match event.action.parse::<Action>() {
        Ok(a) => Some(a),
        Err(_) if event.action.is_empty() => {
            v.add(f("action"), "is required");
            None
        }
        Err(_) => {
            v.add(f("action"), "is not a known audit action");
            None
        }
    };
    // The log's own verbs (its signing key, incidents, detection, reports)
    // are the audit service's alone: a change of signing key recorded by
    // another service would hand the log to a key the audit service never held.
    if action.is_some_and(|a| a.as_str().starts_with("audit."))
        && caller != ServiceName::Audit.as_str()
    {
        v.add(f("action"), "is recorded by the audit service alone");
    }
    let (actor_kind, actor_id) = match &event.actor {
        None => {
            v.add(f("actor"), "is required");
            (None, String::new())
        }
        Some(actor) => {
            let kind = match ActorKind::try_from(actor.kind) {
                Ok(ActorKind::Unspecified) | Err(_) => {
                    v.add(f("actor.kind"), "must be STAFF, CLIENT or SERVICE");
                    None
                }
                Ok(kind) => Some(kind),
            };
            if actor.id.is_empty() {
                v.add(f("actor.id"), "is required");
            } else if actor.id.len() > MAX_ID_LEN {
                v.add(
                    f("actor.id"),
                    format!("must be at most {MAX_ID_LEN} characters"),
                );
            }
            for (i, role) in actor.roles.iter().enumerate() {
                short_code(v, &f(&format!("actor.roles[{i}]")), role);
            }
            if actor.peer_identity.len() > 2 * MAX_ID_LEN {
                v.add(f("actor.peer_identity"), "is too long");
            }
            (kind, actor.id.clone())
        }
    };
    let (client_id, matter_id) = match &event.resource {
        None => {
            v.add(f("resource"), "is required");
            (None, None)
        }
        Some(r) => {
            if r.r#type.is_empty() {
                v.add(f("resource.type"), "is required");
            } else {
                short_code(v, &f("resource.type"), &r.r#type);
            }
            if r.id.len() > MAX_ID_LEN {
                v.add(
                    f("resource.id"),
                    format!("must be at most {MAX_ID_LEN} characters"),
                );
            }
            short_code(v, &f("resource.data_category"), &r.data_category);
            (
                uuid_field(v, &f("resource.client_id"), &r.client_id, false),
                uuid_field(v, &f("resource.matter_id"), &r.matter_id, false),
            )
        }
    };
    short_code(v, &f("purpose"), &event.purpose);
    short_code(v, &f("reason"), &event.reason);
    let outcome = match Outcome::try_from(event.outcome) {
        Ok(Outcome::Unspecified) | Err(_) => {
            v.add(f("outcome"), "must be ALLOWED, DENIED or FAILED");
            None
        }
        Ok(o) => Some(o),
    };
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if !event.trace_id.is_empty()
        && (event.trace_id.len() != 32 || !event.trace_id.chars().all(lower_hex))
    {
        v.add(f("trace_id"), "must be 32 lowercase hex digits");
    }
    if event.sealed_text.len() > MAX_SEALED_TEXT_BYTES {
        v.add(
            f("sealed_text"),
            format!("must be at most {MAX_SEALED_TEXT_BYTES} bytes"),
        );
    }
    let sealed_scope = uuid_field(
        v,
        &f("sealed_scope_id"),
        &event.sealed_scope_id,
        !event.sealed_text.is_empty(),
    );
    if sealed_scope.is_some() && event.sealed_text.is_empty() {
        v.add(
            f("sealed_scope_id"),
            "must be empty when there is no sealed_text",
        );
    }

    for (list, names) in [
        ("disclosed_fields", &event.disclosed_fields),
        ("changed_fields", &event.changed_fields),
    ] {
        if names.len() > MAX_RECORD_FIELDS {
            v.add(
                f(list),
                format!("must name at most {MAX_RECORD_FIELDS} fields"),
            );
        }
        for (i, name) in names.iter().enumerate() {
            let at = f(&format!("{list}[{i}]"));
            if name.is_empty() {
                v.add(at, "must not be empty");
            } else {
                short_code(v, &at, name);
            }
        }
    }

    if event.related.len() > MAX_RELATED {
        v.add(
            f("related"),
            format!("must name at most {MAX_RELATED} resources"),
        );
    }
    for (i, related) in event.related.iter().enumerate() {
        let at = |name: &str| f(&format!("related[{i}].{name}"));
        if related.r#type.is_empty() {
            v.add(at("type"), "is required");
        } else {
            short_code(v, &at("type"), &related.r#type);
        }
        if related.id.is_empty() {
            v.add(at("id"), "is required");
        } else if related.id.chars().count() > MAX_RELATED_ID_CHARS {
            // Characters, not bytes: a practice area of 64 characters, or a
            // policy's basis of 500, in any script passes.
            v.add(
                at("id"),
                format!("must be at most {MAX_RELATED_ID_CHARS} characters"),
            );
        } else if related.id.chars().any(char::is_control) {
            v.add(at("id"), "must not hold control characters");
        }
    }

    if v.as_slice().len() != before {
        return None;
    }
    Some(ValidEvent {
        id: id?,
        occurred_at: occurred_at?,
        action: action?,
        actor_kind: actor_kind?,
        actor_id,
        client_id,
        matter_id,
        outcome: outcome?,
        source_service: event.source_service.clone(),
        payload: event.encode_to_vec(),
    })
}

/// Checks a whole batch; every violation of every event is reported.
pub fn validate_batch(
    events: &[AuditEvent],
    caller: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ValidEvent>, Violations> {
    let mut v = Violations::new();
    if events.is_empty() {
        v.add("events", "must hold at least one event");
    }
    if events.len() > MAX_BATCH {
        v.add("events", format!("must hold at most {MAX_BATCH} events"));
        return Err(v);
    }
    let valid: Vec<_> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| validate_event(e, caller, now, &format!("events[{i}]"), &mut v))
        .collect();
    if v.is_empty() { Ok(valid) } else { Err(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_proto::audit::v1::RelatedResource;
    use confidant_runtime::ServiceName;

    fn good() -> AuditEvent {
        confidant_runtime::audit::service_event(
            ServiceName::Vault,
            "t",
            Action::ServiceStarted,
            Outcome::Allowed,
        )
    }

    fn fields(v: &Violations) -> Vec<String> {
        v.as_slice().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_well_formed_event_passes() {
        let events = validate_batch(&[good()], "vault", Utc::now()).unwrap();
        assert_eq!(events[0].action, Action::ServiceStarted);
    }

    #[test]
    fn every_broken_field_is_named() {
        let mut bad = good();
        bad.id = "42".into();
        bad.action = "vault.record.peek".into();
        bad.outcome = 0;
        bad.trace_id = "XYZ".into();
        bad.resource.as_mut().unwrap().client_id = "nope".into();
        let v = validate_batch(&[good(), bad], "vault", Utc::now()).unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "events[1].id",
                "events[1].action",
                "events[1].resource.client_id",
                "events[1].outcome",
                "events[1].trace_id"
            ]
        );
        assert_eq!(v.as_slice()[1].description, "is not a known audit action");
    }

    #[test]
    fn a_service_cannot_append_in_another_services_name() {
        let v = validate_batch(&[good()], "intake", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].source_service"]);
    }

    #[test]
    fn only_the_audit_service_records_the_logs_own_actions() {
        let mut rotation = good();
        rotation.action = Action::AuditSigningKeyRotated.as_str().into();
        let v = validate_batch(&[rotation.clone()], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].action"]);
        assert_eq!(
            v.as_slice()[0].description,
            "is recorded by the audit service alone"
        );
        rotation.source_service = "audit".into();
        assert!(validate_batch(&[rotation], "audit", Utc::now()).is_ok());
    }

    #[test]
    fn oversize_events_and_batches_are_refused() {
        let mut big = good();
        big.sealed_text = vec![0; MAX_EVENT_BYTES + 1];
        big.sealed_scope_id = Uuid::new_v4().to_string();
        let v = validate_batch(&[big], "vault", Utc::now()).unwrap_err();
        assert!(fields(&v).contains(&"events[0]".to_owned()));
        assert!(fields(&v).contains(&"events[0].sealed_text".to_owned()));

        let many = vec![good(); MAX_BATCH + 1];
        let v = validate_batch(&many, "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events"]);
        let v = validate_batch(&[], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events"]);
    }

    #[test]
    fn disclosed_fields_are_field_names_and_bounded() {
        let mut read = good();
        read.disclosed_fields = vec!["passport_number".into()];
        assert!(validate_batch(&[read.clone()], "vault", Utc::now()).is_ok());
        read.disclosed_fields = vec!["surname".into(), String::new(), "Okafor Ngozi".into()];
        let v = validate_batch(&[read.clone()], "vault", Utc::now()).unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "events[0].disclosed_fields[1]",
                "events[0].disclosed_fields[2]"
            ]
        );
        read.disclosed_fields = vec!["f".into(); MAX_RECORD_FIELDS + 1];
        let v = validate_batch(&[read], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].disclosed_fields"]);
        // A correction's changed fields follow the same rules.
        let mut corrected = good();
        corrected.changed_fields = vec!["surname".into()];
        assert!(validate_batch(&[corrected.clone()], "vault", Utc::now()).is_ok());
        corrected.changed_fields = vec!["New Surname Okafor".into()];
        let v = validate_batch(&[corrected.clone()], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].changed_fields[0]"]);
        corrected.changed_fields = vec!["f".into(); MAX_RECORD_FIELDS + 1];
        let v = validate_batch(&[corrected], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].changed_fields"]);
    }

    #[test]
    fn related_resources_are_typed_ids_and_bounded() {
        let mut wall = good();
        let staff = Uuid::now_v7().to_string();
        wall.related = vec![
            RelatedResource {
                r#type: "staff".into(),
                id: staff.clone(),
            },
            RelatedResource {
                r#type: "matter".into(),
                id: Uuid::now_v7().to_string(),
            },
        ];
        assert!(validate_batch(&[wall.clone()], "vault", Utc::now()).is_ok());
        // A practice area of 64 characters, 192 bytes.
        wall.related = vec![RelatedResource {
            r#type: "practice_area".into(),
            id: "家".repeat(64),
        }];
        assert!(validate_batch(&[wall.clone()], "vault", Utc::now()).is_ok());
        wall.related = vec![
            RelatedResource {
                r#type: String::new(),
                id: staff.clone(),
            },
            RelatedResource {
                r#type: "staff".into(),
                id: "line\nbreak".into(),
            },
            RelatedResource {
                r#type: "Staff Member".into(),
                id: String::new(),
            },
        ];
        let v = validate_batch(&[wall.clone()], "vault", Utc::now()).unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "events[0].related[0].type",
                "events[0].related[1].id",
                "events[0].related[2].type",
                "events[0].related[2].id"
            ]
        );
        // The most a hold or a wall may name fits in one event.
        wall.related = (0..MAX_RELATED)
            .map(|_| RelatedResource {
                r#type: "scope".into(),
                id: Uuid::now_v7().to_string(),
            })
            .collect();
        assert!(validate_batch(&[wall.clone()], "vault", Utc::now()).is_ok());
        wall.related.push(RelatedResource {
            r#type: "scope".into(),
            id: staff,
        });
        let v = validate_batch(&[wall], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].related"]);
    }

    #[test]
    fn events_from_the_future_and_v4_ids_are_refused() {
        let mut e = good();
        e.id = Uuid::new_v4().to_string();
        e.time = Some(prost_types::Timestamp {
            seconds: Utc::now().timestamp() + 3600,
            nanos: 0,
        });
        let v = validate_batch(&[e], "vault", Utc::now()).unwrap_err();
        assert_eq!(fields(&v), ["events[0].id", "events[0].time"]);
    }
}
