//! The dense methods end to end with the real SmolLM2 and the real all-MiniLM-L6-v2: passage
//! vectors made at ingest and by the backfill of documents stored without them, deleted with
//! their document, checked by `index verify`; `dense` and `rag` through the CLI and the daemon,
//! and refused, by name, without the embedding model.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use s3mem::embed::Embedder;
use s3mem::index::{Index, IndexConfig};
use s3mem::model::{fetch, Model, ScanConfig, WeightFormat};
use s3mem::sae::{SaeExpectation, SaeSet};
use s3mem::service::pb::memory_client::MemoryClient;
use s3mem::service::pb::{self};
use s3mem::service::{Loaded, ServeConfig};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{real_model_path, run_json, s3mem};

/// The sentence a paraphrased question must find: it shares no content word with the question.
const LIGHTHOUSE: &str =
    "The harbour master keeps the lighthouse lamp burning through every winter gale.";
const QUESTION: &str = "Who tends the coastal beacon during storms?";

/// Returns the verified MiniLM folder's models dir, fetched through `model fetch`'s own code
/// on a machine that lacks it.
pub(crate) fn models_with_minilm() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let models = fetch::models_dir(None);
        fetch::resolve_folder("minilm", &models, true).expect("minilm can be fetched");
        models
    })
}

/// A document of filler sentences about a town with the lighthouse sentence in the middle.
fn harbour_text() -> String {
    let mut s = String::new();
    for i in 0..40 {
        if i == 20 {
            s.push_str(LIGHTHOUSE);
            s.push(' ');
        }
        s.push_str(&format!(
            "Market day number {i} brought {} carts of apples and cheese to the square. ",
            i * 3 + 2
        ));
    }
    s
}

fn data_dir_args(dir: &Path) -> [&str; 2] {
    ["--data-dir", dir.to_str().unwrap()]
}

fn retrieve(dir: &Path, method: &str, embedder: &str) -> std::process::Output {
    s3mem()
        .args(["retrieve", "--collection", "c", "--method", method])
        .args(data_dir_args(dir))
        .args(["--embedder", embedder, "--budget", "64", "--json", QUESTION])
        .env("S3MEM_MODELS", models_with_minilm())
        .output()
        .unwrap()
}

fn first_span_text(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["spans"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn vector_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("vectors"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "vec")
        })
        .count()
}

#[test]
fn dense_and_rag_through_the_cli_with_backfill_and_delete() {
    let models = models_with_minilm();
    let dir = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let harbour = docs.path().join("harbour.txt");
    std::fs::write(&harbour, harbour_text()).unwrap();
    let other = docs.path().join("other.txt");
    std::fs::write(&other, "Bread is baked before dawn. ".repeat(30)).unwrap();
    // Stored without vectors, as a store made before the dense methods is.
    for (id, path) in [("harbour", &harbour), ("other", &other)] {
        run_json(
            s3mem()
                .args(["ingest", "--collection", "c", "--id", id, "--json"])
                .args(data_dir_args(dir.path()))
                .args(["--embedder", "none", path.to_str().unwrap()])
                .env("S3MEM_MODELS", models),
        );
    }
    assert_eq!(vector_files(dir.path()), 0);

    // Without the embedding model, dense is refused by name.
    let out = retrieve(dir.path(), "dense", "none");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model fetch minilm"), "{err}");

    // With it, the stored documents are embedded first (the migration), then dense finds the
    // paraphrase that shares no content word with the question.
    let out = retrieve(dir.path(), "dense", "minilm");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("embedded the passages of 2 stored documents"),
        "{err}"
    );
    assert_eq!(vector_files(dir.path()), 2);
    assert!(first_span_text(&out).contains("lighthouse"));
    // Embedded once: the next open has nothing to do.
    let out = retrieve(dir.path(), "rag", "minilm");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("embedded the passages"));
    let rag: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rag["method"], "rag");
    assert!(rag["context_tokens"].as_u64().unwrap() <= 64);

    // A document ingested with the model gets its vectors at ingest; deleting removes them.
    run_json(
        s3mem()
            .args(["ingest", "--collection", "c", "--id", "again", "--json"])
            .args(data_dir_args(dir.path()))
            .arg(other.to_str().unwrap())
            .env("S3MEM_MODELS", models),
    );
    assert_eq!(vector_files(dir.path()), 3);
    let status = s3mem()
        .args(["docs", "delete", "--collection", "c", "other", "again"])
        .args(data_dir_args(dir.path()))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(vector_files(dir.path()), 1);
    let index = Index::open_existing(dir.path()).unwrap();
    assert_eq!(index.verify().unwrap(), 1);
}

