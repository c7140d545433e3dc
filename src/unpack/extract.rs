//! Extraction into a private temporary folder, member by member, refusing whatever would
//! write outside it.
//!
//! Every member's name is checked (relative, no `..`), every folder on its way is checked
//! to be a real folder of the tree (never a symlink, whatever the archive created before),
//! files are created with `O_EXCL` after removing what was there (so never through a link),
//! hard links must point at a regular file already extracted, and devices and FIFOs are
//! refused. Nothing here follows a symlink.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{UnpackError, Unsafe};
use crate::report::{SharedReporter, Stage};

/// What ARCHIVE is.
pub(super) enum Input {
    /// A file, with its compression.
    Archive {
        path: PathBuf,
        compression: Compression,
        size: u64,
    },
    /// A folder (canonical path).
    Folder(PathBuf),
}

/// The compression of a tar archive, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
}

/// Reads the magic bytes of `head` (the first bytes of a file, up to 512).
pub(super) fn sniff(head: &[u8]) -> Result<Compression, Option<&'static str>> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(b"BZh") {
        Ok(Compression::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(Some("xz compression is not supported"))
    } else if head.starts_with(b"PK\x03\x04") {
        Err(Some("a zip file"))
    } else if head.len() >= 512 && is_tar_header(&head[..512]) {
        Ok(Compression::None)
    } else {
        Err(None)
    }
}

/// A ustar/GNU magic, or an all-zero block (an empty archive), or a valid checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if &block[257..262] == b"ustar" || block.iter().all(|&b| b == 0) {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == Some(sum)
}

impl Input {
    /// Opens ARCHIVE and decides what it is, by content, not by name.
    pub(super) fn open(path: &Path) -> Result<Input, UnpackError> {
        let read_err = |source| UnpackError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.is_dir() {
            return Ok(Input::Folder(fs_err::canonicalize(path).map_err(read_err)?));
        }
        let mut head = Vec::with_capacity(512);
        File::open(path)
            .map_err(read_err)?
            .take(512)
            .read_to_end(&mut head)
            .map_err(read_err)?;
        match sniff(&head) {
            Ok(compression) => Ok(Input::Archive {
                path: path.to_path_buf(),
                compression,
                size: meta.len(),
            }),
            Err(detail) => Err(UnpackError::NotAnArchive {
                path: path.to_path_buf(),
                detail: detail.map(str::to_string),
            }),
        }
    }

    /// Writes every member into `tree`.
    pub(super) fn extract_into(
        &self,
        tree: &mut Tree,
        reporter: &SharedReporter,
    ) -> Result<(), UnpackError> {
        match self {
            Input::Archive {
                path,
                compression,
                size,
            } => super::stage(reporter, Stage::Extract, Some(*size), || {
                let file = File::open(path).map_err(|source| UnpackError::Read {
                    path: path.clone(),
                    source,
                })?;
                let counted = Counting {
                    inner: BufReader::with_capacity(256 * 1024, file),
                    reporter,
                    pending: 0,
                };
                let corrupt = |source| UnpackError::Corrupt {
                    path: path.clone(),
                    source,
                };
                let reader: Box<dyn Read + '_> = match compression {
                    Compression::None => Box::new(counted),
                    Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
                    Compression::Zstd => Box::new(zstd::Decoder::new(counted).map_err(corrupt)?),
                    Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(counted)),
                };
                extract_tar(reader, tree, path).map_err(|e| match e {
                    TarError::Io(source) => corrupt(source),
                    TarError::Unpack(u) => u,
                })
            }),
            Input::Folder(src) => super::stage(reporter, Stage::Extract, None, || {
                copy_folder(src, tree, reporter)
            }),
        }
    }
}

/// Counts bytes read from the archive file, for progress.
struct Counting<'a, R> {
    inner: R,
    reporter: &'a SharedReporter,
    pending: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending += n as u64;
        if self.pending >= 1 << 20 || n == 0 {
            self.reporter.on_progress(Stage::Extract, self.pending);
            self.pending = 0;
        }
        Ok(n)
    }
}

