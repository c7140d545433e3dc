//! Path helpers shared by the stages: lexical normalisation, and I/O errors that name the
//! path where the error itself does not.
//!
//! `fs_err` and `tempfile` put the path into their errors already; the few calls that do not
//! (a temporary persisted, a symlink made with `std`) go through [`at`], so every I/O error
//! the user sees names its path exactly once.

use std::path::{Component, Path, PathBuf};

/// Lexical normalisation (`a/./b/../c` to `a/c`), without touching the file system.
#[must_use]
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The path of `to` relative to the folder `from` (both absolute), with `..` where `to` is not
/// below `from`; lexical, like the paths a config file holds.
#[must_use]
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (normalize(from), normalize(to));
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}

/// An I/O error on a path, in the shape `fs_err` gives its own.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
struct PathError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Maps an I/O error of `op` ("failed to write", ...) on `path` to one that names the path.
pub fn at<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> std::io::Error + 'a {
    move |source| {
        std::io::Error::new(
            source.kind(),
            PathError {
                op,
                path: path.to_path_buf(),
                source,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("a/b/../../c")), Path::new("c"));
    }

    #[test]
    fn relative_paths_climb_with_dot_dot() {
        assert_eq!(
            relative(Path::new("/r/models/a"), Path::new("/r/models/env.tar.gz")),
            Path::new("../env.tar.gz")
        );
        assert_eq!(
            relative(Path::new("/r/models/g/c"), Path::new("/r/envs/e")),
            Path::new("../../../envs/e")
        );
        assert_eq!(
            relative(Path::new("/r/m"), Path::new("/r/m/x.tar")),
            Path::new("x.tar")
        );
    }

    #[test]
    fn errors_name_their_path_once() {
        let e = at("failed to persist", Path::new("/x/y"))(std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "failed to persist /x/y");
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some("boom".to_string())
        );
    }
}
