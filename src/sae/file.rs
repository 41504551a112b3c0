//! SAE files: safetensors weights plus string metadata tying each SAE to a model, layer and head,
//! and SAE sets: a directory of them with a JSON manifest and one digest.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::Path;

use safetensors::tensor::{TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Result, SaeError};
use super::topk::{tensor_to_vec, TopKSae};
use crate::durable;
use crate::model::RetrievalHead;

/// Version of the SAE file layout, independent of the crate version; bump it when a reader of
/// the previous layout would misread a new file.
pub const SAE_FORMAT_VERSION: u32 = 1;

/// Version of the SAE set manifest layout.
pub const SAE_SET_FORMAT_VERSION: u32 = 1;

/// Name of the manifest file inside an SAE set directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Value of the `kind` metadata key that marks a safetensors file as an s3mem SAE.
const FILE_KIND: &str = "s3mem.topk_sae";

/// Says which KV heads of a layer an SAE serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadMode {
    /// One SAE for every KV head of the layer.
    Shared,
    /// An SAE for one KV head.
    Head(usize),
}

impl fmt::Display for HeadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shared => f.write_str("shared"),
            Self::Head(h) => write!(f, "head:{h}"),
        }
    }
}

impl HeadMode {
    /// Parses the `Display` form (`shared`, `head:N`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Self::Shared),
            _ => s.strip_prefix("head:")?.parse().ok().map(Self::Head),
        }
    }
}

/// Says which projections an SAE was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainedOn {
    /// Pre-RoPE key projections only (the paper's choice).
    Keys,
    /// Pre-RoPE keys and queries of the same layer.
    KeysAndQueries,
}

impl fmt::Display for TrainedOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Keys => "keys",
            Self::KeysAndQueries => "keys_and_queries",
        })
    }
}

impl TrainedOn {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "keys" => Some(Self::Keys),
            "keys_and_queries" => Some(Self::KeysAndQueries),
            _ => None,
        }
    }
}

/// Describes an SAE file: what it encodes and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeMeta {
    /// Layout version of the file ([`SAE_FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// Lowercase hex sha256 of the model file (GGUF) whose projections the SAE encodes.
    pub model_fingerprint: String,
    /// Transformer layer, from 0.
    pub layer: usize,
    /// KV heads served.
    pub head: HeadMode,
    /// Input dimension (the model's head dimension).
    pub d_in: usize,
    /// Dictionary size.
    pub dict_size: usize,
    /// Features kept per vector.
    pub k: usize,
    /// Scalar applied to inputs before encoding.
    pub input_scale: f32,
    /// Projections the SAE was trained on.
    pub trained_on: TrainedOn,
    /// Digest of the training corpus, as the caller computes it.
    pub corpus_digest: String,
    /// Tokens of the corpus scanned to draw the training sample.
    pub corpus_tokens: u64,
    /// Crate version that trained the SAE.
    pub code_version: String,
    /// Training seed.
    pub seed: u64,
}

impl SaeMeta {
    /// Returns metadata for `sae` at `layer`/`head` of the model with `model_fingerprint`; the
    /// provenance fields start as keys-only, empty corpus, seed 0, for the caller to fill in.
    pub fn describe(
        sae: &TopKSae,
        model_fingerprint: impl Into<String>,
        layer: usize,
        head: HeadMode,
    ) -> Self {
        Self {
            format_version: SAE_FORMAT_VERSION,
            model_fingerprint: model_fingerprint.into(),
            layer,
            head,
            d_in: sae.d_in(),
            dict_size: sae.dict_size(),
            k: sae.k(),
            input_scale: sae.input_scale(),
            trained_on: TrainedOn::Keys,
            corpus_digest: String::new(),
            corpus_tokens: 0,
            code_version: env!("CARGO_PKG_VERSION").to_string(),
            seed: 0,
        }
    }

