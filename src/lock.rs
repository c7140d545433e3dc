//! Lock files: the exact packages of an environment, installed without a solve.
//!
//! Read: conda-lock's unified `conda-lock.yml` (CEP-37, version 1; through
//! `rattler_conda_lock`, whose errors point at the offending line), pixi's `pixi.lock` (through
//! `rattler_lock`, one environment, `default` unless named) and conda's explicit files
//! (`@EXPLICIT`, one package URL a line with `#md5` or `#sha256`, as `conda list --explicit
//! --md5` prints them). Written: `conda-lock.yml`, one or more platforms, the `pip:` section
//! locked too (exact versions, URLs and sha256).
//!
//! What `envpack lock` writes carries, besides conda-lock's fields, what makes a locked build
//! the same as the solved one it came from, in `metadata.custom_metadata` (string values that
//! conda-lock and micromamba read and ignore):
//! - `envpack.inputs.*`: the solve's inputs (channels, dependency lines, `pip:` lines, the
//!   options that change a solve), so that a stale lock can name what changed. Their digest is
//!   the lock's `content_hash` of each platform (see [`Inputs::digest`]).
//! - `envpack.record.PLATFORM.NAME`: the rest of each conda package's repodata record (license,
//!   timestamp, size, `depends` in the channel's order, ...), which conda-lock's package entries
//!   leave out, so the environment's `conda-meta` is byte-identical to the solved build's.
//! - `envpack.pip.requested`: the `pip:` packages asked for by name (pip marks only those
//!   `REQUESTED`), `envpack.name`, `envpack.variables`.
//!
//! Records of a lock without them (written by another tool, or an explicit file) are completed
//! from each package's own `info/index.json` once it is in the package cache, as conda does for
//! explicit installs.
//!
//! A leaf: no settings, no pipeline. Package URLs here are canonical (what the channel is
//! called); [`for_install`] maps them through the mirrors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rattler_conda_lock::{Document, Hashes, LockFile, Manager, Package};
use rattler_conda_types::{
    PackageName, PackageRecord, RepoDataRecord, Subdir, VersionWithSource,
    package::{ArchiveIdentifier, BuildString, DistArchiveIdentifier},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::channels::{ChannelMap, UrlRewrites};
use crate::solve::VirtualPackageSettings;
use crate::spec::{EnvironmentSpec, hex};

/// The lock file `envpack lock` writes, and `envpack pack` looks for, beside an environment file.
pub const CONDA_LOCK_FILE: &str = "conda-lock.yml";
/// pixi's lock file.
pub const PIXI_LOCK_FILE: &str = "pixi.lock";
/// Lock files that stand for an environment file in a folder that holds none.
pub const FILE_NAMES: [&str; 2] = [CONDA_LOCK_FILE, PIXI_LOCK_FILE];
/// pixi's default environment.
pub const DEFAULT_ENVIRONMENT: &str = "default";

const META: &str = "envpack.";
const INPUTS_CHANNELS: &str = "envpack.inputs.channels";
const INPUTS_DEPENDENCIES: &str = "envpack.inputs.dependencies";
const INPUTS_PIP: &str = "envpack.inputs.pip";
const INPUTS_OPTIONS: &str = "envpack.inputs.options";
const PIP_REQUESTED: &str = "envpack.pip.requested";
const NAME: &str = "envpack.name";
const VARIABLES: &str = "envpack.variables";
const RECORD: &str = "envpack.record.";

/// How a `conda-lock.yml` beside the environment file is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// When it still matches the environment file; otherwise solve (with a warning).
    #[default]
    Auto,
    /// It must exist and match (`--locked`).
    Locked,
    /// It must exist; it is installed as it is (`--frozen`).
    Frozen,
    /// Never: solve (what `envpack lock` does).
    Ignore,
}

/// The kinds of lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// conda-lock's `conda-lock.yml`.
    CondaLock,
    /// pixi's `pixi.lock`.
    Pixi,
    /// conda's `@EXPLICIT` file.
    Explicit,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::CondaLock => "conda-lock file",
            Format::Pixi => "pixi lock file",
            Format::Explicit => "explicit file",
        })
    }
}

/// Errors of lock files.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `conda-lock.yml` that conda-lock's schema rejects.
    #[error("{}{}: not a valid conda-lock file", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    CondaLock {
        /// The file.
        path: PathBuf,
        /// The line of the offending value, when known.
        line: Option<usize>,
        /// What is wrong, and where in the document.
        #[source]
        source: Box<rattler_conda_lock::Error>,
    },
    /// A `pixi.lock` that does not parse.
    #[error("{}: not a valid pixi lock file", path.display())]
    Pixi {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: Box<rattler_lock::ParseCondaLockError>,
    },
    /// A line of an explicit file, or an entry of a lock, that cannot be installed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, for explicit files.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A pixi environment that the lock does not have.
    #[error("{} has no environment `{name}` (it has {})", path.display(), available.join(", "))]
    NoEnvironment {
        /// The file.
        path: PathBuf,
        /// The environment asked for.
        name: String,
        /// The environments it has.
        available: Vec<String>,
    },
    /// The lock has no packages for the target platform.
    #[error("{} locks no packages for {platform} (it locks {})", path.display(), if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoPlatform {
        /// The file.
        path: PathBuf,
        /// The target platform.
        platform: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// `--locked` or `--frozen` without a lock beside the environment file.
    #[error("no lock file for {}: {} does not exist", environment.display(), lock.display())]
    Missing {
        /// The environment file.
        environment: PathBuf,
        /// The lock looked for.
        lock: PathBuf,
    },
    /// `--locked` with a lock that no longer matches its environment file.
    #[error("{} is out of date: {}", lock.display(), changes.join("; "))]
    Stale {
        /// The lock.
        lock: PathBuf,
        /// What changed, one item each.
        changes: Vec<String>,
    },
    /// A package of a lock could not be fetched into the package cache.
    #[error("cannot fetch {package}")]
    Fetch {
        /// The package's file name.
        package: String,
        /// Why.
        #[source]
        source: Box<rattler_cache::package_cache::PackageCacheError>,
    },
    /// The lock file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LockError {
    /// What the user can do about it.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            LockError::Missing { environment, .. } => Some(format!(
                "write it with `envpack lock {}`",
                environment.display()
            )),
            LockError::Stale { .. } => Some(
                "update it with `envpack lock`, or pass --frozen to install it as it is".into(),
            ),
            LockError::NoPlatform { platform, .. } => Some(format!(
                "lock for it too: `envpack lock --platform {platform}` (repeat --platform for several)"
            )),
            LockError::NoEnvironment { .. } => {
                Some("choose one of its environments with -e NAME".into())
            }
            _ => None,
        }
    }
}

