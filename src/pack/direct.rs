//! Direct: the archive planned straight from the extracted packages in rattler's package
//! cache, with no staging prefix and no copy.
//!
//! The staged route installs every package into a staging prefix `S` (rattler's installer
//! replaces each file's placeholder `P` by `S`), then packs it (replacing `S` by the archive
//! prefix `A`). This module produces the same archive from the cache: each member is the
//! cache file with `P` replaced by `A` in one pass, decided by the pack step's own rules
//! ([`super::decide`]) with what the installer would have done folded in:
//!
//! - destinations as the installer computes them (noarch python paths from
//!   [`PythonInfo::get_python_noarch_target_path`], which honours `python_site_packages_path`);
//! - entry points from [`python_entry_point_template`], packed as the pack step packs them;
//! - `conda-meta` records built as the installer builds them (a [`PrefixRecord`] written with
//!   [`PrefixRecord::write_to`]), then scrubbed as the pack step scrubs them.
//!
//! rattler's placeholder replacement (`prefix_replacement`) is private in rattler 0.55, so
//! the pack step's own streaming replacement does the work; that is exact because, for the
//! files handled here, the installer's replacement followed by the pack's equals one
//! replacement of `P` by `A` (text: every occurrence; binary: inside C strings, NUL padded to
//! the string's original length). What the installer does differently depends on the length
//! of the staging prefix (a shebang rattler rewrites when it would exceed 127 bytes, a text
//! file that is not UTF-8, a placeholder in a wide encoding, a binary script's shebang), on
//! several packages providing one path (clobbering), or on links outside the package: for
//! those the plan answers [`Direct::Unsupported`] and the caller takes the staged route, so
//! the archive is always the one the staged route writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rattler::install::{PythonInfo, python_entry_point_template};
use rattler_conda_types::package::{
    FileMode, IndexJson, LinkJson, NoArchLinks, OffsetEncoding, PackageFile, PathType, PathsJson,
};
use rattler_conda_types::prefix_record::{self, Link, LinkType, PrefixRecord};
use rattler_conda_types::{RepoDataRecord, Subdir};
use rayon::prelude::*;

use super::walk::{self, Entry, Found, Kind, Listing};
use super::{ARCHIVE_PREFIX, Body, Content, FileFacts, Member, PackError, PackOptions, PackPlan};
use super::{Scanned, decide, relocate};
use crate::report::{SharedReporter, Stage};

/// One package, extracted in the package cache.
#[derive(Debug, Clone)]
pub struct CachedPackage {
    /// Its record, as solved.
    pub record: RepoDataRecord,
    /// Its folder in the package cache.
    pub dir: PathBuf,
}

/// The outcome of planning from the cache.
pub enum Direct {
    /// The plan, and the environment's listing (for the checks run before packing).
    Plan(Box<PackPlan>, Listing),
    /// The environment needs something only the staged route does exactly; why.
    Unsupported(String),
}

/// What the direct route needs besides the packages.
pub struct DirectOptions {
    /// The target platform.
    pub platform: Subdir,
    /// The length of the staging prefix the staged route would use: the installer's output
    /// depends on it in places (long shebangs, entry points' shebangs).
    pub staging_prefix_len: usize,
    /// The link type the staged route's installer records in `conda-meta`.
    pub link_type: LinkType,
}

/// What one destination path holds.
enum What {
    /// A file of the cache, with its placeholder and mode if it has one.
    File {
        source: PathBuf,
        placeholder: Option<(String, FileMode)>,
    },
    /// A symlink with this (relative) target.
    Symlink(PathBuf),
    /// An entry point, written for the stand-in staging prefix.
    EntryPoint(Vec<u8>),
    /// A `conda-meta` record as the installer writes it.
    Record(Vec<u8>),
}

struct Item {
    path: String,
    what: What,
}

type Outcome<T> = Result<Result<T, String>, PackError>;

