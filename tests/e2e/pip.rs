//! The `pip:` section: installed offline from the wheelhouse `.ci/install-servers` made
//! (`cowsay 6.1`, pure Python with a `cowsay` console script), packed, extracted elsewhere, and
//! the console script run from the extracted environment, after `source bin/activate` and
//! directly by path.

use std::path::Path;
use std::process::Command;

use libtest_mimic::Failed;
use serde_json::Value;

use crate::servers::ServersDir;
use crate::support::{self, ensure, envpack, run_ok};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "pip::console_script_of_a_pip_dependency_runs_from_the_extracted_environment",
            needs: &[Needs::Channel, Needs::Servers],
            run: console_script_of_a_pip_dependency_runs_from_the_extracted_environment,
        },
        Case {
            name: "pip::a_requirements_file_beside_the_models_is_packed_for_a_model",
            needs: &[Needs::Channel, Needs::Servers],
            run: a_requirements_file_beside_the_models_is_packed_for_a_model,
        },
        Case {
            name: "pip::pip_wheels_follow_glibc_with_uv_and_pip_warns",
            needs: &[Needs::Channel, Needs::Servers],
            run: pip_wheels_follow_glibc_with_uv_and_pip_warns,
        },
        Case {
            name: "pip::uv_on_path_installs_the_pip_section",
            needs: &[Needs::Channel, Needs::Servers],
            run: uv_on_path_installs_the_pip_section,
        },
        Case {
            name: "pip::pip_replacing_a_conda_package_keeps_pips_version",
            needs: &[Needs::Channel, Needs::Servers],
            run: pip_replacing_a_conda_package_keeps_pips_version,
        },
        Case {
            name: "pip::the_same_pip_environment_staged_in_two_folders_packs_to_the_same_bytes",
            needs: &[Needs::Channel, Needs::Servers],
            run: the_same_pip_environment_staged_in_two_folders_packs_to_the_same_bytes,
        },
        Case {
            name: "pip::a_changed_pip_line_rebuilds_and_an_unchanged_one_is_up_to_date",
            needs: &[Needs::Channel, Needs::Servers],
            run: a_changed_pip_line_rebuilds_and_an_unchanged_one_is_up_to_date,
        },
    ]
}

/// Reproducibility with a `pip:` section: staged in two work folders (paths of different
/// lengths), the archives are byte-identical, and every entry of pip's `RECORD` (the console
/// script whose shebang envpack rewrote among them) holds the sha256 and size of the bytes
/// packed.
fn the_same_pip_environment_staged_in_two_folders_packs_to_the_same_bytes() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let env = pip_env(
        dir.path(),
        "repro",
        &["python=3.11", "pip"],
        &["cowsay==6.1"],
        &servers.wheels(),
    );
    let pack = |work: &str, out: &str| -> std::path::PathBuf {
        let out = dir.path().join(out);
        run_ok(
            envpack()
                .arg("pack")
                .arg(&env)
                .arg("-o")
                .arg(&out)
                .args(["--mirror", &mirror_arg(), "-q"])
                .arg("--work-dir")
                .arg(dir.path().join(work)),
        );
        out
    };
    let a = pack("w", "a.tar.gz");
    let b = pack("a-much-longer-work-folder", "b.tar.gz");
    let t = dir.path().join("b");
    support::extract(&b, &t);
    let sp = t.join("lib/python3.11/site-packages");
    let record = support::read(sp.join("cowsay-6.1.dist-info/RECORD"));
    let mut checked = Vec::new();
    for line in record.lines() {
        let mut f = line.rsplitn(3, ',');
        let (Some(size), Some(hash), Some(file)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("RECORD line {line:?}").into());
        };
        if hash.is_empty() {
            continue;
        }
        let bytes = std::fs::read(sp.join(file))?;
        let want = format!(
            "sha256={}",
            urlsafe_b64(&<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        );
        ensure(
            hash == want && size == bytes.len().to_string(),
            format!(
                "RECORD says {file} is {hash},{size}; packed: {want},{}",
                bytes.len()
            ),
        )?;
        checked.push(file.to_string());
    }
    ensure(
        checked.iter().any(|f| f.ends_with("/bin/cowsay")),
        format!("RECORD does not list bin/cowsay: {checked:?}"),
    )?;
    ensure(
        !support::contains(
            &std::fs::read(t.join("bin/cowsay"))?,
            dir.path().to_string_lossy().as_bytes(),
        ),
        "bin/cowsay still names the work folder",
    )?;
    let (sa, sb) = (support::sha256_file(&a), support::sha256_file(&b));
    ensure(
        sa == sb,
        format!("two stagings packed to different bytes: {sa} and {sb}"),
    )?;
    Ok(())
}