/// What kind of file `path` is, if it is a lock file: by name (`pixi.lock`, `*conda-lock.yml`),
/// else by content (an `@EXPLICIT` line; conda-lock's or pixi's top-level keys).
#[must_use]
pub fn detect(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?;
    if name == PIXI_LOCK_FILE {
        return Some(Format::Pixi);
    }
    if name.ends_with("conda-lock.yml") || name.ends_with("conda-lock.yaml") {
        return Some(Format::CondaLock);
    }
    if !path.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    if text.lines().any(|l| l.trim() == "@EXPLICIT") {
        return Some(Format::Explicit);
    }
    let top: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with([' ', '\t', '#', '-']))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    if top.contains("package") && top.contains("metadata") {
        Some(Format::CondaLock)
    } else if top.contains("environments") && top.contains("packages") && top.contains("version") {
        Some(Format::Pixi)
    } else {
        None
    }
}

/// The inputs of a solve: what the lock must have been made from to still hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inputs {
    /// `channels:` as written.
    pub channels: Vec<String>,
    /// Conda dependency lines as written.
    pub dependencies: Vec<String>,
    /// `pip:` lines as written.
    pub pip: Vec<String>,
    /// The options that change a solve: the target's virtual packages (`glibc`, `linux`,
    /// `cuda`, `archspec`) and the channel alias.
    pub options: Vec<(String, String)>,
}

impl Inputs {
    /// The inputs of `env` solved with these virtual packages and channel alias.
    #[must_use]
    pub fn of(env: &EnvironmentSpec, vp: &VirtualPackageSettings, alias: &Url) -> Inputs {
        Inputs {
            channels: env.channels.clone(),
            dependencies: env.dependencies.iter().map(|d| d.text.clone()).collect(),
            pip: env.pip.iter().map(|l| l.trim().to_string()).collect(),
            options: vec![
                ("glibc".into(), vp.glibc.clone()),
                ("linux".into(), vp.linux.clone()),
                (
                    "cuda".into(),
                    vp.cuda.clone().unwrap_or_else(|| "none".into()),
                ),
                (
                    "archspec".into(),
                    vp.archspec.clone().unwrap_or_else(|| "default".into()),
                ),
                ("channel-alias".into(), alias.as_str().to_string()),
            ],
        }
    }

    /// A lock's `content_hash` for `platform`: sha256 of one line per input, in order:
    /// `platform P`, `channel C`..., `dependency D`..., `pip L`..., `option K=V`...
    /// Comments, `name:` and `variables:` are not inputs: they do not change what is solved.
    #[must_use]
    pub fn digest(&self, platform: &str) -> String {
        let mut text = format!("envpack lock inputs 1\nplatform {platform}\n");
        for c in &self.channels {
            let _ = writeln!(text, "channel {c}");
        }
        for d in &self.dependencies {
            let _ = writeln!(text, "dependency {}", d.trim());
        }
        for l in &self.pip {
            let _ = writeln!(text, "pip {}", l.trim());
        }
        for (k, v) in &self.options {
            let _ = writeln!(text, "option {k}={v}");
        }
        hex(&Sha256::digest(text.as_bytes()))
    }

    /// What changed from `old` (the inputs a lock was made from) to `self`, one sentence each.
    #[must_use]
    pub fn changes_from(&self, old: &Inputs) -> Vec<String> {
        let mut out = Vec::new();
        if self.channels != old.channels {
            out.push(format!(
                "channels were [{}], now [{}]",
                old.channels.join(", "),
                self.channels.join(", ")
            ));
        }
        diff_lines(
            "dependency",
            &old.dependencies,
            &self.dependencies,
            conda_key,
            &mut out,
        );
        diff_lines("pip line", &old.pip, &self.pip, pip_key, &mut out);
        let old_opts: BTreeMap<&str, &str> = old
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in &self.options {
            match old_opts.get(k.as_str()) {
                Some(o) if o == v => {}
                Some(o) => out.push(format!("{k} was {o}, now {v}")),
                None => out.push(format!("{k} is now {v}")),
            }
        }
        out
    }

    fn to_metadata(&self, map: &mut BTreeMap<String, String>) {
        map.insert(INPUTS_CHANNELS.into(), self.channels.join("\n"));
        map.insert(INPUTS_DEPENDENCIES.into(), self.dependencies.join("\n"));
        map.insert(INPUTS_PIP.into(), self.pip.join("\n"));
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        map.insert(INPUTS_OPTIONS.into(), options.join("\n"));
    }

