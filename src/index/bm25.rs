//! The BM25 side of the index: tantivy over sentence-aligned passages, one tantivy index per
//! collection (`<data dir>/bm25/<collection id>/`), so that a collection's document
//! frequencies and average lengths are its own: what one collection holds never moves the
//! scores of another.
//!
//! tantivy is written after sled: each collection's commit payload records the last sequence
//! number whose changes it holds, and the store's journal replays whatever came after (see
//! `memory/open.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, INDEXED, STORED, TEXT};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::error::{IndexError, Result};
use super::passages::Passage;

/// Indexing memory of a collection's writer thread (tantivy's minimum is 15 MB).
const WRITER_MEMORY: usize = 15_000_000;
/// Most writers kept open: each holds threads and an indexing arena, so the writers of
/// collections not written lately are closed (clean ones only).
const MAX_OPEN_WRITERS: usize = 4;

/// A BM25 hit: one passage of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageHit {
    /// Document number inside the collection.
    pub doc: u32,
    /// Char range of the passage.
    pub chars: std::ops::Range<usize>,
    /// BM25 score.
    pub score: f32,
}

#[derive(Clone, Copy)]
struct Fields {
    doc: Field,
    char_start: Field,
    char_end: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        doc: b.add_u64_field("doc", INDEXED | STORED),
        char_start: b.add_u64_field("char_start", STORED),
        char_end: b.add_u64_field("char_end", STORED),
        // The text lives in sled already: indexed here, not stored twice.
        text: b.add_text_field("text", TEXT),
    };
    (b.build(), fields)
}

/// The passage index of one collection.
struct CollectionPassages {
    dir: PathBuf,
    index: tantivy::Index,
    reader: IndexReader,
    writer: Option<IndexWriter>,
    /// Changes not committed yet.
    dirty: bool,
    /// When its writer was last used (a counter), for closing the least recent.
    used: u64,
}

impl CollectionPassages {
    fn open(dir: &Path, schema: &Schema) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let index = if dir.join("meta.json").is_file() {
            let index = tantivy::Index::open_in_dir(dir)?;
            if index.schema() != *schema {
                return Err(IndexError::corrupt(
                    dir.display().to_string(),
                    "the bm25 schema differs from this build's",
                ));
            }
            index
        } else {
            tantivy::Index::create_in_dir(dir, schema.clone())?
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            dir: dir.into(),
            index,
            reader,
            writer: None,
            dirty: false,
            used: 0,
        })
    }

    fn applied_seq(&self) -> Result<u64> {
        let metas = self.index.load_metas()?;
        match metas.payload.as_deref() {
            None => Ok(0),
            Some(p) => p.parse().map_err(|_| {
                IndexError::corrupt(
                    self.dir.join("meta.json").display().to_string(),
                    format!("commit payload {p:?} is not a sequence number"),
                )
            }),
        }
    }

    fn writer(&mut self) -> Result<&mut IndexWriter> {
        if self.writer.is_none() {
            let options = IndexWriterOptions::builder()
                .memory_budget_per_thread(WRITER_MEMORY)
                .num_worker_threads(1)
                .num_merge_threads(1)
                .build();
            let w: IndexWriter = self.index.writer_with_options(options)?;
            // A process killed before its commit leaves segment and delete files no commit
            // uses; a new writer reusing their opstamp would fail on them, so remove them first.
            w.garbage_collect_files().wait()?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("just set"))
    }

    fn commit(&mut self, seq: u64) -> Result<()> {
        let w = self.writer()?;
        let mut prepared = w.prepare_commit()?;
        prepared.set_payload(&seq.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        self.dirty = false;
        Ok(())
    }

    /// Merges its segments into one when there are several or any holds deleted passages
    /// (whose terms would still count in the statistics), and removes unused files.
    fn compact(&mut self) -> Result<()> {
        let metas = self.index.searchable_segment_metas()?;
        let ids: Vec<_> = metas.iter().map(|m| m.id()).collect();
        let w = self.writer()?;
        if ids.len() > 1 || metas.iter().any(|m| m.has_deletes()) {
            w.merge(&ids).wait()?;
        }
        w.garbage_collect_files().wait()?;
        self.reader.reload()?;
        Ok(())
    }
}

/// The writers taken out of [`Bm25`] with the merges they still run in the background.
#[must_use = "the merges run on until waited for"]
pub struct Merges(Vec<IndexWriter>);

impl Merges {
    /// Waits until every merge has finished and its files are in place.
    pub fn wait(self) -> Result<()> {
        for writer in self.0 {
            writer.wait_merging_threads()?;
        }
        Ok(())
    }
}

/// The passage indexes in `<data dir>/bm25`, one per collection.
pub struct Bm25 {
    dir: PathBuf,
    schema: Schema,
    fields: Fields,
    collections: BTreeMap<u32, CollectionPassages>,
    clock: u64,
}

