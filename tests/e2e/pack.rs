//! The pipeline against real conda-forge packages (the shared channel standing in for
//! conda-forge through `--mirror`): pack, move the staging prefix away, extract elsewhere,
//! and use the environment.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Failed;

use crate::support::{self, ensure, envpack, run_ok, sh};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "pack::python_numpy_six_work_from_a_new_shorter_path",
            needs: &[Needs::Channel],
            run: python_numpy_six_work_from_a_new_shorter_path,
        },
        Case {
            name: "pack::environment_relocates_itself_without_conda_unpack",
            needs: &[Needs::Channel],
            run: environment_relocates_itself_without_conda_unpack,
        },
        Case {
            name: "pack::same_environment_gives_same_bytes_wherever_staged",
            needs: &[Needs::Channel],
            run: same_environment_gives_same_bytes_wherever_staged,
        },
        Case {
            name: "pack::package_cache_route_gives_the_staged_routes_archive_and_leaves_the_cache",
            needs: &[Needs::Channel],
            run: package_cache_route_gives_the_staged_routes_archive_and_leaves_the_cache,
        },
    ]
}

/// Packs `deps` with the shared channel; returns (tarball, the folder the staging prefix was in).
pub fn pack_env(dir: &Path, deps: &[&str], extra: &[&str]) -> (PathBuf, PathBuf) {
    let env = support::write_environment(dir, "e2e", &["conda-forge"], deps);
    let work = dir.join("work-with-a-rather-long-name-to-differ-from-the-target");
    let out = dir.join("out.tar.gz");
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(&out)
            .args(["--mirror", &mirror_arg(), "--keep-work", "-q", "--force"])
            .arg("--work-dir")
            .arg(&work)
            .args(extra),
    );
    (out, support::kept_work_folder(&work))
}

/// A short fresh folder (the extraction target must differ in length from the staging path).
fn short_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ep")
        .tempdir_in("/tmp")
        .unwrap()
}

fn python_numpy_six_work_from_a_new_shorter_path() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let (tarball, staging) = pack_env(
        dir.path(),
        &["python=3.11", "numpy", "pip", "six"],
        &["--no-auto-relocate"],
    );
    let staging_env = staging.join("env");
    let staging_path = staging_env.to_str().unwrap().to_string();
    // The archive never names the build machine's paths.
    let raw = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc '{}'", tarball.display())),
    )
    .stdout;
    for needle in [
        staging_path.as_str(),
        support::cache_dir().to_str().unwrap(),
        crate::test_channel()?.to_str().unwrap(),
    ] {
        ensure(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            format!("the archive holds {needle}"),
        )?;
    }
    // The staging prefix is moved away, but still exists.
    let moved = staging.with_file_name("moved");
    std::fs::rename(&staging, &moved)?;

    let target = short_dir();
    let t = target.path();
    support::extract(&tarball, t);
    let real = t.canonicalize()?;
    let out = sh(
        "bin/python -c 'import sys, numpy, six, ssl, sqlite3; print(sys.prefix)'",
        t,
    );
    ensure(
        Path::new(out.trim()) == real,
        format!("sys.prefix is {out}, not {}", real.display()),
    )?;
    let out = sh(
        "set +u; source bin/activate; echo \"$CONDA_PREFIX\"; echo \"$PATH\"",
        t,
    );
    let mut lines = out.lines();
    ensure(
        lines.next() == Some(real.to_str().unwrap()),
        format!("CONDA_PREFIX after activate: {out}"),
    )?;
    ensure(
        lines
            .next()
            .is_some_and(|p| p.starts_with(&format!("{}/bin:", real.display()))),
        format!("PATH after activate: {out}"),
    )?;
    let out = sh("source bin/activate; pip --version", t);
    ensure(
        out.contains(&real.display().to_string()),
        format!("pip runs from elsewhere: {out}"),
    )?;
    // Without auto-relocation, the files still hold the archive prefix until conda-unpack.
    let before = sh("bin/openssl version -d", t);
    ensure(
        !before.contains(real.to_str().unwrap()),
        format!("relocated before conda-unpack: {before}"),
    )?;
    sh("bin/conda-unpack", t);
    let after = sh("bin/openssl version -d", t);
    ensure(
        after.contains(&format!("{}/ssl", real.display())),
        format!("openssl after conda-unpack: {after}"),
    )?;
    let leftovers: Vec<String> = support::files_containing(t, staging_path.as_bytes())
        .into_iter()
        .filter(|f| !f.ends_with(".pyc"))
        .collect();
    ensure(
        leftovers.is_empty(),
        format!("files still naming the staging prefix: {leftovers:?}"),
    )?;
    let leftovers = support::files_containing(t, envpack::ARCHIVE_PREFIX.as_bytes())
        .into_iter()
        .filter(|f| !f.ends_with(".pyc") && !f.starts_with("share/envpack/"))
        .collect::<Vec<_>>();
    ensure(
        leftovers.is_empty(),
        format!("files still holding the archive prefix after conda-unpack: {leftovers:?}"),
    )?;
    Ok(())
}

