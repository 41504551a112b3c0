//! Byte codecs of the index: varints, posting lists and per-token char offsets.
//!
//! A posting holds the document-local token positions (ascending, distinct) where one
//! (layer, feature) fired in one document. Small postings are delta-varint arrays (1 byte per
//! entry when features fire near each other); a roaring bitmap replaces them once it is smaller
//! (dense features), as Meilisearch's `CboRoaringBitmapCodec` does.

use roaring::RoaringBitmap;

use super::types::BlockCount;

/// First byte of a delta-varint posting.
const TAG_DELTAS: u8 = 0;
/// First byte of a roaring posting.
const TAG_ROARING: u8 = 1;
/// Postings shorter than this are never tried as roaring: its container headers alone cost more.
const ROARING_MIN_LEN: usize = 64;

/// Appends `v` as an LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an LEB128 varint at `*pos`, advancing it; `None` when truncated or over 64 bits.
pub fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes ascending distinct positions.
pub fn encode_posting(positions: &[u32]) -> Vec<u8> {
    debug_assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let mut out = Vec::with_capacity(positions.len() + 4);
    out.push(TAG_DELTAS);
    put_varint(&mut out, positions.len() as u64);
    let mut prev = 0u32;
    for (i, &p) in positions.iter().enumerate() {
        // The first entry is absolute, later ones are gaps minus one (positions are distinct).
        let d = if i == 0 { p } else { p - prev - 1 };
        put_varint(&mut out, u64::from(d));
        prev = p;
    }
    if positions.len() >= ROARING_MIN_LEN {
        // Positions ascend: appending is several times cheaper than inserting one by one.
        let mut bitmap = RoaringBitmap::from_sorted_iter(positions.iter().copied())
            .unwrap_or_else(|_| positions.iter().copied().collect());
        // Run containers: a feature firing over a long stretch costs a few bytes.
        bitmap.optimize();
        if bitmap.serialized_size() + 1 < out.len() {
            let mut r = Vec::with_capacity(bitmap.serialized_size() + 1);
            r.push(TAG_ROARING);
            // Writing into a Vec cannot fail.
            bitmap
                .serialize_into(&mut r)
                .expect("serialising into a vec");
            return r;
        }
    }
    out
}

/// Decodes a posting into ascending positions.
pub fn decode_posting(bytes: &[u8]) -> Result<Vec<u32>, String> {
    match bytes.first() {
        Some(&TAG_DELTAS) => {
            let mut pos = 1;
            let n = get_varint(bytes, &mut pos).ok_or("truncated length")?;
            // A length can never exceed the bytes that remain (each entry takes one at least).
            if n as usize > bytes.len() - pos {
                return Err(format!(
                    "length {n} exceeds the {} bytes left",
                    bytes.len() - pos
                ));
            }
            let mut out = Vec::with_capacity(n as usize);
            let mut prev = 0u64;
            for i in 0..n {
                let d = get_varint(bytes, &mut pos).ok_or("truncated entry")?;
                let p = if i == 0 { d } else { prev + d + 1 };
                if p > u64::from(u32::MAX) {
                    return Err(format!("position {p} exceeds u32"));
                }
                out.push(p as u32);
                prev = p;
            }
            if pos != bytes.len() {
                return Err(format!("{} trailing bytes", bytes.len() - pos));
            }
            Ok(out)
        }
        Some(&TAG_ROARING) => RoaringBitmap::deserialize_from(&bytes[1..])
            .map(|b| b.into_iter().collect())
            .map_err(|e| format!("bad roaring bitmap: {e}")),
        Some(t) => Err(format!("unknown posting tag {t}")),
        None => Err("empty posting".into()),
    }
}

/// Returns the number of positions in an encoded posting without decoding it all.
pub fn posting_len(bytes: &[u8]) -> Result<u64, String> {
    match bytes.first() {
        Some(&TAG_DELTAS) => get_varint(bytes, &mut 1).ok_or_else(|| "truncated length".into()),
        Some(&TAG_ROARING) => RoaringBitmap::deserialize_from(&bytes[1..])
            .map(|b| b.len())
            .map_err(|e| format!("bad roaring bitmap: {e}")),
        _ => Err("unknown posting tag".into()),
    }
}

