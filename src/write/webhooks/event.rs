//! The events a webhook can subscribe to, and the JSON body a delivery sends.
//!
//! The body follows the Standard Webhooks payload convention, `{"type", "timestamp",
//! "data"}`: `timestamp` is the change's commit time (RFC 3339, UTC), the same on every
//! attempt, and `data` describes the change at its version:
//!
//! ```json
//! {"type":"product.updated","timestamp":"2026-11-23T10:00:00.123456Z",
//!  "data":{"product_id":42,"version":7,"deleted":false,"active":true,
//!          "categories":["kitchen"],"committed_at":"2026-11-23T10:00:00.123456Z"}}
//! {"type":"category.updated","timestamp":"...",
//!  "data":{"category":"kitchen","deleted":false,"committed_at":"..."}}
//! ```
//!
//! The body is rendered from the stored delivery, so every attempt of a delivery sends
//! the same bytes.

use serde::Serialize;

/// What a change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A product was created, replaced, patched, or lost or joined a category; also a
    /// product made inactive (`"active": false`).
    ProductUpdated,
    /// A product was deleted (a tombstone with a new version).
    ProductDeleted,
    /// A category was created, renamed, moved or deleted (`"deleted": true`).
    CategoryUpdated,
}

impl EventType {
    /// Every event type, in the order the API lists them.
    pub const ALL: [Self; 3] = [
        Self::ProductUpdated,
        Self::ProductDeleted,
        Self::CategoryUpdated,
    ];

    /// The type's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::ProductUpdated => "product.updated",
            Self::ProductDeleted => "product.deleted",
            Self::CategoryUpdated => "category.updated",
        }
    }

    /// The type named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// What a delivery tells about its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A product's change.
    Product {
        /// The product.
        product_id: i64,
        /// Its version after the change.
        version: i64,
        /// Whether the change deleted it.
        deleted: bool,
        /// Whether it is active (shown by the storefront when not deleted).
        active: bool,
        /// Its categories after the change.
        categories: Vec<String>,
    },
    /// A category's change.
    Category {
        /// The category's slug.
        slug: String,
        /// Whether the change deleted it.
        deleted: bool,
    },
}

/// One event: its type, its change, and when the change committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's type name (as stored).
    pub kind: String,
    /// The change.
    pub change: Change,
    /// Commit time, RFC 3339 in UTC.
    pub committed_at: String,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Product {
        product_id: i64,
        version: i64,
        deleted: bool,
        active: bool,
        categories: &'a [String],
        committed_at: &'a str,
    },
    Category {
        category: &'a str,
        deleted: bool,
        committed_at: &'a str,
    },
}

impl Event {
    /// The JSON body of a delivery of this event.
    pub fn body(&self) -> Vec<u8> {
        let committed_at = self.committed_at.as_str();
        let data = match &self.change {
            Change::Product {
                product_id,
                version,
                deleted,
                active,
                categories,
            } => Data::Product {
                product_id: *product_id,
                version: *version,
                deleted: *deleted,
                active: *active,
                categories,
                committed_at,
            },
            Change::Category { slug, deleted } => Data::Category {
                category: slug,
                deleted: *deleted,
                committed_at,
            },
        };
        let body = Body {
            kind: &self.kind,
            timestamp: committed_at,
            data,
        };
        serde_json::to_vec(&body).expect("an event serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_by_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.name()), Some(kind));
        }
        assert_eq!(EventType::parse("product.created"), None);
    }

    #[test]
    fn bodies_are_the_documented_json() {
        let event = Event {
            kind: "product.updated".into(),
            change: Change::Product {
                product_id: 42,
                version: 7,
                deleted: false,
                active: true,
                categories: vec!["kitchen".into()],
            },
            committed_at: "2026-11-23T10:00:00.123456Z".into(),
        };
        assert_eq!(
            String::from_utf8(event.body()).unwrap(),
            r#"{"type":"product.updated","timestamp":"2026-11-23T10:00:00.123456Z","data":{"product_id":42,"version":7,"deleted":false,"active":true,"categories":["kitchen"],"committed_at":"2026-11-23T10:00:00.123456Z"}}"#
        );
        let event = Event {
            kind: "category.updated".into(),
            change: Change::Category {
                slug: "kitchen".into(),
                deleted: true,
            },
            committed_at: "2026-11-23T10:00:00.000000Z".into(),
        };
        assert_eq!(
            String::from_utf8(event.body()).unwrap(),
            r#"{"type":"category.updated","timestamp":"2026-11-23T10:00:00.000000Z","data":{"category":"kitchen","deleted":true,"committed_at":"2026-11-23T10:00:00.000000Z"}}"#
        );
    }
}
