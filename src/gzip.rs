//! gzip (RFC 1952) bodies made once and spliced, never recompressed per request.
//!
//! A body is deflated once into a [`member`]: a complete gzip member whose deflate
//! stream (RFC 1951) ends in a sync flush, that is an empty stored block, before the
//! final empty block. Such a stream stops on a byte boundary with no block marked
//! final, and was made by a fresh compressor, so it refers to nothing before it: its
//! bytes can be copied into a larger member as they are. An [`Assembler`] builds a
//! listing's member that way, as pigz does: the gzip header, each document's deflated
//! bytes ([`Piece`]), the JSON between them as stored blocks, a final empty block, and
//! the CRC-32 of the whole combined from each piece's (`crc32fast`'s `combine`, no pass
//! over the documents' bytes), with the total length.
//!
//! The sync flush's empty stored block costs 5 bytes per piece; the assembler reuses
//! it: a piece is spliced without the block's `LEN`/`NLEN` (4 bytes), and the literal
//! JSON that follows (`,`, `]}`) becomes that stored block's content.

use std::cell::RefCell;

use bytes::{BufMut as _, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

/// Bodies shorter than this are served as they are, gzip or not: below it the member
/// saves too few bytes to pay for its 23 bytes of framing, the client's inflate and the
/// memory its form takes in L1 (`docs/performance.md#compressed-variants`).
pub const MIN_BODY: usize = 200;

/// The gzip header: deflate, no flags, no time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// `LEN` and `NLEN` of an empty stored block: the last 4 bytes of a sync flush.
const EMPTY_STORED: [u8; 4] = [0, 0, 0xff, 0xff];

/// A final empty block with fixed codes (`BFINAL` 1, `BTYPE` 01, end of block).
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// What a member holds around its deflate stream: the trailer is the final block,
/// CRC-32 and `ISIZE`.
const TRAILER: usize = FINAL_BLOCK.len() + 8;

/// The most a stored block holds.
const STORED_MAX: usize = u16::MAX as usize;

/// Deflate level: a body is compressed once per version, so the smallest output is
/// worth the time (`docs/performance.md#compressed-variants`: level 9 costs a few
/// microseconds more than 6 on a document, for a few bytes less on every response).
const LEVEL: u32 = 9;

thread_local! {
    /// One raw-deflate compressor per thread, reset between bodies: a fresh one
    /// allocates and clears its window and hash tables (hundreds of kilobytes).
    static DEFLATE: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// `body` as a complete gzip member whose deflate stream ends in a sync flush, so
/// [`Piece::of`] can splice it into a larger member, followed by `suffix`; in an
/// allocation of exactly its size (the compressor's buffer has room to spare, about a
/// body's worth, which a cache would hold uncharged for the entry's life).
///
/// # Panics
///
/// If the compressor fails, which it does only on a bug (its input is any bytes).
pub fn member(body: &[u8], suffix: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER.len() + body.len() + body.len() / 8 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        let start = deflate.total_in();
        loop {
            let done = usize::try_from(deflate.total_in() - start).expect("a body in memory");
            deflate
                .compress_vec(&body[done..], &mut out, FlushCompress::Sync)
                .expect("deflate accepts any input");
            let consumed = deflate.total_in() - start == body.len() as u64;
            // With room left over, the flush is complete.
            if consumed && out.len() < out.capacity() {
                break;
            }
            out.reserve(body.len() / 4 + 64);
        }
    });
    debug_assert!(out.ends_with(&EMPTY_STORED), "a sync flush ends so");
    out.extend_from_slice(&FINAL_BLOCK);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(suffix);
    Bytes::from(out.into_boxed_slice())
}

/// A body's deflated bytes as a larger member takes them, with what its CRC needs.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// The deflate stream without the sync flush's `LEN`/`NLEN`: it ends inside the
    /// header of a stored block, on a byte boundary.
    deflated: &'a [u8],
    crc: u32,
    len: u32,
}

impl<'a> Piece<'a> {
    /// The piece of a member made by [`member`].
    pub fn of(member: &'a [u8]) -> Self {
        let trailer = member.len() - 8;
        let word =
            |at: usize| u32::from_le_bytes(member[at..at + 4].try_into().expect("four bytes"));
        Self {
            deflated: &member[HEADER.len()..member.len() - TRAILER - EMPTY_STORED.len()],
            crc: word(trailer),
            len: word(trailer + 4),
        }
    }
}

/// Builds one gzip member from deflated pieces and literal bytes, in order.
#[derive(Debug)]
pub struct Assembler {
    out: BytesMut,
    crc: crc32fast::Hasher,
    /// Literal bytes not yet written (they become stored blocks).
    pending: Vec<u8>,
    /// Whether `out` ends inside a stored block's header (after a piece).
    open: bool,
}

