//! Install: the solved packages into a staging prefix, then the `pip:` section.
//!
//! Third stage. rattler's installer downloads into the shared package cache (rattler's, so
//! pixi and rattler users share it) and links files into the prefix, replacing placeholders:
//! hard links where the cache and the prefix share a file system (nothing writes into an
//! existing file of the prefix, so the cache never changes), copies otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use rattler::install::{Installer, LinkOptions, Transaction};
use rattler::package_cache::PackageCache;
use rattler_conda_types::{PrefixRecord, RepoDataRecord, Subdir};

use crate::lock::LockedPip;
use crate::report::{Notice, SharedReporter, Stage};

mod safety;

/// How many packages are downloaded at once.
const DOWNLOADS: usize = 16;

/// Fetches every package into the cache (downloads at most [`DOWNLOADS`] at once), reporting
/// bytes; returns `(name-version-build, extracted folder)` of each.
async fn fetch_all(
    cache: &PackageCache,
    records: &[RepoDataRecord],
    client: &rattler_networking::LazyClient,
    reporter: &SharedReporter,
) -> Result<Vec<(String, PathBuf)>, InstallError> {
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(DOWNLOADS));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, record) in records.iter().enumerate() {
        let cache = cache.clone();
        let record = record.clone();
        let client = client.clone();
        let semaphore = semaphore.clone();
        let progress = std::sync::Arc::new(FetchProgress {
            reporter: reporter.clone(),
            size: record.package_record.size.unwrap_or(0),
            done: Mutex::new(0),
        });
        tasks.spawn(async move {
            let name = record.identifier.to_string();
            let bridge: std::sync::Arc<dyn rattler_cache::package_cache::CacheReporter> =
                progress.clone();
            let fetched = if record.url.scheme() == "file" {
                match record.url.to_file_path() {
                    Ok(path) => {
                        cache
                            .get_or_fetch_from_path(
                                &path,
                                Some(&record.package_record),
                                Some(bridge),
                            )
                            .await
                    }
                    Err(()) => {
                        return Err(InstallError::Io(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("{} is not a file path", record.url),
                        )));
                    }
                }
            } else {
                cache
                    .get_or_fetch_from_url_with_retry(
                        &record.package_record,
                        record.url.clone(),
                        client,
                        rattler_networking::retry_policies::default_retry_policy(),
                        Some(bridge),
                        Some(semaphore),
                    )
                    .await
            };
            let meta = fetched.map_err(|source| InstallError::Fetch {
                package: name.clone(),
                source,
            })?;
            progress.finish();
            Ok((i, name, meta.path().to_path_buf()))
        });
    }
    let mut out = vec![None; records.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, name, path) = joined.map_err(|e| InstallError::Io(std::io::Error::other(e)))??;
        out[i] = Some((name, path));
    }
    Ok(out.into_iter().flatten().collect())
}

/// The package cache in `cache_dir`, with its global lock: rattler coordinates processes
/// sharing a cache through that lock only.
async fn locked_cache(
    cache_dir: &Path,
) -> Result<(PackageCache, rattler_cache::package_cache::CacheGlobalLock), InstallError> {
    let cache = PackageCache::new(cache_dir.join(rattler_cache::PACKAGE_CACHE_DIR));
    let lock = cache
        .acquire_global_lock()
        .await
        .map_err(|source| InstallError::Fetch {
            package: "the package cache's lock".into(),
            source,
        })?;
    Ok((cache, lock))
}

/// Byte progress of one package's fetch: download progress, then the rest of its size once
/// it is in the cache (downloaded or found there).
struct FetchProgress {
    reporter: SharedReporter,
    size: u64,
    done: Mutex<u64>,
}

impl FetchProgress {
    fn advance(&self, to: u64) {
        let mut done = self.done.lock().expect("progress lock");
        let to = to.min(self.size);
        if to > *done {
            self.reporter.on_progress(Stage::Install, to - *done);
            *done = to;
        }
    }
    fn finish(&self) {
        self.advance(self.size);
    }
}

impl rattler_cache::package_cache::CacheReporter for FetchProgress {
    fn on_validate_start(&self) -> usize {
        0
    }
    fn on_validate_complete(&self, _index: usize) {}
    fn on_download_start(&self) -> usize {
        0
    }
    fn on_download_progress(&self, _index: usize, progress: u64, _total: Option<u64>) {
        self.advance(progress);
    }
    fn on_download_completed(&self, _index: usize) {}
}