    fn from_metadata(map: &BTreeMap<String, String>) -> Option<Inputs> {
        let lines = |k: &str| -> Option<Vec<String>> {
            map.get(k).map(|v| {
                v.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        };
        Some(Inputs {
            channels: lines(INPUTS_CHANNELS)?,
            dependencies: lines(INPUTS_DEPENDENCIES)?,
            pip: lines(INPUTS_PIP)?,
            options: lines(INPUTS_OPTIONS)?
                .into_iter()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
                .collect(),
        })
    }
}

/// Adds what changed between two lists of lines, paired by `key` (a package's name).
fn diff_lines(
    what: &str,
    old: &[String],
    new: &[String],
    key: fn(&str) -> String,
    out: &mut Vec<String>,
) {
    let keyed = |lines: &[String]| -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in lines {
            m.entry(key(l)).or_default().push(l.trim().to_string());
        }
        m
    };
    let (o, n) = (keyed(old), keyed(new));
    for (k, lines) in &n {
        match o.get(k) {
            None => out.extend(lines.iter().map(|l| format!("{what} `{l}` added"))),
            Some(was) if was != lines => out.push(format!(
                "{what} `{}` is now `{}`",
                was.join("`, `"),
                lines.join("`, `")
            )),
            Some(_) => {}
        }
    }
    for (k, lines) in &o {
        if !n.contains_key(k) {
            out.extend(lines.iter().map(|l| format!("{what} `{l}` removed")));
        }
    }
}

/// The package name of a conda dependency line (`conda-forge::numpy >=1.26` → `numpy`).
fn conda_key(line: &str) -> String {
    let l = line.trim();
    let l = l.rsplit_once("::").map_or(l, |(_, rest)| rest);
    l.split(|c: char| c.is_whitespace() || "=<>!~[".contains(c))
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// The distribution name of a `pip:` line, normalised; option lines are their own key.
fn pip_key(line: &str) -> String {
    let l = line.trim();
    if l.starts_with('-') {
        return l.to_string();
    }
    l.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .next()
        .unwrap_or_default()
        .to_lowercase()
        .replace(['_', '.'], "-")
}

/// One locked `pip:` package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPip {
    /// Its name, as the distribution spells it.
    pub name: String,
    /// Its exact version.
    pub version: String,
    /// Where its archive is.
    pub url: String,
    /// The archive's sha256.
    pub sha256: Option<String>,
    /// Asked for by a `pip:` line (not only needed by another package).
    pub requested: bool,
    /// What it depends on (name → specifier, `*` for any).
    pub dependencies: BTreeMap<String, String>,
}

/// One environment of a lock file, for one platform.
#[derive(Debug, Clone)]
pub struct Locked {
    /// The lock file.
    pub path: PathBuf,
    /// Its kind.
    pub format: Format,
    /// The conda packages, with canonical URLs.
    pub records: Vec<RepoDataRecord>,
    /// The records are complete repodata records (envpack's own lock, pixi); otherwise they
    /// hold what the lock says, and are completed from the packages' `info/index.json`.
    pub complete: bool,
    /// The `pip:` packages.
    pub pip: Vec<LockedPip>,
    /// The environment's name, if the lock says.
    pub name: Option<String>,
    /// The channels it was solved from.
    pub channels: Vec<String>,
    /// `variables:` of the environment file it was made from (envpack's locks).
    pub variables: Vec<(String, String)>,
    /// The inputs it was made from (envpack's locks).
    pub inputs: Option<Inputs>,
    /// Its content hash for the platform read.
    pub content_hash: Option<String>,
}

impl Locked {
    /// The `pip:` lines that install exactly the locked packages, hashes required.
    /// envpack's locks install by name and version from the indexes of the `pip:` section they
    /// were made from (as the solved build did, so the files pip writes are the same); other
    /// locks install each archive from its URL.
    pub fn pip_requirements(&self) -> Result<Vec<String>, LockError> {
        let mut lines = Vec::new();
        if let Some(inputs) = &self.inputs {
            lines.extend(
                inputs
                    .pip
                    .iter()
                    .filter(|l| is_index_option(l))
                    .map(|l| l.trim().to_string()),
            );
        }
        for p in &self.pip {
            let sha = p.sha256.as_deref().ok_or_else(|| LockError::Invalid {
                path: self.path.clone(),
                line: None,
                message: format!(
                    "the pip package {} {} has no sha256: it cannot be installed with hashes required",
                    p.name, p.version
                ),
            })?;
            if self.inputs.is_some() {
                lines.push(format!("{}=={} --hash=sha256:{sha}", p.name, p.version));
            } else {
                lines.push(format!("{} @ {} --hash=sha256:{sha}", p.name, p.url));
            }
        }
        Ok(lines)
    }

    /// The `pip:` packages that were installed only as dependencies.
    #[must_use]
    pub fn pip_not_requested(&self) -> Vec<(String, String)> {
        self.pip
            .iter()
            .filter(|p| !p.requested)
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    }
}

/// `pip:` lines that say where packages come from (kept for a locked install); the others
/// (requirements, `-r`, `-c`, `-e`) are replaced by the locked packages.
fn is_index_option(line: &str) -> bool {
    let l = line.trim();
    [
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--no-index",
        "--trusted-host",
        "--only-binary",
        "--no-binary",
        "--prefer-binary",
    ]
    .iter()
    .any(|o| {
        l.strip_prefix(o)
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '=', '\t']) || o.len() == 2)
    })
}

/// Reads the environment of `path` (a lock of any [`Format`]) for `platform`; `environment`
/// chooses a pixi environment (default: `default`).
pub fn read(path: &Path, platform: Subdir, environment: Option<&str>) -> Result<Locked, LockError> {
    let format = detect(path).ok_or_else(|| LockError::Invalid {
        path: path.to_path_buf(),
        line: None,
        message: "not a conda-lock, pixi or explicit lock file".into(),
    })?;
    match format {
        Format::CondaLock => read_conda_lock(path, platform),
        Format::Pixi => read_pixi(path, platform, environment.unwrap_or(DEFAULT_ENVIRONMENT)),
        Format::Explicit => read_explicit(path, platform),
    }
}

