//! A whole model repository in one `envpack pack` call: three Triton models, two of them
//! sharing the repository's environment file, one with its own. The shared environment is
//! solved, installed and packed once (the `--json` report says so) and copied; the distinct
//! one is built alongside. Triton then loads all three, and every tarball works on its own.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::Value;

use crate::servers::{ServersDir, Triton};
use crate::support::{self, Kind, ensure, envpack, run_ok, sh};
use crate::triton::{TRITON_ENV, infer_info, ran_from, write_model};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "repository::shared_environment_is_built_once_and_every_model_loads",
            needs: &[Needs::Channel, Needs::Servers],
            run: shared_environment_is_built_once_and_every_model_loads,
        },
        Case {
            name: "repository::failed_checks_and_bad_configs_write_nothing",
            needs: &[Needs::Channel],
            run: failed_checks_and_bad_configs_write_nothing,
        },
    ]
}

/// Every file and symlink below `dir`, relative, sorted.
fn files(dir: &std::path::Path) -> Vec<String> {
    support::tree(dir)
        .into_iter()
        .filter(|e| e.kind != Kind::Dir)
        .map(|e| e.rel)
        .collect()
}

fn failed_checks_and_bad_configs_write_nothing() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    write_model(&repo, "tri");
    std::fs::write(repo.join("environment.yml"), TRITON_ENV)?;
    let mls = repo.join("mls");
    std::fs::create_dir_all(&mls)?;
    let settings = "{\n  \"name\": \"mls\",\n  \"implementation\": \"model.M\"\n}\n";
    std::fs::write(mls.join("model-settings.json"), settings)?;
    let before = files(&repo);
    let pack = |extra: &[&str]| {
        let mut c = envpack();
        c.arg("pack")
            .arg(&repo)
            .args(["--no-progress", "--mirror", &mirror_arg()])
            .args(extra);
        c
    };

    // The dry run solves the shared environment once, for both models, and writes nothing.
    let out = run_ok(&mut pack(&["--dry-run", "--json"]));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let solved: Vec<bool> = report["models"]
        .as_array()
        .map(|m| m.iter().map(|m| m["solved"] == true).collect())
        .unwrap_or_default();
    ensure(solved == [true, false], format!("dry run: {report}"))?;
    ensure(files(&repo) == before, "the dry run wrote")?;

    // The MLServer model's environment has no mlserver: an error with the fix, found in the
    // staging prefix, before any tarball or config is written.
    let out = support::run_err(&mut pack(&["--write-config"]));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        err.contains("mlserver is not installed") && err.contains("hint: add `mlserver`"),
        format!("stderr: {err}"),
    )?;
    ensure(files(&repo) == before, format!("wrote {:?}", files(&repo)))?;
    let with_check_off = run_ok(&mut pack(&["--no-check", "--json"]));
    let report: Value = serde_json::from_slice(&with_check_off.stdout)?;
    ensure(
        report["models"].as_array().map(Vec::len) == Some(2)
            && repo.join("mls/environment.tar.gz").is_file()
            && repo.join("tri/model-conda.tar.gz").is_file(),
        format!("--no-check: {report}"),
    )?;
    // Without --write-config the configs are left alone, with a warning that gives the fix.
    let err = String::from_utf8_lossy(&with_check_off.stderr);
    ensure(
        std::fs::read_to_string(mls.join("model-settings.json"))? == settings,
        "model-settings.json changed",
    )?;
    ensure(
        err.contains("\"environment_tarball\": \"./environment.tar.gz\""),
        format!("stderr: {err}"),
    )?;

    // A config.pbtxt that does not parse stops --write-config before any work, naming the line.
    std::fs::write(
        repo.join("tri/config.pbtxt"),
        "name: \"tri\"\nparameters {\n  key: }\n",
    )?;
    let out = support::run_err(&mut pack(&["--write-config", "--force"]));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        err.contains("config.pbtxt") && err.contains("line 3"),
        format!("stderr: {err}"),
    )?;
    Ok(())
}

fn shared_environment_is_built_once_and_every_model_loads() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    for name in ["a_shared", "b_shared", "c_own"] {
        write_model(&repo, name);
    }
    std::fs::write(repo.join("environment.yml"), TRITON_ENV)?;
    std::fs::write(
        repo.join("c_own/environment.yml"),
        format!("{TRITON_ENV}  - six\n"),
    )?;

    let started = Instant::now();
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&repo)
            .args(["--write-config", "--json", "-q", "--parallel", "2"])
            .args(["--mirror", &mirror_arg()]),
    );
    eprintln!(
        "repository packed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let models = report["models"].as_array().cloned().unwrap_or_default();
    let row = |name: &str| {
        models
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let (a, b, c) = (row("a_shared"), row("b_shared"), row("c_own"));
    ensure(
        models.len() == 3,
        format!("{} models: {report}", models.len()),
    )?;
    // One solve and one install for the shared environment, the tarball copied to b.
    ensure(
        a["solved"] == true && a["installed"] == true && a["reused_from"].is_null(),
        format!("a_shared: {a}"),
    )?;
    ensure(
        b["solved"] == false && b["installed"] == false && b["reused_from"] == "a_shared",
        format!("b_shared: {b}"),
    )?;
    ensure(
        c["solved"] == true && c["installed"] == true,
        format!("c_own: {c}"),
    )?;
    ensure(
        a["environment"] == b["environment"] && a["environment"] != c["environment"],
        "environments",
    )?;
    ensure(
        report["environments"].as_array().map(Vec::len) == Some(2),
        "two environments packed",
    )?;
    let tarball = |m: &str| repo.join(m).join("model-conda.tar.gz");
    ensure(
        std::fs::read(tarball("a_shared"))? == std::fs::read(tarball("b_shared"))?,
        "the copy differs",
    )?;

    // Every tarball works on its own.
    for m in ["a_shared", "b_shared", "c_own"] {
        let extracted = tempfile::tempdir()?;
        support::extract(&tarball(m), extracted.path());
        let version = sh(
            "bin/python -c 'import numpy; print(numpy.__version__)'",
            extracted.path(),
        );
        ensure(version.starts_with("1.26"), format!("{m}: numpy {version}"))?;
    }
    let six = tempfile::tempdir()?;
    support::extract(&tarball("c_own"), six.path());
    sh("bin/python -c 'import six'", six.path());

    // And Triton loads all three from their configs.
    let triton = Triton::start(&servers, &repo, &dir.path().join("triton.log"))?;
    for m in ["a_shared", "b_shared", "c_own"] {
        triton.wait_model_ready(m, Duration::from_mins(3))?;
        let info = infer_info(&triton, m)?;
        let prefix = std::path::PathBuf::from(info["prefix"].as_str().unwrap_or_default());
        ensure(
            prefix
                .to_string_lossy()
                .starts_with(crate::servers::TRITON_EXTRACT_PREFIX),
            format!("{m} ran from {}", prefix.display()),
        )?;
        ran_from(&info, &prefix)?;
    }
    triton.stop()?;
    Ok(())
}