/// Errors of installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// rattler's installer failed (download, extraction or linking).
    #[error("cannot install the packages into {}", prefix.display())]
    Conda {
        /// The staging prefix.
        prefix: PathBuf,
        /// The installer's error.
        #[source]
        source: rattler::install::InstallerError,
    },
    /// A package could not be brought into the package cache.
    #[error("cannot fetch {package} into the package cache")]
    Fetch {
        /// The package.
        package: String,
        /// The cache's error.
        #[source]
        source: rattler_cache::package_cache::PackageCacheError,
    },
    /// The `pip:` section needs what the environment lacks.
    #[error("the `pip:` section cannot be installed: {reason}")]
    PipUnavailable {
        /// What is missing.
        reason: String,
    },
    /// pip (or uv) could not be started.
    #[error("cannot run {}", program.display())]
    PipSpawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// pip (or uv) failed.
    #[error("`{command}` failed with {status}:\n{output}")]
    PipFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of what it printed.
        output: String,
    },
    /// A `pip:` package that cannot be locked (no archive with a hash).
    #[error("cannot lock the pip package `{name}`: {reason}")]
    PipUnlockable {
        /// The package.
        name: String,
        /// Why.
        reason: String,
    },
    /// A package would write outside the environment: refused before anything is written.
    #[error("the package {package} is unsafe: {path:?} {reason}")]
    UnsafePath {
        /// `name-version-build` of the package.
        package: String,
        /// The path as the package lists it (`info/paths.json` or `info/files`).
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A package's list of files cannot be read.
    #[error("the package {package} has an unreadable {file}")]
    BadPathsFile {
        /// `name-version-build` of the package.
        package: String,
        /// `info/paths.json`.
        file: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An I/O error; it names its path (`fs_err`, `tempfile`, or [`crate::paths::at`]).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The link type an archive's `conda-meta` records state: its files are copies, however the
/// staging prefix was linked (hard links from the package cache where the file systems allow).
pub const LINK_TYPE: rattler_conda_types::prefix_record::LinkType =
    rattler_conda_types::prefix_record::LinkType::Copy;

/// Installs `records` into `prefix` (created if missing).
pub async fn install_conda(
    prefix: &Path,
    records: Vec<RepoDataRecord>,
    platform: Subdir,
    cache_dir: &Path,
    client: rattler_networking::LazyClient,
    reporter: SharedReporter,
) -> Result<(), InstallError> {
    let total: u64 = records
        .iter()
        .map(|r| r.package_record.size.unwrap_or(0))
        .sum();
    reporter.on_stage_start(Stage::Install, Some(total));
    reporter.on_stage_start(Stage::Link, Some(records.len() as u64));
    // Channels are not trusted: every package is fetched into the cache and its paths are
    // checked before the installer writes (or removes) anything. The cache's lock is held
    // while fetching (as the installer holds it), released before the installer takes it.
    let (cache, lock) = locked_cache(cache_dir).await?;
    let folders = fetch_all(&cache, &records, &client, &reporter).await?;
    safety::check_packages(&folders)?;
    drop(lock);
    let installer = Installer::new()
        .with_package_cache(cache)
        .with_download_client(client)
        .with_target_platform(platform)
        .with_execute_link_scripts(false)
        .with_link_options(LinkOptions {
            // Where the cache and the staging prefix share a file system, files the
            // installer does not rewrite are hard links into the cache: nothing in the staged
            // route writes into an existing file (pip unlinks before it writes; envpack
            // rewrites files only into the archive), so the cache stays as it was.
            allow_hard_links: None,
            allow_symbolic_links: Some(true),
            allow_ref_links: Some(true),
        })
        .with_reporter(InstallProgress::new(reporter.clone()));
    installer
        .install(prefix, records)
        .await
        .map_err(|source| InstallError::Conda {
            prefix: prefix.to_path_buf(),
            source,
        })?;
    reporter.on_stage_end(Stage::Link);
    reporter.on_stage_end(Stage::Install);
    Ok(())
}

/// Brings `records` into rattler's package cache (downloading and extracting what is not
/// there yet) as rattler's installer does, without installing them anywhere. Returns each
/// package's folder in the cache, in the order of `records`, and the cache's global lock,
/// which keeps the folders in place while it is held. Every package's paths are checked as
/// [`install_conda`] checks them: an unsafe one is an [`InstallError::UnsafePath`].
pub async fn fetch_packages(
    records: &[RepoDataRecord],
    cache_dir: &Path,
    client: rattler_networking::LazyClient,
    reporter: SharedReporter,
) -> Result<(Vec<PathBuf>, rattler_cache::package_cache::CacheGlobalLock), InstallError> {
    let total: u64 = records
        .iter()
        .map(|r| r.package_record.size.unwrap_or(0))
        .sum();
    reporter.on_stage_start(Stage::Install, Some(total));
    let (cache, lock) = locked_cache(cache_dir).await?;
    let fetched = fetch_all(&cache, records, &client, &reporter).await?;
    // The same checks as before an install: the direct route reads every listed path and
    // symlink from these folders, and packs them as the staged route would have installed them.
    safety::check_packages(&fetched)?;
    reporter.on_stage_end(Stage::Install);
    Ok((fetched.into_iter().map(|(_, dir)| dir).collect(), lock))
}

/// Forwards rattler's installer events as link progress (bytes were counted while fetching).
struct InstallProgress {
    reporter: SharedReporter,
}

impl InstallProgress {
    fn new(reporter: SharedReporter) -> Self {
        Self { reporter }
    }
}

impl rattler::install::Reporter for InstallProgress {
    fn on_transaction_start(&self, _t: &Transaction<PrefixRecord, RepoDataRecord>) {}
    fn on_transaction_operation_start(&self, _operation: usize) {}
    fn on_populate_cache_start(&self, operation: usize, _record: &RepoDataRecord) -> usize {
        operation
    }
    fn on_validate_start(&self, cache_entry: usize) -> usize {
        cache_entry
    }
    fn on_validate_complete(&self, _validate_idx: usize) {}
    fn on_download_start(&self, cache_entry: usize) -> usize {
        cache_entry
    }
    fn on_download_progress(&self, _download_idx: usize, _progress: u64, _total: Option<u64>) {}
    fn on_download_completed(&self, _download_idx: usize) {}
    fn on_populate_cache_complete(&self, _cache_entry: usize) {}
    fn on_unlink_start(&self, _operation: usize, _record: &PrefixRecord) -> usize {
        0
    }
    fn on_unlink_complete(&self, _index: usize) {}
    fn on_link_start(&self, operation: usize, _record: &RepoDataRecord) -> usize {
        operation
    }
    fn on_link_complete(&self, _index: usize) {
        self.reporter.on_progress(Stage::Link, 1);
    }
    fn on_transaction_operation_complete(&self, _operation: usize) {}
    fn on_transaction_complete(&self) {}
    fn on_post_link_start(&self, _package_name: &str, _script_path: &str) -> usize {
        0
    }
    fn on_post_link_complete(&self, _index: usize, _success: bool) {}
    fn on_pre_unlink_start(&self, _package_name: &str, _script_path: &str) -> usize {
        0
    }
    fn on_pre_unlink_complete(&self, _index: usize, _success: bool) {}
}

/// Which installer runs the `pip:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipTool {
    /// `<prefix>/bin/python -m pip`.
    Pip,
    /// `uv pip` from PATH, targeting the environment's interpreter.
    Uv(PathBuf),
}

impl PipTool {
    /// uv when it is on `path` (the value of PATH: faster, same result), else pip.
    #[must_use]
    pub fn detect(path: Option<&str>) -> Self {
        path.and_then(|paths| {
            std::env::split_paths(paths)
                .map(|p| p.join("uv"))
                .find(|p| p.is_file())
        })
        .map_or(PipTool::Pip, PipTool::Uv)
    }
}

/// Checks, before any work, that a `pip:` section can be installed for `platform` on this
/// host, with the solved `records`.
pub fn check_pip(
    platform: Subdir,
    records: &[RepoDataRecord],
    tool: &PipTool,
) -> Result<(), InstallError> {
    check_pip_platform(platform)?;
    let has = |name: &str| {
        records
            .iter()
            .any(|r| r.package_record.name.as_normalized() == name)
    };
    if !has("python") {
        return Err(InstallError::PipUnavailable {
            reason: "the environment has no `python`: add it to `dependencies`".into(),
        });
    }
    if *tool == PipTool::Pip && !has("pip") {
        return Err(InstallError::PipUnavailable {
            reason: "the environment has no `pip`: add it to `dependencies`".into(),
        });
    }
    Ok(())
}

/// Checks that the environment's interpreter for `platform` can run on this host.
pub fn check_pip_platform(platform: Subdir) -> Result<(), InstallError> {
    let host = crate::solve::target_platform(None).ok();
    if cfg!(target_os = "linux") && host == Some(platform) {
        return Ok(());
    }
    Err(InstallError::PipUnavailable {
        reason: format!(
            "pip runs the environment's own interpreter, which cannot run on this host for target platform {platform}"
        ),
    })
}

/// Installs the `pip:` lines into `prefix`, as conda does: they become a requirements file,
/// run from the environment file's folder (`base_dir`) so relative paths mean what they say.
#[allow(clippy::too_many_arguments)] // what the pip: section needs, each its own
pub fn install_pip(
    prefix: &Path,
    lines: &[String],
    base_dir: &Path,
    work_dir: &Path,
    tool: &PipTool,
    require_hashes: bool,
    target_glibc: &str,
    reporter: &SharedReporter,
) -> Result<(), InstallError> {
    reporter.on_stage_start(Stage::Pip, None);
    let requirements = write_requirements(lines, base_dir, work_dir)?;
    let python = prefix.join("bin/python");
    let wheels_for = wheel_platform(&python, target_glibc, tool);
    let mut cmd = match tool {
        PipTool::Pip => {
            let mut c = Command::new(&python);
            c.args([
                "-m",
                "pip",
                "install",
                "--no-compile",
                "--no-warn-script-location",
                "--disable-pip-version-check",
                "--no-input",
            ]);
            c
        }
        PipTool::Uv(uv) => {
            let mut c = Command::new(uv);
            c.args(["pip", "install", "--python"]).arg(&python);
            c
        }
    };
    if require_hashes {
        cmd.arg("--require-hashes");
    }
    match &wheels_for {
        WheelPlatform::Uv(platform) => {
            cmd.arg("--python-platform").arg(platform);
        }
        WheelPlatform::Host { host, target } => {
            reporter.on_notice(&Notice::warning(format!(
                "pip picks wheels for this machine's glibc {host}, newer than the target's {target} (--glibc): a wheel built for a newer glibc than {target} will not load on the server; put uv on PATH (envpack then passes it --python-platform), or pack on a machine whose glibc is the target's"
            )));
        }
        WheelPlatform::Same => {}
    }
    cmd.arg("-r").arg(&requirements);
    run_pip(&mut cmd, base_dir, work_dir)?;
    for replaced in forget_replaced_conda_packages(prefix)? {
        reporter.on_notice(&Notice::warning(format!(
            "pip replaced the conda package {replaced}; the environment keeps pip's version"
        )));
    }
    reporter.on_stage_end(Stage::Pip);
    Ok(())
}

/// Which wheels the `pip:` section may pick, for a target glibc.
#[derive(Debug, PartialEq, Eq)]
enum WheelPlatform {
    /// The build machine's glibc is not newer than the target's (or is unknown).
    Same,
    /// uv, told the target's platform (`x86_64-manylinux_2_X`, X at most the target's).
    Uv(String),
    /// pip, which can only pick for the build machine's glibc (its `--platform` needs
    /// `--target`, which installs outside the environment's layout).
    Host {
        /// The build machine's glibc.
        host: String,
        /// The target's.
        target: String,
    },
}

/// The glibc the environment's Python runs with here (what pip and uv choose wheels by).
fn host_glibc(python: &Path) -> Option<(u32, u32)> {
    let out = crate::cleanup::output(Command::new(python).args([
        "-c",
        "import os; print(os.confstr('CS_GNU_LIBC_VERSION') or '')",
    ]))
    .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    parse_glibc(text.trim().strip_prefix("glibc ")?)
}

fn parse_glibc(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn wheel_platform(python: &Path, target: &str, tool: &PipTool) -> WheelPlatform {
    match (host_glibc(python), parse_glibc(target)) {
        (Some(host), Some(t)) if t < host => wheel_platform_for(host, t, tool),
        _ => WheelPlatform::Same,
    }
}

/// The manylinux tags uv knows (`--python-platform`), newest at most `target`.
fn wheel_platform_for(host: (u32, u32), target: (u32, u32), tool: &PipTool) -> WheelPlatform {
    let uv_tag = (target.0 == 2)
        .then(|| {
            (17..=40)
                .rev()
                .filter(|m| *m == 17 || *m == 28 || *m >= 31)
                .find(|m| *m <= target.1)
        })
        .flatten();
    match (tool, uv_tag) {
        (PipTool::Uv(_), Some(m)) => {
            WheelPlatform::Uv(format!("{}-manylinux_2_{m}", std::env::consts::ARCH))
        }
        _ => WheelPlatform::Host {
            host: format!("{}.{}", host.0, host.1),
            target: format!("{}.{}", target.0, target.1),
        },
    }
}

/// Writes the `pip:` lines as a requirements file in `work_dir`, paths made absolute.
fn write_requirements(
    lines: &[String],
    base_dir: &Path,
    work_dir: &Path,
) -> Result<PathBuf, InstallError> {
    let requirements = work_dir.join("pip-requirements.txt");
    let text: String = lines
        .iter()
        .map(|l| absolutize_requirement_line(l, base_dir) + "\n")
        .collect();
    fs_err::write(&requirements, text)?;
    Ok(requirements)
}

/// Runs pip (or uv) in `base_dir` with the environment of the caller's Python removed, its
/// temporary files in `work_dir` (removed with it, also when pip is killed). An interrupt
/// stops it (and what it started) before the staging prefix is removed.
fn run_pip(cmd: &mut Command, base_dir: &Path, work_dir: &Path) -> Result<(), InstallError> {
    cmd.current_dir(base_dir)
        .env("TMPDIR", work_dir)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX");
    let command = format!("{cmd:?}");
    tracing::info!("running {command}");
    let out = crate::cleanup::output(cmd).map_err(|source| InstallError::PipSpawn {
        program: cmd.get_program().into(),
        source,
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        return Err(InstallError::PipFailed {
            command,
            status: out.status,
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    tracing::debug!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// What pip would install for the `pip:` lines into `prefix` (where the conda packages are
/// installed), resolved by the environment's own pip (`pip install --dry-run --report`), so
/// for its Python and platform, offline when the lines say so: the exact versions, archive
/// URLs and sha256 a lock records.
pub fn resolve_pip(
    prefix: &Path,
    lines: &[String],
    base_dir: &Path,
    work_dir: &Path,
) -> Result<Vec<LockedPip>, InstallError> {
    if !prefix.join("bin/python").is_file() || !has_pip(prefix) {
        return Err(InstallError::PipUnavailable {
            reason: "locking it needs `pip` in the environment: add it to `dependencies`".into(),
        });
    }
    let requirements = write_requirements(lines, base_dir, work_dir)?;
    let report = work_dir.join("pip-report.json");
    let mut cmd = Command::new(prefix.join("bin/python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--report",
    ])
    .arg(&report)
    .arg("-r")
    .arg(&requirements);
    run_pip(&mut cmd, base_dir, work_dir)?;
    let text = fs_err::read_to_string(&report)?;
    parse_pip_report(&text, &format!("{cmd:?}"))
}

fn has_pip(prefix: &Path) -> bool {
    fs_err::read_dir(prefix.join("lib")).is_ok_and(|dirs| {
        dirs.filter_map(Result::ok)
            .any(|d| d.path().join("site-packages/pip").is_dir())
    })
}

/// The packages of a `pip install --report` (format version 1).
fn parse_pip_report(text: &str, command: &str) -> Result<Vec<LockedPip>, InstallError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| InstallError::PipFailed {
        command: command.to_string(),
        status: std::process::ExitStatus::default(),
        output: format!("its --report is not JSON: {e}"),
    })?;
    let mut out = Vec::new();
    for item in v["install"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let meta = &item["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let version = meta["version"].as_str().unwrap_or_default().to_string();
        let info = &item["download_info"];
        let url = info["url"].as_str().unwrap_or_default().to_string();
        let unlockable = |reason: &str| {
            Err(InstallError::PipUnlockable {
                name: name.clone(),
                reason: reason.to_string(),
            })
        };
        if info.get("dir_info").is_some() {
            return unlockable(&format!("it is installed from the folder {url}"));
        }
        if info.get("vcs_info").is_some() {
            return unlockable(&format!("it is installed from version control ({url})"));
        }
        let archive = &info["archive_info"];
        let sha256 = archive["hashes"]["sha256"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                archive["hash"]
                    .as_str()
                    .and_then(|h| h.strip_prefix("sha256="))
                    .map(str::to_string)
            });
        if sha256.is_none() {
            return unlockable(&format!("pip reports no sha256 for {url}"));
        }
        let dependencies = meta["requires_dist"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str())
            .filter_map(requirement_dependency)
            .collect();
        out.push(LockedPip {
            name,
            version,
            url,
            sha256,
            requested: item["requested"].as_bool().unwrap_or(false),
            dependencies,
        });
    }
    out.sort_by_key(|a| a.name.to_lowercase());
    Ok(out)
}

/// `name` and specifier (`*` for any) of a `Requires-Dist` entry, unless it belongs to an extra.
fn requirement_dependency(req: &str) -> Option<(String, String)> {
    let (spec, marker) = req.split_once(';').unwrap_or((req, ""));
    if marker.contains("extra") {
        return None;
    }
    let spec = spec.trim();
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or(spec.len());
    let name = &spec[..end];
    let mut rest = spec[end..].trim();
    if rest.starts_with('[') {
        rest = rest.split_once(']').map_or("", |(_, r)| r.trim());
    }
    let rest = rest.trim_start_matches('(').trim_end_matches(')').trim();
    (!name.is_empty()).then(|| {
        (
            name.to_string(),
            if rest.is_empty() {
                "*".to_string()
            } else {
                rest.replace(' ', "")
            },
        )
    })
}

/// pip marks every package of a hash-checked install as `REQUESTED`; a solved install marks
/// only those the `pip:` lines name. Removes the mark (and its `RECORD` line) from the
/// distributions `packages` (name, version) that were installed only as dependencies.
pub fn unmark_requested(prefix: &Path, packages: &[(String, String)]) -> Result<(), InstallError> {
    let norm = |s: &str| s.to_lowercase().replace(['-', '.'], "_");
    let wanted: std::collections::HashSet<(String, String)> =
        packages.iter().map(|(n, v)| (norm(n), v.clone())).collect();
    let lib = prefix.join("lib");
    let Ok(pythons) = fs_err::read_dir(&lib) else {
        return Ok(());
    };
    for python in pythons.filter_map(Result::ok) {
        let site = python.path().join("site-packages");
        let Ok(entries) = fs_err::read_dir(&site) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let dir_name = e.file_name().to_string_lossy().into_owned();
            let Some((name, version)) = dir_name
                .strip_suffix(".dist-info")
                .and_then(|s| s.rsplit_once('-'))
            else {
                continue;
            };
            if !wanted.contains(&(norm(name), version.to_string())) {
                continue;
            }
            let requested = e.path().join("REQUESTED");
            if !requested.exists() {
                continue;
            }
            fs_err::remove_file(&requested)?;
            let record = e.path().join("RECORD");
            if let Ok(text) = fs_err::read_to_string(&record) {
                let line = format!("{dir_name}/REQUESTED,");
                let kept: String = text
                    .split_inclusive('\n')
                    .filter(|l| !l.starts_with(&line))
                    .collect();
                // A new file, never a write into one the prefix may share with the cache.
                fs_err::remove_file(&record)?;
                fs_err::write(&record, kept)?;
            }
        }
    }
    Ok(())
}

/// Drops the `conda-meta` records of conda packages whose files pip removed (it upgraded or
/// replaced them to satisfy the `pip:` section), as the staging prefix no longer holds them.
/// Returns `name-version-build` of each.
fn forget_replaced_conda_packages(prefix: &Path) -> Result<Vec<String>, InstallError> {
    let meta = prefix.join("conda-meta");
    let mut names: Vec<PathBuf> = fs_err::read_dir(&meta)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let mut replaced = Vec::new();
    for record in names {
        let text = fs_err::read_to_string(&record)?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let files = v["files"].as_array().map(Vec::as_slice).unwrap_or_default();
        let gone = files
            .iter()
            .filter_map(|f| f.as_str())
            .any(|f| std::fs::symlink_metadata(prefix.join(f)).is_err());
        if gone {
            fs_err::remove_file(&record)?;
            replaced.push(
                record
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            );
        }
    }
    Ok(replaced)
}

/// A `pip:` line that names a path relative to the environment file: `-r`, `-c`, `-e`, `-f`
/// (and their long forms) with a relative value, or a bare `./` or `../` path. Returns the
/// option (empty for a bare path) and the path.
#[must_use]
pub fn relative_path_in_requirement(line: &str) -> Option<(&'static str, &str)> {
    let trimmed = line.trim();
    let relative = |v: &str| !v.is_empty() && !v.contains("://") && !Path::new(v).is_absolute();
    for opt in [
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-e",
        "--editable",
        "-f",
        "--find-links",
    ] {
        let rest = trimmed.strip_prefix(opt).filter(|r| {
            r.starts_with([' ', '=', '\t'])
                || (opt.len() == 2 && !r.is_empty() && !r.starts_with('-'))
        });
        if let Some(rest) = rest {
            let value = rest.trim_start_matches(['=', ' ', '\t']);
            return relative(value).then_some((opt, value));
        }
    }
    ((trimmed.starts_with("./") || trimmed.starts_with("../")) && relative(trimmed))
        .then_some(("", trimmed))
}

/// Makes the path of `-r`, `-c`, `-e`, `-f` (and long forms) absolute against `base_dir`. pip
/// splits option lines as a shell does: a quoted value is unquoted first, and the absolute path
/// is quoted when it holds a space or a quote.
fn absolutize_requirement_line(line: &str, base_dir: &Path) -> String {
    let unquote = |v: &str| {
        for q in ['"', '\''] {
            if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
                return inner.to_string();
            }
        }
        v.to_string()
    };
    let quote = |p: PathBuf| {
        let s = p.display().to_string();
        if s.contains([' ', '\t', '"', '\'', '\\']) {
            format!("'{}'", s.replace('\'', "'\\''"))
        } else {
            s
        }
    };
    match relative_path_in_requirement(line) {
        Some(("", path)) => base_dir.join(path).display().to_string(),
        Some((opt, path)) => format!("{opt} {}", quote(base_dir.join(unquote(path)))),
        None => line.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_wheels_follow_the_target_glibc_with_uv_and_warn_with_pip() {
        let uv = PipTool::Uv(PathBuf::from("uv"));
        let arch = std::env::consts::ARCH;
        assert_eq!(
            wheel_platform_for((2, 36), (2, 34), &uv),
            WheelPlatform::Uv(format!("{arch}-manylinux_2_34"))
        );
        // uv knows no 2_29/2_30: the newest it knows at most the target.
        assert_eq!(
            wheel_platform_for((2, 36), (2, 30), &uv),
            WheelPlatform::Uv(format!("{arch}-manylinux_2_28"))
        );
        assert_eq!(
            wheel_platform_for((2, 36), (2, 34), &PipTool::Pip),
            WheelPlatform::Host {
                host: "2.36".into(),
                target: "2.34".into()
            }
        );
        // Older than any manylinux tag: uv cannot be told either.
        assert!(matches!(
            wheel_platform_for((2, 36), (2, 12), &uv),
            WheelPlatform::Host { .. }
        ));
        assert_eq!(parse_glibc("2.34"), Some((2, 34)));
        assert_eq!(parse_glibc("abc"), None);
    }

    #[test]
    fn requirement_paths_are_anchored_at_the_environment_file() {
        let base = Path::new("/m");
        assert_eq!(
            absolutize_requirement_line("-r requirements.txt", base),
            "-r /m/requirements.txt"
        );
        assert_eq!(
            absolutize_requirement_line("--requirement=sub/r.txt", base),
            "--requirement /m/sub/r.txt"
        );
        assert_eq!(absolutize_requirement_line("-e ./pkg", base), "-e /m/./pkg");
        assert_eq!(
            absolutize_requirement_line("./wheels/x.whl", base),
            "/m/./wheels/x.whl"
        );
        assert_eq!(
            absolutize_requirement_line("--find-links https://x/y", base),
            "--find-links https://x/y"
        );
        assert_eq!(
            absolutize_requirement_line("-r /abs/r.txt", base),
            "-r /abs/r.txt"
        );
        // As a requirements file is read (`-r "requirements.txt"`), in a folder with a space.
        assert_eq!(
            absolutize_requirement_line("-r \"requirements.txt\"", Path::new("/my models/m")),
            "-r '/my models/m/requirements.txt'"
        );
        assert_eq!(
            absolutize_requirement_line("-r \"requirements.txt\"", base),
            "-r /m/requirements.txt"
        );
        assert_eq!(
            absolutize_requirement_line("mlserver==1.7.1", base),
            "mlserver==1.7.1"
        );
        assert_eq!(
            absolutize_requirement_line("--index-url https://pypi.example/simple", base),
            "--index-url https://pypi.example/simple"
        );
    }
}
