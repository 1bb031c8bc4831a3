//! Forms and answers, validated at the boundary: a form definition is
//! checked when it is published (every broken rule named), and a
//! submission's answers are checked against the version they answer (every
//! violation named, nothing stored from an invalid one).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use confidant_proto::intake::v1 as pb;
use confidant_runtime::error::Violations;
use confidant_vault::domain::Category;
use serde_json::{Value as Json, json};

/// Longest form title and field label.
pub const MAX_TITLE: usize = 200;
/// Most fields in a form.
pub const MAX_FIELDS: usize = 200;
/// Default and largest `max_length` of a text answer.
pub const DEFAULT_MAX_LENGTH: usize = 1_000;
/// Largest `max_length` a form may set.
pub const MAX_MAX_LENGTH: usize = 10_000;
/// Longest pattern.
pub const MAX_PATTERN: usize = 500;
/// Most choices of a choice field.
pub const MAX_CHOICES: usize = 100;
/// Longest privacy notice.
pub const MAX_NOTICE: usize = 100_000;
/// Default largest file of a file field.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Largest file a form may accept (the vault's default document limit).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// Most media types of a file field.
pub const MAX_MEDIA_TYPES: usize = 20;

/// Whether `s` looks like a media type: `type/subtype`, lowercase.
pub fn valid_media_type(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    };
    s.split_once('/').is_some_and(|(t, sub)| ok(t) && ok(sub))
}

/// The kind of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Text,
    /// An e-mail address.
    Email,
    /// A telephone number.
    Phone,
    /// YYYY-MM-DD.
    Date,
    /// A decimal number.
    Number,
    /// One of the choices.
    Choice,
    /// A national identity number.
    NationalId,
    /// A postal address.
    Address,
    /// "true" when given.
    Consent,
    /// A file uploaded with UploadFormFile: the answer is its upload id.
    File,
}

impl Kind {
    const NAMES: [(Kind, &'static str, pb::FieldKind); 10] = [
        (Kind::Text, "text", pb::FieldKind::Text),
        (Kind::Email, "email", pb::FieldKind::Email),
        (Kind::Phone, "phone", pb::FieldKind::Phone),
        (Kind::Date, "date", pb::FieldKind::Date),
        (Kind::Number, "number", pb::FieldKind::Number),
        (Kind::Choice, "choice", pb::FieldKind::Choice),
        (Kind::NationalId, "national_id", pb::FieldKind::NationalId),
        (Kind::Address, "address", pb::FieldKind::Address),
        (Kind::Consent, "consent", pb::FieldKind::Consent),
        (Kind::File, "file", pb::FieldKind::File),
    ];

    fn from_proto(v: i32) -> Option<Kind> {
        Self::NAMES
            .iter()
            .find(|(_, _, p)| *p as i32 == v)
            .map(|(k, _, _)| *k)
    }

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(k, _, _)| *k == self)
            .map_or("text", |(_, n, _)| n)
    }

    fn parse(name: &str) -> Option<Kind> {
        Self::NAMES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(k, _, _)| *k)
    }

    /// The protobuf value.
    pub fn proto(self) -> pb::FieldKind {
        Self::NAMES
            .iter()
            .find(|(k, _, _)| *k == self)
            .map_or(pb::FieldKind::Text, |(_, _, p)| *p)
    }

    /// The vault field type its answers are stored as.
    pub fn vault_type(self) -> confidant_proto::vault::v1::FieldType {
        use confidant_proto::vault::v1::FieldType as T;
        match self {
            Kind::Text | Kind::Choice | Kind::Consent | Kind::File => T::Text,
            Kind::Email => T::Email,
            Kind::Phone => T::Phone,
            Kind::Date => T::Date,
            Kind::Number => T::Number,
            Kind::NationalId => T::NationalId,
            Kind::Address => T::Address,
        }
    }

    fn is_text(self) -> bool {
        !matches!(
            self,
            Kind::Date | Kind::Number | Kind::Choice | Kind::Consent | Kind::File
        )
    }
}

/// How sensitive an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    /// Personal data.
    Personal,
    /// Special-category data.
    SpecialCategory,
    /// Privileged communication.
    Privileged,
}