fn read_text(path: &Path) -> Result<String, LockError> {
    fs_err::read_to_string(path).map_err(|source| LockError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    memchr::memchr_iter(b'\n', &text.as_bytes()[..offset.min(text.len())]).count() + 1
}

fn read_conda_lock(path: &Path, platform: Subdir) -> Result<Locked, LockError> {
    let text = read_text(path)?;
    let doc = Document::parse(&text).map_err(|source| LockError::CondaLock {
        path: path.to_path_buf(),
        line: source.span().map(|s| line_of(&text, s.start)),
        source: Box::new(source),
    })?;
    let lock = doc.lock_file();
    let meta = lock.metadata.custom_metadata.clone().unwrap_or_default();
    let p = platform.as_str();
    if !lock.metadata.platforms.iter().any(|x| x == p) {
        return Err(LockError::NoPlatform {
            path: path.to_path_buf(),
            platform: p.to_string(),
            available: lock.metadata.platforms.clone(),
        });
    }
    let requested: BTreeSet<String> = meta
        .get(PIP_REQUESTED)
        .map(|v| v.lines().map(pip_key).collect())
        .unwrap_or_default();
    let ours = Inputs::from_metadata(&meta);
    let mut records = Vec::new();
    let mut complete = true;
    let mut pip = Vec::new();
    for (i, pkg) in lock.package.iter().enumerate() {
        if pkg.platform != p || pkg.category != "main" || pkg.optional {
            continue;
        }
        let invalid = |message: String| LockError::Invalid {
            path: path.to_path_buf(),
            line: doc
                .span(&format!("package[{i}]"))
                .or_else(|| doc.key_span(&format!("package[{i}]")))
                .map(|s| line_of(&text, s.start)),
            message,
        };
        match pkg.manager {
            Manager::Conda => {
                let extra = meta.get(&format!("{RECORD}{p}.{}", pkg.name));
                let record = if let Some(json) = extra {
                    record_from_extra(pkg, json)
                } else {
                    complete = false;
                    partial_record(
                        &pkg.name,
                        &pkg.version,
                        pkg.build.as_deref(),
                        &pkg.url,
                        &pkg.hash,
                        pkg.dependencies.iter().map(|(n, c)| {
                            if c.is_empty() || c == "*" {
                                n.clone()
                            } else {
                                format!("{n} {c}")
                            }
                        }),
                    )
                }
                .map_err(|m| invalid(format!("package {}: {m}", pkg.name)))?;
                records.push(record);
            }
            Manager::Pip => pip.push(LockedPip {
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                url: pkg.url.clone(),
                sha256: pkg.hash.sha256.clone(),
                requested: ours.is_none() || requested.contains(&pip_key(&pkg.name)),
                dependencies: pkg.dependencies.clone(),
            }),
        }
    }
    records.sort_by(|a, b| a.package_record.name.cmp(&b.package_record.name));
    let variables = meta
        .get(VARIABLES)
        .and_then(|v| serde_json::from_str::<Vec<(String, String)>>(v).ok())
        .unwrap_or_default();
    Ok(Locked {
        path: path.to_path_buf(),
        format: Format::CondaLock,
        records,
        complete,
        pip,
        name: meta.get(NAME).cloned(),
        channels: lock
            .metadata
            .channels
            .iter()
            .map(|c| c.url.clone())
            .collect(),
        variables,
        inputs: ours,
        content_hash: lock.metadata.content_hash.get(p).cloned(),
    })
}

/// A record from what a lock entry or an explicit line says: enough to fetch and install it;
/// completed later from the package's `info/index.json`.
fn partial_record(
    name: &str,
    version: &str,
    build: Option<&str>,
    url: &str,
    hash: &Hashes,
    depends: impl Iterator<Item = String>,
) -> Result<RepoDataRecord, String> {
    let url = Url::parse(url).map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    let file = url
        .path_segments()
        .and_then(Iterator::last)
        .unwrap_or_default()
        .to_string();
    let identifier = DistArchiveIdentifier::try_from_filename(&file)
        .ok_or_else(|| format!("`{file}` is not a conda package file name"))?;
    let build = build.map_or_else(
        || identifier.identifier.build_string.clone(),
        str::to_string,
    );
    let mut record = PackageRecord::new(
        PackageName::from_str(name).map_err(|e| format!("invalid name `{name}`: {e}"))?,
        VersionWithSource::from_str(version)
            .map_err(|e| format!("invalid version `{version}`: {e}"))?,
        BuildString::new_unchecked(&build),
    );
    record.build_number = build
        .rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    record.depends = depends.collect();
    let mut segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    segments.pop();
    record.subdir = segments.last().map(ToString::to_string).unwrap_or_default();
    if let Some(md5) = &hash.md5 {
        record.md5 = Some(
            rattler_digest::parse_digest_from_hex::<rattler_digest::Md5>(md5)
                .ok_or_else(|| format!("invalid md5 `{md5}`"))?,
        );
    }
    if let Some(sha) = &hash.sha256 {
        record.sha256 = Some(
            rattler_digest::parse_digest_from_hex::<rattler_digest::Sha256>(sha)
                .ok_or_else(|| format!("invalid sha256 `{sha}`"))?,
        );
    }
    if record.md5.is_none() && record.sha256.is_none() {
        return Err("no md5 or sha256: its download cannot be verified".into());
    }
    // As the solver records it: the channel's URL with a trailing slash.
    let channel = url.as_str().strip_suffix(&file).and_then(|u| {
        let u = u.trim_end_matches('/');
        u.strip_suffix(&record.subdir).map(str::to_string)
    });
    Ok(RepoDataRecord {
        package_record: record,
        identifier,
        url,
        channel,
    })
}

/// The repodata fields of a record that a lock entry does not hold.
fn record_extra(record: &RepoDataRecord) -> String {
    let mut v = serde_json::to_value(record).expect("a record serialises");
    if let Some(obj) = v.as_object_mut() {
        for k in ["name", "version", "build", "md5", "sha256", "url"] {
            obj.remove(k);
        }
    }
    serde_json::to_string(&v).expect("a record serialises")
}

fn record_from_extra(pkg: &Package, json: &str) -> Result<RepoDataRecord, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid envpack record: {e}"))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| "invalid envpack record: not an object".to_string())?;
    let s = |x: &str| serde_json::Value::String(x.to_string());
    obj.insert("name".into(), s(&pkg.name));
    obj.insert("version".into(), s(&pkg.version));
    obj.insert("build".into(), s(pkg.build.as_deref().unwrap_or_default()));
    obj.insert("url".into(), s(&pkg.url));
    if let Some(m) = &pkg.hash.md5 {
        obj.insert("md5".into(), s(m));
    }
    if let Some(h) = &pkg.hash.sha256 {
        obj.insert("sha256".into(), s(h));
    }
    serde_json::from_value(v).map_err(|e| format!("invalid envpack record: {e}"))
}

