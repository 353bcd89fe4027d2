//! Exponential backoff for the coherence loops (relay rounds, stream reads): 50 ms
//! doubling to 2 s, reset by the next success, and cut short by shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First pause after a failure.
const FIRST: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
const MAX: Duration = Duration::from_secs(2);

/// The pause before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// After a success: the next failure waits the shortest pause again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// The pause the next [`Backoff::wait`] will take, for log lines.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// Waits the current pause and doubles it; `false` if `stop` fired meanwhile.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_maximum_and_reset() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::default();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pauses.push(backoff.next());
            assert!(backoff.wait(&stop).await);
        }
        assert_eq!(pauses[0], FIRST);
        assert_eq!(pauses[1], FIRST * 2);
        assert_eq!(*pauses.last().unwrap(), MAX);
        backoff.reset();
        assert_eq!(backoff.next(), FIRST);
        stop.cancel();
        assert!(!backoff.wait(&stop).await);
    }
}
