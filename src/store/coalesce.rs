//! Concurrent single-key lookups coalesced into batches: what lets the misses of many
//! requests share one `MGET` to Redis instead of one `GET` each.
//!
//! A [`Coalescer`] queues each lookup with the channel its answer goes back on; one
//! task takes whatever has queued (up to the batch limit) and runs one batch lookup for
//! all of it, with at most a few batches in flight at once. Nothing waits on a timer:
//! with a batch slot free, a lone lookup goes out at once, as a batch of one; while the
//! slots are busy, lookups gather for the next batch. So a quiet reader pays only the
//! hand-over to the task, and a busy one shares each command's cost among the misses
//! that arrived during the previous round trip.

use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

/// One queued lookup: the key, and where its answer goes.
type Pending<K, V, E> = (K, oneshot::Sender<Result<V, E>>);

/// The handle lookups are made through; cheap to clone, shared by every request.
#[derive(Debug)]
pub struct Coalescer<K, V, E> {
    queue: mpsc::Sender<Pending<K, V, E>>,
}

impl<K, V, E> Clone for Coalescer<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// How a lookup through the coalescer may fail to get an answer of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    /// The queue is full (more lookups waiting than the batches in flight can take
    /// soon): the caller looks up alone.
    Full,
    /// The batch task is gone (the runtime is shutting down).
    Closed,
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Send + 'static,
    V: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Spawns the batch task: `lookup` answers a batch of keys with one value per key,
    /// in order; at most `in_flight` batches of at most `max_batch` keys run at once.
    /// The task ends when the last handle is dropped.
    pub fn start<F, Fut>(lookup: F, max_batch: usize, in_flight: usize) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<V>, E>> + Send + 'static,
    {
        let (queue, pending) = mpsc::channel(max_batch * in_flight * 4);
        tokio::spawn(run(pending, lookup, max_batch.max(1), in_flight.max(1)));
        Self { queue }
    }

    /// Queues `key` for the next batch and waits for its answer; `Err` when it could not
    /// be queued (the caller then looks it up alone).
    pub async fn get(&self, key: K) -> Result<Result<V, E>, NotQueued> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .try_send((key, answer))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => NotQueued::Full,
                mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
            })?;
        answered.await.map_err(|_| NotQueued::Closed)
    }
}

/// The batch task: takes what has queued whenever a batch slot is free.
async fn run<K, V, E, F, Fut>(
    mut pending: mpsc::Receiver<Pending<K, V, E>>,
    lookup: F,
    max_batch: usize,
    in_flight: usize,
) where
    E: Clone,
    F: Fn(Vec<K>) -> Fut,
    Fut: Future<Output = Result<Vec<V>, E>>,
{
    let mut running = FuturesUnordered::new();
    let mut taken = Vec::with_capacity(max_batch);
    loop {
        tokio::select! {
            // A batch slot is free: whatever has queued goes out now.
            count = pending.recv_many(&mut taken, max_batch), if running.len() < in_flight => {
                if count == 0 {
                    break;
                }
                let (keys, answers): (Vec<K>, Vec<_>) = taken.drain(..).unzip();
                let batch = lookup(keys);
                running.push(async move { answer_all(answers, batch.await) });
            }
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    // The handles are gone: let the batches in flight answer their callers.
    while running.next().await.is_some() {}
}

/// Sends each caller its value, or each the batch's error.
fn answer_all<V, E: Clone>(answers: Vec<oneshot::Sender<Result<V, E>>>, batch: Result<Vec<V>, E>) {
    match batch {
        Ok(values) => {
            for (answer, value) in answers.into_iter().zip(values) {
                // A caller that stopped waiting (its request ended) needs no answer.
                let _ = answer.send(Ok(value));
            }
        }
        Err(err) => {
            for answer in answers {
                let _ = answer.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a test batch answers.
    type Batch = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u32>, String>> + Send>>;

    /// A lookup that doubles each key and records the batches it was given; each batch
    /// waits for `gate` so the test decides when batches finish.
    fn doubling(
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> impl Fn(Vec<u32>) -> Batch + Send + 'static {
        move |keys: Vec<u32>| {
            batches.lock().unwrap().push(keys.clone());
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                let _permit = gate.acquire().await.unwrap();
                if keys.contains(&13) {
                    return Err("unlucky".to_owned());
                }
                Ok(keys.iter().map(|k| k * 2).collect())
            })
        }
    }

    #[tokio::test]
    async fn lookups_arriving_while_the_slots_are_busy_share_one_batch() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let coalescer = Coalescer::start(doubling(Arc::clone(&batches), Arc::clone(&gate)), 8, 1);
        // The first lookup takes the only slot and waits at the gate.
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.get(1).await }
        });
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Ten more queue meanwhile: they go out as batches of at most 8.
        let rest: Vec<_> = (2..=11)
            .map(|k| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        while coalescer.queue.capacity() > coalescer.queue.max_capacity() - 10 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        assert_eq!(first.await.unwrap(), Ok(Ok(2)));
        for (k, lookup) in (2..=11).zip(rest) {
            assert_eq!(lookup.await.unwrap(), Ok(Ok(k * 2)));
        }
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![1], (2..=9).collect(), vec![10, 11]]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_lookups_and_no_other() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(100));
        let coalescer = Coalescer::start(doubling(Arc::clone(&batches), gate), 8, 2);
        assert_eq!(coalescer.get(13).await, Ok(Err("unlucky".to_owned())));
        assert_eq!(coalescer.get(4).await, Ok(Ok(8)));
    }

    #[tokio::test]
    async fn a_full_queue_is_said_at_once() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        // One batch of one in flight, a queue of 4: the sixth lookup cannot queue.
        let coalescer = Coalescer::start(doubling(Arc::clone(&batches), Arc::clone(&gate)), 1, 1);
        let lookup = |k| {
            let c = coalescer.clone();
            tokio::spawn(async move { c.get(k).await })
        };
        let mut waiting = vec![lookup(0)];
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        waiting.extend((1..5).map(lookup));
        while coalescer.queue.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(coalescer.get(9).await, Err(NotQueued::Full));
        gate.add_permits(100);
        for (k, lookup) in (0..5).zip(waiting) {
            assert_eq!(lookup.await.unwrap(), Ok(Ok(k * 2)));
        }
    }
}