fn read_pixi(path: &Path, platform: Subdir, environment: &str) -> Result<Locked, LockError> {
    let lock = rattler_lock::LockFile::from_path(path).map_err(|source| match source {
        rattler_lock::ParseCondaLockError::IoError(source) => LockError::Read {
            path: path.to_path_buf(),
            source,
        },
        source => LockError::Pixi {
            path: path.to_path_buf(),
            source: Box::new(source),
        },
    })?;
    let env = lock
        .environment(environment)
        .ok_or_else(|| LockError::NoEnvironment {
            path: path.to_path_buf(),
            name: environment.to_string(),
            available: lock.environments().map(|(n, _)| n.to_string()).collect(),
        })?;
    let no_platform = || LockError::NoPlatform {
        path: path.to_path_buf(),
        platform: platform.to_string(),
        available: env.platforms().map(|p| p.name().to_string()).collect(),
    };
    let p = lock.platform(platform.as_str()).ok_or_else(no_platform)?;
    let invalid = |message: String| LockError::Invalid {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let conda: Vec<&rattler_lock::CondaPackageData> =
        env.conda_packages(p).ok_or_else(no_platform)?.collect();
    if let Some(source) = conda.iter().find(|c| c.as_binary().is_none()) {
        return Err(invalid(format!(
            "{} is a source package: envpack installs built packages only",
            source.name().as_source()
        )));
    }
    let mut records = env
        .conda_repodata_records(p)
        .map_err(|e| invalid(format!("environment `{environment}`: {e}")))?
        .unwrap_or_default();
    records.sort_by(|a, b| a.package_record.name.cmp(&b.package_record.name));
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pip = Vec::new();
    for pkg in env.pypi_packages(p).into_iter().flatten() {
        let Some(wheel) = pkg.as_wheel() else {
            return Err(invalid(format!(
                "the PyPI package {} is a source tree: it cannot be installed from a lock",
                pkg.name()
            )));
        };
        let url = match wheel.location.inner() {
            rattler_lock::UrlOrPath::Url(u) => u.to_string(),
            rattler_lock::UrlOrPath::Path(p) => {
                let p = base.join(p.as_str());
                Url::from_file_path(&p)
                    .map_err(|()| invalid(format!("invalid path {}", p.display())))?
                    .to_string()
            }
        };
        let sha256 = wheel.hash.as_ref().and_then(|h| match h {
            rattler_lock::PackageHashes::Sha256(s)
            | rattler_lock::PackageHashes::Md5Sha256(_, s) => Some(hex(s.as_slice())),
            rattler_lock::PackageHashes::Md5(_) => None,
        });
        pip.push(LockedPip {
            name: wheel.name.to_string(),
            version: wheel.version.to_string(),
            url,
            sha256,
            requested: true,
            dependencies: BTreeMap::new(),
        });
    }
    Ok(Locked {
        path: path.to_path_buf(),
        format: Format::Pixi,
        records,
        complete: true,
        pip,
        name: (environment != DEFAULT_ENVIRONMENT).then(|| environment.to_string()),
        channels: env.channels().iter().map(|c| c.url.clone()).collect(),
        variables: Vec::new(),
        inputs: None,
        content_hash: None,
    })
}

fn read_explicit(path: &Path, platform: Subdir) -> Result<Locked, LockError> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    let mut explicit = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let invalid = |message: String| LockError::Invalid {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message,
        };
        if let Some(p) = line.strip_prefix("# platform:") {
            let p = p.trim();
            if p != platform.as_str() {
                return Err(LockError::NoPlatform {
                    path: path.to_path_buf(),
                    platform: platform.to_string(),
                    available: vec![p.to_string()],
                });
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "@EXPLICIT" {
            explicit = true;
            continue;
        }
        if !explicit {
            return Err(invalid(format!(
                "`{line}` before the @EXPLICIT line: not an explicit file"
            )));
        }
        let (url, hash) = line.split_once('#').unwrap_or((line, ""));
        let hash = hash.trim();
        let hash = hash
            .strip_prefix("sha256:")
            .or_else(|| hash.strip_prefix("md5:"))
            .unwrap_or(hash);
        let hashes = match hash.len() {
            0 => {
                return Err(invalid(format!(
                    "`{url}` has no #md5 or #sha256: its download cannot be verified"
                )));
            }
            32 => Hashes {
                md5: Some(hash.to_string()),
                sha256: None,
            },
            64 => Hashes {
                md5: None,
                sha256: Some(hash.to_string()),
            },
            _ => return Err(invalid(format!("`{hash}` is neither an md5 nor a sha256"))),
        };
        let file = url.rsplit('/').next().unwrap_or_default();
        let id = DistArchiveIdentifier::try_from_filename(file)
            .map_or_else(|| ArchiveIdentifier::from_str(file), |d| Ok(d.identifier));
        let id = id.map_err(|_| invalid(format!("`{file}` is not a conda package file name")))?;
        let record = partial_record(
            &id.name,
            &id.version,
            Some(&id.build_string),
            url,
            &hashes,
            std::iter::empty(),
        )
        .map_err(invalid)?;
        records.push(record);
    }
    if !explicit {
        return Err(LockError::Invalid {
            path: path.to_path_buf(),
            line: None,
            message: "no @EXPLICIT line: not an explicit file".into(),
        });
    }
    let mut channels: Vec<String> = Vec::new();
    for r in &records {
        if let Some(c) = &r.channel
            && !channels.contains(c)
        {
            channels.push(c.clone());
        }
    }
    records.sort_by(|a, b| a.package_record.name.cmp(&b.package_record.name));
    Ok(Locked {
        path: path.to_path_buf(),
        format: Format::Explicit,
        records,
        complete: false,
        pip: Vec::new(),
        name: None,
        channels,
        variables: Vec::new(),
        inputs: None,
        content_hash: None,
    })
}

/// Records to install, fetched through the mirrors: each record's URL and channel mapped to the
/// mirror that applies, and the rewrites (mirror prefix → canonical prefix) that map them back
/// in `conda-meta`.
#[must_use]
pub fn for_install(
    records: &[RepoDataRecord],
    channels: &ChannelMap,
) -> (Vec<RepoDataRecord>, UrlRewrites) {
    let mut rewrites: Vec<(String, String)> = Vec::new();
    let out = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some((fetch, from, to)) = channels.mirror_url(r.url.as_str())
                && let Ok(u) = Url::parse(&fetch)
            {
                r.url = u;
                if !rewrites.iter().any(|(f, _)| *f == to) {
                    rewrites.push((to.clone(), from.clone()));
                }
                if let Some(c) = &r.channel
                    && let Some(rest) = c.strip_prefix(&from)
                {
                    r.channel = Some(format!("{to}{rest}"));
                }
            }
            r
        })
        .collect();
    (out, UrlRewrites::from_pairs(rewrites))
}

/// Completes a partial record from the package's own `info/index.json` (in the extracted
/// package `dir`), keeping where it comes from and its hashes.
pub fn complete_record(record: &mut RepoDataRecord, dir: &Path) -> Result<(), std::io::Error> {
    use rattler_conda_types::package::{IndexJson, PackageFile};
    let index = IndexJson::from_package_directory(dir)?;
    let p = &record.package_record;
    let full = PackageRecord::from_index_json(index, p.size, p.sha256, p.md5)
        .map_err(std::io::Error::other)?;
    record.package_record = full;
    Ok(())
}

