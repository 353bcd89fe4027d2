//! Routing of storefront requests, by hand: a match on the path's bytes, no allocation;
//! and the routes' metric labels ([`ReadRoute`]).

use super::error::ReadError;
use crate::http::parse::parse_id;
use crate::metrics::RouteLabel;

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
    /// `GET /openapi.json`
    OpenApi,
    /// `GET /changes` (Server-Sent Events)
    Changes,
}

/// The storefront's routes as metric labels, with one for requests no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoute {
    /// `/products/{id}`
    Product,
    /// `/products/by-sku/{sku}`
    ProductBySku,
    /// `/products?ids=`
    Batch,
    /// `/categories`
    Categories,
    /// `/categories/{slug}/products`
    CategoryProducts,
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// `/openapi.json`
    OpenApi,
    /// `/changes`
    Changes,
    /// No route matched.
    Unmatched,
}

impl RouteLabel for ReadRoute {
    const ALL: &'static [Self] = &[
        Self::Product,
        Self::ProductBySku,
        Self::Batch,
        Self::Categories,
        Self::CategoryProducts,
        Self::Healthz,
        Self::Readyz,
        Self::Metrics,
        Self::OpenApi,
        Self::Changes,
        Self::Unmatched,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::ProductBySku => "product_by_sku",
            Self::Batch => "products_batch",
            Self::Categories => "categories",
            Self::CategoryProducts => "category_products",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::OpenApi => "openapi",
            Self::Changes => "changes",
            Self::Unmatched => "unmatched",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl<'a> Route<'a> {
    /// The route's metric label.
    pub fn label(self) -> ReadRoute {
        match self {
            Self::Product(_) => ReadRoute::Product,
            Self::ProductBySku(_) => ReadRoute::ProductBySku,
            Self::Batch => ReadRoute::Batch,
            Self::Categories => ReadRoute::Categories,
            Self::CategoryProducts(_) => ReadRoute::CategoryProducts,
            Self::Healthz => ReadRoute::Healthz,
            Self::Readyz => ReadRoute::Readyz,
            Self::Metrics => ReadRoute::Metrics,
            Self::OpenApi => ReadRoute::OpenApi,
            Self::Changes => ReadRoute::Changes,
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
            "/openapi.json" => return Ok(Self::OpenApi),
            "/changes" => return Ok(Self::Changes),
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
            return parse_id(rest)
                .map(Self::Product)
                .map_err(|_| ReadError::InvalidId(rest.into()));
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
            assert_eq!(route.label().name(), &path[1..]);
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
            let _ = crate::http::parse::percent_decode(&text);
            let _ = super::super::listing::parse_ids(Some(&text));
            let _ = super::super::listing::parse_limit(Some(&text));
            let _ = super::super::listing::decode_cursor("slug", Some(&text));
            let _ = crate::http::parse::query_param(Some(&text), "ids");
        }
    }

    #[test]
    fn route_labels_are_distinct_and_indexed_in_order() {
        for (i, route) in ReadRoute::ALL.iter().enumerate() {
            assert_eq!(route.index(), i);
            assert!(ReadRoute::ALL[..i].iter().all(|r| r.name() != route.name()));
        }
    }
}
