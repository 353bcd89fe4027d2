//! What a round does with its [`Sink`]: reads the stream's state before it appends
//! (intact, or rolled back by a Redis that lost entries), finds the epoch its entries
//! carry, and appends them (one script that checks the stream still ends where the
//! round found it and `XADD`s them all, or a send on the in-process bus).

use std::collections::HashMap;
use std::sync::LazyLock;

use fred::prelude::*;
use fred::types::scripts::Script;

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

    /// Appends `entries` (numbered from the relay's next sequence number) to the stream
    /// (`XADD`, `MAXLEN ~`), or sends them on the bus. Unless `recovering` (the round
    /// found the stream rolled back and starts it anew), the stream must still hold the
    /// entry numbered just before them: a Redis that lost entries after the round read
    /// its state (a failover while the round ran, the round's command retried on the new
    /// primary) gets nothing, and the round fails, so the next one finds the rollback.
    pub(super) async fn append(
        &self,
        entries: &[Invalidation],
        recovering: bool,
    ) -> Result<(), RelayError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        match &self.sink {
            Sink::Redis {
                l2,
                stream_key,
                max_len,
                ..
            } => {
                // One script: a round of 256 entries costs one round trip, so the relay
                // keeps up with bulk imports and a write behind them is not held up.
                let previous = if recovering { 0 } else { first.seq - 1 };
                let fields: Vec<Vec<(&str, String)>> =
                    entries.iter().map(Invalidation::fields).collect();
                let mut args: Vec<Value> =
                    Vec::with_capacity(3 + fields.iter().map(|f| 1 + 2 * f.len()).sum::<usize>());
                args.extend([
                    previous.into(),
                    stream::SEQ.into(),
                    (*max_len as i64).into(),
                ]);
                for fields in fields {
                    args.push(((fields.len() * 2) as i64).into());
                    for (name, value) in fields {
                        args.push(name.into());
                        args.push(value.into());
                    }
                }
                let appended: i64 = APPEND
                    .evalsha_with_reload(l2.client(), vec![stream_key.as_str()], args)
                    .await?;
                if appended == 0 {
                    return Err(RelayError::StreamLost);
                }
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

/// Appends entries to the stream `KEYS[1]` if its newest entry's sequence number
/// (field `ARGV[2]`) is at least `ARGV[1]` (0: no check), trimming to about `ARGV[3]`
/// entries; then come the entries, each as its count of name and value arguments and
/// those arguments. Returns 1 if it appended, 0 if the stream had lost entries.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local previous = tonumber(ARGV[1])
if previous > 0 then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local seq = -1
  if #newest > 0 then
    local fields = newest[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == ARGV[2] then seq = tonumber(fields[i + 1]) end
    end
  end
  if seq < previous then return 0 end
end
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
",
    )
});

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
