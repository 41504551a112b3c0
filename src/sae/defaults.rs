//! The embedded default SAE sets: compiled into the binary, written out to the models folder
//! on first use, then loaded and checked like any other set.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{Result, SaeError};
use crate::model::Model;

/// An SAE set shipped inside the binary for one model file.
struct EmbeddedSet {
    /// sha256 of the GGUF file the set was trained for.
    model_sha256: &'static str,
    name: &'static str,
    files: &'static [(&'static str, &'static [u8])],
}

impl EmbeddedSet {
    /// Returns the short digest of the set's file names and bytes that names its folder.
    fn tag(&self) -> String {
        let mut h = Sha256::new();
        for (name, bytes) in self.files {
            h.update(name.as_bytes());
            h.update(bytes);
        }
        crate::model::hex_digest(&h.finalize()[..6])
    }
}

/// Embeds the files of `assets/sae/<name>/` (weights are data, kept out of `src/`).
macro_rules! embedded_files {
    ($name:literal: $($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sae/", $name, "/", $file))
                as &[u8],
        )),+]
    };
}

/// The default sets; `assets/sae/README.md` says how each was made.
const SETS: &[EmbeddedSet] = &[EmbeddedSet {
    model_sha256: crate::model::fetch::SMOLLM2_135M_SHA256,
    name: "smollm2-135m",
    files: embedded_files!("smollm2-135m":
        "manifest.json",
        "layer-008.safetensors",
        "layer-016.safetensors",
        "layer-024.safetensors",
    ),
}];

/// Returns the folder of the default SAE set for `model`, writing it out on first use, or
/// `None` when s3mem ships no default for that model file.
pub fn default_set_dir(model: &Model, models_dir: &Path) -> Result<Option<PathBuf>> {
    let fingerprint = model.fingerprint()?;
    let Some(set) = SETS.iter().find(|s| s.model_sha256 == fingerprint) else {
        return Ok(None);
    };
    let tag = set.tag();
    let dir = models_dir.join("sae").join(format!("{}-{tag}", set.name));
    if dir.join(super::file::MANIFEST_FILE).is_file() {
        return Ok(Some(dir));
    }
    // Write into a fresh sibling, then rename: a crash never leaves a half-written set.
    let staging =
        models_dir
            .join("sae")
            .join(format!(".{}-{tag}.{}", set.name, std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| SaeError::Io { path: p, source: e }
    };
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (name, bytes) in set.files {
        fs::write(staging.join(name), bytes).map_err(io(&staging.join(name)))?;
    }
    match fs::rename(&staging, &dir) {
        Ok(()) => Ok(Some(dir)),
        // Another process won the race: its copy is identical.
        Err(_) if dir.join(super::file::MANIFEST_FILE).is_file() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(Some(dir))
        }
        Err(e) => Err(SaeError::Io {
            path: dir,
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_sets_keep_their_digest() {
        // The tag names the folder users already have: moving the weights must not change it.
        let tags: Vec<_> = SETS.iter().map(|s| (s.name, s.tag())).collect();
        assert_eq!(tags, [("smollm2-135m", "58370fe24b8c".to_string())]);
    }
}
