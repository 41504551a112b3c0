//! `s3mem ingest|docs|collections|stats|compact`: wiring of the index layer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use walkdir::WalkDir;

use super::args::DataDirArgs;
use super::command_line::{CollectionsCommand, DocsCommand, IngestArgs, StatsArgs};
use super::load::{embed_missing, load, load_embedder, load_sae_set};
use crate::index::{check_document_fields, Index, IndexConfig, IndexError, NewDocument};
use crate::ingest::{self, Encoder};
use crate::text::document_text;

fn open(data: &DataDirArgs, config: IndexConfig) -> Result<Index> {
    Ok(Index::open(data.dir()?, config)?)
}

/// Returns the files a path stands for: itself, or a folder's .txt and .md files, sorted by
/// name and walked recursively. Symbolic links are followed; a link back to a folder already
/// being walked (a loop) is skipped with a warning, so the walk ends and reads each file once.
fn expand(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path == Path::new("-") || !path.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let walk = WalkDir::new(path)
        .min_depth(1)
        .follow_links(true)
        .sort_by_file_name();
    for entry in walk {
        let (file, is_dir) = match entry {
            Ok(e) => (e.path().to_path_buf(), e.file_type().is_dir()),
            Err(e) if e.loop_ancestor().is_some() => {
                let (link, target) = (e.path(), e.loop_ancestor());
                eprintln!(
                    "warning: skipping {}: a symbolic link loop back to {}",
                    link.map_or_else(|| path.display().to_string(), |p| p.display().to_string()),
                    target.map_or_else(String::new, |p| p.display().to_string()),
                );
                continue;
            }
            // A dangling link stands for a file: named .txt or .md, it is read (and refused).
            Err(e) => match e.path() {
                Some(p) if p.symlink_metadata().is_ok() => (p.to_path_buf(), false),
                _ => return Err(e).with_context(|| format!("reading folder {}", path.display())),
            },
        };
        if !is_dir
            && matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("txt" | "md")
            )
        {
            out.push(file);
        }
    }
    Ok(())
}

/// Ingests one document behind a progress bar of tokens scanned.
pub(super) fn ingest_with_progress(
    index: &mut Index,
    encoder: &Encoder<'_>,
    doc: NewDocument<'_>,
) -> Result<crate::index::Ingested> {
    Ok(ingest_group_with_progress(index, encoder, vec![doc])?.remove(0))
}

/// Ingests documents through one scan (their windows share the model's batches) with a
/// progress bar over all their tokens; documents are stored in atomic groups
/// ([`ingest::ingest_many`]).
pub(super) fn ingest_group_with_progress(
    index: &mut Index,
    encoder: &Encoder<'_>,
    docs: Vec<NewDocument<'_>>,
) -> Result<Vec<crate::index::Ingested>> {
    Ok(ingest_group_timed(index, encoder, docs)?.documents)
}

/// Ingests a group like [`ingest_group_with_progress`], also returning how much of the storing
/// overlapped the scan.
fn ingest_group_timed(
    index: &mut Index,
    encoder: &Encoder<'_>,
    docs: Vec<NewDocument<'_>>,
) -> Result<ingest::GroupIngested> {
    let style = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} tokens  {per_sec}  eta {eta}",
    )
    .expect("static template")
    .progress_chars("=> ");
    let label = match docs.as_slice() {
        [one] => one.id.clone().unwrap_or_else(|| "stdin".into()),
        many => format!("{} documents", many.len()),
    };
    let bar = ProgressBar::new(0).with_style(style).with_message(label);
    let out = ingest::ingest_many(encoder, index, docs, &mut |pos, len| {
        bar.set_length(len as u64);
        bar.set_position(pos as u64);
    });
    bar.finish_and_clear();
    Ok(out?)
}

/// Text per scan group of `s3mem ingest`: documents up to this many bytes (about 250k
/// tokens) share one scan, so a GPU's batches fill across small documents while the
/// postings held before storing stay bounded.
const GROUP_BYTES: usize = 1 << 20;