/// Base64 with the URL-safe alphabet and no padding, as pip writes `RECORD` hashes.
fn urlsafe_b64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:08b}");
        s
    });
    while !bits.len().is_multiple_of(6) {
        bits.push('0');
    }
    (0..bits.len() / 6)
        .map(|i| char::from(ABC[usize::from_str_radix(&bits[6 * i..6 * i + 6], 2).unwrap()]))
        .collect()
}

/// Incremental packs with a `pip:` section: the same command again writes nothing (same bytes,
/// same mtime) and says "up to date"; one `pip:` line changed rebuilds, without `--force`.
fn a_changed_pip_line_rebuilds_and_an_unchanged_one_is_up_to_date() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("env.tar.gz");
    let pack = |env: &Path| -> Result<serde_json::Value, Failed> {
        let o = run_ok(envpack().arg("pack").arg(env).arg("-o").arg(&out).args([
            "--mirror",
            &mirror_arg(),
            "-q",
            "--json",
        ]));
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let env = pip_env(
        dir.path(),
        "inc",
        &["python=3.11", "pip"],
        &["cowsay"],
        &servers.wheels(),
    );
    let first = pack(&env)?;
    ensure(first["up_to_date"] == false, format!("{first}"))?;
    let (bytes, mtime) = (
        support::sha256_file(&out),
        std::fs::metadata(&out)?.modified()?,
    );
    let again = pack(&env)?;
    ensure(
        again["up_to_date"] == true && again["digest"] == first["digest"],
        format!("the repeat was not up to date: {again}"),
    )?;
    ensure(
        support::sha256_file(&out) == bytes && std::fs::metadata(&out)?.modified()? == mtime,
        "the repeat rewrote the output",
    )?;
    let env = pip_env(
        dir.path(),
        "inc",
        &["python=3.11", "pip"],
        &["cowsay==6.1"],
        &servers.wheels(),
    );
    let changed = pack(&env)?;
    ensure(
        changed["up_to_date"] == false && changed["digest"] != first["digest"],
        format!("a changed pip: line did not rebuild: {changed}"),
    )?;
    ensure(
        std::fs::metadata(&out)?.modified()? != mtime,
        "the output was not rewritten",
    )?;
    Ok(())
}

/// An environment file with conda `deps` and a `pip:` section installing `pip` offline from
/// the wheelhouse `wheels`.
fn pip_env(
    dir: &Path,
    name: &str,
    deps: &[&str],
    pip: &[&str],
    wheels: &Path,
) -> std::path::PathBuf {
    let conda = deps
        .iter()
        .fold(String::new(), |s, d| s + "  - " + d + "\n");
    let pip = pip
        .iter()
        .fold(String::new(), |s, p| s + "    - " + p + "\n");
    let text = format!(
        "name: {name}\nchannels: [conda-forge]\ndependencies:\n{conda}  - pip:\n    - --no-index\n    - --find-links {}\n{pip}",
        wheels.display()
    );
    let env = dir.join("environment.yml");
    std::fs::write(&env, text).unwrap();
    env
}

/// Runs `script` with bash in `dir`, with a `sitecustomize` on `PYTHONPATH` that records which
/// Python ran (its `sys.prefix`); returns (stdout, that prefix).
fn run_probed(script: &str, dir: &Path, probe: &Path) -> Result<(String, String), Failed> {
    let out_file = probe.join("ran-with");
    let _ = std::fs::remove_file(&out_file);
    let out = run_ok(
        Command::new("bash")
            .arg("-euc")
            .arg(script)
            .current_dir(dir)
            .env("PYTHONPATH", probe)
            .env("PROBE_OUT", &out_file)
            .env_remove("PYTHONHOME")
            .env_remove("VIRTUAL_ENV")
            .env_remove("CONDA_PREFIX"),
    );
    let ran_with = std::fs::read_to_string(&out_file)
        .map_err(|e| format!("the probe did not run ({e}): no Python started?"))?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), ran_with))
}

