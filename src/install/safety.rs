//! Packages are not trusted input: before the installer writes (or removes) anything, every
//! path a package lists (`info/paths.json`, or `info/files` for old packages) and every
//! symlink it ships must stay inside the environment.
//!
//! A path is refused when it is empty, absolute, holds `..` or a NUL, or, once the symlinks of
//! all the packages are followed (a folder one package makes a symlink is where another
//! package's files land), leaves the prefix. A symlink's target is refused when it is absolute
//! or resolves outside the prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::InstallError;

/// At most this many symlinks are followed to resolve one path (as Linux's `MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

#[derive(Deserialize)]
struct PathsJson {
    paths: Vec<PathEntry>,
}

#[derive(Deserialize)]
struct PathEntry {
    #[serde(rename = "_path")]
    path: String,
    #[serde(default)]
    path_type: String,
}

/// One package's listed paths: (path, whether it is a symlink).
type Listing = Vec<(String, bool)>;

/// Checks the extracted packages `(name, folder)`; the first unsafe path is the error.
pub fn check_packages(packages: &[(String, PathBuf)]) -> Result<(), InstallError> {
    let mut listings = Vec::with_capacity(packages.len());
    // Every symlink of every package: path → target.
    let mut links: HashMap<String, String> = HashMap::new();
    for (name, folder) in packages {
        let listing = read_listing(name, folder)?;
        for (path, is_link) in &listing {
            check_lexically(path).map_err(|reason| unsafe_path(name, path, reason))?;
            let on_disk = folder.join(path);
            let is_link = *is_link
                || std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.file_type().is_symlink());
            if is_link && let Ok(target) = std::fs::read_link(&on_disk) {
                let Some(target) = target.to_str() else {
                    return Err(unsafe_path(
                        name,
                        path,
                        "is a symlink to a non-UTF-8 name".into(),
                    ));
                };
                if target.starts_with('/') {
                    return Err(unsafe_path(
                        name,
                        path,
                        format!("is a symlink to the absolute path {target:?}"),
                    ));
                }
                links.insert(path.clone(), target.to_string());
            }
        }
        listings.push((name, listing));
    }
    for (name, listing) in &listings {
        for (path, _) in listing {
            // Where the entry itself lands: its folders followed through every symlink.
            resolve(path, &links, false).map_err(|reason| unsafe_path(name, path, reason))?;
            if let Some(target) = links.get(path) {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                let joined = if parent.is_empty() {
                    target.clone()
                } else {
                    format!("{parent}/{target}")
                };
                resolve(&joined, &links, true).map_err(|_| {
                    unsafe_path(
                        name,
                        path,
                        format!("is a symlink to {target:?}, outside the environment"),
                    )
                })?;
            }
        }
    }
    Ok(())
}

fn unsafe_path(package: &str, path: &str, reason: String) -> InstallError {
    InstallError::UnsafePath {
        package: package.to_string(),
        path: path.to_string(),
        reason,
    }
}

/// The paths a package lists: `info/paths.json`, else `info/files`.
fn read_listing(name: &str, folder: &Path) -> Result<Listing, InstallError> {
    let json = folder.join("info/paths.json");
    match fs_err::read(&json) {
        Ok(bytes) => {
            let parsed: PathsJson =
                serde_json::from_slice(&bytes).map_err(|source| InstallError::BadPathsFile {
                    package: name.to_string(),
                    file: "info/paths.json",
                    source,
                })?;
            Ok(parsed
                .paths
                .into_iter()
                .map(|e| (e.path, e.path_type == "softlink"))
                .collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match fs_err::read_to_string(folder.join("info/files")) {
                Ok(text) => Ok(text
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| (l.to_string(), false))
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A listed path must be a plain relative path.
fn check_lexically(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.starts_with('/') {
        return Err("is absolute".into());
    }
    if path.contains('\0') {
        return Err("holds a NUL character".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("leaves the environment (`..`)".into());
    }
    Ok(())
}

/// Resolves `path` (relative to the prefix) through the packages' `links`, lexically: `Err`
/// when it leaves the prefix. The last component is followed only with `follow_last`.
fn resolve(path: &str, links: &HashMap<String, String>, follow_last: bool) -> Result<(), String> {
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut out: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("leaves the environment through a symlink".into());
                }
            }
            _ => {
                out.push(c);
                let last = todo.is_empty();
                if (!last || follow_last)
                    && let Some(target) = links.get(&out.join("/"))
                {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err("goes through too many symlinks".into());
                    }
                    if target.starts_with('/') {
                        return Err(format!("goes through a symlink to {target:?}"));
                    }
                    out.pop();
                    todo.extend(target.split('/').rev().map(str::to_string));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    #[test]
    fn plain_paths_pass_and_escapes_are_refused() {
        assert!(check_lexically("lib/python3.11/os.py").is_ok());
        for bad in ["", "/etc/passwd", "../victim", "lib/../../x", "a\0b"] {
            assert!(check_lexically(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlink_chains_are_followed() {
        let l = links(&[
            ("lib/python3.1", "python3.11"),
            ("deep/er", "."),
            ("up", ".."),
        ]);
        assert!(resolve("lib/python3.1/site.py", &l, false).is_ok());
        assert!(resolve("lib/python3.1", &l, true).is_ok());
        // deep/er is deep itself: deep/er/../../q is the prefix's parent.
        assert!(resolve("deep/er/../../q", &l, true).is_err());
        assert!(resolve("up/victim", &l, false).is_err());
        // The link itself may sit at `up`; only following it escapes.
        assert!(resolve("up", &l, false).is_ok());
        let cycle = links(&[("a", "b"), ("b", "a")]);
        assert!(resolve("a/x", &cycle, false).is_err());
    }
}
