//! Lists in pages (AIP-158): the page size a request asks for, and page
//! tokens that carry the sort key of the last item a page returned, so the
//! next page starts right after it (keyset paging: an item added or removed
//! meanwhile neither repeats nor skips another).
//!
//! A token is opaque to callers: URL-safe base64 of a JSON array of the key's
//! parts. It names no client data beyond what the page itself returned.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Violations;
use crate::portable::Value;

/// The page size a list request asks for: 100 when unset, at most `max` (a
/// larger one is lowered to it); a negative one breaks `field`'s rule.
pub fn page_size(v: &mut Violations, field: &str, size: i32, max: i64) -> i64 {
    page_size_or(v, field, size, 100, max)
}

/// [`page_size`] for a list whose items are large, with its own default.
pub fn page_size_or(v: &mut Violations, field: &str, size: i32, default: i64, max: i64) -> i64 {
    let default = default.min(max);
    match i64::from(size) {
        0 => default,
        n if n < 0 => {
            v.add(field, "must not be negative");
            default
        }
        n => n.min(max),
    }
}

/// The page a list request asks for in its fields `page_size` and
/// `page_token`: how many items at most (`default` when unset, at most
/// `max`; see [`page_size_or`]) and after which (a key of `shape`; see
/// [`After::parse`]).
pub fn requested(
    v: &mut Violations,
    page_size: i32,
    page_token: &str,
    (default, max): (i64, i64),
    shape: &[Part],
) -> (i64, After) {
    (
        page_size_or(v, "page_size", page_size, default, max),
        After::parse(v, "page_token", page_token, shape),
    )
}

/// The kind of one part of a list's sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Text (a label, a state name).
    Text,
    /// A UTC time.
    Time,
    /// A UUID (the tie-breaker every key ends with).
    Uuid,
}

/// Where a page starts: nothing (the first page), or right after the item
/// whose sort key a page token carries. Its values bind to a statement's
/// placeholders as optional values, NULL for the first page, so that one
/// statement (`$n IS NULL OR (a, b) < ($n, $m)`) serves every page.
#[derive(Debug, Clone, PartialEq)]
pub struct After(Vec<Value>);

impl After {
    /// Reads `token` (field `field`) as a key of `shape`; an empty token is
    /// the first page. A token this list did not give breaks the field's
    /// rule (and starts at the first page, for the other checks to go on).
    pub fn parse(v: &mut Violations, field: &str, token: &str, shape: &[Part]) -> Self {
        if token.is_empty() {
            return Self::first(shape);
        }
        match decode(token, shape) {
            Some(values) => Self(values),
            None => {
                v.add(field, "must be a next_page_token this list returned");
                Self::first(shape)
            }
        }
    }

    fn first(shape: &[Part]) -> Self {
        Self(
            shape
                .iter()
                .map(|p| match p {
                    Part::Text => Value::OptText(None),
                    Part::Time => Value::OptTime(None),
                    Part::Uuid => Value::OptUuid(None),
                })
                .collect(),
        )
    }

    /// The values to bind, in the key's order.
    pub fn values(self) -> Vec<Value> {
        self.0
    }
}

/// Reads `token` (field `field`) of a list whose key is an id alone, for a
/// list paged in memory: the id to start after, none for the first page.
pub fn after_id(v: &mut Violations, field: &str, token: &str) -> Option<Uuid> {
    match After::parse(v, field, token, &[Part::Uuid]).0.first() {
        Some(Value::OptUuid(id)) => *id,
        _ => None,
    }
}

/// One part of an item's sort key, for its page token.
#[derive(Debug, Clone, PartialEq)]
pub enum Key<'a> {
    /// Text.
    Text(&'a str),
    /// A UTC time.
    Time(DateTime<Utc>),
    /// A UUID.
    Uuid(Uuid),
}

/// The token of the page after the item whose sort key is `key`.
pub fn token(key: &[Key<'_>]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|k| match k {
            Key::Text(s) => (*s).to_owned(),
            Key::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            Key::Uuid(u) => u.to_string(),
        })
        .collect();
    // A Vec<String> always serialises.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&parts).unwrap_or_default())
}

fn decode(token: &str, shape: &[Part]) -> Option<Vec<Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let parts: Vec<String> = serde_json::from_slice(&bytes).ok()?;
    if parts.len() != shape.len() {
        return None;
    }
    parts
        .into_iter()
        .zip(shape)
        .map(|(s, p)| match p {
            Part::Text => Some(Value::OptText(Some(s))),
            Part::Time => DateTime::parse_from_rfc3339(&s)
                .ok()
                .map(|t| Value::OptTime(Some(t.with_timezone(&Utc)))),
            Part::Uuid => Uuid::parse_str(&s).ok().map(|u| Value::OptUuid(Some(u))),
        })
        .collect()
}

/// One page of `rows`, fetched with a limit of `limit + 1` so that a
/// further row shows there is a next page, and the token of that next page
/// (empty on the last), made from the sort key of the page's last row.
pub fn split<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= page {
        return (rows, String::new());
    }
    rows.truncate(page);
    let next = rows.last().map(key).unwrap_or_default();
    (rows, next)
}

