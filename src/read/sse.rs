//! Server-Sent Events on the wire: the frames of the change feed, each encoded once and
//! shared by every subscriber it goes to, and the response body a subscriber's task
//! feeds.
//!
//! A change is `id: <epoch>/<seq>/<stream entry id>`, `event: change` and one line of
//! JSON data; a `reset` event tells the client to refetch what it shows (it missed
//! changes, or its `Last-Event-ID` can no longer be resumed); a comment line keeps an
//! idle connection open through proxies.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::coherence::stream::Invalidation;

/// The heartbeat comment.
pub const KEEPALIVE: Bytes = Bytes::from_static(b": keepalive\n\n");

/// A `reset` event.
pub fn reset(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason });
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

/// Where a change sits in the invalidation stream: what `Last-Event-ID` resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: String,
    /// The relay's dense sequence number.
    pub seq: i64,
    /// The Redis stream entry id (`-` without Redis).
    pub entry: String,
}

impl Position {
    /// `<epoch>/<seq>/<entry>`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.epoch, self.seq, self.entry)
    }

    /// Parses an event id this feed sent.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.trim().splitn(3, '/');
        let epoch = parts.next().filter(|e| !e.is_empty())?;
        let seq = parts.next()?.parse::<i64>().ok().filter(|s| *s >= 0)?;
        let entry = parts
            .next()
            .filter(|e| !e.is_empty() && !e.contains(['\n', '\r']))?;
        Some(Self {
            epoch: epoch.to_owned(),
            seq,
            entry: entry.to_owned(),
        })
    }
}

/// The event's data.
#[derive(Serialize)]
struct Data<'a> {
    product_id: Option<i64>,
    version: i64,
    deleted: bool,
    categories: &'a [String],
    committed_at: String,
}

/// The frame of a change.
pub fn change(entry: &Invalidation, position: &Position) -> Bytes {
    let data = Data {
        product_id: entry.product_id,
        version: entry.version,
        deleted: entry.deleted,
        categories: &entry.categories,
        committed_at: rfc3339(entry.committed_at_micros),
    };
    let data = serde_json::to_string(&data).expect("plain fields serialize");
    Bytes::from(format!(
        "id: {}\nevent: change\ndata: {data}\n\n",
        position.id()
    ))
}

/// Microseconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// The response body of one subscriber: the frames its task sends, until the task ends.
#[derive(Debug)]
pub struct EventBody {
    frames: mpsc::Receiver<Bytes>,
}

impl EventBody {
    /// A body and the sender its task writes frames to (a few frames of slack).
    pub fn channel() -> (mpsc::Sender<Bytes>, Self) {
        let (tx, frames) = mpsc::channel(16);
        (tx, Self { frames })
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let position = Position {
            epoch: "186b-1f".into(),
            seq: 42,
            entry: "1795748387408-0".into(),
        };
        assert_eq!(Position::parse(&position.id()), Some(position));
        for bad in ["", "e", "e/1", "e/x/1-0", "/1/1-0", "e/-1/1-0", "e/1/"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_748_387_408_123),
            "2026-11-27T02:59:47.408123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
    }

    #[test]
    fn a_change_is_one_event_with_its_position() {
        let entry = Invalidation {
            product_id: Some(7),
            version: 3,
            purge: false,
            deleted: true,
            categories: vec!["lamps".into()],
            committed_at_micros: 0,
            seq: 9,
            epoch: "e".into(),
            watermark: None,
            visible_at: None,
            heartbeat: false,
        };
        let position = Position {
            epoch: "e".into(),
            seq: 9,
            entry: "5-0".into(),
        };
        assert_eq!(
            change(&entry, &position),
            "id: e/9/5-0\nevent: change\ndata: {\"product_id\":7,\"version\":3,\"deleted\":true,\"categories\":[\"lamps\"],\"committed_at\":\"1970-01-01T00:00:00.000000Z\"}\n\n"
        );
    }
}