enum TarError {
    Io(io::Error),
    Unpack(UnpackError),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

impl From<UnpackError> for TarError {
    fn from(e: UnpackError) -> Self {
        TarError::Unpack(e)
    }
}

fn extract_tar(reader: impl Read, tree: &mut Tree, archive_path: &Path) -> Result<(), TarError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let member = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Member::File { mode, mtime }
            }
            tar::EntryType::Directory => Member::Dir { mode },
            tar::EntryType::Symlink => Member::Symlink {
                target: entry.link_name_bytes().map(std::borrow::Cow::into_owned),
            },
            tar::EntryType::Link => Member::HardLink {
                target: entry
                    .link_name_bytes()
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default(),
            },
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => Member::Special,
            // pax global headers carry no member.
            tar::EntryType::XGlobalHeader => continue,
            other => Member::Unsupported(other.as_byte()),
        };
        tree.add(&name, member, &mut entry, &|source| UnpackError::Corrupt {
            path: archive_path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Copies a folder (an envpack `--format dir` output) member by member, never following
/// links inside it.
fn copy_folder(src: &Path, tree: &mut Tree, reporter: &SharedReporter) -> Result<(), UnpackError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Read {
            path: path.clone(),
            source,
        }
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = src.join(&rel);
        let mut entries: Vec<_> = fs_err::read_dir(&dir)
            .map_err(read_err(&dir))?
            .collect::<Result<_, _>>()
            .map_err(read_err(&dir))?;
        entries.sort_by_key(fs_err::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let name = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
            let ft = meta.file_type();
            let mode = meta.permissions().mode();
            let bytes = name.as_os_str().as_bytes();
            if ft.is_dir() {
                tree.add(
                    bytes,
                    Member::Dir { mode },
                    &mut io::empty(),
                    &read_err(&path),
                )?;
                stack.push(name);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(read_err(&path))?;
                tree.add(
                    bytes,
                    Member::Symlink {
                        target: Some(target.as_os_str().as_bytes().to_vec()),
                    },
                    &mut io::empty(),
                    &read_err(&path),
                )?;
            } else if ft.is_file() {
                let mut f = File::open(&path).map_err(read_err(&path))?;
                let mtime = u64::try_from(meta.mtime()).ok();
                tree.add(
                    bytes,
                    Member::File { mode, mtime },
                    &mut f,
                    &read_err(&path),
                )?;
                reporter.on_progress(Stage::Extract, meta.len());
            } else {
                tree.add(bytes, Member::Special, &mut io::empty(), &read_err(&path))?;
            }
        }
    }
    Ok(())
}

/// One member to write.
pub(super) enum Member {
    File { mode: u32, mtime: Option<u64> },
    Dir { mode: u32 },
    Symlink { target: Option<Vec<u8>> },
    HardLink { target: Vec<u8> },
    Special,
    Unsupported(u8),
}

/// The temporary tree being written.
pub(super) struct Tree {
    root: PathBuf,
    /// Folders known to be real folders of the tree (relative).
    dirs: HashSet<PathBuf>,
    /// Permission bits of folders, applied last (they may forbid writing).
    dir_modes: BTreeMap<PathBuf, u32>,
    /// Regular files written.
    pub files: u64,
}

