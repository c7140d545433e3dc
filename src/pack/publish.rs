//! Putting a complete output in place, and what `--force` may replace.
//!
//! An output is written to a temporary beside it and appears by one rename, only when
//! complete. Without `--force` that rename never replaces anything (`renameat2` with
//! `RENAME_NOREPLACE`): a file created at the output path while envpack ran, or a second run
//! writing the same output, makes this run fail naming the output, and nothing is lost.
//! With `--force` the new output is exchanged with the old one (`RENAME_EXCHANGE`) and only
//! then is the old one removed, so a failure never leaves the user with neither.
//!
//! `--force` replaces a regular file, a symlink, or a folder envpack wrote (a packed
//! environment: `conda-meta/` and `share/envpack/`, possibly below `--arcroot` folders); never
//! a device, FIFO or socket, a folder envpack did not write, or a folder holding an input of
//! the run (the environment file, the packed prefix, a model, the current folder).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::PackError;

/// Why `path` cannot be replaced, if it exists and cannot be.
#[must_use]
pub fn not_replaceable(path: &Path, inputs: &[PathBuf]) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ft = meta.file_type();
    if ft.is_char_device() || ft.is_block_device() {
        return Some("it is a device".into());
    }
    if ft.is_fifo() {
        return Some("it is a FIFO".into());
    }
    if ft.is_socket() {
        return Some("it is a socket".into());
    }
    if ft.is_dir() {
        if let Ok(out) = std::fs::canonicalize(path) {
            for input in inputs {
                if let Ok(input) = std::fs::canonicalize(input)
                    && input.starts_with(&out)
                {
                    return Some(format!("it holds {}", input.display()));
                }
            }
        }
        if !is_envpack_folder(path) {
            return Some("it is a folder envpack did not write".into());
        }
    }
    None
}

/// A packed environment as a folder: `conda-meta/` and `share/envpack/`, at the top or below
/// single folders (`--arcroot`).
fn is_envpack_folder(dir: &Path) -> bool {
    let mut dir = dir.to_path_buf();
    for _ in 0..16 {
        if dir.join("conda-meta").is_dir() && dir.join(super::scripts::DATA_DIR).is_dir() {
            return true;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        let entries: Vec<_> = entries.filter_map(Result::ok).collect();
        match entries.as_slice() {
            [only] if only.file_type().is_ok_and(|t| t.is_dir()) => dir = only.path(),
            _ => return false,
        }
    }
    false
}

/// Moves the complete temporary `tmp` (a file or a folder) onto `out`. Without `force`,
/// fails with [`PackError::OutputExists`] if anything is at `out`; with `force`, replaces
/// what [`not_replaceable`] allows.
pub fn publish(tmp: &Path, out: &Path, force: bool, inputs: &[PathBuf]) -> Result<(), PackError> {
    crate::cleanup::publishing(out, || publish_now(tmp, out, force, inputs))
}

fn publish_now(tmp: &Path, out: &Path, force: bool, inputs: &[PathBuf]) -> Result<(), PackError> {
    let exists = || PackError::OutputExists {
        path: out.to_path_buf(),
    };
    if !force {
        return match renameat_with(CWD, tmp, CWD, out, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => Err(exists()),
            // A file system without RENAME_NOREPLACE: a hard link never replaces either.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => fallback(tmp, out),
            Err(e) => Err(io_error(out, e)),
        };
    }
    if let Some(reason) = not_replaceable(out, inputs) {
        return Err(PackError::NotReplaceable {
            path: out.to_path_buf(),
            reason,
        });
    }
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(tmp, out)
            .map_err(crate::paths::at("failed to rename to", out))
            .map_err(PackError::Io);
    }
    // Both exist: exchange them, then remove the old output, now at the temporary's name.
    match renameat_with(CWD, tmp, CWD, out, RenameFlags::EXCHANGE) {
        Ok(()) => remove_any(tmp),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            // No exchange on this file system: move the old one aside first.
            let aside = tmp.with_extension("old");
            std::fs::rename(out, &aside).map_err(crate::paths::at("failed to rename", out))?;
            if let Err(e) = std::fs::rename(tmp, out) {
                let _ = std::fs::rename(&aside, out);
                return Err(PackError::Io(crate::paths::at("failed to rename to", out)(
                    e,
                )));
            }
            remove_any(&aside)
        }
        Err(e) => Err(io_error(out, e)),
    }
}

fn fallback(tmp: &Path, out: &Path) -> Result<(), PackError> {
    if std::fs::symlink_metadata(tmp).is_ok_and(|m| m.is_dir()) {
        if std::fs::symlink_metadata(out).is_ok() {
            return Err(PackError::OutputExists {
                path: out.to_path_buf(),
            });
        }
        return Ok(std::fs::rename(tmp, out).map_err(crate::paths::at("failed to rename to", out))?);
    }
    match std::fs::hard_link(tmp, out) {
        Ok(()) => Ok(std::fs::remove_file(tmp).map_err(crate::paths::at("failed to remove", tmp))?),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(PackError::OutputExists {
            path: out.to_path_buf(),
        }),
        Err(e) => Err(PackError::Io(crate::paths::at("failed to link", out)(e))),
    }
}

fn remove_any(path: &Path) -> Result<(), PackError> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    Ok(r.map_err(crate::paths::at("failed to remove", path))?)
}

fn io_error(out: &Path, e: rustix::io::Errno) -> PackError {
    PackError::Io(crate::paths::at("failed to rename to", out)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_force_nothing_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, out) = (d.path().join("tmp"), d.path().join("out"));
        std::fs::write(&tmp, "new").unwrap();
        std::fs::write(&out, "theirs").unwrap();
        let e = publish(&tmp, &out, false, &[]).unwrap_err();
        assert!(matches!(e, PackError::OutputExists { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "theirs");
        std::fs::remove_file(&out).unwrap();
        publish(&tmp, &out, false, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        assert!(!tmp.exists());
    }

    #[test]
    fn force_replaces_envpack_folders_but_not_others() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("env");
        std::fs::create_dir_all(out.join("root/conda-meta")).unwrap();
        std::fs::create_dir_all(out.join("root/share/envpack")).unwrap();
        let tmp = d.path().join("tmp");
        std::fs::write(&tmp, "new").unwrap();
        publish(&tmp, &out, true, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        assert!(!tmp.exists());

        let theirs = d.path().join("theirs");
        std::fs::create_dir_all(theirs.join("data")).unwrap();
        std::fs::write(&tmp, "new").unwrap();
        let e = publish(&tmp, &theirs, true, &[]).unwrap_err();
        assert!(e.to_string().contains("envpack did not write"), "{e}");
        assert!(theirs.join("data").is_dir());
    }
}
