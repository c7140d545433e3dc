//! A whole model repository in one `envpack pack` call: three Triton models, two of them
//! sharing the repository's environment file, one with its own. The shared environment is
//! solved, installed and packed once (the `--json` report says so) and copied; the distinct
//! one is built alongside. Triton then loads all three, and every tarball works on its own.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::Value;

use crate::servers::{ServersDir, Triton};
use crate::support::{self, envpack, run_ok, sh};
use crate::triton::{TRITON_ENV, ensure, infer_info, ran_from, write_model};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "repository::shared_environment_is_built_once_and_every_model_loads",
        needs: &[Needs::Channel, Needs::Servers],
        run: shared_environment_is_built_once_and_every_model_loads,
    }]
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

    let t = Instant::now();
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&repo)
            .args(["--write-config", "--json", "-q", "--parallel", "2"])
            .args(["--mirror", &mirror_arg()]),
    );
    eprintln!("repository packed in {:.1} s", t.elapsed().as_secs_f64());
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
        let x = tempfile::tempdir()?;
        support::extract(&tarball(m), x.path());
        let v = sh(
            "bin/python -c 'import numpy; print(numpy.__version__)'",
            x.path(),
        );
        ensure(v.starts_with("1.26"), format!("{m}: numpy {v}"))?;
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