    fn to_map(&self) -> BTreeMap<String, String> {
        [
            ("kind", FILE_KIND.to_string()),
            ("format_version", self.format_version.to_string()),
            ("model_fingerprint", self.model_fingerprint.clone()),
            ("layer", self.layer.to_string()),
            ("head", self.head.to_string()),
            ("d_in", self.d_in.to_string()),
            ("dict_size", self.dict_size.to_string()),
            ("k", self.k.to_string()),
            // f32 Display is the shortest string that parses back to the same bits.
            ("input_scale", self.input_scale.to_string()),
            ("trained_on", self.trained_on.to_string()),
            ("corpus_digest", self.corpus_digest.clone()),
            ("corpus_tokens", self.corpus_tokens.to_string()),
            ("code_version", self.code_version.clone()),
            ("seed", self.seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn from_map(map: &HashMap<String, String>, path: &Path) -> Result<Self> {
        let get = |key: &str| {
            map.get(key)
                .ok_or_else(|| SaeError::corrupt(path, format!("metadata lacks `{key}`")))
        };
        fn parse<T: std::str::FromStr>(path: &Path, key: &str, v: &str) -> Result<T> {
            v.parse().map_err(|_| {
                SaeError::corrupt(path, format!("metadata `{key}` = {v:?} is unreadable"))
            })
        }
        let kind = get("kind")?;
        if kind != FILE_KIND {
            return Err(SaeError::corrupt(
                path,
                format!("metadata `kind` is {kind:?}, not {FILE_KIND:?}"),
            ));
        }
        let head = get("head")?;
        let trained_on = get("trained_on")?;
        Ok(Self {
            format_version: parse(path, "format_version", get("format_version")?)?,
            model_fingerprint: get("model_fingerprint")?.clone(),
            layer: parse(path, "layer", get("layer")?)?,
            head: HeadMode::parse(head).ok_or_else(|| {
                SaeError::corrupt(path, format!("metadata `head` = {head:?} is unreadable"))
            })?,
            d_in: parse(path, "d_in", get("d_in")?)?,
            dict_size: parse(path, "dict_size", get("dict_size")?)?,
            k: parse(path, "k", get("k")?)?,
            input_scale: parse(path, "input_scale", get("input_scale")?)?,
            trained_on: TrainedOn::parse(trained_on).ok_or_else(|| {
                SaeError::corrupt(
                    path,
                    format!("metadata `trained_on` = {trained_on:?} is unreadable"),
                )
            })?,
            corpus_digest: get("corpus_digest")?.clone(),
            corpus_tokens: parse(path, "corpus_tokens", get("corpus_tokens")?)?,
            code_version: get("code_version")?.clone(),
            seed: parse(path, "seed", get("seed")?)?,
        })
    }

    /// Checks that the metadata describes `sae`.
    fn check_describes(&self, sae: &TopKSae) -> Result<()> {
        let agrees = self.d_in == sae.d_in()
            && self.dict_size == sae.dict_size()
            && self.k == sae.k()
            && self.input_scale.to_bits() == sae.input_scale().to_bits();
        if !agrees {
            return Err(SaeError::InvalidConfig(format!(
                "metadata (d_in {}, dict_size {}, k {}, input_scale {}) does not describe the sae \
                 (d_in {}, dict_size {}, k {}, input_scale {})",
                self.d_in,
                self.dict_size,
                self.k,
                self.input_scale,
                sae.d_in(),
                sae.dict_size(),
                sae.k(),
                sae.input_scale()
            )));
        }
        Ok(())
    }
}

/// States what a caller requires of an SAE file before using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeExpectation {
    /// Lowercase hex sha256 of the model file the caller runs.
    pub model_fingerprint: String,
    /// The model's head dimension.
    pub d_in: usize,
    /// The layer required, or `None` for any (an [`SaeSet`] checks layers against its manifest).
    pub layer: Option<usize>,
    /// The head mode required, or `None` for any.
    pub head: Option<HeadMode>,
    /// The dictionary size required, or `None` for any.
    pub dict_size: Option<usize>,
    /// The k required, or `None` for any.
    pub k: Option<usize>,
}

impl SaeExpectation {
    /// Returns an expectation of the model and head dimension only.
    pub fn new(model_fingerprint: impl Into<String>, d_in: usize) -> Self {
        Self {
            model_fingerprint: model_fingerprint.into(),
            d_in,
            layer: None,
            head: None,
            dict_size: None,
            k: None,
        }
    }

    /// Returns this expectation narrowed to one layer and head mode.
    pub fn at(mut self, layer: usize, head: HeadMode) -> Self {
        self.layer = Some(layer);
        self.head = Some(head);
        self
    }

    fn check(&self, meta: &SaeMeta, path: &Path) -> Result<()> {
        if meta.format_version > SAE_FORMAT_VERSION || meta.format_version == 0 {
            return Err(SaeError::mismatch(
                "format_version",
                format!("1..={SAE_FORMAT_VERSION}"),
                meta.format_version,
                path,
            ));
        }
        if meta.model_fingerprint != self.model_fingerprint {
            return Err(SaeError::mismatch(
                "model_fingerprint",
                &self.model_fingerprint,
                &meta.model_fingerprint,
                path,
            ));
        }
        if meta.d_in != self.d_in {
            return Err(SaeError::mismatch("d_in", self.d_in, meta.d_in, path));
        }
        if let Some(layer) = self.layer.filter(|&l| l != meta.layer) {
            return Err(SaeError::mismatch("layer", layer, meta.layer, path));
        }
        if let Some(head) = self.head.filter(|&h| h != meta.head) {
            return Err(SaeError::mismatch("head", head, meta.head, path));
        }
        if let Some(m) = self.dict_size.filter(|&m| m != meta.dict_size) {
            return Err(SaeError::mismatch("dict_size", m, meta.dict_size, path));
        }
        if let Some(k) = self.k.filter(|&k| k != meta.k) {
            return Err(SaeError::mismatch("k", k, meta.k, path));
        }
        Ok(())
    }
}

/// Writes `sae` and its metadata to `path` as safetensors, atomically.
pub fn save_sae(path: &Path, sae: &TopKSae, meta: &SaeMeta) -> Result<()> {
    durable::write_atomic(path, &sae_bytes(sae, meta)?).map_err(|e| SaeError::io(path, e))
}

/// Reads the SAE at `path`, refusing it unless it fits `expect`.
pub fn load_sae(path: &Path, expect: &SaeExpectation) -> Result<(TopKSae, SaeMeta)> {
    let bytes = fs::read(path).map_err(|e| SaeError::io(path, e))?;
    sae_from_bytes(&bytes, path, expect)
}

/// Serialises `sae` with `meta` into safetensors bytes.
fn sae_bytes(sae: &TopKSae, meta: &SaeMeta) -> Result<Vec<u8>> {
    meta.check_describes(sae)?;
    let tensors = [
        ("w_enc", sae.w_enc()),
        ("b_enc", sae.b_enc()),
        ("w_dec", sae.w_dec()),
        ("b_dec", sae.b_dec()),
    ];
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bytes: Vec<u8> = tensor_to_vec(t)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        encoded.push((name, t.dims().to_vec(), bytes));
    }
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (*name, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| SaeError::InvalidConfig(format!("cannot lay out sae tensors: {e}")))?;
    // The crate lays out the tensors; the header is then rewritten with the metadata in sorted
    // order, because the crate writes its HashMap in random order and a set's digest hashes
    // these bytes: the same SAE must always give the same file.
    let plain = safetensors::serialize(views, None)
        .map_err(|e| SaeError::InvalidConfig(format!("cannot serialise sae: {e}")))?;
    let (header_len, layout) = SafeTensors::read_metadata(&plain)
        .map_err(|e| SaeError::InvalidConfig(format!("cannot re-read serialised sae: {e}")))?;
    let header = Header {
        metadata: meta.to_map(),
        tensors: layout.tensors().into_iter().collect(),
    };
    let mut header_bytes = serde_json::to_vec(&header)
        .map_err(|e| SaeError::InvalidConfig(format!("cannot serialise sae header: {e}")))?;
    // Data must start 8-byte aligned, as the crate itself pads it.
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');
    let data = &plain[8 + header_len..];
    let mut out = Vec::with_capacity(8 + header_bytes.len() + data.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(data);
    Ok(out)
}

/// A safetensors header with every map in sorted order.
#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "__metadata__")]
    metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    tensors: BTreeMap<String, &'a TensorInfo>,
}

/// Parses and checks an SAE file's bytes; `path` names it in errors.
fn sae_from_bytes(
    bytes: &[u8],
    path: &Path,
    expect: &SaeExpectation,
) -> Result<(TopKSae, SaeMeta)> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| SaeError::corrupt(path, format!("unreadable safetensors: {e}")))?;
    let map = header
        .metadata()
        .as_ref()
        .ok_or_else(|| SaeError::corrupt(path, "safetensors header carries no metadata"))?;
    let meta = SaeMeta::from_map(map, path)?;
    expect.check(&meta, path)?;

    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| SaeError::corrupt(path, format!("unreadable safetensors: {e}")))?;
    let (m, d) = (meta.dict_size, meta.d_in);
    let read = |name: &'static str, field: &'static str, shape: &[usize]| -> Result<Vec<f32>> {
        let view = st
            .tensor(name)
            .map_err(|e| SaeError::corrupt(path, format!("tensor `{name}`: {e}")))?;
        if view.dtype() != Dtype::F32 {
            return Err(SaeError::corrupt(
                path,
                format!("tensor `{name}` is {}, expected F32", view.dtype()),
            ));
        }
        if view.shape() != shape {
            return Err(SaeError::mismatch(
                field,
                format!("{shape:?}"),
                format!("{:?}", view.shape()),
                path,
            ));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let w_enc = read("w_enc", "w_enc.shape", &[m, d])?;
    let b_enc = read("b_enc", "b_enc.shape", &[m])?;
    let w_dec = read("w_dec", "w_dec.shape", &[m, d])?;
    let b_dec = read("b_dec", "b_dec.shape", &[d])?;
    let sae = TopKSae::from_vecs(d, m, w_enc, b_enc, w_dec, b_dec, meta.k, meta.input_scale)
        .map_err(|e| SaeError::corrupt(path, e.to_string()))?;
    Ok((sae, meta))
}

/// One entry of an SAE set manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestEntry {
    layer: usize,
    head: HeadMode,
    file: String,
    sha256: String,
}

