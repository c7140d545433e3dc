//! `envpack inspect ARCHIVE|MODEL_DIR`: what a packed environment holds, without extracting it.
//!
//! A tarball (gzip, zstd or plain tar, told apart by its first bytes) is read as one stream:
//! every member's path, type and size is kept, and only small members are read: the manifest
//! (`conda-meta/envpack.json`, the first member of envpack's archives), the conda records
//! (`conda-meta/*.json`) and pip's `RECORD` files. A folder (`--format dir`) is walked the same
//! way. A model folder is read through its config, as its server would: Triton's
//! `EXECUTION_ENV_PATH`, MLServer's `parameters.environment_tarball`, else the tarball's default
//! name.
//!
//! From that: the platform, the Python, the conda packages with the size of the files each
//! installed (largest first), the pip packages (`.dist-info` folders of `site-packages` that no
//! conda record owns, sized from their `RECORD`), what the manifest says, and the verdicts of
//! the consumer checks `envpack pack` runs ([`crate::targets::checks`]) for each Triton era and
//! MLServer. Memory is bounded by the number of members, not their size.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{self, Compression, Manifest, ManifestError};
use crate::pack::Format;
use crate::pack::walk::{Entry, Listing};
use crate::targets::{
    self, Consumer, Detected, Model, Server, TargetError, TritonVersion, checks, config,
    model_settings, pbtxt,
};

/// The version of `envpack inspect --json`'s document; it changes when a field changes
/// meaning or goes away (new fields may be added without a change).
pub const JSON_VERSION: u32 = 1;

/// The largest conda record or pip `RECORD` read; larger ones are skipped (a record that big
/// is no record).
const MAX_METADATA: u64 = 64 << 20;

/// Errors of `envpack inspect`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Neither a tar stream envpack can read nor a folder.
    #[error("cannot read {} as a tar archive (gzip, zstd or plain tar)", path.display())]
    NotAnArchive {
        /// The file.
        path: PathBuf,
        /// What the tar reader said.
        #[source]
        source: std::io::Error,
    },
    /// An archive or folder without `conda-meta/`.
    #[error("{} holds no conda environment (no conda-meta folder at its root)", path.display())]
    NoEnvironment {
        /// The archive or folder.
        path: PathBuf,
    },
    /// A model whose packed environment is not where its config (or the default name) says.
    #[error("the {server} model {} has no packed environment: {}", model.display(), looked.iter().map(|p| format!("{} does not exist", p.display())).collect::<Vec<_>>().join(", "))]
    NoTarball {
        /// The model folder.
        model: PathBuf,
        /// Its server.
        server: Server,
        /// Where it was looked for.
        looked: Vec<PathBuf>,
    },
    /// A Triton `EXECUTION_ENV_PATH` that names no path envpack can resolve.
    #[error("{}: EXECUTION_ENV_PATH is `{value}`: neither $$TRITON_MODEL_DIRECTORY/... nor an absolute path", config.display())]
    Unresolvable {
        /// The config.
        config: PathBuf,
        /// Its value.
        value: String,
    },
    /// A folder that holds several models.
    #[error("{} is a model repository ({} models): inspect one model folder or one tarball", root.display(), models)]
    Repository {
        /// The folder.
        root: PathBuf,
        /// How many models it holds.
        models: usize,
    },
    /// A `--triton-version` that is no release.
    #[error("{0}")]
    TritonVersion(String),
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A model's config does not parse.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An I/O error; it names its path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl InspectError {
    /// What the user can do about it.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            InspectError::NoTarball { .. } => Some(
                "pack the model first (`envpack pack MODEL_DIR`), or inspect the tarball itself"
                    .into(),
            ),
            InspectError::Repository { .. } => {
                Some("e.g. `envpack inspect REPOSITORY/MODEL`".into())
            }
            InspectError::Target(t) => t.hint(),
            _ => None,
        }
    }

    /// Whether it is a usage error.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(self, InspectError::TritonVersion(_))
    }
}