/// Completes partial records (see [`Locked::complete`]): each package is fetched into the
/// package cache (where the installer finds it next), and its `info/index.json` read. A
/// package known by its md5 only (`conda list --explicit --md5`) is downloaded first and its md5
/// checked, since the package cache verifies sha256 only; its record gets the sha256 measured.
pub async fn complete_records(
    records: &mut [RepoDataRecord],
    cache_dir: &Path,
    client: rattler_networking::LazyClient,
) -> Result<(), LockError> {
    use rattler_cache::package_cache::PackageCache;
    let cache = PackageCache::new(cache_dir.join(rattler_cache::PACKAGE_CACHE_DIR));
    let mut set = tokio::task::JoinSet::new();
    for (i, r) in records.iter().enumerate() {
        let (cache, mut r, client) = (cache.clone(), r.clone(), client.clone());
        let scratch = cache_dir.to_path_buf();
        set.spawn(async move {
            let mut downloaded = None;
            if r.package_record.sha256.is_none()
                && let Some(md5) = r.package_record.md5
            {
                let (file, sha256) = match download_checked(&r, md5, &scratch, &client).await {
                    Ok(x) => x,
                    Err(e) => return (i, Err(e)),
                };
                r.package_record.sha256 = Some(sha256);
                downloaded = Some(file);
            }
            let local = downloaded
                .as_ref()
                .map(|f| f.path().to_path_buf())
                .or_else(|| {
                    (r.url.scheme() == "file")
                        .then(|| r.url.to_file_path().ok())
                        .flatten()
                });
            let fetched = match local {
                Some(path) => {
                    cache
                        .get_or_fetch_from_path(&path, Some(&r.package_record), None)
                        .await
                }
                None => {
                    cache
                        .get_or_fetch_from_url(&r.package_record, r.url.clone(), client, None, None)
                        .await
                }
            };
            let dir = fetched
                .map(|m| m.path().to_path_buf())
                .map_err(|source| LockError::Fetch {
                    package: r.identifier.to_string(),
                    source: Box::new(source),
                });
            (i, dir.map(|d| (d, r.package_record.sha256)))
        });
    }
    while let Some(done) = set.join_next().await {
        let (i, fetched) = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let (dir, sha256) = fetched?;
        records[i].package_record.sha256 = sha256;
        complete_record(&mut records[i], &dir).map_err(|source| LockError::Read {
            path: dir.join("info/index.json"),
            source,
        })?;
    }
    Ok(())
}

/// Downloads (or reads, for `file://`) the archive of `r` into a temporary file in `scratch`,
/// checking its md5; returns the file and its sha256.
async fn download_checked(
    r: &RepoDataRecord,
    md5: rattler_digest::Md5Hash,
    scratch: &Path,
    client: &rattler_networking::LazyClient,
) -> Result<(tempfile::NamedTempFile, rattler_digest::Sha256Hash), LockError> {
    use rattler_digest::digest::Digest as _;
    use std::io::Write as _;
    let io = |source| LockError::Read {
        path: scratch.to_path_buf(),
        source,
    };
    fs_err::create_dir_all(scratch).map_err(io)?;
    // The archive's file name last: the cache tells the package format from it.
    let mut file = tempfile::Builder::new()
        .prefix(".envpack-")
        .suffix(&format!("-{}", r.identifier))
        .tempfile_in(scratch)
        .map_err(io)?;
    let (mut m, mut s) = (rattler_digest::Md5::new(), rattler_digest::Sha256::new());
    let mut put = |chunk: &[u8], file: &mut tempfile::NamedTempFile| {
        m.update(chunk);
        s.update(chunk);
        file.write_all(chunk)
    };
    let fetch_error = |message: String| LockError::Invalid {
        path: PathBuf::from(r.url.as_str()),
        line: None,
        message,
    };
    if r.url.scheme() == "file" {
        let path = r
            .url
            .to_file_path()
            .map_err(|()| fetch_error("not a local path".into()))?;
        let bytes = fs_err::read(&path).map_err(|source| LockError::Read { path, source })?;
        put(&bytes, &mut file).map_err(io)?;
    } else {
        let mut response = client
            .client()
            .get(r.url.clone())
            .send()
            .await
            .and_then(|r| {
                r.error_for_status()
                    .map_err(reqwest_middleware::Error::from)
            })
            .map_err(|e| fetch_error(format!("cannot download: {e}")))?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fetch_error(format!("cannot download: {e}")))?
        {
            put(&chunk, &mut file).map_err(io)?;
        }
    }
    let got = m.finalize();
    if got != md5 {
        return Err(fetch_error(format!(
            "md5 mismatch: expected {}, got {}",
            hex(md5.as_slice()),
            hex(got.as_slice())
        )));
    }
    file.flush().map_err(io)?;
    Ok((file, s.finalize()))
}

/// One platform of a lock to write.
#[derive(Debug, Clone)]
pub struct PlatformLock {
    /// The platform.
    pub platform: Subdir,
    /// Its conda packages, with canonical URLs and channels.
    pub records: Vec<RepoDataRecord>,
    /// Its `pip:` packages.
    pub pip: Vec<LockedPip>,
}

/// A `conda-lock.yml` to write.
#[derive(Debug, Clone)]
pub struct NewLock {
    /// The environment's name.
    pub name: Option<String>,
    /// The environment file, relative to the lock's folder.
    pub source: String,
    /// What it was solved from.
    pub inputs: Inputs,
    /// `variables:` of the environment file.
    pub variables: Vec<(String, String)>,
    /// The platforms.
    pub platforms: Vec<PlatformLock>,
}

