//! The process's background tasks and its stop: a [`Supervisor`] watches every task
//! (the first to end unexpectedly, or panic, stops the rest, which still drain), and
//! [`shut_down_in_order`] turns a shutdown signal into readiness off, a delay, then the
//! tasks' stop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::http::Draining;

/// The background tasks of a process, each with a name: the first one that ends
/// unexpectedly, or panics, cancels the root token, and [`Supervisor::wait`] still waits
/// for the others, so the listeners drain their requests before the process exits.
#[derive(Debug, Default)]
pub(super) struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    /// Runs `task` under the name `name`.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Runs `task` under the name `name` on a thread of its own, with a single-threaded
    /// runtime: what it waits for wakes it at once, rather than behind every request the
    /// shared runtime has queued (the invalidation consumer, whose delay is the
    /// propagation time). It is watched like the others: its end is noticed, and its
    /// panic stops the process's tasks. Should its runtime not build, it runs on the
    /// shared one; should its thread not start, the process stops, as when it ends.
    pub(super) fn spawn_on_own_thread(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::warn!(task = name, %error, "no runtime of its own; running on the shared one");
                return self.spawn(name, task);
            }
        };
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.replace(' ', "-"))
            .spawn(move || {
                runtime.block_on(task);
                // The receiver is gone only once the supervisor stopped waiting.
                let _ = done.send(());
            });
        match thread {
            Ok(_) => self.spawn(name, async move {
                // A dropped sender: the thread unwound.
                if finished.await.is_err() {
                    panic!("{name} panicked on its thread");
                }
            }),
            Err(error) => {
                tracing::error!(task = name, %error, "its thread did not start; shutting down");
                self.spawn(name, async {});
            }
        }
    }

    /// Waits for every task. A task that ends before `stop` fires, or panics at any
    /// time, is logged and cancels `stop` (so the others stop and drain); the result
    /// then names the first such task.
    pub(super) async fn wait(mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        let mut failure: Option<String> = None;
        while let Some(finished) = self.tasks.join_next_with_id().await {
            let (id, panic) = match finished {
                Ok((id, ())) => (id, None),
                Err(err) => (err.id(), Some(err)),
            };
            let name = self.names.get(&id).copied().unwrap_or("a task");
            match panic {
                Some(err) => {
                    tracing::error!(task = name, error = %err, "panicked; shutting down");
                    failure.get_or_insert_with(|| format!("{name} panicked"));
                    stop.cancel();
                }
                None if stop.is_cancelled() => tracing::info!(task = name, "stopped"),
                None => {
                    tracing::error!(task = name, "stopped unexpectedly; shutting down");
                    failure.get_or_insert_with(|| format!("{name} stopped unexpectedly"));
                    stop.cancel();
                }
            }
        }
        match failure {
            Some(failure) => Err(anyhow::anyhow!(failure)),
            None => Ok(()),
        }
    }
}

/// On `shutdown`: readiness off (`draining`), `delay`, then `stop` for every task;
/// nothing to do if a failing task stopped them first.
pub(super) async fn shut_down_in_order(
    shutdown: CancellationToken,
    stop: CancellationToken,
    draining: Vec<Draining>,
    delay: Duration,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop.cancelled() => return,
    }
    for face in &draining {
        face.begin();
    }
    tracing::info!(
        ?delay,
        "shutting down: readiness off; listeners stop after the delay"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = stop.cancelled() => {}
    }
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_stops_the_process_after_the_others_drain() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let drained = Arc::new(AtomicBool::new(false));
        let listener_stop = stop.child_token();
        let listener_drained = Arc::clone(&drained);
        // A listener whose in-flight request needs a second after the stop to finish.
        tasks.spawn("listener", async move {
            listener_stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            listener_drained.store(true, Ordering::SeqCst);
        });
        tasks.spawn("doomed", async {
            tokio::task::yield_now().await;
            panic!("a bug in a background task");
        });
        let result = tasks.wait(&stop).await;
        assert!(
            stop.is_cancelled(),
            "the panic did not cancel the root token"
        );
        assert!(
            drained.load(Ordering::SeqCst),
            "the process stopped before its listener drained"
        );
        let err = result.expect_err("a panic is a failure");
        assert_eq!(err.to_string(), "doomed panicked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_ending_early_fails_and_a_clean_stop_does_not() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("relay", async {});
        let waiting = stop.child_token();
        tasks.spawn("listener", async move { waiting.cancelled().await });
        let err = tasks.wait(&stop).await.unwrap_err();
        assert_eq!(err.to_string(), "relay stopped unexpectedly");

        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let waiting = stop.child_token();
        tasks.spawn("listener", async move { waiting.cancelled().await });
        stop.cancel();
        tasks.wait(&stop).await.unwrap();
    }

    /// A task on a thread of its own runs there, with timers and I/O of its own runtime,
    /// while the shared runtime cannot run anything (its one thread is blocked); its
    /// panic stops the process like any task's.
    #[tokio::test]
    async fn a_task_on_its_own_thread_runs_while_the_shared_runtime_is_busy() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let (ran_on, seen) = std::sync::mpsc::channel();
        tasks.spawn_on_own_thread("invalidation consumer", async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let name = std::thread::current().name().map(str::to_owned);
            ran_on.send(name).unwrap();
            panic!("a bug in the consumer");
        });
        // This test's runtime has one thread: blocking it here, the task still runs.
        let name = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("invalidation-consumer"));
        let err = tasks.wait(&stop).await.expect_err("a panic is a failure");
        assert!(stop.is_cancelled());
        assert_eq!(err.to_string(), "invalidation consumer panicked");
    }
}