/// What `envpack inspect` reports (also its `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The version of the `--json` schema (`JSON_VERSION`).
    pub version: u32,
    /// The archive or folder read.
    pub path: PathBuf,
    /// The model it was found through, for a model folder.
    pub model: Option<ModelInfo>,
    /// `tar-gz`, `tar-zst`, `tar` or `dir`.
    pub format: String,
    /// Bytes on disk (the archive; for a folder, its files).
    pub size: u64,
    /// Bytes of the files once extracted.
    pub installed_size: u64,
    /// Files and symlinks (not folders).
    pub files: usize,
    /// The target platform: the manifest's, else the records'.
    pub platform: Option<String>,
    /// The Python version: its conda record's, else `X.Y` from `lib/pythonX.Y`.
    pub python: Option<String>,
    /// Conda packages, largest first.
    pub packages: Vec<PackageInfo>,
    /// pip packages (not owned by a conda record), largest first.
    pub pip: Vec<PipInfo>,
    /// Bytes of files no package owns (activation scripts, the manifest, `.pyc` files...).
    pub other_size: u64,
    /// The manifest, when envpack wrote the archive.
    pub manifest: Option<Manifest>,
    /// Whether the manifest's packages are the records' (name, version, build); `None`
    /// without a manifest.
    pub manifest_matches_records: Option<bool>,
    /// The consumer checks' verdicts.
    pub checks: Vec<Verdict>,
}

/// The model a packed environment was found through.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The folder.
    pub dir: PathBuf,
    /// Its server.
    pub server: Server,
    /// Its config file.
    pub config: PathBuf,
    /// The config's value (`EXECUTION_ENV_PATH`, `parameters.environment_tarball`), if set:
    /// without one the default name was used.
    pub config_value: Option<String>,
}

/// A conda package of the environment.
#[derive(Debug, Clone, Serialize)]
pub struct PackageInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Build string.
    pub build: String,
    /// Bytes of its files in the environment.
    pub size: u64,
    /// How many of its files the environment holds.
    pub files: usize,
}

/// A pip package: a `.dist-info` folder of `site-packages` that no conda record owns.
#[derive(Debug, Clone, Serialize)]
pub struct PipInfo {
    /// Name, as its `.dist-info` folder spells it.
    pub name: String,
    /// Version.
    pub version: String,
    /// Bytes of the files its `RECORD` lists (of its `.dist-info` folder without one).
    pub size: u64,
    /// How many of them the environment holds.
    pub files: usize,
}

/// One consumer check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `triton`, `mlserver` (a model's `environment_tarball`) or `mlserver-image`
    /// (`MLSERVER_ENV_TARBALL`).
    pub consumer: String,
    /// For Triton: the releases the verdict holds for (`23.05-24.10`), or the release asked
    /// for with `--triton-version`.
    pub releases: Option<String>,
    /// Whether the environment passes.
    pub ok: bool,
    /// Why not.
    pub problem: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    /// Warnings and notes of a passing check.
    pub notices: Vec<String>,
    /// The check of the inspected model's own server.
    pub model: bool,
}

/// What to inspect, and how.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Check Triton against this release only (`YY.MM`), instead of one verdict per era.
    pub triton_version: Option<String>,
}

/// Inspects an archive, a `--format dir` folder, or a model folder's packed environment.
pub fn inspect(path: &Path, options: &InspectOptions) -> Result<Inspection, InspectError> {
    let release = options
        .triton_version
        .as_deref()
        .map(str::parse::<TritonVersion>)
        .transpose()
        .map_err(InspectError::TritonVersion)?;
    let (target, model) = match targets::detect(path)? {
        Detected::Model(m) => {
            let (target, value) = model_environment(&m)?;
            (target, Some((m, value)))
        }
        Detected::Repository { root, models } => {
            return Err(InspectError::Repository {
                root,
                models: models.len(),
            });
        }
        Detected::Environment => (path.to_path_buf(), None),
    };
    let (format, size, scan) = if fs_err::metadata(&target)?.is_dir() {
        let (size, scan) = scan_dir(&target)?;
        (Format::Dir, size, scan)
    } else {
        let size = fs_err::metadata(&target)?.len();
        let (compression, scan) = scan_tar(&target)?;
        let format = match compression {
            Compression::Gzip => Format::TarGz,
            Compression::Zstd => Format::TarZst,
            Compression::None => Format::Tar,
        };
        (format, size, scan)
    };
    let env = scan.environment(&target)?;
    let mut report = env.report(target, format, size);
    let facts = checks::inspect_tree(&env.listing);
    let custom_stub = model
        .as_ref()
        .is_some_and(|(m, _)| m.server == Server::Triton && checks::custom_stub(&m.dir).is_file());
    report.checks = verdicts(
        &facts,
        format,
        release,
        custom_stub,
        model.as_ref().map(|(m, _)| m.server),
    );
    report.model = model.map(|(m, value)| ModelInfo {
        config: m.config_path(),
        dir: m.dir,
        server: m.server,
        config_value: value,
    });
    Ok(report)
}

