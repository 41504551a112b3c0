//! The defects an outside client found in the daemon (issue 17), each with the test that
//! failed before its fix: real daemon, real SmolLM2, as in `grpc.rs`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use s3mem::index::{Index, IndexConfig};
use s3mem::retrieve::{Method, Query};
use s3mem::service::engine::{CancelOnDrop, Upload};
use s3mem::service::pb::{self, memory_client::MemoryClient};
use s3mem::service::{Engine, Limits, Loaded, ServiceError};
use tonic::Code;

use crate::grpc::{
    channel, connect, header, ingest, model_side, private_binary, refused, retrieve_request,
    serve_binary, start, test_config, text, town_collection, town_text, wait_serving,
};

/// Starts a daemon on `dir`, waits until it serves, and creates collection `c`.
async fn serving_with_c(
    dir: &std::path::Path,
    config: s3mem::service::ServeConfig,
) -> (
    s3mem::service::Daemon,
    tonic::transport::Channel,
    MemoryClient<tonic::transport::Channel>,
) {
    let daemon = start(dir, config, None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch.clone());
    c.create_collection(pb::CreateCollectionRequest { name: "c".into() })
        .await
        .unwrap();
    (daemon, ch, c)
}

/// A question of `n` party emoji: a few bytes each, several tokens each.
fn emoji_question(n: usize) -> String {
    "🎉".repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_question_limit_is_counted_in_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), test_config(), None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch);
    town_collection(&mut c, "c", 3).await;
    // 1 KiB: under the bytes limit (4096), far over 256 tokens.
    let long = emoji_question(256);
    assert!(long.len() < Limits::default().max_question_bytes);
    refused(
        c.retrieve(retrieve_request("c", &long, 64)).await,
        Code::InvalidArgument,
        "max_question_tokens",
    );
    c.retrieve(retrieve_request("c", "How many boats?", 64))
        .await
        .unwrap();
    daemon.shutdown().await.unwrap();
}

/// A retrieval whose caller goes away during the question's forward pass stops at the next
/// stage instead of finishing its work.
#[test]
fn a_cancelled_retrieval_stops_after_the_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    let limits = Limits {
        max_question_tokens: 8192,
        max_question_bytes: 1 << 16,
        ..Limits::default()
    };
    let engine = Engine::new(index, limits);
    let (model, saes) = model_side();
    engine
        .set_loaded(Loaded {
            model,
            saes,
            scan: s3mem::model::ScanConfig::default(),
            embedder: None,
            readers: Vec::new(),
            answer_mode: Default::default(),
            abstain_signal: Default::default(),
            retrieval: Default::default(),
        })
        .unwrap();
    engine.create_collection("c").unwrap();
    let upload = Upload {
        collection: "c".into(),
        id: Some("town".into()),
        meta: vec![],
        text: town_text(3),
    };
    engine
        .ingest(&upload, &CancelOnDrop::default().token())
        .unwrap();
    let query = Query {
        collection: "c".into(),
        docs: vec![],
        question: emoji_question(400),
        budget: 64,
        method: Method::Hybrid,
        trace: false,
        filter: None,
    };
    let guard = CancelOnDrop::default();
    let cancel = guard.token();
    let (started_tx, started_rx) = mpsc::channel();
    let canceller = std::thread::spawn(move || {
        started_rx.recv().unwrap();
        // Well inside the forward pass of a question of 400 emoji (seconds of CPU).
        std::thread::sleep(Duration::from_millis(200));
        drop(guard);
    });
    started_tx.send(()).unwrap();
    let out = engine.retrieve(&query, &cancel);
    canceller.join().unwrap();
    assert!(
        matches!(out, Err(ServiceError::Cancelled)),
        "{:?}",
        out.map(|e| e.context)
    );
}

