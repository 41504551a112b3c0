//! The BM25 side of the index: tantivy over sentence-aligned passages.
//!
//! tantivy is written after sled: the commit payload records the last sequence number whose
//! changes it holds, and the store's journal replays whatever came after (see `memory/open.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, INDEXED, STORED, TEXT};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::error::{IndexError, Result};
use super::passages::Passage;

/// Indexing memory of the single writer thread (tantivy's minimum is 15 MB).
const WRITER_MEMORY: usize = 32_000_000;

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
    collection: Field,
    doc: Field,
    char_start: Field,
    char_end: Field,
    text: Field,
}

/// The passage index in `<data dir>/bm25`.
pub struct Bm25 {
    dir: PathBuf,
    index: tantivy::Index,
    fields: Fields,
    reader: IndexReader,
    writer: Option<IndexWriter>,
}

/// Returns the unique term value of a document: collection id and number in one u64.
fn doc_term(collection: u32, doc: u32) -> u64 {
    (u64::from(collection) << 32) | u64::from(doc)
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        collection: b.add_u64_field("collection", INDEXED | STORED),
        doc: b.add_u64_field("doc", INDEXED | STORED),
        char_start: b.add_u64_field("char_start", STORED),
        char_end: b.add_u64_field("char_end", STORED),
        // The text lives in sled already: indexed here, not stored twice.
        text: b.add_text_field("text", TEXT),
    };
    (b.build(), fields)
}

impl Bm25 {
    /// Opens (or creates) the passage index in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let (schema, fields) = schema();
        let index = if dir.join("meta.json").is_file() {
            let index = tantivy::Index::open_in_dir(dir)?;
            if index.schema() != schema {
                return Err(IndexError::corrupt(
                    dir.display().to_string(),
                    "the bm25 schema differs from this build's",
                ));
            }
            index
        } else {
            tantivy::Index::create_in_dir(dir, schema)?
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            dir: dir.into(),
            index,
            fields,
            reader,
            writer: None,
        })
    }

    /// Returns the sequence number recorded by the last commit (0 for a fresh index).
    pub fn applied_seq(&self) -> Result<u64> {
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
            let w: IndexWriter = self.index.writer_with_num_threads(1, WRITER_MEMORY)?;
            // A process killed before its commit leaves segment and delete files no commit
            // uses; a new writer reusing their opstamp would fail on them, so remove them first.
            w.garbage_collect_files().wait()?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("just set"))
    }

    /// Replaces the passages of a document (uncommitted until [`Bm25::commit`]).
    pub fn put(&mut self, collection: u32, doc: u32, passages: &[Passage]) -> Result<()> {
        let f = self.fields;
        let w = self.writer()?;
        w.delete_term(Term::from_field_u64(f.doc, doc_term(collection, doc)));
        for p in passages {
            w.add_document(doc!(
                f.collection => u64::from(collection),
                f.doc => doc_term(collection, doc),
                f.char_start => p.chars.start as u64,
                f.char_end => p.chars.end as u64,
                f.text => p.text.as_str(),
            ))?;
        }
        Ok(())
    }

    /// Removes the passages of a document (uncommitted until [`Bm25::commit`]).
    pub fn delete(&mut self, collection: u32, doc: u32) -> Result<()> {
        let f = self.fields;
        self.writer()?
            .delete_term(Term::from_field_u64(f.doc, doc_term(collection, doc)));
        Ok(())
    }

    /// Removes the passages of a collection (uncommitted until [`Bm25::commit`]).
    pub fn drop_collection(&mut self, collection: u32) -> Result<()> {
        let f = self.fields;
        self.writer()?
            .delete_term(Term::from_field_u64(f.collection, u64::from(collection)));
        Ok(())
    }

    /// Removes every passage (uncommitted until [`Bm25::commit`]).
    pub fn clear(&mut self) -> Result<()> {
        self.writer()?.delete_all_documents()?;
        Ok(())
    }

    /// Commits pending changes, recording `seq` as applied, and makes them searchable.
    pub fn commit(&mut self, seq: u64) -> Result<()> {
        let w = self.writer()?;
        let mut prepared = w.prepare_commit()?;
        prepared.set_payload(&seq.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Merges all segments and removes files no commit uses.
    pub fn compact(&mut self) -> Result<()> {
        let ids = self.index.searchable_segment_ids()?;
        let w = self.writer()?;
        if ids.len() > 1 {
            w.merge(&ids).wait()?;
        }
        w.garbage_collect_files().wait()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Returns the best passages of `collection` (of documents `docs` only, when given) for a
    /// free-text query.
    pub fn search(
        &self,
        collection: u32,
        docs: Option<&[u32]>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<PassageHit>> {
        let f = self.fields;
        let parser = QueryParser::for_index(&self.index, vec![f.text]);
        // Free text from users: syntax errors drop the offending part instead of failing.
        let (text_query, _) = parser.parse_query_lenient(query);
        // The collection only filters: a zero constant score leaves BM25's ranking as it is.
        let scope: Box<dyn Query> = Box::new(ConstScoreQuery::new(
            Box::new(TermQuery::new(
                Term::from_field_u64(f.collection, u64::from(collection)),
                IndexRecordOption::Basic,
            )),
            0.0,
        ));
        let mut clauses = vec![(Occur::Must, text_query), (Occur::Must, scope)];
        if let Some(docs) = docs {
            let any_of: Vec<(Occur, Box<dyn Query>)> = docs
                .iter()
                .map(|&d| {
                    let q: Box<dyn Query> = Box::new(ConstScoreQuery::new(
                        Box::new(TermQuery::new(
                            Term::from_field_u64(f.doc, doc_term(collection, d)),
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
        let searcher = self.reader.searcher();
        let top = searcher.search(&q, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        top.into_iter()
            .map(|(score, addr)| {
                let d: TantivyDocument = searcher.doc(addr)?;
                let (_, doc, start, end) = self.stored(&d)?;
                Ok(PassageHit {
                    doc,
                    chars: start..end,
                    score,
                })
            })
            .collect()
    }

    /// Returns, for every document with passages, how many it has, keyed by (collection, doc).
    pub fn documents(&self) -> Result<BTreeMap<(u32, u32), usize>> {
        let searcher = self.reader.searcher();
        let mut out = BTreeMap::new();
        for addr in searcher.search(&AllQuery, &DocSetCollector)? {
            let d: TantivyDocument = searcher.doc(addr)?;
            let (collection, doc, _, _) = self.stored(&d)?;
            *out.entry((collection, doc)).or_insert(0) += 1;
        }
        Ok(out)
    }

    fn stored(&self, d: &TantivyDocument) -> Result<(u32, u32, usize, usize)> {
        let f = self.fields;
        let get = |field: Field, name: &str| {
            d.get_first(field).and_then(|v| v.as_u64()).ok_or_else(|| {
                IndexError::corrupt(
                    self.dir.display().to_string(),
                    format!("a passage lacks its {name}"),
                )
            })
        };
        let key = get(f.doc, "doc")?;
        Ok((
            (key >> 32) as u32,
            key as u32,
            get(f.char_start, "char_start")? as usize,
            get(f.char_end, "char_end")? as usize,
        ))
    }

    /// Returns the directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
