//! Pack: a prefix in, a relocatable, conda-pack compatible archive out.
//!
//! Fourth stage, in three steps: [`plan`] walks the prefix (`walk`), scans every file for
//! the prefix path in parallel and decides each member's bytes (`relocate`, `scripts`);
//! [`execute`] streams the members into a tar or a folder (`archive`) through the parallel
//! compressor (`compress`). The plan is what `--dry-run` shows.

pub mod archive;
pub mod compress;
pub mod direct;
pub mod publish;
pub mod relocate;
pub mod scripts;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::channels::UrlRewrites;
use crate::report::{Notice, SharedReporter, Stage};
use relocate::{Mode, Needles, Transform};
use scripts::Relocation;
pub use walk::Filter;

/// The prefix every archive holds in place of the build prefix (unless `--dest-prefix`).
/// Short enough to fit any placeholder; `conda-unpack` or self-relocation replace it.
pub const ARCHIVE_PREFIX: &str = "/__envpack_placeholder_prefix__";

/// Errors of packing.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The prefix has no `conda-meta` folder.
    #[error("{} is not a conda environment (no conda-meta folder)", prefix.display())]
    NotAnEnvironment {
        /// The prefix.
        prefix: PathBuf,
    },
    /// A `conda-meta` record that does not parse.
    #[error("cannot read the conda record {}", path.display())]
    Record {
        /// The record.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Editable pip installs point at source trees outside the environment.
    #[error("the environment has editable packages, which cannot be packed: {}", packages.join(", "))]
    Editable {
        /// The distributions.
        packages: Vec<String>,
    },
    /// Files conda installed are gone.
    #[error("{} files managed by conda are missing from the environment, e.g. {}", files.len(), files.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    MissingFiles {
        /// The missing paths.
        files: Vec<String>,
    },
    /// The filters drop every file of the prefix.
    #[error("--include/--exclude leave no file of {} to pack", prefix.display())]
    NothingLeft {
        /// The prefix.
        prefix: PathBuf,
    },
    /// A path that is not UTF-8.
    #[error("{} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// The folder the output goes into does not exist.
    #[error("the output folder {} does not exist", dir.display())]
    NoOutputFolder {
        /// The folder.
        dir: PathBuf,
    },
    /// The environment's name cannot name the default output.
    #[error("the environment's name {name:?} cannot name the output: it is not a plain file name")]
    UnsafeName {
        /// `name:` as written.
        name: String,
    },
    /// `--force` cannot replace what is at the output path.
    #[error("{} cannot be replaced: {reason}", path.display())]
    NotReplaceable {
        /// The output.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The output exists and `--force` was not given.
    #[error("{} already exists", path.display())]
    OutputExists {
        /// The output.
        path: PathBuf,
    },
    /// The destination prefix cannot hold the environment.
    #[error("cannot relocate {} to {dest}", path)]
    Relocate {
        /// The file.
        path: String,
        /// The destination prefix.
        dest: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing a member failed.
    #[error("cannot write {member}")]
    Write {
        /// The member.
        member: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A compression level outside its format's range.
    #[error(transparent)]
    Level(#[from] compress::LevelError),
    /// An I/O error; it names its path (`fs_err`, `tempfile`, or [`crate::paths::at`]).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl PackError {
    /// A closure mapping an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
        move |source| PackError::Io(crate::paths::at("I/O error on", path)(source))
    }
}

/// The kind of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// gzip-compressed tar: what Triton, MLServer and conda-pack users expect.
    TarGz,
    /// zstd-compressed tar.
    TarZst,
    /// Plain tar.
    Tar,
    /// A folder (Triton 23.07+ uses it in place).
    Dir,
}

impl Format {
    /// The format an output name implies, if any.
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Format::TarGz)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Some(Format::TarZst)
        } else if name.ends_with(".tar") {
            Some(Format::Tar)
        } else {
            None
        }
    }

    /// Parses `--format` values (conda-pack's names included).
    #[must_use]
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "tar.gz" | "tar-gz" | "tgz" | "gz" | "gzip" => Some(Format::TarGz),
            "tar.zst" | "tar-zst" | "zst" | "zstd" => Some(Format::TarZst),
            "tar" => Some(Format::Tar),
            "dir" | "no-archive" | "folder" => Some(Format::Dir),
            _ => None,
        }
    }

    /// Its name, as `--format` and `--json` spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::TarGz => "tar-gz",
            Format::TarZst => "tar-zst",
            Format::Tar => "tar",
            Format::Dir => "dir",
        }
    }

    /// The usual file name extension.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Format::TarGz => ".tar.gz",
            Format::TarZst => ".tar.zst",
            Format::Tar => ".tar",
            Format::Dir => "",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Output format.
    pub format: Format,
    /// Compression level (gzip 0-9, zstd 1-22).
    pub level: Option<i32>,
    /// A folder inside the archive that holds the environment.
    pub arcroot: Option<String>,
    /// Relocate for this final location at pack time.
    pub dest_prefix: Option<String>,
    /// `--include`/`--exclude`, in order.
    pub filters: Vec<Filter>,
    /// Add the self-relocation hooks.
    pub auto_relocate: bool,
    /// URL prefixes to rewrite in `conda-meta` (mirror → canonical).
    pub url_rewrites: UrlRewrites,
    /// Missing managed files are not an error.
    pub ignore_missing_files: bool,
    /// Editable installs are not an error.
    pub ignore_editable_packages: bool,
    /// The environment file's `variables:`.
    pub variables: Vec<(String, String)>,
    /// The modification time of every member (`SOURCE_DATE_EPOCH`, else
    /// [`archive::MTIME`]).
    pub mtime: u64,
    /// The manifest, written as the first member.
    pub manifest: Option<crate::manifest::Manifest>,
    /// The link type the archive's `conda-meta` records state, whatever linked the prefix:
    /// the staged route hard-links from the package cache, and its archive holds copies,
    /// as the package-cache route's does. `None` keeps what the records say (`--prefix`).
    pub record_link_type: Option<rattler_conda_types::prefix_record::LinkType>,
}