/// Tokens per coarse block: the unit of the collection-wide first pass of retrieval.
pub const COARSE_BLOCK_TOKENS: u32 = 512;
/// Coarse blocks per coarse record: one record covers `2^16` collection-global positions.
pub const COARSE_BLOCKS_PER_BUCKET: u32 = (1 << 16) / COARSE_BLOCK_TOKENS;

/// Collection-global positions per coarse bucket.
pub const COARSE_BUCKET_TOKENS: u32 = COARSE_BLOCKS_PER_BUCKET * COARSE_BLOCK_TOKENS;

/// Returns the end of a collection's sealed buckets: the positions below it lie in buckets
/// that no later document reaches, and only those have coarse records.
pub fn sealed_end(next_position: u64) -> u32 {
    let bucket = u64::from(COARSE_BUCKET_TOKENS);
    ((next_position / bucket) * bucket).min(u64::from(u32::MAX)) as u32
}

/// Collection-global positions per super-bucket: when a collection passes the end of one, the
/// records of its 16 buckets merge into one record per (layer, feature).
pub const COARSE_SUPER_TOKENS: u32 = 1 << 20;
/// Coarse blocks per super-bucket record.
pub const COARSE_BLOCKS_PER_SUPER: u32 = COARSE_SUPER_TOKENS / COARSE_BLOCK_TOKENS;

/// Returns the end of the sealed super-buckets within `sealed_end`.
pub fn super_end(sealed_end: u32) -> u32 {
    (sealed_end / COARSE_SUPER_TOKENS) * COARSE_SUPER_TOKENS
}

/// Returns (bucket, block within the bucket) of a collection-global position.
pub fn coarse_block(position: u32) -> (u32, u32) {
    let block = position / COARSE_BLOCK_TOKENS;
    (
        block / COARSE_BLOCKS_PER_BUCKET,
        block % COARSE_BLOCKS_PER_BUCKET,
    )
}

/// Encodes a coarse record: its blocks (counted from the record's start) ascending and
/// distinct, counts above zero. Blocks are gaps as varints, counts varints.
pub fn encode_coarse(blocks: &[BlockCount]) -> Vec<u8> {
    debug_assert!(blocks.windows(2).all(|w| w[0].block < w[1].block));
    let mut out = Vec::with_capacity(blocks.len() * 2 + 2);
    put_varint(&mut out, blocks.len() as u64);
    let mut prev = 0u32;
    for (i, b) in blocks.iter().enumerate() {
        let d = if i == 0 { b.block } else { b.block - prev - 1 };
        put_varint(&mut out, u64::from(d));
        put_varint(&mut out, u64::from(b.tokens));
        prev = b.block;
    }
    out
}

/// Decodes a coarse record of at most `blocks_per_record` blocks
/// ([`COARSE_BLOCKS_PER_BUCKET`] or [`COARSE_BLOCKS_PER_SUPER`]).
pub fn decode_coarse(bytes: &[u8], blocks_per_record: u32) -> Result<Vec<BlockCount>, String> {
    let mut pos = 0;
    let n = get_varint(bytes, &mut pos).ok_or("truncated length")?;
    if n > u64::from(blocks_per_record) {
        return Err(format!(
            "{n} blocks, more than a record's {blocks_per_record}"
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut prev = 0u64;
    for i in 0..n {
        let d = get_varint(bytes, &mut pos).ok_or("truncated block")?;
        let count = get_varint(bytes, &mut pos).ok_or("truncated count")?;
        let block = if i == 0 { d } else { prev + d + 1 };
        if block >= u64::from(blocks_per_record) || count == 0 || count > u64::from(u32::MAX) {
            return Err(format!("bad block {block} with count {count}"));
        }
        out.push(BlockCount {
            block: block as u32,
            tokens: count as u32,
        });
        prev = block;
    }
    if pos != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - pos));
    }
    Ok(out)
}

