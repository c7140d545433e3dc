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
