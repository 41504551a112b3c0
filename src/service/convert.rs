//! Conversions between the proto messages and the index layer's types, and the checks of
//! request fields that name the field when they refuse.

use std::ops::Range;

use super::config::Limits;
use super::error::{Result, ServiceError};
use super::pb;
use super::queue::QueueState;
use crate::answer::{Answer, AnswerMode};
use crate::index::MetaType;
use crate::index::{CollectionInfo, DocumentInfo, Ingested, Stats};
use crate::retrieve::filter::{Bound, Cmp, MAX_FILTER_CONDITIONS};
use crate::retrieve::{Evidence, EvidenceSpan, Filter, Method, Query};

/// Checks a name-like field (collection, id, metadata key) with the index's one check of names
/// ([`crate::index::check_name`]), naming the field when it refuses.
pub fn check_name(field: &'static str, value: &str) -> Result<()> {
    crate::index::check_name(value)
        .map_err(|problem| ServiceError::invalid(field, problem.to_string()))
}

/// Refuses metadata over the limits (entries, key and value bytes) or with a key that is not
/// a name, naming the field and the limit.
pub fn check_metadata(meta: &[pb::MetaEntry], limits: &Limits) -> Result<()> {
    if meta.len() > limits.max_metadata_entries {
        return Err(ServiceError::invalid(
            "header.metadata",
            format!(
                "{} entries, over the limit of {} (max_metadata_entries)",
                meta.len(),
                limits.max_metadata_entries
            ),
        ));
    }
    for m in meta {
        check_name("header.metadata.key", &m.key)?;
        if m.key.len() > limits.max_metadata_key_bytes {
            return Err(ServiceError::invalid(
                "header.metadata.key",
                format!(
                    "has {} bytes, over the limit of {} (max_metadata_key_bytes)",
                    m.key.len(),
                    limits.max_metadata_key_bytes
                ),
            ));
        }
        if m.value.len() > limits.max_metadata_value_bytes {
            return Err(ServiceError::invalid(
                "header.metadata.value",
                format!(
                    "the value of `{}` has {} bytes, over the limit of {} (max_metadata_value_bytes)",
                    m.key,
                    m.value.len(),
                    limits.max_metadata_value_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// Most documents of one ListDocuments reply (and the number a request of 0 gets).
pub const MAX_PAGE_SIZE: usize = 1000;

/// Where a page of documents starts and how many it holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentPage {
    /// The first document number.
    pub from: u32,
    /// Most documents.
    pub size: usize,
}

/// Returns the page a ListDocuments request asks for; a page token is the number of the
/// page's first document.
pub fn document_page(page_size: u32, page_token: &str) -> Result<DocumentPage> {
    let size = match page_size as usize {
        0 => MAX_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(ServiceError::invalid(
                "page_size",
                format!("{n}, over the limit of {MAX_PAGE_SIZE}"),
            ))
        }
        n => n,
    };
    let from = if page_token.is_empty() {
        0
    } else {
        page_token.parse().map_err(|_| {
            ServiceError::invalid(
                "page_token",
                format!("{page_token:?} is not a token of an earlier reply"),
            )
        })?
    };
    Ok(DocumentPage { from, size })
}

/// Returns a ListDocuments reply of `docs` cut to fit `room` bytes (at least one document),
/// whose next page starts at what was cut or else at `next`.
pub fn documents_to_pb(
    docs: Vec<DocumentInfo>,
    next: Option<u32>,
    room: usize,
) -> pb::ListDocumentsResponse {
    let mut out = Vec::with_capacity(docs.len());
    let mut bytes = 0;
    let mut next = next;
    for d in docs {
        let number = d.number;
        let d = pb::DocumentInfo::from(d);
        // A repeated field costs its encoding plus a tag and a length prefix.
        let size = prost::Message::encoded_len(&d) + 8;
        if !out.is_empty() && bytes + size > room {
            next = Some(number);
            break;
        }
        bytes += size;
        out.push(d);
    }
    pb::ListDocumentsResponse {
        documents: out,
        next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
    }
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

/// The fields of a retrieve or ask request.
pub struct QueryFields {
    /// The collection.
    pub collection: String,
    /// Documents to restrict to.
    pub docs: Vec<String>,
    /// The question.
    pub question: String,
    /// Token budget (0: the default).
    pub budget: u32,
    /// `pb::Method` as sent.
    pub method: i32,
    /// Whether to trace.
    pub trace: bool,
    /// The filter as sent.
    pub filter: Option<pb::Filter>,
}

impl From<pb::RetrieveRequest> for QueryFields {
    fn from(r: pb::RetrieveRequest) -> Self {
        Self {
            collection: r.collection,
            docs: r.docs,
            question: r.question,
            budget: r.budget,
            method: r.method,
            trace: r.trace,
            filter: r.filter,
        }
    }
}

/// Returns the filter a request sent, refusing one without a condition or with more
/// conditions than [`MAX_FILTER_CONDITIONS`], or a key or id that is not a name.
pub fn filter_from_pb(f: pb::Filter) -> Result<Filter> {
    fn walk(f: pb::Filter, seen: &mut usize) -> Result<Filter> {
        use pb::filter::Condition;
        *seen += 1;
        if *seen > MAX_FILTER_CONDITIONS {
            return Err(ServiceError::invalid(
                "filter",
                format!("more than {MAX_FILTER_CONDITIONS} conditions"),
            ));
        }
        let key = |k: &str| check_name("filter.key", k);
        let list = |fs: Vec<pb::Filter>, seen: &mut usize| {
            fs.into_iter()
                .map(|f| walk(f, seen))
                .collect::<Result<Vec<_>>>()
        };
        Ok(match f.condition {
            None => {
                return Err(ServiceError::invalid(
                    "filter",
                    "a Filter without a condition",
                ))
            }
            Some(Condition::Equals(e)) => {
                key(&e.key)?;
                Filter::OneOf {
                    key: e.key,
                    values: vec![e.value],
                }
            }
            Some(Condition::OneOf(o)) => {
                key(&o.key)?;
                Filter::OneOf {
                    key: o.key,
                    values: o.values,
                }
            }
            Some(Condition::NumberRange(r)) => {
                key(&r.key)?;
                let bounds = set_bounds([r.gt, r.gte, r.lt, r.lte])
                    .map(|(op, v)| {
                        if v.is_finite() {
                            Ok(Bound {
                                op,
                                value: v.to_string(),
                            })
                        } else {
                            Err(ServiceError::invalid(
                                "filter.number_range",
                                format!("bound {v} of `{}` is not a finite number", r.key),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Filter::Range {
                    key: r.key,
                    expect: Some(MetaType::Number),
                    bounds,
                }
            }
            Some(Condition::DateRange(r)) => {
                key(&r.key)?;
                let bounds = set_bounds([r.gt, r.gte, r.lt, r.lte])
                    .map(|(op, value)| Bound { op, value })
                    .collect();
                Filter::Range {
                    key: r.key,
                    expect: Some(MetaType::Date),
                    bounds,
                }
            }
            Some(Condition::AllOf(l)) => Filter::All(list(l.filters, seen)?),
            Some(Condition::AnyOf(l)) => Filter::Any(list(l.filters, seen)?),
            Some(Condition::Negate(inner)) => Filter::Not(Box::new(walk(*inner, seen)?)),
            Some(Condition::DocIds(d)) => {
                for id in &d.ids {
                    check_name("filter.doc_ids", id)?;
                }
                Filter::Docs(d.ids)
            }
        })
    }
    walk(f, &mut 0)
}

/// Returns the bounds a range message sets, from its `gt`, `gte`, `lt` and `lte` in that
/// order.
fn set_bounds<T>(bounds: [Option<T>; 4]) -> impl Iterator<Item = (Cmp, T)> {
    [Cmp::Gt, Cmp::Ge, Cmp::Lt, Cmp::Le]
        .into_iter()
        .zip(bounds)
        .filter_map(|(op, v)| v.map(|v| (op, v)))
}

/// Returns the proto message of a filter (the CLI's `--filter` sent to a daemon).
pub fn filter_to_pb(f: &Filter) -> pb::Filter {
    use pb::filter::Condition;
    let condition = match f {
        Filter::OneOf { key, values } if values.len() == 1 => Condition::Equals(pb::MetaEquals {
            key: key.clone(),
            value: values[0].clone(),
        }),
        Filter::OneOf { key, values } => Condition::OneOf(pb::MetaOneOf {
            key: key.clone(),
            values: values.clone(),
        }),
        Filter::Range {
            key,
            expect,
            bounds,
        } => {
            // The expression does not say which type it means: the daemon reads the bounds
            // as the key's type, so a bound that is no number is sent as a date range.
            let numbers: Option<Vec<f64>> = bounds
                .iter()
                .map(|b| MetaType::Number.read(&b.value).and(b.value.parse().ok()))
                .collect();
            let pick = |op: Cmp| bounds.iter().position(|b| b.op == op);
            match (expect, numbers) {
                (Some(MetaType::Number) | None, Some(n)) => {
                    Condition::NumberRange(pb::NumberRange {
                        key: key.clone(),
                        gt: pick(Cmp::Gt).map(|i| n[i]),
                        gte: pick(Cmp::Ge).map(|i| n[i]),
                        lt: pick(Cmp::Lt).map(|i| n[i]),
                        lte: pick(Cmp::Le).map(|i| n[i]),
                    })
                }
                _ => {
                    let v = |op: Cmp| pick(op).map(|i| bounds[i].value.clone());
                    Condition::DateRange(pb::DateRange {
                        key: key.clone(),
                        gt: v(Cmp::Gt),
                        gte: v(Cmp::Ge),
                        lt: v(Cmp::Lt),
                        lte: v(Cmp::Le),
                    })
                }
            }
        }
        Filter::All(fs) => Condition::AllOf(pb::FilterList {
            filters: fs.iter().map(filter_to_pb).collect(),
        }),
        Filter::Any(fs) => Condition::AnyOf(pb::FilterList {
            filters: fs.iter().map(filter_to_pb).collect(),
        }),
        Filter::Not(x) => Condition::Negate(Box::new(filter_to_pb(x))),
        Filter::Docs(ids) => Condition::DocIds(pb::DocIds { ids: ids.clone() }),
    };
    pb::Filter {
        condition: Some(condition),
    }
}

/// Checks a retrieve or ask request against the limits and returns the query; a request
/// that names no method gets `default_method`.
pub fn query(r: QueryFields, limits: &Limits, default_method: Method) -> Result<Query> {
    check_name("collection", &r.collection)?;
    for d in &r.docs {
        check_name("docs", d)?;
    }
    if r.question.trim().is_empty() {
        return Err(ServiceError::invalid("question", "is empty"));
    }
    if r.question.len() > limits.max_question_bytes {
        return Err(ServiceError::invalid(
            "question",
            format!(
                "has {} bytes, over the limit of {} (max_question_bytes)",
                r.question.len(),
                limits.max_question_bytes
            ),
        ));
    }
    let budget = match r.budget as usize {
        0 => limits.default_budget,
        b if b > limits.max_budget => {
            return Err(ServiceError::invalid(
                "budget",
                format!(
                    "{b} tokens, over the limit of {} (max_budget)",
                    limits.max_budget
                ),
            ))
        }
        b => b,
    };
    let method = match pb::Method::try_from(r.method) {
        Ok(pb::Method::Unspecified) => default_method,
        Ok(pb::Method::Hybrid) => Method::Hybrid,
        Ok(pb::Method::S3) => Method::S3,
        Ok(pb::Method::Bm25) => Method::Bm25,
        Ok(pb::Method::Bias) => Method::Bias,
        Ok(pb::Method::Rerank) => Method::Rerank,
        Ok(pb::Method::Dense) => Method::Dense,
        Ok(pb::Method::Rag) => Method::Rag,
        Err(_) => {
            return Err(ServiceError::invalid(
                "method",
                format!("{} is not a Method", r.method),
            ))
        }
    };
    let filter = r.filter.map(filter_from_pb).transpose()?;
    Ok(Query {
        collection: r.collection,
        docs: r.docs,
        question: r.question,
        budget,
        method,
        trace: r.trace,
        filter,
    })
}

/// Returns the answer length a request asks for (0: the default), checked against the limit.
pub fn max_new_tokens(asked: u32, limits: &Limits) -> Result<usize> {
    match asked as usize {
        0 => Ok(limits.default_new_tokens),
        n if n > limits.max_new_tokens => Err(ServiceError::invalid(
            "max_new_tokens",
            format!(
                "{n}, over the limit of {} (max_new_tokens)",
                limits.max_new_tokens
            ),
        )),
        n => Ok(n),
    }
}

/// Returns the proto method of a retrieval method.
pub fn method_to_pb(m: Method) -> pb::Method {
    match m {
        Method::S3 => pb::Method::S3,
        Method::Bm25 => pb::Method::Bm25,
        Method::Hybrid => pb::Method::Hybrid,
        Method::Bias => pb::Method::Bias,
        Method::Rerank => pb::Method::Rerank,
        Method::Dense => pb::Method::Dense,
        Method::Rag => pb::Method::Rag,
    }
}

/// Returns evidence as its reply; the trace travels as the CLI's JSON.
pub fn evidence_to_pb(e: Evidence) -> Result<pb::RetrieveResponse> {
    let trace_json = match &e.trace {
        Some(t) => serde_json::to_string(t)
            .map_err(|err| ServiceError::Internal(format!("writing the trace: {err}")))?,
        None => String::new(),
    };
    Ok(pb::RetrieveResponse {
        question: e.question,
        method: e.method.to_string(),
        budget: e.budget as u32,
        context: e.context,
        context_tokens: e.context_tokens as u32,
        spans: e
            .spans
            .into_iter()
            .map(|s| pb::EvidenceSpan {
                doc_id: s.doc_id,
                char_start: s.char_start as u64,
                char_end: s.char_end as u64,
                token_start: s.token_start as u64,
                token_end: s.token_end as u64,
                source: s.source,
                score: s.score,
                text: s.text,
            })
            .collect(),
        timings_ms: e.timings_ms.into_iter().collect(),
        trace_json,
    })
}

/// Returns the evidence of a reply, and its trace as JSON (if it has one).
pub fn evidence_from_pb(r: pb::RetrieveResponse) -> Result<(Evidence, Option<serde_json::Value>)> {
    let method: Method = r
        .method
        .parse()
        .map_err(|_| ServiceError::invalid("method", format!("unknown method {:?}", r.method)))?;
    let trace = if r.trace_json.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&r.trace_json)
                .map_err(|e| ServiceError::invalid("trace_json", e.to_string()))?,
        )
    };
    let evidence = Evidence {
        question: r.question,
        method,
        budget: r.budget as usize,
        context: r.context,
        context_tokens: r.context_tokens as usize,
        spans: r
            .spans
            .into_iter()
            .map(|s| EvidenceSpan {
                doc_id: s.doc_id,
                char_start: s.char_start as usize,
                char_end: s.char_end as usize,
                token_start: s.token_start as usize,
                token_end: s.token_end as usize,
                source: s.source,
                score: s.score,
                text: s.text,
            })
            .collect(),
        timings_ms: r.timings_ms.into_iter().collect(),
        trace: None,
    };
    Ok((evidence, trace))
}

/// Returns the last message of an ask.
pub fn answer_to_pb(a: Answer) -> pb::AskResult {
    pb::AskResult {
        answer: a.answer,
        prompt_tokens: a.prompt_tokens as u32,
        new_tokens: a.new_tokens as u32,
        // The CLI's JSON spelling of the stop reason.
        stop: serde_json::to_value(a.stop)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        timings_ms: a.timings_ms.into_iter().collect(),
        mode: a.mode.to_string(),
        quote: a.quote.map(|q| pb::Quote {
            doc_id: q.doc_id.unwrap_or_default(),
            char_start: q.char_start as u64,
            char_end: q.char_end as u64,
            evidence: q.label.map_or(0, |l| l as u32),
        }),
        citations: a.citations.into_iter().map(|n| n as u32).collect(),
        not_in_evidence: a.not_in_evidence,
        confidence: a.confidence,
    }
}

/// Returns the answer mode a request asks for (`None`: the daemon's default).
pub fn answer_mode(mode: i32) -> Result<Option<AnswerMode>> {
    match pb::AnswerMode::try_from(mode) {
        Ok(pb::AnswerMode::Unspecified) => Ok(None),
        Ok(pb::AnswerMode::Free) => Ok(Some(AnswerMode::Free)),
        Ok(pb::AnswerMode::Quote) => Ok(Some(AnswerMode::Quote)),
        Ok(pb::AnswerMode::Auto) => Ok(Some(AnswerMode::Auto)),
        Err(_) => Err(ServiceError::invalid(
            "answer_mode",
            format!("{mode} is not an AnswerMode"),
        )),
    }
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
    fn queries_are_checked_against_the_limits() {
        let limits = Limits::default();
        let fields = |budget, method, question: &str| QueryFields {
            collection: "c".into(),
            docs: vec![],
            question: question.into(),
            budget,
            method,
            trace: false,
            filter: None,
        };
        let hybrid = Method::Hybrid;
        let q = query(fields(0, 0, "why?"), &limits, hybrid).unwrap();
        assert_eq!(q.budget, limits.default_budget);
        assert_eq!(q.method, Method::Hybrid);
        // An unspecified method is the daemon's default; a named one is what it names.
        let q = query(fields(0, 0, "why?"), &limits, Method::Rerank).unwrap();
        assert_eq!(q.method, Method::Rerank);
        let q = query(fields(0, 2, "why?"), &limits, Method::Rerank).unwrap();
        assert_eq!(q.method, Method::Bm25);
        let e = query(fields(100_000, 1, "why?"), &limits, hybrid).unwrap_err();
        assert!(e.to_string().starts_with("budget: "), "{e}");
        let e = query(fields(10, 99, "why?"), &limits, hybrid).unwrap_err();
        assert!(e.to_string().starts_with("method: "), "{e}");
        let e = query(fields(10, 1, " "), &limits, hybrid).unwrap_err();
        assert!(e.to_string().starts_with("question: "), "{e}");
        assert!(max_new_tokens(100_000, &limits).is_err());
        assert_eq!(
            max_new_tokens(0, &limits).unwrap(),
            limits.default_new_tokens
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

    #[test]
    fn filters_go_to_the_daemon_and_back() {
        for expr in [
            "tenant=acme",
            "tenant in (a, b) and not doc in (x)",
            "year>=2020 or date<2024-01-01T00:00:00Z",
            "(a=1 or b=2) and c!=3",
        ] {
            let f: Filter = expr.parse().unwrap();
            // The proto says which type a range means; the expression leaves it to the key.
            let back = filter_from_pb(filter_to_pb(&f)).unwrap();
            assert_eq!(back.to_string(), f.to_string(), "{expr}");
        }
        // A number range is sent typed; a date range too.
        let f: Filter = "year>=2020".parse().unwrap();
        assert!(matches!(
            filter_to_pb(&f).condition,
            Some(pb::filter::Condition::NumberRange(pb::NumberRange { gte: Some(v), .. })) if v == 2020.0
        ));
        let f: Filter = "d<2024-01-01".parse().unwrap();
        assert!(matches!(
            filter_to_pb(&f).condition,
            Some(pb::filter::Condition::DateRange(_))
        ));
        let e = filter_from_pb(pb::Filter { condition: None }).unwrap_err();
        assert!(e.to_string().starts_with("filter: "), "{e}");
        let bad_key = pb::Filter {
            condition: Some(pb::filter::Condition::Equals(pb::MetaEquals {
                key: "a\nb".into(),
                value: "x".into(),
            })),
        };
        let e = filter_from_pb(bad_key).unwrap_err();
        assert!(e.to_string().starts_with("filter.key: "), "{e}");
        let nan = pb::Filter {
            condition: Some(pb::filter::Condition::NumberRange(pb::NumberRange {
                key: "year".into(),
                gt: Some(f64::NAN),
                ..Default::default()
            })),
        };
        assert!(filter_from_pb(nan).is_err());
        let mut wide = pb::Filter {
            condition: Some(pb::filter::Condition::DocIds(pb::DocIds {
                ids: vec!["x".into()],
            })),
        };
        for _ in 0..MAX_FILTER_CONDITIONS {
            wide = pb::Filter {
                condition: Some(pb::filter::Condition::Negate(Box::new(wide))),
            };
        }
        let e = filter_from_pb(wide).unwrap_err();
        assert!(e.to_string().contains("conditions"), "{e}");
    }
}
