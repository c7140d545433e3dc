//! Archive: write the planned members as a deterministic tar stream or a folder, through a
//! temporary file that is renamed into place only when complete.
//!
//! Headers are normalised (owner 0, fixed mtime, modes 0755/0644), members come in plan
//! order, every file is a regular file (never a hard-link entry), long names use GNU
//! long-name records. Bytes stream from the prefix through [`super::relocate`] into the
//! compressor: no file is held in memory.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compress::{Compression, LevelError, ParallelEncoder};
use super::relocate;
use super::{Body, Member, PackError, PackPlan};
use crate::report::{SharedReporter, Stage};

/// The modification time of every member unless `SOURCE_DATE_EPOCH` says otherwise: the
/// archive must not depend on when it was built.
pub const MTIME: u64 = 0;

/// A counting writer that reports progress in bytes of tar stream.
struct Progress<W> {
    inner: W,
    reporter: SharedReporter,
    pending: u64,
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pending += n as u64;
        if self.pending >= 1 << 20 {
            self.reporter.on_progress(Stage::Pack, self.pending);
            self.pending = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the plan as a tar stream compressed with `compression` to `out` (through a
/// temporary file beside it). Returns the archive's size.
///
/// The tar stream is written from one of `pool`'s threads, which compresses blocks too
/// whenever the compression queue is full: `-j N` means N threads in all, and reading,
/// relocating and compressing overlap on them.
pub fn write_tar(
    plan: &PackPlan,
    dest: &Destination<'_>,
    compression: Compression,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<u64, PackError> {
    let out = dest.path;
    let (tmp, _interrupt) = temp_file_beside(out)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(PackError::io(tmp.path()))?;
    let file = Arc::clone(&pool)
        .install(|| write_tar_stream(plan, file, tmp.path(), out, compression, pool, reporter))?;
    file.sync_all().map_err(PackError::io(tmp.path()))?;
    let size = file.metadata().map_err(PackError::io(tmp.path()))?.len();
    set_output_mode(tmp.path())?;
    let tmp = tmp.into_temp_path();
    super::publish::publish(&tmp, out, dest.force, dest.inputs)?;
    // Published: the temporary's name is gone (or holds the replaced output, removed).
    let _ = tmp.keep();
    Ok(size)
}

/// The tar stream of `plan`, compressed, into `file` (the temporary at `path`, to become
/// `out`).
fn write_tar_stream(
    plan: &PackPlan,
    file: File,
    path: &Path,
    out: &Path,
    compression: Compression,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<File, PackError> {
    let encoder = ParallelEncoder::new(BufWriter::with_capacity(1 << 20, file), compression, pool);
    let mut w = Progress {
        inner: encoder,
        reporter: reporter.clone(),
        pending: 0,
    };
    for m in &plan.members {
        write_member(&mut w, plan, m).map_err(|source| {
            // A full disk is the output's problem, not the member's.
            if source.kind() == io::ErrorKind::StorageFull {
                PackError::Io(crate::paths::at("failed to write", out)(source))
            } else {
                PackError::Write {
                    member: m.path.clone(),
                    source,
                }
            }
        })?;
    }
    // End of archive: two zero blocks.
    w.write_all(&[0u8; 1024]).map_err(PackError::io(path))?;
    reporter.on_progress(Stage::Pack, w.pending);
    let buffered = w.inner.finish().map_err(PackError::io(path))?;
    buffered
        .into_inner()
        .map_err(|e| PackError::io(path)(e.into_error()))
}

/// Where an output goes: its path, whether `--force` was given, and the inputs of the run
/// (which `--force` never replaces).
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The output.
    pub path: &'a Path,
    /// Whether what is there may be replaced: `--force`, or an output envpack wrote.
    pub force: bool,
    /// The environment file, the packed prefix, the models, the current folder.
    pub inputs: &'a [PathBuf],
}

/// The folder of `out` and the name prefix of its hidden `.<name>.XXXX.partial` temporary:
/// the output appears by rename only when complete, on the same file system.
fn temp_beside(out: &Path) -> (&Path, String) {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map_or_else(|| "envpack".into(), |n| n.to_string_lossy().into_owned());
    (dir, format!(".{name}."))
}

/// A temporary file beside `out`, to be renamed onto it, removed if the process is
/// interrupted.
pub fn temp_file_beside(
    out: &Path,
) -> std::io::Result<(tempfile::NamedTempFile, crate::cleanup::Guard)> {
    let (dir, prefix) = temp_beside(out);
    crate::cleanup::create(
        || {
            tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".partial")
                .tempfile_in(dir)
        },
        tempfile::NamedTempFile::path,
    )
}

/// A temporary folder beside `out`, to be renamed onto it, removed if the process is
/// interrupted.
pub fn temp_dir_beside(out: &Path) -> std::io::Result<(tempfile::TempDir, crate::cleanup::Guard)> {
    let (dir, prefix) = temp_beside(out);
    crate::cleanup::create(
        || {
            tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".partial")
                .tempdir_in(dir)
        },
        tempfile::TempDir::path,
    )
}

/// 0644 less the umask, as for any file a user creates (never conda-pack's 0600).
pub(crate) fn set_output_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o644 & !umask();
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

pub(crate) fn umask() -> u32 {
    // The umask can only be read by setting it; read it from /proc instead.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The size of the (uncompressed) tar stream [`write_tar`] writes for `plan`: what its
/// progress counts.
#[must_use]
pub fn tar_size(plan: &PackPlan) -> u64 {
    let padded = |n: u64| n.div_ceil(512) * 512;
    let long = |name_len: usize| {
        if name_len > 100 {
            512 + padded(name_len as u64 + 1)
        } else {
            0
        }
    };
    let members: u64 = plan
        .members
        .iter()
        .map(|m| {
            let name = plan.archive_path(&m.path);
            match &m.body {
                Body::Dir => 512 + long(name.len() + 1),
                Body::Symlink(target) => 512 + long(name.len()) + long(target.len()),
                Body::Generated { data, .. } => 512 + long(name.len()) + padded(data.len() as u64),
                Body::File { size, .. } => 512 + long(name.len()) + padded(*size),
            }
        })
        .sum();
    members + 1024
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes a GNU long-name (or long-link) record when `name` does not fit in the header.
fn long_name(w: &mut impl Write, kind: tar::EntryType, name: &[u8]) -> io::Result<()> {
    let mut h = header(kind, 0o644, name.len() as u64 + 1, MTIME);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    w.write_all(h.as_bytes())?;
    w.write_all(name)?;
    w.write_all(&[0])?;
    pad(w, name.len() as u64 + 1)
}

fn pad(w: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem != 0 {
        w.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

fn write_header(
    w: &mut impl Write,
    mut h: tar::Header,
    name: &str,
    link: Option<&str>,
) -> io::Result<()> {
    let name = name.as_bytes();
    if name.len() > 100 {
        long_name(w, tar::EntryType::GNULongName, name)?;
    }
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(link) = link {
        let link = link.as_bytes();
        if link.len() > 100 {
            long_name(w, tar::EntryType::GNULongLink, link)?;
        }
        let n = link.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_cksum();
    w.write_all(h.as_bytes())
}

fn write_member(w: &mut impl Write, plan: &PackPlan, m: &Member) -> io::Result<()> {
    let name = plan.archive_path(&m.path);
    match &m.body {
        Body::Dir => write_header(
            w,
            header(tar::EntryType::Directory, 0o755, 0, plan.mtime),
            &format!("{name}/"),
            None,
        ),
        Body::Symlink(target) => write_header(
            w,
            header(tar::EntryType::Symlink, 0o777, 0, plan.mtime),
            &name,
            Some(target),
        ),
        Body::Generated { data, executable } => {
            write_header(
                w,
                header(
                    tar::EntryType::Regular,
                    mode(*executable),
                    data.len() as u64,
                    plan.mtime,
                ),
                &name,
                None,
            )?;
            w.write_all(data)?;
            pad(w, data.len() as u64)
        }
        Body::File {
            source,
            size,
            executable,
            transform,
        } => {
            write_header(
                w,
                header(
                    tar::EntryType::Regular,
                    mode(*executable),
                    *size,
                    plan.mtime,
                ),
                &name,
                None,
            )?;
            let file = File::open(source)?;
            let mut limited = LimitWriter {
                inner: w,
                left: *size,
            };
            let n = relocate::apply(
                BufReader::with_capacity(256 * 1024, file),
                &mut limited,
                transform,
                &plan.needles,
                plan.archive_prefix.as_bytes(),
            )?;
            if n != *size {
                return Err(io::Error::other(format!(
                    "{} changed while it was packed ({n} bytes instead of {size})",
                    source.display()
                )));
            }
            pad(w, *size)
        }
    }
}

/// Refuses to write more than the header announced (a file that grew while packing).
struct LimitWriter<'a, W> {
    inner: &'a mut W,
    left: u64,
}

impl<W: Write> Write for LimitWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other("a file grew while it was packed"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// Writes the plan as a folder (Triton's folder form), through a temporary folder beside
/// `out`. Files are always copied, never linked: relocating the folder later must not
/// touch the package cache.
pub fn write_dir(
    plan: &PackPlan,
    dest: &Destination<'_>,
    reporter: &SharedReporter,
) -> Result<u64, PackError> {
    use std::os::unix::fs::PermissionsExt;
    let out = dest.path;
    let (tmp, _interrupt) = temp_dir_beside(out)?;
    let mut total = 0u64;
    for m in &plan.members {
        let dest = tmp.path().join(plan.archive_path(&m.path));
        let io_err = |source| PackError::Write {
            member: m.path.clone(),
            source,
        };
        match &m.body {
            Body::Dir => create_dir_below(tmp.path(), &dest).map_err(io_err)?,
            Body::Symlink(target) => std::os::unix::fs::symlink(target, &dest).map_err(io_err)?,
            Body::Generated { data, executable } => {
                // The manifest comes before its folder.
                if let Some(parent) = dest.parent() {
                    create_dir_below(tmp.path(), parent).map_err(io_err)?;
                }
                fs_err::write(&dest, data).map_err(io_err)?;
                fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(mode(*executable)))
                    .map_err(io_err)?;
                total += data.len() as u64;
            }
            Body::File {
                source,
                executable,
                transform,
                size,
            } => {
                let mut w = BufWriter::new(File::create(&dest).map_err(io_err)?);
                relocate::apply(
                    BufReader::new(File::open(source).map_err(io_err)?),
                    &mut w,
                    transform,
                    &plan.needles,
                    plan.archive_prefix.as_bytes(),
                )
                .map_err(io_err)?;
                w.flush().map_err(io_err)?;
                fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(mode(*executable)))
                    .map_err(io_err)?;
                total += size;
                reporter.on_progress(Stage::Pack, *size);
            }
        }
    }
    let kept: PathBuf = tmp.keep();
    if let Err(e) = super::publish::publish(&kept, out, dest.force, dest.inputs) {
        let _ = fs_err::remove_dir_all(&kept);
        return Err(e);
    }
    Ok(total)
}

/// Creates the folder `dir` below `root` with its missing parents, never `root` itself
/// (`create_dir_all` would): once an interrupt has removed the temporary folder `root`, the
/// writing that goes on until the process exits fails instead of making it again.
fn create_dir_below(root: &Path, dir: &Path) -> std::io::Result<()> {
    let below = dir.strip_prefix(root).map_err(|_| {
        std::io::Error::other(format!("{} is not below {}", dir.display(), root.display()))
    })?;
    let mut path = root.to_path_buf();
    for part in below.components() {
        path.push(part);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists || !path.is_dir() => {
                return Err(crate::paths::at("failed to create directory", &path)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The compression of a format at `level` (its default if `None`; `None` for a folder), or
/// the error saying the format's range.
pub fn compression_for(
    format: super::Format,
    level: Option<i32>,
) -> Result<Option<Compression>, LevelError> {
    Ok(match format {
        super::Format::TarGz => {
            Some(level.map_or(Ok(Compression::gzip()), Compression::gzip_level)?)
        }
        super::Format::TarZst => {
            Some(level.map_or(Ok(Compression::zstd()), Compression::zstd_level)?)
        }
        super::Format::Tar => Some(Compression::None),
        super::Format::Dir => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::NoopReporter;

    #[test]
    fn folders_are_made_below_the_temporary_never_the_temporary_itself() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join(".out.abc.partial");
        std::fs::create_dir(&root).unwrap();
        create_dir_below(&root, &root.join("lib/python3.11")).unwrap();
        create_dir_below(&root, &root.join("lib")).unwrap();
        assert!(root.join("lib/python3.11").is_dir());
        // Removed by an interrupt: writing on fails, and leaves nothing.
        std::fs::remove_dir_all(&root).unwrap();
        let e = create_dir_below(&root, &root.join("share/doc")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert!(!root.exists());
    }

    #[test]
    fn tar_size_is_the_size_of_the_stream() {
        let d = tempfile::tempdir().unwrap();
        let prefix = d.path().join("env");
        let long_dir = format!("lib/{}", "d".repeat(120));
        std::fs::create_dir_all(prefix.join("conda-meta")).unwrap();
        std::fs::create_dir_all(prefix.join(&long_dir)).unwrap();
        std::fs::write(
            prefix.join(format!("{long_dir}/{}", "f".repeat(90))),
            vec![7u8; 1000],
        )
        .unwrap();
        std::fs::write(prefix.join("small"), "x").unwrap();
        std::os::unix::fs::symlink(format!("../{}", "t".repeat(150)), prefix.join("lib/link"))
            .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let reporter: SharedReporter = Arc::new(NoopReporter);
        let plan = super::super::plan(
            &prefix,
            &super::super::PackOptions::default(),
            &pool,
            &reporter,
        )
        .unwrap();
        let out = d.path().join("out.tar");
        let dest = Destination {
            path: &out,
            force: false,
            inputs: &[],
        };
        let size = write_tar(&plan, &dest, Compression::None, Arc::new(pool), &reporter).unwrap();
        assert_eq!(size, tar_size(&plan));
        assert_eq!(size % 512, 0);
    }
}