/// Splits inputs into consecutive groups of at most [`GROUP_BYTES`] (a larger document is a
/// group of its own).
pub(super) fn groups(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && bytes + n > GROUP_BYTES {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// A document read and checked before anything is written.
struct Input {
    id: Option<String>,
    text: String,
}

fn read_input(path: &Path, limit: usize) -> Result<Input> {
    let (bytes, name, id) = if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .take(limit as u64 + 1)
            .read_to_end(&mut b)
            .context("reading stdin")?;
        (b, "stdin".to_string(), None)
    } else {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len > limit as u64 {
            bail!(IndexError::TooLarge {
                id: path.display().to_string(),
                bytes: len as usize,
                limit,
            });
        }
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.display().to_string();
        (b, name.clone(), Some(name))
    };
    if bytes.len() > limit {
        bail!(IndexError::TooLarge {
            id: name,
            bytes: bytes.len(),
            limit,
        });
    }
    let text = document_text(bytes, &name)?;
    if text.trim().is_empty() {
        bail!(IndexError::InvalidInput(format!(
            "document {name} is empty"
        )));
    }
    Ok(Input { id, text })
}

/// Runs `s3mem ingest`.
pub fn ingest(args: &IngestArgs, models: &Path) -> Result<()> {
    let t0 = Instant::now();
    let mut files = Vec::new();
    for p in &args.paths {
        expand(p, &mut files)?;
    }
    if files.is_empty() {
        bail!("no .txt or .md files under the given paths");
    }
    if args.id.is_some() && files.len() > 1 {
        bail!("--id names one document but the paths hold {}", files.len());
    }
    // Read and check every input first: a bad one stops the run before anything is written.
    let mut inputs = files
        .iter()
        .map(|f| read_input(f, args.max_document_bytes))
        .collect::<Result<Vec<_>>>()?;
    if let Some(id) = &args.id {
        inputs[0].id = Some(id.clone());
    }
    // Every document's id, size and metadata too, before anything is written (a collection
    // included): a bad input in a later group must not leave earlier groups stored.
    for input in &inputs {
        check_document_fields(
            &NewDocument {
                collection: &args.collection,
                id: input.id.clone(),
                meta: args.meta.clone(),
                text: &input.text,
            },
            args.max_document_bytes,
        )?;
    }
    if let Some(client) = args.server.connect()? {
        return ingest_remote(args, client, inputs, t0);
    }
    let model = load(&args.model, models)?;
    let spec = args
        .sae
        .as_ref()
        .map_or("default".into(), |d| d.display().to_string());
    let saes = load_sae_set(&model, &spec, models)?;
    let embedder = load_embedder(&args.model, models)?;
    let encoder =
        Encoder::new(&model, &saes, args.window.config())?.with_embedder(embedder.as_ref());
    let mut index = open(
        &args.data,
        IndexConfig {
            max_document_bytes: args.max_document_bytes,
        },
    )?;
    index.check_identity(encoder.identity())?;
    embed_missing(embedder.as_ref(), &mut index)?;
    match index.create_collection(&args.collection) {
        Ok(()) | Err(IndexError::CollectionExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // The peak GPU memory reported is the ingest's own, not the model load's.
    crate::model::reset_gpu_peak(model.transformer().device())?;
    // Reading the inputs, loading the models, opening the index and embedding stored passages
    // that lack vectors: in `seconds`, apart.
    let load_s = t0.elapsed().as_secs_f64();
    let mut done = Vec::new();
    let (mut scan_s, mut encode_s, mut store_s, mut overlapped_s) = (0.0, 0.0, 0.0, 0.0);
    let sizes: Vec<usize> = inputs.iter().map(|i| i.text.len()).collect();
    for group in groups(&sizes) {
        let docs = inputs[group]
            .iter()
            .map(|input| NewDocument {
                collection: &args.collection,
                id: input.id.clone(),
                meta: args.meta.clone(),
                text: &input.text,
            })
            .collect();
        let group = ingest_group_timed(&mut index, &encoder, docs)?;
        overlapped_s += group.store_overlapped_seconds;
        for out in group.documents {
            scan_s += out.scan_seconds;
            encode_s += out.encode_seconds;
            store_s += out.store_seconds;
            note_ingested(args.json, &out);
            done.push(out);
        }
    }
    let t_commit = Instant::now();
    index.commit()?;
    store_s += t_commit.elapsed().as_secs_f64();
    let gpu = crate::model::gpu_memory(model.transformer().device())?;
    let times = [scan_s, encode_s, store_s];
    let local = Local {
        load_s,
        overlapped_s,
        gpu,
    };
    print_ingest_summary(args.json, &done, t0, times, Some(local))
}

/// Streams the inputs to a daemon, one Ingest call each, `--in-flight` of them open at once.
fn ingest_remote(
    args: &IngestArgs,
    mut client: super::client::Client,
    inputs: Vec<Input>,
    t0: Instant,
) -> Result<()> {
    client.ensure_collection(&args.collection)?;
    let uploads = inputs
        .into_iter()
        .map(|input| super::client::DocumentUpload {
            label: input.id.clone().unwrap_or_else(|| "stdin".into()),
            id: input.id,
            text: input.text,
        })
        .collect();
    let mut done = Vec::new();
    let (mut scan_s, mut encode_s, mut store_s) = (0.0, 0.0, 0.0);
    client.ingest_all(
        &args.collection,
        &args.meta,
        uploads,
        args.in_flight,
        &mut |r| {
            scan_s += r.scan_seconds;
            encode_s += r.encode_seconds;
            store_s += r.store_seconds;
            let out = crate::index::Ingested {
                id: r.id,
                tokens: r.tokens as usize,
                replaced: r.replaced,
                scan_seconds: r.scan_seconds,
                encode_seconds: r.encode_seconds,
                store_seconds: r.store_seconds,
            };
            note_ingested(args.json, &out);
            done.push(out);
        },
    )?;
    // A daemon loads and stores on its own schedule: no load or overlap to report.
    print_ingest_summary(args.json, &done, t0, [scan_s, encode_s, store_s], None)
}

/// Notes one stored document on stderr (unless the output is JSON).
fn note_ingested(json: bool, out: &crate::index::Ingested) {
    if !json {
        eprintln!(
            "{} {}: {} tokens",
            if out.replaced { "replaced" } else { "ingested" },
            out.id,
            out.tokens
        );
    }
}

/// What only a local ingest knows: the seconds before the first scan (reading the inputs,
/// loading the models, opening the index, embedding stored passages that lack vectors), the
/// store's seconds during the scan, and the GPU's memory.
struct Local {
    load_s: f64,
    overlapped_s: f64,
    gpu: Option<crate::model::GpuMemory>,
}

/// Prints what an ingest did (the same locally and through a daemon).
fn print_ingest_summary(
    json: bool,
    done: &[crate::index::Ingested],
    t0: Instant,
    [scan_s, encode_s, store_s]: [f64; 3],
    local: Option<Local>,
) -> Result<()> {
    let seconds = t0.elapsed().as_secs_f64();
    if json {
        let mut report = json!({
            "documents": done.iter().map(|d| json!({"id": d.id, "tokens": d.tokens, "replaced": d.replaced})).collect::<Vec<_>>(),
            "seconds": seconds,
            "scan_seconds": scan_s,
            "encode_seconds": encode_s,
            "store_seconds": store_s,
        });
        if let Some(local) = &local {
            report["load_seconds"] = local.load_s.into();
            report["store_overlapped_seconds"] = local.overlapped_s.into();
            // Only a GPU run has driver figures; a CPU run's report stays as it was.
            if let Some(gpu) = &local.gpu {
                report["gpu_memory"] = serde_json::to_value(gpu)?;
            }
        }
        println!("{report}");
    } else {
        let tokens: usize = done.iter().map(|d| d.tokens).sum();
        println!(
            "{} documents, {tokens} tokens in {seconds:.1} s ({}scan {scan_s:.1} s, encode {encode_s:.1} s, store {store_s:.2} s{})",
            done.len(),
            local.as_ref().map_or(String::new(), |l| format!("load {:.1} s, ", l.load_s)),
            local.as_ref().map_or(String::new(), |l| format!(", {:.2} s of it during the scan", l.overlapped_s))
        );
    }
    Ok(())
}

fn parse_chars(s: &str) -> Result<std::ops::Range<usize>> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("char range `{s}` is not start..end"))?;
    let a: usize = a
        .parse()
        .with_context(|| format!("bad range start `{a}`"))?;
    let b: usize = b.parse().with_context(|| format!("bad range end `{b}`"))?;
    if a > b {
        bail!("char range `{s}` ends before it starts");
    }
    Ok(a..b)
}

/// Runs `s3mem docs ...`.
pub fn docs(cmd: DocsCommand) -> Result<()> {
    match cmd {
        DocsCommand::List {
            data,
            server,
            collection,
            json,
            page_size,
            page_token,
        } => {
            let token = page_token.unwrap_or_default();
            let (docs, next) = match (server.connect()?, page_size) {
                (Some(mut client), None) => (client.documents(&collection)?, None),
                (Some(mut client), Some(size)) => {
                    client.documents_page(&collection, size, &token)?
                }
                (None, size) => {
                    let index = Index::open_existing(data.dir()?)?;
                    let page = crate::service::convert::document_page(size.unwrap_or(0), &token)?;
                    let size = size.map_or(usize::MAX, |_| page.size);
                    let found = index.documents_page(&collection, page.from, size)?;
                    (found.documents, found.next.map(|n| n.to_string()))
                }
            };
            if let Some(next) = next {
                eprintln!("next page: --page-token {next}");
            }
            if json {
                println!("{}", serde_json::to_string(&docs)?);
            } else {
                for d in docs {
                    println!("{}\t{} tokens\t{} chars", d.id, d.tokens, d.chars);
                }
            }
        }
        DocsCommand::Get {
            data,
            server,
            collection,
            chars,
            json,
            id,
        } => {
            let range = chars.as_deref().map(parse_chars).transpose()?;
            let (info, text) = match server.connect()? {
                Some(mut client) => client.document(&collection, &id, range)?,
                None => {
                    let index = Index::open_existing(data.dir()?)?;
                    let info = index.document(&collection, &id)?;
                    (info, index.text(&collection, &id, range)?)
                }
            };
            if json {
                println!("{}", json!({ "document": info, "text": text }));
            } else {
                print!("{text}");
            }
        }
        DocsCommand::Delete {
            data,
            server,
            collection,
            ids,
        } => match server.connect()? {
            Some(mut client) => {
                for id in ids {
                    client.delete(&collection, &id)?;
                    eprintln!("deleted {id}");
                }
            }
            None => {
                let mut index = Index::open_existing(data.dir()?)?;
                for id in ids {
                    index.delete(&collection, &id)?;
                    eprintln!("deleted {id}");
                }
            }
        },
    }
    Ok(())
}

/// Runs `s3mem collections ...`.
pub fn collections(cmd: CollectionsCommand) -> Result<()> {
    match cmd {
        CollectionsCommand::List { data, json } => {
            let index = Index::open_existing(data.dir()?)?;
            let list = index.collections()?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for c in list {
                    println!("{}\t{} documents\t{} tokens", c.name, c.documents, c.tokens);
                }
            }
        }
        CollectionsCommand::Create { data, name } => {
            open(&data, IndexConfig::default())?.create_collection(&name)?;
        }
        CollectionsCommand::Drop { data, name } => {
            Index::open_existing(data.dir()?)?.drop_collection(&name)?;
        }
    }
    Ok(())
}

