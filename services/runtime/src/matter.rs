//! How matters are classified for retention: a practice area and a
//! jurisdiction. Identity validates them when a matter is opened, retention
//! when a policy names them, with the same rules, so the two always match.

use crate::error::Violations;

/// The most characters of a practice area.
pub const PRACTICE_AREA_MAX: usize = 64;

/// A practice area as compared: trimmed and lower-cased, so "Probate" and
/// "probate " name the same area.
pub fn practice_area_key(value: &str) -> String {
    value.trim().to_lowercase()
}

/// Validates an optional jurisdiction code: an ISO 3166-1 alpha-2 country
/// ("GB", "US") optionally followed by an ISO 3166-2 subdivision ("US-NY",
/// "GB-SCT"). Returns the upper-cased code, `None` when empty, and names the
/// rule under `field` when it is broken.
pub fn jurisdiction(v: &mut Violations, field: &str, value: &str) -> Option<String> {
    let code = value.trim().to_ascii_uppercase();
    if code.is_empty() {
        return None;
    }
    let mut parts = code.splitn(2, '-');
    let country = parts.next().unwrap_or_default();
    let subdivision = parts.next();
    let country_ok = country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase());
    let subdivision_ok = subdivision.is_none_or(|s| {
        (1..=3).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    });
    if country_ok && subdivision_ok {
        Some(code)
    } else {
        v.add(
            field,
            "must be an ISO 3166 code: a country (\"GB\") or a country and subdivision (\"US-NY\")",
        );
        None
    }
}

/// How well a policy's jurisdiction fits a matter's: 2 for the same code,
/// 1 when the policy names the matter's country and the matter a
/// subdivision of it, 0 when the policy names none; `None` when it does not
/// apply.
pub fn jurisdiction_fit(policy: Option<&str>, matter: Option<&str>) -> Option<u8> {
    match (policy, matter) {
        (None, _) => Some(0),
        (Some(_), None) => None,
        (Some(p), Some(m)) if p == m => Some(2),
        (Some(p), Some(m)) if !p.contains('-') && m.split('-').next() == Some(p) => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jurisdictions_are_iso_3166_codes() {
        let mut v = Violations::new();
        assert_eq!(jurisdiction(&mut v, "j", " us-ny "), Some("US-NY".into()));
        assert_eq!(jurisdiction(&mut v, "j", "GB"), Some("GB".into()));
        assert_eq!(jurisdiction(&mut v, "j", ""), None);
        assert!(v.is_empty());
        for bad in ["USA", "U", "US-", "US-NEWY", "G1", "US NY"] {
            let mut v = Violations::new();
            assert_eq!(jurisdiction(&mut v, "j", bad), None, "{bad}");
            assert!(!v.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_country_policy_covers_its_subdivisions_less_closely_than_their_own() {
        assert_eq!(jurisdiction_fit(None, Some("US-NY")), Some(0));
        assert_eq!(jurisdiction_fit(Some("US"), Some("US-NY")), Some(1));
        assert_eq!(jurisdiction_fit(Some("US-NY"), Some("US-NY")), Some(2));
        assert_eq!(jurisdiction_fit(Some("US-CA"), Some("US-NY")), None);
        assert_eq!(jurisdiction_fit(Some("US-NY"), Some("US")), None);
        assert_eq!(jurisdiction_fit(Some("GB"), None), None);
    }
}
