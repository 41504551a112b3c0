//! Loading what commands run on: the model a `--model` names and the SAE set a `--sae` names.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::args::{AnswerArgs, ModelArgs};
use crate::model::{fetch, Model};
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
    match &answer.answer_model {
        Some(spec) if *spec != index.model => {
            let args = ModelArgs {
                model: spec.clone(),
                ..index.clone()
            };
            load(&args, models).map(Some)
        }
        _ => Ok(None),
    }
}
