//! Admin payloads: parsed with simd-json into typed values, unknown fields rejected,
//! every field bounded; JSON merge patches (RFC 7396) applied to the current product.
//!
//! Nesting is bounded too: `attributes` at [`MAX_ATTRIBUTES_DEPTH`] levels, a merge patch
//! or a bulk line at one level more. simd-json parses up to 1,024 levels, but a write
//! decodes the stored `attributes` with serde_json, which stops at 128: a product stored
//! deeper than that could never be changed again.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::WriteError;

/// Longest text accepted for each field, in characters.
const MAX_NAME: usize = 300;
const MAX_DESCRIPTION: usize = 10_000;
const MAX_BRAND: usize = 200;
const MAX_SKU: usize = 64;
/// Largest `attributes` object, serialized.
const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Deepest nesting of `attributes`, in objects and arrays (the object itself is level 1).
/// Far more than product attributes need, and far below serde_json's recursion limit of
/// 128, which the writer meets when it decodes the stored row to change it.
pub const MAX_ATTRIBUTES_DEPTH: usize = 32;
/// Deepest nesting of a product payload (`PATCH` body, bulk line): the product object
/// around its `attributes`.
const MAX_PAYLOAD_DEPTH: usize = MAX_ATTRIBUTES_DEPTH + 1;
/// Deepest nesting simd-json parses; a deeper body is refused before any value is built.
/// Building a value recurses once per level: at simd-json's own limit (1,024) that
/// overflowed a 2 MiB tokio worker's stack in a debug build and aborted the process
/// (`tests/hostile.rs`). serde_json's limit too, and far above [`MAX_PAYLOAD_DEPTH`], so
/// the bounds below still name the field that nests too deep.
const MAX_PARSE_DEPTH: usize = 128;
const MAX_IMAGES: usize = 20;
const MAX_URL: usize = 2048;
const MAX_CATEGORIES: usize = 20;
/// Largest price in minor units (ten billion in major units).
const MAX_AMOUNT: i64 = 1_000_000_000_000;
const MAX_STOCK: i32 = 1_000_000_000;

/// A product as an admin sends it (`PUT`), and as a merge patch is applied to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// Stock-keeping unit: letters, digits, `.`, `_`, `-`.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Long description.
    #[serde(default)]
    pub description: String,
    /// Brand.
    #[serde(default)]
    pub brand: String,
    /// Price.
    pub price: PriceInput,
    /// Units in stock.
    #[serde(default)]
    pub stock: i32,
    /// Free-form attributes (a JSON object).
    #[serde(default = "empty_object")]
    pub attributes: Value,
    /// Image URLs.
    #[serde(default)]
    pub images: Vec<String>,
    /// Whether storefronts may show it.
    #[serde(default = "yes")]
    pub active: bool,
    /// Category slugs.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// A price in minor units of an ISO-4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    /// Minor units (cents).
    pub amount: i64,
    /// Three capital letters.
    pub currency: String,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn yes() -> bool {
    true
}

fn invalid(field: &'static str, why: impl Into<String>) -> WriteError {
    WriteError::Invalid {
        field,
        reason: why.into(),
    }
}