/// SIGTERM while a question of thousands of tokens runs: the daemon exits within its grace
/// period (plus the time to stop), and the data dir opens clean afterwards.
#[test]
fn grpc_sigterm_during_a_long_question_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = private_binary(dir.path());
    let grace = 1;
    let (mut child, addr) = serve_binary(
        &exe,
        &data,
        &[
            "--shutdown-grace-seconds",
            &grace.to_string(),
            "--max-question-tokens",
            "8192",
            "--max-question-bytes",
            "65536",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ch = connect(&addr).await;
        wait_serving(&ch).await;
        let mut c = MemoryClient::new(ch);
        town_collection(&mut c, "c", 3).await;
        let mut asker = c.clone();
        // Tens of seconds of forward pass on two threads.
        let question = emoji_question(1200);
        tokio::spawn(async move {
            let _ = asker.retrieve(retrieve_request("c", &question, 64)).await;
        });
        loop {
            let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
            if s.queues.iter().any(|q| q.name == "query" && q.running == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let t0 = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let took = t0.elapsed();
    drop(runtime);
    assert!(status.success(), "serve exited with {status}");
    // The bound of the fix, not a measurement: before it, 30 s with a grace of 10 s.
    assert!(
        took < Duration::from_secs(grace + 3),
        "the shutdown took {took:?} with a grace period of {grace} s"
    );
    let index = Index::open(&data, IndexConfig::default()).unwrap();
    assert_eq!(index.verify().unwrap(), 1);
}

/// The evidence of a few questions over collection `c` with every first-stage method, scores
/// included.
async fn evidence_of_c(
    c: &mut MemoryClient<tonic::transport::Channel>,
) -> Vec<pb::RetrieveResponse> {
    let mut out = Vec::new();
    for question in [
        "What does the warranty cover?",
        "How many lanterns in 1803?",
    ] {
        for method in [pb::Method::Bm25, pb::Method::S3, pb::Method::Hybrid] {
            let mut r = retrieve_request("c", question, 128);
            r.method = method as i32;
            let mut e = c.retrieve(r).await.unwrap().into_inner();
            e.timings_ms.clear();
            out.push(e);
        }
    }
    out
}

/// A collection's BM25 and S3 results, scores included, are the same whatever another
/// collection holds, and the same before documents are ingested and deleted in it as after
/// (once compacted): neither statistics leak across collections nor keep deleted documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_collections_leak_nothing_into_each_others_results() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), test_config(), None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch);
    town_collection(&mut c, "c", 6).await;
    let warranty = "The warranty of the harbour covers every lantern of Velmora for two years, \
                    and the boats for one. ";
    ingest(
        &mut c,
        vec![header("c", "terms"), text(warranty.as_bytes())],
    )
    .await
    .unwrap();
    let before = evidence_of_c(&mut c).await;
    assert!(before.iter().all(|e| !e.spans.is_empty()));

    c.create_collection(pb::CreateCollectionRequest {
        name: "other".into(),
    })
    .await
    .unwrap();
    let flood = format!(
        "{} {}",
        "warranty lantern covers ".repeat(150),
        town_text(2)
    );
    ingest(
        &mut c,
        vec![header("other", "flood"), text(flood.as_bytes())],
    )
    .await
    .unwrap();
    assert_eq!(
        evidence_of_c(&mut c).await,
        before,
        "another collection moved c's results"
    );

    for i in 0..4 {
        let id = format!("gone{i}");
        let body = format!("The warranty of boat {i} covers its lanterns. {flood}");
        ingest(&mut c, vec![header("c", &id), text(body.as_bytes())])
            .await
            .unwrap();
        c.delete_document(pb::DeleteDocumentRequest {
            collection: "c".into(),
            id,
        })
        .await
        .unwrap();
    }
    daemon.shutdown().await.unwrap();
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    drop(index.compact().unwrap());
    let daemon = start(dir.path(), test_config(), None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch);
    assert_eq!(
        evidence_of_c(&mut c).await,
        before,
        "deleted documents moved c's results"
    );
    daemon.shutdown().await.unwrap();
}

/// An ingest header with `meta` as its metadata.
fn header_with(collection: &str, id: &str, meta: Vec<(String, String)>) -> pb::IngestRequest {
    pb::IngestRequest {
        part: Some(pb::ingest_request::Part::Header(pb::IngestHeader {
            collection: collection.into(),
            id: id.into(),
            metadata: meta
                .into_iter()
                .map(|(key, value)| pb::MetaEntry { key, value })
                .collect(),
        })),
    }
}

fn list_request(collection: &str, page_size: u32, page_token: &str) -> pb::ListDocumentsRequest {
    pb::ListDocumentsRequest {
        collection: collection.into(),
        page_size,
        page_token: page_token.into(),
    }
}

/// Metadata is held to its limits, and ListDocuments pages its replies so that a collection
/// whose records outgrow one message still lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_limits_and_document_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _, mut c) = serving_with_c(dir.path(), test_config()).await;
    let note = text(b"A short note about the harbour.");
    let entries = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    for (meta, limit) in [
        (entries, "max_metadata_entries"),
        (
            vec![("k".repeat(300), "v".into())],
            "max_metadata_key_bytes",
        ),
        (
            vec![("k".into(), "v".repeat(5000))],
            "max_metadata_value_bytes",
        ),
    ] {
        refused(
            ingest(&mut c, vec![header_with("c", "d", meta), note.clone()]).await,
            Code::InvalidArgument,
            limit,
        );
    }
    daemon.shutdown().await.unwrap();

    // Five documents of 1 MB metadata each: 5 MB of records, over one 4 MiB message.
    let mut config = test_config();
    config.limits.max_metadata_value_bytes = 1 << 20;
    let daemon = start(dir.path(), config, None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("big{i}");
        let meta = vec![("blob".to_string(), "x".repeat(1 << 20))];
        ingest(&mut c, vec![header_with("c", &id, meta), note.clone()])
            .await
            .unwrap();
        ids.push(id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_documents(list_request("c", 0, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.documents.is_empty());
        listed.extend(r.documents.into_iter().map(|d| d.id));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(listed, ids);
    assert!(pages > 1);
    let two = c
        .list_documents(list_request("c", 2, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.documents.len(), 2);
    assert_eq!(two.documents[0].id, "big0");
    let rest = c
        .list_documents(list_request("c", 2, &two.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.documents[0].id, "big2");
    refused(
        c.list_documents(list_request("c", 0, "nonsense")).await,
        Code::InvalidArgument,
        "page_token",
    );
    refused(
        c.list_documents(list_request("c", 5000, "")).await,
        Code::InvalidArgument,
        "page_size",
    );
    daemon.shutdown().await.unwrap();
}

/// Starts an ingest whose stream stays open: `messages` are sent, more may follow through
/// the returned sender; dropping it ends the stream.
async fn open_ingest(
    c: &MemoryClient<tonic::transport::Channel>,
    messages: Vec<pb::IngestRequest>,
) -> (
    tokio::sync::mpsc::Sender<pb::IngestRequest>,
    tokio::task::JoinHandle<Result<pb::IngestResponse, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let mut c = c.clone();
    let call = tokio::spawn(async move {
        c.ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
    });
    (tx, call)
}

/// Returns the ingest queue's state.
async fn ingest_queue(c: &mut MemoryClient<tonic::transport::Channel>) -> pb::QueueState {
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    s.queues.into_iter().find(|q| q.name == "ingest").unwrap()
}

/// Returns the outcome of an ingest call that must end without its stream ending.
async fn ends_at_once(
    call: tokio::task::JoinHandle<Result<pb::IngestResponse, tonic::Status>>,
) -> Result<pb::IngestResponse, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call waited for its stream to end")
        .unwrap()
}

/// An ingest takes its place in the queue before its text arrives, and all open ingests
/// share one buffer limit: over either, RESOURCE_EXHAUSTED at once, while the stream is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingests_are_admitted_before_their_text_and_share_one_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.queues.ingest_workers = 1;
    config.queues.ingest_queue_depth = 2;
    config.limits.max_document_bytes = 1 << 20;
    config.limits.max_ingest_buffer_bytes = 3 << 19;
    let (daemon, _, mut c) = serving_with_c(dir.path(), config).await;
    let body = |n: usize| text(&"harbour ".repeat(n / 8).into_bytes());

    let (a_tx, a) = open_ingest(&c, vec![header("c", "a"), body(900_000)]).await;
    while ingest_queue(&mut c).await.waiting != 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for a's text to arrive on loopback.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 900 kB + 700 kB is over the 1.5 MiB all open ingests may hold.
    let (_b_tx, b) = open_ingest(&c, vec![header("c", "b"), body(700_000)]).await;
    refused(
        ends_at_once(b).await,
        Code::ResourceExhausted,
        "max_ingest_buffer_bytes",
    );

    // One worker and two waiting places: two more open uploads fill the queue.
    let (c_tx, _c) = open_ingest(&c, vec![header("c", "c")]).await;
    let (d_tx, _d) = open_ingest(&c, vec![header("c", "d")]).await;
    while ingest_queue(&mut c).await.waiting != 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_e_tx, e) = open_ingest(&c, vec![header("c", "e")]).await;
    refused(
        ends_at_once(e).await,
        Code::ResourceExhausted,
        "ingest queue is full",
    );
    // Uploads that break off give their places and bytes back.
    a.abort();
    drop((a_tx, c_tx, d_tx));
    loop {
        let q = ingest_queue(&mut c).await;
        if q.waiting == 0 && q.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 700 kB fit again now that a's 900 kB are given back: refused only after buffering,
    // for its last byte, which is not UTF-8 (a scan of it would take minutes).
    let mut bad = "harbour ".repeat(700_000 / 8).into_bytes();
    bad.push(0xff);
    refused(
        ingest(&mut c, vec![header("c", "after"), text(&bad)]).await,
        Code::InvalidArgument,
        "utf-8",
    );
    daemon.shutdown().await.unwrap();
}

/// A CreateCollectionRequest whose name is raw bytes, to send what a client in another
/// language could: a string field that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawNameRequest {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

/// An ingest piece over the message limit is OUT_OF_RANGE naming the limit, and a request
/// that does not decode (a string field that is not UTF-8) is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversized_pieces_and_undecodable_requests_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.limits.max_message_bytes = 64 << 10;
    let (daemon, ch, mut c) = serving_with_c(dir.path(), config).await;
    refused(
        ingest(&mut c, vec![header("c", "big"), text(&[b'x'; 100_000])]).await,
        Code::OutOfRange,
        "max_message_bytes",
    );

    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/s3mem.v1.Memory/CreateCollection");
    let codec = tonic_prost::ProstCodec::<RawNameRequest, pb::CreateCollectionResponse>::default();
    let r = grpc
        .unary(
            tonic::Request::new(RawNameRequest {
                name: vec![b'c', 0xff, 0xfe],
            }),
            path,
            codec,
        )
        .await;
    let s = r.expect_err("a name that is not UTF-8 is refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("UTF-8"), "{}", s.message());
    daemon.shutdown().await.unwrap();
}

/// Names and ids with invisible or direction-changing characters, or whitespace at an end,
/// are refused everywhere, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_names_refuse_invisible_characters_and_outer_whitespace() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _, mut c) = serving_with_c(dir.path(), test_config()).await;
    for name in [
        " c1 ",
        "   ",
        "c\u{202E}1",
        "\u{FEFF}c1",
        "c\u{200B}1",
        "c\u{2066}1",
    ] {
        refused(
            c.create_collection(pb::CreateCollectionRequest { name: name.into() })
                .await,
            Code::InvalidArgument,
            "name",
        );
    }
    refused(
        ingest(
            &mut c,
            vec![header("c", "\u{202E}fdp.txt"), text(b"A note.")],
        )
        .await,
        Code::InvalidArgument,
        "header.id",
    );
    refused(
        c.retrieve(retrieve_request("c ", "Why?", 64)).await,
        Code::InvalidArgument,
        "collection",
    );
    daemon.shutdown().await.unwrap();
}

/// `serve` checks its token file and listening address before it creates the data dir.
#[test]
fn serve_checks_its_settings_before_creating_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let exe = private_binary(dir.path());
    let data = dir.path().join("data");
    let blank = dir.path().join("token");
    std::fs::write(&blank, "\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, why) in [
        (
            vec!["--auth-token-file", blank.to_str().unwrap()],
            "holds no token",
        ),
        (vec!["--listen", taken.as_str()], "cannot listen"),
    ] {
        let out = std::process::Command::new(&exe)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
        assert!(!data.exists(), "{args:?} created the data dir");
    }
}