/// Most bytes of items one page carries: under the 4 MiB a gRPC client
/// accepts in one message by default, so that a page of large items ends
/// early, its token going on from there, instead of failing whole.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// How many of `items`, from the first, fit in `max` bytes when each takes
/// `size(item)`; always at least the first.
pub fn fitting<T>(items: &[T], max: usize, size: impl Fn(&T) -> usize) -> usize {
    let mut total = 0usize;
    items
        .iter()
        .take_while(|item| {
            total = total.saturating_add(size(item));
            total <= max
        })
        .count()
        .max(1)
        .min(items.len())
}

/// Cuts a page of protobuf `items` to [`MAX_PAGE_BYTES`]; returns whether
/// it cut any (then there is a next page).
pub fn fit_message<T: prost::Message>(items: &mut Vec<T>) -> bool {
    // Each item's tag and length prefix.
    let fit = fitting(items, MAX_PAGE_BYTES, |item| item.encoded_len() + 8);
    let cut = fit < items.len();
    items.truncate(fit);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: [Part; 3] = [Part::Text, Part::Time, Part::Uuid];

    #[test]
    fn a_token_gives_back_the_key_it_was_made_from() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T05:01:02.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Uuid::now_v7();
        let t = token(&[Key::Text("box \"7\" \u{1f}|"), Key::Time(at), Key::Uuid(id)]);
        let mut v = Violations::new();
        let after = After::parse(&mut v, "page_token", &t, &SHAPE);
        assert!(v.is_empty());
        assert_eq!(
            after.values(),
            vec![
                Value::OptText(Some("box \"7\" \u{1f}|".into())),
                Value::OptTime(Some(at)),
                Value::OptUuid(Some(id)),
            ]
        );
    }

    #[test]
    fn no_token_is_the_first_page_and_a_foreign_one_is_refused() {
        let mut v = Violations::new();
        assert_eq!(
            After::parse(&mut v, "page_token", "", &SHAPE).values(),
            vec![
                Value::OptText(None),
                Value::OptTime(None),
                Value::OptUuid(None)
            ]
        );
        assert!(v.is_empty());
        let other_list = token(&[Key::Uuid(Uuid::now_v7())]);
        for bad in ["not base64!", "bm90IGpzb24", other_list.as_str()] {
            let mut v = Violations::new();
            let after = After::parse(&mut v, "page_token", bad, &SHAPE);
            assert_eq!(v.as_slice().len(), 1, "{bad}");
            assert_eq!(after, After::first(&SHAPE));
        }
        let mut v = Violations::new();
        After::parse(
            &mut v,
            "page_token",
            &token(&[Key::Text("a"), Key::Text("yesterday"), Key::Text("b")]),
            &SHAPE,
        );
        assert_eq!(v.as_slice().len(), 1);
    }

    #[test]
    fn a_page_has_a_next_token_only_when_a_row_is_left() {
        let (rows, next) = split(vec![1, 2, 3], 3, |r| r.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2, 3], ""));
        let (rows, next) = split(vec![1, 2, 3, 4], 3, |r| r.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2, 3], "3"));
        let id = Uuid::now_v7();
        let mut v = Violations::new();
        assert_eq!(after_id(&mut v, "t", &token(&[Key::Uuid(id)])), Some(id));
        assert_eq!(after_id(&mut v, "t", ""), None);
        assert!(v.is_empty());
    }

    #[test]
    fn a_page_of_large_items_ends_within_the_message_limit() {
        let big = |n: usize| prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".repeat(n))),
        };
        let mut items: Vec<_> = (0..5).map(|_| big(1024 * 1024)).collect();
        assert!(fit_message(&mut items));
        assert_eq!(items.len(), 2);
        let mut small: Vec<_> = (0..5).map(|_| big(10)).collect();
        assert!(!fit_message(&mut small));
        assert_eq!(small.len(), 5);
        // One item larger than a page still goes alone.
        let mut huge = vec![big(4 * 1024 * 1024), big(1)];
        assert!(fit_message(&mut huge));
        assert_eq!(huge.len(), 1);
        assert_eq!(fitting(&[] as &[u8], 10, |_| 1), 0);
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let mut v = Violations::new();
        assert_eq!(page_size(&mut v, "page_size", 0, 500), 100);
        assert_eq!(page_size(&mut v, "page_size", 0, 50), 50);
        assert_eq!(page_size(&mut v, "page_size", 7, 500), 7);
        assert_eq!(page_size(&mut v, "page_size", 9000, 500), 500);
        assert_eq!(page_size_or(&mut v, "page_size", 0, 20, 50), 20);
        assert_eq!(page_size_or(&mut v, "page_size", 80, 20, 50), 50);
        assert!(v.is_empty());
        page_size(&mut v, "page_size", -1, 500);
        assert_eq!(v.as_slice().len(), 1);
    }
}