impl PackOptions {
    /// The options that change the output's bytes, as text for a digest. The variables are
    /// not here: they belong to the environment.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let arcroot = self
            .arcroot
            .as_deref()
            .map(|r| r.trim_matches('/'))
            .filter(|r| !r.is_empty());
        format!(
            "format={}\ncompression={}\narcroot={arcroot:?}\ndest-prefix={:?}\nfilters={:?}\nauto-relocate={}\nmtime={}\n",
            self.format,
            archive::compression_for(self.format, self.level)
                .map_or_else(|e| e.to_string(), |c| format!("{c:?}")),
            self.dest_prefix.as_deref().map(|d| d.trim_end_matches('/')),
            self.filters,
            self.auto_relocate,
            self.mtime,
        )
    }
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            format: Format::TarGz,
            level: None,
            arcroot: None,
            dest_prefix: None,
            filters: Vec::new(),
            auto_relocate: true,
            url_rewrites: UrlRewrites::default(),
            ignore_missing_files: false,
            ignore_editable_packages: false,
            variables: Vec::new(),
            mtime: archive::MTIME,
            manifest: None,
            record_link_type: None,
        }
    }
}

/// The bytes of one member.
#[derive(Debug, Clone)]
pub enum Body {
    /// A directory.
    Dir,
    /// A symlink with this target.
    Symlink(String),
    /// A file from the prefix, transformed while streaming.
    File {
        /// Where it is.
        source: PathBuf,
        /// Its size in the archive.
        size: u64,
        /// Executable bit.
        executable: bool,
        /// What happens to its bytes.
        transform: Transform,
    },
    /// Bytes envpack made.
    Generated {
        /// The content.
        data: Vec<u8>,
        /// Executable bit.
        executable: bool,
    },
}

/// One archive member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Path relative to the environment root.
    pub path: String,
    /// Its content.
    pub body: Body,
}

/// Everything [`execute`] will write.
#[derive(Debug)]
pub struct PackPlan {
    /// The prefix packed.
    pub prefix: PathBuf,
    /// The packages its `conda-meta` records describe.
    pub packages: Vec<walk::Recorded>,
    /// Every prefix files may hold on disk (the source prefix first), each replaced by the
    /// archive prefix.
    pub needles: Needles,
    /// The prefix string files hold in the archive.
    pub archive_prefix: String,
    /// Folder inside the archive.
    pub arcroot: Option<String>,
    /// Members, in archive order.
    pub members: Vec<Member>,
    /// Files that hold the archive prefix.
    pub relocations: Vec<Relocation>,
    /// Things the user should know.
    pub warnings: Vec<Notice>,
    /// Output format.
    pub format: Format,
    /// Compression level (checked by [`archive::compression_for`]).
    pub level: Option<i32>,
    /// The modification time of every member.
    pub mtime: u64,
}

