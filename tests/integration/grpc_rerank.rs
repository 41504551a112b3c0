//! Attention re-ranking through the daemon with the real SmolLM2: `s3mem serve` started with
//! its retrieval heads answers Retrieve and Ask with METHOD_RERANK (and, as its default
//! method, calls that name none) with the spans local `retrieve --method rerank` finds with
//! the same settings on the same data dir; without heads the method is refused naming the
//! serve flag to set; a head the model lacks, or a pool over its window, stops `serve` at start.

use std::path::{Path, PathBuf};
use std::process::Command;

use s3mem::index::Index;
use s3mem::retrieve::Method;
use s3mem::service::pb::{self, memory_client::MemoryClient};
use s3mem::service::{Loaded, Loader, Retrieval, ServeConfig};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{real_model_path, run_json};
use crate::grpc::{
    ask_events, channel, header, ingest, private_binary, refused, retrieve_request, start,
    test_config, text, town_text, wait_serving, Serve,
};
use crate::retrieve::{licence, QUESTION};

/// SmolLM2's retrieval heads (docs/retrieval.md) and the first-stage weight chosen with them.
const HEADS: &str = "18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6";
const FIRST_STAGE: &str = "1";
/// A smaller pool than the default keeps the forward pass short on a test machine.
const POOL: &str = "1024";
const BUDGET: u32 = 192;

/// The `s3mem` binary under test, a private copy: a build sharing the target dir may replace
/// it mid-test.
struct Binary {
    _dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Binary {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let exe = private_binary(dir.path());
        Self { _dir: dir, exe }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.env("S3MEM_THREADS", "2");
        cmd
    }

    /// Starts `serve` on `data` with SmolLM2 and `args`, `vars`.
    fn serve(&self, data: &Path, args: &[&str], vars: &[(&str, &str)]) -> Serve {
        Serve::start(&self.exe, data, args, vars)
    }
}

/// A data dir holding the GPL's termination section and the Apache licence's opening.
fn licence_data(bin: &Binary, dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for (id, text) in [
        ("gpl", licence("GPL-3", 19_000..26_000)),
        ("apache", licence("Apache-2.0", 0..4_000)),
    ] {
        let path = dir.join(format!("{id}.txt"));
        std::fs::write(&path, text).unwrap();
        run_json(
            bin.command()
                .args(["ingest", "--collection", "lic", "--id", id, "--json"])
                .arg("--data-dir")
                .arg(&data)
                .arg("--model")
                .arg(real_model_path())
                .arg(&path),
        );
    }
    data
}

/// `retrieve --method rerank` as JSON, without its timings (they change from run to run).
fn retrieve_json(bin: &Binary, place: &[&str], extra: &[&str]) -> Value {
    let budget = BUDGET.to_string();
    let mut cmd = bin.command();
    cmd.args(["retrieve", "--collection", "lic", "--method", "rerank"])
        .args(["--budget", &budget, "--json"])
        .args(place)
        .args(extra)
        .arg("--model")
        .arg(real_model_path())
        .arg(QUESTION);
    let mut v = run_json(&mut cmd);
    v.as_object_mut().unwrap().remove("timings_ms");
    v
}

/// What identifies a span of evidence, from a reply or the CLI's JSON (the score as the f32
/// both were made from).
#[derive(Debug, PartialEq)]
struct SpanView {
    doc_id: String,
    chars: (u64, u64),
    tokens: (u64, u64),
    source: String,
    score: f32,
    text: String,
}

fn spans_of_reply(spans: &[pb::EvidenceSpan]) -> Vec<SpanView> {
    spans
        .iter()
        .map(|s| SpanView {
            doc_id: s.doc_id.clone(),
            chars: (s.char_start, s.char_end),
            tokens: (s.token_start, s.token_end),
            source: s.source.clone(),
            score: s.score,
            text: s.text.clone(),
        })
        .collect()
}

fn spans_of_json(v: &Value) -> Vec<SpanView> {
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap();
    let text = |s: &Value, k: &str| s[k].as_str().unwrap().to_string();
    v["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| SpanView {
            doc_id: text(s, "doc_id"),
            chars: (n(s, "char_start"), n(s, "char_end")),
            tokens: (n(s, "token_start"), n(s, "token_end")),
            source: text(s, "source"),
            score: s["score"].as_f64().unwrap() as f32,
            text: text(s, "text"),
        })
        .collect()
}