/// Plans the archive of `packages` straight from the package cache.
#[allow(clippy::too_many_lines)] // the installer's steps, in its order
pub fn plan(
    packages: &[CachedPackage],
    options: &PackOptions,
    direct: &DirectOptions,
    pool: &rayon::ThreadPool,
    reporter: &SharedReporter,
) -> Result<Direct, PackError> {
    let archive_prefix = options.dest_prefix.clone().map_or_else(
        || ARCHIVE_PREFIX.to_string(),
        |d| d.trim_end_matches('/').to_string(),
    );
    // A stand-in for the staging prefix, of its length: it only ever stands where the
    // staging prefix would, and is replaced by the archive prefix like it.
    let stand_in = format!(
        "/{}",
        "_".repeat(direct.staging_prefix_len.saturating_sub(1).max(8))
    );
    let python_info = match packages
        .iter()
        .find(|p| p.record.package_record.name.as_normalized() == "python")
        .map(|p| PythonInfo::from_python_record(&p.record.package_record, direct.platform))
    {
        Some(Ok(info)) => Some(info),
        Some(Err(e)) => return Ok(Direct::Unsupported(format!("python: {e}"))),
        None => None,
    };

    // Every package's destinations and record, in parallel.
    let per_package: Vec<Outcome<Vec<Item>>> = pool.install(|| {
        packages
            .par_iter()
            .map(|p| package_items(p, python_info.as_ref(), &stand_in, direct))
            .collect()
    });
    let mut items: Vec<Item> = Vec::new();
    for r in per_package {
        match r? {
            Ok(mut v) => items.append(&mut v),
            Err(reason) => return Ok(Direct::Unsupported(reason)),
        }
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = items.windows(2).find(|w| w[0].path == w[1].path) {
        return Ok(Direct::Unsupported(format!(
            "several packages provide {}",
            w[0].path
        )));
    }

    // The tree the staged route's prefix would hold.
    let mut listing = BTreeMap::new();
    for item in &items {
        let entry = match &item.what {
            What::Symlink(target) => Entry::Symlink(target.to_string_lossy().into_owned()),
            _ => Entry::File,
        };
        listing.insert(item.path.clone(), entry);
    }
    let dirs: BTreeSet<String> = items.iter().flat_map(|i| walk::parents(&i.path)).collect();
    for d in dirs {
        listing.insert(d, Entry::Dir);
    }
    listing.insert("conda-meta".into(), Entry::Dir);
    let all: Vec<Found> = listing
        .iter()
        .map(|(path, e)| Found {
            path: path.clone(),
            kind: match e {
                Entry::Dir => Kind::Dir,
                Entry::Symlink(t) => Kind::Symlink {
                    target: PathBuf::from(t),
                },
                Entry::File => Kind::File {
                    size: 0,
                    executable: false,
                },
            },
        })
        .collect();
    let by_path: HashMap<&str, &Item> = items.iter().map(|i| (i.path.as_str(), i)).collect();

    // conda-pack's checks (nothing is missing: the tree is what the packages hold).
    let mut warnings = walk::unmatched_excludes(&all, &options.filters);
    let found = walk::apply_filters(all, &options.filters);
    let editable = walk::editable_installs(&found, |p| match by_path.get(p) {
        Some(Item {
            what: What::File { source, .. },
            ..
        }) => std::fs::read_to_string(source).ok(),
        _ => None,
    });
    if !editable.is_empty() {
        if !options.ignore_editable_packages {
            return Err(PackError::Editable { packages: editable });
        }
        warnings.push(crate::report::Notice::warning(format!(
            "editable packages point outside the environment and will not work where it is unpacked: {}",
            editable.join(", ")
        )));
    }
    let hook_dir = options
        .auto_relocate
        .then(|| super::site_packages(&found))
        .flatten();
    let found: Vec<Found> = found
        .into_iter()
        .filter(|f| {
            by_path
                .get(f.path.as_str())
                .is_some_and(|i| !matches!(i.what, What::Record(_)))
                || !super::replaced_or_runtime(&f.path)
        })
        .collect();

    reporter.on_stage_start(Stage::Scan, Some(found.len() as u64));
    let scanned: Vec<Outcome<Scanned>> = pool.install(|| {
        found
            .par_iter()
            .map(|f| {
                let r = match by_path.get(f.path.as_str()) {
                    None => Ok(Ok(Scanned::plain(Member {
                        path: f.path.clone(),
                        body: Body::Dir,
                    }))),
                    Some(item) => member_for(item, options, &stand_in, &archive_prefix, direct),
                };
                reporter.on_progress(Stage::Scan, 1);
                r
            })
            .collect()
    });
    reporter.on_stage_end(Stage::Scan);
    let mut members = Vec::with_capacity(scanned.len());
    for s in scanned {
        match s? {
            Ok(m) => members.push(m),
            Err(reason) => return Ok(Direct::Unsupported(reason)),
        }
    }
    let mut plan = super::finish(
        PathBuf::new(),
        relocate::Needles::one(stand_in.as_bytes()),
        archive_prefix,
        members,
        warnings,
        hook_dir.as_deref(),
        options,
    );
    plan.packages = packages.iter().map(recorded).collect();
    Ok(Direct::Plan(Box::new(plan), Listing(listing)))
}

/// What the package's `conda-meta` record will say of it.
fn recorded(package: &CachedPackage) -> walk::Recorded {
    let r = &package.record.package_record;
    walk::Recorded {
        name: r.name.as_normalized().to_string(),
        version: r.version.to_string(),
        build: r.build.to_string(),
        channel: package.record.channel.clone(),
        size: r.size,
    }
}

/// The destinations of one package, its entry points and its `conda-meta` record, as
/// rattler's installer (`link_package_sync`, `create_unix_python_entry_point`, the
/// installer's `link_package`) computes them.
#[allow(clippy::too_many_lines)] // the installer's steps, in its order
fn package_items(
    package: &CachedPackage,
    python_info: Option<&PythonInfo>,
    stand_in: &str,
    direct: &DirectOptions,
) -> Outcome<Vec<Item>> {
    let dir = &package.dir;
    let io = |e: std::io::Error| PackError::Io(crate::paths::at("cannot read the package", dir)(e));
    let paths_json = PathsJson::from_package_directory_with_deprecated_fallback(dir).map_err(io)?;
    let index_json = IndexJson::from_package_directory(dir).map_err(io)?;
    let noarch_python = index_json.noarch.is_python();
    if noarch_python && python_info.is_none() {
        return Ok(Err(format!(
            "{} is a noarch python package and the environment has no python",
            package.record.package_record.name.as_normalized()
        )));
    }
    let mut items = Vec::new();
    let mut entries = Vec::with_capacity(paths_json.paths.len());
    for entry in &paths_json.paths {
        let dest = match (noarch_python, python_info) {
            (true, Some(info)) => info
                .get_python_noarch_target_path(&entry.relative_path)
                .into_owned(),
            _ => entry.relative_path.clone(),
        };
        let Some(path) = dest.to_str().map(|p| p.replace('\\', "/")) else {
            return Ok(Err(format!("{} is not UTF-8", dest.display())));
        };
        let source = dir.join(&entry.relative_path);
        let placeholder = entry
            .prefix_placeholder
            .as_ref()
            .map(|p| (p.placeholder.clone(), p.file_mode));
        let meta = match std::fs::symlink_metadata(&source) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(format!(
                    "{} is missing from the cache",
                    source.display()
                )));
            }
            Err(e) => return Err(PackError::Io(crate::paths::at("cannot read", &source)(e))),
        };
        let what = match entry.path_type {
            PathType::SoftLink if placeholder.is_none() => {
                let target = fs_err::read_link(&source)?;
                if target.is_absolute() {
                    return Ok(Err(format!("{path} links to an absolute path")));
                }
                What::Symlink(target)
            }
            PathType::HardLink if meta.is_file() => What::File {
                source,
                placeholder: placeholder.clone(),
            },
            _ => {
                return Ok(Err(format!(
                    "{path}: an entry the direct route does not handle"
                )));
            }
        };
        // As the installer records it (`link_package`): the size it wrote (the cache file's
        // for a copy, the link's for a symlink), the placeholder's mode for a patched file.
        entries.push(prefix_record::PathsEntry {
            relative_path: dest.clone(),
            original_path: None,
            path_type: entry.path_type.into(),
            no_link: entry.no_link,
            sha256: entry.sha256,
            // Removed from the archive's records (it depends on the staging prefix).
            sha256_in_prefix: None,
            size_in_bytes: Some(entry.size_in_bytes.unwrap_or(meta.len())),
            file_mode: placeholder.as_ref().map(|(_, mode)| *mode),
            prefix_placeholder: placeholder.as_ref().map(|(p, _)| p.clone()),
        });
        items.push(Item { path, what });
    }
    if noarch_python && let Some(info) = python_info {
        let link_json = match LinkJson::from_package_directory(dir) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        if let Some(NoArchLinks::Python(links)) = link_json.map(|l| l.noarch) {
            for entry_point in &links.entry_points {
                let rel = Path::new("bin").join(&entry_point.command);
                let Some(path) = rel.to_str().map(str::to_string) else {
                    return Ok(Err(format!("{} is not UTF-8", rel.display())));
                };
                let script = python_entry_point_template(stand_in, false, entry_point, info);
                entries.push(prefix_record::PathsEntry {
                    relative_path: rel,
                    original_path: None,
                    path_type: prefix_record::PathType::UnixPythonEntryPoint,
                    no_link: false,
                    // Both removed from the archive's records (the script holds the prefix).
                    sha256: None,
                    sha256_in_prefix: None,
                    size_in_bytes: Some(script.len() as u64),
                    file_mode: None,
                    prefix_placeholder: None,
                });
                items.push(Item {
                    path,
                    what: What::EntryPoint(script.into_bytes()),
                });
            }
        }
    }
    // The installer records the paths sorted (as paths: component by component).
    entries.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    let record = PrefixRecord {
        extracted_package_dir: Some(dir.clone()),
        link: Some(Link {
            source: dir.clone(),
            link_type: Some(direct.link_type),
        }),
        requested_specs: Vec::new(),
        ..PrefixRecord::from_repodata_record(package.record.clone(), entries)
    };
    let mut raw = Vec::new();
    record.write_to(&mut raw, true)?;
    items.push(Item {
        path: format!("conda-meta/{}", record.file_name()),
        what: What::Record(raw),
    });
    Ok(Ok(items))
}

