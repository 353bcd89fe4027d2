//! What an L1 entry weighs against the byte budget (`CATALOG_L1_BYTES`): its buffers as
//! the allocator rounds them, and the measured cost of the entry around them.

use bytes::Bytes;

use super::{Cached, Key};

/// Bytes charged per entry beyond its document's buffer: what an entry was measured to
/// cost in resident memory beyond that buffer's allocation (`bench/memory.sh`: 1,000,000
/// documents cached, RSS growth per entry minus the mean [`allocation_size`] of their
/// buffers). It is moka's entry (the key's `Arc`, entry info, value entry, deque nodes,
/// hash-table bucket and slots, about 275 bytes) and the document's own `Arc` (96: 80
/// until documents kept a place for their gzip form, measured at 390 then) and `bytes`'
/// shared header (24). With it the budget bounds the memory L1 really takes.
/// An entry without a document, a tombstone, an unknown id or a SKU, costs less (moka's
/// part and a per-entry timer node, about 320 bytes): charging it the same errs on the
/// side of the budget.
pub(super) const ENTRY_OVERHEAD: u32 = 406;

/// Bytes charged for a document's gzip form beyond its buffer's allocation: the `Box`
/// holding its `Bytes` (32) and `bytes`' shared header (24).
pub(super) const GZIP_OVERHEAD: usize = 56;

/// What the allocator (mimalloc) really hands out for `len` bytes: its size classes are
/// 8-byte words up to 64 bytes, then four per power of two, so a 570-byte document
/// buffer takes 640.
pub(super) fn allocation_size(len: usize) -> usize {
    const WORD: usize = 8;
    let words = len.div_ceil(WORD);
    if words <= 8 {
        return words * WORD;
    }
    let w = words - 1;
    let step = 1usize << (w.ilog2() - 2);
    ((w / step) + 1) * step * WORD
}

pub(super) fn weigh(key: &Key, value: &Cached) -> u32 {
    let key_bytes = match key {
        Key::Product(_) | Key::Categories => 0,
        Key::Sku(sku) => sku.len(),
    };
    let value_bytes = match value {
        Cached::Found(doc) => {
            allocation_size(doc.held_bytes())
                + doc
                    .gzip_held_bytes()
                    .map_or(0, |gzip| allocation_size(gzip) + GZIP_OVERHEAD)
        }
        Cached::Gone(_) | Cached::Unknown | Cached::Sku(_) | Cached::NoSku => 0,
        Cached::Body(body) => body.identity.len() + body.gzip.as_ref().map_or(0, Bytes::len),
    };
    u32::try_from(key_bytes + value_bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}
