//! Snapshots end to end with the real SmolLM2: `s3mem snapshot create --server` while an
//! ingest stream is open, `snapshot restore`, `s3mem verify`, and a daemon on the restored
//! data dir giving the same documents and evidence; damaged snapshots refused by name, leaving
//! nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use s3mem::index::snapshot::{Manifest, MANIFEST_NAME};
use s3mem::service::pb::{self, memory_client::MemoryClient};

use crate::grpc::{
    channel, evidence_view, header, ingest, private_binary, retrieve_request, start, test_config,
    text, town_text, wait_serving,
};

fn run(exe: &Path, args: &[&str]) -> Output {
    std::process::Command::new(exe)
        .env("S3MEM_THREADS", "2")
        .args(args)
        .output()
        .unwrap()
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The files of a tar archive (folders left out): names and contents, in order.
fn entries(archive: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    a.entries()
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.header().entry_type() != tar::EntryType::Directory)
        .map(|mut e| {
            let name = e.path().unwrap().to_str().unwrap().to_string();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Writes a tar archive of `entries`.
fn write_archive(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// Restores `snapshot` into a fresh folder with the binary and asserts the refusal names
/// `problem` and leaves no folder (final or temporary) behind.
fn refused(exe: &Path, snapshot: &Path, problem: &str) {
    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("restored");
    let out = run(
        exe,
        &[
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged snapshot was restored");
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains(problem), "expected {problem:?} in {err}");
    let left: Vec<PathBuf> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "a refused restore left {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_during_an_ingest_restores_the_same_documents_and_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = private_binary(dir.path());
    let daemon = start(&data, test_config(), None).await;
    let ch = channel(&daemon).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch.clone());
    for name in ["c", "d"] {
        c.create_collection(pb::CreateCollectionRequest { name: name.into() })
            .await
            .unwrap();
    }
    ingest(
        &mut c,
        vec![header("c", "town"), text(town_text(6).as_bytes())],
    )
    .await
    .unwrap();
    let other = "The lighthouse keeper of Orsk logged 41 storms in one winter. ";
    ingest(&mut c, vec![header("d", "orsk"), text(other.as_bytes())])
        .await
        .unwrap();
    let docs = |mut c: MemoryClient<_>| async move {
        let mut all = Vec::new();
        for collection in ["c", "d"] {
            all.push(
                c.list_documents(pb::ListDocumentsRequest {
                    collection: collection.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner(),
            );
        }
        all
    };
    let questions = [
        ("c", "How many lanterns did Velmora have in 1803?"),
        ("d", "How many storms did the keeper log?"),
    ];
    let mut evidence = Vec::new();
    for (collection, q) in questions {
        let r = c
            .retrieve(retrieve_request(collection, q, 64))
            .await
            .unwrap();
        evidence.push(evidence_view(&r.into_inner()));
    }
    let listed = docs(c.clone()).await;

    // An ingest stream open across the snapshot: its document arrives after the copy.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut streaming = c.clone();
    let late = tokio::spawn(async move {
        streaming
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    tx.send(header("c", "late")).await.unwrap();
    tx.send(text(town_text(3).as_bytes())).await.unwrap();

    let archive = dir.path().join("snap.tar");
    let url = format!("http://{}", daemon.local_addr());
    let create = {
        let (exe, archive) = (exe.clone(), archive.clone());
        tokio::task::spawn_blocking(move || {
            run(
                &exe,
                &[
                    "snapshot",
                    "create",
                    "--server",
                    &url,
                    archive.to_str().unwrap(),
                ],
            )
        })
        .await
        .unwrap()
    };
    succeeded(&create);
    tx.send(text(b"The late page ends here.")).await.unwrap();
    drop(tx);
    let late = late.await.unwrap().unwrap();
    assert_eq!(late.id, "late");
    assert_eq!(doc_count(&docs(c.clone()).await), 3);

    // Restore, verify, and serve the copy: what the daemon held at the snapshot.
    let restored = dir.path().join("restored");
    succeeded(&run(
        &exe,
        &[
            "snapshot",
            "restore",
            archive.to_str().unwrap(),
            restored.to_str().unwrap(),
        ],
    ));
    // Bit for bit: every restored file is the archive's (before anything opens it: sled
    // rewrites its own snapshot file on open).
    let files = entries(&archive);
    let manifest: Manifest = serde_json::from_slice(&files.last().expect("a manifest").1).unwrap();
    assert_eq!(files.last().unwrap().0, MANIFEST_NAME);
    assert_eq!(manifest.files.len() + 1, files.len());
    for (name, bytes) in &files[..files.len() - 1] {
        assert_eq!(
            &std::fs::read(restored.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    // Folders too, an empty one included (no embedding model: no vectors).
    for folder in &manifest.folders {
        assert!(restored.join(folder).is_dir(), "{folder}");
    }
    assert!(manifest.folders.contains(&"vectors".to_string()));
    let verified = succeeded(&run(
        &exe,
        &["verify", "--data-dir", restored.to_str().unwrap()],
    ));
    assert!(verified.starts_with("2 documents verified"), "{verified}");
    drop(c);
    drop(ch);
    daemon.shutdown().await.unwrap();

    let copy = start(&restored, test_config(), None).await;
    let ch = channel(&copy).await;
    wait_serving(&ch).await;
    let mut c = MemoryClient::new(ch.clone());
    assert_eq!(docs(c.clone()).await, listed);
    for ((collection, q), before) in questions.iter().zip(&evidence) {
        let r = c
            .retrieve(retrieve_request(collection, q, 64))
            .await
            .unwrap();
        assert_eq!(&evidence_view(&r.into_inner()), before, "{q}");
    }
    drop(c);
    drop(ch);
    copy.shutdown().await.unwrap();

    damaged_snapshots_are_refused(&exe, &archive, dir.path());
    // A restore never writes into a folder that holds something.
    let out = run(
        &exe,
        &[
            "snapshot",
            "restore",
            archive.to_str().unwrap(),
            restored.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
}

fn doc_count(pages: &[pb::ListDocumentsResponse]) -> usize {
    pages.iter().map(|p| p.documents.len()).sum()
}

/// Each kind of damage: a flipped byte, a truncated archive, a missing file, unknown format
/// versions, an entry after the manifest.
fn damaged_snapshots_are_refused(exe: &Path, archive: &Path, scratch: &Path) {
    let files = entries(archive);
    let bad = scratch.join("bad.tar");
    let raw = std::fs::read(archive).unwrap();

    // A flipped byte inside a file's contents (found by its position in the raw archive).
    let (name, data) = files
        .iter()
        .find(|(n, d)| n.starts_with("packs/") && d.len() > 100)
        .expect("a pack");
    let at = raw
        .windows(64)
        .position(|w| w == &data[..64])
        .expect("the pack's bytes in the archive")
        + 50;
    let mut flipped = raw.clone();
    flipped[at] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    refused(
        exe,
        &bad,
        &format!("`{name}` does not match its sha256 in the manifest"),
    );

    // Truncated: cut in the middle, and cut just before the manifest.
    std::fs::write(&bad, &raw[..raw.len() / 2]).unwrap();
    refused(exe, &bad, "truncated");
    let mut without_manifest = files.clone();
    without_manifest.pop();
    write_archive(&bad, &without_manifest);
    refused(exe, &bad, "no MANIFEST.json");

    // A file the manifest lists is missing.
    let mut missing = files.clone();
    let gone = missing.remove(0).0;
    write_archive(&bad, &missing);
    refused(
        exe,
        &bad,
        &format!("`{gone}` is listed in the manifest but missing from the archive"),
    );

    // Unknown format versions.
    for (field, problem) in [
        ("snapshot_format", "unknown snapshot format version 99"),
        ("store_format", "unknown store format version 99"),
    ] {
        let mut edited = files.clone();
        let last = edited.last_mut().unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&last.1).unwrap();
        manifest[field] = 99.into();
        last.1 = serde_json::to_vec(&manifest).unwrap();
        write_archive(&bad, &edited);
        refused(exe, &bad, problem);
    }

    // Something appended after the manifest.
    let mut appended = files.clone();
    appended.push(("packs/extra.pack".into(), vec![1, 2, 3]));
    write_archive(&bad, &appended);
    refused(exe, &bad, "follows the manifest");
}