/// Decides one member from the cache, as the pack step decides it from the staging prefix.
#[allow(clippy::too_many_lines)] // the installer's steps, in its order
fn member_for(
    item: &Item,
    options: &PackOptions,
    stand_in: &str,
    archive_prefix: &str,
    direct: &DirectOptions,
) -> Outcome<Scanned> {
    let path = item.path.clone();
    // Only the stand-in: files from the cache hold their package's placeholder, never
    // envpack's, and are decided exactly as the staged route decides them.
    let from = &relocate::Needles::one(stand_in.as_bytes());
    let to = archive_prefix.as_bytes();
    match &item.what {
        What::Record(raw) => {
            let data = relocate::scrub_record(
                raw,
                &options.url_rewrites,
                options.record_link_type,
                from,
                archive_prefix,
            )
            .map_err(|source| PackError::Record {
                path: PathBuf::from(&path),
                source,
            })?;
            Ok(Ok(Scanned::plain(Member {
                path,
                body: Body::Generated {
                    data,
                    executable: false,
                },
            })))
        }
        What::Symlink(target) => {
            let (target, warning) = super::symlink_target(&path, target, from);
            Ok(Ok(Scanned {
                member: Member {
                    path,
                    body: Body::Symlink(target),
                },
                relocation: None,
                warning,
            }))
        }
        What::EntryPoint(script) => {
            let scan = relocate::scan(&script[..], from)?;
            let managed = walk::Managed {
                placeholder: None,
                binary: false,
            };
            let facts = FileFacts {
                path,
                size: script.len() as u64,
                executable: true,
                managed: Some(&managed),
                scan: &scan,
                previous_room: None,
            };
            Ok(Ok(decide(
                facts,
                Content::Bytes(script.clone()),
                from,
                to,
                None,
            )?))
        }
        What::File {
            source,
            placeholder: None,
        } => {
            let meta = fs_err::metadata(source)?;
            Ok(Ok(Scanned::plain(Member {
                path,
                body: Body::File {
                    source: source.clone(),
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                    transform: relocate::Transform::default(),
                },
            })))
        }
        What::File {
            source,
            placeholder: Some((placeholder, mode)),
        } => {
            let meta = fs_err::metadata(source)?;
            let wide: Vec<Vec<u8>> = OffsetEncoding::DEFINED
                .into_iter()
                .filter(|e| *e != OffsetEncoding::Utf8)
                .map(|e| e.encode(placeholder))
                .collect();
            let file = fs_err::File::open(source)?;
            let scan =
                relocate::scan_with(file, &relocate::Needles::one(placeholder.as_bytes()), &wide)?;
            if let Some(reason) = unsupported(&path, placeholder, *mode, &scan, direct) {
                return Ok(Err(reason));
            }
            let managed = walk::Managed {
                placeholder: Some(placeholder.clone()),
                binary: *mode == FileMode::Binary,
            };
            let facts = FileFacts {
                path,
                size: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
                managed: Some(&managed),
                scan: &scan,
                previous_room: None,
            };
            Ok(Ok(decide(
                facts,
                Content::File(source.clone()),
                from,
                to,
                Some(placeholder.as_bytes()),
            )?))
        }
    }
}

