//! Vault vocabulary parsed at the boundary: categories, field types,
//! purposes, field names and whole records. Past [`NewRecord::parse`] a
//! record is known to be well formed.

use confidant_proto::vault::v1 as pb;
use confidant_runtime::audit::MAX_RECORD_FIELDS;
use confidant_runtime::error::Violations;
use uuid::Uuid;

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident : $pb:ty { $($variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = $text] $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored (and audited) name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// From the stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// From the API value; `None` for unspecified or unknown.
            pub fn from_proto(value: i32) -> Option<Self> {
                match <$pb>::try_from(value).ok()? {
                    $(<$pb>::$variant => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The API value.
            pub fn to_proto(self) -> $pb {
                match self {
                    $($name::$variant => <$pb>::$variant,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// What kind of client data a record holds.
    Category: pb::DataCategory {
        IdentityDocument => "identity_document",
        ContactDetails => "contact_details",
        Financial => "financial",
        PrivilegedCommunication => "privileged_communication",
        Health => "health",
        MatterFile => "matter_file",
    }
);

named_enum!(
    /// The type of a field's value.
    FieldType: pb::FieldType {
        Text => "text",
        Email => "email",
        Phone => "phone",
        Date => "date",
        Number => "number",
        NationalId => "national_id",
        AccountNumber => "account_number",
        Address => "address",
    }
);

named_enum!(
    /// Why client data is read.
    Purpose: pb::Purpose {
        LegalAdvice => "legal_advice",
        Billing => "billing",
        Litigation => "litigation",
        ComplianceReview => "compliance_review",
        ClientRequest => "client_request",
    }
);

/// The scope a record belongs to: its key and its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScopeRef {
    /// The client.
    pub client_id: Uuid,
    /// The matter, for matter data.
    pub matter_id: Option<Uuid>,
    /// The category.
    pub category: Category,
}

impl ScopeRef {
    /// The unique name stored with the scope.
    pub fn name(&self) -> String {
        let matter = self
            .matter_id
            .map_or_else(|| "-".to_owned(), |m| m.to_string());
        format!("{}/{matter}/{}", self.client_id, self.category)
    }
}

/// Limits that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest field value, bytes.
    pub max_field_bytes: usize,
    /// Most fields per record.
    pub max_fields: usize,
}

/// One validated field.
#[derive(Debug, Clone)]
pub struct NewField {
    /// Its name.
    pub name: String,
    /// Its type.
    pub field_type: FieldType,
    /// Its value in clear (zeroized when dropped).
    pub value: zeroize::Zeroizing<String>,
}

/// A validated record to store.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Its scope.
    pub scope: ScopeRef,
    /// Its fields, in the order given.
    pub fields: Vec<NewField>,
    /// An original that belongs to the client: never shredded by schedule.
    pub original: bool,
}

/// The most characters of a justification.
pub const MAX_JUSTIFICATION_CHARS: usize = 1_000;
/// The most characters of text sealed for the audit log.
pub const MAX_SEALED_TEXT_CHARS: usize = 4_000;
/// The most items of a batch.
pub const MAX_BATCH: usize = 500;

/// Parses a required UUID, naming `field` when it is missing or malformed.
pub fn required_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        v.add(field, "is required");
        return None;
    }
    optional_uuid(v, field, value)
}

/// Parses an optional UUID (empty means none).
pub fn optional_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
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

/// Parses a required category.
pub fn required_category(v: &mut Violations, field: &str, value: i32) -> Option<Category> {
    let parsed = Category::from_proto(value);
    if parsed.is_none() {
        v.add(
            field,
            if value == 0 {
                "is required"
            } else {
                "is not a known data category"
            },
        );
    }
    parsed
}

/// Parses an optional category (unspecified means any).
pub fn optional_category(v: &mut Violations, field: &str, value: i32) -> Option<Category> {
    if value == 0 {
        return None;
    }
    let parsed = Category::from_proto(value);
    if parsed.is_none() {
        v.add(field, "is not a known data category");
    }
    parsed
}

/// Parses the purpose and justification of a read.
pub fn purpose(v: &mut Violations, purpose: i32, justification: &str) -> Option<Purpose> {
    let parsed = Purpose::from_proto(purpose);
    if parsed.is_none() {
        v.add(
            "purpose",
            if purpose == 0 {
                "is required: every read names its purpose"
            } else {
                "is not a known purpose"
            },
        );
    }
    if justification.chars().count() > MAX_JUSTIFICATION_CHARS {
        v.add("justification", "must be at most 1000 characters");
    }
    parsed
}

/// Which fields of a record a read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FieldSelection {
    /// Every field (no read mask, an empty one, or `*`).
    #[default]
    All,
    /// Only these, in the order of the read mask's paths (each a valid
    /// field name, none twice).
    Only(Vec<String>),
}

