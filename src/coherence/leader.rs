//! Relay leadership: with several writers (a rolling deploy always has two), one relay
//! publishes at a time. Leadership is a PostgreSQL session advisory lock held on a
//! connection of its own: it is released when that session ends, so a writer that dies
//! (or loses the primary) hands over as soon as PostgreSQL notices, and another writer's
//! relay takes it at its next try, within [`TRY_EVERY`].
//!
//! The lock spares work; it is not what keeps the stream dense. Every relay round still
//! locks `relay_state` in its transaction, so two relays that both believe they lead (a
//! leader cut off from the primary, whose session PostgreSQL has not yet ended) still
//! publish one round at a time, each with the next sequence numbers. The leadership
//! session asks PostgreSQL to probe its client with TCP keepalives every few seconds,
//! so the lock of a writer that vanished without closing its connection is released
//! within about [`KEEPALIVE_BOUND`].

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::time::Instant;

/// The advisory lock's key ("catalog relay").
const KEY: i64 = 0x6361_7461_6c6f_6772;
/// How often a follower tries to take the lead, and a leader checks it still holds it.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// Deadline of each leadership statement.
const DEADLINE: Duration = Duration::from_secs(2);
/// Server-side TCP keepalive settings of the leadership session: idle 2 s, then 3
/// probes 1 s apart.
const KEEPALIVES: &str =
    "set tcp_keepalives_idle = 2; set tcp_keepalives_interval = 1; set tcp_keepalives_count = 3";
/// About how long PostgreSQL takes to end the session of a vanished leader.
pub const KEEPALIVE_BOUND: Duration = Duration::from_secs(5);

/// This process's claim to lead the relay.
#[derive(Debug)]
pub struct Leadership {
    primary: PgPool,
    /// The session holding the lock, while this process leads.
    session: Option<PgConnection>,
    /// When the lock was last taken or checked.
    checked: Option<Instant>,
}

impl Leadership {
    /// A claim on `primary`'s advisory lock; nothing is held until [`Leadership::lead`].
    pub fn new(primary: PgPool) -> Self {
        Self {
            primary,
            session: None,
            checked: None,
        }
    }

    /// Whether this process leads now: takes the lock if it is free (at most every
    /// [`TRY_EVERY`]), and, while it holds it, checks its session every [`TRY_EVERY`].
    pub async fn lead(&mut self) -> bool {
        if self.checked.is_some_and(|at| at.elapsed() < TRY_EVERY) {
            return self.session.is_some();
        }
        self.checked = Some(Instant::now());
        match self.session.as_mut() {
            Some(session) => {
                let alive = tokio::time::timeout(DEADLINE, session.ping()).await;
                if !matches!(alive, Ok(Ok(()))) {
                    tracing::warn!("relay leadership lost: its session stopped answering");
                    self.session = None;
                }
            }
            None => self.session = self.try_take().await,
        }
        self.session.is_some()
    }

    async fn try_take(&self) -> Option<PgConnection> {
        let take = async {
            let mut session = self.primary.acquire().await?.detach();
            sqlx::raw_sql(KEEPALIVES).execute(&mut session).await?;
            let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(KEY)
                .fetch_one(&mut session)
                .await?;
            Ok::<_, sqlx::Error>(taken.then_some(session))
        };
        match tokio::time::timeout(DEADLINE, take).await {
            Ok(Ok(Some(session))) => {
                tracing::info!("this writer's relay leads: it publishes the outbox");
                Some(session)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "could not try the relay leadership");
                None
            }
            Err(_) => None,
        }
    }
}
