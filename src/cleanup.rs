//! Temporary files and folders to remove if the process is interrupted.
//!
//! Partial outputs and staging prefixes are normally removed when their owners are dropped;
//! an interrupt (Ctrl-C, `docker stop`) ends the process without drops. Each temporary is
//! registered here while it exists, and the binary's signal handler calls [`remove_all`]
//! before exiting, so an interrupted pack leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Keeps a path registered until dropped.
#[derive(Debug)]
pub struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTERED.lock()
            && let Some(i) = r.iter().position(|p| p == &self.0)
        {
            r.swap_remove(i);
        }
    }
}

/// Registers `path` (a file or a folder) for removal on interrupt.
#[must_use]
pub fn register(path: &Path) -> Guard {
    if let Ok(mut r) = REGISTERED.lock() {
        r.push(path.to_path_buf());
    }
    Guard(path.to_path_buf())
}

/// Removes every registered path (called on interrupt).
pub fn remove_all() {
    let paths = REGISTERED.lock().map(|r| r.clone()).unwrap_or_default();
    for p in paths {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&p);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_paths_are_removed_until_their_guard_drops() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("partial");
        let dir = d.path().join("staging");
        std::fs::write(&file, "x").unwrap();
        std::fs::create_dir_all(dir.join("env/bin")).unwrap();
        let kept = d.path().join("kept");
        std::fs::write(&kept, "x").unwrap();
        let g1 = register(&file);
        let _g2 = register(&dir);
        drop(register(&kept));
        remove_all();
        assert!(!file.exists() && !dir.exists());
        assert!(kept.exists(), "an unregistered path was removed");
        drop(g1);
    }
}