/// Where a model's server finds its packed environment: the config's value, else the first
/// default name (of each format) that exists. Returns it and the config's value.
fn model_environment(model: &Model) -> Result<(PathBuf, Option<String>), InspectError> {
    let path = model.config_path();
    let text = fs_err::read_to_string(&path)?;
    let value = match model.server {
        Server::Triton => {
            pbtxt::get_parameter(&text, config::EXECUTION_ENV_PATH).map_err(|source| {
                TargetError::Pbtxt {
                    path: path.clone(),
                    source,
                }
            })?
        }
        Server::MlServer => model_settings::summary(&text)
            .map(|s| s.environment_tarball)
            .map_err(|source| TargetError::ModelSettings {
                path: path.clone(),
                source,
            })?,
    };
    let looked = if let Some(v) = &value {
        let target = config::resolve_value(model, v).ok_or_else(|| InspectError::Unresolvable {
            config: path.clone(),
            value: v.clone(),
        })?;
        vec![target]
    } else {
        [Format::TarGz, Format::Tar, Format::Dir, Format::TarZst]
            .into_iter()
            .map(|f| model.dir.join(targets::default_file_name(model.server, f)))
            .collect()
    };
    match looked.iter().find(|p| p.exists()) {
        Some(found) => Ok((found.clone(), value)),
        None => Err(InspectError::NoTarball {
            model: model.dir.clone(),
            server: model.server,
            looked,
        }),
    }
}

/// What a conda record says, as far as `inspect` needs it.
#[derive(Debug, Deserialize)]
struct CondaRecord {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    build: String,
    #[serde(default)]
    subdir: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    files: Vec<String>,
}

/// Members as read, by their path in the archive (`./` and a trailing `/` removed).
#[derive(Default)]
struct Scan {
    /// Every member: what it is and its size.
    members: BTreeMap<String, (Entry, u64)>,
    /// Conda records by member path.
    records: BTreeMap<String, CondaRecord>,
    /// pip `RECORD` files by member path.
    pip_records: BTreeMap<String, String>,
    /// The manifest and the folder it is in (`""`, or an `--arcroot` folder with its `/`).
    manifest: Option<(Manifest, String)>,
}

/// `./a/b/` → `a/b`.
fn clean(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.trim_end_matches('/').to_string()
}

/// Whether a member is a conda record: `conda-meta/X.json` at the root or below one folder.
fn is_record_member(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let n = parts.len();
    (n == 2 || n == 3)
        && parts[n - 2] == "conda-meta"
        && manifest::is_record(&format!("conda-meta/{}", parts[n - 1]))
}

/// Whether a member is a pip `RECORD` of a `site-packages` folder.
fn is_pip_record_member(name: &str) -> bool {
    name.contains("/site-packages/")
        && name
            .strip_suffix("/RECORD")
            .is_some_and(|d| d.ends_with(".dist-info") && !d.ends_with("/.dist-info"))
}

impl Scan {
    /// Records one member; `read` gives its content when it is wanted.
    fn add(
        &mut self,
        name: String,
        entry: Entry,
        size: u64,
        first: bool,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
        source: &Path,
    ) -> Result<(), InspectError> {
        if name.is_empty() || name == "." {
            return Ok(());
        }
        if entry == Entry::File && size <= MAX_METADATA {
            if first && manifest::is_manifest_member(&name) {
                let bytes = read()?;
                let root = name
                    .strip_suffix(manifest::PATH)
                    .unwrap_or_default()
                    .to_string();
                self.manifest = Some((manifest::parse(&bytes, source)?, root));
            } else if is_record_member(&name) {
                if let Ok(r) = serde_json::from_slice::<CondaRecord>(&read()?) {
                    self.records.insert(name.clone(), r);
                }
            } else if is_pip_record_member(&name) {
                let text = String::from_utf8_lossy(&read()?).into_owned();
                self.pip_records.insert(name.clone(), text);
            }
        }
        self.members.insert(name, (entry, size));
        Ok(())
    }