fn console_script_of_a_pip_dependency_runs_from_the_extracted_environment() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let wheels = servers.wheels();
    let dir = tempfile::tempdir()?;
    let env = pip_env(
        dir.path(),
        "pip-e2e",
        &["python=3.11", "pip"],
        &["cowsay==6.1"],
        &wheels,
    );
    let tarball = dir.path().join("pip-e2e.tar.gz");
    let work = dir.path().join("work");
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(&tarball)
            .args(["--mirror", &mirror_arg(), "-q"])
            .arg("--work-dir")
            .arg(&work),
    );
    let members = support::list(&tarball);
    ensure(
        members.iter().any(|m| m == "bin/cowsay")
            && members
                .iter()
                .any(|m| m.starts_with("lib/python3.11/site-packages/cowsay-6.1.dist-info/")),
        "the archive has no bin/cowsay or cowsay-6.1.dist-info",
    )?;

    let base = tempfile::Builder::new().prefix("ep").tempdir_in("/tmp")?;
    let t = base.path().join("env");
    support::extract(&tarball, &t);
    let real = t.canonicalize()?;
    let probe = dir.path().join("probe");
    std::fs::create_dir(&probe)?;
    std::fs::write(
        probe.join("sitecustomize.py"),
        "import os, sys\nwith open(os.environ['PROBE_OUT'], 'w') as f:\n    f.write(sys.prefix)\n",
    )?;

    // After `source bin/activate` (which also relocates the environment, once).
    let (out, ran_with) = run_probed("set +u; source bin/activate; cowsay -t moo", &t, &probe)?;
    ensure(
        out.contains("moo") && out.contains("||"),
        format!("cowsay printed:\n{out}"),
    )?;
    ensure(
        Path::new(&ran_with) == real,
        format!(
            "cowsay ran with the Python of {ran_with}, not {}",
            real.display()
        ),
    )?;
    // Directly by path, with the caller's PATH (whatever python3.11 it holds).
    let (out, ran_with) = run_probed("\"$PWD/bin/cowsay\" -t direct", &t, &probe)?;
    ensure(out.contains("direct"), format!("cowsay printed:\n{out}"))?;
    ensure(
        Path::new(&ran_with) == real,
        format!(
            "bin/cowsay run by path used the Python of {ran_with}, not {}",
            real.display()
        ),
    )?;
    // A second copy, never activated: run by path first.
    let second = base.path().join("second");
    support::extract(&tarball, &second);
    let (out, ran_with) = run_probed("\"$PWD/bin/cowsay\" -t first", &second, &probe)?;
    ensure(out.contains("first"), format!("cowsay printed:\n{out}"))?;
    ensure(
        Path::new(&ran_with) == second.canonicalize()?,
        format!("bin/cowsay run by path used the Python of {ran_with}"),
    )?;
    Ok(())
}

