//! Models and repositories, hermetic: where a model's environment file is found (the layouts
//! of the Triton and MLServer templates), the shared environment at a repository's root and
//! `--copy-per-model`, and the flags that are refused before any work.

use std::path::Path;

use crate::support::fixture::Fixture;
use crate::support::{envpack, run_err, run_ok, stderr};

const TRITON_CONFIG: &str = "name: \"m\"\nbackend: \"python\"\n";

/// A Triton model folder with a config.
fn triton_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), TRITON_CONFIG).unwrap();
}

/// `envpack pack PATH` from `cwd`, against the fixture channel, without the server checks
/// (the fixture's python is a fake).
fn pack_in(f: &Fixture, cwd: &Path, path: &str, extra: &[&str]) -> std::process::Command {
    let mut c = envpack();
    c.current_dir(cwd)
        .arg("pack")
        .arg(path)
        .arg("--channel-alias")
        .arg(format!("file://{}/channels/", f.path().display()))
        .args(["--platform", "linux-64", "--no-check", "-q"])
        .args(extra);
    c
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_template_layouts_find_the_environment_file_beside_the_models_folder() {
    let f = Fixture::new();
    let project = f.path().join("project");
    let src = project.join("src");
    triton_model(&src.join("models/modelA"));
    triton_model(&src.join("models/modelB"));
    std::fs::create_dir_all(project.join(".git")).unwrap();
    std::fs::copy(
        f.path().join("environment.yml"),
        src.join("environment.yml"),
    )
    .unwrap();
    let expected = src.canonicalize().unwrap().join("environment.yml");
    for (cwd, path) in [
        (&project, "src/models/modelA"),
        (&src, "models/modelA"),
        (&src.join("models"), "."),
    ] {
        let out = run_ok(&mut pack_in(&f, cwd, path, &["--dry-run", "--json"]));
        let report = json(&out);
        for m in report["models"].as_array().unwrap() {
            assert_eq!(
                m["environment_file"],
                serde_json::json!(expected),
                "from {} with {path}: {report}",
                cwd.display()
            );
        }
        // Which file was used is said.
        assert!(
            stderr(&out).contains(&format!("uses {}", expected.display())),
            "{}",
            stderr(&out)
        );
    }
    // Without version control, the walk stops at the folder the command runs in.
    std::fs::remove_dir(project.join(".git")).unwrap();
    let err = run_err(&mut pack_in(
        &f,
        &src.join("models"),
        "modelA",
        &["--dry-run"],
    ));
    assert!(
        stderr(&err).contains("no environment file for the model"),
        "{}",
        stderr(&err)
    );
    run_ok(&mut pack_in(&f, &src, "models/modelA", &["--dry-run"]));
}

#[test]
fn pack_without_path_in_a_folder_of_models_says_it_packs_them() {
    let f = Fixture::new();
    let project = f.path().join("project");
    let models = project.join("src/models");
    triton_model(&models.join("modelA"));
    triton_model(&models.join("modelB"));
    std::fs::create_dir_all(project.join(".git")).unwrap();
    std::fs::copy(
        f.path().join("environment.yml"),
        project.join("src/environment.yml"),
    )
    .unwrap();
    let mut c = envpack();
    c.current_dir(&models)
        .arg("pack")
        .arg("--channel-alias")
        .arg(format!("file://{}/channels/", f.path().display()))
        .args(["--platform", "linux-64", "--no-check", "-q", "--dry-run"]);
    let err = stderr(&run_ok(&mut c));
    assert!(
        err.contains("no environment file in ")
            && err.contains("packing the 2 models found below it (modelA, modelB)"),
        "{err}"
    );
    // Named explicitly, it is what the user asked for: no note.
    let err = stderr(&run_ok(&mut pack_in(&f, &models, ".", &["--dry-run"])));
    assert!(!err.contains("found below it"), "{err}");
}

#[test]
fn pack_json_is_one_versioned_schema_for_an_environment_and_for_models() {
    let f = Fixture::new();
    let repo = f.path().join("repo");
    triton_model(&repo.join("m"));
    std::fs::copy(
        f.path().join("environment.yml"),
        repo.join("environment.yml"),
    )
    .unwrap();
    let env = json(&run_ok(&mut pack_in(
        &f,
        f.path(),
        "environment.yml",
        &["--dry-run", "--json"],
    )));
    let models = json(&run_ok(&mut pack_in(
        &f,
        f.path(),
        "repo",
        &["--dry-run", "--json"],
    )));
    assert_eq!(env["version"], 1, "{env}");
    assert_eq!(env["kind"], "environment", "{env}");
    assert_eq!(models["version"], 1, "{models}");
    assert_eq!(models["kind"], "models", "{models}");
    // The fields both kinds share, and an environment's are those of each `environments[]`.
    for doc in [&env, &models] {
        for k in ["notices", "dry_run", "size"] {
            assert!(doc.get(k).is_some(), "no {k} in {doc}");
        }
    }
    let one = models["environments"][0].as_object().unwrap();
    for k in env.as_object().unwrap().keys() {
        assert!(
            matches!(k.as_str(), "version" | "kind") || one.contains_key(k),
            "{k} of an environment is not in a model run's environments[]: {models}"
        );
    }
}

#[test]
fn a_requirements_file_is_an_environment_of_python_and_pip() {
    let f = Fixture::new();
    let project = f.path().join("reqs");
    triton_model(&project.join("models/m"));
    std::fs::write(project.join("requirements.txt"), "six==1.17.0\n").unwrap();
    // The fixture channel has no pip: the plan says what it would install, then stops there.
    let mirror = format!("conda-forge={}", f.channel_dir().display());
    let out = run_err(&mut pack_in(
        &f,
        &project,
        "models/m",
        &["--dry-run", "--python", "3.11", "--mirror", &mirror],
    ));
    let err = stderr(&out);
    assert!(err.contains("pip"), "{err}");
    let bad = run_err(&mut pack_in(&f, &project, "models/m", &["--python", "3"]));
    assert!(
        stderr(&bad).contains("--python takes a version"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn a_repository_writes_a_shared_environment_once_at_its_root() {
    let f = Fixture::new();
    let repo = f.path().join("models");
    for m in ["a", "b"] {
        triton_model(&repo.join(m));
    }
    triton_model(&repo.join("own"));
    std::fs::copy(
        f.path().join("environment.yml"),
        repo.join("environment.yml"),
    )
    .unwrap();
    std::fs::write(
        repo.join("own/environment.yml"),
        "name: own\nchannels: [local]\ndependencies: [python, tool]\n",
    )
    .unwrap();
    let out = run_ok(&mut pack_in(
        &f,
        f.path(),
        "models",
        &["--write-config", "--json"],
    ));
    let report = json(&out);
    let shared: Vec<String> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert!(shared[0].starts_with("hermetic-"), "{shared:?}");
    assert!(!repo.join("a/model-conda.tar.gz").exists());
    assert!(repo.join("own/model-conda.tar.gz").is_file());
    for m in ["a", "b"] {
        let config = std::fs::read_to_string(repo.join(m).join("config.pbtxt")).unwrap();
        assert!(
            config.contains(&format!("$$TRITON_MODEL_DIRECTORY/../{}", shared[0])),
            "{config}"
        );
    }
    let size = std::fs::metadata(repo.join(&shared[0])).unwrap().len();
    let own = std::fs::metadata(repo.join("own/model-conda.tar.gz"))
        .unwrap()
        .len();
    assert_eq!(report["size"], size + own, "{report}");
    assert_eq!(report["copy_per_model_size"], 2 * size + own, "{report}");
    let envs = report["environments"].as_array().unwrap();
    assert!(
        envs.iter()
            .any(|e| e["shared"] == true && e["models"] == serde_json::json!(["a", "b"])),
        "{report}"
    );

    // The copy-per-model layout, on request.
    let copies = f.path().join("copies");
    for m in ["a", "b"] {
        triton_model(&copies.join(m));
    }
    std::fs::copy(
        f.path().join("environment.yml"),
        copies.join("environment.yml"),
    )
    .unwrap();
    run_ok(&mut pack_in(
        &f,
        f.path(),
        "copies",
        &["--copy-per-model", "--write-config"],
    ));
    let a = std::fs::read(copies.join("a/model-conda.tar.gz")).unwrap();
    assert_eq!(
        a,
        std::fs::read(copies.join("b/model-conda.tar.gz")).unwrap()
    );
    let config = std::fs::read_to_string(copies.join("b/config.pbtxt")).unwrap();
    assert!(
        config.contains("$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz"),
        "{config}"
    );
    // Again: every copy is up to date; then a changed environment replaces both stale copies
    // (envpack wrote them) without --force.
    let b_mtime = bytes_and_mtime(&copies.join("b/model-conda.tar.gz"));
    let again = json(&run_ok(&mut pack_in(
        &f,
        f.path(),
        "copies",
        &["--copy-per-model", "--json"],
    )));
    assert!(
        again["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["up_to_date"] == true),
        "{again}"
    );
    assert_eq!(
        bytes_and_mtime(&copies.join("b/model-conda.tar.gz")),
        b_mtime
    );
    std::fs::write(
        copies.join("environment.yml"),
        "name: hermetic\nchannels: [local]\ndependencies: [python, greet]\n",
    )
    .unwrap();
    run_ok(&mut pack_in(&f, f.path(), "copies", &["--copy-per-model"]));
    let a2 = std::fs::read(copies.join("a/model-conda.tar.gz")).unwrap();
    assert_ne!(a2, a);
    assert_eq!(
        a2,
        std::fs::read(copies.join("b/model-conda.tar.gz")).unwrap()
    );
}

#[test]
fn contradicting_flags_are_refused_before_any_work() {
    let f = Fixture::new();
    let env = f.path().join("environment.yml");
    let env = env.to_str().unwrap();
    for (args, message) in [
        (
            vec!["--format", "tar.gz", "-o", "x.tar.zst"],
            "does not match the output name",
        ),
        (
            vec!["--format", "dir", "-o", "x.tar.gz"],
            "does not match the output name",
        ),
        (vec!["--glibc", "abc"], "--glibc takes a version"),
        (vec!["--cuda", "12.x"], "--cuda takes a version"),
        (
            vec!["--copy-per-model"],
            "--copy-per-model applies to models",
        ),
    ] {
        let out = run_err(&mut pack_in(&f, f.path(), env, &args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!f.path().join("x.tar.zst").exists() && !f.path().join("x.tar.gz").exists());
    }
    let out = run_err(envpack().args(["pack", "-p"]).arg(f.path().join("nope")));
    assert!(stderr(&out).contains("no such folder"), "{}", stderr(&out));
}

/// The `.tar.gz` files at the root of `repo`, sorted.
fn root_tarballs(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    names.sort();
    names
}

fn bytes_and_mtime(path: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

#[test]
fn a_second_run_rebuilds_only_the_changed_environment_and_removes_the_stale_one() {
    let f = Fixture::new();
    let project = f.path().join("project");
    let repo = project.join("models");
    for m in ["a", "b", "c", "d"] {
        triton_model(&repo.join(m));
    }
    // a and b: an environment file each, the same environment; c and d: the project's.
    let ab = "name: ab\nchannels: [local]\ndependencies: [python, tool]\n";
    for m in ["a", "b"] {
        std::fs::write(repo.join(m).join("environment.yml"), ab).unwrap();
    }
    let cd = project.join("environment.yml");
    std::fs::write(
        &cd,
        "name: cd\nchannels: [local]\ndependencies: [python, greet]\n",
    )
    .unwrap();
    // Named like a shared environment, but not envpack's: never removed.
    let foreign = repo.join("other-0123abcd.tar.gz");
    std::fs::write(&foreign, b"not an archive").unwrap();
    let pack = |extra: &[&str]| {
        json(&run_ok(&mut pack_in(
            &f,
            &project,
            "models",
            &[&["--write-config", "--json"], extra].concat(),
        )))
    };

    let first = pack(&[]);
    let names = root_tarballs(&repo);
    assert_eq!(names.len(), 3, "{names:?}");
    let ab_file = repo.join(names.iter().find(|n| n.starts_with("ab-")).unwrap());
    let cd_file = repo.join(names.iter().find(|n| n.starts_with("cd-")).unwrap());
    assert!(
        first["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["up_to_date"] == false),
        "{first}"
    );
    let ab_before = bytes_and_mtime(&ab_file);
    let cd_before = bytes_and_mtime(&cd_file);
    let config_before = bytes_and_mtime(&repo.join("c/config.pbtxt"));

    // Nothing changed: nothing written, every model up to date.
    let again = pack(&[]);
    for m in again["models"].as_array().unwrap() {
        assert_eq!(m["up_to_date"], true, "{again}");
        assert_eq!(m["config_written"], false, "{again}");
    }
    assert_eq!(bytes_and_mtime(&ab_file), ab_before);
    assert_eq!(bytes_and_mtime(&cd_file), cd_before);
    assert_eq!(bytes_and_mtime(&repo.join("c/config.pbtxt")), config_before);
    assert_eq!(again["removed"], serde_json::json!([]), "{again}");

    // c and d's environment changes: a dry run says what would go, and touches nothing.
    std::fs::write(
        &cd,
        "name: cd\nchannels: [local]\ndependencies: [python, greet, tool]\n",
    )
    .unwrap();
    let dry = pack(&["--dry-run"]);
    assert_eq!(dry["removed"], serde_json::json!([cd_file]), "{dry}");
    assert_eq!(bytes_and_mtime(&cd_file), cd_before);

    let changed = pack(&[]);
    let names = root_tarballs(&repo);
    assert_eq!(names.len(), 3, "{names:?}");
    let new_cd = names
        .iter()
        .find(|n| n.starts_with("cd-"))
        .map(|n| repo.join(n))
        .unwrap();
    assert_ne!(new_cd, cd_file, "the changed environment has a new name");
    assert!(!cd_file.exists(), "the stale environment is removed");
    assert_eq!(
        changed["removed"],
        serde_json::json!([cd_file]),
        "{changed}"
    );
    assert_eq!(
        bytes_and_mtime(&ab_file),
        ab_before,
        "the other is untouched"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not an archive");
    for m in ["c", "d"] {
        let config = std::fs::read_to_string(repo.join(m).join("config.pbtxt")).unwrap();
        let name = new_cd.file_name().unwrap().to_string_lossy();
        assert!(config.contains(&format!("/../{name}")), "{config}");
    }
    for m in changed["models"].as_array().unwrap() {
        let expect = m["name"] == "a" || m["name"] == "b";
        assert_eq!(m["up_to_date"], expect, "{changed}");
    }
}

#[test]
fn a_stale_environment_a_config_still_names_is_kept() {
    let f = Fixture::new();
    let repo = f.path().join("models");
    for m in ["a", "b"] {
        triton_model(&repo.join(m));
    }
    let env = repo.join("environment.yml");
    std::fs::write(&env, "name: e\nchannels: [local]\ndependencies: [python]\n").unwrap();
    run_ok(&mut pack_in(&f, f.path(), "models", &["--write-config"]));
    let old = root_tarballs(&repo);
    assert_eq!(old.len(), 1, "{old:?}");
    std::fs::write(
        &env,
        "name: e\nchannels: [local]\ndependencies: [python, tool]\n",
    )
    .unwrap();
    // Without --write-config the configs still name the old file: it stays, and the run
    // says the configs do not point at the new one.
    let out = run_ok(&mut pack_in(&f, f.path(), "models", &[]));
    let now = root_tarballs(&repo);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&old[0]), "{now:?}");
    assert!(!stderr(&out).contains("removed"), "{}", stderr(&out));
}

#[test]
fn mlserver_models_on_one_environment_are_warned_of_mlservers_start_up_race() {
    let f = Fixture::new();
    let repo = f.path().join("models");
    for m in ["one", "two"] {
        std::fs::create_dir_all(repo.join(m)).unwrap();
        std::fs::write(
            repo.join(m).join("model-settings.json"),
            format!("{{\"name\": \"{m}\", \"implementation\": \"model.M\"}}\n"),
        )
        .unwrap();
    }
    std::fs::copy(
        f.path().join("environment.yml"),
        repo.join("environment.yml"),
    )
    .unwrap();
    let out = run_ok(&mut pack_in(&f, f.path(), "models", &["--dry-run"]));
    assert!(
        stderr(&out).contains("MLServer models one, two use one environment"),
        "{}",
        stderr(&out)
    );
    // One model per environment: no warning.
    std::fs::remove_dir_all(repo.join("two")).unwrap();
    let out = run_ok(&mut pack_in(&f, f.path(), "models", &["--dry-run"]));
    assert!(
        !stderr(&out).contains("use one environment"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failing_environment_names_the_models_that_use_it() {
    let f = Fixture::new();
    let repo = f.path().join("models");
    for m in ["a", "b", "c"] {
        triton_model(&repo.join(m));
    }
    for m in ["a", "b"] {
        std::fs::write(
            repo.join(m).join("environment.yml"),
            "name: bad\nchannels: [local]\ndependencies: [python, nosuchpkg]\n",
        )
        .unwrap();
    }
    std::fs::copy(
        f.path().join("environment.yml"),
        repo.join("c/environment.yml"),
    )
    .unwrap();
    let out = run_err(&mut pack_in(&f, f.path(), "models", &[]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot pack the environment of models a, b (")
            && err.contains("a/environment.yml)"),
        "{err}"
    );
    assert!(err.contains("nosuchpkg"), "{err}");
    // Nothing was written for any model.
    for m in ["a", "b", "c"] {
        assert!(!repo.join(m).join("model-conda.tar.gz").exists(), "{m}");
    }
}