impl PackPlan {
    /// Total bytes of file content.
    #[must_use]
    pub fn content_bytes(&self) -> u64 {
        self.members
            .iter()
            .map(|m| match &m.body {
                Body::File { size, .. } => *size,
                Body::Generated { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// The member's name in the archive.
    #[must_use]
    pub fn archive_path(&self, rel: &str) -> String {
        match &self.arcroot {
            Some(root) if !rel.is_empty() => format!("{root}/{rel}"),
            Some(root) => root.clone(),
            None => rel.to_string(),
        }
    }
}

/// One scanned member, with what it adds to the plan.
struct Scanned {
    member: Member,
    relocation: Option<Relocation>,
    warning: Option<Notice>,
}

impl Scanned {
    fn plain(member: Member) -> Self {
        Self {
            member,
            relocation: None,
            warning: None,
        }
    }
}

/// Plans the archive of `prefix`.
pub fn plan(
    prefix: &Path,
    options: &PackOptions,
    pool: &rayon::ThreadPool,
    reporter: &SharedReporter,
) -> Result<PackPlan, PackError> {
    // Before any work: a level out of range is the user's to fix.
    archive::compression_for(options.format, options.level)?;
    let prefix = fs_err::canonicalize(prefix)?;
    let (needles, previous) = held_prefixes(&prefix)?;
    let archive_prefix = options.dest_prefix.clone().map_or_else(
        || ARCHIVE_PREFIX.to_string(),
        |d| d.trim_end_matches('/').to_string(),
    );
    let records = walk::read_records(&prefix)?;
    let options = &with_state_variables(options, &prefix)?;
    let walked = walk::walk(&prefix, &options.filters)?;
    if !options.filters.is_empty() && walked.found.iter().all(|f| f.kind == walk::Kind::Dir) {
        return Err(PackError::NothingLeft { prefix });
    }
    let found = without_empty_clobber_dirs(walked.found);
    let mut warnings = check(&prefix, &found, &records, options)?;
    warnings.extend(walked.unmatched);
    if !walked.skipped.is_empty() {
        warnings.push(Notice::warning(format!(
            "left out (FIFOs, sockets and devices cannot be packed): {}",
            walked.skipped.join(", ")
        )));
    }
    let hook_dir = options
        .auto_relocate
        .then(|| site_packages(&found))
        .flatten();
    let found: Vec<walk::Found> = found
        .into_iter()
        .filter(|f| records.files.contains_key(&f.path) || !replaced_or_runtime(&f.path))
        .collect();

    // Scan every file for the prefix, in parallel.
    reporter.on_stage_start(Stage::Scan, Some(found.len() as u64));
    let scanned: Vec<Result<Scanned, PackError>> = pool.install(|| {
        found
            .par_iter()
            .map(|f| {
                let r = member_for(
                    &prefix,
                    f,
                    &records,
                    options,
                    (&needles, &previous),
                    archive_prefix.as_bytes(),
                );
                reporter.on_progress(Stage::Scan, 1);
                r
            })
            .collect()
    });
    reporter.on_stage_end(Stage::Scan);
    let mut scanned = scanned.into_iter().collect::<Result<Vec<_>, _>>()?;
    pip_records(&mut scanned, &records, &needles, archive_prefix.as_bytes())?;
    let mut plan = finish(
        prefix,
        needles,
        archive_prefix,
        scanned,
        warnings,
        hook_dir.as_deref(),
        options,
    );
    plan.packages = records.packages;
    Ok(plan)
}

/// pip's `RECORD` files hold the sha256 and size of every file pip installed, measured in the
/// staging prefix: a console script's hash was taken while its shebang named the staging
/// folder. The entries of the files envpack rewrites (shebangs, text holding the prefix) are
/// recomputed from their bytes in the archive, so the archive does not depend on where it was
/// staged. `RECORD`s conda installed are left as their packages shipped them.
fn pip_records(
    scanned: &mut [Scanned],
    records: &walk::Records,
    from: &Needles,
    to: &[u8],
) -> Result<(), PackError> {
    let rewritten: std::collections::HashMap<String, usize> = scanned
        .iter()
        .enumerate()
        .filter(|(_, s)| match &s.member.body {
            Body::File { transform, .. } => transform.mode.is_some() || transform.shebang.is_some(),
            _ => false,
        })
        .map(|(i, s)| (s.member.path.clone(), i))
        .collect();
    if rewritten.is_empty() {
        return Ok(());
    }
    for i in 0..scanned.len() {
        let path = &scanned[i].member.path;
        let Some(site) = pip_record_site(path) else {
            continue;
        };
        if records.files.contains_key(path) {
            continue;
        }
        let site = site.to_string();
        let (text, executable) = match &scanned[i].member.body {
            Body::File {
                source,
                transform,
                executable,
                ..
            } => {
                let mut out = Vec::new();
                relocate::apply(open_buffered(source)?, &mut out, transform, from, to)?;
                (out, *executable)
            }
            Body::Generated { data, executable } => (data.clone(), *executable),
            _ => continue,
        };
        let Ok(text) = String::from_utf8(text) else {
            continue;
        };
        let mut out = String::with_capacity(text.len());
        let mut changed = false;
        for line in text.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let end = &line[body.len()..];
            let entry = record_entry(body)
                .filter(|(_, hash, _)| !hash.is_empty())
                .and_then(|(file, _, _)| rewritten.get(&record_target(&site, file)?));
            match entry {
                Some(&j) => {
                    use std::fmt::Write as _;
                    let (digest, bytes) = archived_digest(&scanned[j].member, from, to)?;
                    let (file, _, _) = record_entry(body).unwrap_or_default();
                    let _ = write!(out, "{file},sha256={digest},{bytes}{end}");
                    changed = true;
                }
                None => out.push_str(line),
            }
        }
        if changed {
            scanned[i].member.body = Body::Generated {
                data: out.into_bytes(),
                executable,
            };
        }
    }
    Ok(())
}

/// The `site-packages` folder of a pip `RECORD` (`<site>/<name>.dist-info/RECORD`).
fn pip_record_site(path: &str) -> Option<&str> {
    let info = path.strip_suffix("/RECORD")?;
    let (site, name) = info.rsplit_once('/')?;
    (name.ends_with(".dist-info") && site.ends_with("/site-packages")).then_some(site)
}

/// A `RECORD` line's path, hash and size (`path,sha256=...,size`); `None` for a quoted path.
fn record_entry(line: &str) -> Option<(&str, &str, &str)> {
    if line.starts_with('"') {
        return None;
    }
    let (rest, size) = line.rsplit_once(',')?;
    let (file, hash) = rest.rsplit_once(',')?;
    Some((file, hash, size))
}

/// The environment path of a `RECORD` entry (relative to `site`, may climb out with `..`).
fn record_target(site: &str, file: &str) -> Option<String> {
    let mut parts: Vec<&str> = site.split('/').collect();
    for c in file.split('/') {
        match c {
            ".." => {
                parts.pop()?;
            }
            "." | "" => {}
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// sha256 (urlsafe base64, no padding, as pip writes it) and size of a member's bytes in the
/// archive.
fn archived_digest(member: &Member, from: &Needles, to: &[u8]) -> Result<(String, u64), PackError> {
    use sha2::Digest;
    struct Hashing(sha2::Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(sha2::Sha256::new());
    let size = match &member.body {
        Body::File {
            source, transform, ..
        } => relocate::apply(open_buffered(source)?, &mut h, transform, from, to)?,
        Body::Generated { data, .. } => {
            h.0.update(data);
            data.len() as u64
        }
        _ => 0,
    };
    Ok((urlsafe_b64(&h.0.finalize()), size))
}

/// Base64 with the URL-safe alphabet and no padding.
fn urlsafe_b64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (k, &b)| n | (u32::from(b) << (16 - 8 * k)));
        for k in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * k)) & 63) as usize]));
        }
    }
    out
}

