//! `s3mem serve` settings through the binary: variables, the config file and flags merged in
//! that order of precedence and checked before anything is opened (`--print-config`).

use std::path::Path;
use std::process::Output;

use s3mem::service::config::flat_defaults;
use s3mem::service::ServeConfig;

use crate::common::s3mem;

/// Runs `s3mem serve --print-config` with `args`, `vars` and, when given, a config file.
fn print_config(args: &[&str], vars: &[(String, String)], file: Option<&Path>) -> Output {
    let mut cmd = s3mem();
    cmd.args(["serve", "--print-config"]).args(args);
    // Settings of the machine running the tests must not leak in.
    for key in flat_defaults().keys() {
        cmd.env_remove(format!("S3MEM_{}", key.to_uppercase()));
    }
    cmd.env_remove("S3MEM_CONFIG");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some(file) = file {
        cmd.arg("--config").arg(file);
    }
    cmd.output().unwrap()
}

fn merged(out: &Output) -> ServeConfig {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

#[test]
fn every_setting_is_reachable_by_its_variable() {
    let mut vars = Vec::new();
    let mut expected = serde_json::Map::new();
    for (key, default) in flat_defaults() {
        let value = match (key.as_str(), &default) {
            ("listen", _) => "0.0.0.0:7070".to_string(),
            ("metrics_listen", _) => "127.0.0.1:9099".to_string(),
            ("answer_mode", _) => "quote".to_string(),
            ("abstain_signal", _) => "support".to_string(),
            ("default_method", _) => "rerank".to_string(),
            // Sorted already: a head set is written sorted.
            ("heads", _) => "7.7,18.7".to_string(),
            ("rerank_first_stage", _) => "1.5".to_string(),
            (_, serde_json::Value::Null) => format!("/etc/s3mem/{key}"),
            // A list variable is comma-separated.
            (_, serde_json::Value::Array(_)) => format!("/etc/s3mem/{key}.gguf,b"),
            // Twice each default stays valid (a default stays below its maximum).
            (_, n) => (n.as_u64().unwrap() * 2).to_string(),
        };
        expected.insert(
            key.clone(),
            match default {
                serde_json::Value::Number(n) if n.is_f64() => value.parse::<f64>().unwrap().into(),
                serde_json::Value::Number(_) => value.parse::<u64>().unwrap().into(),
                serde_json::Value::Array(_) => value.split(',').collect::<Vec<_>>().into(),
                _ => value.clone().into(),
            },
        );
        vars.push((format!("S3MEM_{}", key.to_uppercase()), value));
    }
    let config = merged(&print_config(&[], &vars, None));
    let mut got = serde_json::Map::new();
    for (key, value) in serde_json::to_value(&config).unwrap().as_object().unwrap() {
        match value.as_object() {
            Some(section) => got.extend(section.clone()),
            None => {
                got.insert(key.clone(), value.clone());
            }
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_budget = 3000\nmax_new_tokens = 500\n[queues]\ningest_workers = 2\n",
    )
    .unwrap();
    let var = vec![("S3MEM_MAX_BUDGET".to_string(), "4000".to_string())];
    let c = merged(&print_config(&[], &[], Some(&file)));
    assert_eq!((c.limits.max_budget, c.limits.max_new_tokens), (3000, 500));
    assert_eq!(c.queues.ingest_workers, 2);
    assert_eq!(c.limits.max_question_bytes, 4096, "unset keeps the default");
    let c = merged(&print_config(&[], &var, Some(&file)));
    assert_eq!(c.limits.max_budget, 4000);
    let c = merged(&print_config(&["--max-budget", "5000"], &var, Some(&file)));
    assert_eq!((c.limits.max_budget, c.limits.max_new_tokens), (5000, 500));
    assert_eq!(
        merged(&print_config(&[], &[], None)),
        ServeConfig::default()
    );
}

#[test]
fn a_config_file_with_a_default_above_its_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, "[limits]\ndefault_budget = 10000\n").unwrap();
    // No data dir and no model: the settings are refused before either is looked at.
    let out = print_config(&[], &[], Some(&file));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "invalid daemon setting default_budget: 10000 is not between 1 and max_budget (8192)"
        ),
        "{stderr}"
    );
}
