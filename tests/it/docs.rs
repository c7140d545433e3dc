//! What the README and the Docker example name exists: every `testdata/` path of the README's
//! command lines, the MLServer model of its examples (a model envpack detects as one), and the
//! build context `.dockerignore` leaves out.

use std::path::{Path, PathBuf};

use crate::support::fixture::Fixture;
use crate::support::{envpack, run_ok};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of the README's `sh` blocks.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if inside {
            out.push(line.split(" #").next().unwrap_or("").to_string());
        }
    }
    out
}

#[test]
fn every_testdata_path_the_readme_names_exists() {
    let mut named = Vec::new();
    for line in readme_commands() {
        for word in line.split_whitespace() {
            if let Some(i) = word.find("testdata/") {
                named.push(word[i..].trim_end_matches(['`', ',', ')']).to_string());
            }
        }
    }
    assert!(named.len() >= 6, "too few testdata paths: {named:?}");
    for p in &named {
        assert!(
            repo().join(p).exists(),
            "the README names {p}, which does not exist"
        );
    }
    // The model examples name real models, of both servers.
    let names = named.join(" ");
    assert!(names.contains("testdata/models/add_one"), "{names}");
    assert!(names.contains("testdata/mlserver/models/double"), "{names}");
    // And no model path outside testdata/ (the old `models/sklearn`).
    for line in readme_commands() {
        assert!(
            !line.contains(" models/"),
            "a README command names a models/ folder that does not exist: {line}"
        );
    }
}

#[test]
fn the_testdata_mlserver_model_is_packed_as_an_mlserver_model() {
    let f = Fixture::new();
    let model = repo().join("testdata/mlserver/models/double");
    let out = run_ok(
        envpack()
            .current_dir(f.path())
            .arg("pack")
            .arg(&model)
            .arg("--file")
            .arg(f.path().join("environment.yml"))
            .arg("--channel-alias")
            .arg(format!("file://{}/channels/", f.path().display()))
            .args([
                "--platform",
                "linux-64",
                "--no-check",
                "-q",
                "--dry-run",
                "--json",
            ]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &report["models"][0];
    assert_eq!(m["server"], "mlserver", "{report}");
    assert_eq!(
        Path::new(m["output"].as_str().unwrap()),
        model.canonicalize().unwrap().join("environment.tar.gz"),
        "{report}"
    );
    assert!(
        !model.join("environment.tar.gz").exists(),
        "a dry run wrote into testdata"
    );
}

#[test]
fn the_docker_build_context_leaves_out_history_builds_and_packed_environments() {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for p in [".git", "target/", "**/*.tar.gz", "**/*.tar.zst"] {
        assert!(lines.contains(&p), ".dockerignore lacks {p}:\n{text}");
    }
    // The MLServer stage targets ubi9's glibc.
    let docker = std::fs::read_to_string(repo().join("Dockerfile.example")).unwrap();
    let line = docker
        .lines()
        .find(|l| l.contains("envpack pack --mlserver"))
        .unwrap();
    assert!(line.contains("--glibc 2.34"), "{line}");
}
