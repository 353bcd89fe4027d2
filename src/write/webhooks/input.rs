//! The bodies and query parameters of the webhook admin routes, parsed and bounded.
//! Unknown fields are refused; every refusal names the field at fault, and never quotes
//! a secret.

use hyper::Uri;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::WebhookError;
use super::event::EventType;
use super::signature::Secret;
use crate::http::client::Target;
use crate::http::parse::query_param;
use crate::write::payload::valid_slug;

/// Longest receiver URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most categories an endpoint may filter on.
pub const MAX_CATEGORIES: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest time the previous secret keeps signing after a rotation (30 days).
pub const MAX_PREVIOUS_VALID_SECS: u64 = 2_592_000;
/// How long the previous secret keeps signing after a rotation unless told (24 h).
pub const DEFAULT_PREVIOUS_VALID_SECS: u64 = 86_400;
/// Most dead letters one replay may name.
pub const MAX_REPLAY_IDS: usize = 1000;
/// Most dead letters one page lists, and the default.
pub const MAX_PAGE: i64 = 500;
/// Dead letters one page lists unless told.
pub const DEFAULT_PAGE: i64 = 100;

/// A new endpoint (`POST /admin/webhooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// Where deliveries are `POST`ed: an `http://` URL.
    pub url: String,
    /// The event type names wanted, without repeats.
    pub events: Vec<String>,
    /// Category slugs the endpoint is limited to; empty: all.
    pub categories: Vec<String>,
    /// The signing secret: given, or generated.
    pub secret: Secret,
    /// A note for admins.
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWire {
    url: String,
    events: Option<Vec<String>>,
    categories: Option<Vec<String>>,
    secret: Option<String>,
    description: Option<String>,
}

/// A rotation (`POST /admin/webhooks/{id}/rotate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new secret: given, or generated.
    pub secret: Secret,
    /// How long the current secret keeps signing beside the new one, in seconds.
    pub previous_valid_secs: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotationWire {
    secret: Option<String>,
    previous_valid_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayWire {
    ids: Option<Vec<i64>>,
}

fn invalid(detail: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(detail.into())
}

/// `body` as `T`: syntax errors are `malformed-json`, shape errors `invalid-webhook`;
/// an empty body is `T::default()` where `empty` gives one.
fn parse<T: DeserializeOwned>(body: &[u8], empty: Option<T>) -> Result<T, WebhookError> {
    if body.iter().all(u8::is_ascii_whitespace)
        && let Some(empty) = empty
    {
        return Ok(empty);
    }
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => invalid(err.to_string()),
        _ => WebhookError::MalformedJson(err.to_string()),
    })
}

impl NewWebhook {
    /// Parses and checks a `POST /admin/webhooks` body.
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let wire: NewWire = parse(body, None)?;
        let url = receiver_url(&wire.url)?;
        let events = match wire.events {
            None => EventType::ALL.iter().map(|t| t.name().to_owned()).collect(),
            Some(events) => event_names(events)?,
        };
        let categories = category_filter(wire.categories.unwrap_or_default())?;
        let secret = match wire.secret {
            None => Secret::generate(),
            Some(text) => Secret::parse(&text).map_err(|e| invalid(format!("secret: {e}")))?,
        };
        let description = wire.description.unwrap_or_default();
        if description.chars().count() > MAX_DESCRIPTION_CHARS
            || description.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "description: at most {MAX_DESCRIPTION_CHARS} characters, no control characters"
            )));
        }
        Ok(Self {
            url,
            events,
            categories,
            secret,
            description,
        })
    }
}

/// A receiver's URL: `http://host[:port][/path][?query]`, checked as the deliverer will
/// use it. `https://` is refused: this build has no TLS client.
pub fn receiver_url(url: &str) -> Result<String, WebhookError> {
    if url.is_empty() || url.len() > MAX_URL_BYTES {
        return Err(invalid(format!(
            "url: 1 to {MAX_URL_BYTES} bytes, an http:// URL"
        )));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid("url: not a URL (http://host[:port][/path])"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "url: https:// receivers need TLS, which this build of catalogd does not \
                 have; use http:// (for instance a TLS-terminating proxy next to the writer)",
            ));
        }
        _ => return Err(invalid("url: the scheme must be http://")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            "url: credentials in the URL are not accepted; receivers verify the signature",
        ));
    }
    if url.contains('#') {
        return Err(invalid("url: no fragment"));
    }
    Target::parse(url).map_err(|_| invalid("url: an http:// URL with a host"))?;
    Ok(url.to_owned())
}