impl Bm25 {
    /// Opens the passage indexes in `dir` (creating `dir`): every folder named by a
    /// collection id.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let (schema, fields) = schema();
        let mut collections = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))? {
            let entry = entry.map_err(|e| IndexError::io(dir, e))?;
            let path = entry.path();
            let cid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok());
            match cid {
                Some(cid) if path.is_dir() => {
                    collections.insert(cid, CollectionPassages::open(&path, &schema)?);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "not a collection's passage index; left alone")
                }
            }
        }
        Ok(Self {
            dir: dir.into(),
            schema,
            fields,
            collections,
            clock: 0,
        })
    }

    /// Returns the collection ids that have a passage index.
    pub fn collection_ids(&self) -> Vec<u32> {
        self.collections.keys().copied().collect()
    }

    /// Returns the sequence number recorded by the last commit of collection `cid` (0 for a
    /// fresh or missing index).
    pub fn applied_seq(&self, cid: u32) -> Result<u64> {
        self.collections
            .get(&cid)
            .map_or(Ok(0), CollectionPassages::applied_seq)
    }

    /// Creates the (empty) passage index of collection `cid`, if it has none.
    pub fn create(&mut self, cid: u32) -> Result<()> {
        if !self.collections.contains_key(&cid) {
            let c = CollectionPassages::open(&self.dir.join(cid.to_string()), &self.schema)?;
            self.collections.insert(cid, c);
        }
        Ok(())
    }

    /// Returns the writer of collection `cid` (creating its index), closing the writers of
    /// the collections written least lately beyond [`MAX_OPEN_WRITERS`].
    fn writer(&mut self, cid: u32) -> Result<&mut IndexWriter> {
        self.create(cid)?;
        self.clock += 1;
        let open = self
            .collections
            .values()
            .filter(|c| c.writer.is_some())
            .count();
        if open >= MAX_OPEN_WRITERS && self.collections[&cid].writer.is_none() {
            if let Some(idle) = self
                .collections
                .values_mut()
                .filter(|c| c.writer.is_some() && !c.dirty)
                .min_by_key(|c| c.used)
            {
                idle.writer = None;
            }
        }
        let c = self.collections.get_mut(&cid).expect("just created");
        c.used = self.clock;
        c.dirty = true;
        c.writer()
    }

    /// Replaces the passages of a document (uncommitted until [`Bm25::commit`]).
    pub fn put(&mut self, collection: u32, doc: u32, passages: &[Passage]) -> Result<()> {
        let f = self.fields;
        let w = self.writer(collection)?;
        w.delete_term(Term::from_field_u64(f.doc, u64::from(doc)));
        for p in passages {
            w.add_document(doc!(
                f.doc => u64::from(doc),
                f.char_start => p.chars.start as u64,
                f.char_end => p.chars.end as u64,
                f.text => p.text.as_str(),
            ))?;
        }
        Ok(())
    }

    /// Removes the passages of a document (uncommitted until [`Bm25::commit`]); nothing to do
    /// for a collection without an index.
    pub fn delete(&mut self, collection: u32, doc: u32) -> Result<()> {
        if !self.collections.contains_key(&collection) {
            return Ok(());
        }
        let f = self.fields;
        self.writer(collection)?
            .delete_term(Term::from_field_u64(f.doc, u64::from(doc)));
        Ok(())
    }

    /// Removes the passage index of a collection, folder and all (at once: the store's
    /// journal records the drop before this runs).
    pub fn drop_collection(&mut self, collection: u32) -> Result<()> {
        // The writer and reader go first: they hold files of the folder open.
        self.collections.remove(&collection);
        let dir = self.dir.join(collection.to_string());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        }
        Ok(())
    }

    /// Removes every passage index.
    pub fn clear(&mut self) -> Result<()> {
        for cid in self.collection_ids() {
            self.drop_collection(cid)?;
        }
        Ok(())
    }

    /// Commits the pending changes of every collection written since its last commit,
    /// recording `seq` as applied, and makes them searchable.
    pub fn commit(&mut self, seq: u64) -> Result<()> {
        for c in self.collections.values_mut().filter(|c| c.dirty) {
            c.commit(seq)?;
        }
        Ok(())
    }

    /// Closes every collection's writer (all are committed: the caller committed first) and
    /// returns them: waiting on [`Merges`] ends the segment merges they still run, after which
    /// no file under `bm25/` changes until the next write.
    pub fn take_writers(&mut self) -> Merges {
        Merges(
            self.collections
                .values_mut()
                .filter_map(|c| c.writer.take())
                .collect(),
        )
    }

    /// Purges deleted passages and merges each collection's segments into one.
    pub fn compact(&mut self) -> Result<()> {
        for c in self.collections.values_mut() {
            c.compact()?;
            // Compaction is rare: its writers need not stay open.
            c.writer = None;
        }
        Ok(())
    }

    /// Returns the best passages of collection `cid` (of documents `docs` only, when given)
    /// for a free-text query; best first, ties in document and position order.
    pub fn search(
        &self,
        cid: u32,
        docs: Option<&[u32]>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<PassageHit>> {
        let Some(c) = self.collections.get(&cid) else {
            return Ok(Vec::new());
        };
        let f = self.fields;
        let parser = QueryParser::for_index(&c.index, vec![f.text]);
        // Free text from users: syntax errors drop the offending part instead of failing.
        let (text_query, _) = parser.parse_query_lenient(query);
        let mut clauses = vec![(Occur::Must, text_query)];
        if let Some(docs) = docs {
            // The documents only filter: a zero constant score leaves BM25's ranking as it is.
            let any_of: Vec<(Occur, Box<dyn Query>)> = docs
                .iter()
                .map(|&d| {
                    let q: Box<dyn Query> = Box::new(ConstScoreQuery::new(
                        Box::new(TermQuery::new(
                            Term::from_field_u64(f.doc, u64::from(d)),
                            IndexRecordOption::Basic,
                        )),
                        0.0,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(any_of))));
        }
        let q = BooleanQuery::new(clauses);
        let searcher = c.reader.searcher();
        let top = searcher.search(&q, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let mut hits = top
            .into_iter()
            .map(|(score, addr)| {
                let d: TantivyDocument = searcher.doc(addr)?;
                let (doc, start, end) = self.stored(&c.dir, &d)?;
                Ok(PassageHit {
                    doc,
                    chars: start..end,
                    score,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Segment order (which merges change) must not decide between equal scores.
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.doc.cmp(&b.doc))
                .then(a.chars.start.cmp(&b.chars.start))
        });
        Ok(hits)
    }

    /// Returns, for every document with passages, how many it has, keyed by (collection, doc).
    pub fn documents(&self) -> Result<BTreeMap<(u32, u32), usize>> {
        let mut out = BTreeMap::new();
        for (&cid, c) in &self.collections {
            let searcher = c.reader.searcher();
            for addr in searcher.search(&tantivy::query::AllQuery, &DocSetCollector)? {
                let d: TantivyDocument = searcher.doc(addr)?;
                let (doc, _, _) = self.stored(&c.dir, &d)?;
                *out.entry((cid, doc)).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    fn stored(&self, dir: &Path, d: &TantivyDocument) -> Result<(u32, usize, usize)> {
        let f = self.fields;
        let get = |field: Field, name: &str| {
            d.get_first(field).and_then(|v| v.as_u64()).ok_or_else(|| {
                IndexError::corrupt(
                    dir.display().to_string(),
                    format!("a passage lacks its {name}"),
                )
            })
        };
        let doc = u32::try_from(get(f.doc, "doc")?).map_err(|_| {
            IndexError::corrupt(dir.display().to_string(), "a document number over u32")
        })?;
        Ok((
            doc,
            get(f.char_start, "char_start")? as usize,
            get(f.char_end, "char_end")? as usize,
        ))
    }

    /// Returns the directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(text: &str) -> Passage {
        Passage {
            chars: 0..text.chars().count(),
            tokens: 0..1,
            text: text.into(),
        }
    }

    #[test]
    fn collections_score_alone_and_compaction_purges_deletes_in_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut bm25 = Bm25::open(dir.path()).unwrap();
        bm25.put(1, 0, &[passage("the warranty covers lanterns")])
            .unwrap();
        bm25.put(1, 1, &[passage("boats and harbours")]).unwrap();
        bm25.commit(1).unwrap();
        let alone = bm25.search(1, None, "warranty", 5).unwrap();
        bm25.put(2, 0, &[passage("warranty warranty warranty")])
            .unwrap();
        bm25.commit(2).unwrap();
        assert_eq!(bm25.search(1, None, "warranty", 5).unwrap(), alone);
        assert_eq!(bm25.collection_ids(), [1, 2]);

        bm25.compact().unwrap();
        bm25.put(1, 2, &[passage("warranty of the mill")]).unwrap();
        bm25.commit(3).unwrap();
        bm25.compact().unwrap();
        bm25.delete(1, 2).unwrap();
        bm25.commit(4).unwrap();
        let segments = |b: &Bm25| b.collections[&1].index.searchable_segment_metas().unwrap();
        assert_eq!(segments(&bm25).len(), 1);
        assert!(segments(&bm25)[0].has_deletes());
        bm25.compact().unwrap();
        assert!(!segments(&bm25)[0].has_deletes());
        assert_eq!(bm25.search(1, None, "warranty", 5).unwrap(), alone);
        assert_eq!(bm25.applied_seq(1).unwrap(), 4);
        assert_eq!(bm25.applied_seq(2).unwrap(), 2);

        bm25.drop_collection(2).unwrap();
        assert!(!dir.path().join("2").exists());
        drop(bm25);
        let reopened = Bm25::open(dir.path()).unwrap();
        assert_eq!(reopened.collection_ids(), [1]);
        assert_eq!(reopened.search(1, None, "warranty", 5).unwrap(), alone);
    }
}
