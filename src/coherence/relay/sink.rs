//! What a round does with its [`Sink`]: reads the stream's state before it appends
//! (intact, or rolled back by a Redis that lost entries), finds the epoch its entries
//! carry, and appends them (`XADD` in one pipeline, or a send on the in-process bus).

use std::collections::HashMap;

use fred::prelude::*;

use super::{Relay, RelayError, Sink};
use crate::coherence::stream::{self, Invalidation};

impl Relay {
    /// The stream's state after `next_seq - 1` entries were published: its newest entry
    /// and its epoch, read with two commands sent together.
    pub(super) async fn stream_state(&self, next_seq: i64) -> Result<StreamState, RelayError> {
        let Sink::Redis {
            l2,
            stream_key,
            epoch_key,
            ..
        } = &self.sink
        else {
            return Ok(StreamState::Intact(None));
        };
        let client = l2.client();
        let (newest, epoch) = tokio::join!(
            client.xrevrange::<Vec<(String, HashMap<String, String>)>, _, _, _>(
                stream_key.as_str(),
                "+",
                "-",
                Some(1)
            ),
            client.get::<Option<String>, _>(epoch_key.as_str()),
        );
        let (newest, epoch) = (newest?, epoch?);
        let newest_seq = newest
            .first()
            .and_then(|(_, fields)| Invalidation::parse(fields))
            .map(|entry| entry.seq);
        Ok(
            if next_seq > 1 && newest_seq.is_none_or(|seq| seq < next_seq - 1) {
                StreamState::RolledBack
            } else {
                StreamState::Intact(epoch)
            },
        )
    }

    /// The epoch entries carry: the stream's (created if Redis has none), or this
    /// process's for the in-process bus.
    pub(super) async fn epoch(&self) -> Result<String, RelayError> {
        Ok(match &self.sink {
            Sink::Redis { l2, epoch_key, .. } => {
                stream::ensure_epoch(l2.client(), epoch_key).await?
            }
            Sink::Local { epoch, .. } => epoch.clone(),
        })
    }

    /// Appends `entries` to the stream (`XADD`, `MAXLEN ~`), or sends them on the bus.
    pub(super) async fn append(&self, entries: &[Invalidation]) -> Result<(), RelayError> {
        match &self.sink {
            Sink::Redis {
                l2,
                stream_key,
                max_len,
                ..
            } => {
                // One pipeline: a round of 256 entries costs one round trip, so the relay
                // keeps up with bulk imports and a write behind them is not held up.
                let pipeline = l2.client().pipeline();
                for entry in entries {
                    let _: () = pipeline
                        .xadd(
                            stream_key.as_str(),
                            false,
                            ("MAXLEN", "~", *max_len as i64, None),
                            "*",
                            entry.fields(),
                        )
                        .await?;
                }
                let _: Vec<String> = pipeline.all().await?;
            }
            Sink::Local { bus, .. } => {
                for entry in entries {
                    // No receiver (no reader in this process) is fine: nothing to invalidate.
                    let _ = bus.send(entry.clone());
                }
            }
        }
        Ok(())
    }
}

/// What a round finds of the stream before it appends.
pub(super) enum StreamState {
    /// The stream has lost entries that the relay's sequence says were published: its
    /// newest entry is older than the last sequence number handed out, or it is gone
    /// (Redis failed over to an asynchronous replica, was restored from a snapshot, or
    /// restarted empty). Trimming never removes the newest entry.
    RolledBack,
    /// The stream holds what was published; its epoch, when Redis has one (`None`
    /// also for the in-process bus).
    Intact(Option<String>),
}