impl FieldSelection {
    /// Whether the field named `name` is read.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == name),
        }
    }

    /// The violations of a record whose fields are `present`: one per named
    /// field it lacks, at that field's path of the read mask.
    pub fn missing_from<'a>(&self, present: impl Iterator<Item = &'a str> + Clone) -> Violations {
        let mut v = Violations::new();
        if let Self::Only(names) = self {
            for (i, name) in names.iter().enumerate() {
                if !present.clone().any(|p| p == name) {
                    v.add(
                        format!("read_mask.paths[{i}]"),
                        "names no field of the record",
                    );
                }
            }
        }
        v
    }
}

/// The prefix of a read mask's paths: they name the response's `fields`.
const FIELDS_PATH: &str = "fields.";

/// Parses a read's field mask (AIP-157): each path `fields.<field name>`, or
/// the single path `*`; unset or empty reads every field.
pub fn read_mask(v: &mut Violations, mask: Option<&prost_types::FieldMask>) -> FieldSelection {
    let paths = mask.map_or(&[][..], |m| m.paths.as_slice());
    if paths.is_empty() || paths == ["*"] {
        return FieldSelection::All;
    }
    if paths.len() > MAX_RECORD_FIELDS {
        v.add(
            "read_mask.paths",
            format!("must hold at most {MAX_RECORD_FIELDS} paths"),
        );
        return FieldSelection::All;
    }
    let mut names: Vec<String> = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let at = format!("read_mask.paths[{i}]");
        match path.strip_prefix(FIELDS_PATH) {
            Some(name) if valid_field_name(name) => {
                if names.iter().any(|n| n == name) {
                    v.add(at, "names a field already named");
                }
                names.push(name.to_owned());
            }
            _ if path == "*" => v.add(at, "must be the only path when it is `*`"),
            _ => v.add(
                at,
                "must be `fields.<field name>` (lowercase letters, digits or '_', starting with a letter) or `*`",
            ),
        }
    }
    FieldSelection::Only(names)
}

fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a value against its type; the rule broken, if any.
fn value_rule(field_type: FieldType, value: &str) -> Option<&'static str> {
    let value = value.trim();
    match field_type {
        FieldType::Text | FieldType::Address => None,
        FieldType::Email => {
            let ok = value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !value.chars().any(char::is_whitespace)
            });
            (!ok).then_some("must be an email address")
        }
        FieldType::Phone => {
            let digits = value.chars().filter(char::is_ascii_digit).count();
            let ok = (6..=20).contains(&digits)
                && value
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c));
            (!ok).then_some("must be a telephone number (digits, spaces, + - ( ) .)")
        }
        FieldType::Date => chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .is_err()
            .then_some("must be a date YYYY-MM-DD"),
        FieldType::Number => (value.parse::<f64>().map_or(true, |n| !n.is_finite()))
            .then_some("must be a decimal number"),
        FieldType::NationalId | FieldType::AccountNumber => {
            let ok = (4..=64).contains(&value.len())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-');
            (!ok).then_some("must be 4 to 64 letters, digits, spaces or hyphens")
        }
    }
}