/// The JSON manifest of an SAE set directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    model_fingerprint: String,
    d_in: usize,
    digest: String,
    members: Vec<ManifestEntry>,
    /// The retrieval heads a per-head set was trained for (the SAEs are their KV heads'); part
    /// of the digest when present, absent from sets trained by layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retrieval_heads: Vec<RetrievalHead>,
}

/// One SAE of a set with its metadata.
#[derive(Debug, Clone)]
struct Member {
    meta: SaeMeta,
    sae: TopKSae,
}

/// Holds the SAEs of every indexed layer of one model (per layer, or per layer and KV head),
/// loaded from a directory with a manifest.
#[derive(Debug, Clone)]
pub struct SaeSet {
    model_fingerprint: String,
    d_in: usize,
    /// Sorted by (layer, head).
    members: Vec<Member>,
    digest: String,
    /// The retrieval heads the set was trained for, sorted (empty: trained by layer).
    retrieval_heads: Vec<RetrievalHead>,
}

impl SaeSet {
    /// Writes `members` into `dir` (created if missing), one file each, then the manifest, and
    /// returns the set.
    ///
    /// The manifest is written last, so a directory whose write was interrupted has no
    /// manifest (or the previous one) and never a manifest naming missing files.
    pub fn save(dir: &Path, members: Vec<(SaeMeta, TopKSae)>) -> Result<Self> {
        Self::save_for_heads(dir, members, Vec::new())
    }

