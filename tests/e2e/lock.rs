//! Lock files against real packages (the shared channel standing in for conda-forge through
//! `--mirror`): what `envpack lock` writes loads with conda-lock's own parser (installed from
//! PyPI by `.ci/install-servers` into `DIR/condalock`) with the same packages; a locked build
//! with a `pip:` section (installed with hashes required) installs the same files as the solved
//! build, its manifest naming the locked pins; and the locks committed in `testdata/locks` (conda-lock's `conda-lock.yml`, pixi's
//! `pixi.lock`, an `@EXPLICIT` file, all with conda-forge URLs) pack working environments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Failed;

use crate::servers::ServersDir;
use crate::support::{self, ensure, envpack, run_ok};
use crate::{Case, Needs, mirror_arg};

/// (manager, name, version, url) of every package of a lock.
type Packages = BTreeSet<(String, String, String, String)>;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "lock::conda_lock_reads_what_envpack_lock_writes_and_the_locked_build_is_identical",
            needs: &[Needs::Channel, Needs::Servers],
            run: conda_lock_reads_what_envpack_lock_writes_and_the_locked_build_is_identical,
        },
        Case {
            name: "lock::a_lock_of_w1_packs_to_the_sha256_of_the_solved_build",
            needs: &[Needs::Channel, Needs::Servers],
            run: a_lock_of_w1_packs_to_the_sha256_of_the_solved_build,
        },
        Case {
            name: "lock::committed_conda_lock_pixi_and_explicit_files_pack",
            needs: &[Needs::Channel],
            run: committed_conda_lock_pixi_and_explicit_files_pack,
        },
    ]
}

/// (manager, name, version, url) of every package of a conda-lock file, as conda-lock's own
/// parser reads it.
fn conda_lock_packages(python: &Path, lock: &Path) -> Result<Packages, Failed> {
    let out = run_ok(
        Command::new(python)
            .arg("-c")
            .arg(
                "import json, pathlib, sys\n\
         from conda_lock.lockfile import parse_conda_lock_file\n\
         l = parse_conda_lock_file(pathlib.Path(sys.argv[1]))\n\
         print(json.dumps([[p.manager, p.name, p.version, p.url] for p in l.package]))\n",
            )
            .arg(lock),
    );
    let v: Vec<(String, String, String, String)> = serde_json::from_slice(&out.stdout)?;
    Ok(v.into_iter().collect())
}

/// The same, read from the YAML directly.
fn yaml_packages(lock: &Path) -> Packages {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(lock).unwrap()).unwrap();
    v["package"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            (s("manager"), s("name"), s("version"), s("url"))
        })
        .collect()
}

/// conda-lock's Python (installed by `.ci/install-servers`), or a failure saying how to get it.
fn conda_lock_python(servers: &ServersDir) -> Result<PathBuf, Failed> {
    let python = servers.root.join("condalock/bin/python");
    ensure(
        python.is_file(),
        format!(
            "conda-lock is not installed: {} is missing (run .ci/install-servers again)",
            python.display()
        ),
    )?;
    Ok(python)
}

