//! Field masking by role, configured as data (`vault_masking_rules`).
//!
//! A role reads a field through its most specific rule: (category, type),
//! then (category, `*`), then (`*`, type), then (`*`, `*`). A role with no
//! matching rule sees nothing in clear, so a new role is safe until the firm
//! writes its rules. A reader with several roles gets the least restrictive
//! of their masks.

use std::collections::{HashMap, HashSet};

use confidant_proto::vault::v1 as pb;
use confidant_runtime::error::Violations;

use crate::domain::{Category, FieldType};

/// The field type that rules name for a document's content.
pub const DOCUMENT: &str = "document";

/// Any category or any field type.
pub const ANY: &str = "*";

/// The most rules one role may have: one per (category or any, field type,
/// document or any).
pub const MAX_RULES_PER_ROLE: usize = (Category::ALL.len() + 1) * (FieldType::ALL.len() + 2);

/// How a value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mask {
    /// In clear.
    Clear,
    /// Only the last four letters or digits.
    LastFour,
    /// Not at all.
    Redact,
}

impl Mask {
    /// From the stored name (`clear`, `last4`, `redact`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clear" => Some(Self::Clear),
            "last4" => Some(Self::LastFour),
            "redact" => Some(Self::Redact),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mask::Clear => "clear",
            Mask::LastFour => "last4",
            Mask::Redact => "redact",
        }
    }

    /// From the API value; `None` for unspecified or unknown.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Mask::try_from(value).ok()? {
            pb::Mask::Clear => Some(Mask::Clear),
            pb::Mask::LastFour => Some(Mask::LastFour),
            pb::Mask::Redact => Some(Mask::Redact),
            pb::Mask::Unspecified => None,
        }
    }

    /// The API value.
    pub fn to_proto(self) -> pb::Mask {
        match self {
            Mask::Clear => pb::Mask::Clear,
            Mask::LastFour => pb::Mask::LastFour,
            Mask::Redact => pb::Mask::Redact,
        }
    }

    /// The value as this mask shows it.
    pub fn apply(self, value: &str) -> String {
        match self {
            Mask::Clear => value.to_owned(),
            Mask::Redact => "[redacted]".to_owned(),
            Mask::LastFour => {
                let significant: Vec<char> = value
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect();
                if significant.len() <= 4 {
                    return "*".repeat(significant.len());
                }
                let tail: String = significant[significant.len() - 4..].iter().collect();
                format!("{}{tail}", "*".repeat(significant.len() - 4))
            }
        }
    }
}

/// One role's rule, as stored: a category's name or [`ANY`], a field type's
/// name, [`DOCUMENT`] or [`ANY`], and the mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The category, or [`ANY`].
    pub category: String,
    /// The field type, [`DOCUMENT`] or [`ANY`].
    pub field_type: String,
    /// The mask.
    pub mask: Mask,
}

