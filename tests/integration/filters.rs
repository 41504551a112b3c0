//! Metadata filters end to end with the real SmolLM2 (and MiniLM for the dense methods): two
//! tenants in one collection by a `tenant` key, every method returns only the tenant's spans
//! (through the daemon, and attention re-ranking through the library on the same data dir);
//! number and date ranges; a value of the wrong type refused at ingest naming the key; a
//! filter that passes nothing gives an empty context; an unknown key gives an empty context
//! and a trace note; `--filter` through the CLI, local and against the daemon.

use std::collections::BTreeSet;

use s3mem::index::Index;
use s3mem::retrieve::rerank::RerankConfig;
use s3mem::retrieve::{Filter, Method, Query, RetrieveConfig, Retriever};
use s3mem::service::pb;
use s3mem::service::pb::memory_client::MemoryClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{run_json, s3mem};
use crate::dense::{daemon_client, model_side, models_with_minilm};
use crate::grpc::{ask_events, doc_ids, ingest, refused, text};

const QUESTION: &str = "How many fishing boats did the harbour count?";

/// (id, tenant, year, date) of the documents.
const DOCS: [(&str, &str, &str, &str); 4] = [
    ("acme-1", "acme", "2019", "2019-05-01"),
    ("acme-2", "acme", "2021", "2021-03-15T08:00:00Z"),
    ("beta-1", "beta", "2020", "2020-07-04"),
    ("beta-2", "beta", "2023", "2023-11-30T23:00:00+01:00"),
];

/// Sentences about a harbour town, the same shape in every document so that every method
/// finds evidence in each of them.
fn harbour(town: &str, seed: usize) -> String {
    (0..12)
        .map(|i| {
            format!(
                "In the year {}, the harbour of {town} counted {} fishing boats and {} lanterns. ",
                1800 + seed * 20 + i,
                3 + (i + seed) * 7 % 23,
                11 + i * 5 % 17
            )
        })
        .collect()
}

/// Asks [`QUESTION`] of collection `c` through `filter` and returns the answer stream's events.
async fn ask_filtered(
    client: &mut MemoryClient<Channel>,
    filter: &str,
) -> Vec<pb::ask_response::Event> {
    let request = pb::AskRequest {
        collection: "c".into(),
        question: QUESTION.into(),
        budget: 128,
        max_new_tokens: 8,
        filter: Some(s3mem::service::convert::filter_to_pb(
            &filter.parse().unwrap(),
        )),
        ..Default::default()
    };
    ask_events(client, request).await
}

fn document(id: &str, meta: &[(&str, &str)], body: String) -> Vec<pb::IngestRequest> {
    let header = pb::IngestHeader {
        collection: "c".into(),
        id: id.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| pb::MetaEntry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
    };
    vec![
        pb::IngestRequest {
            part: Some(pb::ingest_request::Part::Header(header)),
        },
        text(body.as_bytes()),
    ]
}

fn request(method: pb::Method, filter: Option<&str>, trace: bool) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        collection: "c".into(),
        question: QUESTION.into(),
        budget: 256,
        method: method as i32,
        trace,
        filter: filter.map(|f| s3mem::service::convert::filter_to_pb(&f.parse().unwrap())),
        ..Default::default()
    }
}