/// The conda-lock model of `lock`: packages sorted, digests and envpack's metadata filled in.
pub fn to_conda_lock(lock: &NewLock) -> LockFile {
    let mut model = LockFile::default();
    let mut custom = BTreeMap::new();
    lock.inputs.to_metadata(&mut custom);
    if let Some(n) = &lock.name {
        custom.insert(NAME.to_string(), n.clone());
    }
    if !lock.variables.is_empty() {
        custom.insert(
            VARIABLES.to_string(),
            serde_json::to_string(&lock.variables).expect("strings serialise"),
        );
    }
    let mut requested = BTreeSet::new();
    for pl in &lock.platforms {
        let p = pl.platform.as_str().to_string();
        model.metadata.platforms.push(p.clone());
        model
            .metadata
            .content_hash
            .insert(p.clone(), lock.inputs.digest(&p));
        for r in &pl.records {
            let pr = &r.package_record;
            let name = pr.name.as_source().to_string();
            let hash = Hashes {
                md5: pr.md5.map(|m| hex(m.as_slice())),
                sha256: pr.sha256.map(|s| hex(s.as_slice())),
            };
            custom.insert(format!("{RECORD}{p}.{name}"), record_extra(r));
            model.package.push(Package {
                dependencies: dependency_map(&pr.depends),
                name,
                version: pr.version.as_str().to_string(),
                manager: Manager::Conda,
                platform: p.clone(),
                url: r.url.to_string(),
                hash,
                source: None,
                build: Some(pr.build.to_string()),
                category: "main".into(),
                optional: false,
            });
        }
        for pip in &pl.pip {
            if pip.requested {
                requested.insert(pip.name.clone());
            }
            model.package.push(Package {
                name: pip.name.clone(),
                version: pip.version.clone(),
                manager: Manager::Pip,
                platform: p.clone(),
                dependencies: pip.dependencies.clone(),
                url: pip.url.clone(),
                hash: Hashes {
                    md5: None,
                    sha256: pip.sha256.clone(),
                },
                source: None,
                build: None,
                category: "main".into(),
                optional: false,
            });
        }
    }
    if !requested.is_empty() {
        custom.insert(
            PIP_REQUESTED.to_string(),
            requested.into_iter().collect::<Vec<_>>().join("\n"),
        );
    }
    model.metadata.channels = lock
        .inputs
        .channels
        .iter()
        .map(|c| rattler_conda_lock::Channel {
            url: c.clone(),
            used_env_vars: Vec::new(),
        })
        .collect();
    model.metadata.sources = vec![lock.source.clone()];
    debug_assert!(custom.keys().all(|k| k.starts_with(META)));
    model.metadata.custom_metadata = Some(custom);
    model
}

/// conda-lock's `dependencies` map of a record's `depends`: name → the rest of the spec
/// (`""` when unconstrained); a name listed twice keeps both constraints, comma-joined.
fn dependency_map(depends: &[String]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for d in depends {
        let d = d.trim();
        let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
        let rest = rest.trim();
        m.entry(name.to_string())
            .and_modify(|c| {
                if !rest.is_empty() {
                    if !c.is_empty() {
                        c.push(',');
                    }
                    c.push_str(rest);
                }
            })
            .or_insert_with(|| rest.to_string());
    }
    m
}