    /// The environment's root folder in the archive (`""` or `DIR/`), its tree and records.
    fn environment(self, path: &Path) -> Result<Environment, InspectError> {
        let root = if let Some((_, root)) = &self.manifest {
            root.clone()
        } else if self
            .members
            .keys()
            .any(|k| k == "conda-meta" || k.starts_with("conda-meta/"))
        {
            String::new()
        } else {
            // conda-pack's or envpack's `--arcroot`: one folder holding conda-meta.
            let tops: BTreeSet<&str> = self
                .members
                .keys()
                .map(|k| k.split('/').next().unwrap_or(""))
                .collect();
            match tops.into_iter().collect::<Vec<_>>().as_slice() {
                [one]
                    if self
                        .members
                        .keys()
                        .any(|k| k.starts_with(&format!("{one}/conda-meta/"))) =>
                {
                    format!("{one}/")
                }
                _ => {
                    return Err(InspectError::NoEnvironment {
                        path: path.to_path_buf(),
                    });
                }
            }
        };
        let strip = |k: &str| -> Option<String> {
            k.strip_prefix(root.as_str())
                .filter(|r| !r.is_empty())
                .map(str::to_string)
        };
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        for (k, (entry, size)) in self.members {
            let Some(rel) = strip(&k) else { continue };
            // Every folder on the way exists, listed or not.
            let mut at = 0;
            while let Some(i) = rel[at..].find('/') {
                entries
                    .entry(rel[..at + i].to_string())
                    .or_insert(Entry::Dir);
                at += i + 1;
            }
            if entry != Entry::Dir {
                sizes.insert(rel.clone(), size);
            }
            entries.insert(rel, entry);
        }
        let records = self
            .records
            .into_iter()
            .filter_map(|(k, r)| strip(&k).filter(|rel| manifest::is_record(rel)).map(|_| r))
            .collect();
        let pip_records = self
            .pip_records
            .into_iter()
            .filter_map(|(k, r)| strip(&k).map(|rel| (rel, r)))
            .collect();
        Ok(Environment {
            listing: Listing(entries),
            sizes,
            records,
            pip_records,
            manifest: self.manifest.map(|(m, _)| m),
        })
    }
}

/// An environment as read: its tree relative to its root, the size of each file, its records.
struct Environment {
    listing: Listing,
    /// Files and symlinks (a symlink's size is 0).
    sizes: BTreeMap<String, u64>,
    records: Vec<CondaRecord>,
    /// pip `RECORD` files by environment path.
    pip_records: BTreeMap<String, String>,
    manifest: Option<Manifest>,
}

