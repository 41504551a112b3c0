//! The posting reader: one collection's postings and coarse blocks for one question, each
//! document's pack opened once and few files held open.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::Index;
use crate::index::coarse;
use crate::index::codec;
use crate::index::error::{IndexError, Result};
use crate::index::packs::Pack;
use crate::index::records::{self as rec, CollectionRecord};
use crate::index::store::KvStore;
use crate::index::types::{BlockCount, LayerFeature};

/// Most pack files a [`PostingReader`] holds open at once (its directories stay in memory).
pub(super) const MAX_OPEN_PACKS: usize = 64;

impl Index {
    /// Returns a reader of collection `cid`'s postings and coarse blocks for one question.
    pub fn posting_reader(&self, cid: u32) -> Result<PostingReader<'_>> {
        let mut next_position = None;
        self.store
            .scan_prefix(rec::COLLECTION_PREFIX, &mut |k, v| {
                let c: CollectionRecord = rec::decode(v, &String::from_utf8_lossy(k))?;
                if c.id == cid {
                    next_position = Some(c.next_position);
                }
                Ok(next_position.is_none())
            })?;
        let next_position = next_position
            .ok_or_else(|| IndexError::UnknownCollection(format!("(internal id {cid})")))?;
        let sealed_end = codec::sealed_end(next_position);
        let tail = self
            .document_records(cid)?
            .into_iter()
            .filter(|d| u64::from(d.first_position) + u64::from(d.tokens) > u64::from(sealed_end))
            .map(|d| (d.doc, d.first_position))
            .collect();
        Ok(PostingReader {
            index: self,
            cid,
            sealed_end,
            tail,
            packs: HashMap::new(),
            open: VecDeque::new(),
            tail_blocks: HashMap::new(),
        })
    }
}

/// Reads one collection's postings for one question: each document's pack directory is read
/// once; at most `MAX_OPEN_PACKS` (64) files stay open, the least recently opened let go first.
pub struct PostingReader<'a> {
    index: &'a Index,
    cid: u32,
    /// Positions below this have coarse records.
    sealed_end: u32,
    /// (number, first position) of the documents reaching past `sealed_end`.
    tail: Vec<(u32, u32)>,
    packs: HashMap<u32, Pack>,
    /// Documents whose pack file is open, oldest first.
    open: VecDeque<u32>,
    /// Block counts of the open tail per (layer, feature), once computed.
    tail_blocks: HashMap<LayerFeature, Vec<BlockCount>>,
}

impl<'a> PostingReader<'a> {
    /// Returns a reader of the same collection as it was when this one was made, with
    /// nothing read yet: each part of a question's pass on its own thread takes one, without
    /// listing the collection's documents again.
    pub fn another(&self) -> PostingReader<'a> {
        PostingReader {
            index: self.index,
            cid: self.cid,
            sealed_end: self.sealed_end,
            tail: self.tail.clone(),
            packs: HashMap::new(),
            open: VecDeque::new(),
            tail_blocks: HashMap::new(),
        }
    }
}

impl PostingReader<'_> {
    /// Returns the document-local positions where (layer, feature) fired in document `doc`.
    pub fn posting(&mut self, doc: u32, feature: LayerFeature) -> Result<Vec<u32>> {
        match self.packs.get_mut(&doc) {
            Some(pack) if pack.is_open() => {}
            Some(pack) => {
                pack.reopen()?;
                self.open.push_back(doc);
            }
            None => {
                let pack = self.index.packs.read_owned(self.cid, doc)?;
                self.packs.insert(doc, pack);
                self.open.push_back(doc);
            }
        }
        while self.open.len() > MAX_OPEN_PACKS {
            if let Some(old) = self.open.pop_front() {
                if let Some(p) = self.packs.get_mut(&old) {
                    p.close();
                }
            }
        }
        self.packs[&doc].get(feature)
    }

    /// Returns (collection-global block, tokens that fired) of (layer, feature), ascending;
    /// blocks are [`codec::COARSE_BLOCK_TOKENS`] positions long. Sealed buckets come from
    /// their coarse records, the open tail from the postings of the documents in it.
    pub fn coarse_blocks(&mut self, feature: LayerFeature) -> Result<Vec<BlockCount>> {
        let mut out = coarse::read(&self.index.store, self.cid, feature)?;
        out.extend(self.tail_blocks(feature)?.iter().copied());
        Ok(out)
    }

    /// Returns how many tokens fired (layer, feature) in the whole collection: the sealed
    /// total from its one record, the open tail from the packs.
    pub fn token_count(&mut self, feature: LayerFeature) -> Result<u64> {
        let sealed = coarse::sealed_total(&self.index.store, self.cid, feature)?;
        let tail: u64 = self
            .tail_blocks(feature)?
            .iter()
            .map(|b| u64::from(b.tokens))
            .sum();
        Ok(sealed + tail)
    }

    /// Returns (global block, tokens that fired) of (layer, feature) in the open tail,
    /// ascending; read from the packs once per question and feature.
    fn tail_blocks(&mut self, feature: LayerFeature) -> Result<&[BlockCount]> {
        if !self.tail_blocks.contains_key(&feature) {
            let mut blocks: BTreeMap<u32, u32> = BTreeMap::new();
            for i in 0..self.tail.len() {
                let (doc, first) = self.tail[i];
                for p in self.posting(doc, feature)? {
                    let p = p + first;
                    if p >= self.sealed_end {
                        *blocks.entry(p / codec::COARSE_BLOCK_TOKENS).or_insert(0) += 1;
                    }
                }
            }
            let blocks = blocks
                .into_iter()
                .map(|(block, tokens)| BlockCount { block, tokens })
                .collect();
            self.tail_blocks.insert(feature, blocks);
        }
        Ok(&self.tail_blocks[&feature])
    }

    /// Returns the number of packs read so far, and how many of their files are open.
    pub fn packs_read(&self) -> (usize, usize) {
        (self.packs.len(), self.open.len())
    }
}
