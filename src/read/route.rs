//! Routing of storefront requests, by hand: a match on the path's bytes, no allocation.

use super::error::ReadError;

/// A storefront route with its path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /products/{id}`
    Product(i64),
    /// `GET /products/by-sku/{sku}` (still percent-encoded)
    ProductBySku(&'a str),
    /// `GET /products?ids=...`
    Batch,
    /// `GET /categories`
    Categories,
    /// `GET /categories/{slug}/products`
    CategoryProducts(&'a str),
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
}

/// Metric label of each route, indexed by [`Route::index`]; the last is for requests
/// that matched no route.
pub const ROUTE_NAMES: [&str; 9] = [
    "product",
    "product_by_sku",
    "products_batch",
    "categories",
    "category_products",
    "healthz",
    "readyz",
    "metrics",
    "unmatched",
];

/// Index of "no route" in [`ROUTE_NAMES`].
pub const UNMATCHED: usize = 8;

/// Longest URI served; longer is answered 414.
pub const MAX_URI_BYTES: usize = 4096;

impl<'a> Route<'a> {
    /// The route's index into [`ROUTE_NAMES`].
    pub fn index(self) -> usize {
        match self {
            Self::Product(_) => 0,
            Self::ProductBySku(_) => 1,
            Self::Batch => 2,
            Self::Categories => 3,
            Self::CategoryProducts(_) => 4,
            Self::Healthz => 5,
            Self::Readyz => 6,
            Self::Metrics => 7,
        }
    }

    /// Matches a path.
    pub fn parse(path: &'a str) -> Result<Self, ReadError> {
        match path {
            "/products" => return Ok(Self::Batch),
            "/categories" => return Ok(Self::Categories),
            "/healthz" => return Ok(Self::Healthz),
            "/readyz" => return Ok(Self::Readyz),
            "/metrics" => return Ok(Self::Metrics),
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("/products/") {
            if let Some(sku) = rest.strip_prefix("by-sku/") {
                return if sku.is_empty() || sku.contains('/') {
                    Err(ReadError::RouteNotFound)
                } else {
                    Ok(Self::ProductBySku(sku))
                };
            }
            if rest.contains('/') {
                return Err(ReadError::RouteNotFound);
            }
            return parse_id(rest).map(Self::Product);
        }
        if let Some(slug) = path
            .strip_prefix("/categories/")
            .and_then(|rest| rest.strip_suffix("/products"))
            .filter(|slug| !slug.is_empty() && !slug.contains('/'))
        {
            return Ok(Self::CategoryProducts(slug));
        }
        Err(ReadError::RouteNotFound)
    }
}

/// Parses a product id: decimal digits, 1 to `i64::MAX`.
pub fn parse_id(text: &str) -> Result<i64, ReadError> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::InvalidId(text.into()));
    }
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ReadError::InvalidId(text.into())),
    }
}

/// The value of query parameter `name`, still percent-encoded.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Decodes `%XX` escapes (and `+` as a space in queries is not used by any parameter
/// here, so `+` stays `+`). `None` for a malformed escape or invalid UTF-8.
pub fn percent_decode(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !text.contains('%') {
        return Some(std::borrow::Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        assert_eq!(Route::parse("/products/42"), Ok(Route::Product(42)));
        assert_eq!(Route::parse("/products"), Ok(Route::Batch));
        assert_eq!(
            Route::parse("/products/by-sku/ACM-1"),
            Ok(Route::ProductBySku("ACM-1"))
        );
        assert_eq!(Route::parse("/categories"), Ok(Route::Categories));
        assert_eq!(
            Route::parse("/categories/lamps/products"),
            Ok(Route::CategoryProducts("lamps"))
        );
        for (path, route) in [
            ("/healthz", Route::Healthz),
            ("/readyz", Route::Readyz),
            ("/metrics", Route::Metrics),
        ] {
            assert_eq!(Route::parse(path), Ok(route));
            assert_eq!(ROUTE_NAMES[route.index()], &path[1..]);
        }
    }

    #[test]
    fn bad_ids_and_unknown_paths_are_refused() {
        for bad in [
            "0",
            "-1",
            "1.5",
            "abc",
            "",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert_eq!(
                Route::parse(&format!("/products/{bad}")),
                Err(ReadError::InvalidId(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            Route::parse("/products/9223372036854775807"),
            Ok(Route::Product(i64::MAX))
        );
        for unknown in [
            "/",
            "/product/1",
            "/products/1/x",
            "/categories/x",
            "/categories//products",
            "/products/by-sku/",
        ] {
            assert_eq!(
                Route::parse(unknown),
                Err(ReadError::RouteNotFound),
                "{unknown}"
            );
        }
    }

    #[test]
    fn no_path_or_query_makes_the_parsers_panic() {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let alphabet = b"/productsbyskucategoriesidslimitcursor0123456789-%,&=?.xZ\x7f ";
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let text: String = (0..len)
                .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
                .collect();
            let _ = Route::parse(&text);
            let _ = percent_decode(&text);
            let _ = super::super::listing::parse_ids(Some(&text));
            let _ = super::super::listing::parse_limit(Some(&text));
            let _ = super::super::listing::decode_cursor("slug", Some(&text));
            let _ = query_param(Some(&text), "ids");
        }
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let q = Some("limit=5&cursor=abc&flag");
        assert_eq!(query_param(q, "limit"), Some("5"));
        assert_eq!(query_param(q, "cursor"), Some("abc"));
        assert_eq!(query_param(q, "flag"), Some(""));
        assert_eq!(query_param(q, "ids"), None);
        assert_eq!(query_param(None, "ids"), None);
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("a%2Cb").as_deref(), Some("a,b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