/// pip upgrading a conda package (numpy 1.26 from conda, 2.x from the `pip:` section): the
/// environment keeps pip's version, the conda record is dropped with a warning, and the pack
/// does not fail over the files pip removed.
fn pip_replacing_a_conda_package_keeps_pips_version() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let env = pip_env(
        dir.path(),
        "pip-replaces",
        &["python=3.11", "numpy<2", "pip"],
        &["numpy==2.4.6"],
        &servers.wheels(),
    );
    let tarball = dir.path().join("out.tar.gz");
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(&tarball)
            .args(["--mirror", &mirror_arg(), "--no-progress"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(
        stderr.contains("pip replaced the conda package numpy-1.26.4"),
        format!("no warning about the replaced numpy: {stderr}"),
    )?;
    let x = dir.path().join("x");
    support::extract(&tarball, &x);
    let records: Vec<String> = std::fs::read_dir(x.join("conda-meta"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure(
        !records.iter().any(|r| r.starts_with("numpy-")),
        format!("numpy's conda record is still there: {records:?}"),
    )?;
    let out = run_ok(
        Command::new(x.join("bin/python")).args(["-c", "import numpy; print(numpy.__version__)"]),
    );
    ensure(
        String::from_utf8_lossy(&out.stdout).trim() == "2.4.6",
        format!("numpy {}", String::from_utf8_lossy(&out.stdout)),
    )?;
    // The staging prefix was hard-linked from the package cache, and pip removed conda's
    // numpy from it and wrote its own: the cache still holds the packages' bytes.
    cache_is_pristine(&["numpy-1.26.4-", "python-3.11.2-", "pip-"])
}

/// Every file of the cached packages whose folder names start with one of `names` has the
/// sha256 its package's `info/paths.json` records.
fn cache_is_pristine(names: &[&str]) -> Result<(), Failed> {
    let pkgs = support::cache_dir().join("pkgs");
    let mut checked = 0;
    for e in std::fs::read_dir(&pkgs)? {
        let dir = e?.path();
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !dir.is_dir() || !names.iter().any(|n| name.starts_with(n)) {
            continue;
        }
        let paths: Value = serde_json::from_slice(&std::fs::read(dir.join("info/paths.json"))?)?;
        for p in paths["paths"].as_array().into_iter().flatten() {
            let (Some(rel), Some(sha)) = (p["_path"].as_str(), p["sha256"].as_str()) else {
                continue;
            };
            if p["path_type"] != "hardlink" {
                continue;
            }
            let got = support::sha256_file(&dir.join(rel));
            ensure(
                got == sha,
                format!("{name}/{rel} changed in the package cache"),
            )?;
            checked += 1;
        }
    }
    ensure(
        checked > 0,
        format!("no cached package named {names:?} in {}", pkgs.display()),
    )
}

/// With `uv` on PATH the `pip:` section is installed by `uv pip` (it leaves `uv` in the
/// distribution's INSTALLER), with the same result: the console script runs from the
/// extracted environment.
/// Writes two wheels of `glibcprobe` into `dir` (Python's `zipfile`): 1.0 for any platform,
/// 2.0 only for `manylinux_2_<minor>_x86_64`.
fn probe_wheels(dir: &Path, minor: u32) {
    let script = r#"
import sys, zipfile
d, minor = sys.argv[1], sys.argv[2]
for version, tag in (("1.0", "py3-none-any"), ("2.0", "py3-none-manylinux_2_%s_x86_64" % minor)):
    info = "glibcprobe-%s.dist-info" % version
    with zipfile.ZipFile("%s/glibcprobe-%s-%s.whl" % (d, version, tag), "w") as z:
        z.writestr("glibcprobe.py", "VERSION = %r\n" % version)
        z.writestr(info + "/METADATA", "Metadata-Version: 2.1\nName: glibcprobe\nVersion: %s\n" % version)
        z.writestr(info + "/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: %s\n" % tag)
        z.writestr(info + "/RECORD", "")
"#;
    run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir)
            .arg(minor.to_string()),
    );
}

/// The glibc of this machine (`getconf GNU_LIBC_VERSION`), as its minor version.
fn host_glibc_minor() -> Option<u32> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("glibc 2.")?
        .parse()
        .ok()
}