fn bounded_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), WriteError> {
    // ASCII text (the common case) is checked byte by byte, in one pass: `char`s are
    // decoded only for the rest.
    let ascii = value.is_ascii();
    let len = if ascii {
        value.len()
    } else {
        value.chars().count()
    };
    if len < min || len > max {
        return Err(invalid(field, format!("must be {min} to {max} characters")));
    }
    let control = if ascii {
        value.bytes().any(|b| b.is_ascii_control())
    } else {
        value.chars().any(char::is_control)
    };
    if control && field != "description" {
        return Err(invalid(field, "must not contain control characters"));
    }
    if control && value.contains('\0') {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

impl ProductInput {
    /// Parses a `PUT` body.
    pub fn parse(body: &[u8]) -> Result<Self, WriteError> {
        let mut bytes = body.to_vec();
        let input: Self = from_json(&mut bytes)?;
        input.validate()?;
        Ok(input)
    }

    /// Checks every bound; the database's constraints repeat the essential ones.
    pub fn validate(&self) -> Result<(), WriteError> {
        bounded_text("sku", &self.sku, 1, MAX_SKU)?;
        if !self
            .sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid("sku", "only letters, digits, '.', '_' and '-'"));
        }
        bounded_text("name", &self.name, 1, MAX_NAME)?;
        bounded_text("description", &self.description, 0, MAX_DESCRIPTION)?;
        bounded_text("brand", &self.brand, 0, MAX_BRAND)?;
        if !(0..=MAX_AMOUNT).contains(&self.price.amount) {
            return Err(invalid(
                "price.amount",
                format!("must be 0 to {MAX_AMOUNT}"),
            ));
        }
        if self.price.currency.len() != 3
            || !self.price.currency.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(invalid(
                "price.currency",
                "must be an ISO-4217 code such as EUR",
            ));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(invalid("stock", format!("must be 0 to {MAX_STOCK}")));
        }
        if !self.attributes.is_object() {
            return Err(invalid("attributes", "must be a JSON object"));
        }
        if !nests_within(&self.attributes, MAX_ATTRIBUTES_DEPTH) {
            return Err(invalid(
                "attributes",
                format!("must nest at most {MAX_ATTRIBUTES_DEPTH} levels of objects and arrays"),
            ));
        }
        let attributes = self.attributes.to_string();
        if attributes.len() > MAX_ATTRIBUTES_BYTES {
            return Err(invalid(
                "attributes",
                format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes"),
            ));
        }
        // PostgreSQL's jsonb cannot hold a NUL character: refused here, not by the database.
        if attributes.contains("\\u0000") {
            return Err(invalid("attributes", "must not contain NUL characters"));
        }
        if self.images.len() > MAX_IMAGES {
            return Err(invalid("images", format!("at most {MAX_IMAGES}")));
        }
        for url in &self.images {
            if url.len() > MAX_URL
                || !(url.starts_with("https://") || url.starts_with("http://"))
                || url.chars().any(char::is_control)
            {
                return Err(invalid(
                    "images",
                    "each must be an http(s) URL of at most 2048 bytes",
                ));
            }
        }
        if self.categories.len() > MAX_CATEGORIES {
            return Err(invalid("categories", format!("at most {MAX_CATEGORIES}")));
        }
        for slug in &self.categories {
            if !valid_slug(slug) {
                return Err(invalid(
                    "categories",
                    format!("{slug:?} is not a category slug"),
                ));
            }
        }
        Ok(())
    }

    /// Applies a JSON merge patch (RFC 7396) to this product and validates the result.
    pub fn patched(&self, patch_body: &[u8]) -> Result<Self, WriteError> {
        let mut bytes = patch_body.to_vec();
        let patch = json_value(&mut bytes)?;
        if !patch.is_object() {
            return Err(invalid("body", "a merge patch must be a JSON object"));
        }
        bounded_depth(&patch)?;
        let mut current = serde_json::to_value(self).map_err(|e| invalid("body", e.to_string()))?;
        merge(&mut current, &patch);
        let patched: Self = serde_json::from_value(current).map_err(|e| WriteError::Invalid {
            field: "body",
            reason: e.to_string(),
        })?;
        patched.validate()?;
        Ok(patched)
    }
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Whether `value` nests at most `max` levels of objects and arrays (a scalar is 0).
/// The recursion stops one level past `max`, so its depth is bounded by `max`, not by
/// the input's; and it allocates nothing.
fn nests_within(value: &Value, max: usize) -> bool {
    match value {
        Value::Object(map) => max > 0 && map.values().all(|child| nests_within(child, max - 1)),
        Value::Array(items) => max > 0 && items.iter().all(|child| nests_within(child, max - 1)),
        _ => true,
    }
}

/// Refuses a whole product payload nested deeper than [`MAX_PAYLOAD_DEPTH`].
fn bounded_depth(payload: &Value) -> Result<(), WriteError> {
    if nests_within(payload, MAX_PAYLOAD_DEPTH) {
        Ok(())
    } else {
        Err(too_deep())
    }
}

