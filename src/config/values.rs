//! Typed lookups and value parsers of the `CATALOG_*` variables: every failure names
//! its variable, and no message ever shows a secret (tokens, or a URL's password).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use super::{ConfigError, DIGEST_PREFIX, Secret, Source, parse_digest};
use crate::http::rate::Rate;

/// Typed lookups that attach the variable's name to any failure.
pub(super) struct Vars<'a, S: ?Sized>(pub(super) &'a S);

impl<S: Source + ?Sized> Vars<'_, S> {
    pub(super) fn optional<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.0.get(var) {
            None => Ok(None),
            Some(raw) if raw.trim().is_empty() => Ok(None),
            Some(raw) => parse(raw.trim()).map(Some).map_err(|reason| ConfigError {
                var,
                reason: match shown(var, &raw) {
                    Some(shown) => format!("invalid value {shown:?}: {reason}"),
                    None => format!("invalid value (not shown: it holds secrets): {reason}"),
                },
            }),
        }
    }

    pub(super) fn or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.optional(var, parse)?.unwrap_or(default))
    }

    pub(super) fn required<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.optional(var, parse)?.ok_or_else(|| ConfigError {
            var,
            reason: "is not set (for the local stack: eval \"$(ops/dev.sh env)\")".to_owned(),
        })
    }
}

/// Variables whose values are never printed, not even in part.
pub(super) const SECRET_VARS: [&str; 1] = ["CATALOG_ADMIN_TOKENS"];

/// Variables holding URLs, which may carry a password: printed with it masked.
pub(super) const URL_VARS: [&str; 3] = [
    "CATALOG_DATABASE_URL",
    "CATALOG_REPLICA_URLS",
    "CATALOG_REDIS_URL",
];

/// What an error message may show of `var`'s value: nothing for secrets, URLs with
/// their passwords masked, other values as they are.
pub(super) fn shown(var: &str, raw: &str) -> Option<String> {
    if SECRET_VARS.contains(&var) {
        None
    } else if URL_VARS.contains(&var) {
        Some(raw.split(',').map(mask_url).collect::<Vec<_>>().join(","))
    } else {
        Some(raw.to_owned())
    }
}

/// `url` with the password of its user information and any `password` query parameter
/// replaced by `***`. Everything up to the last `@` before the query is taken as user
/// information, so a password holding `@`, `/` or `:` is masked whole.
pub(super) fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut masked = String::with_capacity(url.len());
    if !scheme.is_empty() || url.contains("://") {
        masked.push_str(scheme);
        masked.push_str("://");
    }
    match path.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    masked.push_str(user);
                    masked.push_str(":***");
                }
                None => masked.push_str(userinfo),
            }
            masked.push('@');
            masked.push_str(host);
        }
        None => masked.push_str(path),
    }
    if let Some(query) = query {
        masked.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        masked.push_str(&params.join("&"));
    }
    masked
}

pub(super) fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

pub(super) fn parse_from_str<T: FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    raw.parse().map_err(|e: T::Err| e.to_string())
}

pub(super) fn parse_in_range<T>(raw: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let value: T = parse_from_str(raw)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

pub(super) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub(super) fn parse_pg_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(raw.to_owned())
    } else {
        Err("expected a postgres:// URL".to_owned())
    }
}

/// One server (`redis://`, `rediss://`), a Redis Cluster by its seed nodes
/// (`redis-cluster://host:port[,host:port...]`), or a primary behind sentinels
/// (`redis-sentinel://host:port[,host:port...][/db]?sentinelServiceName=name`); the
/// rest of the URL is checked when the client is built (`store::redis::redis_config`).
pub(super) fn parse_redis_url(raw: &str) -> Result<String, String> {
    const SCHEMES: [&str; 4] = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "redis-sentinel://",
    ];
    if SCHEMES.iter().any(|scheme| raw.starts_with(scheme)) {
        Ok(raw.to_owned())
    } else {
        Err(
            "expected a redis://, redis-cluster://host:port[,host:port...] or \
             redis-sentinel://host:port[,host:port...]?sentinelServiceName=name URL"
                .to_owned(),
        )
    }
}

/// A per-client rate from its two variables: the rate (0, the default, means no limit)
/// and the burst (default: twice the rate, at least 1).
pub(super) fn rate<S: Source + ?Sized>(
    var: &Vars<'_, S>,
    per_second: &'static str,
    burst: &'static str,
) -> Result<Option<Rate>, ConfigError> {
    let rate: u32 = var.or(per_second, 0, |raw| parse_in_range(raw, 0..=10_000_000))?;
    let Some(rate) = NonZeroU32::new(rate) else {
        return Ok(None);
    };
    let default_burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
    let burst = var.or(burst, default_burst, |raw| {
        parse_in_range(raw, 1..=100_000_000).map(|b: u32| NonZeroU32::new(b).expect("at least 1"))
    })?;
    Ok(Some(Rate {
        per_second: rate,
        burst,
    }))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after; or `*`.
pub(super) fn parse_origin(raw: &str) -> Result<String, String> {
    let valid = raw == "*"
        || raw.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.contains(['/', '?', '#', ' '])
        });
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("an origin is scheme://host[:port] (http or https), or *".to_owned())
    }
}

pub(super) fn parse_tokens(raw: &str) -> Result<Vec<Secret>, String> {
    let tokens: Vec<Secret> = split_list(raw).map(Secret::new).collect();
    for token in &tokens {
        let entry = token.expose();
        if entry.starts_with(DIGEST_PREFIX.as_bytes()) {
            if parse_digest(entry).is_none() {
                return Err("a sha256: entry must be followed by 64 hex digits".to_owned());
            }
        } else if entry.len() < 8 {
            return Err("every token must be at least 8 characters".to_owned());
        }
    }
    Ok(tokens)
}