/// Writes `lock` to `path` as `conda-lock.yml` (version 1), through a temporary file.
pub fn write_conda_lock(path: &Path, lock: &NewLock) -> Result<(), LockError> {
    use std::io::Write as _;
    let invalid = |message: String| LockError::Invalid {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let model = to_conda_lock(lock);
    let yaml = model.to_yaml().map_err(|e| invalid(e.to_string()))?;
    let header = format!(
        "# Written by `envpack lock` from {}: the exact packages of the environment, with their\n\
         # URLs and hashes. `envpack pack` installs them without solving while the environment\n\
         # file still matches (metadata.content_hash); conda-lock and micromamba read it too.\n",
        lock.source
    );
    let write_err = |source| LockError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Removed if the process is interrupted; renamed onto the lock under the interrupt's
    // exclusion: either the lock is complete (and an interrupt says so) or it is untouched.
    let (mut tmp, _guard) = crate::pack::archive::temp_file_beside(path).map_err(write_err)?;
    tmp.write_all(header.as_bytes())
        .and_then(|()| tmp.write_all(yaml.as_bytes()))
        // 0644 less the umask, as the pack's outputs (a temporary file is made 0600).
        .and_then(|()| crate::pack::archive::set_output_mode(tmp.path()))
        .map_err(write_err)?;
    crate::cleanup::publishing(path, || tmp.persist(path).map(drop)).map_err(|e| write_err(e.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(deps: &[&str], pip: &[&str]) -> Inputs {
        Inputs {
            channels: vec!["conda-forge".into()],
            dependencies: deps.iter().map(ToString::to_string).collect(),
            pip: pip.iter().map(ToString::to_string).collect(),
            options: vec![("glibc".into(), "2.28".into())],
        }
    }

    #[test]
    fn the_digest_covers_inputs_and_platform_only() {
        let a = inputs(&["python=3.11", "numpy<2"], &["six==1.17.0"]);
        assert_eq!(a.digest("linux-64"), a.clone().digest("linux-64"));
        assert_ne!(a.digest("linux-64"), a.digest("linux-aarch64"));
        assert_ne!(
            a.digest("linux-64"),
            inputs(&["python=3.11", "numpy"], &["six==1.17.0"]).digest("linux-64")
        );
        let mut b = a.clone();
        b.options[0].1 = "2.31".into();
        assert_ne!(a.digest("linux-64"), b.digest("linux-64"));
        assert_eq!(a.digest("linux-64").len(), 64);
    }

    #[test]
    fn changes_name_the_line_that_changed() {
        let old = inputs(
            &["python=3.11", "numpy<2", "six"],
            &["--no-index", "cowsay==6.1"],
        );
        let mut new = inputs(
            &["python=3.11", "numpy", "idna"],
            &["--no-index", "Cowsay==6.0"],
        );
        new.channels.push("bioconda".into());
        new.options[0].1 = "2.31".into();
        let c = new.changes_from(&old);
        assert!(
            c.contains(&"channels were [conda-forge], now [conda-forge, bioconda]".to_string()),
            "{c:?}"
        );
        assert!(
            c.contains(&"dependency `numpy<2` is now `numpy`".to_string()),
            "{c:?}"
        );
        assert!(c.contains(&"dependency `idna` added".to_string()), "{c:?}");
        assert!(c.contains(&"dependency `six` removed".to_string()), "{c:?}");
        assert!(
            c.contains(&"pip line `cowsay==6.1` is now `Cowsay==6.0`".to_string()),
            "{c:?}"
        );
        assert!(c.contains(&"glibc was 2.28, now 2.31".to_string()), "{c:?}");
        assert_eq!(c.len(), 6, "{c:?}");
        assert!(old.changes_from(&old).is_empty());
    }

    #[test]
    fn keys_are_package_names() {
        assert_eq!(conda_key("conda-forge::NumPy >=1.26"), "numpy");
        assert_eq!(conda_key("python=3.11"), "python");
        assert_eq!(conda_key("six[build=py_0]"), "six");
        assert_eq!(
            pip_key("typing_extensions>=4; python_version<'3.12'"),
            "typing-extensions"
        );
        assert_eq!(pip_key("--find-links ./w"), "--find-links ./w");
    }

    #[test]
    fn index_options_are_kept_for_a_locked_install() {
        for l in [
            "--no-index",
            "--find-links /w",
            "-f /w",
            "-f/w",
            "--index-url=https://x",
            "--extra-index-url https://y",
        ] {
            assert!(is_index_option(l), "{l}");
        }
        for l in [
            "-r requirements.txt",
            "cowsay==6.1",
            "-e ./pkg",
            "--no-indexes",
        ] {
            assert!(!is_index_option(l), "{l}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn explicit_files_are_read_with_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let md5 = "d7c89558ba9fa0495403155b64376d81";
        let sha = "242c0c324507ee172c0e0dd2045814e746bb303d1eb78870d182ceb0abc726a8";
        let path = write(
            dir.path(),
            "explicit.txt",
            &format!(
                "# This file may be used to create an environment using:\n# platform: linux-64\n@EXPLICIT\n\
                 https://conda.anaconda.org/conda-forge/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2#{md5}\n\
                 https://conda.anaconda.org/conda-forge/linux-64/bzip2-1.0.8-hd590300_5.conda#sha256:{sha}\n"
            ),
        );
        assert_eq!(detect(&path), Some(Format::Explicit));
        let locked = read(&path, Subdir::Linux64, None).unwrap();
        assert_eq!(locked.records.len(), 2);
        let bz = &locked.records[1].package_record;
        assert_eq!(
            (
                bz.name.as_normalized(),
                bz.version.as_str().as_ref(),
                bz.build.as_str()
            ),
            ("bzip2", "1.0.8", "hd590300_5")
        );
        assert_eq!(bz.build_number, 5);
        assert_eq!(bz.subdir, "linux-64");
        assert_eq!(hex(bz.sha256.unwrap().as_slice()), sha);
        assert_eq!(
            locked.records[1].channel.as_deref(),
            Some("https://conda.anaconda.org/conda-forge/")
        );
        assert_eq!(
            hex(locked.records[0].package_record.md5.unwrap().as_slice()),
            md5
        );
        assert!(!locked.complete);
        assert!(matches!(
            read(&path, Subdir::LinuxAarch64, None),
            Err(LockError::NoPlatform { .. })
        ));
        let bad = write(
            dir.path(),
            "bad.txt",
            "@EXPLICIT\nhttps://x/linux-64/a-1-0.conda\n",
        );
        let e = read(&bad, Subdir::Linux64, None).unwrap_err();
        assert!(e.to_string().contains("bad.txt:2:"), "{e}");
    }

    fn record(name: &str, depends: &[&str]) -> RepoDataRecord {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": "1.0", "build": "h1_0", "build_number": 0,
            "subdir": "linux-64", "depends": depends, "license": "MIT",
            "md5": "d7c89558ba9fa0495403155b64376d81",
            "sha256": "242c0c324507ee172c0e0dd2045814e746bb303d1eb78870d182ceb0abc726a8",
            "size": 1234, "timestamp": 1_699_279_927_000_u64,
            "fn": format!("{name}-1.0-h1_0.conda"),
            "url": format!("https://conda.anaconda.org/conda-forge/linux-64/{name}-1.0-h1_0.conda"),
            "channel": "https://conda.anaconda.org/conda-forge/",
        }))
        .unwrap()
    }

    #[test]
    fn a_written_lock_reads_back_as_the_same_records() {
        let d = tempfile::tempdir().unwrap();
        let lock = NewLock {
            name: Some("demo".into()),
            source: "environment.yml".into(),
            inputs: inputs(&["a"], &["--no-index", "six==1.17.0"]),
            variables: vec![("OMP_NUM_THREADS".into(), "1".into())],
            platforms: vec![PlatformLock {
                platform: Subdir::Linux64,
                records: vec![record("a", &["b >=1", "tzdata", "b <2"]), record("b", &[])],
                pip: vec![LockedPip {
                    name: "six".into(),
                    version: "1.17.0".into(),
                    url: "file:///w/six-1.17.0-py2.py3-none-any.whl".into(),
                    sha256: Some("ab".repeat(32)),
                    requested: true,
                    dependencies: BTreeMap::new(),
                }],
            }],
        };
        let path = d.path().join(CONDA_LOCK_FILE);
        write_conda_lock(&path, &lock).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("version: 1"), "{text}");
        let l = read(&path, Subdir::Linux64, None).unwrap();
        assert!(l.complete);
        assert_eq!(l.records, lock.platforms[0].records);
        assert_eq!(l.pip, lock.platforms[0].pip);
        assert_eq!(l.name.as_deref(), Some("demo"));
        assert_eq!(l.variables, lock.variables);
        assert_eq!(l.inputs.as_ref(), Some(&lock.inputs));
        assert_eq!(l.content_hash, Some(lock.inputs.digest("linux-64")));
        assert_eq!(
            l.pip_requirements().unwrap(),
            [
                "--no-index".to_string(),
                format!("six==1.17.0 --hash=sha256:{}", "ab".repeat(32))
            ]
        );
        let model = to_conda_lock(&lock);
        let a = model.package.iter().find(|p| p.name == "a").unwrap();
        assert_eq!(a.dependencies["b"], ">=1,<2");
        assert_eq!(a.dependencies["tzdata"], "");
        assert!(matches!(
            read(&path, Subdir::LinuxAarch64, None),
            Err(LockError::NoPlatform { .. })
        ));
        // Without envpack's metadata the entries are read as conda-lock wrote them.
        let mut foreign = model.clone();
        foreign.metadata.custom_metadata = None;
        let fp = d.path().join("other.conda-lock.yml");
        std::fs::write(&fp, foreign.to_yaml().unwrap()).unwrap();
        let l = read(&fp, Subdir::Linux64, None).unwrap();
        assert!(!l.complete && l.inputs.is_none());
        assert_eq!(l.records[0].package_record.depends, ["b >=1,<2", "tzdata"]);
        assert_eq!(l.records[0].url, lock.platforms[0].records[0].url);
        assert_eq!(
            l.pip_requirements().unwrap(),
            [format!(
                "six @ file:///w/six-1.17.0-py2.py3-none-any.whl --hash=sha256:{}",
                "ab".repeat(32)
            )]
        );
    }

    #[test]
    fn schema_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            CONDA_LOCK_FILE,
            "version: 1\nmetadata:\n  content_hash:\n    linux-64: nope\n  channels: []\n  platforms: [linux-64]\n  sources: []\npackage: []\n",
        );
        let e = read(&p, Subdir::Linux64, None).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("conda-lock.yml:4: not a valid conda-lock file"),
            "{e}"
        );
    }
}