/// Whether `role` is a role name the rules accept: lowercase letters,
/// digits, `_` and `-`, 1 to 64 characters.
pub fn valid_role(role: &str) -> bool {
    (1..=64).contains(&role.len())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The rules of `role` from the API, every violation named (`role`, and
/// under `rules[i]`).
pub fn parse_rules(role: &str, rules: &[pb::MaskingRule], v: &mut Violations) -> Vec<Rule> {
    if !valid_role(role) {
        v.add(
            "role",
            "must be 1 to 64 lowercase letters, digits, '_' and '-'",
        );
    }
    if rules.len() > MAX_RULES_PER_ROLE {
        v.add(
            "rules",
            format!("must hold at most {MAX_RULES_PER_ROLE} rules"),
        );
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut parsed = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let f = |name: &str| format!("rules[{i}].{name}");
        if !rule.role.is_empty() && rule.role != role {
            v.add(f("role"), "must be empty or the request's role");
        }
        let category_ok = rule.category == ANY || Category::parse(&rule.category).is_some();
        if !category_ok {
            v.add(f("category"), "must be a data category's name or \"*\"");
        }
        let type_ok = rule.field_type == ANY
            || rule.field_type == DOCUMENT
            || FieldType::parse(&rule.field_type).is_some();
        if !type_ok {
            v.add(
                f("field_type"),
                "must be a field type's name, \"document\" or \"*\"",
            );
        }
        let mask = Mask::from_proto(rule.mask);
        if mask.is_none() {
            v.add(
                f("mask"),
                "must be MASK_CLEAR, MASK_LAST_FOUR or MASK_REDACT",
            );
        }
        let repeated = category_ok
            && type_ok
            && !seen.insert((rule.category.as_str(), rule.field_type.as_str()));
        if repeated {
            v.add(
                format!("rules[{i}]"),
                "repeats an earlier rule's category and field type",
            );
        }
        if let (true, true, false, Some(mask)) = (category_ok, type_ok, repeated, mask) {
            parsed.push(Rule {
                category: rule.category.clone(),
                field_type: rule.field_type.clone(),
                mask,
            });
        }
    }
    parsed
}

/// The API form of a stored rule of `role`.
pub fn to_proto(role: &str, category: &str, field_type: &str, mask: &str) -> pb::MaskingRule {
    pb::MaskingRule {
        role: role.to_owned(),
        category: category.to_owned(),
        field_type: field_type.to_owned(),
        mask: Mask::parse(mask).unwrap_or(Mask::Redact).to_proto() as i32,
    }
}

/// The rules, keyed by role.
#[derive(Debug, Clone, Default)]
pub struct MaskingRules {
    by_role: HashMap<String, HashMap<(String, String), Mask>>,
}

impl MaskingRules {
    /// From rows of (role, category, field type, mask); unknown masks are
    /// read as redact.
    pub fn from_rows(rows: Vec<(String, String, String, String)>) -> Self {
        let mut by_role: HashMap<String, HashMap<(String, String), Mask>> = HashMap::new();
        for (role, category, field_type, mask) in rows {
            by_role.entry(role).or_default().insert(
                (category, field_type),
                Mask::parse(&mask).unwrap_or(Mask::Redact),
            );
        }
        Self { by_role }
    }

    fn for_role(&self, role: &str, category: Category, field_type: &str) -> Mask {
        let Some(rules) = self.by_role.get(role) else {
            return Mask::Redact;
        };
        let (c, t) = (category.as_str(), field_type);
        [(c, t), (c, ANY), (ANY, t), (ANY, ANY)]
            .iter()
            .find_map(|(c, t)| rules.get(&((*c).to_owned(), (*t).to_owned())).copied())
            .unwrap_or(Mask::Redact)
    }

    /// The mask for a reader with `roles`.
    pub fn mask(&self, roles: &[String], category: Category, field_type: FieldType) -> Mask {
        self.mask_named(roles, category, field_type.as_str())
    }

    /// The mask of a document's content (rules name its type `document`):
    /// only `clear` lets a reader download it.
    pub fn document_mask(&self, roles: &[String], category: Category) -> Mask {
        self.mask_named(roles, category, DOCUMENT)
    }

    fn mask_named(&self, roles: &[String], category: Category, field_type: &str) -> Mask {
        roles
            .iter()
            .map(|r| self.for_role(r, category, field_type))
            .min()
            .unwrap_or(Mask::Redact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> MaskingRules {
        let rows = [
            ("partner", "*", "*", "clear"),
            ("paralegal", "*", "*", "clear"),
            ("paralegal", "*", "national_id", "last4"),
            ("legal_assistant", "*", "*", "redact"),
            ("legal_assistant", "contact_details", "*", "clear"),
        ];
        MaskingRules::from_rows(
            rows.iter()
                .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
                .collect(),
        )
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_most_specific_rule_of_a_role_decides() {
        let rules = builtin();
        let id = (Category::IdentityDocument, FieldType::NationalId);
        assert_eq!(
            rules.mask(&roles(&["paralegal"]), id.0, id.1),
            Mask::LastFour
        );
        assert_eq!(
            rules.mask(&roles(&["paralegal"]), id.0, FieldType::Text),
            Mask::Clear
        );
        assert_eq!(
            rules.mask(
                &roles(&["legal_assistant"]),
                Category::ContactDetails,
                FieldType::Email
            ),
            Mask::Clear
        );
        assert_eq!(
            rules.mask(
                &roles(&["legal_assistant"]),
                Category::Financial,
                FieldType::Number
            ),
            Mask::Redact
        );
    }

    #[test]
    fn several_roles_get_the_least_restrictive_and_unknown_roles_nothing() {
        let rules = builtin();
        let (c, t) = (Category::IdentityDocument, FieldType::NationalId);
        assert_eq!(
            rules.mask(&roles(&["paralegal", "partner"]), c, t),
            Mask::Clear
        );
        assert_eq!(rules.mask(&roles(&["records_manager"]), c, t), Mask::Redact);
        assert_eq!(rules.mask(&[], c, t), Mask::Redact);
    }

    #[test]
    fn rules_from_the_api_are_checked_field_by_field() {
        let rule = |role: &str, category: &str, field_type: &str, mask: pb::Mask| pb::MaskingRule {
            role: role.into(),
            category: category.into(),
            field_type: field_type.into(),
            mask: mask as i32,
        };
        let mut v = Violations::new();
        let good = parse_rules(
            "paralegal",
            &[
                rule("", "*", "*", pb::Mask::Clear),
                rule(
                    "paralegal",
                    "financial",
                    "account_number",
                    pb::Mask::LastFour,
                ),
                rule("", "health", "document", pb::Mask::Redact),
            ],
            &mut v,
        );
        assert!(v.is_empty());
        assert_eq!(good.len(), 3);
        assert_eq!(good[1].mask, Mask::LastFour);
        let bad = parse_rules(
            "paralegal",
            &[
                rule("partner", "*", "*", pb::Mask::Clear),
                rule("", "gossip", "*", pb::Mask::Clear),
                rule("", "*", "blood_type", pb::Mask::Clear),
                rule("", "*", "email", pb::Mask::Unspecified),
                rule("", "*", "*", pb::Mask::Redact),
            ],
            &mut v,
        );
        let fields: Vec<&str> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules[0].role",
                "rules[1].category",
                "rules[2].field_type",
                "rules[3].mask",
                "rules[4]"
            ]
        );
        assert_eq!(bad.len(), 1, "the one rule that parsed");
        let mut named = Violations::new();
        assert!(parse_rules("Para Legal", &[], &mut named).is_empty());
        assert_eq!(named.as_slice()[0].field, "role");
        assert!(valid_role("legal_assistant") && valid_role("records-manager2"));
        assert!(!valid_role("") && !valid_role("Partner") && !valid_role(&"a".repeat(65)));
    }

    #[test]
    fn last_four_keeps_only_the_last_four_significant_characters() {
        assert_eq!(Mask::LastFour.apply("AB 12 34 56 C"), "*****456C");
        assert_eq!(Mask::LastFour.apply("1234"), "****");
        assert_eq!(Mask::Redact.apply("secret"), "[redacted]");
    }
}
