//! One invalidation as carried by the stream: field names, encoding and decoding.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::*;

/// Field names of a stream entry.
const PRODUCT: &str = "p";
const VERSION: &str = "v";
const CATEGORIES: &str = "c";
const COMMITTED: &str = "t";
/// The sequence number's field (the relay's append script reads it too).
pub const SEQ: &str = "s";
const EPOCH: &str = "e";
const WATERMARK: &str = "w";
const VISIBLE: &str = "l";
const PURGE: &str = "x";
const HEARTBEAT: &str = "h";
const DELETED: &str = "d";

/// Microseconds since the Unix epoch, the unit of [`Invalidation::committed_at_micros`].
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The stream's epoch, created if Redis has none (first start, or Redis lost it). The
/// relay and every consumer call this, so whoever comes first creates it and all agree.
pub async fn ensure_epoch(client: &Client, key: &str) -> Result<String, fred::error::Error> {
    if let Some(epoch) = client.get::<Option<String>, _>(key).await? {
        return Ok(epoch);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let fresh = format!("{nanos:x}-{:x}", std::process::id());
    let _: Option<String> = client
        .set(key, fresh.as_str(), None, Some(SetOptions::NX), false)
        .await?;
    let epoch: Option<String> = client.get(key).await?;
    Ok(epoch.unwrap_or(fresh))
}

/// Replaces the stream's epoch with a new one: every reader sees a reset and flushes
/// L1 (the relay's answer to a stream that lost entries it had published).
pub async fn new_epoch(client: &Client, key: &str) -> Result<String, fred::error::Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let fresh = format!("{nanos:x}-{:x}", std::process::id());
    let _: Option<String> = client.set(key, fresh.as_str(), None, None, false).await?;
    Ok(fresh)
}

/// One published invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The product written; `None` for a change to categories only, or a purge of all.
    pub product_id: Option<i64>,
    /// Its version after the write (0 without a product).
    pub version: i64,
    /// An operator's purge: drop the product (or, without one and without categories,
    /// everything) from the caches whatever its version.
    pub purge: bool,
    /// The write left the product invisible to the storefront (deleted or inactive).
    pub deleted: bool,
    /// Slugs of the categories the write touched (before and after).
    pub categories: Vec<String>,
    /// Commit time, microseconds since the Unix epoch (for propagation latency).
    pub committed_at_micros: i64,
    /// Dense sequence number assigned by the relay; a break means entries were missed.
    pub seq: i64,
    /// The stream's epoch; a new one means the stream was reset.
    pub epoch: String,
    /// On the last entry of a relay round that drained the outbox (and on every
    /// heartbeat): the primary's WAL position read before the round took its rows.
    /// Every write whose token is below it is published in this round or an earlier one.
    pub watermark: Option<u64>,
    /// On a change to categories (an entry that names categories and no product): the
    /// primary's WAL position read after the round took its rows, so a database that has
    /// replayed it has the change. The watermark cannot say this: it is read before the
    /// rows, and a change committed in between is published under it.
    pub visible_at: Option<u64>,
    /// A heartbeat: no change, only proof that the relay is alive and the feed flows.
    pub heartbeat: bool,
}

impl Invalidation {
    /// The entry's fields, for `XADD`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            (VERSION, self.version.to_string()),
            (CATEGORIES, self.categories.join(",")),
            (COMMITTED, self.committed_at_micros.to_string()),
            (SEQ, self.seq.to_string()),
            (EPOCH, self.epoch.clone()),
        ]
        .into_iter()
        .chain(self.product_id.map(|id| (PRODUCT, id.to_string())))
        .chain(self.watermark.map(|w| (WATERMARK, w.to_string())))
        .chain(self.visible_at.map(|l| (VISIBLE, l.to_string())))
        .chain(self.purge.then(|| (PURGE, "1".to_owned())))
        .chain(self.deleted.then(|| (DELETED, "1".to_owned())))
        .chain(self.heartbeat.then(|| (HEARTBEAT, "1".to_owned())))
        .collect()
    }

    /// Parses an entry's fields; `None` if any is missing or malformed.
    pub fn parse(fields: &HashMap<String, String>) -> Option<Self> {
        let number = |name: &str| fields.get(name)?.parse::<i64>().ok();
        let categories = fields.get(CATEGORIES)?;
        Some(Self {
            product_id: match fields.get(PRODUCT) {
                Some(id) => Some(id.parse().ok()?),
                None => None,
            },
            version: number(VERSION)?,
            purge: fields.contains_key(PURGE),
            deleted: fields.contains_key(DELETED),
            categories: categories
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            committed_at_micros: number(COMMITTED)?,
            seq: number(SEQ)?,
            epoch: fields.get(EPOCH)?.clone(),
            watermark: match fields.get(WATERMARK) {
                Some(w) => Some(w.parse().ok()?),
                None => None,
            },
            visible_at: match fields.get(VISIBLE) {
                Some(l) => Some(l.parse().ok()?),
                None => None,
            },
            heartbeat: fields.contains_key(HEARTBEAT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = Invalidation {
            product_id: Some(7),
            version: 3,
            purge: false,
            deleted: true,
            categories: vec!["lamps".into(), "desks".into()],
            committed_at_micros: 1_700_000_000_000_000,
            seq: 42,
            epoch: "e1".into(),
            watermark: Some(99),
            visible_at: None,
            heartbeat: false,
        };
        let fields: HashMap<String, String> = entry
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(Invalidation::parse(&fields), Some(entry.clone()));
        let mut no_cats = fields.clone();
        no_cats.insert("c".into(), String::new());
        assert!(Invalidation::parse(&no_cats).unwrap().categories.is_empty());
        let mut unmarked = fields.clone();
        unmarked.remove("w");
        unmarked.remove("p");
        let unmarked = Invalidation::parse(&unmarked).unwrap();
        assert_eq!(
            (unmarked.watermark, unmarked.product_id, unmarked.purge),
            (None, None, false)
        );
        let purge_all = Invalidation {
            product_id: None,
            purge: true,
            ..entry.clone()
        };
        let fields_of = |e: &Invalidation| -> HashMap<String, String> {
            e.fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        assert_eq!(Invalidation::parse(&fields_of(&purge_all)), Some(purge_all));
        let heartbeat = Invalidation {
            product_id: None,
            categories: Vec::new(),
            heartbeat: true,
            ..entry.clone()
        };
        assert_eq!(Invalidation::parse(&fields_of(&heartbeat)), Some(heartbeat));
        let category = Invalidation {
            product_id: None,
            visible_at: Some(123_456),
            ..entry.clone()
        };
        assert_eq!(Invalidation::parse(&fields_of(&category)), Some(category));
        let mut broken = fields;
        broken.insert("s".into(), "x".into());
        assert_eq!(Invalidation::parse(&broken), None);
    }
}