/// The plan from its scanned members (in path order): what envpack generates added, parent
/// folders added, sorted into archive order, the manifest first. Its `packages` are left for
/// the caller to fill in.
fn finish(
    prefix: PathBuf,
    needles: Needles,
    archive_prefix: String,
    scanned: Vec<Scanned>,
    mut warnings: Vec<Notice>,
    hook_dir: Option<&str>,
    options: &PackOptions,
) -> PackPlan {
    let mut members = Vec::with_capacity(scanned.len() + 16);
    let mut relocations = Vec::new();
    for s in scanned {
        members.push(s.member);
        relocations.extend(s.relocation);
        warnings.extend(s.warning);
    }
    relocations.sort();
    add_generated(
        &mut members,
        &relocations,
        &archive_prefix,
        hook_dir,
        options,
    );
    add_parent_dirs(&mut members);
    let arcroot = options
        .arcroot
        .as_deref()
        .map(|r| r.trim_matches('/').to_string())
        .filter(|r| !r.is_empty());
    if arcroot.is_some() {
        // The root folder itself.
        members.insert(
            0,
            Member {
                path: String::new(),
                body: Body::Dir,
            },
        );
    }
    if let Some(m) = &options.manifest {
        // First of all: reading it takes one header.
        members.insert(
            0,
            Member {
                path: crate::manifest::PATH.to_string(),
                body: Body::Generated {
                    data: m.to_bytes(),
                    executable: false,
                },
            },
        );
    }
    PackPlan {
        prefix,
        needles,
        archive_prefix,
        arcroot,
        members,
        relocations,
        warnings,
        format: options.format,
        level: options.level,
        // The caller's: from the prefix's records, or the packages planned.
        packages: Vec::new(),
        mtime: options.mtime,
    }
}

/// The prefixes the files of `prefix` may hold: its own path, and, for an earlier envpack
/// output (a `--format dir` folder, an unpacked archive), the location it records and
/// envpack's archive placeholder, wherever they appear; with the room of the binary files such
/// an output recorded.
fn held_prefixes(prefix: &Path) -> Result<(Needles, BTreeMap<String, usize>), PackError> {
    let source = prefix.to_str().ok_or_else(|| PackError::NonUtf8Path {
        path: prefix.to_path_buf(),
    })?;
    let location = std::fs::symlink_metadata(prefix.join(scripts::LOCATION))
        .ok()
        .filter(|m| m.is_file() && m.len() < 4096)
        .and_then(|_| std::fs::read(prefix.join(scripts::LOCATION)).ok())
        .map(|l| scripts::location_value(&l).to_vec())
        .filter(|l| l.starts_with(b"/") && l.len() > 1 && !l.contains(&b'\n'));
    let mut list: Vec<&[u8]> = vec![source.as_bytes()];
    // Only an earlier envpack output (it carries envpack's scripts' data) may hold envpack's
    // placeholder: any other prefix is scanned for its own path alone, the fast single-needle
    // search.
    if prefix.join(scripts::DATA_DIR).is_dir() {
        if let Some(l) = &location {
            list.push(l);
        }
        list.push(ARCHIVE_PREFIX.as_bytes());
    }
    Ok((Needles::new(list), previous_rooms(prefix)))
}

/// The room of the binary files an earlier envpack output recorded, for files conda did not
/// install (their placeholder is known from nowhere else).
fn previous_rooms(prefix: &Path) -> BTreeMap<String, usize> {
    let path = prefix.join(scripts::RELOCATIONS);
    let Some(doc) = std::fs::symlink_metadata(&path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .and_then(|_| std::fs::read(&path).ok())
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
    else {
        return BTreeMap::new();
    };
    doc.get("files")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let a = e.as_array()?;
            (a.get(1)?.as_str()? == "binary").then_some(())?;
            Some((
                a.first()?.as_str()?.to_string(),
                usize::try_from(a.get(2)?.as_u64()?).ok()?,
            ))
        })
        .collect()
}

/// `conda env config vars set` keeps its variables in `conda-meta/state`, which is made anew:
/// they are carried into activation unless the environment file gives its own.
fn with_state_variables(options: &PackOptions, prefix: &Path) -> Result<PackOptions, PackError> {
    let mut options = options.clone();
    if options.variables.is_empty() {
        options.variables = walk::state_variables(prefix)?;
    }
    Ok(options)
}

/// conda-pack's checks: editable installs and missing managed files are errors unless
/// ignored (then warnings).
fn check(
    prefix: &Path,
    found: &[walk::Found],
    records: &walk::Records,
    options: &PackOptions,
) -> Result<Vec<Notice>, PackError> {
    let mut warnings = Vec::new();
    let editable = walk::editable_installs(found, |p| std::fs::read_to_string(prefix.join(p)).ok());
    if !editable.is_empty() {
        if !options.ignore_editable_packages {
            return Err(PackError::Editable { packages: editable });
        }
        warnings.push(Notice::warning(format!(
            "editable packages point outside the environment and will not work where it is unpacked: {}",
            editable.join(", ")
        )));
    }
    let missing: Vec<String> = walk::missing_files(prefix, records, found)
        .into_iter()
        .filter(|p| walk::included(p, &options.filters))
        .collect();
    if !missing.is_empty() {
        if !options.ignore_missing_files {
            return Err(PackError::MissingFiles { files: missing });
        }
        warnings.push(Notice::warning(format!(
            "{} managed files are missing and were skipped",
            missing.len()
        )));
    }
    Ok(warnings)
}

