//! Parity with conda-pack: the same environment packed by conda-pack 0.9.2 (installed from PyPI
//! by `.ci/install-servers` into `DIR/condapack`) and by envpack, each extracted to the same
//! path and unpacked with its own `conda-unpack`, holds the same files with the same contents.
//!
//! conda-pack packs an existing prefix and takes each conda-managed file's *pristine* copy from
//! the package cache named by the record's `link.source`; envpack's staging prefix, kept with
//! `--keep-work`, has exactly such records (pointing at envpack's package cache), so conda-pack
//! packs that prefix.
//!
//! Differences allowed, each for a reason:
//! - Activation and unpacking are each tool's own: `bin/activate`, `bin/deactivate`,
//!   `bin/conda-unpack` (both); `bin/activate.fish`, `bin/conda_unpack_progress.py`
//!   (conda-pack); `share/envpack/` and the self-relocation hook in site-packages (envpack).
//! - `CACHEDIR.TAG`: rattler's installer leaves its cache tag in the prefix; conda-pack packs it,
//!   envpack drops it as installer state.
//! - `bin/python3.X-config`: conda-pack's `conda-unpack` skips every record matching
//!   `bin/python\d.\d` (meant for the interpreter, "Text file busy"), which also skips this
//!   script, so it keeps the build placeholder; envpack relocates it. Checked exactly.
//! - Permission bits: conda-pack keeps the packages' modes (0664/0775) and writes `conda-meta`
//!   records 0600; envpack normalises to 0644/0755. Only the executable bit is compared.
//! - `conda-meta/*.json`, compared as JSON with these fields left out: `url` and `channel`
//!   (envpack maps the mirror it installed from back to conda-forge's URL; conda-pack keeps
//!   the mirror's `file://` URL, a path of the build machine), and in `paths_data.paths`
//!   `sha256_in_prefix` / `size_in_bytes` of files that hold the prefix and `sha256` of
//!   generated entry points (envpack removes values measured in the staging prefix: they
//!   depend on its path and are wrong wherever the environment is unpacked).
//! - Python scripts in `bin/` (entry points such as `pip`): conda-pack writes
//!   `#!/usr/bin/env python3.11`, which runs the first `python3.11` on `PATH`; envpack writes a
//!   `/bin/sh` trampoline running the interpreter next to the script, so a script run by path
//!   uses its own environment. The rest of the script must be identical. (Shebangs with
//!   options get the same trampoline; there are none in this environment, the hermetic tests
//!   cover them.)
//!
//! The wall time of both packs of the same prefix is printed (`parity timing:`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use libtest_mimic::Failed;

use crate::pack::pack_env;
use crate::servers::ServersDir;
use crate::support::{self, Kind, ensure, envpack, run_ok, sha256_file};
use crate::{Case, Needs};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "parity::conda_pack_and_envpack_unpack_to_the_same_files",
            needs: &[Needs::Channel, Needs::Servers],
            run: conda_pack_and_envpack_unpack_to_the_same_files,
        },
        Case {
            name: "parity::envpack_unpack_leaves_what_each_conda_unpack_leaves",
            needs: &[Needs::Channel, Needs::Servers],
            run: envpack_unpack_leaves_what_each_conda_unpack_leaves,
        },
        Case {
            name: "parity::conda_packs_test_environments_unpack_as_its_conda_unpack_leaves_them",
            needs: &[Needs::Channel, Needs::Servers],
            run: conda_packs_test_environments_unpack_as_its_conda_unpack_leaves_them,
        },
    ]
}

/// One tree entry: a folder, a symlink and its target, or a file's executable bit and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    Link(PathBuf),
    File { exec: bool, sha256: String },
}

fn tree(root: &Path) -> BTreeMap<String, Entry> {
    support::tree(root)
        .into_iter()
        .map(|e| {
            let entry = match e.kind {
                Kind::Dir => Entry::Dir,
                Kind::Symlink => Entry::Link(std::fs::read_link(&e.path).unwrap()),
                Kind::File => Entry::File {
                    exec: std::fs::metadata(&e.path).unwrap().permissions().mode() & 0o111 != 0,
                    sha256: sha256_file(&e.path),
                },
            };
            (e.rel, entry)
        })
        .collect()
}

