//! Hermetic tests of lock files through the real binary: `envpack lock`, packs that install a
//! lock instead of solving (no repodata at all), stale locks named by what changed,
//! `--locked`, `--frozen`, explicit files, and a model folder holding a lock.
//!
//! The channel is built at test time and stands in for conda-forge through `--mirror`, so the
//! locks hold conda-forge's URLs, as committed locks do.

use std::path::{Path, PathBuf};

use crate::support::channel::{Channel, Package};
use crate::support::{self, envpack, run_err, run_ok};

/// `a` 1.0 and 2.0 (2.0 depends on `b`), `b`, `c` (noarch), in `dir/channel`.
fn channel(dir: &Path) -> PathBuf {
    let mut c = Channel::new(&dir.join("channel"));
    c.add(Package::new("a", "1.0").file("share/a/version", "1.0\n"));
    c.add(
        Package::new("a", "2.0")
            .depends("b >=1")
            .file("share/a/version", "2.0\n"),
    );
    c.add(
        Package::new("b", "1.0")
            .file("share/b/b.txt", "b\n")
            .tar_bz2(),
    );
    c.add(Package::new("c", "1.0").file("share/c/c.txt", "c\n"));
    c.write();
    dir.join("channel")
}

/// A temporary folder with the channel and `env/environment.yml` using it as conda-forge.
struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new(deps: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        channel(dir.path());
        std::fs::create_dir_all(dir.path().join("env")).unwrap();
        let fx = Self { dir };
        fx.write_env(deps);
        fx
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn env(&self) -> PathBuf {
        self.path("env/environment.yml")
    }
    fn lock_file(&self) -> PathBuf {
        self.path("env/conda-lock.yml")
    }
    fn write_env(&self, deps: &str) {
        std::fs::write(
            self.env(),
            format!("name: locked\nchannels: [conda-forge]\ndependencies: [{deps}]\nvariables:\n  MODE: fast\n"),
        )
        .unwrap();
    }
    fn mirror(&self) -> String {
        format!("conda-forge={}", self.path("channel").display())
    }
    fn cmd(&self, sub: &str) -> std::process::Command {
        let mut c = envpack();
        c.arg(sub).args(["--mirror", &self.mirror(), "-q"]);
        c
    }
    fn lock(&self) -> std::process::Output {
        run_ok(self.cmd("lock").arg(self.env()))
    }
    /// Packs PATH into `out` with `extra`, returns `--json`'s summary.
    fn pack(&self, path: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
        let o = run_ok(
            self.cmd("pack")
                .arg(path)
                .arg("-o")
                .arg(self.path(out))
                .args(["--json", "--force"])
                .args(extra),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// Removes the channel's repodata: from now on, only a lock can be installed.
    fn drop_repodata(&self) {
        for sub in ["linux-64", "noarch"] {
            std::fs::remove_file(self.path("channel").join(sub).join("repodata.json")).unwrap();
        }
    }
    fn member(&self, archive: &str, path: &str) -> String {
        let x = self.path(&format!("x-{archive}"));
        support::extract(&self.path(archive), &x);
        std::fs::read_to_string(x.join(path)).unwrap_or_default()
    }
}

fn sha256(p: &Path) -> String {
    support::sha256_file(p)
}

/// The stages a pack timed, in pipeline order.
fn stages(summary: &serde_json::Value) -> Vec<String> {
    summary["timings"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn a_lock_is_installed_without_solving_and_packs_the_same_bytes() {
    let fx = Fx::new("a, c");
    let solved = fx.pack(&fx.env(), "solved.tar.gz", &[]);
    assert!(stages(&solved).contains(&"solve".to_string()));
    assert!(solved.get("lock").is_none());

    let out = fx.lock();
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "-q prints nothing"
    );
    let text = std::fs::read_to_string(fx.lock_file()).unwrap();
    // Readable by others (0644 less the umask), as a file meant to be committed, never 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fx.lock_file()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o044, 0o044 & !umask(), "lock mode {mode:o}");
    // conda-lock's format, with canonical URLs (never the mirror's) and both hashes.
    assert!(text.contains("version: 1"), "{text}");
    assert!(
        text.contains("https://conda.anaconda.org/conda-forge/linux-64/a-2.0-0.conda"),
        "{text}"
    );
    assert!(
        text.contains("https://conda.anaconda.org/conda-forge/linux-64/b-1.0-0.tar.bz2"),
        "{text}"
    );
    assert!(
        !text.contains(&fx.path("channel").display().to_string()),
        "{text}"
    );
    // The test channel's records have no md5 (real channels' do): sha256 alone, as CEP-37
    // allows.
    assert!(text.contains("sha256: "), "{text}");

    // No repodata from here on: only the lock can be installed.
    fx.drop_repodata();
    for (out, extra) in [
        ("auto.tar.gz", &[][..]),
        ("locked.tar.gz", &["--locked"][..]),
    ] {
        let s = fx.pack(&fx.env(), out, extra);
        assert_eq!(stages(&s)[0], "lock", "{s}");
        assert!(!stages(&s).contains(&"solve".to_string()), "{s}");
        assert_eq!(
            s["lock"].as_str().unwrap(),
            fx.lock_file().to_str().unwrap()
        );
        assert_eq!(
            sha256(&fx.path(out)),
            sha256(&fx.path("solved.tar.gz")),
            "the locked build ({out}) differs from the solved one"
        );
    }
    assert_eq!(fx.member("locked.tar.gz", "share/a/version"), "2.0\n");
    // Without a lock, that channel cannot be solved any more.
    std::fs::remove_file(fx.lock_file()).unwrap();
    run_err(
        fx.cmd("pack")
            .arg(fx.env())
            .arg("-o")
            .arg(fx.path("none.tar.gz")),
    );
}

#[test]
fn a_stale_lock_names_what_changed() {
    let fx = Fx::new("a, c");
    fx.lock();
    // Comments, the name and the variables are not inputs of the solve.
    let text = std::fs::read_to_string(fx.env()).unwrap();
    std::fs::write(
        fx.env(),
        format!(
            "# a comment\n{}",
            text.replace("name: locked", "name: renamed")
        ),
    )
    .unwrap();
    let s = fx.pack(&fx.env(), "same.tar.gz", &["--locked"]);
    assert_eq!(stages(&s)[0], "lock");

    fx.write_env("a=1.0, c");
    let out = run_err(
        fx.cmd("pack")
            .arg(fx.env())
            .arg("--locked")
            .arg("-o")
            .arg(fx.path("x.tar.gz")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conda-lock.yml is out of date: dependency `a` is now `a=1.0`"),
        "{err}"
    );
    assert!(err.contains("hint: update it with `envpack lock`"), "{err}");
    assert_eq!(out.status.code(), Some(1));
    assert!(!fx.path("x.tar.gz").exists());

    // Without --locked, a stale lock is solved around, with a warning naming the change.
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(fx.env())
            .args(["--mirror", &fx.mirror(), "--no-progress"])
            .arg("-o")
            .arg(fx.path("solved.tar.gz")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match environment.yml (dependency `a` is now `a=1.0`)"),
        "{err}"
    );
    assert_eq!(fx.member("solved.tar.gz", "share/a/version"), "1.0\n");

    // --frozen installs the lock as it is: a 2.0.
    let s = fx.pack(&fx.env(), "frozen.tar.gz", &["--frozen"]);
    assert_eq!(stages(&s)[0], "lock");
    assert_eq!(fx.member("frozen.tar.gz", "share/a/version"), "2.0\n");

    // Options that change the solve count too.
    fx.write_env("a, c");
    let out =
        run_err(
            fx.cmd("pack")
                .arg(fx.env())
                .args(["--locked", "--glibc", "2.31", "--dry-run"]),
        );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("glibc was 2.28, now 2.31"), "{err}");
    let out = run_err(fx.cmd("pack").arg(fx.env()).args([
        "--locked",
        "--platform",
        "linux-aarch64",
        "--dry-run",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locks no packages for linux-aarch64 (it locks linux-64)"),
        "{err}"
    );
    assert!(
        err.contains("envpack lock --platform linux-aarch64"),
        "{err}"
    );
}

#[test]
fn locked_and_frozen_need_a_lock() {
    let fx = Fx::new("a");
    for flag in ["--locked", "--frozen"] {
        let out = run_err(fx.cmd("pack").arg(fx.env()).args([flag, "--dry-run"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no lock file for"), "{flag}: {err}");
        assert!(
            err.contains("conda-lock.yml does not exist"),
            "{flag}: {err}"
        );
        assert!(
            err.contains("hint: write it with `envpack lock"),
            "{flag}: {err}"
        );
    }
    let out = run_err(
        fx.cmd("pack")
            .arg(fx.env())
            .args(["--locked", "--frozen", "--dry-run"]),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn locks_and_explicit_files_are_environments_of_their_own() {
    let fx = Fx::new("a, c");
    fx.lock();
    fx.drop_repodata();
    // The lock itself as PATH: the name and variables come with it.
    let s = fx.pack(&fx.lock_file(), "from-lock.tar.gz", &[]);
    assert_eq!(stages(&s)[0], "lock");
    assert_eq!(fx.member("from-lock.tar.gz", "share/a/version"), "2.0\n");
    assert!(
        fx.member("from-lock.tar.gz", "conda-meta/state")
            .contains("MODE"),
        "the lock's variables are not the environment's"
    );

    // An explicit file, as `conda list --explicit --md5` (or --sha256) prints it.
    let channel = fx.path("channel");
    let line = |sub: &str, file: &str, sha: bool| {
        let bytes = std::fs::read(channel.join(sub).join(file)).unwrap();
        let hash = if sha {
            support::sha256_hex(&bytes)
        } else {
            support::hex(&rattler_digest::compute_bytes_digest::<rattler_digest::Md5>(&bytes))
        };
        format!("https://conda.anaconda.org/conda-forge/{sub}/{file}#{hash}\n")
    };
    let explicit = fx.path("env/explicit.txt");
    std::fs::write(
        &explicit,
        format!(
            "# This file may be used to create an environment using:\n# platform: linux-64\n@EXPLICIT\n{}{}",
            line("linux-64", "a-2.0-0.conda", false),
            line("linux-64", "b-1.0-0.tar.bz2", true)
        ),
    )
    .unwrap();
    let s = fx.pack(&explicit, "explicit.tar.gz", &[]);
    assert_eq!(stages(&s)[0], "lock");
    let names: Vec<&str> = s["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(fx.member("explicit.tar.gz", "share/a/version"), "2.0\n");
    // The records are completed from the packages' own index.json.
    let record: serde_json::Value =
        serde_json::from_str(&fx.member("explicit.tar.gz", "conda-meta/a-2.0-0.json")).unwrap();
    assert_eq!(record["depends"], serde_json::json!(["b >=1"]));
    assert_eq!(record["license"], "BSD-3-Clause");
    assert_eq!(
        record["url"],
        "https://conda.anaconda.org/conda-forge/linux-64/a-2.0-0.conda"
    );

    // A wrong hash is refused.
    std::fs::write(
        &explicit,
        format!(
            "@EXPLICIT\nhttps://conda.anaconda.org/conda-forge/linux-64/c-1.0-0.conda#{}\n",
            "0".repeat(32)
        ),
    )
    .unwrap();
    run_err(
        fx.cmd("pack")
            .arg(&explicit)
            .arg("-o")
            .arg(fx.path("bad.tar.gz")),
    );
    assert!(!fx.path("bad.tar.gz").exists());
}

#[test]
fn a_model_folder_may_hold_a_lock_instead_of_an_environment_file() {
    let fx = Fx::new("a");
    fx.lock();
    let model = fx.path("models/m");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.pbtxt"), "backend: \"python\"\n").unwrap();
    std::fs::copy(fx.lock_file(), model.join("conda-lock.yml")).unwrap();
    fx.drop_repodata();
    let o = run_ok(fx.cmd("pack").arg(&model).args(["--no-check", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["models"][0]["environment_file"].as_str().unwrap(),
        model.join("conda-lock.yml").to_str().unwrap()
    );
    assert!(model.join("model-conda.tar.gz").is_file());
    // `envpack lock` refuses a lock as its input.
    let out = run_err(fx.cmd("lock").arg(model.join("conda-lock.yml")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a lock file already"));
}

/// This process's umask, from /proc (reading it by setting it would race other tests).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .expect("Umask in /proc/self/status")
}
