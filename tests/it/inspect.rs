//! `envpack inspect` through the real binary: a Triton model and an MLServer model packed by
//! envpack, read through their configs; the packages with their sizes (largest first), pip
//! packages told apart from conda's, the manifest, the checks' verdicts per Triton era and
//! for MLServer; `--json`'s fields; every archive format and a folder reading the same; and
//! what it says when there is nothing to read.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::support::channel::{Channel, Package};
use crate::support::{envpack, run_err, run_ok, stderr};

/// numpy's `__init__.py`: the largest file of the environment.
const NUMPY_INIT: usize = 40_000;
/// libpython: python's largest file.
const LIBPYTHON: usize = 20_000;

/// A channel whose python 3.10 and numpy 1.26 satisfy Triton's checks (libpython, numpy
/// importable with its dist-info).
fn channel(dir: &Path) {
    let mut c = Channel::new(&dir.join("channel"));
    c.add(
        Package::new("python", "3.10.14")
            .exe("bin/python3.10", "#!/bin/sh\nexit 0\n")
            .symlink("bin/python3", "python3.10")
            .symlink("bin/python", "python3.10")
            .file("lib/libpython3.10.so.1.0", vec![b'p'; LIBPYTHON])
            .file("lib/python3.10/os.py", "# os\n")
            .file("lib/python3.10/site-packages/README.txt", "site\n"),
    );
    c.add(
        Package::new("numpy", "1.26.4")
            .depends("python >=3.10")
            .file(
                "lib/python3.10/site-packages/numpy/__init__.py",
                vec![b'#'; NUMPY_INIT],
            )
            .file(
                "lib/python3.10/site-packages/numpy-1.26.4.dist-info/METADATA",
                "Name: numpy\nVersion: 1.26.4\n",
            ),
    );
    c.write();
}

struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        channel(dir.path());
        let fx = Self { dir };
        std::fs::write(
            fx.path("environment.yml"),
            "name: served\nchannels: [conda-forge]\ndependencies: [python=3.10, numpy]\n",
        )
        .unwrap();
        fx
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn mirror(&self) -> String {
        format!("conda-forge={}", self.path("channel").display())
    }
    fn pack(&self, path: &Path, extra: &[&str]) {
        run_ok(
            envpack()
                .arg("pack")
                .arg(path)
                .args(["--mirror", &self.mirror(), "-q"])
                .args(extra),
        );
    }
    /// The environment as a folder, with `mlserver` 1.7.1 installed by "pip" (a dist-info
    /// with a RECORD, a console script) beside the conda packages.
    fn with_mlserver(&self) -> PathBuf {
        let prefix = self.path("prefix");
        self.pack(
            &self.path("environment.yml"),
            &["-o", prefix.to_str().unwrap(), "--format", "dir"],
        );
        let site = prefix.join("lib/python3.10/site-packages");
        let files: [(&str, usize); 4] = [
            ("mlserver/__init__.py", 3000),
            ("mlserver-1.7.1.dist-info/METADATA", 200),
            ("mlserver-1.7.1.dist-info/RECORD", 0),
            ("../../../bin/mlserver", 50),
        ];
        let mut record = String::new();
        for (f, n) in files {
            writeln!(record, "{f},,").unwrap();
            if n > 0 {
                let p = site.join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, vec![b'm'; n]).unwrap();
            }
        }
        std::fs::write(site.join("mlserver-1.7.1.dist-info/RECORD"), &record).unwrap();
        prefix
    }
}

/// `envpack inspect PATH`'s report.
fn inspect(path: &Path, extra: &[&str]) -> String {
    let o = run_ok(envpack().arg("inspect").arg(path).args(extra));
    String::from_utf8(o.stdout).unwrap()
}

/// `envpack inspect PATH --json`.
fn inspect_json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let o = run_ok(envpack().arg("inspect").arg(path).arg("--json").args(extra));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn check<'a>(j: &'a serde_json::Value, consumer: &str, releases: &str) -> &'a serde_json::Value {
    j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == consumer && (releases.is_empty() || c["releases"] == releases))
        .unwrap_or_else(|| panic!("no {consumer} {releases} check in {j}"))
}

