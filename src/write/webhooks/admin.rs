//! The webhook admin routes, under `/admin/webhooks` (authenticated by the writer like
//! every admin route, before anything here runs):
//!
//! | route | answers |
//! | --- | --- |
//! | `POST /admin/webhooks` | 201: the endpoint, with its `secret` (the only time it is shown) |
//! | `GET /admin/webhooks` | 200 `{"items":[endpoint, ...]}` |
//! | `GET /admin/webhooks/{id}` | 200: the endpoint |
//! | `DELETE /admin/webhooks/{id}` | 200 `{"id","deleted":true}`: it and its deliveries are gone |
//! | `POST /admin/webhooks/{id}/rotate` | 200 `{"id","secret","previous_secret_until"}` |
//! | `GET /admin/webhooks/{id}/dead-letters?limit=&after=` | 200 `{"items":[...],"next_after"}` |
//! | `POST /admin/webhooks/{id}/dead-letters/replay` | 202 `{"replayed":n}` |
//!
//! An endpoint never shows its secrets after they were created (or rotated in).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use sqlx::PgPool;

use super::error::WebhookError;
use super::input::{NewWebhook, Page, Rotation, replay_ids};
use super::store::{self, Endpoint};
use crate::http::parse::parse_id;
use crate::http::response::{JSON, no_store};

/// A route under `/admin/webhooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/admin/webhooks`
    Collection,
    /// `/admin/webhooks/{id}`
    One(i64),
    /// `/admin/webhooks/{id}/rotate`
    Rotate(i64),
    /// `/admin/webhooks/{id}/dead-letters`
    DeadLetters(i64),
    /// `/admin/webhooks/{id}/dead-letters/replay`
    Replay(i64),
}

impl Route {
    /// The route of `rest`, the path after `/admin/webhooks`.
    pub fn parse(rest: &str) -> Result<Self, WebhookError> {
        if rest.is_empty() {
            return Ok(Self::Collection);
        }
        let rest = rest.strip_prefix('/').ok_or(WebhookError::RouteNotFound)?;
        let (raw_id, shape): (&str, fn(i64) -> Self) = match rest.split_once('/') {
            None => (rest, Self::One),
            Some((id, "rotate")) => (id, Self::Rotate),
            Some((id, "dead-letters")) => (id, Self::DeadLetters),
            Some((id, "dead-letters/replay")) => (id, Self::Replay),
            Some(_) => return Err(WebhookError::RouteNotFound),
        };
        let id = parse_id(raw_id).map_err(|_| WebhookError::InvalidId(raw_id.to_owned()))?;
        Ok(shape(id))
    }

    /// The methods the route serves, as `Allow` lists them.
    fn allow(self) -> &'static str {
        match self {
            Self::Collection => "GET, POST",
            Self::One(_) => "GET, DELETE",
            Self::Rotate(_) | Self::Replay(_) => "POST",
            Self::DeadLetters(_) => "GET",
        }
    }
}

/// One request under `/admin/webhooks`, routed and method-checked before its body is
/// read.
#[derive(Debug)]
pub struct Call {
    routed: Result<(Route, Method), WebhookError>,
    query: Option<String>,
}

impl Call {
    /// Routes `method` on `rest` (the path after `/admin/webhooks`).
    pub fn new(method: &Method, rest: &str, query: Option<&str>) -> Self {
        let routed = Route::parse(rest).and_then(|route| {
            let allow = route.allow();
            if allow.split(", ").any(|m| m == method.as_str()) {
                Ok((route, method.clone()))
            } else {
                Err(WebhookError::MethodNotAllowed(allow))
            }
        });
        Self {
            routed,
            query: query.map(str::to_owned),
        }
    }

    /// Whether the request's body is to be read (a `POST` that routed).
    pub fn takes_body(&self) -> bool {
        matches!(&self.routed, Ok((_, method)) if method == Method::POST)
    }
}

/// Answers `call` with `body`, each call to the primary bounded by `deadline`.
pub async fn answer(
    primary: &PgPool,
    deadline: Duration,
    call: Call,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let result = match call.routed {
        Ok((route, method)) => {
            let admin = Admin { primary, deadline };
            admin
                .dispatch(route, &method, call.query.as_deref(), body)
                .await
        }
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| {
        if let WebhookError::Database(err) = &error {
            tracing::warn!(error = %err, "a webhook admin request failed");
        }
        error.problem().response()
    })
}

struct Admin<'a> {
    primary: &'a PgPool,
    deadline: Duration,
}

/// An endpoint with its new secret: the creation's answer.
#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    endpoint: &'a Endpoint,
    secret: &'a str,
}