impl Sensitivity {
    const NAMES: [(Sensitivity, &'static str, pb::Sensitivity); 3] = [
        (Sensitivity::Personal, "personal", pb::Sensitivity::Personal),
        (
            Sensitivity::SpecialCategory,
            "special_category",
            pb::Sensitivity::SpecialCategory,
        ),
        (
            Sensitivity::Privileged,
            "privileged",
            pb::Sensitivity::Privileged,
        ),
    ];
}

impl Sensitivity {
    fn from_proto(v: i32) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, _, p)| *p as i32 == v)
            .map(|(s, _, _)| *s)
    }

    fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(s, _, _)| *s)
    }

    fn entry(self) -> (&'static str, pb::Sensitivity) {
        Self::NAMES
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or(("personal", pb::Sensitivity::Personal), |(_, n, p)| {
                (*n, *p)
            })
    }
}

/// The pattern as the form gave it, without the anchors added to it.
fn pattern_source(p: &regex::Regex) -> String {
    let s = p.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
        .to_owned()
}

/// A bound of a number or date field.
#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Number(f64),
    Date(NaiveDate),
}

/// One validated field of a form.
#[derive(Debug, Clone)]
pub struct Field {
    /// Name (also the vault field name).
    pub name: String,
    /// Label.
    pub label: String,
    /// Kind.
    pub kind: Kind,
    /// Required.
    pub required: bool,
    /// Fewest characters.
    pub min_length: usize,
    /// Most characters.
    pub max_length: usize,
    /// Whole-answer pattern.
    pub pattern: Option<regex::Regex>,
    min_value: Option<Bound>,
    max_value: Option<Bound>,
    raw_min: String,
    raw_max: String,
    /// Allowed values of a choice.
    pub choices: Vec<String>,
    /// Sensitivity.
    pub sensitivity: Sensitivity,
    /// The vault category of its answer.
    pub category: Category,
    /// Help text.
    pub help_text: String,
    /// File fields: the largest file.
    pub max_file_bytes: u64,
    /// File fields: the media types accepted.
    pub media_types: Vec<String>,
}

/// A validated form definition (what a version publishes).
#[derive(Debug, Clone)]
pub struct FormDefinition {
    /// Fields in order.
    pub fields: Vec<Field>,
}

/// Whether `name` is a form name: lowercase letters, digits and dashes,
/// starting with a letter, 1 to 64 characters.
pub fn valid_form_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix('-').unwrap_or(t);
    let mut parts = body.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    if t.len() > 40 || !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    if s.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn bound(kind: Kind, raw: &str) -> Result<Option<Bound>, &'static str> {
    if raw.is_empty() {
        return Ok(None);
    }
    match kind {
        Kind::Number => parse_number(raw)
            .map(|n| Some(Bound::Number(n)))
            .ok_or("must be a decimal number"),
        Kind::Date => parse_date(raw)
            .map(|d| Some(Bound::Date(d)))
            .ok_or("must be a date, YYYY-MM-DD"),
        _ => Err("only number and date fields have bounds"),
    }
}

fn compile_pattern(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|_| "must be a valid regular expression (RE2 syntax)".to_owned())
}

