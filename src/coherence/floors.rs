//! Per-product freshness floors: the newest version each product is known to have.
//!
//! The consumer raises a product's floor to the version an invalidation names before it
//! evicts L1. A fill whose document is older than the floor (a lagging replica, a stale
//! Redis value) is refused and re-read from the primary, so a stale document is never
//! resurrected after its invalidation arrived. Floors are bounded in number and age:
//! they only need to outlive replica lag, and a flush (gap or reset) clears L1 anyway.

use std::time::Duration;

use moka::sync::Cache;

/// Freshness floors by product id.
#[derive(Debug, Clone)]
pub struct Floors {
    floors: Cache<i64, i64>,
}

impl Floors {
    /// At most `capacity` floors, each kept for `ttl` after its last raise.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            floors: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Raises `id`'s floor to `version` (never lowers it).
    pub fn raise(&self, id: i64, version: i64) {
        self.floors
            .entry(id)
            .and_upsert_with(|current| current.map_or(version, |e| (*e.value()).max(version)));
    }

    /// The floor of `id`: 0 when nothing is known.
    pub fn get(&self, id: i64) -> i64 {
        self.floors.get(&id).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_only_rise() {
        let floors = Floors::new(100, Duration::from_secs(60));
        assert_eq!(floors.get(1), 0);
        floors.raise(1, 5);
        floors.raise(1, 3);
        assert_eq!(floors.get(1), 5);
        floors.raise(1, 9);
        assert_eq!(floors.get(1), 9);
        assert_eq!(floors.get(2), 0);
    }
}
