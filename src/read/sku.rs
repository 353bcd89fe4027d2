//! `GET /products/by-sku/{sku}`: the SKU resolved to an id (cached in L1, confirmed by
//! the document's own SKU, resolved afresh on a database covering the token of a read
//! that carries one), then the product read as any other.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::HeaderMap;
use sqlx::PgPool;

use super::db::Query;
use super::error::ReadError;
use super::limits::MAX_SKU_CHARS;
use super::token::Consistency;
use super::{MIN_CATALOG_TOKEN, Reader};
use crate::document::{Lookup, Tick};
use crate::http::parse::percent_decode;
use crate::store::catalog;
use crate::store::replicas::parse_lsn;

impl Reader {
    pub(super) async fn product_by_sku(
        &self,
        raw: &str,
        headers: &HeaderMap,
        at: Consistency,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let sku = percent_decode(raw).ok_or(ReadError::InvalidSku)?;
        if sku.is_empty()
            || sku.chars().count() > MAX_SKU_CHARS
            || sku.chars().any(char::is_control)
        {
            return Err(ReadError::InvalidSku);
        }
        let key: Arc<str> = Arc::from(&*sku);
        // The SKU → id mapping is cached; the document's own SKU confirms it, and a
        // mismatch (the SKU moved to another product) re-resolves it once. Invalidations
        // name ids, not SKUs, so a read with a token resolves the SKU afresh, on a
        // database that covers the token (a cached "no such SKU" may predate a create).
        let token = headers
            .get(MIN_CATALOG_TOKEN)
            .and_then(|t| t.to_str().ok())
            .and_then(parse_lsn);
        let resolve_at = token.map_or(at, Consistency::AtLeast);
        let cached = match token {
            None => self.l1.sku(&key),
            Some(_) => None,
        };
        let resolved_now = cached.is_none();
        let id = match cached {
            Some(id) => id,
            None => self.resolve_sku(&key, resolve_at).await?,
        };
        let Some(id) = id else {
            return Err(ReadError::SkuNotFound);
        };
        match self.product_at(id, at).await? {
            Lookup::Found(doc) if doc.sku() == &*sku => {
                Ok(self.document_response(&doc, headers, Tick::now()))
            }
            _ if resolved_now => Err(ReadError::SkuNotFound),
            _ => match self.resolve_sku(&key, resolve_at).await? {
                Some(id) => match self.product_at(id, at).await? {
                    Lookup::Found(doc) if doc.sku() == &*sku => {
                        Ok(self.document_response(&doc, headers, Tick::now()))
                    }
                    _ => Err(ReadError::SkuNotFound),
                },
                None => Err(ReadError::SkuNotFound),
            },
        }
    }

    /// The id of the live product with `sku`, read with the given consistency, and
    /// remembered in L1.
    async fn resolve_sku(&self, sku: &Arc<str>, at: Consistency) -> Result<Option<i64>, ReadError> {
        let run = id_by_sku(Arc::clone(sku));
        let id = match at {
            Consistency::Cached => self.reads.query(run).await?,
            Consistency::AtLeast(lsn) => self.reads.covering(lsn, run).await?,
        };
        self.l1.insert_sku(Arc::clone(sku), id);
        Ok(id)
    }
}

/// The query resolving `sku` to a live product's id, on any pool.
fn id_by_sku(sku: Arc<str>) -> impl for<'p> Fn(&'p PgPool) -> Query<'p, Option<i64>> {
    move |pool| {
        let sku = Arc::clone(&sku);
        Box::pin(async move { catalog::product_id_by_sku(pool, &sku).await })
    }
}