/// Validates the fields of a request (`{prefix}.fields[i]`, or
/// `fields[i]` with no prefix): names, types,
/// values and their limits, each name once. Every violation is added to `v`;
/// the fields with a known type are returned.
fn parse_fields(
    v: &mut Violations,
    fields: &[pb::Field],
    limits: Limits,
    prefix: &str,
) -> Vec<NewField> {
    let mut out = Vec::with_capacity(fields.len());
    let mut seen = std::collections::HashSet::new();
    for (i, field) in fields.iter().enumerate() {
        let at = if prefix.is_empty() {
            format!("fields[{i}]")
        } else {
            format!("{prefix}.fields[{i}]")
        };
        if !valid_field_name(&field.name) {
            v.add(
                format!("{at}.name"),
                "must be 1 to 64 lowercase letters, digits or '_', starting with a letter",
            );
        } else if !seen.insert(field.name.as_str()) {
            v.add(format!("{at}.name"), "must be unique in the record");
        }
        let field_type = FieldType::from_proto(field.r#type);
        if field_type.is_none() {
            v.add(
                format!("{at}.type"),
                if field.r#type == 0 {
                    "is required"
                } else {
                    "is not a known field type"
                },
            );
        }
        if field.value.len() > limits.max_field_bytes {
            v.add(
                format!("{at}.value"),
                format!("must be at most {} bytes", limits.max_field_bytes),
            );
        } else if let Some(t) = field_type
            && let Some(rule) = value_rule(t, &field.value)
        {
            v.add(format!("{at}.value"), rule);
        }
        if field.masked {
            v.add(
                format!("{at}.masked"),
                "is set by the vault in responses only",
            );
        }
        if let Some(field_type) = field_type {
            out.push(NewField {
                name: field.name.clone(),
                field_type,
                value: zeroize::Zeroizing::new(field.value.clone()),
            });
        }
    }
    out
}

impl NewRecord {
    /// Validates an API record; every violation is named, under `prefix`
    /// (e.g. `record` or `records[3]`).
    pub fn parse(
        record: Option<&pb::NewRecord>,
        limits: Limits,
        prefix: &str,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let Some(record) = record else {
            v.add(prefix, "is required");
            return Err(v);
        };
        let client_id = required_uuid(&mut v, &format!("{prefix}.client_id"), &record.client_id);
        let matter_id = optional_uuid(&mut v, &format!("{prefix}.matter_id"), &record.matter_id);
        let category = required_category(&mut v, &format!("{prefix}.category"), record.category);
        if record.fields.is_empty() {
            v.add(format!("{prefix}.fields"), "must hold at least one field");
        }
        if record.fields.len() > limits.max_fields {
            v.add(
                format!("{prefix}.fields"),
                format!("must hold at most {} fields", limits.max_fields),
            );
        }
        let fields = parse_fields(&mut v, &record.fields, limits, prefix);
        match (client_id, category, v.is_empty()) {
            (Some(client_id), Some(category), true) => Ok(Self {
                scope: ScopeRef {
                    client_id,
                    matter_id,
                    category,
                },
                fields,
                original: record.original,
            }),
            _ => Err(v),
        }
    }
}

/// A validated correction of a record (CorrectRecord).
#[derive(Debug, Clone)]
pub struct Correction {
    /// The version corrected.
    pub record_id: Uuid,
    /// Fields set: each replaces the field of its name, or is added.
    pub set: Vec<NewField>,
    /// Names of fields removed.
    pub remove: Vec<String>,
    /// Why (sealed in the audit event).
    pub reason: String,
}