/// Runs a command that must fail without a panic; returns its stderr.
fn refusal(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn rerank_request(method: pb::Method) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        method: method as i32,
        ..retrieve_request("lic", QUESTION, BUDGET)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reranks_with_its_heads_as_local_retrieve_does() {
    let bin = Binary::new();
    let dir = tempfile::tempdir().unwrap();
    let data = licence_data(&bin, dir.path());
    // The heads by flag, the first stage's weight by variable, the pool by the config file.
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, format!("[rerank]\npool_tokens = {POOL}\n")).unwrap();
    let serve = bin.serve(
        &data,
        &[
            "--heads",
            HEADS,
            "--default-method",
            "rerank",
            "--config",
            file.to_str().unwrap(),
        ],
        &[("S3MEM_RERANK_FIRST_STAGE", FIRST_STAGE)],
    );
    let url = format!("http://{}", serve.addr());
    let ch = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_serving(&ch).await;
    assert!(
        serve
            .stderr()
            .contains("re-ranking with heads 7.7,14.3,15.6,17.3,17.4,18.6,18.7,23.2"),
        "{}",
        serve.stderr()
    );
    let mut client = MemoryClient::new(ch);
    let reranked = client
        .retrieve(rerank_request(pb::Method::Rerank))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reranked.method, "rerank");
    assert!(!reranked.spans.is_empty());
    assert!(reranked.context_tokens <= BUDGET);
    assert!(
        reranked
            .timings_ms
            .get("rerank_forward")
            .is_some_and(|t| *t > 0.0),
        "{:?}",
        reranked.timings_ms
    );
    // The daemon's default method is rerank: a call that names none gets the same evidence.
    let unnamed = client
        .retrieve(rerank_request(pb::Method::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unnamed.method, "rerank");
    assert_eq!(
        spans_of_reply(&unnamed.spans),
        spans_of_reply(&reranked.spans)
    );
    // Ask reads the same evidence.
    let events = ask_events(
        &mut client,
        pb::AskRequest {
            collection: "lic".into(),
            question: QUESTION.into(),
            budget: BUDGET,
            method: pb::Method::Rerank as i32,
            max_new_tokens: 4,
            ..Default::default()
        },
    )
    .await;
    let Some(pb::ask_response::Event::Evidence(asked)) = events.first() else {
        panic!("the first message is not the evidence: {events:?}");
    };
    assert_eq!(
        spans_of_reply(&asked.spans),
        spans_of_reply(&reranked.spans)
    );
    assert!(matches!(
        events.last(),
        Some(pb::ask_response::Event::Done(_))
    ));
    // The CLI as the daemon's client sends the method; its flags stay local.
    let remote = retrieve_json(&bin, &["--server", &url], &[]);
    assert_eq!(spans_of_json(&remote), spans_of_reply(&reranked.spans));
    let err = refusal(
        bin.command()
            .args(["retrieve", "--collection", "lic", "--method", "rerank"])
            .args(["--heads", "8.1", "--server", &url, QUESTION]),
    );
    assert!(
        err.contains("local data dir") && err.contains("s3mem serve"),
        "{err}"
    );
    let (status, stderr) = serve.stop();
    assert!(status.success(), "serve failed: {stderr}");

    // The same settings on the same data dir, locally.
    let local = retrieve_json(
        &bin,
        &["--data-dir", data.to_str().unwrap()],
        &[
            "--heads",
            HEADS,
            "--rerank-first-stage",
            FIRST_STAGE,
            "--pool-tokens",
            POOL,
        ],
    );
    assert_eq!(local, remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heads_rerank_is_refused_naming_the_serve_flag() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), test_config(), None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut client = MemoryClient::new(ch);
    client
        .create_collection(pb::CreateCollectionRequest { name: "lic".into() })
        .await
        .unwrap();
    let doc = town_text(2);
    ingest(
        &mut client,
        vec![header("lic", "town"), text(doc.as_bytes())],
    )
    .await
    .unwrap();
    let r = client.retrieve(rerank_request(pb::Method::Rerank)).await;
    refused(r, Code::FailedPrecondition, "--heads");
    let r = client
        .ask(pb::AskRequest {
            collection: "lic".into(),
            question: QUESTION.into(),
            method: pb::Method::Rerank as i32,
            ..Default::default()
        })
        .await;
    refused(r, Code::FailedPrecondition, "--heads");
    // Other methods are served as before.
    let r = client.retrieve(rerank_request(pb::Method::Bm25)).await;
    assert_eq!(r.unwrap().into_inner().method, "bm25");
    // The CLI client shows the daemon's refusal.
    let err = refusal(
        crate::common::s3mem()
            .args(["retrieve", "--collection", "lic", "--method", "rerank"])
            .args(["--server", &format!("http://{}", daemon.local_addr())])
            .arg(QUESTION),
    );
    assert!(
        err.contains("--heads") && err.contains("FailedPrecondition"),
        "{err}"
    );
    daemon.shutdown().await.unwrap();
    // A default method the daemon cannot run is refused before it starts.
    let config = ServeConfig {
        default_method: Method::Rerank,
        ..test_config()
    };
    let index = Index::open(dir.path(), Default::default()).unwrap();
    let err = s3mem::service::start(config, index, crate::grpc::loader(None))
        .await
        .err()
        .expect("rerank as the default without heads is refused");
    assert!(err.to_string().contains("default_method"), "{err}");
    // One that needs a model the daemon did not load stops it once the models are in.
    let (model, saes) = crate::grpc::model_side();
    let loader: Loader = Box::new(move || {
        Ok(Loaded {
            model,
            saes,
            scan: Default::default(),
            embedder: None,
            readers: Vec::new(),
            answer_mode: Default::default(),
            abstain_signal: Default::default(),
            retrieval: Retrieval {
                default_method: Method::Dense,
                rerank: None,
            },
        })
    });
    let index = Index::open(dir.path(), Default::default()).unwrap();
    let daemon = s3mem::service::start(test_config(), index, loader)
        .await
        .unwrap();
    let err = daemon
        .wait()
        .await
        .expect_err("dense without MiniLM is refused");
    assert!(
        err.to_string().contains("default_method") && err.to_string().contains("minilm"),
        "{err}"
    );
}

#[test]
fn a_head_the_model_lacks_or_a_pool_over_its_window_stops_serve() {
    let bin = Binary::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases: [(&[&str], &[&str]); 2] = [
        (&["--heads", "8.1,99.0"], &["heads", "99.0"]),
        (
            &["--heads", "8.1", "--pool-tokens", "100000"],
            &["pool_tokens", "window"],
        ),
    ];
    for (args, needles) in cases {
        let (status, stderr) = bin.serve(&data, args, &[]).wait();
        assert!(!status.success(), "{args:?}: serve kept running");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A head set that does not parse is refused before the data dir is opened.
    let err = refusal(
        bin.command()
            .args(["serve", "--print-config", "--heads", "8"]),
    );
    assert!(err.contains("layer.head"), "{err}");
}