    /// Writes a set like [`SaeSet::save`], recording the retrieval heads it was trained for
    /// (`heads`; empty for a set trained by layer) in its manifest and digest. Each head's
    /// layer must have an SAE.
    pub fn save_for_heads(
        dir: &Path,
        members: Vec<(SaeMeta, TopKSae)>,
        heads: Vec<RetrievalHead>,
    ) -> Result<Self> {
        let mut set = Self::from_members(members)?;
        let heads = sorted_heads(heads);
        if let Some(h) = set.head_without_sae(&heads) {
            return Err(SaeError::InvalidConfig(format!(
                "retrieval head {h} is at a layer the set has no sae for"
            )));
        }
        set.retrieval_heads = heads;
        fs::create_dir_all(dir).map_err(|e| SaeError::io(dir, e))?;
        let mut entries = Vec::with_capacity(set.members.len());
        let mut hasher = Sha256::new();
        for m in &set.members {
            let file = member_file_name(m.meta.layer, m.meta.head);
            let bytes = sae_bytes(&m.sae, &m.meta)?;
            let path = dir.join(&file);
            durable::write_atomic(&path, &bytes).map_err(|e| SaeError::io(&path, e))?;
            digest_member(&mut hasher, &bytes);
            entries.push(ManifestEntry {
                layer: m.meta.layer,
                head: m.meta.head,
                file,
                sha256: hex_sha256(&bytes),
            });
        }
        digest_heads(&mut hasher, &set.retrieval_heads);
        let digest = format!("{:x}", hasher.finalize());
        let manifest = Manifest {
            format_version: SAE_SET_FORMAT_VERSION,
            model_fingerprint: set.model_fingerprint.clone(),
            d_in: set.d_in,
            digest: digest.clone(),
            members: entries,
            retrieval_heads: set.retrieval_heads.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| SaeError::InvalidConfig(format!("cannot serialise manifest: {e}")))?;
        let path = dir.join(MANIFEST_FILE);
        durable::write_atomic(&path, &json).map_err(|e| SaeError::io(&path, e))?;
        Ok(Self { digest, ..set })
    }