impl FormDefinition {
    /// Checks the fields of a form being published; every broken rule is
    /// named under `prefix[i].<field>`.
    pub fn parse(fields: &[pb::FormField], prefix: &str, v: &mut Violations) -> Option<Self> {
        let before = v.as_slice().len();
        if fields.is_empty() || fields.len() > MAX_FIELDS {
            v.add(prefix, format!("a form has 1 to {MAX_FIELDS} fields"));
        }
        let mut names = BTreeSet::new();
        let mut out = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let at = |x: &str| format!("{prefix}[{i}].{x}");
            if !valid_field_name(&f.name) {
                v.add(
                    at("name"),
                    "lowercase letters, digits and underscores, starting with a letter, at most 64",
                );
            } else if !names.insert(f.name.clone()) {
                v.add(at("name"), "must be unique in the form");
            }
            let label = f.label.trim();
            if label.is_empty() || label.chars().count() > MAX_TITLE {
                v.add(at("label"), format!("1 to {MAX_TITLE} characters"));
            }
            let kind = Kind::from_proto(f.kind);
            if kind.is_none() {
                v.add(at("kind"), "must be set to a known field kind");
            }
            let sensitivity = Sensitivity::from_proto(f.sensitivity);
            if sensitivity.is_none() {
                v.add(at("sensitivity"), "must be set");
            }
            let category = Category::from_proto(f.category);
            if category.is_none() {
                v.add(at("category"), "must be set to a data category");
            }
            let (min_length, max_length) = (f.min_length, f.max_length);
            if min_length < 0 {
                v.add(at("min_length"), "must not be negative");
            }
            let max_length = match usize::try_from(max_length) {
                Ok(0) => DEFAULT_MAX_LENGTH,
                Ok(n) if n <= MAX_MAX_LENGTH => n,
                _ => {
                    v.add(at("max_length"), format!("0 to {MAX_MAX_LENGTH}"));
                    DEFAULT_MAX_LENGTH
                }
            };
            let min_length = usize::try_from(min_length).unwrap_or(0);
            if min_length > max_length {
                v.add(at("min_length"), "must not exceed max_length");
            }
            let mut pattern = None;
            if !f.pattern.is_empty() {
                if f.pattern.len() > MAX_PATTERN {
                    v.add(at("pattern"), format!("at most {MAX_PATTERN} characters"));
                } else if kind.is_some_and(|k| !k.is_text()) {
                    v.add(at("pattern"), "only text-like fields take a pattern");
                } else {
                    match compile_pattern(&f.pattern) {
                        Ok(r) => pattern = Some(r),
                        Err(e) => v.add(at("pattern"), e),
                    }
                }
            }
            let mut bounds = (None, None);
            if let Some(k) = kind {
                match bound(k, &f.min_value) {
                    Ok(b) => bounds.0 = b,
                    Err(e) => v.add(at("min_value"), e),
                }
                match bound(k, &f.max_value) {
                    Ok(b) => bounds.1 = b,
                    Err(e) => v.add(at("max_value"), e),
                }
            }
            let ordered = match (&bounds.0, &bounds.1) {
                (Some(Bound::Number(a)), Some(Bound::Number(b))) => a <= b,
                (Some(Bound::Date(a)), Some(Bound::Date(b))) => a <= b,
                _ => true,
            };
            if !ordered {
                v.add(at("min_value"), "must not exceed max_value");
            }
            if kind == Some(Kind::Choice) {
                let distinct: BTreeSet<&String> = f.choices.iter().collect();
                if f.choices.is_empty() || f.choices.len() > MAX_CHOICES {
                    v.add(
                        at("choices"),
                        format!("a choice has 1 to {MAX_CHOICES} choices"),
                    );
                } else if distinct.len() != f.choices.len()
                    || f.choices
                        .iter()
                        .any(|c| c.trim().is_empty() || c.chars().count() > MAX_TITLE)
                {
                    v.add(
                        at("choices"),
                        format!("distinct, non-empty, at most {MAX_TITLE} characters each"),
                    );
                }
            } else if !f.choices.is_empty() {
                v.add(at("choices"), "only choice fields have choices");
            }
            if f.help_text.chars().count() > 1_000 {
                v.add(at("help_text"), "at most 1,000 characters");
            }
            let mut max_file_bytes = DEFAULT_MAX_FILE_BYTES;
            if kind == Some(Kind::File) {
                match u64::try_from(f.max_file_bytes) {
                    Ok(0) => {}
                    Ok(n) if n <= MAX_FILE_BYTES => max_file_bytes = n,
                    _ => v.add(at("max_file_bytes"), format!("0 to {MAX_FILE_BYTES}")),
                }
                let distinct: BTreeSet<&String> = f.media_types.iter().collect();
                if f.media_types.is_empty()
                    || f.media_types.len() > MAX_MEDIA_TYPES
                    || distinct.len() != f.media_types.len()
                    || !f.media_types.iter().all(|m| valid_media_type(m))
                {
                    v.add(
                        at("media_types"),
                        format!(
                            "1 to {MAX_MEDIA_TYPES} distinct media types, e.g. application/pdf"
                        ),
                    );
                }
            } else {
                if f.max_file_bytes != 0 {
                    v.add(at("max_file_bytes"), "only file fields have a size limit");
                }
                if !f.media_types.is_empty() {
                    v.add(at("media_types"), "only file fields have media types");
                }
            }
            if let (Some(kind), Some(sensitivity), Some(category)) = (kind, sensitivity, category) {
                out.push(Field {
                    name: f.name.clone(),
                    label: label.to_owned(),
                    kind,
                    required: f.required,
                    min_length,
                    max_length,
                    pattern,
                    min_value: bounds.0,
                    max_value: bounds.1,
                    raw_min: f.min_value.clone(),
                    raw_max: f.max_value.clone(),
                    choices: f.choices.clone(),
                    sensitivity,
                    category,
                    help_text: f.help_text.clone(),
                    max_file_bytes,
                    media_types: f.media_types.clone(),
                });
            }
        }
        (v.as_slice().len() == before).then_some(Self { fields: out })
    }

    /// The stored form (JSON): every rule, so the version reads back the same.
    pub fn to_json(&self) -> String {
        let fields: Vec<Json> = self
            .fields
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "label": f.label,
                    "kind": f.kind.name(),
                    "required": f.required,
                    "min_length": f.min_length,
                    "max_length": f.max_length,
                    "pattern": f.pattern.as_ref().map(pattern_source),
                    "min_value": f.raw_min,
                    "max_value": f.raw_max,
                    "choices": f.choices,
                    "sensitivity": f.sensitivity.entry().0,
                    "category": f.category.as_str(),
                    "help_text": f.help_text,
                    "max_file_bytes": f.max_file_bytes,
                    "media_types": f.media_types,
                })
            })
            .collect();
        Json::Array(fields).to_string()
    }

    /// A stored form (written by [`Self::to_json`]); `None` if it holds
    /// values this version does not know.
    pub fn from_json(text: &str) -> Option<Self> {
        let Json::Array(items) = serde_json::from_str::<Json>(text).ok()? else {
            return None;
        };
        let mut fields = Vec::with_capacity(items.len());
        for f in items {
            let s = |k: &str| f.get(k).and_then(Json::as_str).map(str::to_owned);
            let n = |k: &str| {
                f.get(k)
                    .and_then(Json::as_u64)
                    .and_then(|x| usize::try_from(x).ok())
            };
            let kind = Kind::parse(&s("kind")?)?;
            let raw_min = s("min_value").unwrap_or_default();
            let raw_max = s("max_value").unwrap_or_default();
            let pattern = match f.get("pattern").and_then(Json::as_str) {
                Some(p) => Some(compile_pattern(p).ok()?),
                None => None,
            };
            let sensitivity = s("sensitivity")?;
            fields.push(Field {
                name: s("name")?,
                label: s("label")?,
                kind,
                required: f.get("required").and_then(Json::as_bool)?,
                min_length: n("min_length")?,
                max_length: n("max_length")?,
                pattern,
                min_value: bound(kind, &raw_min).ok()?,
                max_value: bound(kind, &raw_max).ok()?,
                raw_min,
                raw_max,
                choices: f
                    .get("choices")
                    .and_then(Json::as_array)?
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect(),
                sensitivity: Sensitivity::parse(&sensitivity)?,
                category: Category::parse(&s("category")?)?,
                help_text: s("help_text").unwrap_or_default(),
                max_file_bytes: f
                    .get("max_file_bytes")
                    .and_then(Json::as_u64)
                    .unwrap_or(DEFAULT_MAX_FILE_BYTES),
                media_types: f
                    .get("media_types")
                    .and_then(Json::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Some(Self { fields })
    }

    /// The protobuf fields.
    pub fn to_proto(&self) -> Vec<pb::FormField> {
        self.fields
            .iter()
            .map(|f| pb::FormField {
                name: f.name.clone(),
                label: f.label.clone(),
                kind: f.kind.proto() as i32,
                required: f.required,
                min_length: i32::try_from(f.min_length).unwrap_or(i32::MAX),
                max_length: i32::try_from(f.max_length).unwrap_or(i32::MAX),
                pattern: f.pattern.as_ref().map(pattern_source).unwrap_or_default(),
                min_value: f.raw_min.clone(),
                max_value: f.raw_max.clone(),
                choices: f.choices.clone(),
                sensitivity: f.sensitivity.entry().1 as i32,
                category: f.category.to_proto() as i32,
                help_text: f.help_text.clone(),
                max_file_bytes: if f.kind == Kind::File {
                    i64::try_from(f.max_file_bytes).unwrap_or(i64::MAX)
                } else {
                    0
                },
                media_types: f.media_types.clone(),
            })
            .collect()
    }

    /// Checks answers against this version. Every violation is named under
    /// `answers[<field name>]` (unknown and repeated fields under
    /// `answers[i].field`); the valid answers come back grouped by the
    /// vault category they are stored under, in form order.
    pub fn check_answers(&self, answers: &[pb::Answer], v: &mut Violations) -> Checked<'_> {
        let mut given: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, a) in answers.iter().enumerate() {
            if !self.fields.iter().any(|f| f.name == a.field) {
                v.add(
                    format!("answers[{i}].field"),
                    "not a field of this form version",
                );
            } else if given.contains_key(a.field.as_str()) {
                v.add(format!("answers[{i}].field"), "answered twice");
            } else {
                given.insert(a.field.as_str(), a.value.as_str());
            }
        }
        let mut out: Vec<(Category, Vec<(&Field, String)>)> = Vec::new();
        let mut files = Vec::new();
        for f in &self.fields {
            let at = format!("answers[{}]", f.name);
            let value = given.get(f.name.as_str()).map_or("", |s| s.trim());
            if value.is_empty() {
                if f.required {
                    v.add(at, "required");
                }
                continue;
            }
            if f.kind == Kind::File {
                match uuid::Uuid::parse_str(value) {
                    Ok(id) => files.push((f, id)),
                    Err(_) => v.add(
                        at,
                        "must be the upload id of a file uploaded for this field",
                    ),
                }
                continue;
            }
            match check_value(f, value) {
                Ok(clean) => match out.iter_mut().find(|(c, _)| *c == f.category) {
                    Some((_, group)) => group.push((f, clean)),
                    None => out.push((f.category, vec![(f, clean)])),
                },
                Err(rule) => v.add(at, rule),
            }
        }
        Checked { groups: out, files }
    }
}

/// Answers that passed their rules.
#[derive(Debug)]
pub struct Checked<'a> {
    /// Field answers grouped by the vault category they are stored under,
    /// in form order.
    pub groups: Vec<(Category, Vec<(&'a Field, String)>)>,
    /// File answers: the upload ids, to be matched with the uploads.
    pub files: Vec<(&'a Field, uuid::Uuid)>,
}

/// One answer against its field's rules: the stored form of it, or the rule
/// it broke (worded for the client, without echoing the value).
fn check_value(f: &Field, value: &str) -> Result<String, String> {
    let chars = value.chars().count();
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err("must not contain control characters".into());
    }
    match f.kind {
        Kind::Consent => {
            return match value {
                "true" => Ok("true".into()),
                "false" if !f.required => Ok("false".into()),
                "false" => Err("must be given".into()),
                _ => Err("must be true or false".into()),
            };
        }
        Kind::Choice => {
            return if f.choices.iter().any(|c| c == value) {
                Ok(value.to_owned())
            } else {
                Err("must be one of the listed choices".into())
            };
        }
        Kind::Number => {
            let n = parse_number(value).ok_or("must be a decimal number")?;
            if let Some(Bound::Number(min)) = f.min_value
                && n < min
            {
                return Err(format!("must be at least {}", f.raw_min));
            }
            if let Some(Bound::Number(max)) = f.max_value
                && n > max
            {
                return Err(format!("must be at most {}", f.raw_max));
            }
            return Ok(value.to_owned());
        }
        Kind::Date => {
            let d = parse_date(value).ok_or("must be a date, YYYY-MM-DD")?;
            if let Some(Bound::Date(min)) = f.min_value
                && d < min
            {
                return Err(format!("must be on or after {}", f.raw_min));
            }
            if let Some(Bound::Date(max)) = f.max_value
                && d > max
            {
                return Err(format!("must be on or before {}", f.raw_max));
            }
            return Ok(value.to_owned());
        }
        _ => {}
    }
    if chars < f.min_length {
        return Err(format!("at least {} characters", f.min_length));
    }
    if chars > f.max_length {
        return Err(format!("at most {} characters", f.max_length));
    }
    match f.kind {
        Kind::Email => {
            let ok = value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !value.chars().any(char::is_whitespace)
                    && !domain.contains('@')
            });
            if !ok {
                return Err("must be an e-mail address".into());
            }
        }
        Kind::Phone => {
            let digits = value.chars().filter(char::is_ascii_digit).count();
            let ok =
                value.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_digit() || c == ' ' || c == '-' || (c == '+' && i == 0)
                }) && (7..=15).contains(&digits);
            if !ok {
                return Err(
                    "must be a telephone number: +, 7 to 15 digits, spaces or dashes".into(),
                );
            }
        }
        _ => {}
    }
    if let Some(p) = &f.pattern
        && !p.is_match(value)
    {
        return Err("does not have the required format".into());
    }
    Ok(value.to_owned())
}