impl Correction {
    /// Validates a CorrectRecord request; every violation is named. Whether
    /// the fields removed exist, and how many fields the new version has, is
    /// checked against the record itself.
    pub fn parse(req: &pb::CorrectRecordRequest, limits: Limits) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let record_id = required_uuid(&mut v, "record_id", &req.record_id);
        if req.fields.len() > limits.max_fields {
            v.add(
                "fields",
                format!("must hold at most {} fields", limits.max_fields),
            );
        }
        let set = parse_fields(&mut v, &req.fields, limits, "");
        if req.fields.len() <= limits.max_fields
            && req.fields.len() + req.remove_fields.len() > limits.max_fields
        {
            v.add(
                "remove_fields",
                format!(
                    "with fields, must name at most {} fields",
                    limits.max_fields
                ),
            );
        }
        if req.fields.is_empty() && req.remove_fields.is_empty() {
            v.add(
                "fields",
                "must set at least one field, or remove_fields name one",
            );
        }
        let mut removed = std::collections::HashSet::new();
        for (i, name) in req.remove_fields.iter().enumerate() {
            let at = format!("remove_fields[{i}]");
            if !valid_field_name(name) {
                v.add(
                    at,
                    "must be 1 to 64 lowercase letters, digits or '_', starting with a letter",
                );
            } else if !removed.insert(name.as_str()) {
                v.add(at, "must name each field once");
            } else if req.fields.iter().any(|f| f.name == *name) {
                v.add(at, "must not name a field that `fields` sets");
            }
        }
        let reason = req.reason.trim();
        if reason.is_empty() {
            v.add("reason", "is required: say why the record is corrected");
        } else if reason.chars().count() > MAX_JUSTIFICATION_CHARS {
            v.add("reason", "must be at most 1000 characters");
        }
        match record_id {
            Some(record_id) if v.is_empty() => Ok(Self {
                record_id,
                set,
                remove: req.remove_fields.clone(),
                reason: reason.to_owned(),
            }),
            _ => Err(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_field_bytes: 16,
        max_fields: 3,
    };

    fn field(name: &str, t: pb::FieldType, value: &str) -> pb::Field {
        pb::Field {
            name: name.into(),
            r#type: t as i32,
            value: value.into(),
            masked: false,
        }
    }

    fn fields_of(v: &Violations) -> Vec<String> {
        v.as_slice().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_correction_names_at_most_max_fields_and_a_reason() {
        let request = |set: usize, remove: &[&str], reason: &str| pb::CorrectRecordRequest {
            record_id: Uuid::now_v7().to_string(),
            fields: (0..set)
                .map(|i| field(&format!("f{i}"), pb::FieldType::Text, "x"))
                .collect(),
            remove_fields: remove.iter().map(|s| (*s).to_owned()).collect(),
            reason: reason.into(),
            request_id: String::new(),
        };
        let ok = Correction::parse(&request(2, &["old"], " moved "), LIMITS).unwrap();
        assert_eq!((ok.set.len(), ok.reason.as_str()), (2, "moved"));
        let err = Correction::parse(&request(2, &["a", "b"], "moved"), LIMITS).unwrap_err();
        assert_eq!(fields_of(&err), ["remove_fields"]);
        let err = Correction::parse(&request(4, &[], ""), LIMITS).unwrap_err();
        assert_eq!(fields_of(&err), ["fields", "reason"]);
        let err = Correction::parse(&request(0, &[], "moved"), LIMITS).unwrap_err();
        assert_eq!(fields_of(&err), ["fields"]);
    }

    #[test]
    fn a_well_formed_record_parses_into_its_scope() {
        let client = Uuid::now_v7();
        let record = pb::NewRecord {
            client_id: client.to_string(),
            matter_id: String::new(),
            category: pb::DataCategory::ContactDetails as i32,
            fields: vec![
                field("email", pb::FieldType::Email, "ao@example.org"),
                field("phone", pb::FieldType::Phone, "+44 20 7946 00"),
            ],
            original: false,
        };
        let parsed = NewRecord::parse(Some(&record), LIMITS, "record").unwrap();
        assert_eq!(parsed.scope.client_id, client);
        assert_eq!(parsed.scope.matter_id, None);
        assert_eq!(parsed.scope.name(), format!("{client}/-/contact_details"));
        assert_eq!(parsed.fields.len(), 2);
    }

    #[test]
    fn every_broken_rule_is_named_at_once() {
        let record = pb::NewRecord {
            client_id: "not-a-uuid".into(),
            matter_id: "also-not".into(),
            category: 99,
            fields: vec![
                field("Surname", pb::FieldType::Text, "x"),
                field("dob", pb::FieldType::Date, "31/12/1980"),
                field("dob", pb::FieldType::Text, "x"),
                field("note", pb::FieldType::Text, "seventeen bytes!!"),
            ],
            original: false,
        };
        let err = NewRecord::parse(Some(&record), LIMITS, "record").unwrap_err();
        assert_eq!(
            fields_of(&err),
            [
                "record.client_id",
                "record.matter_id",
                "record.category",
                "record.fields",
                "record.fields[0].name",
                "record.fields[1].value",
                "record.fields[2].name",
                "record.fields[3].value",
            ]
        );
        let empty = pb::NewRecord {
            client_id: Uuid::now_v7().to_string(),
            category: 0,
            fields: vec![field("n", pb::FieldType::Unspecified, "")],
            ..pb::NewRecord::default()
        };
        let err = NewRecord::parse(Some(&empty), LIMITS, "records[2]").unwrap_err();
        assert_eq!(
            fields_of(&err),
            ["records[2].category", "records[2].fields[0].type"]
        );
    }

    #[test]
    fn values_follow_their_type() {
        for (t, good, bad) in [
            (FieldType::Email, "a@b.org", "a@b"),
            (FieldType::Phone, "+1 (555) 010-0000", "call me"),
            (FieldType::Date, "1980-12-31", "1980-13-01"),
            (FieldType::Number, "-12.5", "NaN"),
            (FieldType::NationalId, "AB 12 34 56 C", "x"),
            (
                FieldType::AccountNumber,
                "GB29NWBK60161331926819",
                "12;DROP",
            ),
        ] {
            assert_eq!(value_rule(t, good), None, "{t} {good}");
            assert!(value_rule(t, bad).is_some(), "{t} {bad}");
        }
    }

    #[test]
    fn a_read_names_its_purpose() {
        let mut v = Violations::new();
        assert_eq!(purpose(&mut v, 0, ""), None);
        assert_eq!(purpose(&mut v, 42, &"x".repeat(1001)), None);
        assert_eq!(fields_of(&v), ["purpose", "purpose", "justification"]);
        let mut v = Violations::new();
        assert_eq!(
            purpose(&mut v, pb::Purpose::Billing as i32, "invoice 42"),
            Some(Purpose::Billing)
        );
        assert!(v.is_empty());
    }

    fn mask(paths: &[&str]) -> prost_types::FieldMask {
        prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn a_read_mask_names_fields_or_reads_them_all() {
        for all in [None, Some(mask(&[])), Some(mask(&["*"]))] {
            let mut v = Violations::new();
            assert_eq!(read_mask(&mut v, all.as_ref()), FieldSelection::All);
            assert!(v.is_empty());
        }
        let mut v = Violations::new();
        let only = read_mask(&mut v, Some(&mask(&["fields.email", "fields.line_2"])));
        assert!(v.is_empty());
        assert_eq!(
            only,
            FieldSelection::Only(vec!["email".into(), "line_2".into()])
        );
        assert!(only.includes("email") && !only.includes("surname"));
        let missing = only.missing_from(["surname", "email"].into_iter());
        assert_eq!(fields_of(&missing), ["read_mask.paths[1]"]);
        assert_eq!(
            missing.as_slice()[0].description,
            "names no field of the record"
        );
        assert!(FieldSelection::All.missing_from([].into_iter()).is_empty());
    }

    #[test]
    fn every_bad_path_of_a_read_mask_is_named() {
        let mut v = Violations::new();
        read_mask(
            &mut v,
            Some(&mask(&[
                "fields.email",
                "email",
                "fields.Email",
                "fields.email",
                "*",
                "record.client_id",
                "fields.",
            ])),
        );
        assert_eq!(
            fields_of(&v),
            [
                "read_mask.paths[1]",
                "read_mask.paths[2]",
                "read_mask.paths[3]",
                "read_mask.paths[4]",
                "read_mask.paths[5]",
                "read_mask.paths[6]"
            ]
        );
        assert_eq!(v.as_slice()[2].description, "names a field already named");
        assert_eq!(
            v.as_slice()[3].description,
            "must be the only path when it is `*`"
        );
        let mut v = Violations::new();
        let many: Vec<String> = (0..=MAX_RECORD_FIELDS)
            .map(|i| format!("fields.f{i}"))
            .collect();
        read_mask(&mut v, Some(&prost_types::FieldMask { paths: many }));
        assert_eq!(fields_of(&v), ["read_mask.paths"]);
    }
}