    /// Reads the set in `dir`, checking every member against `expect` (its model fingerprint,
    /// d_in, and dict_size / k when given; layer and head come from the manifest instead) and
    /// against the manifest's checksums.
    pub fn load(dir: &Path, expect: &SaeExpectation) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let raw = fs::read(&manifest_path).map_err(|e| SaeError::io(&manifest_path, e))?;
        let manifest: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| SaeError::corrupt(&manifest_path, format!("unreadable manifest: {e}")))?;
        if manifest.format_version > SAE_SET_FORMAT_VERSION || manifest.format_version == 0 {
            return Err(SaeError::mismatch(
                "format_version",
                format!("1..={SAE_SET_FORMAT_VERSION}"),
                manifest.format_version,
                &manifest_path,
            ));
        }
        if manifest.model_fingerprint != expect.model_fingerprint {
            return Err(SaeError::mismatch(
                "model_fingerprint",
                &expect.model_fingerprint,
                &manifest.model_fingerprint,
                &manifest_path,
            ));
        }
        if manifest.d_in != expect.d_in {
            return Err(SaeError::mismatch(
                "d_in",
                expect.d_in,
                manifest.d_in,
                &manifest_path,
            ));
        }
        let mut loaded = Vec::with_capacity(manifest.members.len());
        for entry in &manifest.members {
            if Path::new(&entry.file).file_name() != Some(entry.file.as_ref()) {
                return Err(SaeError::corrupt(
                    &manifest_path,
                    format!("member file {:?} is not a plain file name", entry.file),
                ));
            }
            let path = dir.join(&entry.file);
            let bytes = fs::read(&path).map_err(|e| SaeError::io(&path, e))?;
            let found = hex_sha256(&bytes);
            if found != entry.sha256 {
                return Err(SaeError::corrupt(
                    &path,
                    format!(
                        "sha256 {found} differs from the manifest's {}",
                        entry.sha256
                    ),
                ));
            }
            let member_expect = SaeExpectation {
                layer: Some(entry.layer),
                head: Some(entry.head),
                ..expect.clone()
            };
            let (sae, meta) = sae_from_bytes(&bytes, &path, &member_expect)?;
            loaded.push((meta, sae, bytes));
        }
        // The digest follows (layer, head) order, whatever order the manifest lists.
        loaded.sort_by_key(|(meta, _, _)| (meta.layer, meta.head));
        let mut hasher = Sha256::new();
        for (_, _, bytes) in &loaded {
            digest_member(&mut hasher, bytes);
        }
        let heads = sorted_heads(manifest.retrieval_heads.clone());
        digest_heads(&mut hasher, &heads);
        let digest = format!("{:x}", hasher.finalize());
        if digest != manifest.digest {
            return Err(SaeError::corrupt(
                &manifest_path,
                format!(
                    "set digest {digest} differs from the manifest's {}",
                    manifest.digest
                ),
            ));
        }
        let set = Self::from_members(
            loaded
                .into_iter()
                .map(|(meta, sae, _)| (meta, sae))
                .collect(),
        )
        .map_err(|e| SaeError::corrupt(&manifest_path, e.to_string()))?;
        if let Some(h) = set.head_without_sae(&heads) {
            return Err(SaeError::corrupt(
                &manifest_path,
                format!("retrieval head {h} is at a layer the set has no sae for"),
            ));
        }
        Ok(Self {
            digest,
            retrieval_heads: heads,
            ..set
        })
    }

    /// Returns the retrieval heads the set was trained for, sorted (empty for a set trained
    /// by layer): only their KV heads have SAEs, so only they are indexed.
    pub fn retrieval_heads(&self) -> &[RetrievalHead] {
        &self.retrieval_heads
    }

    /// Returns the first of `heads` at a layer the set has no SAE for.
    fn head_without_sae(&self, heads: &[RetrievalHead]) -> Option<RetrievalHead> {
        let layers = self.layers();
        heads.iter().copied().find(|h| !layers.contains(&h.layer))
    }

    /// Returns the sha256 (lowercase hex) over the member files' bytes in (layer, head) order,
    /// each preceded by its length as a little-endian u64; an index records it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Returns the fingerprint of the model the set belongs to.
    pub fn model_fingerprint(&self) -> &str {
        &self.model_fingerprint
    }

    /// Returns the input dimension shared by all members.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Returns the layers that have an SAE, ascending.
    pub fn layers(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self.members.iter().map(|m| m.meta.layer).collect();
        layers.dedup();
        layers
    }

    /// Returns every member's metadata, in (layer, head) order.
    pub fn metas(&self) -> impl Iterator<Item = &SaeMeta> {
        self.members.iter().map(|m| &m.meta)
    }

    /// Returns the SAE that encodes KV head `kv_head` of `layer`: the head's own SAE when the
    /// set is per head, else the layer's shared one.
    pub fn sae_for(&self, layer: usize, kv_head: usize) -> Result<&TopKSae> {
        self.members
            .iter()
            .find(|m| m.meta.layer == layer && m.meta.head == HeadMode::Head(kv_head))
            .or_else(|| {
                self.members
                    .iter()
                    .find(|m| m.meta.layer == layer && m.meta.head == HeadMode::Shared)
            })
            .map(|m| &m.sae)
            .ok_or(SaeError::NotFound { layer, kv_head })
    }

    /// Checks the members for consistency and sorts them; the digest is left empty.
    fn from_members(members: Vec<(SaeMeta, TopKSae)>) -> Result<Self> {
        let Some((first, _)) = members.first() else {
            return Err(SaeError::InvalidConfig(
                "an sae set needs at least one sae".into(),
            ));
        };
        let (model_fingerprint, d_in) = (first.model_fingerprint.clone(), first.d_in);
        let mut members: Vec<Member> = members
            .into_iter()
            .map(|(meta, sae)| Member { meta, sae })
            .collect();
        members.sort_by_key(|m| (m.meta.layer, m.meta.head));
        for (i, m) in members.iter().enumerate() {
            m.meta.check_describes(&m.sae)?;
            if m.meta.model_fingerprint != model_fingerprint || m.meta.d_in != d_in {
                return Err(SaeError::InvalidConfig(format!(
                    "layer {} ({}) belongs to model {} with d_in {}, the set to {} with d_in {}",
                    m.meta.layer,
                    m.meta.head,
                    m.meta.model_fingerprint,
                    m.meta.d_in,
                    model_fingerprint,
                    d_in
                )));
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &members[p].meta) {
                let same_layer = prev.layer == m.meta.layer;
                // Shared sorts before Head(_), so a mixed layer shows as Shared then Head.
                if same_layer && (prev.head == m.meta.head || prev.head == HeadMode::Shared) {
                    return Err(SaeError::InvalidConfig(format!(
                        "layer {} has both {} and {}: one sae per head, or one shared",
                        m.meta.layer, prev.head, m.meta.head
                    )));
                }
            }
        }
        Ok(Self {
            model_fingerprint,
            d_in,
            members,
            digest: String::new(),
            retrieval_heads: Vec::new(),
        })
    }
}