#[derive(Serialize)]
struct Rotated<'a> {
    id: i64,
    secret: &'a str,
    previous_secret_until: Option<&'a str>,
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Serialize)]
struct DeadLetterPage {
    items: Vec<store::DeadLetter>,
    /// The `after` of the next page; `null` on the last page.
    next_after: Option<i64>,
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("admin answers serialize");
    no_store(status, JSON, body)
}

impl Admin<'_> {
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, WebhookError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(WebhookError::Timeout),
        }
    }

    async fn dispatch(
        &self,
        route: Route,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Response<Full<Bytes>>, WebhookError> {
        let primary = self.primary;
        match (route, method.as_str()) {
            (Route::Collection, "POST") => {
                let hook = NewWebhook::parse(body)?;
                let endpoint = self.bounded(store::create(primary, &hook)).await?;
                let created = Created {
                    endpoint: &endpoint,
                    secret: hook.secret.expose(),
                };
                let mut response = json(StatusCode::CREATED, &created);
                if let Ok(location) =
                    HeaderValue::try_from(format!("/admin/webhooks/{}", endpoint.id))
                {
                    response.headers_mut().insert(LOCATION, location);
                }
                tracing::info!(id = endpoint.id, url = %endpoint.url, "webhook registered");
                Ok(response)
            }
            (Route::Collection, _) => {
                let items = self.bounded(store::list(primary)).await?;
                Ok(json(StatusCode::OK, &Items { items }))
            }
            (Route::One(id), "DELETE") => {
                if !self.bounded(store::delete(primary, id)).await? {
                    return Err(WebhookError::NotFound(id));
                }
                tracing::info!(id, "webhook deleted");
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"id": id, "deleted": true}),
                ))
            }
            (Route::One(id), _) => {
                let endpoint = self.bounded(store::get(primary, id)).await?;
                let endpoint = endpoint.ok_or(WebhookError::NotFound(id))?;
                Ok(json(StatusCode::OK, &endpoint))
            }
            (Route::Rotate(id), _) => {
                let rotation = Rotation::parse(body)?;
                if !self.bounded(store::rotate(primary, id, &rotation)).await? {
                    return Err(WebhookError::NotFound(id));
                }
                let endpoint = self.bounded(store::get(primary, id)).await?;
                let until = endpoint.and_then(|e| e.previous_secret_until);
                tracing::info!(id, "webhook secret rotated");
                Ok(json(
                    StatusCode::OK,
                    &Rotated {
                        id,
                        secret: rotation.secret.expose(),
                        previous_secret_until: until.as_deref(),
                    },
                ))
            }
            (Route::DeadLetters(id), _) => {
                let page = Page::parse(query)?;
                let items = self.bounded(store::dead_letters(primary, id, page)).await?;
                let items = items.ok_or(WebhookError::NotFound(id))?;
                let next_after = (items.len() as i64 == page.limit)
                    .then(|| items.last().map(|l| l.id))
                    .flatten();
                Ok(json(StatusCode::OK, &DeadLetterPage { items, next_after }))
            }
            (Route::Replay(id), _) => {
                let ids = replay_ids(body)?;
                let replayed = self
                    .bounded(store::replay(primary, id, ids.as_deref()))
                    .await?;
                let replayed = replayed.ok_or(WebhookError::NotFound(id))?;
                tracing::info!(id, replayed, "webhook dead letters replayed");
                Ok(json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"replayed": replayed}),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_webhook_routes() {
        assert_eq!(Route::parse("").unwrap(), Route::Collection);
        assert_eq!(Route::parse("/7").unwrap(), Route::One(7));
        assert_eq!(Route::parse("/7/rotate").unwrap(), Route::Rotate(7));
        assert_eq!(
            Route::parse("/7/dead-letters").unwrap(),
            Route::DeadLetters(7)
        );
        assert_eq!(
            Route::parse("/7/dead-letters/replay").unwrap(),
            Route::Replay(7)
        );
        for unknown in ["x", "/7/", "/7/other", "/7/dead-letters/", "s/7"] {
            assert!(
                matches!(Route::parse(unknown), Err(WebhookError::RouteNotFound)),
                "{unknown}"
            );
        }
        for bad in ["/", "/abc", "/0", "/-1/rotate", "/99999999999999999999"] {
            assert!(
                matches!(Route::parse(bad), Err(WebhookError::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn methods_are_checked_before_bodies_are_read() {
        let post = Call::new(&Method::POST, "", None);
        assert!(post.takes_body());
        let get = Call::new(&Method::GET, "/3/dead-letters", Some("limit=5"));
        assert!(!get.takes_body());
        let wrong = Call::new(&Method::PUT, "/3", None);
        assert!(!wrong.takes_body());
        assert!(matches!(
            wrong.routed,
            Err(WebhookError::MethodNotAllowed("GET, DELETE"))
        ));
        let unknown = Call::new(&Method::POST, "/3/other", None);
        assert!(!unknown.takes_body());
    }
}