#[test]
fn a_triton_model_is_read_through_its_config_with_a_verdict_per_release() {
    let fx = Fx::new();
    let model = fx.path("models/tri");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(
        model.join("config.pbtxt"),
        "name: \"tri\"\nbackend: \"python\"\n",
    )
    .unwrap();
    std::fs::copy(fx.path("environment.yml"), model.join("environment.yml")).unwrap();
    fx.pack(&model, &["--write-config", "--triton-version", "24.10"]);
    let tarball = model.join("model-conda.tar.gz");
    assert!(tarball.is_file());

    let text = inspect(&model, &[]);
    for line in [
        "(tar-gz, ",
        "model:     triton model ",
        "`$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz` in config.pbtxt",
        "platform:  linux-64",
        "python:    3.10.14",
        "manifest:  envpack ",
        "2 conda packages, ",
        "  FAIL  triton up to 23.04 *: the environment has Python 3.10, but the python backend stub of Triton 23.04 is built for Python 3.8",
        "  ok    triton 23.05-24.10 *",
        "  FAIL  triton 24.11-",
        "  FAIL  mlserver (environment_tarball): mlserver is not installed in the environment",
        "(* the model's own server)",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    // Largest first: numpy, then python.
    let numpy = text.find("  numpy ").unwrap();
    let python = text.find("  python ").unwrap();
    assert!(numpy < python, "{text}");
    assert!(!text.contains("pip package"), "{text}");

    let j = inspect_json(&model, &[]);
    assert_eq!(j["version"], 1);
    assert_eq!(
        j["path"].as_str().unwrap(),
        tarball.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(j["format"], "tar-gz");
    assert_eq!(j["size"], std::fs::metadata(&tarball).unwrap().len());
    assert_eq!(j["platform"], "linux-64");
    assert_eq!(j["python"], "3.10.14");
    assert_eq!(j["model"]["server"], "triton");
    assert_eq!(
        j["model"]["config_value"],
        "$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz"
    );
    let packages = j["packages"].as_array().unwrap();
    let names: Vec<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["numpy", "python"]);
    // The sizes are those of the files each package installed.
    assert_eq!(
        packages[0]["size"],
        NUMPY_INIT + "Name: numpy\nVersion: 1.26.4\n".len()
    );
    assert_eq!(packages[0]["files"], 2);
    assert_eq!(packages[0]["version"], "1.26.4");
    assert!(packages[1]["size"].as_u64().unwrap() > LIBPYTHON as u64);
    // numpy's dist-info is conda's: no pip package.
    assert_eq!(j["pip"], serde_json::json!([]));
    let installed = j["installed_size"].as_u64().unwrap();
    let sum: u64 = packages.iter().map(|p| p["size"].as_u64().unwrap()).sum();
    assert_eq!(installed, sum + j["other_size"].as_u64().unwrap());
    assert!(j["files"].as_u64().unwrap() >= 8);
    // The manifest as written, and it agrees with the records.
    assert_eq!(j["manifest"]["source"], "environment");
    assert_eq!(j["manifest"]["format"], "tar-gz");
    assert_eq!(j["manifest"]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(j["manifest_matches_records"], true);
    // One verdict per stub era, then MLServer's two.
    assert_eq!(j["checks"].as_array().unwrap().len(), 5);
    let era = check(&j, "triton", "23.05-24.10");
    assert_eq!(era["ok"], true);
    assert_eq!(era["model"], true);
    let old = check(&j, "triton", "up to 23.04");
    assert_eq!(old["ok"], false);
    assert!(
        old["hint"].as_str().unwrap().contains("python=3.8"),
        "{old}"
    );
    let ml = check(&j, "mlserver", "");
    assert_eq!(ml["ok"], false);
    assert_eq!(ml["model"], false);
    assert!(
        ml["problem"]
            .as_str()
            .unwrap()
            .contains("mlserver is not installed")
    );

    // One release only.
    let j = inspect_json(&model, &["--triton-version", "24.11"]);
    let triton: Vec<&serde_json::Value> = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["consumer"] == "triton")
        .collect();
    assert_eq!(triton.len(), 1);
    assert_eq!(triton[0]["releases"], "24.11");
    assert_eq!(triton[0]["ok"], false);
    assert!(
        triton[0]["problem"]
            .as_str()
            .unwrap()
            .contains("built for Python 3.12"),
        "{}",
        triton[0]
    );
    let out = run_err(
        envpack()
            .arg("inspect")
            .arg(&model)
            .args(["--triton-version", "24"]),
    );
    assert_eq!(out.status.code(), Some(2));

    // A stub in the model folder lifts the Python rule, as for `envpack pack`.
    std::fs::write(model.join("triton_python_backend_stub"), "stub").unwrap();
    let j = inspect_json(&model, &[]);
    assert_eq!(check(&j, "triton", "up to 23.04")["ok"], true);
}

#[test]
fn an_mlserver_model_shows_its_pip_packages_and_passes_mlserver() {
    let fx = Fx::new();
    let prefix = fx.with_mlserver();
    let model = fx.path("models/mls");
    std::fs::create_dir_all(model.join("env")).unwrap();
    std::fs::write(
        model.join("model-settings.json"),
        r#"{"name": "mls", "implementation": "model.Model", "parameters": {"environment_tarball": "./env/packed.tar.gz"}}"#,
    )
    .unwrap();
    run_ok(
        envpack()
            .arg("pack")
            .arg("-p")
            .arg(&prefix)
            .arg("-o")
            .arg(model.join("env/packed.tar.gz"))
            .arg("-q"),
    );

    let j = inspect_json(&model, &[]);
    assert_eq!(j["version"], 1);
    assert_eq!(j["model"]["server"], "mlserver");
    assert_eq!(j["model"]["config_value"], "./env/packed.tar.gz");
    assert!(j["path"].as_str().unwrap().ends_with("env/packed.tar.gz"));
    assert_eq!(j["manifest"]["source"], "prefix");
    // mlserver is pip's: its RECORD's files, the console script included.
    let record = std::fs::metadata(
        prefix.join("lib/python3.10/site-packages/mlserver-1.7.1.dist-info/RECORD"),
    )
    .unwrap()
    .len();
    assert_eq!(
        j["pip"],
        serde_json::json!([{"name": "mlserver", "version": "1.7.1", "size": 3000 + 200 + record + 50, "files": 4}])
    );
    let names: Vec<&str> = j["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["numpy", "python"]);
    let ml = check(&j, "mlserver", "");
    assert_eq!(ml["ok"], true, "{ml}");
    assert_eq!(ml["model"], true);
    assert_eq!(ml["problem"], serde_json::Value::Null);
    assert_eq!(check(&j, "mlserver-image", "")["ok"], true);
    // Python 3.10 is the image's: no note.
    assert_eq!(ml["notices"], serde_json::json!([]));
    assert_eq!(check(&j, "triton", "23.05-24.10")["model"], false);

    let text = inspect(&model, &[]);
    for line in [
        "model:     mlserver model ",
        "`./env/packed.tar.gz` in model-settings.json",
        "1 pip package, 3.4 kB:",
        "  mlserver ",
        "  ok    mlserver (environment_tarball) *",
        "  ok    mlserver image (MLSERVER_ENV_TARBALL)",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn every_format_and_a_folder_read_the_same() {
    let fx = Fx::new();
    let prefix = fx.with_mlserver();
    let base = inspect_json(&prefix, &[]);
    assert_eq!(base["format"], "dir");
    for (name, format) in [
        ("e.tar.gz", "tar-gz"),
        ("e.tar.zst", "tar-zst"),
        ("e.tar", "tar"),
    ] {
        let out = fx.path(name);
        run_ok(
            envpack()
                .arg("pack")
                .arg("-p")
                .arg(&prefix)
                .arg("-o")
                .arg(&out)
                .arg("-q"),
        );
        let j = inspect_json(&out, &[]);
        assert_eq!(j["format"], format);
        for field in ["packages", "pip", "python", "platform"] {
            assert_eq!(j[field], base[field], "{name}: {field}");
        }
        if format == "tar-zst" {
            let t = check(&j, "triton", "23.05-24.10");
            assert_eq!(t["ok"], false);
            assert!(t["problem"].as_str().unwrap().contains(".tar.zst"), "{t}");
        } else {
            assert_eq!(check(&j, "triton", "23.05-24.10")["ok"], true, "{name}");
        }
    }
    // Below an --arcroot folder too.
    let out = fx.path("root.tar.gz");
    run_ok(
        envpack()
            .arg("pack")
            .arg("-p")
            .arg(&prefix)
            .arg("-o")
            .arg(&out)
            .args(["-q", "--arcroot", "myenv"]),
    );
    let j = inspect_json(&out, &[]);
    assert_eq!(j["packages"], base["packages"]);
    assert_eq!(j["pip"], base["pip"]);
}

#[test]
fn nothing_to_inspect_is_said_clearly() {
    let fx = Fx::new();
    let model = fx.path("models/tri");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.pbtxt"), "backend: \"python\"\n").unwrap();
    let out = run_err(envpack().arg("inspect").arg(&model));
    let err = stderr(&out);
    assert!(err.contains("has no packed environment"), "{err}");
    assert!(err.contains("model-conda.tar.gz does not exist"), "{err}");
    assert!(err.contains("hint: pack the model first"), "{err}");
    assert_eq!(out.status.code(), Some(1));

    std::fs::write(fx.path("text.tar.gz"), "not an archive at all").unwrap();
    let out = run_err(envpack().arg("inspect").arg(fx.path("text.tar.gz")));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}
