//! The bounds of the storefront API: how much one request may ask for, and how long a
//! token read waits for the caches. Errors and parsers both read them from here.

use std::time::Duration;

/// Longest URI served; longer is answered 414.
pub const MAX_URI_BYTES: usize = 4096;

/// Most distinct ids one batch request may name.
pub const MAX_BATCH_IDS: usize = 200;

/// Largest page of a category listing.
pub const MAX_LIMIT: i64 = 200;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;

/// Longest SKU, in characters.
pub const MAX_SKU_CHARS: usize = 64;

/// How long a token read waits for the watermark before going around the caches.
pub const TOKEN_WAIT: Duration = Duration::from_millis(50);
