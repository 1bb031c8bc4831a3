//! Field masking by role, configured as data (`vault_masking_rules`).
//!
//! A role reads a field through its most specific rule: (category, type),
//! then (category, `*`), then (`*`, type), then (`*`, `*`). A role with no
//! matching rule sees nothing in clear, so a new role is safe until the firm
//! writes its rules. A reader with several roles gets the least restrictive
//! of their masks.

use std::collections::HashMap;

use crate::domain::{Category, FieldType};

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
    fn parse(s: &str) -> Option<Self> {
        match s {
            "clear" => Some(Self::Clear),
            "last4" => Some(Self::LastFour),
            "redact" => Some(Self::Redact),
            _ => None,
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
        [(c, t), (c, "*"), ("*", t), ("*", "*")]
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
        self.mask_named(roles, category, "document")
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
    fn last_four_keeps_only_the_last_four_significant_characters() {
        assert_eq!(Mask::LastFour.apply("AB 12 34 56 C"), "*****456C");
        assert_eq!(Mask::LastFour.apply("1234"), "****");
        assert_eq!(Mask::Redact.apply("secret"), "[redacted]");
    }
}
