//! Unpack: an envpack or conda-pack archive (gzip, zstd, bzip2 or plain tar), or a folder
//! written by `envpack pack --format dir`, extracted into a new folder and relocated there,
//! natively: no Python is needed on the machine.
//!
//! Nothing is written outside DEST: members with `..` or absolute names, members that would
//! be written through a symlink, hard links to anything but a regular file of the tree, and
//! devices or FIFOs are refused. Everything is extracted into a temporary folder beside DEST
//! (removed on any failure, and on interrupt) that is renamed onto DEST only when complete,
//! verified and relocated. DEST must not exist, or be an empty folder.
//!
//! When the tree holds a manifest (`conda-meta/envpack.json`) with file digests, every file it
//! lists is checked. The environment is then relocated exactly as its own `conda-unpack` would
//! do it (text files: every occurrence replaced; binary files: inside C strings, length kept,
//! growing only into the room the package's placeholder left), from envpack's
//! `share/envpack/relocations.json` or from the records conda-pack embeds in its
//! `bin/conda-unpack`. An ELF file conda did not install that still holds its own, shorter
//! build prefix is relocated only where the new prefix fits; elsewhere it is left as it is,
//! with a warning. An envpack environment is then marked relocated
//! (`share/envpack/location`), so its first activation or Python start does nothing more.

mod extract;
mod manifest;
mod relocate;

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::report::{Notice, SharedReporter, Stage};

/// Errors of unpacking.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive (or a file of the folder) cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither a folder nor a tar archive envpack knows how to decompress.
    #[error("{} is not a tar archive (plain, gzip, zstd or bzip2) nor a folder{}", path.display(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NotAnArchive {
        /// The file.
        path: PathBuf,
        /// What it looks like instead, when known.
        detail: Option<String>,
    },
    /// The tar stream is damaged or truncated.
    #[error("{} is not a valid archive", path.display())]
    Corrupt {
        /// The archive.
        path: PathBuf,
        /// What the reader said.
        #[source]
        source: io::Error,
    },
    /// A member that would write outside DEST, or that is not a file, folder or link.
    #[error("refusing the archive member {member:?}: {reason}")]
    Unsafe {
        /// The member's name as stored.
        member: String,
        /// Why.
        reason: Unsafe,
    },
    /// DEST exists and is not an empty folder.
    #[error("{} already exists and is not an empty folder", path.display())]
    DestExists {
        /// DEST.
        path: PathBuf,
    },
    /// DEST is inside the folder being unpacked, or is it.
    #[error("{} is inside the folder being unpacked ({})", dest.display(), source_dir.display())]
    DestInsideSource {
        /// DEST.
        dest: PathBuf,
        /// The folder given as ARCHIVE.
        source_dir: PathBuf,
    },
    /// `--dest-prefix` is not a usable prefix.
    #[error("invalid destination prefix {0:?}: it must be an absolute path without newlines")]
    BadPrefix(String),
    /// Writing into the temporary folder or DEST failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest cannot be understood.
    #[error("invalid manifest conda-meta/envpack.json: {reason}")]
    Manifest {
        /// What is wrong.
        reason: String,
    },
    /// A file whose bytes are not the ones the manifest records.
    #[error("{path} does not match the archive's manifest (sha256 {actual}, expected {expected})")]
    Digest {
        /// The file, relative to the environment.
        path: String,
        /// The manifest's digest.
        expected: String,
        /// The digest of the extracted bytes.
        actual: String,
    },
    /// A file the manifest lists is not in the archive.
    #[error("{path} is listed in the archive's manifest but is not in the archive")]
    DigestMissing {
        /// The file, relative to the environment.
        path: String,
    },
    /// The relocation records (`share/envpack/relocations.json`, conda-pack's
    /// `bin/conda-unpack`) cannot be understood.
    #[error("invalid relocation data in {file}: {reason}")]
    RelocationData {
        /// The file holding the records.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file cannot be relocated (a binary file whose room is too small for the new prefix).
    #[error("cannot relocate {path} to {prefix}")]
    Relocate {
        /// The file, relative to the environment.
        path: String,
        /// The new prefix.
        prefix: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why a member is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// `/etc/passwd`.
    #[error("its name is absolute")]
    Absolute,
    /// `../x`, `a/../../x`.
    #[error("its name has a `..` component")]
    ParentDir,
    /// A name that is empty or holds a NUL byte.
    #[error("its name is empty or invalid")]
    BadName,
    /// A member whose parent is a symlink: writing it would write where the link points.
    #[error("it would be written through the symlink {0}")]
    ThroughSymlink(String),
    /// A member whose parent is a file.
    #[error("its parent {0} is not a folder")]
    ThroughFile(String),
    /// A file or link where the archive made a folder.
    #[error("it would replace the folder of the same name")]
    ReplacesFolder,
    /// A hard link to anything but a regular file already extracted into the tree.
    #[error("it is a hard link to {0:?}, which is not a file of the archive")]
    HardLinkOutside(String),
    /// Character or block devices, FIFOs, sockets.
    #[error("it is a device, FIFO or socket")]
    Special,
    /// A tar entry type envpack does not extract.
    #[error("its tar entry type {0:?} is not supported")]
    UnsupportedType(char),
}

/// What made the archive, as far as relocation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// envpack: `share/envpack/relocations.json`.
    Envpack,
    /// conda-pack: records embedded in `bin/conda-unpack`.
    CondaPack,
    /// No relocation records: extracted as it is.
    Plain,
}

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Relocate for this path instead of DEST (the tree will be moved there).
    pub dest_prefix: Option<String>,
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Unpacked {
    /// The archive or folder read.
    pub archive: PathBuf,
    /// The folder written.
    pub dest: PathBuf,
    /// The environment inside it (DEST, or the archive's one top folder holding `conda-meta`).
    pub root: PathBuf,
    /// Which relocation records were found.
    pub origin: Origin,
    /// The prefix the environment's files hold now (`None` when nothing was relocated).
    pub prefix: Option<String>,
    /// Regular files extracted.
    pub files: u64,
    /// Files rewritten for the new prefix.
    pub relocated: u64,
    /// Files checked against the manifest's digests.
    pub verified: u64,
    /// Things the user should know.
    pub warnings: Vec<Notice>,
}

