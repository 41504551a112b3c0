//! Model resolution and fetch verification, without the network.

use s3mem::model::{fetch, ModelError};

#[test]
fn unknown_names_list_the_known_models() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetch::resolve("gpt-17", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::UnknownModel { .. }));
    assert!(err.to_string().contains("smollm2-135m"), "{err}");
}

#[test]
fn a_missing_model_is_not_fetched_when_fetching_is_off() {
    let dir = tempfile::tempdir().unwrap();
    // A leftover partial download must never be mistaken for the model.
    let known = fetch::known("smollm2-135m").unwrap();
    std::fs::write(
        dir.path().join(format!("{}.partial", known.file_name)),
        b"half",
    )
    .unwrap();
    let err = fetch::resolve("smollm2-135m", dir.path(), false).unwrap_err();
    assert!(
        err.to_string().contains("s3mem model fetch smollm2-135m"),
        "{err}"
    );
}

#[test]
fn a_truncated_or_altered_file_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let known = fetch::known("smollm2-135m").unwrap();
    let path = dir.path().join(known.file_name);
    std::fs::write(&path, b"truncated").unwrap();
    let err = fetch::resolve("smollm2-135m", dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelError::Verification { .. }), "{err}");
    assert!(err.to_string().contains("size 9"), "{err}");

    // Right size, wrong bytes: only the hash can tell.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(known.size).unwrap();
    let err = fetch::verify(known, &path).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn a_path_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.gguf");
    std::fs::write(&path, b"x").unwrap();
    let got = fetch::resolve(path.to_str().unwrap(), dir.path(), false).unwrap();
    assert_eq!(got, path);
}

#[test]
fn the_models_folder_follows_the_override_order() {
    let explicit = std::path::Path::new("/tmp/explicit-models");
    assert_eq!(fetch::models_dir(Some(explicit)), explicit);
}
