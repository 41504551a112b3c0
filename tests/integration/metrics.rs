//! Prometheus metrics end to end: the daemon with the real SmolLM2 and `metrics_listen`, an
//! ingest, questions and a refused call, `/metrics` scraped twice over HTTP: the text parses
//! and the counters moved.

use std::collections::BTreeMap;

use s3mem::service::pb::{self, memory_client::MemoryClient};
use s3mem::service::ServeConfig;
use tonic::Code;

use crate::grpc::{
    channel, header, ingest, refused, retrieve_request, start, test_config, text, town_text,
    wait_serving,
};

/// Samples of a scrape by their series (`name{labels}` as written), each line checked
/// against the text format: comments are `# HELP` or `# TYPE`, a sample is a metric name, an
/// optional label set and a number.
fn parse(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            let name = words.next().unwrap();
            if kind == "TYPE" {
                let t = words.next().unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
                typed.insert(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
            .unwrap_or(name);
        assert!(typed.contains(base), "{name} has no TYPE line");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let mut response = ureq::get(&format!("http://{addr}/metrics")).call().unwrap();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    parse(&response.body_mut().read_to_string().unwrap())
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    };
    let daemon = start(dir.path(), config, None).await;
    let addr = daemon.metrics_addr().expect("metrics are on");
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch);
    c.create_collection(pb::CreateCollectionRequest { name: "c".into() })
        .await
        .unwrap();
    let body = town_text(8);
    let first = ingest(&mut c, vec![header("c", "one"), text(body.as_bytes())])
        .await
        .unwrap();
    let question = "How many boats did Velmora count?";
    c.retrieve(retrieve_request("c", question, 128))
        .await
        .unwrap();
    let before = tokio::task::block_in_place(|| scrape(addr));

    let retrieve_ok = r#"s3mem_grpc_calls_total{code="OK",rpc="s3mem.v1.Memory/Retrieve"}"#;
    assert_eq!(get(&before, retrieve_ok), 1.0, "{before:#?}");
    assert_eq!(
        get(&before, "s3mem_ingest_tokens_total"),
        first.tokens as f64
    );
    assert_eq!(get(&before, "s3mem_ingest_documents_total"), 1.0);
    assert!(get(&before, "s3mem_ingest_tokens_per_second") > 0.0);
    assert_eq!(
        get(&before, r#"s3mem_collection_documents{collection="c"}"#),
        1.0
    );
    assert_eq!(
        get(&before, r#"s3mem_collection_tokens{collection="c"}"#),
        first.tokens as f64
    );
    assert_eq!(get(&before, r#"s3mem_queue_depth{queue="query"}"#), 32.0);
    assert_eq!(get(&before, "s3mem_model_loaded"), 1.0);
    assert!(get(&before, "s3mem_index_disk_bytes") > 0.0);
    assert_eq!(
        before.get(r#"s3mem_queue_refusals_total{queue="ingest"}"#),
        Some(&0.0)
    );

    // More work: another ingest, two questions, an ask streamed to its end, a refused call.
    ingest(&mut c, vec![header("c", "two"), text(body.as_bytes())])
        .await
        .unwrap();
    for _ in 0..2 {
        c.retrieve(retrieve_request("c", question, 128))
            .await
            .unwrap();
    }
    let mut stream = c
        .ask(pb::AskRequest {
            collection: "c".into(),
            question: question.into(),
            budget: 64,
            max_new_tokens: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    refused(
        c.retrieve(retrieve_request("nowhere", question, 128)).await,
        Code::NotFound,
        "nowhere",
    );
    let after = tokio::task::block_in_place(|| scrape(addr));
    assert_eq!(get(&after, retrieve_ok), 3.0);
    assert_eq!(
        get(
            &after,
            r#"s3mem_grpc_calls_total{code="NotFound",rpc="s3mem.v1.Memory/Retrieve"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            r#"s3mem_grpc_calls_total{code="OK",rpc="s3mem.v1.Memory/Ask"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            r#"s3mem_grpc_call_duration_seconds_count{rpc="s3mem.v1.Memory/Retrieve"}"#
        ),
        4.0
    );
    assert!(
        get(
            &after,
            r#"s3mem_grpc_call_duration_seconds_sum{rpc="s3mem.v1.Memory/Ingest"}"#
        ) > get(
            &before,
            r#"s3mem_grpc_call_duration_seconds_sum{rpc="s3mem.v1.Memory/Ingest"}"#
        )
    );
    assert_eq!(get(&after, "s3mem_ingest_documents_total"), 2.0);
    assert_eq!(
        get(&after, r#"s3mem_collection_documents{collection="c"}"#),
        2.0
    );
    assert!(
        get(&after, "s3mem_ingest_scan_seconds_total")
            > get(&before, "s3mem_ingest_scan_seconds_total")
    );
    daemon.shutdown().await.unwrap();
}
