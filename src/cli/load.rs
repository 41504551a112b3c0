//! Loading what commands run on: the model a `--model` names and the SAE set a `--sae` names.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::args::{AnswerArgs, ModelArgs};
use crate::embed::Embedder;
use crate::index::Index;
use crate::model::{fetch, Model, ModelError};
use crate::sae::{SaeExpectation, SaeSet};

/// Loads the model `args` names (fetching a known model if missing) on its device.
pub fn load(args: &ModelArgs, models: &Path) -> Result<Model> {
    let path = fetch::resolve(&args.model, models, true)?;
    let device = args.device.open()?;
    let t0 = Instant::now();
    let loaded = match args.weights {
        Some(w) => Model::load(&path, w, &device).map(|m| (m, w)),
        None => Model::load_default(&path, &device),
    };
    let (mut model, weights) = loaded.with_context(|| format!("loading {}", path.display()))?;
    if let Some(b) = args.device.scan_batch {
        model.set_scan_batch(b);
    }
    tracing::info!(
        path = %path.display(),
        ms = t0.elapsed().as_millis() as u64,
        ?weights,
        device = %args.device.device,
        scan_batch = model.scan_batch(),
        "model loaded"
    );
    Ok(model)
}

/// Loads the SAE set at `spec` (a folder, or `default` for the model's embedded set).
pub fn load_sae_set(model: &Model, spec: &str, models: &Path) -> Result<SaeSet> {
    let dir = if spec == "default" {
        crate::sae::defaults::default_set_dir(model, models)?
            .with_context(|| format!("no default SAE set for {}", model.path().display()))?
    } else {
        std::path::PathBuf::from(spec)
    };
    let expect = SaeExpectation::new(model.fingerprint()?, model.config().head_dim);
    SaeSet::load(&dir, &expect).with_context(|| format!("loading the SAE set {}", dir.display()))
}

/// Loads the reader `answer` names on the index model's device and weight format, or `None`
/// when it is the index model itself (which then answers).
pub fn load_reader(answer: &AnswerArgs, index: &ModelArgs, models: &Path) -> Result<Option<Model>> {
    load_second(answer.answer_model.as_deref(), index, models)
}

/// Loads a second model (`spec`: a known name or a GGUF path) on the index model's device and
/// weight format, or `None` when there is none or it is the index model itself.
pub fn load_second(spec: Option<&str>, index: &ModelArgs, models: &Path) -> Result<Option<Model>> {
    match spec {
        Some(spec) if spec != index.model => {
            let args = ModelArgs {
                model: spec.to_string(),
                ..index.clone()
            };
            load(&args, models).map(Some)
        }
        _ => Ok(None),
    }
}

/// Loads the embedding model `args` names on the index model's device: `None` for `none`, or
/// for the default `minilm` when it has not been fetched (the dense methods are then refused,
/// and nothing is fetched: only `model fetch` uses the network); an explicit folder must load.
pub fn load_embedder(args: &ModelArgs, models: &Path) -> Result<Option<Embedder>> {
    let spec = args.embedder.as_str();
    if spec == "none" {
        return Ok(None);
    }
    let dir = match fetch::resolve_folder(spec, models, false) {
        Ok(dir) => dir,
        Err(ModelError::Fetch { .. }) if spec == "minilm" => {
            tracing::info!("no embedding model (run `s3mem model fetch minilm` for dense and rag)");
            return Ok(None);
        }
        Err(e) => return Err(e).context("locating the embedding model"),
    };
    let device = args.device.open()?;
    let t0 = Instant::now();
    let embedder = Embedder::load_on(&dir, &device)
        .with_context(|| format!("loading the embedding model {}", dir.display()))?;
    tracing::info!(
        path = %dir.display(),
        ms = t0.elapsed().as_millis() as u64,
        fingerprint = embedder.fingerprint(),
        device = %args.device.device,
        "embedding model loaded"
    );
    Ok(Some(embedder))
}

/// Embeds the passages of every document of `index` stored without vectors from `embedder`
/// (the migration of stores made before the dense methods), with a progress bar.
pub fn embed_missing(embedder: Option<&Embedder>, index: &mut Index) -> Result<()> {
    let Some(embedder) = embedder else {
        return Ok(());
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let n = crate::ingest::vectors::backfill(embedder, index, &mut |done, total| {
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_message("embedding stored passages");
            b
        });
        b.set_position(done as u64);
        true
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if n > 0 {
        eprintln!("embedded the passages of {n} stored documents");
    }
    Ok(())
}
