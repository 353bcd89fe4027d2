//! `GET /categories`, kept whole in L1 and stored only if no invalidation came while it
//! was read; and `GET /categories/{slug}/products`, a page of a category's products by
//! keyset cursor ([`super::listing`]).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::HeaderMap;

use super::Reader;
use super::encoding::Encoding;
use super::error::ReadError;
use super::listing;
use super::response;
use super::token::Consistency;
use crate::cache::{Body, Key};
use crate::document::{Document, Lookup};
use crate::gzip;
use crate::http::parse::query_param;
use crate::http::surrogate::{CATEGORIES_KEY, category_key};
use crate::store::catalog;

impl Reader {
    /// `GET /categories`: from L1, else from a database that has replayed everything
    /// this reader's watermark covers and the position where the last change to
    /// categories it applied is visible (so never older than that change), stored only
    /// if no invalidation came while it was read.
    pub(super) async fn categories(
        &self,
        headers: &HeaderMap,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let answer = |body: Arc<Body>| {
            let (bytes, encoding) = match (self.encoding(headers), &body.gzip) {
                (Encoding::Gzip, Some(gzip)) => (gzip.clone(), Encoding::Gzip),
                _ => (body.identity.clone(), Encoding::Identity),
            };
            let etag = response::body_etag(&body.identity, encoding);
            let keys = || CATEGORIES_KEY.to_owned();
            self.listing_response(|| bytes, etag, encoding, keys, headers)
        };
        if let Some(body) = self.l1.body(&Key::Categories) {
            return Ok(answer(body));
        }
        let fill = self.l1.body_fill();
        let applied = *self.applied.borrow();
        let rows = self
            .reads
            .covering(applied.max(fill.floor), |pool| {
                Box::pin(catalog::categories(pool))
            })
            .await?;
        #[derive(serde::Serialize)]
        struct Items<'a> {
            items: &'a [catalog::CategoryRow],
        }
        let json = serde_json::to_vec(&Items { items: &rows })?;
        // Compressed once per fill, with the JSON it is kept beside.
        let gzip = (self.gzip && json.len() >= gzip::MIN_BODY).then(|| gzip::member(&json, &[]));
        let body = Arc::new(Body {
            identity: Bytes::from(json),
            gzip,
        });
        self.l1
            .insert_body(Key::Categories, Arc::clone(&body), fill.generation);
        Ok(answer(body))
    }

    pub(super) async fn category_products(
        &self,
        raw_slug: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        at: Consistency,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let limit = listing::parse_limit(query_param(query, "limit"))?;
        let after = listing::decode_cursor(raw_slug, query_param(query, "cursor"))?;
        let slug: Arc<str> = Arc::from(raw_slug);
        let page = match at {
            Consistency::Cached => {
                self.reads
                    .query(move |pool| {
                        let slug = Arc::clone(&slug);
                        Box::pin(async move {
                            catalog::category_page(pool, &slug, after, limit + 1).await
                        })
                    })
                    .await?
            }
            Consistency::AtLeast(lsn) => {
                self.reads
                    .covering(lsn, move |pool| {
                        let slug = Arc::clone(&slug);
                        Box::pin(async move {
                            catalog::category_page(pool, &slug, after, limit + 1).await
                        })
                    })
                    .await?
            }
        };
        let mut ids = page.ok_or(ReadError::CategoryNotFound)?;
        let more = ids.len() as i64 > limit;
        ids.truncate(limit as usize);
        let lookups = self.products_at(&ids, at).await?;
        let docs: Vec<&Document> = lookups
            .iter()
            .filter_map(|lookup| match lookup {
                Lookup::Found(doc) => Some(&**doc),
                Lookup::Gone { .. } | Lookup::Unknown => None,
            })
            .collect();
        let cursor = match ids.last() {
            Some(&last) if more => Some(listing::encode_cursor(raw_slug, last)),
            _ => None,
        };
        let encoding = self.listing_encoding(headers, &docs);
        let tail = cursor.as_deref().unwrap_or("").as_bytes();
        let etag = response::listing_etag(&docs, tail, encoding);
        let body = || match encoding {
            Encoding::Identity => listing::page_body(&docs, cursor.as_deref()),
            Encoding::Gzip => listing::page_gzip(&docs, cursor.as_deref(), |doc| self.l1.gzip(doc)),
        };
        let keys = || category_key(raw_slug);
        Ok(self.listing_response(body, etag, encoding, keys, headers))
    }
}