fn environment_relocates_itself_without_conda_unpack() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let (tarball, staging) = pack_env(dir.path(), &["python=3.11", "numpy", "openssl", "pip"], &[]);
    std::fs::remove_dir_all(&staging)?;
    // Just running Python relocates, once, with several processes starting at once.
    let target = short_dir();
    let t = target.path();
    support::extract(&tarball, t);
    let real = t.canonicalize()?;
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(t.join("bin/python"))
                .args(["-c", "import numpy, ssl; print(numpy.__version__)"])
                .env("ENVPACK_RELOCATE_LOG", t.join("relocate.log"))
                .output()
        })
        .collect();
    for c in children {
        let c = c?;
        ensure(
            c.status.success(),
            format!("python failed: {}", String::from_utf8_lossy(&c.stderr)),
        )?;
    }
    let out = sh("bin/openssl version -d", t);
    ensure(
        out.contains(&format!("{}/ssl", real.display())),
        format!("openssl after python start: {out}"),
    )?;
    // Each recorded file was rewritten at most once.
    let log = std::fs::read_to_string(t.join("relocate.log")).unwrap_or_default();
    let mut files: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(' ').map(|x| x.1))
        .collect();
    let n = files.len();
    files.sort_unstable();
    files.dedup();
    ensure(
        n == files.len() && n > 0,
        format!("{n} rewrites of {} files", files.len()),
    )?;
    // Entry points run from the relocated environment.
    let out = sh("PATH=\"$PWD/bin:$PATH\" pip --version", t);
    ensure(out.contains(real.to_str().unwrap()), format!("pip: {out}"))?;

    // Sourcing activate (Triton up to 25.07) relocates a second copy just as well.
    let second = short_dir();
    let s = second.path();
    support::extract(&tarball, s);
    let out = sh("source bin/activate; openssl version -d", s);
    ensure(
        out.contains(&format!("{}/ssl", s.canonicalize()?.display())),
        format!("openssl after activate: {out}"),
    )?;
    Ok(())
}

fn same_environment_gives_same_bytes_wherever_staged() -> Result<(), Failed> {
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    let (ta, _) = pack_env(a.path(), &["python=3.11", "six"], &["-j", "1"]);
    let (tb, _) = pack_env(b.path(), &["python=3.11", "six"], &["-j", "2"]);
    ensure(
        std::fs::read(&ta)? == std::fs::read(&tb)?,
        "two packs of one environment differ",
    )?;
    Ok(())
}

/// The real environment of the benchmarks (python, numpy<2, pip, six, idna), packed straight
/// from the package cache and through a staging prefix: one archive, and the package cache
/// (a private one, extracted by the first pack) is byte for byte what it was.
fn package_cache_route_gives_the_staged_routes_archive_and_leaves_the_cache() -> Result<(), Failed>
{
    let dir = tempfile::tempdir()?;
    let env = support::write_environment(
        dir.path(),
        "w1",
        &["conda-forge"],
        &["python=3.11", "numpy<2", "pip", "six", "idna"],
    );
    let cache = dir.path().join("cache");
    let pack = |out: &Path, extra: &[&str]| -> Result<String, Failed> {
        let o = run_ok(
            envpack()
                .env("ENVPACK_CACHE_DIR", &cache)
                .arg("pack")
                .arg(&env)
                .arg("-o")
                .arg(out)
                .args(["--mirror", &mirror_arg(), "-q", "--json", "-j", "2"])
                .args(extra),
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        Ok(v["route"].as_str().unwrap_or_default().to_string())
    };
    let first = dir.path().join("first.tar.gz");
    ensure(
        pack(&first, &[])? == "package-cache",
        "the first pack took the staged route",
    )?;
    let before = support::digests(&cache);
    let staged = dir.path().join("staged.tar.gz");
    ensure(
        pack(&staged, &["--via-prefix"])? == "staging-prefix",
        "--via-prefix did not stage",
    )?;
    let direct = dir.path().join("direct.tar.gz");
    ensure(
        pack(&direct, &[])? == "package-cache",
        "the second pack took the staged route",
    )?;
    let (a, b, c) = (
        support::sha256_file(&first),
        support::sha256_file(&direct),
        support::sha256_file(&staged),
    );
    eprintln!("sha256: package cache {a}, again {b}, staging prefix {c}");
    ensure(a == b && b == c, format!("archives differ: {a} {b} {c}"))?;
    ensure(
        support::digests(&cache) == before,
        "the package cache changed",
    )?;
    Ok(())
}