/// Where rattler's installer moves the losing copies of a path that several packages provide.
const CLOBBERS_DIR: &str = "__clobbers__";

/// Drops the folders below `__clobbers__` that hold no file. The installer links packages in
/// parallel and moves clobbered files there and back, so which empty folders it leaves depends
/// on timing: keeping them made two packs of one environment differ.
fn without_empty_clobber_dirs(found: Vec<walk::Found>) -> Vec<walk::Found> {
    let in_clobbers = |p: &str| {
        p == CLOBBERS_DIR
            || p.strip_prefix(CLOBBERS_DIR)
                .is_some_and(|r| r.starts_with('/'))
    };
    let needed: BTreeSet<String> = found
        .iter()
        .filter(|f| f.kind != walk::Kind::Dir && in_clobbers(&f.path))
        .flat_map(|f| walk::parents(&f.path))
        .collect();
    found
        .into_iter()
        .filter(|f| f.kind != walk::Kind::Dir || !in_clobbers(&f.path) || needed.contains(&f.path))
        .collect()
}

/// The one `lib/python3.X/site-packages` folder, if there is exactly one.
fn site_packages(found: &[walk::Found]) -> Option<String> {
    let dirs: Vec<&str> = found
        .iter()
        .filter(|f| f.kind == walk::Kind::Dir && is_site_packages(&f.path))
        .map(|f| f.path.as_str())
        .collect();
    (dirs.len() == 1).then(|| dirs[0].to_string())
}

/// Unmanaged files that envpack generates anew, and runtime leftovers (byte code, caches,
/// rattler's cache tag) that would make the archive depend on what ran in the prefix.
fn replaced_or_runtime(p: &str) -> bool {
    scripts::GENERATED.contains(&p)
        || matches!(
            p,
            "bin/conda"
                | "CACHEDIR.TAG"
                | "conda-meta/history"
                | "conda-meta/state"
                | crate::manifest::PATH
        )
        || p == scripts::DATA_DIR
        || p.starts_with("share/envpack/")
        || scripts::HOOK_NAMES
            .iter()
            .any(|h| p.ends_with(&format!("site-packages/{h}")))
        || p.ends_with(".pyc")
        || p.ends_with("/__pycache__")
}

/// Adds what envpack generates, replacing members of the same path.
fn add_generated(
    members: &mut Vec<Member>,
    relocations: &[Relocation],
    archive_prefix: &str,
    hook_dir: Option<&str>,
    options: &PackOptions,
) {
    let mut add = |path: &str, data: Vec<u8>, executable: bool| {
        members.retain(|m| m.path != path);
        members.push(Member {
            path: path.to_string(),
            body: Body::Generated { data, executable },
        });
    };
    add("bin/activate", scripts::ACTIVATE.as_bytes().to_vec(), true);
    add(
        "bin/deactivate",
        scripts::DEACTIVATE.as_bytes().to_vec(),
        true,
    );
    add(
        "bin/conda-unpack",
        scripts::CONDA_UNPACK.as_bytes().to_vec(),
        true,
    );
    add("conda-meta/history", Vec::new(), false);
    add(
        scripts::RELOCATIONS,
        scripts::relocations_json(archive_prefix, relocations),
        false,
    );
    add(scripts::LOCATION, archive_prefix.as_bytes().to_vec(), false);
    if options.auto_relocate {
        add(scripts::AUTO_RELOCATE, Vec::new(), false);
    }
    if let Some(dir) = hook_dir {
        add(
            &format!("{dir}/{}", scripts::HOOK_NAMES[0]),
            scripts::HOOK_MODULE.as_bytes().to_vec(),
            false,
        );
        add(
            &format!("{dir}/{}", scripts::HOOK_NAMES[1]),
            scripts::HOOK_PTH.as_bytes().to_vec(),
            false,
        );
    }
    if let Some((on, off)) = scripts::variable_scripts(&options.variables) {
        add("etc/conda/activate.d/envpack-variables.sh", on, false);
        add("etc/conda/deactivate.d/envpack-variables.sh", off, false);
        add(
            "conda-meta/state",
            scripts::conda_state(&options.variables),
            false,
        );
    }
}

/// Adds the missing parent folders of every member, then sorts into archive order.
fn add_parent_dirs(members: &mut Vec<Member>) {
    let present: BTreeSet<String> = members.iter().map(|m| m.path.clone()).collect();
    let mut dirs = BTreeSet::new();
    for m in members.iter() {
        let mut p = m.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if !present.contains(p) {
                dirs.insert(p.to_string());
            }
        }
    }
    members.extend(dirs.into_iter().map(|path| Member {
        path,
        body: Body::Dir,
    }));
    members.sort_by(|a, b| a.path.cmp(&b.path));
}

fn is_site_packages(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() == 3
        && parts[0] == "lib"
        && parts[1].starts_with("python3")
        && parts[2] == "site-packages"
}