fn ids(spans: &[pb::EvidenceSpan]) -> BTreeSet<String> {
    spans.iter().map(|s| s.doc_id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

const DAEMON_METHODS: [pb::Method; 6] = [
    pb::Method::S3,
    pb::Method::Bm25,
    pb::Method::Hybrid,
    pb::Method::Bias,
    pb::Method::Dense,
    pb::Method::Rag,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_scope_every_method_to_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, mut client) = daemon_client(dir.path(), true).await;
    client
        .create_collection(pb::CreateCollectionRequest { name: "c".into() })
        .await
        .unwrap();
    for (i, (id, tenant, year, date)) in DOCS.iter().enumerate() {
        let meta = [("tenant", *tenant), ("year", *year), ("date", *date)];
        ingest(&mut client, document(id, &meta, harbour(id, i)))
            .await
            .unwrap();
    }

    // Unfiltered, the openings come from both tenants: the filter below has work to do.
    let all = client
        .retrieve(request(pb::Method::Bias, None, false))
        .await
        .unwrap()
        .into_inner();
    let tenants: BTreeSet<&str> = all.spans.iter().map(|s| &s.doc_id[..4]).collect();
    assert_eq!(
        tenants,
        BTreeSet::from(["acme", "beta"]),
        "{:?}",
        ids(&all.spans)
    );

    for (filter, want) in [
        ("tenant=acme", set(&["acme-1", "acme-2"])),
        ("tenant in (beta)", set(&["beta-1", "beta-2"])),
        ("year>=2020 and year<2023", set(&["acme-2", "beta-1"])),
        (
            "date<2020-01-01T00:00:00Z or doc=beta-2",
            set(&["acme-1", "beta-2"]),
        ),
        // The date of beta-2 is 22:00 UTC on 2023-11-30.
        ("date>2023-11-30T22:30:00Z", BTreeSet::new()),
    ] {
        for method in DAEMON_METHODS {
            let r = client
                .retrieve(request(method, Some(filter), false))
                .await
                .unwrap_or_else(|e| panic!("{filter} {method:?}: {e}"))
                .into_inner();
            let got = ids(&r.spans);
            assert!(got.is_subset(&want), "{filter} {method:?}: {got:?}");
            assert_eq!(got.is_empty(), want.is_empty(), "{filter} {method:?}");
            assert_eq!(r.context.is_empty(), want.is_empty(), "{filter} {method:?}");
        }
    }

    // Ask: the evidence it answers from is the tenant's.
    let events = ask_filtered(&mut client, "tenant=beta").await;
    let evidence = events.iter().find_map(|e| match e {
        pb::ask_response::Event::Evidence(e) => Some(e.clone()),
        _ => None,
    });
    let evidence = evidence.expect("ask sends its evidence");
    assert!(ids(&evidence.spans).is_subset(&set(&["beta-1", "beta-2"])));
    assert!(!evidence.spans.is_empty());

    // A filter that passes nothing: an empty context, not an error.
    let none = client
        .retrieve(request(pb::Method::Hybrid, Some("tenant=nobody"), true))
        .await
        .unwrap()
        .into_inner();
    assert!(none.spans.is_empty() && none.context.is_empty());
    assert_eq!(none.context_tokens, 0);
    // Asked with such a filter, the reader is not asked to answer from nothing: "not in the
    // evidence", no tokens generated.
    let last = ask_filtered(&mut client, "tenant=nobody").await.pop();
    let Some(pb::ask_response::Event::Done(done)) = last else {
        panic!("no final message");
    };
    assert!(done.not_in_evidence);
    assert_eq!(done.answer, s3mem::answer::NOT_IN_EVIDENCE);
    assert_eq!(done.new_tokens, 0);
    let trace: serde_json::Value = serde_json::from_str(&none.trace_json).unwrap();
    assert_eq!(trace["filter"]["documents"], 0);
    assert_eq!(trace["filter"]["of"], 4);
    // An unknown key passes nothing and the trace says so.
    let unknown = client
        .retrieve(request(pb::Method::Hybrid, Some("region=eu"), true))
        .await
        .unwrap()
        .into_inner();
    assert!(unknown.spans.is_empty() && unknown.context.is_empty());
    let trace: serde_json::Value = serde_json::from_str(&unknown.trace_json).unwrap();
    let note = trace["filter"]["notes"][0].as_str().unwrap();
    assert!(
        note.contains("`region`") && note.contains("no document"),
        "{note}"
    );

    // Values of the wrong type: refused at ingest naming the key, and in a filter.
    refused(
        ingest(
            &mut client,
            document("late", &[("year", "soon")], harbour("Late", 9)),
        )
        .await,
        Code::InvalidArgument,
        "`year`",
    );
    refused(
        client
            .retrieve(request(pb::Method::Bm25, Some("year>=soon"), false))
            .await,
        Code::InvalidArgument,
        "filter",
    );
    refused(
        client
            .retrieve(request(pb::Method::Bm25, Some("tenant>a"), false))
            .await,
        Code::InvalidArgument,
        "`tenant`",
    );
    let bad = pb::RetrieveRequest {
        filter: Some(pb::Filter { condition: None }),
        ..request(pb::Method::Bm25, None, false)
    };
    refused(client.retrieve(bad).await, Code::InvalidArgument, "filter");
    assert_eq!(
        doc_ids(&mut client, "c").await.len(),
        4,
        "the refused document was not written"
    );

    // The CLI's --filter against the daemon, then locally once the daemon has gone.
    let url = format!("http://{}", daemon.local_addr());
    let cli = |extra: &[&str]| {
        let mut cmd = s3mem();
        cmd.args([
            "retrieve",
            "--collection",
            "c",
            "--method",
            "bm25",
            "--json",
        ])
        .args(["--budget", "256", "--filter", "tenant=acme and year>2020"])
        .args(extra)
        .arg(QUESTION)
        .env("S3MEM_MODELS", models_with_minilm());
        let v = run_json(&mut cmd);
        v["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["doc_id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    let remote = tokio::task::block_in_place(|| cli(&["--server", &url]));
    assert_eq!(remote, set(&["acme-2"]));
    daemon.shutdown().await.unwrap();
    let data = dir.path().to_str().unwrap();
    let local = tokio::task::block_in_place(|| cli(&["--data-dir", data]));
    assert_eq!(local, remote);
    let out = s3mem()
        .args(["retrieve", "--collection", "c", "--data-dir", data])
        .args(["--filter", "tenant=acme and", QUESTION])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column 16"), "{err}");

    // Attention re-ranking (not served by the daemon without heads) through the library.
    let (model, saes, embedder) = model_side();
    let config = RetrieveConfig {
        rerank: Some(RerankConfig {
            heads: "4.0,8.1".parse().unwrap(),
            pool_tokens: 256,
            first_stage: 0.0,
        }),
        ..RetrieveConfig::default()
    };
    let retriever = Retriever::new(&model, &saes, config)
        .unwrap()
        .with_embedder(Some(&embedder));
    let index = Index::open_existing(dir.path()).unwrap();
    let filter: Filter = "tenant=acme".parse().unwrap();
    let e = retriever
        .retrieve(
            &index,
            &Query {
                collection: "c".into(),
                docs: vec![],
                question: QUESTION.into(),
                budget: 128,
                method: Method::Rerank,
                trace: false,
                filter: Some(filter),
            },
        )
        .unwrap();
    let got: BTreeSet<String> = e.spans.iter().map(|s| s.doc_id.clone()).collect();
    assert!(
        !got.is_empty() && got.is_subset(&set(&["acme-1", "acme-2"])),
        "{got:?}"
    );
}
