//! Conversions between the proto messages and the index layer's types, and the checks of
//! request fields that name the field when they refuse.

use std::ops::Range;

use super::error::{Result, ServiceError};
use super::pb;
use super::queue::QueueState;
use crate::index::{CollectionInfo, DocumentInfo, Ingested, Stats};

/// Longest collection name, document id or metadata key, in bytes (the index's limit).
const MAX_NAME_BYTES: usize = 512;

/// Checks a name-like field (collection, id, metadata key): 1 to 512 bytes, no control
/// characters.
pub fn check_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field, "is empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(ServiceError::invalid(
            field,
            format!(
                "has {} bytes, over the limit of {MAX_NAME_BYTES}",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Returns a proto char range as a Rust range, refusing one that ends before it starts.
pub fn char_range(r: &pb::CharRange) -> Result<Range<usize>> {
    let to_usize = |v: u64| {
        usize::try_from(v).map_err(|_| ServiceError::invalid("chars", "does not fit in memory"))
    };
    let (start, end) = (to_usize(r.start)?, to_usize(r.end)?);
    if start > end {
        return Err(ServiceError::invalid(
            "chars",
            format!("ends ({end}) before it starts ({start})"),
        ));
    }
    Ok(start..end)
}

impl From<CollectionInfo> for pb::CollectionInfo {
    fn from(c: CollectionInfo) -> Self {
        Self {
            name: c.name,
            documents: c.documents,
            tokens: c.tokens,
        }
    }
}

impl From<pb::CollectionInfo> for CollectionInfo {
    fn from(c: pb::CollectionInfo) -> Self {
        Self {
            name: c.name,
            documents: c.documents,
            tokens: c.tokens,
        }
    }
}

fn meta_to_pb(meta: Vec<(String, String)>) -> Vec<pb::MetaEntry> {
    meta.into_iter()
        .map(|(key, value)| pb::MetaEntry { key, value })
        .collect()
}

impl From<DocumentInfo> for pb::DocumentInfo {
    fn from(d: DocumentInfo) -> Self {
        Self {
            id: d.id,
            number: d.number,
            tokens: d.tokens,
            chars: d.chars,
            bytes: d.bytes,
            position_start: d.positions.start,
            position_end: d.positions.end,
            metadata: meta_to_pb(d.meta),
        }
    }
}

impl From<pb::DocumentInfo> for DocumentInfo {
    fn from(d: pb::DocumentInfo) -> Self {
        Self {
            id: d.id,
            number: d.number,
            tokens: d.tokens,
            chars: d.chars,
            bytes: d.bytes,
            positions: d.position_start..d.position_end,
            meta: d.metadata.into_iter().map(|m| (m.key, m.value)).collect(),
        }
    }
}

/// Returns an ingest reply.
pub fn ingested_to_pb(i: Ingested, queue_seconds: f64) -> pb::IngestResponse {
    pb::IngestResponse {
        id: i.id,
        tokens: i.tokens as u64,
        replaced: i.replaced,
        scan_seconds: i.scan_seconds,
        encode_seconds: i.encode_seconds,
        store_seconds: i.store_seconds,
        queue_seconds,
    }
}

/// Returns a stats reply with the queues' state.
pub fn stats_to_pb(s: Stats, queues: &[QueueState]) -> pb::StatsResponse {
    pb::StatsResponse {
        collections: s.collections,
        documents: s.documents,
        tokens: s.tokens,
        postings: s.postings,
        posting_entries: s.posting_entries,
        components: s
            .components
            .into_iter()
            .map(|(k, c)| {
                (
                    k,
                    pb::ComponentBytes {
                        records: c.records,
                        bytes: c.bytes,
                    },
                )
            })
            .collect(),
        store_disk_bytes: s.store_disk_bytes,
        bm25_disk_bytes: s.bm25_disk_bytes,
        bytes_per_token: s.bytes_per_token.into_iter().collect(),
        queues: queues
            .iter()
            .map(|q| pb::QueueState {
                name: q.name.into(),
                workers: q.workers as u32,
                running: q.running as u32,
                waiting: q.waiting as u32,
                depth: q.depth as u32,
            })
            .collect(),
    }
}

/// Returns the index statistics of a stats reply (the queues are the daemon's, not the data
/// dir's).
pub fn stats_from_pb(s: pb::StatsResponse) -> Stats {
    Stats {
        collections: s.collections,
        documents: s.documents,
        tokens: s.tokens,
        postings: s.postings,
        posting_entries: s.posting_entries,
        components: s
            .components
            .into_iter()
            .map(|(k, c)| {
                (
                    k,
                    crate::index::ComponentBytes {
                        records: c.records,
                        bytes: c.bytes,
                    },
                )
            })
            .collect(),
        store_disk_bytes: s.store_disk_bytes,
        bm25_disk_bytes: s.bm25_disk_bytes,
        bytes_per_token: s.bytes_per_token.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges_are_refused_by_field() {
        let e = check_name("header.id", "").unwrap_err();
        assert_eq!(e.to_string(), "header.id: is empty");
        assert!(check_name("name", &"x".repeat(513)).is_err());
        assert!(check_name("name", "a\u{7}b").is_err());
        check_name("name", "licences").unwrap();
        assert!(char_range(&pb::CharRange { start: 5, end: 2 }).is_err());
        assert_eq!(
            char_range(&pb::CharRange { start: 2, end: 5 }).unwrap(),
            2..5
        );
    }

    #[test]
    fn document_info_round_trips() {
        let d = DocumentInfo {
            id: "a".into(),
            number: 3,
            tokens: 10,
            chars: 40,
            bytes: 41,
            positions: 100..110,
            meta: vec![("k".into(), "v".into())],
        };
        assert_eq!(DocumentInfo::from(pb::DocumentInfo::from(d.clone())), d);
    }
}
