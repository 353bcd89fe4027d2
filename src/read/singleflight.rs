//! Single-flight: concurrent misses for one product share one fill.
//!
//! The first caller for a key registers a cell and runs its fill; callers arriving
//! while it runs wait on the same cell and get a clone of its result. If the first
//! caller goes away (its client disconnected), a waiting caller takes the fill over.
//! The cell is removed when its first caller finishes or is dropped, so a later miss
//! fills afresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

type Cells<T> = Mutex<HashMap<i64, Arc<OnceCell<T>>>>;

/// In-flight fills by product id.
#[derive(Debug)]
pub struct SingleFlight<T> {
    cells: Cells<T>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes the first caller's cell when it finishes or is cancelled.
struct Leader<'a, T> {
    cells: &'a Cells<T>,
    key: i64,
    cell: Arc<OnceCell<T>>,
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        let mut cells = self
            .cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cells
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            cells.remove(&self.key);
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// The result of `fill` for `key`, run once for all concurrent callers; the flag
    /// says whether this caller's `fill` was the one that ran.
    pub async fn run<F: Future<Output = T>>(&self, key: i64, fill: F) -> (T, bool) {
        let (cell, leader) = {
            let mut cells = self
                .cells
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match cells.get(&key) {
                Some(cell) => (Arc::clone(cell), None),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    cells.insert(key, Arc::clone(&cell));
                    (Arc::clone(&cell), Some(()))
                }
            }
        };
        let _leader = leader.map(|()| Leader {
            cells: &self.cells,
            key,
            cell: Arc::clone(&cell),
        });
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                fill
            })
            .await
            .clone();
        (value, ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fill_and_later_ones_fill_again() {
        let flight = SingleFlight::default();
        let fills = AtomicUsize::new(0);
        let fill = || async {
            fills.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            7
        };
        let results = futures_util::future::join_all((0..50).map(|_| flight.run(1, fill()))).await;
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!(results.iter().filter(|(_, ran)| *ran).count(), 1);
        assert!(results.iter().all(|(v, _)| *v == 7));
        flight.run(1, fill()).await;
        assert_eq!(
            fills.load(Ordering::SeqCst),
            2,
            "a finished fill is not reused"
        );
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_fill_over() {
        let flight = SingleFlight::default();
        let leader = flight.run(1, std::future::pending::<i32>());
        let mut leader = Box::pin(leader);
        // Poll the leader once so it registers, then drop it.
        assert!(futures_util::poll!(&mut leader).is_pending());
        drop(leader);
        let (value, ran) = flight.run(1, async { 3 }).await;
        assert_eq!((value, ran), (3, true));
    }
}