/// Paths that are each tool's own (activation, unpacking, envpack's relocation data).
fn own_addition(rel: &str) -> bool {
    matches!(
        rel,
        "bin/activate"
            | "bin/deactivate"
            | "bin/conda-unpack"
            | "bin/activate.fish"
            | "bin/conda_unpack_progress.py"
            | "CACHEDIR.TAG"
            | "share/envpack"
            | "conda-meta/envpack.json"
    ) || rel.starts_with("share/envpack/")
        || rel.ends_with("site-packages/_envpack_relocate.py")
        || rel.ends_with("site-packages/envpack-relocate.pth")
}

/// A `conda-meta` record without the fields the tools are allowed to differ in: the URL and
/// channel, and how the packed prefix was linked (`link.type`: conda-pack keeps what the prefix's
/// records say, hard links from the package cache here; envpack's archive says copy, which is
/// what an archive holds).
fn normalised_record(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("url");
    obj.remove("channel");
    if let Some(link) = obj.get_mut("link").and_then(|l| l.as_object_mut()) {
        link.remove("type");
    }
    if let Some(paths) = obj
        .get_mut("paths_data")
        .and_then(|p| p.get_mut("paths"))
        .and_then(|p| p.as_array_mut())
    {
        for e in paths.iter_mut().filter_map(|e| e.as_object_mut()) {
            let generated = e
                .get("path_type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.contains("entry_point"));
            e.remove("sha256_in_prefix");
            if generated {
                e.remove("sha256");
            }
            if generated || e.contains_key("prefix_placeholder") {
                e.remove("size_in_bytes");
            }
        }
    }
    v
}

// One scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
fn conda_pack_and_envpack_unpack_to_the_same_files() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let conda_pack = servers.conda_pack()?;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let (envpack_tarball, staging) = pack_env(dir.path(), &["python=3.11", "numpy", "six"], &[]);
    let envpack_pipeline = started.elapsed();
    let prefix = staging.join("env");

    // conda-pack needs the pristine package files: the records name envpack's package cache.
    let record = std::fs::read_dir(prefix.join("conda-meta"))?
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("/numpy-"))
        .ok_or("no numpy record")?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    let source = v["link"]["source"].as_str().unwrap_or_default();
    ensure(
        Path::new(source).join("info/paths.json").is_file(),
        format!("the staging record's link.source is not an extracted package: {source:?}"),
    )?;

    let cp_tarball = dir.path().join("conda-pack.tar.gz");
    let started = Instant::now();
    run_ok(
        Command::new(&conda_pack)
            .arg("-p")
            .arg(&prefix)
            .arg("-o")
            .arg(&cp_tarball)
            .arg("-q"),
    );
    let conda_pack_time = started.elapsed();
    let ep_prefix_tarball = dir.path().join("envpack-prefix.tar.gz");
    let started = Instant::now();
    run_ok(
        envpack()
            .args(["pack", "-q", "--prefix"])
            .arg(&prefix)
            .arg("-o")
            .arg(&ep_prefix_tarball),
    );
    let envpack_time = started.elapsed();
    eprintln!(
        "parity timing: conda-pack -p PREFIX -o X.tar.gz: {:.2} s; envpack pack --prefix PREFIX -o X.tar.gz: {:.2} s \
         (envpack pack environment.yml, solve + install + pack: {:.2} s; archives {} and {} bytes)",
        conda_pack_time.as_secs_f64(),
        envpack_time.as_secs_f64(),
        envpack_pipeline.as_secs_f64(),
        std::fs::metadata(&cp_tarball)?.len(),
        std::fs::metadata(&ep_prefix_tarball)?.len(),
    );

    // Both extracted to the same path, each unpacked with its own conda-unpack.
    let base = tempfile::Builder::new().prefix("ep").tempdir_in("/tmp")?;
    let target = base.path().join("env");
    support::extract(&cp_tarball, &target);
    // conda-pack's conda-unpack is `#!/usr/bin/env python`: run it with the host's python3.
    run_ok(
        Command::new("python3")
            .arg(target.join("bin/conda-unpack"))
            .current_dir(&target),
    );
    let cp = tree(&target);
    let cp_records: BTreeMap<String, serde_json::Value> = cp
        .keys()
        .filter(|k| k.starts_with("conda-meta/") && k.ends_with(".json"))
        .map(|k| (k.clone(), normalised_record(&target.join(k))))
        .collect();
    let cp_config = std::fs::read_to_string(target.join("bin/python3.11-config"))?;
    let cp_python_scripts: BTreeMap<String, Vec<u8>> = cp
        .keys()
        .filter(|k| k.starts_with("bin/"))
        .filter_map(|k| {
            let data = std::fs::read(target.join(k)).ok()?;
            data.starts_with(b"#!/usr/bin/env python")
                .then(|| (k.clone(), data))
        })
        .collect();
    std::fs::remove_dir_all(&target)?;
    support::extract(&envpack_tarball, &target);
    run_ok(Command::new(target.join("bin/conda-unpack")).current_dir(&target));
    let ep = tree(&target);
    let real = target.canonicalize()?;

    let mut differences = Vec::new();
    let mut python_scripts = 0;
    for key in cp.keys().chain(ep.keys().filter(|k| !cp.contains_key(*k))) {
        if own_addition(key) {
            continue;
        }
        let (a, b) = (cp.get(key), ep.get(key));
        if key.starts_with("conda-meta/") && key.ends_with(".json") {
            if b.is_none() || cp_records.get(key) != Some(&normalised_record(&target.join(key))) {
                differences.push(format!("{key}: records differ"));
            }
            continue;
        }
        if key == "bin/python3.11-config" && a != b {
            // conda-pack's conda-unpack skipped it: it still holds the build placeholder.
            let ours = std::fs::read_to_string(target.join(key))?;
            ensure(
                cp_config.contains("_placehold") && !ours.contains("_placehold"),
                "bin/python3.11-config differs for another reason than conda-pack skipping it",
            )?;
            ensure(
                ours.contains(&format!("prefix=\"{}\"", real.display())),
                format!("envpack's bin/python3.11-config is not relocated:\n{ours}"),
            )?;
            continue;
        }
        if let (Some(theirs), Some(Entry::File { .. })) = (cp_python_scripts.get(key), b)
            && a != b
        {
            let ours = std::fs::read(target.join(key))?;
            let body = |d: &[u8], lines: usize| {
                d.splitn(lines + 1, |&c| c == b'\n')
                    .last()
                    .map(<[u8]>::to_vec)
            };
            if ours.starts_with(b"#!/bin/sh\n'''true';") && body(theirs, 1) == body(&ours, 3) {
                python_scripts += 1;
                continue;
            }
        }
        if a != b {
            differences.push(format!("{key}: conda-pack {a:?}, envpack {b:?}"));
        }
    }
    ensure(
        differences.is_empty(),
        format!(
            "{} differences, e.g.:\n{}",
            differences.len(),
            differences
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )?;
    eprintln!("parity: {python_scripts} Python scripts differ only in their shebang");
    // The comparison saw the whole environment.
    ensure(
        cp.len() > 1000 && ep.contains_key("lib/python3.11/site-packages/numpy/__init__.py"),
        format!("only {} entries compared", cp.len()),
    )?;
    Ok(())
}