fn too_deep() -> WriteError {
    invalid(
        "body",
        format!(
            "must nest at most {MAX_PAYLOAD_DEPTH} levels of objects and arrays \
             (attributes: at most {MAX_ATTRIBUTES_DEPTH} levels)"
        ),
    )
}

/// Parses a body into `T`: the JSON with simd-json, at most [`MAX_PARSE_DEPTH`] levels
/// deep (a syntax error is malformed JSON), then its shape (a wrong type or a missing
/// field is an invalid product, naming what was expected).
fn from_json<T: serde::de::DeserializeOwned>(bytes: &mut [u8]) -> Result<T, WriteError> {
    serde_json::from_value(json_value(bytes)?).map_err(|e| invalid("body", e.to_string()))
}

/// The JSON of a body, parsed with simd-json, at most [`MAX_PARSE_DEPTH`] levels deep
/// (a syntax error is malformed JSON): the first step of [`from_json`], all of it when
/// the caller wants the value itself (converting a `Value` into a `Value` rebuilt every
/// object, about 7 % of a bulk import's writer time).
fn json_value(bytes: &mut [u8]) -> Result<Value, WriteError> {
    let mut buffers = simd_json::Buffers::with_max_depth(bytes.len(), MAX_PARSE_DEPTH);
    simd_json::serde::from_slice_with_buffers(bytes, &mut buffers).map_err(json_error)
}

/// Parses one line of a bulk import: a product object with its `id`.
pub fn parse_bulk_line(line: &[u8]) -> Result<(i64, ProductInput), WriteError> {
    let mut bytes = line.to_vec();
    let mut value = json_value(&mut bytes)?;
    bounded_depth(&value)?;
    let id = value
        .as_object_mut()
        .and_then(|object| object.remove("id"))
        .and_then(|id| id.as_i64())
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid("id", "each line needs a positive integer id"))?;
    let input: ProductInput =
        serde_json::from_value(value).map_err(|e| invalid("body", e.to_string()))?;
    input.validate()?;
    Ok((id, input))
}

/// A category as an admin sends it (`PUT /admin/categories/{slug}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryInput {
    /// Display name.
    pub name: String,
    /// The parent category's slug.
    #[serde(default)]
    pub parent: Option<String>,
}

impl CategoryInput {
    /// Parses and validates a `PUT` body for category `slug`.
    pub fn parse(slug: &str, body: &[u8]) -> Result<Self, WriteError> {
        let mut bytes = body.to_vec();
        let input: Self = from_json(&mut bytes)?;
        bounded_text("name", &input.name, 1, MAX_BRAND)?;
        if let Some(parent) = &input.parent {
            if !valid_slug(parent) {
                return Err(invalid(
                    "parent",
                    format!("{parent:?} is not a category slug"),
                ));
            }
            if parent == slug {
                return Err(invalid("parent", "a category cannot be its own parent"));
            }
        }
        Ok(input)
    }
}

/// An operator's purge (`POST /admin/purge`): one category's products, or everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeInput {
    /// The category whose products to purge; absent: every reader's whole L1.
    #[serde(default)]
    pub category: Option<String>,
}

impl PurgeInput {
    /// Parses a purge body; an empty body purges everything.
    pub fn parse(body: &[u8]) -> Result<Self, WriteError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self { category: None });
        }
        let mut bytes = body.to_vec();
        let input: Self = from_json(&mut bytes)?;
        match &input.category {
            Some(slug) if !valid_slug(slug) => Err(invalid(
                "category",
                format!("{slug:?} is not a category slug"),
            )),
            _ => Ok(input),
        }
    }
}

/// Whether `slug` is a well-formed category slug.
pub fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 64
        && slug.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Syntax errors name their position; errors of shape (unknown or missing fields,
/// wrong types) and nesting past [`MAX_PARSE_DEPTH`] are invalid products.
fn json_error(err: simd_json::Error) -> WriteError {
    match err.error() {
        simd_json::ErrorType::Serde(reason) => WriteError::Invalid {
            field: "body",
            reason: reason.clone(),
        },
        simd_json::ErrorType::DepthLimitExceeded => too_deep(),
        _ => WriteError::MalformedJson(err.to_string()),
    }
}

#[cfg(test)]
mod tests;