/// Decides one member: its transform, size, and relocation record.
fn member_for(
    prefix: &Path,
    f: &walk::Found,
    records: &walk::Records,
    options: &PackOptions,
    (from, previous): (&Needles, &BTreeMap<String, usize>),
    to: &[u8],
) -> Result<Scanned, PackError> {
    let path = f.path.clone();
    match &f.kind {
        walk::Kind::Dir => Ok(Scanned::plain(Member {
            path,
            body: Body::Dir,
        })),
        walk::Kind::Symlink { target } => {
            let (target, warning) = symlink_target(&path, target, from);
            Ok(Scanned {
                member: Member {
                    path,
                    body: Body::Symlink(target),
                },
                relocation: None,
                warning,
            })
        }
        walk::Kind::File { .. } if path.starts_with("conda-meta/") && path.ends_with(".json") => {
            let source = prefix.join(&path);
            let raw = fs_err::read(&source)?;
            let data = relocate::scrub_record(
                &raw,
                &options.url_rewrites,
                options.record_link_type,
                from,
                &String::from_utf8_lossy(to),
            )
            .map_err(|e| PackError::Record {
                path: source,
                source: e,
            })?;
            Ok(Scanned::plain(Member {
                path,
                body: Body::Generated {
                    data,
                    executable: false,
                },
            }))
        }
        walk::Kind::File { size, executable } => file_member(
            prefix,
            path,
            (*size, *executable),
            records.files.get(&f.path),
            (from, previous.get(&f.path).copied()),
            to,
        ),
    }
}

/// A file from the prefix: scanned once for the prefix, then decided.
fn file_member(
    prefix: &Path,
    path: String,
    (size, executable): (u64, bool),
    managed: Option<&walk::Managed>,
    (from, previous_room): (&Needles, Option<usize>),
    to: &[u8],
) -> Result<Scanned, PackError> {
    let source = prefix.join(&path);
    let scan = relocate::scan(fs_err::File::open(&source)?, from)?;
    decide(
        FileFacts {
            path,
            size,
            executable,
            managed,
            scan: &scan,
            previous_room,
        },
        Content::File(source),
        from,
        to,
        None,
    )
}

fn open_buffered(source: &Path) -> Result<std::io::BufReader<fs_err::File>, PackError> {
    // The default 8 KiB: `relocate::apply` reads a shebang byte by byte, everything else in
    // large reads that bypass the buffer. A larger buffer costs its size in zeroing at each
    // open (`fs_err::File` cannot read into uninitialised memory): 256 KiB per file was a
    // tenth of a scan.
    fs_err::File::open(source)
        .map(std::io::BufReader::new)
        .map_err(PackError::from)
}

/// What is known of one file once it was scanned.
struct FileFacts<'a> {
    path: String,
    size: u64,
    executable: bool,
    managed: Option<&'a walk::Managed>,
    scan: &'a relocate::Scan,
    /// The room an earlier envpack output recorded for this binary file, if any.
    previous_room: Option<usize>,
}

/// Where a file's bytes come from.
enum Content {
    /// A file on disk (in the prefix, or in the package cache).
    File(PathBuf),
    /// Bytes made in memory (an entry point written the way the installer writes it).
    Bytes(Vec<u8>),
}