impl Environment {
    /// Everything but the checks.
    fn report(&self, path: PathBuf, format: Format, size: u64) -> Inspection {
        let size_of = |p: &str| self.sizes.get(p).copied();
        let mut owned: HashSet<&str> = HashSet::new();
        let mut packages: Vec<PackageInfo> = self
            .records
            .iter()
            .map(|r| {
                let (mut bytes, mut files) = (0, 0);
                for f in &r.files {
                    if let Some(s) = size_of(f) {
                        bytes += s;
                        files += 1;
                    }
                    owned.insert(f.as_str());
                }
                PackageInfo {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    build: r.build.clone(),
                    size: bytes,
                    files,
                }
            })
            .collect();
        packages.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));

        let facts = checks::inspect_tree(&self.listing);
        let (pip, pip_owned) = self.pip_packages(&facts, &owned);

        let other_size = self
            .sizes
            .iter()
            .filter(|(k, _)| !owned.contains(k.as_str()) && !pip_owned.contains(k.as_str()))
            .map(|(_, s)| s)
            .sum();
        let python = self
            .records
            .iter()
            .find(|r| r.name == "python")
            .map(|r| r.version.clone())
            .or_else(|| facts.python.map(|(a, b)| format!("{a}.{b}")));
        let platform = self
            .manifest
            .as_ref()
            .map(|m| m.platform.clone())
            .or_else(|| self.records_platform());
        let manifest_matches_records = self.manifest.as_ref().map(|m| {
            let ours: BTreeSet<(&str, &str, &str)> = self
                .records
                .iter()
                .map(|r| (r.name.as_str(), r.version.as_str(), r.build.as_str()))
                .collect();
            let theirs: BTreeSet<(&str, &str, &str)> = m
                .packages
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str(), p.build.as_str()))
                .collect();
            ours == theirs
        });
        Inspection {
            version: JSON_VERSION,
            path,
            model: None,
            format: format.name().to_string(),
            size,
            installed_size: self.sizes.values().sum(),
            files: self.sizes.len(),
            platform,
            python,
            packages,
            pip,
            other_size,
            manifest: self.manifest.clone(),
            manifest_matches_records,
            checks: Vec::new(),
        }
    }

    /// The pip packages (`.dist-info` folders of `site-packages` no conda record owns),
    /// largest first, and the files they own.
    fn pip_packages(
        &self,
        facts: &checks::EnvFacts,
        owned: &HashSet<&str>,
    ) -> (Vec<PipInfo>, HashSet<String>) {
        let mut pip_owned: HashSet<String> = HashSet::new();
        let mut pip = Vec::new();
        if let [dir] = facts.python_dirs.as_slice() {
            let site = format!("lib/{dir}/site-packages");
            for d in crate::pack::walk::Tree::children(&self.listing, &site) {
                let Some(stem) = d.strip_suffix(".dist-info") else {
                    continue;
                };
                let info = format!("{site}/{d}");
                let mine = format!("{info}/");
                let in_info: Vec<&String> = self
                    .sizes
                    .range(mine.clone()..)
                    .take_while(|(k, _)| k.starts_with(&mine))
                    .map(|(k, _)| k)
                    .collect();
                if in_info.iter().any(|k| owned.contains(k.as_str())) {
                    continue;
                }
                let (name, version) = stem.rsplit_once('-').unwrap_or((stem, ""));
                let listed: Vec<String> = match self.pip_records.get(&format!("{info}/RECORD")) {
                    Some(text) => record_paths(&site, text),
                    None => in_info.into_iter().cloned().collect(),
                };
                let (mut bytes, mut files) = (0, 0);
                for f in listed {
                    if let Some(s) = self.sizes.get(&f).copied() {
                        bytes += s;
                        files += 1;
                        pip_owned.insert(f);
                    }
                }
                pip.push(PipInfo {
                    name: name.to_string(),
                    version: version.to_string(),
                    size: bytes,
                    files,
                });
            }
        }
        pip.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
        (pip, pip_owned)
    }

    /// The platform of the records: their first `subdir` that is not `noarch`, else the one
    /// in their URLs.
    fn records_platform(&self) -> Option<String> {
        let arch = |s: &str| s != "noarch" && !s.is_empty();
        self.records
            .iter()
            .filter_map(|r| r.subdir.clone())
            .find(|s| arch(s))
            .or_else(|| {
                self.records.iter().find_map(|r| {
                    let url = r.url.as_deref()?;
                    let mut parts = url.rsplit('/');
                    parts.next()?;
                    parts.next().filter(|s| arch(s)).map(str::to_string)
                })
            })
    }
}

/// The environment paths a pip `RECORD` lists (its paths are relative to `site`).
fn record_paths(site: &str, text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let path = if let Some(rest) = line.strip_prefix('"') {
                rest.split_once('"')?.0.to_string()
            } else {
                line.split(',').next()?.to_string()
            };
            if path.is_empty() || path.starts_with('/') {
                return None;
            }
            let mut parts: Vec<&str> = site.split('/').collect();
            for c in path.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        parts.pop()?;
                    }
                    c => parts.push(c),
                }
            }
            Some(parts.join("/"))
        })
        .collect()
}