/// Returns the file name of the member for `layer`/`head`.
fn member_file_name(layer: usize, head: HeadMode) -> String {
    match head {
        HeadMode::Shared => format!("layer-{layer:03}.safetensors"),
        HeadMode::Head(h) => format!("layer-{layer:03}-head-{h:02}.safetensors"),
    }
}

/// Returns `heads` sorted, without repeats: the order a set records and digests them in.
fn sorted_heads(mut heads: Vec<RetrievalHead>) -> Vec<RetrievalHead> {
    heads.sort();
    heads.dedup();
    heads
}

/// Adds the retrieval heads (sorted) to a set's digest; nothing for a set trained by layer,
/// so such sets keep the digest they had before sets recorded heads.
fn digest_heads(hasher: &mut Sha256, heads: &[RetrievalHead]) {
    if heads.is_empty() {
        return;
    }
    let names: Vec<String> = heads.iter().map(ToString::to_string).collect();
    let text = format!("retrieval heads {}", names.join(","));
    digest_member(hasher, text.as_bytes());
}

fn digest_member(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::rng::SplitMix64;
    use candle_core::{Device, Tensor};

    const FINGERPRINT: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn random_sae(d: usize, m: usize, k: usize, seed: u64) -> TopKSae {
        let mut rng = SplitMix64::new(seed);
        let mut normal =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        let w_enc = normal(m * d);
        let b_enc = normal(m).iter().map(|v| 0.1 * v).collect();
        let w_dec = normal(m * d);
        let b_dec = normal(d);
        TopKSae::from_vecs(d, m, w_enc, b_enc, w_dec, b_dec, k, 0.75).unwrap()
    }

    fn meta(sae: &TopKSae, layer: usize, head: HeadMode) -> SaeMeta {
        SaeMeta {
            trained_on: TrainedOn::KeysAndQueries,
            corpus_digest: "corpus-sha".into(),
            corpus_tokens: 123_456,
            seed: 9,
            ..SaeMeta::describe(sae, FINGERPRINT, layer, head)
        }
    }

    fn probe(d: usize) -> Tensor {
        let mut rng = SplitMix64::new(77);
        let v: Vec<f32> = (0..50 * d).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (50, d), &Device::Cpu).unwrap()
    }

    fn expect() -> SaeExpectation {
        SaeExpectation::new(FINGERPRINT, 16)
    }

    #[test]
    fn round_trip_keeps_weights_metadata_and_encodings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.safetensors");
        let sae = random_sae(16, 64, 4, 1);
        let m = meta(&sae, 7, HeadMode::Head(2));
        save_sae(&path, &sae, &m).unwrap();
        let (back, back_meta) = load_sae(&path, &expect().at(7, HeadMode::Head(2))).unwrap();
        assert_eq!(back_meta, m);
        let x = probe(16);
        assert_eq!(sae.encode(&x).unwrap(), back.encode(&x).unwrap());
        assert_eq!(back.input_scale(), 0.75);
        // Only the file itself is left: the temp file was renamed over it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("layer.safetensors")]);
    }

    #[test]
    fn files_that_do_not_fit_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.safetensors");
        let sae = random_sae(16, 64, 4, 2);
        save_sae(&path, &sae, &meta(&sae, 3, HeadMode::Shared)).unwrap();

        let cases = [
            (SaeExpectation::new("0".repeat(64), 16), "model_fingerprint"),
            (SaeExpectation::new(FINGERPRINT, 64), "d_in"),
            (expect().at(4, HeadMode::Shared), "layer"),
            (expect().at(3, HeadMode::Head(0)), "head"),
            (
                SaeExpectation {
                    dict_size: Some(2048),
                    ..expect()
                },
                "dict_size",
            ),
        ];
        for (want, field) in cases {
            match load_sae(&path, &want) {
                Err(SaeError::Mismatch {
                    field: f,
                    path: p,
                    expected,
                    found,
                }) => {
                    assert_eq!(f, field);
                    assert_eq!(p, path);
                    assert_ne!(expected, found);
                    let msg = load_sae(&path, &want).unwrap_err().to_string();
                    assert!(msg.starts_with(&format!("{field} mismatch in ")), "{msg}");
                }
                other => panic!("{field}: expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_garbage_and_inconsistent_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        let sae = random_sae(16, 64, 4, 3);
        let m = meta(&sae, 0, HeadMode::Shared);
        save_sae(&good, &sae, &m).unwrap();
        let bytes = fs::read(&good).unwrap();

        let truncated = dir.path().join("truncated.safetensors");
        fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
        let garbage = dir.path().join("garbage.safetensors");
        fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
        let empty = dir.path().join("empty.safetensors");
        fs::write(&empty, b"").unwrap();
        for path in [&truncated, &garbage, &empty] {
            match load_sae(path, &expect()) {
                Err(SaeError::Corrupt { path: p, .. }) => assert_eq!(&p, path),
                other => panic!("{}: expected corrupt, got {other:?}", path.display()),
            }
        }

        // A well-formed safetensors file whose tensors disagree with its own metadata.
        let mut map = m.to_map();
        map.insert("dict_size".into(), "32".into());
        let raw: Vec<u8> = vec![0u8; 64 * 16 * 4];
        let view = TensorView::new(Dtype::F32, vec![64, 16], &raw).unwrap();
        let small = vec![0u8; 64 * 4];
        let b_view = TensorView::new(Dtype::F32, vec![64], &small).unwrap();
        let d_raw = vec![0u8; 16 * 4];
        let d_view = TensorView::new(Dtype::F32, vec![16], &d_raw).unwrap();
        let bytes = safetensors::serialize(
            [
                ("w_enc", view.clone()),
                ("b_enc", b_view),
                ("w_dec", view),
                ("b_dec", d_view),
            ],
            Some(map.into_iter().collect()),
        )
        .unwrap();
        let inconsistent = dir.path().join("inconsistent.safetensors");
        fs::write(&inconsistent, bytes).unwrap();
        assert!(matches!(
            load_sae(&inconsistent, &expect()),
            Err(SaeError::Mismatch {
                field: "w_enc.shape",
                ..
            })
        ));

        // A safetensors file from elsewhere: no s3mem metadata.
        let foreign = dir.path().join("foreign.safetensors");
        let bytes = safetensors::serialize(
            [(
                "w",
                TensorView::new(Dtype::F32, vec![4], &small[..16]).unwrap(),
            )],
            None,
        )
        .unwrap();
        fs::write(&foreign, bytes).unwrap();
        assert!(matches!(
            load_sae(&foreign, &expect()),
            Err(SaeError::Corrupt { .. })
        ));

        assert!(matches!(
            load_sae(&dir.path().join("missing.safetensors"), &expect()),
            Err(SaeError::Io { .. })
        ));
    }

    #[test]
    fn a_set_finds_the_sae_of_each_layer_and_head_and_keeps_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let shared: Vec<(SaeMeta, TopKSae)> = [5usize, 2]
            .iter()
            .map(|&layer| {
                let sae = random_sae(16, 64, 4, layer as u64);
                (meta(&sae, layer, HeadMode::Shared), sae)
            })
            .collect();
        let saved = SaeSet::save(dir.path(), shared.clone()).unwrap();
        let set = SaeSet::load(dir.path(), &expect()).unwrap();
        assert_eq!(set.digest(), saved.digest());
        assert_eq!(set.digest().len(), 64);
        assert_eq!(set.layers(), vec![2, 5]);
        let x = probe(16);
        for kv_head in 0..3 {
            assert_eq!(
                set.sae_for(5, kv_head).unwrap().encode(&x).unwrap(),
                shared[0].1.encode(&x).unwrap()
            );
        }
        assert!(matches!(
            set.sae_for(3, 0),
            Err(SaeError::NotFound {
                layer: 3,
                kv_head: 0
            })
        ));

        // Saving the same members again gives the same digest; changing one changes it.
        let again = SaeSet::save(dir.path(), shared.clone()).unwrap();
        assert_eq!(again.digest(), set.digest());
        let mut changed = shared.clone();
        changed[1].1 = random_sae(16, 64, 4, 99);
        let changed = SaeSet::save(&dir.path().join("other"), changed).unwrap();
        assert_ne!(changed.digest(), set.digest());

        // Per-head sets pick the head's own SAE.
        let per_head: Vec<(SaeMeta, TopKSae)> = (0..3)
            .map(|h| {
                let sae = random_sae(16, 64, 4, 10 + h as u64);
                (meta(&sae, 4, HeadMode::Head(h)), sae)
            })
            .collect();
        let heads_dir = dir.path().join("heads");
        SaeSet::save(&heads_dir, per_head.clone()).unwrap();
        let heads = SaeSet::load(&heads_dir, &expect()).unwrap();
        assert_eq!(
            heads.sae_for(4, 1).unwrap().encode(&x).unwrap(),
            per_head[1].1.encode(&x).unwrap()
        );
        assert!(heads.sae_for(4, 3).is_err());
        assert!(heads.retrieval_heads().is_empty());
    }

    #[test]
    fn a_set_records_its_retrieval_heads_in_manifest_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        // Only KV heads 0 and 2 of layer 4 have SAEs: the set of heads 4.1 and 4.7 (3 query
        // heads per KV head).
        let members: Vec<(SaeMeta, TopKSae)> = [0usize, 2]
            .iter()
            .map(|&h| {
                let sae = random_sae(16, 64, 4, 20 + h as u64);
                (meta(&sae, 4, HeadMode::Head(h)), sae)
            })
            .collect();
        let h = |s: &str| s.parse::<RetrievalHead>().unwrap();
        let plain = SaeSet::save(&dir.path().join("plain"), members.clone()).unwrap();
        let saved = SaeSet::save_for_heads(
            &dir.path().join("heads"),
            members.clone(),
            vec![h("4.7"), h("4.1"), h("4.7")],
        )
        .unwrap();
        assert_eq!(saved.retrieval_heads(), &[h("4.1"), h("4.7")]);
        // The same SAEs for other heads are another set.
        assert_ne!(saved.digest(), plain.digest());
        let loaded = SaeSet::load(&dir.path().join("heads"), &expect()).unwrap();
        assert_eq!(loaded.digest(), saved.digest());
        assert_eq!(loaded.retrieval_heads(), saved.retrieval_heads());
        assert!(
            loaded.sae_for(4, 0).is_ok()
                && loaded.sae_for(4, 2).is_ok()
                && loaded.sae_for(4, 1).is_err()
        );
        let manifest = fs::read_to_string(dir.path().join("heads").join(MANIFEST_FILE)).unwrap();
        assert!(manifest.contains("\"4.1\""), "{manifest}");
        // A set without heads writes no field (its manifest and digest are as before).
        let manifest = fs::read_to_string(dir.path().join("plain").join(MANIFEST_FILE)).unwrap();
        assert!(!manifest.contains("retrieval_heads"), "{manifest}");

        // Editing the heads in the manifest breaks the digest; a head at a layer without an
        // SAE is refused when saving.
        let path = dir.path().join("heads").join(MANIFEST_FILE);
        fs::write(
            &path,
            fs::read_to_string(&path).unwrap().replace("4.7", "4.8"),
        )
        .unwrap();
        assert!(matches!(
            SaeSet::load(&dir.path().join("heads"), &expect()),
            Err(SaeError::Corrupt { .. })
        ));
        assert!(matches!(
            SaeSet::save_for_heads(&dir.path().join("bad"), members, vec![h("5.0")]),
            Err(SaeError::InvalidConfig(_))
        ));
    }

    #[test]
    fn sets_refuse_mixtures_other_models_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let a = random_sae(16, 64, 4, 1);
        let b = random_sae(16, 64, 4, 2);
        let mixed = vec![
            (meta(&a, 1, HeadMode::Shared), a.clone()),
            (meta(&b, 1, HeadMode::Head(0)), b.clone()),
        ];
        assert!(matches!(
            SaeSet::save(dir.path(), mixed),
            Err(SaeError::InvalidConfig(_))
        ));
        let twice = vec![
            (meta(&a, 1, HeadMode::Shared), a.clone()),
            (meta(&b, 1, HeadMode::Shared), b.clone()),
        ];
        assert!(SaeSet::save(dir.path(), twice).is_err());
        assert!(SaeSet::save(dir.path(), Vec::new()).is_err());

        let set_dir = dir.path().join("set");
        SaeSet::save(&set_dir, vec![(meta(&a, 1, HeadMode::Shared), a.clone())]).unwrap();
        assert!(matches!(
            SaeSet::load(&set_dir, &SaeExpectation::new("f".repeat(64), 16)),
            Err(SaeError::Mismatch {
                field: "model_fingerprint",
                ..
            })
        ));
        let member = set_dir.join("layer-001.safetensors");
        let mut bytes = fs::read(&member).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&member, bytes).unwrap();
        match SaeSet::load(&set_dir, &expect()) {
            Err(SaeError::Corrupt { path, reason }) => {
                assert_eq!(path, member);
                assert!(reason.contains("sha256"), "{reason}");
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
        fs::write(set_dir.join(MANIFEST_FILE), b"{ not json").unwrap();
        assert!(matches!(
            SaeSet::load(&set_dir, &expect()),
            Err(SaeError::Corrupt { .. })
        ));
    }
}