/// Encodes per-token char ranges: for each token the gap since the previous token's end and
/// its length, as varints (2 bytes a token on ordinary text).
pub fn encode_offsets(offsets: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(offsets.len() * 2 + 4);
    put_varint(&mut out, offsets.len() as u64);
    let mut prev_end = 0usize;
    for &(start, end) in offsets {
        // Byte-level BPE tokens may overlap (one char split over tokens): zigzag the gap.
        let gap = start as i64 - prev_end as i64;
        put_varint(&mut out, ((gap << 1) ^ (gap >> 63)) as u64);
        put_varint(&mut out, end.saturating_sub(start) as u64);
        prev_end = end;
    }
    out
}

/// Decodes per-token char ranges.
pub fn decode_offsets(bytes: &[u8]) -> Result<Vec<(usize, usize)>, String> {
    let mut pos = 0;
    let n = get_varint(bytes, &mut pos).ok_or("truncated length")?;
    if n as usize > bytes.len() {
        return Err(format!("length {n} exceeds the record"));
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut prev_end = 0i64;
    for _ in 0..n {
        let z = get_varint(bytes, &mut pos).ok_or("truncated gap")?;
        let gap = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let len = get_varint(bytes, &mut pos).ok_or("truncated length")? as i64;
        let start = prev_end + gap;
        if start < 0 {
            return Err(format!("negative offset {start}"));
        }
        out.push((start as usize, (start + len) as usize));
        prev_end = start + len;
    }
    if pos != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - pos));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn postings_round_trip(mut v in proptest::collection::vec(any::<u32>(), 0..300)) {
            v.sort_unstable();
            v.dedup();
            let bytes = encode_posting(&v);
            prop_assert_eq!(decode_posting(&bytes).unwrap(), v.clone());
            prop_assert_eq!(posting_len(&bytes).unwrap(), v.len() as u64);
        }

        #[test]
        fn dense_postings_round_trip(start in 0u32..1_000_000, n in 0usize..5000, step in 1u32..4) {
            let v: Vec<u32> = (0..n as u32).map(|i| start + i * step).collect();
            let bytes = encode_posting(&v);
            prop_assert_eq!(decode_posting(&bytes).unwrap(), v);
        }

        #[test]
        fn offsets_round_trip(spans in proptest::collection::vec((0usize..50, 0usize..20), 0..200)) {
            // Build plausible ranges: mostly adjacent, sometimes overlapping by a char.
            let mut offsets = Vec::new();
            let mut at = 0usize;
            for (gap, len) in spans {
                let start = if gap % 7 == 0 { at.saturating_sub(1) } else { at + gap % 3 };
                offsets.push((start, start + len));
                at = start + len;
            }
            let bytes = encode_offsets(&offsets);
            prop_assert_eq!(decode_offsets(&bytes).unwrap(), offsets);
        }

        #[test]
        fn coarse_round_trip(blocks in proptest::collection::btree_map(0u32..COARSE_BLOCKS_PER_BUCKET, 1u32..100_000, 0..128)) {
            let v: Vec<BlockCount> = blocks
                .into_iter()
                .map(|(block, tokens)| BlockCount { block, tokens })
                .collect();
            prop_assert_eq!(decode_coarse(&encode_coarse(&v), COARSE_BLOCKS_PER_BUCKET).unwrap(), v);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_coarse(&bytes, COARSE_BLOCKS_PER_SUPER);
            let _ = decode_posting(&bytes);
            let _ = posting_len(&bytes);
            let _ = decode_offsets(&bytes);
        }
    }

    #[test]
    fn dense_postings_pick_roaring_and_sparse_ones_deltas() {
        let dense: Vec<u32> = (0..10_000).collect();
        let b = encode_posting(&dense);
        assert_eq!(b[0], TAG_ROARING);
        assert!(b.len() < 100, "{}", b.len());
        let sparse = [3u32, 70, 900];
        assert_eq!(encode_posting(&sparse)[0], TAG_DELTAS);
    }
}