/// `--glibc` lower than this machine's: uv installs the wheel for the target (the 1.0 for any
/// platform, not the 2.0 for this machine's glibc only); pip cannot, and says so.
fn pip_wheels_follow_glibc_with_uv_and_pip_warns() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let host = host_glibc_minor().ok_or("cannot tell this machine's glibc")?;
    ensure(
        host >= 29,
        format!("glibc 2.{host}: too old for this trial"),
    )?;
    let uv_bin = servers.root.join("uv/bin");
    let dir = tempfile::tempdir()?;
    let wheels = dir.path().join("wheels");
    std::fs::create_dir(&wheels)?;
    probe_wheels(&wheels, host);
    let env = pip_env(
        dir.path(),
        "glibc",
        &["python=3.11", "pip"],
        &["glibcprobe"],
        &wheels,
    );
    let uv_path = std::env::join_paths(std::iter::once(uv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let version_packed = |out: &Path| -> Result<String, Failed> {
        let x = dir.path().join(out.file_stem().unwrap_or_default());
        support::extract(out, &x);
        Ok(support::read(
            x.join("lib/python3.11/site-packages/glibcprobe.py"),
        ))
    };
    let target = format!("2.{}", host - 1);
    let pack = |name: &str, glibc: &str, path: Option<&std::ffi::OsStr>| {
        let out = dir.path().join(name);
        let mut c = envpack();
        c.arg("pack").arg(&env).arg("-o").arg(&out).args([
            "--mirror",
            &mirror_arg(),
            "-q",
            "--glibc",
            glibc,
        ]);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        (run_ok(&mut c), out)
    };
    let (_, lower) = pack("uv-lower.tar.gz", &target, Some(&uv_path));
    let v = version_packed(&lower)?;
    ensure(v.contains("1.0"), format!("uv, --glibc {target}: {v}"))?;
    let (_, same) = pack("uv-same.tar.gz", &format!("2.{host}"), Some(&uv_path));
    let v = version_packed(&same)?;
    ensure(v.contains("2.0"), format!("uv, --glibc 2.{host}: {v}"))?;
    let (o, _) = pack("pip-lower.tar.gz", &target, None);
    let err = support::stderr(&o);
    ensure(
        err.contains(&format!(
            "pip picks wheels for this machine's glibc 2.{host}, newer than the target's {target}"
        )),
        format!("pip, --glibc {target}: no warning in {err}"),
    )?;
    Ok(())
}

fn uv_on_path_installs_the_pip_section() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let uv_bin = servers.root.join("uv/bin");
    ensure(
        uv_bin.join("uv").is_file(),
        format!(
            "{} missing: run .ci/install-servers again",
            uv_bin.join("uv").display()
        ),
    )?;
    let dir = tempfile::tempdir()?;
    let env = pip_env(
        dir.path(),
        "uv-e2e",
        &["python=3.11"],
        &["cowsay==6.1"],
        &servers.wheels(),
    );
    let tarball = dir.path().join("uv.tar.gz");
    let path = std::env::join_paths(std::iter::once(uv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(&tarball)
            .args(["--mirror", &mirror_arg(), "-q"])
            .env("PATH", path),
    );
    let x = dir.path().join("x");
    support::extract(&tarball, &x);
    let installer = std::fs::read_to_string(
        x.join("lib/python3.11/site-packages/cowsay-6.1.dist-info/INSTALLER"),
    )?;
    ensure(
        installer.trim() == "uv",
        format!("installed by {installer}"),
    )?;
    let out = run_ok(Command::new(x.join("bin/cowsay")).args(["-t", "moo"]));
    ensure(
        String::from_utf8_lossy(&out.stdout).contains("moo"),
        "cowsay did not speak",
    )?;
    // uv wrote into a staging prefix hard-linked from the package cache: the cache is intact.
    cache_is_pristine(&["python-3.11.2-", "pip-"])
}

/// The templates' other layout: a `requirements.txt` at the project root, no environment file.
/// It becomes python=X.Y and pip from the channel, the file installed as the pip: section.
fn a_requirements_file_beside_the_models_is_packed_for_a_model() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let model = project.join("models/m");
    std::fs::create_dir_all(&model)?;
    std::fs::write(
        model.join("config.pbtxt"),
        "name: \"m\"\nbackend: \"python\"\n",
    )?;
    std::fs::create_dir_all(project.join(".git"))?;
    std::fs::write(
        project.join("requirements.txt"),
        format!(
            "--no-index\n--find-links {}\ncowsay==6.1\n",
            servers.wheels().display()
        ),
    )?;
    let out = run_ok(
        envpack()
            .current_dir(project.join("models"))
            .args([
                "pack",
                "m",
                "--python",
                "3.11",
                "--no-check",
                "--json",
                "-q",
            ])
            .args(["--mirror", &mirror_arg()]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let used = report["models"][0]["environment_file"]
        .as_str()
        .unwrap_or_default();
    ensure(
        used.ends_with("project/requirements.txt"),
        format!("environment file {used}"),
    )?;
    let extracted = tempfile::tempdir()?;
    support::extract(&model.join("model-conda.tar.gz"), extracted.path());
    let said = support::sh("bin/cowsay -t moo && bin/python -V", extracted.path());
    ensure(
        said.contains("moo") && said.contains("Python 3.11"),
        format!("cowsay said {said}"),
    )?;
    Ok(())
}
