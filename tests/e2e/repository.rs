//! A whole model repository in one `envpack pack` call: four Triton models, three of them
//! sharing the repository's environment file, one with its own. The shared environment is
//! solved, installed and packed once (the `--json` report says so) into one tarball at the
//! repository root that the three configs point at; the distinct one is built alongside, in
//! its model's folder. Triton loads all four and extracts two environments. The folder form
//! goes beside the repository; `--copy-per-model` keeps a copy in every model folder.

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
            name: "repository::shared_folder_beside_the_repository_is_used_in_place",
            needs: &[Needs::Channel, Needs::Servers],
            run: shared_folder_beside_the_repository_is_used_in_place,
        },
        Case {
            name: "repository::copy_per_model_keeps_a_tarball_in_every_model_folder",
            needs: &[Needs::Channel],
            run: copy_per_model_keeps_a_tarball_in_every_model_folder,
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

    // The dry run refuses what the real run would (the solve already knows mlserver is not
    // in the environment), and writes nothing.
    let out = support::run_err(&mut pack(&["--dry-run"]));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        err.contains("mlserver is not installed"),
        format!("dry run stderr: {err}"),
    )?;
    // Without the checks it solves the shared environment once, for both models.
    let out = run_ok(&mut pack(&["--dry-run", "--no-check", "--json"]));
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
            && root_tarballs(&repo).len() == 1
            && !repo.join("mls/environment.tar.gz").exists(),
        format!("--no-check: {report}"),
    )?;
    // Without --write-config the configs are left alone, with a warning that gives the fix.
    let err = String::from_utf8_lossy(&with_check_off.stderr);
    ensure(
        std::fs::read_to_string(mls.join("model-settings.json"))? == settings,
        "model-settings.json changed",
    )?;
    ensure(
        err.contains("\"environment_tarball\": \"../triton-model-"),
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

/// The `*.tar.gz` files at the top of `dir`.
fn root_tarballs(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    out.sort();
    out
}

/// Three models on the repository's environment file, one with its own.
fn four_models(repo: &std::path::Path) -> Result<(), Failed> {
    for name in ["a_shared", "b_shared", "c_shared", "d_own"] {
        write_model(repo, name);
    }
    std::fs::write(repo.join("environment.yml"), TRITON_ENV)?;
    std::fs::write(
        repo.join("d_own/environment.yml"),
        format!("{TRITON_ENV}  - six\n"),
    )?;
    Ok(())
}

// One story: pack, check the layout and the report, serve.
#[allow(clippy::too_many_lines)]
fn shared_environment_is_built_once_and_every_model_loads() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    four_models(&repo)?;

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
    ensure(
        models.len() == 4,
        format!("{} models: {report}", models.len()),
    )?;
    let (a, b, d) = (row("a_shared"), row("b_shared"), row("d_own"));
    // One solve and one install for the shared environment, used by b and c as it is.
    ensure(
        a["solved"] == true && a["installed"] == true && a["reused_from"].is_null(),
        format!("a_shared: {a}"),
    )?;
    ensure(
        b["solved"] == false && b["installed"] == false && b["reused_from"] == "a_shared",
        format!("b_shared: {b}"),
    )?;
    ensure(
        d["solved"] == true && d["installed"] == true,
        format!("d_own: {d}"),
    )?;
    // The repository holds two tarballs: the shared one at its root, d's in d's folder.
    let shared = root_tarballs(&repo);
    ensure(shared.len() == 1, format!("at the root: {shared:?}"))?;
    ensure(
        shared[0].starts_with("triton-model-"),
        format!("named from the environment: {shared:?}"),
    )?;
    let all: Vec<String> = files(&repo)
        .into_iter()
        .filter(|f| f.ends_with(".tar.gz"))
        .collect();
    let mut expected = vec![shared[0].clone(), "d_own/model-conda.tar.gz".to_string()];
    expected.sort();
    ensure(all == expected, format!("tarballs: {all:?}"))?;
    for m in ["a_shared", "b_shared", "c_shared"] {
        let config = std::fs::read_to_string(repo.join(m).join("config.pbtxt"))?;
        ensure(
            config.contains(&format!("$$TRITON_MODEL_DIRECTORY/../{}", shared[0])),
            format!("{m}/config.pbtxt: {config}"),
        )?;
        ensure(
            row(m)["output"].as_str() == repo.join(&shared[0]).to_str(),
            format!("{m}: {}", row(m)),
        )?;
    }
    let envs = report["environments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure(envs.len() == 2, format!("environments: {report}"))?;
    let shared_env = envs
        .iter()
        .find(|e| e["shared"] == true)
        .cloned()
        .unwrap_or_default();
    ensure(
        shared_env["models"] == serde_json::json!(["a_shared", "b_shared", "c_shared"]),
        format!("shared environment: {shared_env}"),
    )?;
    let size = report["size"].as_u64().unwrap_or(0);
    let copies = report["copy_per_model_size"].as_u64().unwrap_or(0);
    ensure(
        size > 0 && copies == size + 2 * shared_env["size"].as_u64().unwrap_or(0),
        format!("size {size}, copy per model {copies}"),
    )?;

    // Triton loads all four, extracting each environment once: the python backend extracts
    // into one folder per server, a subfolder per distinct archive.
    let triton = Triton::start(&servers, &repo, &dir.path().join("triton.log"))?;
    let mut prefixes = std::collections::BTreeMap::new();
    for m in ["a_shared", "b_shared", "c_shared", "d_own"] {
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
        prefixes.insert(m, prefix);
    }
    ensure(
        prefixes["a_shared"] == prefixes["b_shared"]
            && prefixes["a_shared"] == prefixes["c_shared"]
            && prefixes["a_shared"] != prefixes["d_own"],
        format!("the models ran from {prefixes:?}"),
    )?;
    let extracted: Vec<std::path::PathBuf> = triton
        .extraction_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    ensure(
        extracted.len() == 2,
        format!("Triton extracted {extracted:?}"),
    )?;
    triton.stop()?;
    Ok(())
}

fn shared_folder_beside_the_repository_is_used_in_place() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    four_models(&repo)?;
    let pack = |extra: &[&str]| {
        let mut c = envpack();
        c.arg("pack")
            .arg(&repo)
            .args(["--write-config", "--format", "dir", "-q"])
            .args(["--mirror", &mirror_arg()])
            .args(extra);
        c
    };
    // Inside the repository Triton would take the folder for a model: refused, nothing written.
    let before = files(&repo);
    let err = support::run_err(&mut pack(&[
        "--env-dir",
        repo.join("envs").to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&err.stderr);
    ensure(
        err.contains("inside the model repository"),
        format!("stderr: {err}"),
    )?;
    ensure(files(&repo) == before, "a refused run wrote")?;

    run_ok(&mut pack(&[]));
    let beside: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("triton-model-"))
        .collect();
    ensure(
        beside.len() == 1,
        format!("beside the repository: {beside:?}"),
    )?;
    ensure(
        repo.join("d_own/model-conda/bin/python").exists(),
        "d_own keeps its own folder",
    )?;
    let config = std::fs::read_to_string(repo.join("a_shared/config.pbtxt"))?;
    ensure(
        config.contains(&format!("$$TRITON_MODEL_DIRECTORY/../../{}", beside[0])),
        format!("config: {config}"),
    )?;
    // Folders are used in place: each model runs from the folder its config names.
    let shared = dir.path().canonicalize()?.join(&beside[0]);
    let own = repo.canonicalize()?.join("d_own/model-conda");
    let triton = Triton::start(&servers, &repo, &dir.path().join("triton.log"))?;
    for (m, env) in [
        ("a_shared", &shared),
        ("b_shared", &shared),
        ("c_shared", &shared),
        ("d_own", &own),
    ] {
        triton.wait_model_ready(m, Duration::from_mins(3))?;
        let info = infer_info(&triton, m)?;
        ran_from(&info, env)?;
    }
    triton.stop()?;
    Ok(())
}

fn copy_per_model_keeps_a_tarball_in_every_model_folder() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    four_models(&repo)?;
    run_ok(
        envpack()
            .arg("pack")
            .arg(&repo)
            .args(["--write-config", "--copy-per-model", "-q"])
            .args(["--mirror", &mirror_arg()]),
    );
    ensure(root_tarballs(&repo).is_empty(), "nothing at the root")?;
    let tarball = |m: &str| repo.join(m).join("model-conda.tar.gz");
    let a = std::fs::read(tarball("a_shared"))?;
    ensure(
        a == std::fs::read(tarball("b_shared"))? && a == std::fs::read(tarball("c_shared"))?,
        "the copies differ",
    )?;
    ensure(tarball("d_own").is_file(), "d_own")?;
    let config = std::fs::read_to_string(repo.join("b_shared/config.pbtxt"))?;
    ensure(
        config.contains("$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz"),
        format!("config: {config}"),
    )?;
    // Every copy works on its own.
    let extracted = tempfile::tempdir()?;
    support::extract(&tarball("c_shared"), extracted.path());
    let version = sh(
        "bin/python -c 'import numpy; print(numpy.__version__)'",
        extracted.path(),
    );
    ensure(version.starts_with("1.26"), format!("numpy {version}"))?;
    Ok(())
}