/// Known event type names, each once, in the order given.
fn event_names(events: Vec<String>) -> Result<Vec<String>, WebhookError> {
    if events.is_empty() {
        return Err(invalid("events: name at least one event type"));
    }
    let mut names: Vec<String> = Vec::new();
    for name in events {
        if EventType::parse(&name).is_none() {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
            return Err(invalid(format!(
                "events: {name:?} is not an event type; known: {}",
                known.join(", ")
            )));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Well-formed category slugs, each once; existence is not required (a filter may
/// name a category created later).
fn category_filter(categories: Vec<String>) -> Result<Vec<String>, WebhookError> {
    if categories.len() > MAX_CATEGORIES {
        return Err(invalid(format!(
            "categories: at most {MAX_CATEGORIES} slugs"
        )));
    }
    let mut slugs: Vec<String> = Vec::new();
    for slug in categories {
        if !valid_slug(&slug) {
            return Err(invalid(format!(
                "categories: {slug:?} is not a category slug (lower-case letters and digits \
                 in words joined by '-', at most 64 characters)"
            )));
        }
        if !slugs.contains(&slug) {
            slugs.push(slug);
        }
    }
    Ok(slugs)
}

impl Rotation {
    /// Parses and checks a rotation body (empty: a generated secret, the default grace).
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let wire: RotationWire = parse(body, Some(RotationWire::default()))?;
        let secret = match wire.secret {
            None => Secret::generate(),
            Some(text) => Secret::parse(&text).map_err(|e| invalid(format!("secret: {e}")))?,
        };
        let previous_valid_secs = wire
            .previous_valid_secs
            .unwrap_or(DEFAULT_PREVIOUS_VALID_SECS);
        if previous_valid_secs > MAX_PREVIOUS_VALID_SECS {
            return Err(invalid(format!(
                "previous_valid_secs: 0 to {MAX_PREVIOUS_VALID_SECS}"
            )));
        }
        Ok(Self {
            secret,
            previous_valid_secs,
        })
    }
}

/// A replay body: the dead letters named (`None`: all of the endpoint's).
pub fn replay_ids(body: &[u8]) -> Result<Option<Vec<i64>>, WebhookError> {
    let wire: ReplayWire = parse(body, Some(ReplayWire::default()))?;
    match wire.ids {
        None => Ok(None),
        Some(ids) if ids.is_empty() || ids.len() > MAX_REPLAY_IDS => Err(invalid(format!(
            "ids: 1 to {MAX_REPLAY_IDS} dead letter ids, or no ids for all"
        ))),
        Some(ids) if ids.iter().any(|id| *id <= 0) => {
            Err(invalid("ids: dead letter ids are positive integers"))
        }
        Some(ids) => Ok(Some(ids)),
    }
}

/// A page of dead letters: `limit` (1 to [`MAX_PAGE`]) after the id `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Most items.
    pub limit: i64,
    /// Items with a larger id than this.
    pub after: i64,
}

impl Page {
    /// `?limit=N&after=ID`, both optional.
    pub fn parse(query: Option<&str>) -> Result<Self, WebhookError> {
        let limit = match query_param(query, "limit") {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| invalid(format!("limit: an integer from 1 to {MAX_PAGE}")))?,
        };
        let after = match query_param(query, "after") {
            None => 0,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| invalid("after: a dead letter id (the last one seen)"))?,
        };
        Ok(Self { limit, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> WebhookError {
        NewWebhook::parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_minimal_endpoint_gets_every_event_and_a_generated_secret() {
        let hook = NewWebhook::parse(br#"{"url":"http://127.0.0.1:9000/hooks"}"#).unwrap();
        assert_eq!(hook.url, "http://127.0.0.1:9000/hooks");
        assert_eq!(
            hook.events,
            ["product.updated", "product.deleted", "category.updated"]
        );
        assert!(hook.categories.is_empty());
        assert!(hook.secret.expose().starts_with("whsec_"));
    }

    #[test]
    fn filters_are_checked_and_deduplicated() {
        let secret = Secret::generate();
        let body = format!(
            r#"{{"url":"http://h/x?y=1","events":["product.deleted","product.deleted"],
                "categories":["kitchen","kitchen","garden"],"secret":"{}",
                "description":"ERP"}}"#,
            secret.expose()
        );
        let hook = NewWebhook::parse(body.as_bytes()).unwrap();
        assert_eq!(hook.events, ["product.deleted"]);
        assert_eq!(hook.categories, ["kitchen", "garden"]);
        assert_eq!(hook.secret, secret);
    }

    #[test]
    fn bad_endpoints_are_refused_by_kind() {
        for body in [
            r#"{"url":"https://h/"}"#,
            r#"{"url":"ftp://h/"}"#,
            r#"{"url":"http://"}"#,
            r#"{"url":"h:80/x"}"#,
            r#"{"url":"http://u:p@h/"}"#,
            r#"{"url":""}"#,
            r#"{"url":"http://h/","events":[]}"#,
            r#"{"url":"http://h/","events":["product.created"]}"#,
            r#"{"url":"http://h/","categories":["Not A Slug"]}"#,
            r#"{"url":"http://h/","secret":"not-a-secret"}"#,
            r#"{"url":"http://h/","extra":1}"#,
            r#"{"url":"http://h/","description":"a\u0000b"}"#,
            r#"{"events":["product.updated"]}"#,
            r#"{"url":5}"#,
        ] {
            assert!(
                matches!(refused(body), WebhookError::Invalid(_)),
                "{body}: {:?}",
                refused(body)
            );
        }
        let long = format!(r#"{{"url":"http://h/{}"}}"#, "a".repeat(MAX_URL_BYTES));
        assert!(matches!(refused(&long), WebhookError::Invalid(_)));
        for body in ["", "{", r#"{"url":"http://h/",}"#, r#"{"url":"#] {
            assert!(
                matches!(refused(body), WebhookError::MalformedJson(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn a_refused_secret_is_not_quoted() {
        let WebhookError::Invalid(detail) =
            refused(r#"{"url":"http://h/","secret":"whsec_c2VjcmV0LXZhbHVl"}"#)
        else {
            panic!("not refused as invalid");
        };
        assert!(!detail.contains("c2VjcmV0LXZhbHVl"), "{detail}");
    }

    #[test]
    fn rotations_replays_and_pages_have_defaults_and_bounds() {
        let rotation = Rotation::parse(b"").unwrap();
        assert_eq!(rotation.previous_valid_secs, DEFAULT_PREVIOUS_VALID_SECS);
        assert_eq!(
            Rotation::parse(br#"{"previous_valid_secs":0}"#)
                .unwrap()
                .previous_valid_secs,
            0
        );
        assert!(Rotation::parse(br#"{"previous_valid_secs":2592001}"#).is_err());
        assert!(Rotation::parse(br#"{"secret":"whsec_x"}"#).is_err());
        assert_eq!(replay_ids(b"").unwrap(), None);
        assert_eq!(replay_ids(br#"{"ids":[3,4]}"#).unwrap(), Some(vec![3, 4]));
        assert!(replay_ids(br#"{"ids":[]}"#).is_err());
        assert!(replay_ids(br#"{"ids":[0]}"#).is_err());
        assert_eq!(
            Page::parse(None).unwrap(),
            Page {
                limit: DEFAULT_PAGE,
                after: 0
            }
        );
        assert_eq!(
            Page::parse(Some("after=9&limit=2")).unwrap(),
            Page { limit: 2, after: 9 }
        );
        for bad in ["limit=0", "limit=501", "limit=x", "after=-1"] {
            assert!(Page::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