/// Packs `env` into `dir/out` against the shared channel, returns the log (`-v`).
fn pack(dir: &Path, env: &Path, out: &str, extra: &[&str]) -> String {
    let o = run_ok(
        envpack()
            .arg("pack")
            .arg(env)
            .arg("-o")
            .arg(dir.join(out))
            .args(["--mirror", &mirror_arg(), "--no-progress", "-v", "--force"])
            .args(extra),
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `envpack lock ENV`, then the packages of the lock as envpack wrote them, checked to be the
/// ones conda-lock's own parser reads.
fn lock_and_reload(python: &Path, env: &Path) -> Result<(PathBuf, Packages), Failed> {
    run_ok(
        envpack()
            .arg("lock")
            .arg(env)
            .args(["--mirror", &mirror_arg(), "-q"]),
    );
    let lock = env.with_file_name("conda-lock.yml");
    let ours = yaml_packages(&lock);
    let theirs = conda_lock_packages(python, &lock)?;
    ensure(
        ours == theirs,
        format!("conda-lock reads other packages:\nenvpack: {ours:?}\nconda-lock: {theirs:?}"),
    )?;
    ensure(
        ours.iter()
            .filter(|(m, ..)| m == "conda")
            .all(|(.., u)| u.starts_with("https://conda.anaconda.org/conda-forge/")),
        "conda URLs are not conda-forge's",
    )?;
    Ok((lock, ours))
}

fn conda_lock_reads_what_envpack_lock_writes_and_the_locked_build_is_identical()
-> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let python = conda_lock_python(&servers)?;
    let dir = tempfile::tempdir()?;
    // W1 and a `pip:` section: anyio needs idna (a conda package here, so pip leaves it) and
    // typing_extensions (installed by pip as a dependency only: not REQUESTED). No console
    // scripts: pip's RECORD hashes a script with the staging prefix in its shebang, so a
    // `pip:` package with one differs between any two builds, locked or not.
    let env = dir.path().join("environment.yml");
    std::fs::write(
        &env,
        format!(
            "name: w1\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy<2\n  - pip\n  - six\n  - idna\n  - pip:\n    - --no-index\n    - --find-links {}\n    - anyio\n",
            servers.wheels().display()
        ),
    )?;
    pack(dir.path(), &env, "solved.tar.gz", &[]);
    let (lock, ours) = lock_and_reload(&python, &env)?;
    let has = |manager: &str, name: &str, version: &str| {
        ours.iter()
            .any(|(m, n, v, _)| m == manager && n == name && v == version)
    };
    ensure(
        has("conda", "numpy", "1.26.4")
            && has("conda", "python", "3.11.2")
            && has("pip", "anyio", "4.16.0")
            && has("pip", "typing_extensions", "4.16.0")
            && !ours.iter().any(|(m, n, _, _)| m == "pip" && n == "idna"),
        format!("unexpected packages: {ours:?}"),
    )?;

    let log = pack(dir.path(), &env, "locked.tar.gz", &["--locked"]);
    ensure(
        log.contains("--require-hashes"),
        format!("the locked pip install does not require hashes:\n{log}"),
    )?;
    // The same files, byte for byte; only the manifest differs: it names the locked pins (the
    // solved build's knows the pip: lines only).
    let (x, solved) = (dir.path().join("x"), dir.path().join("s"));
    support::extract(&dir.path().join("locked.tar.gz"), &x);
    support::extract(&dir.path().join("solved.tar.gz"), &solved);
    let differ = differences_but_the_manifest(&x, &solved);
    ensure(
        differ.is_empty(),
        format!("the locked build differs from the solved one in {differ:?}"),
    )?;
    let manifest = support::read(x.join("conda-meta/envpack.json"));
    ensure(
        manifest.contains("anyio==4.16.0 --hash=sha256:"),
        format!("the manifest does not name the locked pins:\n{manifest}"),
    )?;
    // The lock alone (as PATH): its pip packages are installed too, through a staging prefix.
    pack(dir.path(), &lock, "alone.tar.gz", &[]);
    let alone = dir.path().join("alone");
    support::extract(&dir.path().join("alone.tar.gz"), &alone);
    let differ = differences_but_the_manifest(&x, &alone);
    ensure(
        differ.is_empty(),
        format!("the lock alone packs other files than with its environment file: {differ:?}"),
    )?;
    let site = x.join("lib/python3.11/site-packages");
    ensure(
        site.join("anyio-4.16.0.dist-info/REQUESTED").is_file()
            && !site
                .join("typing_extensions-4.16.0.dist-info/REQUESTED")
                .exists(),
        "REQUESTED marks differ from a solved install",
    )?;
    Ok(())
}

/// W1 (conda packages only): the lock `envpack lock` writes loads with conda-lock's parser, and
/// the locked build is the solved build, byte for byte (same sha256, manifest included).
fn a_lock_of_w1_packs_to_the_sha256_of_the_solved_build() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let python = conda_lock_python(&servers)?;
    let dir = tempfile::tempdir()?;
    let env = dir.path().join("environment.yml");
    std::fs::write(
        &env,
        "name: w1\nchannels: [conda-forge]\ndependencies: [python=3.11, numpy<2, pip, six, idna]\n",
    )?;
    pack(dir.path(), &env, "solved.tar.gz", &[]);
    let (_, ours) = lock_and_reload(&python, &env)?;
    ensure(
        ours.iter().all(|(m, ..)| m == "conda") && ours.len() > 20,
        format!("unexpected packages: {ours:?}"),
    )?;
    let o = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(dir.path().join("locked.tar.gz"))
            .args(["--mirror", &mirror_arg(), "-q", "--json", "--locked"]),
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    ensure(
        s["timings"].get("lock").is_some() && s["timings"].get("solve").is_none(),
        format!("the locked build solved: {s}"),
    )?;
    let (a, b) = (
        support::sha256_file(&dir.path().join("solved.tar.gz")),
        support::sha256_file(&dir.path().join("locked.tar.gz")),
    );
    ensure(
        a == b,
        format!("the locked build ({b}) is not the solved build ({a})"),
    )?;
    Ok(())
}

/// The files (and symlinks) that differ between two extracted environments, or that only one
/// has, leaving out the manifest.
fn differences_but_the_manifest(a: &Path, b: &Path) -> Vec<String> {
    let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        support::snapshot(d)
            .into_iter()
            .filter(|(p, _)| p != "conda-meta/envpack.json")
            .collect()
    };
    let (a, b) = (files(a), files(b));
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/locks")
}

fn committed_conda_lock_pixi_and_explicit_files_pack() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    for (file, extra, numpy) in [
        ("conda-lock.yml", &[][..], true),
        ("pixi.lock", &[][..], true),
        ("pixi.lock", &["-e", "nonumpy"][..], false),
        ("explicit.txt", &[][..], true),
    ] {
        let out = dir.path().join(format!("{file}{}.tar.gz", extra.len()));
        let o = run_ok(
            envpack()
                .arg("pack")
                .arg(testdata().join(file))
                .arg("-o")
                .arg(&out)
                .args(["--mirror", &mirror_arg(), "-q", "--json"])
                .args(extra),
        );
        let s: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        ensure(
            s["timings"].get("lock").is_some() && s["timings"].get("solve").is_none(),
            format!("{file} was not installed as a lock: {s}"),
        )?;
        let x = dir.path().join(format!("x-{file}{}", extra.len()));
        support::extract(&out, &x);
        let code = if numpy {
            "import numpy, six, idna; print(numpy.__version__)"
        } else {
            "import six\ntry:\n    import numpy\nexcept ImportError:\n    print('no numpy')"
        };
        let o = run_ok(Command::new(x.join("bin/python")).args(["-c", code]));
        let printed = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let want = if numpy { "1.26.4" } else { "no numpy" };
        ensure(
            printed == want,
            format!("{file} {extra:?}: python printed {printed}"),
        )?;
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            x.join("conda-meta/python-3.11.2-hb0f4dca_0_cpython.json"),
        )?)?;
        ensure(
            record["url"]
                == "https://conda.anaconda.org/conda-forge/linux-64/python-3.11.2-hb0f4dca_0_cpython.conda",
            format!("{file}: python's record names {}", record["url"]),
        )?;
    }
    Ok(())
}