/// SHA-256 of a privacy notice's text, hex.
pub fn notice_digest(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_proto::vault::v1::DataCategory;

    fn field(name: &str, kind: pb::FieldKind) -> pb::FormField {
        pb::FormField {
            name: name.into(),
            label: format!("The {name}"),
            kind: kind as i32,
            required: true,
            sensitivity: pb::Sensitivity::Personal as i32,
            category: DataCategory::ContactDetails as i32,
            ..Default::default()
        }
    }

    fn answer(field: &str, value: &str) -> pb::Answer {
        pb::Answer {
            field: field.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_broken_definition_names_every_rule() {
        let mut bad_pattern = field("code", pb::FieldKind::Text);
        bad_pattern.pattern = "([a-z".into();
        let mut bad_bounds = field("age", pb::FieldKind::Number);
        bad_bounds.min_value = "10".into();
        bad_bounds.max_value = "ten".into();
        let mut no_choices = field("colour", pb::FieldKind::Choice);
        no_choices.category = 0;
        let fields = vec![
            field("Name", pb::FieldKind::Text),
            field("email", pb::FieldKind::Unspecified),
            field("email", pb::FieldKind::Email),
            bad_pattern,
            bad_bounds,
            no_choices,
        ];
        let mut v = Violations::new();
        assert!(FormDefinition::parse(&fields, "fields", &mut v).is_none());
        let named: Vec<&str> = v.as_slice().iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "fields[0].name",
                "fields[1].kind",
                "fields[2].name",
                "fields[3].pattern",
                "fields[4].max_value",
                "fields[5].category",
                "fields[5].choices",
            ]
        );
    }

    #[test]
    fn answers_are_checked_against_every_rule_at_once() {
        let mut postcode = field("postcode", pb::FieldKind::Text);
        postcode.pattern = "[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}".into();
        let mut born = field("born", pb::FieldKind::Date);
        born.max_value = "2008-12-31".into();
        let mut income = field("income", pb::FieldKind::Number);
        income.min_value = "0".into();
        income.category = DataCategory::Financial as i32;
        let mut choice = field("contact_by", pb::FieldKind::Choice);
        choice.choices = vec!["email".into(), "post".into()];
        let mut nickname = field("nickname", pb::FieldKind::Text);
        nickname.required = false;
        nickname.max_length = 5;
        let fields = vec![
            field("email", pb::FieldKind::Email),
            field("phone", pb::FieldKind::Phone),
            postcode,
            born,
            income,
            choice,
            nickname,
            field("agree", pb::FieldKind::Consent),
        ];
        let mut v = Violations::new();
        let form = FormDefinition::parse(&fields, "fields", &mut v).unwrap();
        // Round trip through storage keeps every rule.
        let form = FormDefinition::from_json(&form.to_json()).unwrap();

        let good = [
            answer("email", "jane@example.org"),
            answer("phone", "+44 20 7946 0958"),
            answer("postcode", "SW1A 1AA"),
            answer("born", "1980-02-29"),
            answer("income", "52000.50"),
            answer("contact_by", "post"),
            answer("agree", "true"),
        ];
        let mut v = Violations::new();
        let stored = form.check_answers(&good, &mut v);
        assert!(v.as_slice().is_empty(), "{:?}", v.as_slice());
        let sizes: Vec<(Category, usize)> =
            stored.groups.iter().map(|(c, g)| (*c, g.len())).collect();
        assert_eq!(
            sizes,
            [(Category::ContactDetails, 6), (Category::Financial, 1)]
        );

        let bad = [
            answer("email", "jane.example.org"),
            answer("phone", "call me"),
            answer("postcode", "not a postcode"),
            answer("born", "2010-01-01"),
            answer("income", "-1"),
            answer("contact_by", "pigeon"),
            answer("nickname", "Janey-J"),
            answer("agree", "false"),
            answer("shoe_size", "9"),
            answer("email", "again@example.org"),
        ];
        let mut v = Violations::new();
        form.check_answers(&bad, &mut v);
        let named: Vec<&str> = v.as_slice().iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "answers[8].field",
                "answers[9].field",
                "answers[email]",
                "answers[phone]",
                "answers[postcode]",
                "answers[born]",
                "answers[income]",
                "answers[contact_by]",
                "answers[nickname]",
                "answers[agree]",
            ]
        );
        // No message echoes the answer.
        assert!(
            v.as_slice()
                .iter()
                .all(|x| !x.description.contains("pigeon"))
        );

        let mut v = Violations::new();
        form.check_answers(&[], &mut v);
        assert_eq!(v.as_slice().len(), 7, "every required field is named");
    }
}