/// The real model, default SAE set and MiniLM, loaded once.
pub(crate) fn model_side() -> (Arc<Model>, Arc<SaeSet>, Arc<Embedder>) {
    static M: OnceLock<(Arc<Model>, Arc<SaeSet>, Arc<Embedder>)> = OnceLock::new();
    M.get_or_init(|| {
        let path = real_model_path();
        let model = Model::load(&path, WeightFormat::F32, &candle_core::Device::Cpu).unwrap();
        let dir = s3mem::sae::defaults::default_set_dir(&model, path.parent().unwrap())
            .unwrap()
            .expect("SmolLM2 has a default SAE set");
        let expect = SaeExpectation::new(model.fingerprint().unwrap(), model.config().head_dim);
        let saes = SaeSet::load(&dir, &expect).unwrap();
        let minilm = fetch::resolve_folder("minilm", models_with_minilm(), false).unwrap();
        let embedder = Embedder::load(&minilm).unwrap();
        (Arc::new(model), Arc::new(saes), Arc::new(embedder))
    })
    .clone()
}

pub(crate) async fn daemon_client(
    dir: &Path,
    with_embedder: bool,
) -> (s3mem::service::Daemon, MemoryClient<Channel>) {
    let (model, saes, embedder) = model_side();
    let loader: s3mem::service::Loader = Box::new(move || {
        Ok(Loaded {
            model,
            saes,
            scan: ScanConfig::default(),
            embedder: with_embedder.then_some(embedder),
            readers: Vec::new(),
            answer_mode: Default::default(),
            abstain_signal: Default::default(),
            retrieval: Default::default(),
        })
    });
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_seconds: 5,
        ..ServeConfig::default()
    };
    let index = Index::open(dir, IndexConfig::default()).unwrap();
    let daemon = s3mem::service::start(config, index, loader).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = MemoryClient::new(ch);
    // Calls before the model has loaded are refused (UNAVAILABLE): wait for it.
    loop {
        let r = client
            .list_collections(pb::ListCollectionsRequest::default())
            .await;
        let ready = client
            .retrieve(retrieve_request(pb::Method::Bm25))
            .await
            .map_or_else(|s| s.code() != Code::Unavailable, |_| true);
        if r.is_ok() && ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (daemon, client)
}

fn retrieve_request(method: pb::Method) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        collection: "c".into(),
        question: QUESTION.into(),
        budget: 64,
        method: method as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_and_rag_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (daemon, mut client) = daemon_client(dir.path(), true).await;
        client
            .create_collection(pb::CreateCollectionRequest { name: "c".into() })
            .await
            .unwrap();
        let pieces = vec![
            pb::IngestRequest {
                part: Some(pb::ingest_request::Part::Header(pb::IngestHeader {
                    collection: "c".into(),
                    id: "harbour".into(),
                    metadata: Vec::new(),
                })),
            },
            pb::IngestRequest {
                part: Some(pb::ingest_request::Part::Text(harbour_text().into_bytes())),
            },
        ];
        client.ingest(tokio_stream::iter(pieces)).await.unwrap();
        let dense = client
            .retrieve(retrieve_request(pb::Method::Dense))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dense.method, "dense");
        assert!(dense.spans[0].text.contains("lighthouse"), "{dense:?}");
        assert_eq!(dense.spans[0].source, "dense");
        let rag = client
            .retrieve(retrieve_request(pb::Method::Rag))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rag.method, "rag");
        assert!(rag.context_tokens <= 64 && !rag.spans.is_empty());
        daemon.shutdown().await.unwrap();
    }
    // The same data dir served without the embedding model: dense is a failed precondition
    // that names the fix, and BM25 still works.
    let (daemon, mut client) = daemon_client(dir.path(), false).await;
    let e = client
        .retrieve(retrieve_request(pb::Method::Dense))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("model fetch minilm"),
        "{}",
        e.message()
    );
    client
        .retrieve(retrieve_request(pb::Method::Bm25))
        .await
        .unwrap();
    daemon.shutdown().await.unwrap();
}