/// The differences between two trees, at most 30 named.
fn tree_differences(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<String> {
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .take(30)
        .map(|k| format!("{k}: {:?} / {:?}", a.get(k), b.get(k)))
        .collect()
}

/// `envpack unpack` against each tool's own `conda-unpack`: the same environment packed by
/// conda-pack 0.9.2 and by envpack, each extracted with tar and unpacked with its own script,
/// then unpacked at the same path by `envpack unpack` (no Python involved): the trees are the
/// same, file by file (contents, executable bits, symlinks). The one difference allowed: the
/// lock file envpack's Python `conda-unpack` creates in `share/envpack/`.
fn envpack_unpack_leaves_what_each_conda_unpack_leaves() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let conda_pack = servers.conda_pack()?;
    let dir = tempfile::tempdir()?;
    let (envpack_tarball, staging) = pack_env(dir.path(), &["python=3.11", "numpy", "six"], &[]);
    let cp_tarball = dir.path().join("conda-pack.tar.gz");
    run_ok(
        Command::new(&conda_pack)
            .arg("-p")
            .arg(staging.join("env"))
            .arg("-o")
            .arg(&cp_tarball)
            .arg("-q"),
    );
    let base = tempfile::Builder::new().prefix("ep").tempdir_in("/tmp")?;
    let target = base.path().join("env");
    for (name, tarball) in [("conda-pack", &cp_tarball), ("envpack", &envpack_tarball)] {
        let entries = unpack_both_ways(name, tarball, &target, 10)?;
        ensure(entries > 1000, format!("{name}: only {entries} entries"))?;
        // And the environment works where it is, without any further step.
        let py = run_ok(
            Command::new(target.join("bin/python"))
                .args(["-c", "import numpy, six, sys; print(sys.prefix)"])
                .env("ENVPACK_RELOCATE_LOG", base.path().join("log")),
        );
        ensure(
            String::from_utf8_lossy(&py.stdout).trim() == target.display().to_string(),
            format!(
                "{name}: sys.prefix is {}",
                String::from_utf8_lossy(&py.stdout)
            ),
        )?;
        ensure(
            !base.path().join("log").exists(),
            format!("{name}: the first Python start relocated files again"),
        )?;
        std::fs::remove_dir_all(&target)?;
    }
    Ok(())
}