/// `name` as a relative path inside the tree, or why it is refused. `None`: the root itself.
pub(super) fn member_path(name: &[u8]) -> Result<Option<PathBuf>, Unsafe> {
    if name.starts_with(b"/") {
        return Err(Unsafe::Absolute);
    }
    if name.contains(&0) {
        return Err(Unsafe::BadName);
    }
    let mut out = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(Unsafe::ParentDir),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

impl Tree {
    pub(super) fn new(root: PathBuf) -> Self {
        let mut dirs = HashSet::new();
        dirs.insert(PathBuf::new());
        Self {
            root,
            dirs,
            dir_modes: BTreeMap::new(),
            files: 0,
        }
    }

    fn write_err(&self, rel: &Path) -> impl FnOnce(io::Error) -> UnpackError {
        let path = self.root.join(rel);
        move |source| UnpackError::Write { path, source }
    }

    /// Makes sure every folder above `rel` is a real folder of the tree, creating missing ones.
    fn parents(&mut self, rel: &Path, name: &[u8]) -> Result<(), UnpackError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut sofar = PathBuf::new();
        for c in parent.components() {
            sofar.push(c);
            if self.dirs.contains(&sofar) {
                continue;
            }
            let full = self.root.join(&sofar);
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    let shown = sofar.display().to_string();
                    return Err(unsafe_member(
                        name,
                        if m.file_type().is_symlink() {
                            Unsafe::ThroughSymlink(shown)
                        } else {
                            Unsafe::ThroughFile(shown)
                        },
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&full).map_err(self.write_err(&sofar))?;
                }
                Err(e) => return Err(self.write_err(&sofar)(e)),
            }
            self.dirs.insert(sofar.clone());
        }
        Ok(())
    }

    /// Removes what is at `rel` (a file or link: never a folder, never followed).
    fn clear(&self, rel: &Path, name: &[u8]) -> Result<(), UnpackError> {
        let full = self.root.join(rel);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => Err(unsafe_member(name, Unsafe::ReplacesFolder)),
            Ok(_) => std::fs::remove_file(&full).map_err(self.write_err(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.write_err(rel)(e)),
        }
    }

    /// Writes one member, reading its content from `data`.
    pub(super) fn add(
        &mut self,
        name: &[u8],
        member: Member,
        data: &mut dyn Read,
        read_err: &dyn Fn(io::Error) -> UnpackError,
    ) -> Result<(), UnpackError> {
        let rel = member_path(name).map_err(|r| unsafe_member(name, r))?;
        match member {
            Member::Special => return Err(unsafe_member(name, Unsafe::Special)),
            Member::Unsupported(t) => {
                return Err(unsafe_member(name, Unsafe::UnsupportedType(t as char)));
            }
            _ => {}
        }
        let Some(rel) = rel else {
            // The root folder ("./"): only its mode matters.
            if let Member::Dir { mode } = member {
                self.dir_modes.insert(PathBuf::new(), mode & 0o7777);
                return Ok(());
            }
            return Err(unsafe_member(name, Unsafe::BadName));
        };
        self.parents(&rel, name)?;
        let full = self.root.join(&rel);
        match member {
            Member::Dir { mode } => {
                if !self.dirs.contains(&rel) {
                    match std::fs::symlink_metadata(&full) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            // A link or file of that name: replaced by the folder.
                            std::fs::remove_file(&full).map_err(self.write_err(&rel))?;
                            std::fs::create_dir(&full).map_err(self.write_err(&rel))?;
                        }
                        Err(_) => std::fs::create_dir(&full).map_err(self.write_err(&rel))?,
                    }
                    self.dirs.insert(rel.clone());
                }
                self.dir_modes.insert(rel, mode & 0o7777);
            }
            Member::File { mode, mtime } => {
                self.clear(&rel, name)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&full)
                    .map_err(self.write_err(&rel))?;
                copy(data, &mut f, read_err, self.write_err(&rel))?;
                // No setuid, setgid or sticky bits from an archive.
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(self.write_err(&rel))?;
                if let Some(t) = mtime {
                    let _ = f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t));
                }
                self.files += 1;
            }
            Member::Symlink { target } => {
                let target = target
                    .filter(|t| !t.is_empty() && !t.contains(&0))
                    .ok_or_else(|| unsafe_member(name, Unsafe::BadName))?;
                self.clear(&rel, name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(self.write_err(&rel))?;
            }
            Member::HardLink { target } => {
                let shown = String::from_utf8_lossy(&target).into_owned();
                let outside = || unsafe_member(name, Unsafe::HardLinkOutside(shown.clone()));
                let trel = member_path(&target).ok().flatten().ok_or_else(outside)?;
                if !self.is_tree_file(&trel) || trel == rel {
                    return Err(outside());
                }
                self.clear(&rel, name)?;
                std::fs::hard_link(self.root.join(&trel), &full).map_err(self.write_err(&rel))?;
                self.files += 1;
            }
            Member::Special | Member::Unsupported(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    /// Whether `rel` is a regular file reached through real folders of the tree only.
    fn is_tree_file(&self, rel: &Path) -> bool {
        if let Some(parent) = rel.parent() {
            let mut sofar = PathBuf::new();
            for c in parent.components() {
                sofar.push(c);
                if !self.dirs.contains(&sofar)
                    && !std::fs::symlink_metadata(self.root.join(&sofar)).is_ok_and(|m| m.is_dir())
                {
                    return false;
                }
            }
        }
        std::fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.file_type().is_file())
    }

    /// Applies the folders' permission bits, deepest first; the root gets the archive's mode,
    /// else DEST's own (when it existed, empty), else 0755 less the umask.
    pub(super) fn finish_modes(&self, existing: Option<u32>) -> io::Result<()> {
        let root_mode = self
            .dir_modes
            .get(Path::new(""))
            .copied()
            .or(existing)
            .unwrap_or(0o755 & !crate::pack::archive::umask());
        for (rel, mode) in self.dir_modes.iter().rev() {
            if rel.as_os_str().is_empty() {
                continue;
            }
            let full = self.root.join(rel);
            if std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & 0o777))?;
            }
        }
        std::fs::set_permissions(
            &self.root,
            std::fs::Permissions::from_mode(root_mode & 0o777),
        )
    }
}

/// Copies, telling read errors (a damaged archive) from write errors (a full disk).
fn copy(
    from: &mut dyn Read,
    to: &mut File,
    read_err: &dyn Fn(io::Error) -> UnpackError,
    write_err: impl FnOnce(io::Error) -> UnpackError,
) -> Result<(), UnpackError> {
    use std::io::Write;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            return Err(write_err(e));
        }
    }
}

fn unsafe_member(name: &[u8], reason: Unsafe) -> UnpackError {
    UnpackError::Unsafe {
        member: String::from_utf8_lossy(name).into_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_checked() {
        assert_eq!(member_path(b"./a/b"), Ok(Some(PathBuf::from("a/b"))));
        assert_eq!(member_path(b"./"), Ok(None));
        assert_eq!(member_path(b"a//b/."), Ok(Some(PathBuf::from("a/b"))));
        assert_eq!(member_path(b"/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(member_path(b"a/../../x"), Err(Unsafe::ParentDir));
        assert_eq!(member_path(b"a/.."), Err(Unsafe::ParentDir));
        assert_eq!(member_path(b"a\0b"), Err(Unsafe::BadName));
    }

    #[test]
    fn magic_bytes_decide_the_format() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Ok(Compression::Zstd));
        assert_eq!(sniff(b"BZh91AY"), Ok(Compression::Bzip2));
        assert_eq!(sniff(&[0u8; 512]), Ok(Compression::None));
        let mut h = tar::Header::new_old();
        h.set_path("x").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert_eq!(sniff(h.as_bytes()), Ok(Compression::None));
        assert!(sniff(b"hello").is_err());
        assert!(sniff(&[7u8; 600]).is_err());
    }
}
