//! Training and evaluation corpora: text files, folders of them, and JSON / JSONL records.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{Result, SaeError};
use crate::text::document_text;

/// Extensions read from a folder.
const TEXT_EXTENSIONS: [&str; 4] = ["txt", "md", "json", "jsonl"];

/// Returns the corpus files under `paths` in a fixed order: files as given, folders walked
/// recursively in name order, keeping `.txt`, `.md`, `.json` and `.jsonl`.
pub fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = fs::metadata(p).map_err(|e| corpus_err(p, e))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        let shown = paths.first().cloned().unwrap_or_default();
        return Err(corpus_err(
            &shown,
            "no .txt, .md, .json or .jsonl files found",
        ));
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| corpus_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| TEXT_EXTENSIONS.contains(&e))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Calls `on_doc` with each document of `path` in order until it returns `false`.
///
/// A `.json` file holds one record or an array of records; a `.jsonl` file one record a line;
/// a record is a string or an object whose `text_field` is a string. Anything else is text.
pub fn for_each_document(
    path: &Path,
    text_field: &str,
    on_doc: &mut dyn FnMut(String) -> Result<bool>,
) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| corpus_err(path, e))?;
    let text = document_text(bytes, &path.display().to_string()).map_err(|e| {
        corpus_err(
            path,
            format!("not UTF-8 text (invalid byte at offset {})", e.offset),
        )
    })?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| corpus_err(path, e))?;
            let records = match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            };
            for (i, r) in records.iter().enumerate() {
                let doc = record_text(r, text_field).ok_or_else(|| {
                    corpus_err(path, format!("record {i} has no string `{text_field}`"))
                })?;
                if !on_doc(doc.to_string())? {
                    return Ok(());
                }
            }
        }
        Some("jsonl") => {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let r: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| corpus_err(path, format!("line {}: {e}", i + 1)))?;
                let doc = record_text(&r, text_field).ok_or_else(|| {
                    corpus_err(path, format!("line {} has no string `{text_field}`", i + 1))
                })?;
                if !on_doc(doc.to_string())? {
                    return Ok(());
                }
            }
        }
        _ => {
            on_doc(text)?;
        }
    }
    Ok(())
}

fn record_text<'a>(r: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    match r {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(m) => m.get(field)?.as_str(),
        _ => None,
    }
}

fn corpus_err(path: &Path, reason: impl std::fmt::Display) -> SaeError {
    SaeError::Corpus {
        path: path.into(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(path: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for_each_document(path, "text", &mut |d| {
            out.push(d);
            Ok(true)
        })?;
        Ok(out)
    }

    #[test]
    fn reads_text_json_and_jsonl_in_a_fixed_order() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("b");
        fs::create_dir(&sub).unwrap();
        fs::write(dir.path().join("a.txt"), "plain text").unwrap();
        fs::write(sub.join("c.json"), r#"[{"text":"one"},"two"]"#).unwrap();
        fs::write(
            sub.join("d.jsonl"),
            "{\"text\":\"three\"}\n\n{\"text\":\"four\"}\n",
        )
        .unwrap();
        fs::write(sub.join("skip.bin"), [0u8, 1, 2]).unwrap();
        let files = corpus_files(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.txt", "c.json", "d.jsonl"]);
        let all: Vec<String> = files.iter().flat_map(|f| docs(f).unwrap()).collect();
        assert_eq!(all, ["plain text", "one", "two", "three", "four"]);
    }

    #[test]
    fn bad_records_name_the_file_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        fs::write(&p, "{\"text\":\"ok\"}\n{\"body\":\"no text\"}\n").unwrap();
        let err = docs(&p).unwrap_err().to_string();
        assert!(err.contains("x.jsonl") && err.contains("line 2"), "{err}");
        let q = dir.path().join("bin.txt");
        fs::write(&q, [b'a', 0xff]).unwrap();
        assert!(docs(&q).unwrap_err().to_string().contains("not UTF-8"));
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(corpus_files(&[empty]).is_err());
    }
}