/// Decides one scanned file's transform, its relocation record and its size in the archive.
/// `placeholder`, when given, is what the file holds in place of `from` (a file read straight
/// from the package cache holds its package's placeholder, not the staging prefix): it is
/// found and replaced instead, and everything else is decided as for `from`.
#[allow(clippy::too_many_lines)]
fn decide(
    facts: FileFacts<'_>,
    content: Content,
    from: &Needles,
    to: &[u8],
    placeholder: Option<&[u8]>,
) -> Result<Scanned, PackError> {
    let FileFacts {
        path,
        size,
        executable,
        managed,
        scan,
        previous_room,
    } = facts;
    let placeholder_needle = placeholder.map(Needles::one);
    let found = placeholder_needle.as_ref().unwrap_or(from);
    // The prefix as long as the longest one this file holds: an environment that holds only
    // its own path is decided exactly as with that one prefix.
    let held = scan.longest.max(from.first().len());
    let room = held.max(previous_room.unwrap_or(0));
    let named = String::from_utf8_lossy(from.first());
    let mut warning = None;
    // The prefix the file keeps, when it is packed unchanged but relocated at unpack.
    let mut holds: Option<(String, usize)> = None;
    let in_bin = path.strip_prefix("bin/").is_some_and(|n| !n.contains('/'));
    let shebang = scan
        .shebang
        .as_deref()
        .filter(|_| in_bin && scan.utf8)
        .and_then(|l| relocate::shebang_for(l, found));
    let mode = match managed {
        _ if scan.count == 0 => None,
        Some(walk::Managed {
            placeholder,
            binary: true,
        }) => Some(Mode::Binary {
            room: placeholder.as_ref().map_or(0, String::len).max(room),
        }),
        _ if scan.utf8 => Some(Mode::Text),
        // Only C strings in ELF files are known to be safe to rewrite: a pickle, a zip or
        // bytecode would be corrupted. Those are packed unchanged, and reported.
        _ if !content_is_elf(&content)? => {
            warning = Some(Notice::warning(format!(
                "{path}: a binary file not installed by conda (and not ELF) holds the build prefix; packed unchanged, it still names {named}",
            )));
            None
        }
        // Its C strings have no room for the archive's prefix: packed unchanged, recorded
        // with the prefix it holds, it is relocated at unpack where the new prefix fits.
        _ if to.len() > room => {
            let archive = String::from_utf8_lossy(to);
            warning = Some(Notice::warning(match held_prefix(&content, from)? {
                Some(prefix) => {
                    // Its strings can grow only into padding an earlier envpack output
                    // recorded; the prefix's own length otherwise.
                    let room = prefix.len().max(previous_room.unwrap_or(0));
                    let message = format!(
                        "{path}: an ELF file not installed by conda holds the build prefix {prefix}, which is shorter than the archive's prefix {archive}; packed unchanged, it is relocated at unpack only to paths of at most {room} characters",
                    );
                    holds = Some((prefix, room));
                    message
                }
                None => format!(
                    "{path}: an ELF file not installed by conda holds several prefixes of the environment (or one that is not UTF-8), shorter than the archive's prefix {archive}; packed unchanged, it still names them",
                ),
            }));
            None
        }
        _ => {
            warning = Some(Notice::warning(format!(
                "{path}: a binary file not installed by conda holds the build prefix; it can only be relocated to paths of at most {room} characters",
            )));
            Some(Mode::Binary { room })
        }
    };
    // A rewritten shebang held one occurrence; the rest of the file needs a record only if
    // it holds more.
    let left = scan.count - u64::from(shebang.is_some());
    let relocation = match mode {
        Some(Mode::Text) if left > 0 => Some(Relocation {
            path: path.clone(),
            mode: Mode::Text,
            holds: None,
        }),
        Some(mode @ Mode::Binary { .. }) => Some(Relocation {
            path: path.clone(),
            mode,
            holds: None,
        }),
        None => holds.map(|(prefix, room)| Relocation {
            path: path.clone(),
            mode: Mode::Binary { room },
            holds: Some(prefix),
        }),
        _ => None,
    };
    let transform = Transform {
        mode,
        shebang,
        placeholder: placeholder.map(<[u8]>::to_vec),
    };
    let out_size = if let Some(n) = archive_size(size, scan, &transform, found, to) {
        n
    } else {
        {
            // Read again only when the size cannot be told from the scan: a binary file whose
            // strings grow (this also proves they fit), or an overlong first line.
            let mut counter = Counter(0);
            let relocate_err = |e| PackError::Relocate {
                path: path.clone(),
                dest: String::from_utf8_lossy(to).into_owned(),
                source: e,
            };
            match &content {
                Content::File(source) => {
                    relocate::apply(open_buffered(source)?, &mut counter, &transform, from, to)
                        .map_err(relocate_err)?
                }
                Content::Bytes(data) => {
                    relocate::apply(&data[..], &mut counter, &transform, from, to)
                        .map_err(relocate_err)?
                }
            };
            counter.0
        }
    };
    let body = match content {
        Content::File(source) => Body::File {
            source,
            size: out_size,
            executable,
            transform,
        },
        Content::Bytes(data) => {
            let mut out = Vec::with_capacity(usize::try_from(out_size).unwrap_or(0));
            relocate::apply(&data[..], &mut out, &transform, from, to).map_err(|e| {
                PackError::Relocate {
                    path: path.clone(),
                    dest: String::from_utf8_lossy(to).into_owned(),
                    source: e,
                }
            })?;
            Body::Generated {
                data: out,
                executable,
            }
        }
    };
    Ok(Scanned {
        member: Member { path, body },
        relocation,
        warning,
    })
}

/// The size of a file in the archive, told from its one scan: text grows or shrinks by the
/// difference of the prefixes at each occurrence, binary keeps its length, a new first line
/// replaces the old one. `None` when the scan cannot tell (strings that grow in a binary file
/// must be checked against their padding; a first line longer than the scan kept).
fn archive_size(
    size: u64,
    scan: &relocate::Scan,
    t: &Transform,
    from: &Needles,
    to: &[u8],
) -> Option<u64> {
    let (base, occurrences, matched) = match &t.shebang {
        None => (size, scan.count, scan.matched),
        Some(line) => {
            let first = scan.first_line?;
            let (in_first, in_first_bytes) =
                scan.shebang.as_deref().map_or((0, 0), |l| from.count(l));
            (
                (size - first) + line.len() as u64,
                scan.count.checked_sub(in_first)?,
                scan.matched.checked_sub(in_first_bytes)?,
            )
        }
    };
    match t.mode {
        None => Some(base),
        Some(Mode::Binary { .. }) => (to.len() <= from.min_len()).then_some(base),
        Some(Mode::Text) => {
            let grown = occurrences.checked_mul(to.len() as u64)?;
            (base + grown).checked_sub(matched)
        }
    }
}

/// The one prefix of `from` the file holds (as text: a prefix is a path), or `None` when it
/// holds several (an earlier envpack output may hold its own path and its location).
fn held_prefix(content: &Content, from: &Needles) -> Result<Option<String>, PackError> {
    let mut held = None;
    for needle in from.list() {
        if from.list().len() > 1 {
            let one = Needles::one(needle);
            let count = match content {
                Content::File(path) => relocate::scan(fs_err::File::open(path)?, &one)?.count,
                Content::Bytes(data) => relocate::scan(&data[..], &one)?.count,
            };
            if count == 0 {
                continue;
            }
        }
        if held.is_some() {
            return Ok(None);
        }
        let Ok(prefix) = String::from_utf8(needle.clone()) else {
            return Ok(None);
        };
        held = Some(prefix);
    }
    Ok(held)
}