/// Extracts `tarball` (made by `origin`: "conda-pack" or "envpack") at `target` and runs its
/// own `conda-unpack` (conda-pack's with the host's python3: its shebang is
/// `#!/usr/bin/env python`), then extracts it again at the same path with `envpack unpack`:
/// the two trees must be the same, file by file, and envpack must have relocated at least
/// `min_relocated` files. Leaves envpack's tree at `target`; returns its number of entries.
fn unpack_both_ways(
    origin: &str,
    tarball: &Path,
    target: &Path,
    min_relocated: u64,
) -> Result<usize, Failed> {
    support::extract(tarball, target);
    let mut cmd = if origin == "conda-pack" {
        let mut c = Command::new("python3");
        c.arg(target.join("bin/conda-unpack"));
        c
    } else {
        Command::new(target.join("bin/conda-unpack"))
    };
    run_ok(cmd.current_dir(target));
    let mut by_script = tree(target);
    by_script.remove("share/envpack/.lock");
    std::fs::remove_dir_all(target)?;
    let started = Instant::now();
    let out = run_ok(
        envpack()
            .args(["unpack", "--json"])
            .arg(tarball)
            .arg(target),
    );
    let took = started.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure(
        v["origin"] == origin && v["relocated"].as_u64().unwrap_or(0) >= min_relocated,
        format!("{origin}: {v}"),
    )?;
    let by_envpack = tree(target);
    let differences = tree_differences(&by_script, &by_envpack);
    ensure(
        differences.is_empty(),
        format!(
            "{origin}: conda-unpack / envpack unpack differ:\n{}",
            differences.join("\n")
        ),
    )?;
    eprintln!(
        "unpack parity ({origin}, {}): {} entries identical; envpack unpack took {:.2} s",
        tarball.display(),
        by_envpack.len(),
        took.as_secs_f64()
    );
    Ok(by_envpack.len())
}

