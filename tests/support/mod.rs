//! Test support shared by the hermetic (`tests/it`) and end-to-end (`tests/e2e`) tests: the
//! real `envpack` binary, running commands, reading archives and trees, digests, and small
//! conda packages and channels built at test time.
//!
//! Every helper exists once, here; the test binaries use what they need.
#![allow(dead_code)]

pub mod channel;
pub mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libtest_mimic::Failed;
use sha2::{Digest, Sha256};

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

/// The package cache the tests share (inside the target folder).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envpack-test-cache")
}

/// Writes `dir/environment.yml` with this text.
pub fn write_environment_text(dir: &Path, text: &str) -> PathBuf {
    let env = dir.join("environment.yml");
    std::fs::write(&env, text).unwrap();
    env
}

/// Writes `dir/environment.yml` with this name, channels and conda dependencies.
pub fn write_environment(dir: &Path, name: &str, channels: &[&str], deps: &[&str]) -> PathBuf {
    let body = deps
        .iter()
        .fold(String::new(), |s, d| s + "  - " + d + "\n");
    write_environment_text(
        dir,
        &format!(
            "name: {name}\nchannels: [{}]\ndependencies:\n{body}",
            channels.join(", ")
        ),
    )
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

/// `n` bytes that do not compress (xorshift): packing many of them at a high level takes a
/// while, and their archive is as large as they are.
pub fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bash script's stdout (`bash -euc SCRIPT` in `dir`), asserting success.
pub fn sh(script: &str, dir: &Path) -> String {
    let out = run_ok(
        Command::new("bash")
            .arg("-euc")
            .arg(script)
            .current_dir(dir),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// For the end-to-end trials: `Ok` if `cond` holds, the failure `msg` otherwise.
pub fn ensure(cond: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

/// A text file's content, panicking with its path.
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The first line of a text file.
pub fn first_line(path: impl AsRef<Path>) -> String {
    read(path).lines().next().unwrap_or_default().to_string()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The sha256 of a file's content (read as a stream), as lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    use std::io::Read as _;
    let mut h = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
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

/// The names of an archive's members, in order, as GNU tar lists them (folders end in `/`).
pub fn list(archive: &Path) -> Vec<String> {
    let out = run_ok(Command::new("tar").arg("-tf").arg(archive));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The names of an archive's members, in order, folders without their trailing `/`.
pub fn members(archive: &Path) -> Vec<String> {
    list(archive)
        .into_iter()
        .map(|m| m.trim_end_matches('/').to_string())
        .collect()
}

/// What a [`tree`] entry is (symlinks are not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry below the folder [`tree`] walked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The path relative to the walked folder.
    pub rel: String,
    pub path: PathBuf,
    pub kind: Kind,
}

/// Every folder, file and symlink below `dir` (symlinks not followed, other file types left
/// out), sorted by relative path.
pub fn tree(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let kind = if ft.is_dir() {
                stack.push(e.path());
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                continue;
            };
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.push(Entry {
                rel,
                path: e.path(),
                kind,
            });
        }
    }
    out.sort();
    out
}

/// Every regular file below `dir` whose bytes contain `needle`, relative paths.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|e| e.kind == Kind::File && contains(&std::fs::read(&e.path).unwrap(), needle))
        .map(|e| e.rel)
        .collect()
}

/// Relative path → (content or link target), for every file and symlink below `dir`.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter_map(|e| {
            let bytes = match e.kind {
                Kind::Dir => return None,
                Kind::Symlink => std::fs::read_link(&e.path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
                Kind::File => std::fs::read(&e.path).unwrap(),
            };
            Some((e.rel, bytes))
        })
        .collect()
}

/// `N` of a glibc version `2.N` (what follows the digits, as in `2.34)`, is ignored).
#[must_use]
pub fn glibc_minor(version: &str) -> Option<u32> {
    let digits: String = version
        .strip_prefix("2.")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The highest `GLIBC_2.N` (`N`) each of `files` needs, as `readelf -V` lists its version
/// needs (a library's own definitions, ld.so's `GLIBC_2.35` among them, are not needs); files
/// that need none are left out.
pub fn readelf_glibc_needs(files: &[PathBuf]) -> std::collections::BTreeMap<PathBuf, u32> {
    let mut needs = std::collections::BTreeMap::new();
    for chunk in files.chunks(200) {
        let out = run_ok(Command::new("readelf").args(["-V", "-W"]).args(chunk));
        let text = String::from_utf8_lossy(&out.stdout);
        // readelf names each file ("File: PATH") only when it is given several.
        let (mut file, mut in_needs) = (chunk[0].clone(), false);
        for line in text.lines() {
            if let Some(f) = line.strip_prefix("File: ") {
                (file, in_needs) = (PathBuf::from(f), false);
            } else if line.starts_with("Version needs section") {
                in_needs = true;
            } else if line.starts_with("Version") {
                in_needs = false;
            } else if let Some(m) = line
                .split("Name: GLIBC_")
                .nth(1)
                .filter(|_| in_needs)
                .and_then(|v| v.split_whitespace().next())
                .and_then(glibc_minor)
            {
                let e: &mut u32 = needs.entry(file.clone()).or_default();
                *e = (*e).max(m);
            }
        }
    }
    needs
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

/// Every file and symlink below `dir` with its sha256 (of the target, for a symlink) and its
/// mode: a package cache's state, to prove a pack left it as it was.
pub fn digests(dir: &Path) -> Vec<(String, String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    snapshot(dir)
        .into_iter()
        .map(|(rel, bytes)| {
            let mode = std::fs::symlink_metadata(dir.join(&rel))
                .unwrap()
                .permissions()
                .mode();
            (rel, sha256_hex(&bytes), mode)
        })
        .collect()
}

/// Asserts two archives are the same bytes; if not, names the members that differ.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    if std::fs::read(a).unwrap() == std::fs::read(b).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("a"), dir.path().join("b"));
    extract(a, &x);
    extract(b, &y);
    let (sx, sy) = (snapshot(&x), snapshot(&y));
    let differ: Vec<&String> = sx
        .iter()
        .zip(&sy)
        .filter(|(p, q)| p != q)
        .map(|(p, _)| &p.0)
        .collect();
    panic!(
        "{} and {} differ; members: {} vs {}, first differing: {differ:?}",
        a.display(),
        b.display(),
        sx.len(),
        sy.len()
    );
}