/// Why a file with a placeholder is not packed exactly as the staged route packs it by one
/// replacement of its placeholder, if it is not.
fn unsupported(
    path: &str,
    placeholder: &str,
    mode: FileMode,
    scan: &relocate::Scan,
    direct: &DirectOptions,
) -> Option<String> {
    let p = placeholder.as_bytes();
    if scan.other {
        return Some(format!("{path} holds its placeholder in a wide encoding"));
    }
    if scan.count == 0 {
        return None;
    }
    let first_holds = scan
        .shebang
        .as_deref()
        .map_or(0, |l| memchr::memmem::find_iter(l, p).count());
    match mode {
        FileMode::Text => {
            if !scan.utf8 {
                return Some(format!("{path} is a text file that is not UTF-8"));
            }
            if first_holds > 0 {
                // The installer rewrites a shebang that would exceed 127 bytes.
                let line = scan.shebang.as_deref().map_or(0, <[u8]>::len);
                let installed =
                    line + first_holds * direct.staging_prefix_len - first_holds * p.len();
                if scan.first_line.is_none() || installed > 127 {
                    return Some(format!("{path} has a long shebang"));
                }
            }
            None
        }
        FileMode::Binary => {
            if direct.staging_prefix_len > p.len() {
                return Some(format!(
                    "{path}: the staging prefix is longer than its placeholder"
                ));
            }
            let in_bin = path.strip_prefix("bin/").is_some_and(|n| !n.contains('/'));
            if first_holds > 0 && in_bin && scan.utf8 {
                return Some(format!("{path} is a binary-mode script"));
            }
            None
        }
    }
}
