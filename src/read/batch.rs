//! `GET /products?ids=...`: up to [`super::limits::MAX_BATCH_IDS`] products in the order
//! asked, and the ids that are not live products; the body is assembled from the
//! documents L1 holds ([`super::listing`]).

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
use crate::document::{Document, Lookup};
use crate::http::parse::query_param;

impl Reader {
    pub(super) async fn batch(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        at: Consistency,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let ids = listing::parse_ids(query_param(query, "ids"))?;
        let lookups = self.products_at(&ids, at).await?;
        let mut docs: Vec<&Document> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, lookup) in ids.iter().zip(&lookups) {
            match lookup {
                Lookup::Found(doc) => docs.push(doc),
                Lookup::Gone { .. } | Lookup::Unknown => missing.push(*id),
            }
        }
        let missing_ids: Vec<u8> = missing.iter().flat_map(|id| id.to_le_bytes()).collect();
        let encoding = self.listing_encoding(headers, &docs);
        let etag = response::listing_etag(&docs, &missing_ids, encoding);
        let keys = || {
            let keys: Vec<&str> = docs.iter().map(|d| d.key_str()).collect();
            keys.join(" ")
        };
        let body = || match encoding {
            Encoding::Identity => listing::batch_body(&docs, &missing),
            Encoding::Gzip => listing::batch_gzip(&docs, &missing, |doc| self.l1.gzip(doc)),
        };
        Ok(self.listing_response(body, etag, encoding, keys, headers))
    }
}