impl Assembler {
    /// A member with room for about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = BytesMut::with_capacity(capacity + HEADER.len() + TRAILER + 16);
        out.put_slice(&HEADER);
        Self {
            out,
            crc: crc32fast::Hasher::new(),
            pending: Vec::new(),
            open: false,
        }
    }

    /// Appends bytes as they are (stored, not compressed).
    pub fn literal(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Appends a deflated piece.
    pub fn piece(&mut self, piece: Piece<'_>) {
        self.flush_literals();
        if self.open {
            self.out.put_slice(&EMPTY_STORED);
        }
        self.out.put_slice(piece.deflated);
        self.open = true;
        self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
            piece.crc,
            u64::from(piece.len),
        ));
    }

    /// Writes the pending literal bytes as stored blocks, the first one closing the
    /// block a piece left open.
    fn flush_literals(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.crc.update(&self.pending);
        for chunk in self.pending.chunks(STORED_MAX) {
            if !self.open {
                // BFINAL 0, BTYPE 00, then padding to the byte boundary.
                self.out.put_u8(0);
            }
            let len = chunk.len() as u16;
            self.out.put_u16_le(len);
            self.out.put_u16_le(!len);
            self.out.put_slice(chunk);
            self.open = false;
        }
        self.pending.clear();
    }

    /// The member: the last block, CRC-32 and length.
    pub fn finish(mut self) -> Bytes {
        self.flush_literals();
        if self.open {
            self.out.put_slice(&EMPTY_STORED);
        }
        self.out.put_slice(&FINAL_BLOCK);
        let len = self.crc.total_len() as u32;
        self.out.put_u32_le(self.crc.finalize());
        self.out.put_u32_le(len);
        self.out.freeze()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read as _;

    use super::*;

    /// Inflates one gzip member (`GzDecoder` reads a single member: nothing after it
    /// may be needed to reach the body).
    pub(crate) fn inflate(member: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut out)
            .expect("a valid gzip member");
        out
    }

    fn json(n: usize) -> Vec<u8> {
        format!(
            r#"{{"id":{n},"sku":"ACM-{n:07}","name":"Lamp {n}","description":"{}"}}"#,
            "bright and warm ".repeat(n % 7 + 1)
        )
        .into_bytes()
    }

    #[test]
    fn a_member_inflates_to_its_body_and_ends_in_a_sync_flush() {
        for body in [json(1), json(5), b"x".to_vec(), vec![b'a'; 100_000]] {
            let member = member(&body, &[]);
            assert_eq!(inflate(&member), body);
            let stream = &member[HEADER.len()..member.len() - TRAILER];
            assert!(stream.ends_with(&EMPTY_STORED));
        }
        let doc = json(3);
        assert!(member(&doc, &[]).len() < doc.len(), "json compresses");
    }

    #[test]
    fn an_assembled_member_inflates_to_the_concatenation() {
        let docs: Vec<Vec<u8>> = (1..=50).map(json).collect();
        let members: Vec<Bytes> = docs.iter().map(|d| member(d, &[])).collect();
        let mut assembled = Assembler::with_capacity(1024);
        let mut expected = Vec::new();
        assembled.literal(b"{\"items\":[");
        expected.extend_from_slice(b"{\"items\":[");
        for (i, (doc, member)) in docs.iter().zip(&members).enumerate() {
            if i > 0 {
                assembled.literal(b",");
                expected.push(b',');
            }
            if i % 10 == 3 {
                // a document without a deflated form goes in as literal bytes
                assembled.literal(doc);
            } else {
                assembled.piece(Piece::of(member));
            }
            expected.extend_from_slice(doc);
        }
        assembled.literal(b"],\"missing\":[7]}");
        expected.extend_from_slice(b"],\"missing\":[7]}");
        let body = assembled.finish();
        assert_eq!(inflate(&body), expected);
        assert!(body.len() < expected.len(), "{} bytes", body.len());
        // The trailer is the real CRC and length of the whole.
        let tail = &body[body.len() - 8..];
        assert_eq!(tail[..4], crc32fast::hash(&expected).to_le_bytes());
        assert_eq!(tail[4..], (expected.len() as u32).to_le_bytes());
    }

    #[test]
    fn edge_cases_assemble_too() {
        // Nothing at all, only literals (longer than a stored block), only pieces.
        assert_eq!(inflate(&Assembler::with_capacity(0).finish()), b"");
        let long = vec![b'7'; STORED_MAX * 2 + 5];
        let mut only_literals = Assembler::with_capacity(0);
        only_literals.literal(&long);
        assert_eq!(inflate(&only_literals.finish()), long);
        let (a, b) = (json(2), json(4));
        let (ma, mb) = (member(&a, &[]), member(&b, &[]));
        let mut pieces = Assembler::with_capacity(0);
        pieces.piece(Piece::of(&ma));
        pieces.piece(Piece::of(&mb));
        pieces.literal(&long);
        assert_eq!(inflate(&pieces.finish()), [a, b, long].concat());
    }
}