/// Reads a tarball as one stream.
fn scan_tar(path: &Path) -> Result<(Compression, Scan), InspectError> {
    let (compression, stream) = manifest::open_tar(path)?;
    let mut archive = tar::Archive::new(stream);
    let not_tar = |source: std::io::Error| InspectError::NotAnArchive {
        path: path.to_path_buf(),
        source,
    };
    let mut scan = Scan::default();
    let mut first = true;
    for member in archive.entries().map_err(not_tar)? {
        let mut member = member.map_err(not_tar)?;
        let name = clean(&member.path().map_err(not_tar)?.to_string_lossy());
        let header = member.header();
        let size = member.size();
        let entry = match header.entry_type() {
            tar::EntryType::Directory => Entry::Dir,
            tar::EntryType::Symlink => Entry::Symlink(
                member
                    .link_name()
                    .map_err(not_tar)?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            // A hard link is a file whose bytes are counted once, at its target.
            tar::EntryType::Link => {
                scan.add(name, Entry::File, 0, false, || Ok(Vec::new()), path)?;
                first = false;
                continue;
            }
            t if t.is_file() => Entry::File,
            // PAX and GNU headers are read by `tar`; anything else (devices...) is no file.
            _ => {
                first = false;
                continue;
            }
        };
        let read = || {
            let mut bytes = Vec::new();
            member
                .read_to_end(&mut bytes)
                .map_err(crate::paths::at("cannot read", path))?;
            Ok(bytes)
        };
        scan.add(name, entry, size, first, read, path)?;
        first = false;
    }
    if scan.members.is_empty() {
        return Err(InspectError::NotAnArchive {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no tar member"),
        });
    }
    Ok((compression, scan))
}

/// Walks a folder (a `--format dir` output, or an environment); returns the bytes of its
/// files and the scan.
fn scan_dir(dir: &Path) -> Result<(u64, Scan), InspectError> {
    let mut scan = Scan::default();
    let mut total = 0;
    // The manifest first, as in an archive.
    if let Some(m) = manifest::read(dir)? {
        let root = if dir.join(manifest::PATH).is_file() {
            String::new()
        } else {
            let only = fs_err::read_dir(dir)?
                .next()
                .transpose()?
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{only}/")
        };
        scan.manifest = Some((m, root));
    }
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, rel)) = stack.pop() {
        let mut names: Vec<_> = fs_err::read_dir(&at)?.collect::<Result<_, _>>()?;
        names.sort_by_key(fs_err::DirEntry::file_name);
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs_err::symlink_metadata(e.path())?;
            let ty = meta.file_type();
            if ty.is_dir() {
                scan.add(child.clone(), Entry::Dir, 0, false, || Ok(Vec::new()), dir)?;
                stack.push((e.path(), child));
            } else if ty.is_symlink() {
                let target = fs_err::read_link(e.path())?;
                let target = target.to_string_lossy().into_owned();
                scan.add(
                    child,
                    Entry::Symlink(target),
                    0,
                    false,
                    || Ok(Vec::new()),
                    dir,
                )?;
            } else if ty.is_file() {
                total += meta.len();
                let p = e.path();
                scan.add(
                    child,
                    Entry::File,
                    meta.len(),
                    false,
                    || fs_err::read(&p),
                    dir,
                )?;
            }
        }
    }
    Ok((total, scan))
}

/// The Triton eras the checks tell apart: the releases each verdict holds for, and the
/// release checked for it (its last, so the numpy rule of the era applies).
fn triton_eras() -> Vec<(String, TritonVersion)> {
    let v = |s: &str| s.parse::<TritonVersion>().expect("a release");
    vec![
        ("up to 23.04".to_string(), v("23.04")),
        ("23.05-24.10".to_string(), v("24.10")),
        (
            format!("24.11-{}", TritonVersion::NEWEST),
            TritonVersion::NEWEST,
        ),
    ]
}