/// Extracts `archive` (a tar archive, compressed or not, or a folder) into `dest`, verifies and
/// relocates it. `dest` must not exist or be an empty folder; it is written only when
/// everything succeeded.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    options: &UnpackOptions,
    reporter: &SharedReporter,
) -> Result<Unpacked, UnpackError> {
    if let Some(p) = &options.dest_prefix
        && !valid_prefix(p)
    {
        return Err(UnpackError::BadPrefix(p.clone()));
    }
    let input = extract::Input::open(archive)?;
    let dest_abs = absolute(dest).map_err(|source| UnpackError::Read {
        path: dest.to_path_buf(),
        source,
    })?;
    let name = dest_abs
        .file_name()
        .ok_or_else(|| UnpackError::DestExists {
            path: dest_abs.clone(),
        })?
        .to_os_string();
    let existing = check_dest(&dest_abs)?;
    let parent = dest_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    let created = create_parents(&parent)?;
    let result = (|| {
        let real_parent = fs_err::canonicalize(&parent).map_err(|source| UnpackError::Read {
            path: parent.clone(),
            source,
        })?;
        if let extract::Input::Folder(src) = &input
            && real_parent.join(&name).starts_with(src)
        {
            return Err(UnpackError::DestInsideSource {
                dest: dest_abs.clone(),
                source_dir: src.clone(),
            });
        }
        let (tmp, guard) = crate::pack::archive::temp_dir_beside(&dest_abs).map_err(|source| {
            UnpackError::Write {
                path: parent.clone(),
                source,
            }
        })?;
        let mut tree = extract::Tree::new(tmp.path().to_path_buf());
        input.extract_into(&mut tree, reporter)?;
        let files = tree.files;
        let root_rel = env_root(tmp.path());
        let root = below(tmp.path(), &root_rel);
        let mut warnings = Vec::new();
        let verified = manifest::verify(&root)?;
        // Where the environment will be: envpack's conda-unpack uses the real path,
        // conda-pack's the absolute one.
        let final_real = below(&real_parent.join(&name), &root_rel);
        let final_abs = below(&dest_abs, &root_rel);
        let relocation = relocate::relocate(
            &root,
            options.dest_prefix.as_deref(),
            &final_real,
            &final_abs,
            reporter,
            &mut warnings,
        )?;
        tree.finish_modes(existing)
            .map_err(|source| UnpackError::Write {
                path: tmp.path().to_path_buf(),
                source,
            })?;
        let kept = tmp.keep();
        // Under the interrupt's exclusion: either DEST appears complete (and an interrupt says
        // so) or the temporary is removed and DEST never appears.
        if let Err(e) = crate::cleanup::publishing(&dest_abs, || std::fs::rename(&kept, &dest_abs))
        {
            let _ = std::fs::remove_dir_all(&kept);
            drop(guard);
            return Err(match e.raw_os_error() {
                Some(39 | 20 | 17) => UnpackError::DestExists { path: dest_abs },
                _ => UnpackError::Write {
                    path: dest_abs,
                    source: e,
                },
            });
        }
        drop(guard);
        for w in &warnings {
            reporter.on_notice(w);
        }
        Ok(Unpacked {
            archive: archive.to_path_buf(),
            root: below(&dest_abs, &root_rel),
            dest: dest_abs.clone(),
            origin: relocation.origin,
            prefix: relocation.prefix,
            files,
            relocated: relocation.rewritten,
            verified,
            warnings,
        })
    })();
    if result.is_err() {
        crate::cleanup::remove_made(&created);
    }
    result
}