/// conda-pack's own test environments (its `testing/env_yamls` and `setup_envs.sh`), made
/// with what this machine has: the test channel stands in for conda-forge (Python 3.11 where
/// conda-pack uses 3.9), and its `ctools` channel's two test libraries (noarch Python, each
/// with a console script) are built here. Each environment is staged by envpack, packed by
/// conda-pack as its tests pack it, and unpacked both by conda-pack's `conda-unpack` and by
/// `envpack unpack` at one path: the same trees, and the environment works.
/// - basic_python: the libraries, pip, a `pip:` wheel (cowsay, where conda-pack's installs
///   pytest), and the stray `bin/activate`, `bin/deactivate`, `bin/conda` setup_envs.sh
///   touches for conda-pack to replace;
/// - basic_python_missing_files: a library's `.py` files removed, packed with
///   `--ignore-missing-files`;
/// - basic_python_editable: a project installed with `pip install -e`, which conda-pack
///   refuses, then packs with `--ignore-editable-packages`;
/// - activate_scripts: Python with an `activate.d`/`deactivate.d` pair that activation runs;
/// - nopython: one C library and its tools, no Python (xz where conda-pack uses snappy).
///
/// (has_conda needs conda itself, which the test channel does not have.)
#[allow(clippy::too_many_lines)]
fn conda_packs_test_environments_unpack_as_its_conda_unpack_leaves_them() -> Result<(), Failed> {
    use crate::support::channel::{Channel, Package};
    use std::fmt::Write as _;
    let servers = ServersDir::from_env()?;
    let conda_pack = servers.conda_pack()?;
    let dir = tempfile::tempdir()?;
    let mut ctools = Channel::new(&dir.path().join("ctools"));
    for n in ["1", "2"] {
        let module = format!("conda_pack_test_lib{n}");
        ctools.add(
            Package::new(&format!("conda_pack_test_lib{n}"), "0.0.1")
                .depends("python >=3.11")
                .noarch_python(&[&format!("conda-pack-test-lib{n} = {module}.cli:main")])
                .file(&format!("site-packages/{module}/__init__.py"), "")
                .file(
                    &format!("site-packages/{module}/cli.py"),
                    format!("def main():\n    print('{module} ok')\n"),
                ),
        );
    }
    ctools.write();
    let ctools_url = format!("file://{}", dir.path().join("ctools").display());
    let stage = |name: &str, deps: &[&str], pip: &[&str]| -> PathBuf {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let mut text =
            format!("name: {name}\nchannels: [{ctools_url}, conda-forge]\ndependencies:\n");
        for d in deps {
            let _ = writeln!(text, "  - {d}");
        }
        if !pip.is_empty() {
            text += "  - pip:\n";
            for p in pip {
                let _ = writeln!(text, "      - {p}");
            }
        }
        std::fs::write(folder.join("environment.yml"), text).unwrap();
        let work = folder.join("work");
        run_ok(
            envpack()
                .arg("pack")
                .arg(folder.join("environment.yml"))
                .arg("-o")
                .arg(folder.join("envpack.tar.gz"))
                .args(["--mirror", &crate::mirror_arg(), "--keep-work", "-q"])
                .arg("--work-dir")
                .arg(&work)
                .env("PIP_NO_INDEX", "1")
                .env("PIP_FIND_LINKS", servers.wheels()),
        );
        support::kept_work_folder(&work).join("env")
    };
    let base = tempfile::Builder::new().prefix("ep").tempdir_in("/tmp")?;
    let target = base.path().join("env");
    // Packs `prefix` with conda-pack (`extra`: its flags), unpacks the tarball both ways at
    // `target` (at least `relocated` files relocated), runs `script` there with bash
    // (conda-pack's `bin/activate` knows bash and zsh, not dash) and requires each of
    // `expected` in what it prints. Leaves envpack's tree at `target`.
    let check = |name: &str,
                 prefix: &Path,
                 extra: &[&str],
                 relocated: u64,
                 script: &str,
                 expected: &[&str]|
     -> Result<(), Failed> {
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        let tarball = dir.path().join(name).join("conda-pack.tar.gz");
        run_ok(
            Command::new(&conda_pack)
                .arg("-p")
                .arg(prefix)
                .arg("-o")
                .arg(&tarball)
                .arg("-q")
                .args(extra),
        );
        unpack_both_ways("conda-pack", &tarball, &target, relocated)?;
        let out = run_ok(
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .current_dir(&target),
        );
        let out = String::from_utf8_lossy(&out.stdout);
        for e in expected {
            ensure(out.contains(e), format!("{name}: {e:?} not in:\n{out}"))?;
        }
        Ok(())
    };

    // basic_python.
    let lib_deps = [
        "python=3.11",
        "conda_pack_test_lib1",
        "conda_pack_test_lib2",
        "pip",
    ];
    let prefix = stage("basic_python", &lib_deps, &["cowsay"]);
    for stray in ["bin/activate", "bin/deactivate", "bin/conda"] {
        std::fs::write(prefix.join(stray), "")?;
    }
    let prefix_shown = target.display().to_string();
    check(
        "basic_python",
        &prefix,
        &[],
        10,
        ". bin/activate && conda-pack-test-lib1 && conda-pack-test-lib2 && cowsay -t moo && python -c 'import sys; print(sys.prefix)'",
        &[
            "conda_pack_test_lib1 ok",
            "conda_pack_test_lib2 ok",
            "moo",
            &prefix_shown,
        ],
    )?;
    ensure(
        std::fs::read(target.join("bin/conda")).is_err(),
        "basic_python: the stray bin/conda was packed",
    )?;

    // basic_python_missing_files. (conda-pack's entry points say `#!/usr/bin/env python3.11`:
    // they run in the environment once it is activated.)
    let prefix = stage("basic_python_missing_files", &lib_deps, &[]);
    let site = prefix.join("lib/python3.11/site-packages/conda_pack_test_lib2");
    std::fs::remove_file(site.join("cli.py"))?;
    check(
        "basic_python_missing_files",
        &prefix,
        &["--ignore-missing-files"],
        10,
        ". bin/activate && conda-pack-test-lib1 && test ! -e lib/python3.11/site-packages/conda_pack_test_lib2/cli.py && echo missing-stays-missing",
        &["conda_pack_test_lib1 ok", "missing-stays-missing"],
    )?;

    // basic_python_editable: a project installed with `pip install -e` (conda-pack's uses
    // `setup.py develop`); conda-pack refuses it unless told to leave editable packages be.
    let prefix = stage(
        "basic_python_editable",
        &["python=3.11", "conda_pack_test_lib1", "pip", "setuptools"],
        &[],
    );
    let project = dir.path().join("editable_project");
    std::fs::create_dir_all(project.join("editable_lib"))?;
    std::fs::write(
        project.join("setup.py"),
        "from setuptools import setup\nsetup(name='editable_lib', version='0.0.1', packages=['editable_lib'])\n",
    )?;
    std::fs::write(
        project.join("editable_lib/__init__.py"),
        "print('editable_lib ok')\n",
    )?;
    run_ok(
        Command::new(prefix.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-build-isolation",
                "--no-deps",
                "-e",
            ])
            .arg(&project),
    );
    let refused = crate::support::run_err(
        Command::new(&conda_pack)
            .arg("-p")
            .arg(&prefix)
            .arg("-o")
            .arg(dir.path().join("refused.tar.gz")),
    );
    ensure(
        String::from_utf8_lossy(&refused.stderr).contains("editable"),
        format!("conda-pack did not refuse the editable package: {refused:?}"),
    )?;
    check(
        "basic_python_editable",
        &prefix,
        &["--ignore-editable-packages"],
        10,
        ". bin/activate && python -c 'import editable_lib' && conda-pack-test-lib1",
        &["editable_lib ok", "conda_pack_test_lib1 ok"],
    )?;

    // activate_scripts.
    let prefix = stage("activate_scripts", &["python=3.11"], &[]);
    for (d, body) in [
        ("activate.d", "export CONDAPACK_ACTIVATED=1\n"),
        ("deactivate.d", "unset CONDAPACK_ACTIVATED\n"),
    ] {
        let folder = prefix.join("etc/conda").join(d);
        std::fs::create_dir_all(&folder)?;
        std::fs::write(folder.join("conda_pack_test.sh"), body)?;
    }
    check(
        "activate_scripts",
        &prefix,
        &[],
        10,
        ". bin/activate && echo \"on=$CONDAPACK_ACTIVATED\" && . bin/deactivate && echo \"off=${CONDAPACK_ACTIVATED:-unset}\"",
        &["on=1", "off=unset"],
    )?;

    // nopython.
    let prefix = stage("nopython", &["xz"], &[]);
    check(
        "nopython",
        &prefix,
        &[],
        1,
        "bin/xz --version && grep '^prefix=' lib/pkgconfig/liblzma.pc",
        &["xz (XZ Utils)", &format!("prefix={}", target.display())],
    )
}