/// Whether the file's content starts with the ELF magic.
fn content_is_elf(content: &Content) -> Result<bool, PackError> {
    match content {
        Content::File(path) => is_elf(path),
        Content::Bytes(bytes) => Ok(bytes.starts_with(b"\x7fELF")),
    }
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> Result<bool, PackError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = fs_err::File::open(path)?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Symlinks into the prefix become relative; others are kept, with a warning.
fn symlink_target(path: &str, target: &Path, prefix: &Needles) -> (String, Option<Notice>) {
    let t = target.to_string_lossy().into_owned();
    if let Some(inside) = prefix
        .strip_prefix(t.as_bytes())
        .and_then(|r| r.strip_prefix(b"/"))
        .map(|r| String::from_utf8_lossy(r).into_owned())
    {
        let depth = path.matches('/').count();
        let rel = format!("{}{inside}", "../".repeat(depth));
        return (rel, None);
    }
    if t.starts_with('/') {
        return (
            t.clone(),
            Some(Notice::warning(format!(
                "{path}: symlink to {t} outside the environment"
            ))),
        );
    }
    // Relative: does it leave the tree?
    let mut depth: i64 = i64::try_from(path.matches('/').count()).unwrap_or(0);
    for c in t.split('/') {
        match c {
            ".." => depth -= 1,
            "." | "" => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return (
                t.clone(),
                Some(Notice::warning(format!(
                    "{path}: symlink to {t} leaves the environment"
                ))),
            );
        }
    }
    (t, None)
}

/// Writes the plan. Returns the output's size in bytes.
pub fn execute(
    plan: &PackPlan,
    output: &archive::Destination<'_>,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<u64, PackError> {
    let size = if let Some(c) = archive::compression_for(plan.format, plan.level)? {
        reporter.on_stage_start(Stage::Pack, Some(archive::tar_size(plan)));
        archive::write_tar(plan, output, c, pool, reporter)?
    } else {
        reporter.on_stage_start(Stage::Pack, Some(plan.content_bytes()));
        archive::write_dir(plan, output, reporter)?
    };
    reporter.on_stage_end(Stage::Pack);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_record_hashes_are_urlsafe_base64_without_padding() {
        use sha2::Digest;
        // The digest pip writes for an empty file.
        assert_eq!(
            urlsafe_b64(&sha2::Sha256::digest(b"")),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        assert_eq!(urlsafe_b64(b"ab"), "YWI");
        assert_eq!(urlsafe_b64(b"abcd"), "YWJjZA");
        assert_eq!(
            pip_record_site("lib/python3.11/site-packages/cowsay-6.1.dist-info/RECORD"),
            Some("lib/python3.11/site-packages")
        );
        assert_eq!(
            pip_record_site("lib/python3.11/site-packages/cowsay/RECORD"),
            None
        );
        assert_eq!(
            record_target("lib/python3.11/site-packages", "../../../bin/cowsay").as_deref(),
            Some("bin/cowsay")
        );
        assert_eq!(
            record_entry("a/b.py,sha256=x,3"),
            Some(("a/b.py", "sha256=x", "3"))
        );
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            Format::from_path(Path::new("a/model-conda.tar.gz")),
            Some(Format::TarGz)
        );
        assert_eq!(Format::from_path(Path::new("x.tgz")), Some(Format::TarGz));
        assert_eq!(
            Format::from_path(Path::new("x.tar.zst")),
            Some(Format::TarZst)
        );
        assert_eq!(Format::from_path(Path::new("x.tar")), Some(Format::Tar));
        assert_eq!(Format::from_path(Path::new("env")), None);
        assert_eq!(Format::parse("no-archive"), Some(Format::Dir));
    }

    #[test]
    fn empty_clobber_folders_are_dropped() {
        let dir = |p: &str| walk::Found {
            path: p.into(),
            kind: walk::Kind::Dir,
        };
        let file = |p: &str| walk::Found {
            path: p.into(),
            kind: walk::Kind::File {
                size: 1,
                executable: false,
            },
        };
        let kept: Vec<String> = without_empty_clobber_dirs(vec![
            dir("__clobbers__"),
            dir("__clobbers__/a"),
            dir("__clobbers__/a/share"),
            dir("__clobbers__/b"),
            dir("__clobbers__/b/share"),
            file("__clobbers__/b/share/x"),
            dir("__clobbers__x"),
            dir("share/empty"),
        ])
        .into_iter()
        .map(|f| f.path)
        .collect();
        assert_eq!(
            kept,
            [
                "__clobbers__",
                "__clobbers__/b",
                "__clobbers__/b/share",
                "__clobbers__/b/share/x",
                "__clobbers__x",
                "share/empty"
            ]
        );
    }

    #[test]
    fn symlinks_into_the_prefix_become_relative() {
        let p = &Needles::one(b"/stage/env");
        assert_eq!(
            symlink_target("lib/libz.so", Path::new("/stage/env/lib/libz.so.1"), p),
            ("../lib/libz.so.1".into(), None)
        );
        assert_eq!(
            symlink_target("bin/python", Path::new("python3.11"), p),
            ("python3.11".into(), None)
        );
        assert!(
            symlink_target("lib/x", Path::new("/usr/lib/x"), p)
                .1
                .is_some()
        );
        assert!(
            symlink_target("lib/x", Path::new("../../etc/passwd"), p)
                .1
                .is_some()
        );
        assert!(
            symlink_target("lib/x", Path::new("../bin/y"), p)
                .1
                .is_none()
        );
    }
}
