//! Test support shared by the hermetic and end-to-end tests: the real `envpack` binary, and
//! small conda packages and channels built at test time.
#![allow(dead_code)]

pub mod channel;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A command running the real binary, with a clean environment: no `ENVPACK_*` or
/// `CONDA_OVERRIDE_*` from the caller, a package cache shared by the tests of this build.
pub fn envpack() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envpack"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ENVPACK_") || k.starts_with("CONDA_OVERRIDE_") || k == "RATTLER_CACHE_DIR"
        {
            c.env_remove(k);
        }
    }
    c.env("ENVPACK_CACHE_DIR", cache_dir());
    c
}

/// Writes `dir/environment.yml` with this name, channels and conda dependencies.
pub fn write_environment(dir: &Path, name: &str, channels: &[&str], deps: &[&str]) -> PathBuf {
    let body = deps
        .iter()
        .fold(String::new(), |s, d| s + "  - " + d + "\n");
    let env = dir.join("environment.yml");
    std::fs::write(
        &env,
        format!(
            "name: {name}\nchannels: [{}]\ndependencies:\n{body}",
            channels.join(", ")
        ),
    )
    .unwrap();
    env
}

/// The folder `envpack pack --work-dir WORK --keep-work` left in `work` (it holds `env/`).
pub fn kept_work_folder(work: &Path) -> PathBuf {
    std::fs::read_dir(work)
        .unwrap()
        .next()
        .expect("a kept work folder")
        .unwrap()
        .path()
}

/// The package cache the tests share (inside the target folder).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envpack-test-cache")
}

/// Runs and returns the output, panicking with both streams if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs and returns the output, panicking if it succeeds.
pub fn run_err(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should have failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A shell command's stdout, asserting success.
pub fn sh(script: &str, dir: &Path) -> String {
    let out = run_ok(
        Command::new("bash")
            .arg("-euc")
            .arg(script)
            .current_dir(dir),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extracts a tar archive (any compression GNU tar knows) into `dest`.
pub fn extract(archive: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dest),
    );
}

/// The names of an archive's members, in order.
pub fn list(archive: &Path) -> Vec<String> {
    let out = run_ok(Command::new("tar").arg("-tf").arg(archive));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every file and symlink below `dir` (folders walked, not listed): (relative path, path,
/// whether it is a symlink), sorted.
pub fn tree(dir: &Path) -> Vec<(String, PathBuf, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() || ft.is_symlink() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, e.path(), ft.is_symlink()));
            }
        }
    }
    out.sort();
    out
}

/// Every regular file below `dir` whose bytes contain `needle`, relative paths.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|(_, path, link)| {
            !link
                && std::fs::read(path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
        })
        .map(|(rel, _, _)| rel)
        .collect()
}

/// Lowercase hex of bytes (digests).
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