/// The verdicts: Triton per era (or for `release`), MLServer's per-model tarball and image.
fn verdicts(
    facts: &checks::EnvFacts,
    format: Format,
    release: Option<TritonVersion>,
    custom_stub: bool,
    model: Option<Server>,
) -> Vec<Verdict> {
    let verdict = |consumer: &str,
                   releases: Option<String>,
                   is_model: bool,
                   result: Result<Vec<crate::report::Notice>, TargetError>| {
        let (ok, problem, hint, notices) = match result {
            Ok(n) => (true, None, None, n.into_iter().map(|n| n.message).collect()),
            Err(e) => (false, Some(e.to_string()), e.hint(), Vec::new()),
        };
        Verdict {
            consumer: consumer.to_string(),
            releases,
            ok,
            problem,
            hint,
            notices,
            model: is_model,
        }
    };
    let eras = match release {
        Some(r) => vec![(r.to_string(), r)],
        None => triton_eras(),
    };
    let mut out: Vec<Verdict> = eras
        .into_iter()
        .map(|(label, r)| {
            let result = checks::check_format(Consumer::Triton, format)
                .and_then(|()| checks::check_triton(facts, Some(r), custom_stub));
            verdict("triton", Some(label), model == Some(Server::Triton), result)
        })
        .collect();
    out.push(verdict(
        "mlserver",
        None,
        model == Some(Server::MlServer),
        checks::check_format(Consumer::MlServerModel, format)
            .and_then(|()| checks::check_mlserver(facts)),
    ));
    out.push(verdict(
        "mlserver-image",
        None,
        false,
        checks::check_format(Consumer::MlServerImage, format)
            .and_then(|()| checks::check_mlserver(facts)),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_told_apart_by_their_path() {
        assert_eq!(clean("./a/b/"), "a/b");
        assert_eq!(clean("././conda-meta"), "conda-meta");
        assert!(is_record_member("conda-meta/numpy-1.26.4-py311_0.json"));
        assert!(is_record_member("env/conda-meta/numpy-1.26.4-py311_0.json"));
        assert!(!is_record_member("conda-meta/envpack.json"));
        assert!(!is_record_member("a/b/conda-meta/x.json"));
        assert!(!is_record_member("conda-meta/history"));
        assert!(is_pip_record_member(
            "lib/python3.11/site-packages/anyio-4.16.0.dist-info/RECORD"
        ));
        assert!(!is_pip_record_member(
            "lib/python3.11/site-packages/anyio/RECORD"
        ));
    }

    fn add(scan: &mut Scan, name: &str, entry: Entry, content: &str) {
        let bytes = content.as_bytes().to_vec();
        let size = bytes.len() as u64;
        scan.add(
            name.into(),
            entry,
            size,
            false,
            || Ok(bytes),
            Path::new("x"),
        )
        .unwrap();
    }

    #[test]
    fn the_root_is_found_and_only_its_records_count() {
        let record = |n: &str| {
            format!(r#"{{"name": "{n}", "version": "1", "build": "0", "files": ["share/{n}"]}}"#)
        };
        // At the root: a record in a subfolder is not one.
        let mut scan = Scan::default();
        add(
            &mut scan,
            "./conda-meta/a-1-0.json",
            Entry::File,
            &record("a"),
        );
        add(&mut scan, "./share/a", Entry::File, "aaa");
        add(
            &mut scan,
            "./pkgs/conda-meta/b-1-0.json",
            Entry::File,
            &record("b"),
        );
        let env = scan.environment(Path::new("x")).unwrap();
        let names: Vec<&str> = env.records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        // Folders on the way exist without their own members.
        assert_eq!(env.listing.0.get("share"), Some(&Entry::Dir));
        let report = env.report(PathBuf::from("x"), Format::Tar, 1);
        assert_eq!(report.packages[0].size, 3);
        assert_eq!(report.other_size, report.installed_size - 3);
        // Below one folder (conda-pack's --arcroot).
        let mut scan = Scan::default();
        add(
            &mut scan,
            "env/conda-meta/b-1-0.json",
            Entry::File,
            &record("b"),
        );
        add(&mut scan, "env/share/b", Entry::File, "bb");
        let env = scan.environment(Path::new("x")).unwrap();
        assert_eq!(env.records[0].name, "b");
        assert_eq!(env.sizes.get("share/b"), Some(&2));
        // Nothing that looks like an environment.
        let mut scan = Scan::default();
        add(&mut scan, "a/x", Entry::File, "");
        add(&mut scan, "b/y", Entry::File, "");
        assert!(matches!(
            scan.environment(Path::new("x")),
            Err(InspectError::NoEnvironment { .. })
        ));
    }

    #[test]
    fn record_paths_are_relative_to_site_packages() {
        let site = "lib/python3.11/site-packages";
        let text = "anyio/__init__.py,sha256=x,10\n\"we,ird.py\",,\n../../../bin/tool,sha256=y,5\n/abs,,\n../../../../escape,,\n";
        assert_eq!(
            record_paths(site, text),
            [
                "lib/python3.11/site-packages/anyio/__init__.py",
                "lib/python3.11/site-packages/we,ird.py",
                "bin/tool",
            ]
        );
    }
}