/// The prefix must be absolute, without newlines or NUL (what conda-unpack can record).
fn valid_prefix(p: &str) -> bool {
    p.starts_with('/') && !p.contains(['\n', '\r', '\0']) && p.trim_end_matches('/').len() > 1
}

/// `path` made absolute and normalised lexically (as Python's `os.path.abspath`).
pub(crate) fn absolute(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The permission bits of DEST when it is an existing empty folder; an error when it is
/// anything else that exists.
fn check_dest(dest: &Path) -> Result<Option<u32>, UnpackError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut entries = fs_err::read_dir(dest).map_err(|source| UnpackError::Read {
                path: dest.to_path_buf(),
                source,
            })?;
            if entries.next().is_some() {
                return Err(UnpackError::DestExists {
                    path: dest.to_path_buf(),
                });
            }
            Ok(Some(m.permissions().mode() & 0o7777))
        }
        Ok(_) => Err(UnpackError::DestExists {
            path: dest.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UnpackError::Read {
            path: dest.to_path_buf(),
            source,
        }),
    }
}

/// Creates the missing ancestors of DEST (as `mkdir -p`); returns those created, outermost
/// first, so that a failure can remove them again (an interrupt removes them while empty).
fn create_parents(parent: &Path) -> Result<Vec<crate::cleanup::FolderGuard>, UnpackError> {
    let missing: Vec<PathBuf> = parent
        .ancestors()
        .take_while(|p| std::fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect();
    let mut created = Vec::new();
    for d in missing.into_iter().rev() {
        match crate::cleanup::create_folder(&d) {
            Ok(guard) => created.push(guard),
            Err(source) => {
                crate::cleanup::remove_made(&created);
                return Err(UnpackError::Write { path: d, source });
            }
        }
    }
    Ok(created)
}

/// Where the environment is inside the extracted tree: the tree itself, or its only top
/// folder when that holds `conda-meta` (an archive made with `--arcroot`).
fn env_root(tree: &Path) -> PathBuf {
    if tree.join("conda-meta").is_dir() {
        return PathBuf::new();
    }
    let Ok(entries) = std::fs::read_dir(tree) else {
        return PathBuf::new();
    };
    let entries: Vec<_> = entries.filter_map(Result::ok).collect();
    if let [only] = entries.as_slice()
        && only.file_type().is_ok_and(|t| t.is_dir())
        && only.path().join("conda-meta").is_dir()
    {
        return PathBuf::from(only.file_name());
    }
    PathBuf::new()
}

/// `base/rel`, without a trailing slash when `rel` is empty.
fn below(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Runs `f` as the stage `s`.
fn stage<R>(reporter: &SharedReporter, s: Stage, total: Option<u64>, f: impl FnOnce() -> R) -> R {
    reporter.on_stage_start(s, total);
    let r = f();
    reporter.on_stage_end(s);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_normalises_like_abspath() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c/")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert_eq!(absolute(Path::new("/..")).unwrap(), PathBuf::from("/"));
    }

    #[test]
    fn prefixes_must_be_absolute_and_single_line() {
        assert!(valid_prefix("/opt/env"));
        assert!(valid_prefix("/opt/env/"));
        assert!(!valid_prefix("opt/env"));
        assert!(!valid_prefix("/"));
        assert!(!valid_prefix("/opt/a\nb"));
    }
}