/// Runs `s3mem stats`.
pub fn stats(args: &StatsArgs) -> Result<()> {
    let s = match args.server.connect()? {
        Some(mut client) => client.stats()?,
        None => Index::open_existing(args.data.dir()?)?.stats()?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "{} collections, {} documents, {} tokens, {} postings ({} entries)",
        s.collections, s.documents, s.tokens, s.postings, s.posting_entries
    );
    for (name, c) in &s.components {
        let per_token = s.bytes_per_token.get(name).copied().unwrap_or(0.0);
        println!(
            "  {name:<10} {:>12} bytes  {:>9} records  {per_token:>8.2} bytes/token",
            c.bytes, c.records
        );
    }
    println!(
        "  on disk: store and posting packs {} bytes, bm25 {} bytes",
        s.store_disk_bytes, s.bm25_disk_bytes
    );
    if let Some(t) = s.bytes_per_token.get("total") {
        println!("  total {t:.1} bytes/token (logical records and packs + bm25 on disk)");
    }
    if let Some(t) = s.bytes_per_token.get("disk_total") {
        println!("  on disk in all {t:.1} bytes/token");
    }
    Ok(())
}

/// Runs `s3mem compact`.
pub fn compact(args: &DataDirArgs) -> Result<()> {
    let index = Index::open_existing(args.dir()?)?;
    let before = index.stats()?;
    let after = index.compact()?.stats()?;
    eprintln!(
        "store {} -> {} bytes, bm25 {} -> {} bytes",
        before.store_disk_bytes,
        after.store_disk_bytes,
        before.bm25_disk_bytes,
        after.bm25_disk_bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_in_order_and_a_symlink_loop_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        for f in ["b.txt", "a.md", "skip.bin", "sub/c.txt", "sub/deeper/d.md"] {
            std::fs::write(root.join(f), "text").unwrap();
        }
        // A loop back to the root, and a link to a file, which is read as a file.
        std::os::unix::fs::symlink(root, root.join("sub/deeper/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("b.txt"), root.join("sub/link.txt")).unwrap();
        let mut files = Vec::new();
        expand(root, &mut files).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "a.md",
                "b.txt",
                "sub/c.txt",
                "sub/deeper/d.md",
                "sub/link.txt"
            ]
        );
        // A file or `-` stands for itself, whatever its name.
        let mut one = Vec::new();
        expand(&root.join("skip.bin"), &mut one).unwrap();
        expand(Path::new("-"), &mut one).unwrap();
        assert_eq!(one, [root.join("skip.bin"), PathBuf::from("-")]);
    }

    #[test]
    fn groups_fill_up_to_the_byte_cap_and_keep_order() {
        assert!(groups(&[]).is_empty());
        assert_eq!(groups(&[10, 20, 30]), vec![0..3]);
        let big = GROUP_BYTES;
        assert_eq!(
            groups(&[big / 2, big / 2, 1, big * 3, 5]),
            vec![0..2, 2..3, 3..4, 4..5]
        );
    }
}
