//! Routing of admin requests: the path → an [`AdminRoute`] with its parameters, and the
//! routes' metric labels ([`WriteRoute`]). Methods are checked by each route's handler.

use crate::metrics::RouteLabel;

/// An admin route with its (still unparsed) path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute<'a> {
    /// `/admin/products/{id}`
    Product(&'a str),
    /// `/admin/products/bulk`
    Bulk,
    /// `/admin/categories/{slug}`
    Category(&'a str),
    /// `/admin/purge`
    Purge,
    /// `/admin/webhooks` and below: the path after `/admin/webhooks` (routed by
    /// [`crate::write::webhooks::admin::Route`]).
    Webhooks(&'a str),
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// `/openapi.json`
    OpenApi,
}

/// The admin face's routes as metric labels, with one for requests no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRoute {
    /// `/admin/products/{id}`
    Product,
    /// `/admin/products/bulk`
    Bulk,
    /// `/admin/categories/{slug}`
    Category,
    /// `/admin/purge`
    Purge,
    /// `/admin/webhooks` and below.
    Webhooks,
    /// `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.
    Operations,
    /// No route matched.
    Unmatched,
}

impl RouteLabel for WriteRoute {
    const ALL: &'static [Self] = &[
        Self::Product,
        Self::Bulk,
        Self::Category,
        Self::Purge,
        Self::Webhooks,
        Self::Operations,
        Self::Unmatched,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Product => "admin_product",
            Self::Bulk => "admin_bulk",
            Self::Category => "admin_category",
            Self::Purge => "admin_purge",
            Self::Webhooks => "admin_webhooks",
            Self::Operations => "admin_operations",
            Self::Unmatched => "admin_unmatched",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl<'a> AdminRoute<'a> {
    /// Matches a path; `None` when no route does.
    pub fn parse(path: &'a str) -> Option<Self> {
        match path {
            "/healthz" => return Some(Self::Healthz),
            "/readyz" => return Some(Self::Readyz),
            "/metrics" => return Some(Self::Metrics),
            "/openapi.json" => return Some(Self::OpenApi),
            "/admin/purge" => return Some(Self::Purge),
            "/admin/products/bulk" => return Some(Self::Bulk),
            _ => {}
        }
        if let Some(slug) = path.strip_prefix("/admin/categories/") {
            return Some(Self::Category(slug));
        }
        if let Some(rest) = path.strip_prefix("/admin/webhooks")
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Some(Self::Webhooks(rest));
        }
        path.strip_prefix("/admin/products/").map(Self::Product)
    }

    /// The route's metric label.
    pub fn label(self) -> WriteRoute {
        match self {
            Self::Product(_) => WriteRoute::Product,
            Self::Bulk => WriteRoute::Bulk,
            Self::Category(_) => WriteRoute::Category,
            Self::Purge => WriteRoute::Purge,
            Self::Webhooks(_) => WriteRoute::Webhooks,
            Self::Healthz | Self::Readyz | Self::Metrics | Self::OpenApi => WriteRoute::Operations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_admin_routes() {
        assert_eq!(
            AdminRoute::parse("/admin/products/7"),
            Some(AdminRoute::Product("7"))
        );
        assert_eq!(
            AdminRoute::parse("/admin/products/bulk"),
            Some(AdminRoute::Bulk)
        );
        assert_eq!(
            AdminRoute::parse("/admin/categories/lamps"),
            Some(AdminRoute::Category("lamps"))
        );
        assert_eq!(AdminRoute::parse("/admin/purge"), Some(AdminRoute::Purge));
        assert_eq!(
            AdminRoute::parse("/admin/webhooks"),
            Some(AdminRoute::Webhooks(""))
        );
        assert_eq!(
            AdminRoute::parse("/admin/webhooks/3/rotate"),
            Some(AdminRoute::Webhooks("/3/rotate"))
        );
        assert_eq!(AdminRoute::parse("/admin/webhooksx"), None);
        assert_eq!(AdminRoute::parse("/healthz"), Some(AdminRoute::Healthz));
        for unknown in ["/", "/admin", "/admin/product/1", "/products/1"] {
            assert_eq!(AdminRoute::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn route_labels_are_distinct_and_indexed_in_order() {
        for (i, route) in WriteRoute::ALL.iter().enumerate() {
            assert_eq!(route.index(), i);
            assert!(
                WriteRoute::ALL[..i]
                    .iter()
                    .all(|r| r.name() != route.name())
            );
        }
    }
}
