//! Walk: what is in a prefix, and what conda knows about it.
//!
//! Reads `conda-meta/*.json` for the managed files (with their placeholders and modes),
//! walks the tree without following symlinks, applies `--include`/`--exclude` in order, and
//! checks what conda-pack checks: managed files present, no editable installs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PackError;
use crate::report::Notice;

/// What conda recorded about one managed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The placeholder the package was built with, if the file holds one.
    pub placeholder: Option<String>,
    /// Whether the placeholder is in a binary file.
    pub binary: bool,
}

/// The managed files of a prefix, from its `conda-meta` records.
#[derive(Debug, Default)]
pub struct Records {
    /// Relative path → what conda knows about it.
    pub files: BTreeMap<String, Managed>,
    /// The packages the records describe, in record file order.
    pub packages: Vec<Recorded>,
}

/// One package installed in a prefix, as its `conda-meta` record describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Recorded {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Build string.
    #[serde(default)]
    pub build: String,
    /// Channel URL.
    #[serde(default)]
    pub channel: Option<String>,
    /// Archive size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(flatten)]
    package: Recorded,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    paths_data: Option<RawPaths>,
}

#[derive(Deserialize)]
struct RawPaths {
    #[serde(default)]
    paths: Vec<RawPath>,
}

#[derive(Deserialize)]
struct RawPath {
    #[serde(rename = "_path")]
    path: String,
    #[serde(default)]
    prefix_placeholder: Option<String>,
    #[serde(default)]
    file_mode: Option<String>,
}

/// The `env_vars` that `conda env config vars set` keeps in `conda-meta/state`, in file
/// order (none when there is no such file).
pub fn state_variables(prefix: &Path) -> Result<Vec<(String, String)>, PackError> {
    let path = prefix.join("conda-meta/state");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = fs_err::read_to_string(&path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| PackError::Record { path, source })?;
    Ok(v.get("env_vars")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads the `conda-meta` records of `prefix` (not envpack's manifest, which a prefix envpack
/// unpacked or wrote with `--format dir` holds beside them).
pub fn read_records(prefix: &Path) -> Result<Records, PackError> {
    let meta = prefix.join("conda-meta");
    if !meta.is_dir() {
        return Err(PackError::NotAnEnvironment {
            prefix: prefix.to_path_buf(),
        });
    }
    let mut names: Vec<String> = fs_err::read_dir(&meta)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| crate::manifest::is_record(&format!("conda-meta/{n}")))
        .collect();
    names.sort();
    let mut records = Records::default();
    for name in names {
        let path = meta.join(&name);
        let text = fs_err::read_to_string(&path)?;
        let raw: RawRecord = serde_json::from_str(&text).map_err(|source| PackError::Record {
            path: path.clone(),
            source,
        })?;
        match raw.paths_data {
            Some(p) if !p.paths.is_empty() => {
                for e in p.paths {
                    let binary = e.file_mode.as_deref() == Some("binary");
                    records.files.insert(
                        e.path,
                        Managed {
                            placeholder: e.prefix_placeholder,
                            binary,
                        },
                    );
                }
            }
            _ => {
                for f in raw.files {
                    records.files.entry(f).or_insert(Managed {
                        placeholder: None,
                        binary: false,
                    });
                }
            }
        }
        records.packages.push(raw.package);
    }
    Ok(records)
}

/// The kind of one tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file of `size` bytes.
    File {
        /// Size on disk.
        size: u64,
        /// Any execute bit set.
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as stored.
        target: PathBuf,
    },
}

/// One entry of the tree, relative to the prefix (`/`-separated).
#[derive(Debug, Clone)]
pub struct Found {
    /// Relative path.
    pub path: String,
    /// What it is.
    pub kind: Kind,
}

/// One `--include` or `--exclude` pattern, applied in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Keep what matches.
    Include(String),
    /// Drop what matches.
    Exclude(String),
    /// Drop what matches, without a word when nothing does (envpack's own output inside
    /// the prefix it packs).
    Omit(String),
}

/// What a walk found, and what it left out that no filter dropped: FIFOs, sockets and devices,
/// which no relocatable environment can carry (the caller says so).
#[derive(Debug)]
pub struct Walked {
    /// The entries, sorted.
    pub found: Vec<Found>,
    /// Special files left out, sorted.
    pub skipped: Vec<String>,
    /// A warning for each `--exclude` that matched nothing.
    pub unmatched: Vec<Notice>,
}

/// Walks `prefix`, sorted, never following symlinks. Entries that the filters drop are left
/// out (a dropped directory drops what is below it unless an include brings it back). A name
/// that is not UTF-8 is an error unless the filters drop it.
pub fn walk(prefix: &Path, filters: &[Filter]) -> Result<Walked, PackError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            prefix.to_path_buf()
        } else {
            prefix.join(&rel)
        };
        let mut children: Vec<(String, std::fs::Metadata)> = Vec::new();
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                let lossy = entry.file_name().to_string_lossy().into_owned();
                let lossy = if rel.is_empty() {
                    lossy
                } else {
                    format!("{rel}/{lossy}")
                };
                if included(&lossy, filters) {
                    return Err(PackError::NonUtf8Path { path: entry.path() });
                }
                continue;
            };
            // `fstatat` on the open folder, not following a symlink: no walk of the whole
            // path for each of an environment's ten thousand entries.
            let meta = entry.metadata()?;
            children.push((name, meta));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in children.into_iter().rev() {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(child.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                let p = prefix.join(&child);
                Kind::Symlink {
                    target: fs_err::read_link(&p)?,
                }
            } else if ft.is_file() {
                Kind::File {
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else {
                // Sockets, fifos, devices: nothing a relocatable environment can carry.
                if included(&child, filters) {
                    skipped.push(child);
                }
                continue;
            };
            out.push(Found { path: child, kind });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort();
    Ok(Walked {
        unmatched: unmatched_excludes(&out, filters),
        found: apply_filters(out, filters),
        skipped,
    })
}

/// Drops what the filters drop from `all` (every entry of a tree, sorted), keeping the
/// directories that lead to kept entries.
#[must_use]
pub fn apply_filters(all: Vec<Found>, filters: &[Filter]) -> Vec<Found> {
    if filters.is_empty() {
        return all;
    }
    let (mut out, dropped): (Vec<Found>, Vec<Found>) =
        all.into_iter().partition(|f| included(&f.path, filters));
    let needed: BTreeSet<String> = out.iter().flat_map(|f| parents(&f.path)).collect();
    out.extend(
        dropped
            .into_iter()
            .filter(|f| f.kind == Kind::Dir && needed.contains(&f.path)),
    );
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The folders above `path`, innermost first.
pub(crate) fn parents(path: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut p = path;
    while let Some(i) = p.rfind('/') {
        p = &p[..i];
        v.push(p.to_string());
    }
    v
}

/// A warning for each `--exclude` that matches nothing in `all` (every entry of the tree):
/// most likely a typo, and the file the user meant to leave out is packed.
#[must_use]
pub fn unmatched_excludes(all: &[Found], filters: &[Filter]) -> Vec<Notice> {
    filters
        .iter()
        .filter_map(|f| match f {
            Filter::Exclude(p) if !all.iter().any(|e| pattern_matches(p, &e.path)) => Some(
                Notice::warning(format!("--exclude {p} matches nothing in the environment")),
            ),
            _ => None,
        })
        .collect()
}

/// Whether `path` survives the filters: each matching filter, in order, decides anew.
#[must_use]
pub fn included(path: &str, filters: &[Filter]) -> bool {
    let mut keep = true;
    for f in filters {
        match f {
            Filter::Include(p) if pattern_matches(p, path) => keep = true,
            Filter::Exclude(p) | Filter::Omit(p) if pattern_matches(p, path) => keep = false,
            _ => {}
        }
    }
    keep
}

/// Matches a pattern the way users expect: `*` and `?` match across `/` as in conda-pack's
/// fnmatch; a pattern that matches a directory matches everything below it; a pattern without
/// `/` also matches any path component's name (`*.pyc`, `__pycache__`).
#[must_use]
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    let mut prefix = path;
    loop {
        if fnmatch(pattern.as_bytes(), prefix.as_bytes()) {
            return true;
        }
        match prefix.rfind('/') {
            Some(i) => prefix = &prefix[..i],
            None => break,
        }
    }
    if !pattern.contains('/') {
        return path
            .split('/')
            .any(|c| fnmatch(pattern.as_bytes(), c.as_bytes()));
    }
    false
}

/// fnmatch with `*`, `?` and `[...]` (`[!...]` negates); `*` matches `/` too.
fn fnmatch(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star_p, mut star_s) = (None, 0);
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star_p = Some(pi);
                    star_s = si;
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&p[pi..], s[si]) {
                        if matched {
                            pi += next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                pi = sp + 1;
                star_s += 1;
                si = star_s;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `p`; returns (matched, class length).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
        first = false;
    }
    None
}

/// Editable pip installs in the tree (`direct_url.json` with `dir_info.editable`, or
/// `.egg-link` files): they point at source trees that are not packed. `read` gives a file's
/// text by its path in the tree.
#[must_use]
pub fn editable_installs(found: &[Found], read: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    for f in found {
        if f.path.ends_with(".dist-info/direct_url.json") {
            if let Some(text) = read(&f.path) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if v["dir_info"]["editable"].as_bool() == Some(true) {
                    let dist = f.path.trim_end_matches("/direct_url.json");
                    out.push(dist.rsplit('/').next().unwrap_or(dist).to_string());
                }
            }
        } else if f.path.ends_with(".egg-link") {
            out.push(f.path.rsplit('/').next().unwrap_or(&f.path).to_string());
        }
    }
    out
}

/// Managed paths that are not in the tree: neither among what the walk `found` nor there to
/// `lstat` (so a symlink such as Python's `lib/python3.1` counts as present whatever it points
/// to).
#[must_use]
pub fn missing_files(prefix: &Path, records: &Records, found: &[Found]) -> Vec<String> {
    let walked: BTreeSet<&str> = found.iter().map(|f| f.path.as_str()).collect();
    records
        .files
        .keys()
        // Looked up on disk only when the walk did not see it: a record may name a path
        // through a symlinked folder, which the walk does not follow.
        .filter(|p| {
            !walked.contains(p.as_str()) && std::fs::symlink_metadata(prefix.join(p)).is_err()
        })
        .cloned()
        .collect()
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A folder.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link with this target.
    Symlink(String),
}

/// A read-only view of an environment's tree: a prefix on disk, or the listing of an archive
/// planned straight from the package cache. The checks run before packing look through it.
pub trait Tree: Sync {
    /// The entry at `rel` (`/`-separated, `""` is the root), a final symlink not followed.
    fn entry(&self, rel: &str) -> Option<Entry>;

    /// The names in the folder at `rel`, sorted (symlinks on the way followed).
    fn children(&self, rel: &str) -> Vec<String>;

    /// What `rel` is once every symlink on the way is followed.
    fn resolve(&self, rel: &str) -> Option<Entry> {
        self.follow(rel).map(|(_, e)| e)
    }

    /// `rel` with every symlink on the way followed (relative ones only, at most 40): its real
    /// path and what is there. `None` when a component is missing or leaves the tree.
    fn follow(&self, rel: &str) -> Option<(String, Entry)> {
        let mut parts: Vec<String> = Vec::new();
        let mut todo: Vec<String> = rel
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut hops = 0;
        let mut last = Entry::Dir;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    parts.pop()?;
                    last = Entry::Dir;
                    continue;
                }
                _ => {}
            }
            parts.push(c);
            match self.entry(&parts.join("/"))? {
                Entry::Symlink(target) => {
                    hops += 1;
                    if hops > 40 || target.starts_with('/') {
                        return None;
                    }
                    parts.pop();
                    todo.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                    last = Entry::Dir;
                }
                e => last = e,
            }
        }
        Some((parts.join("/"), last))
    }

    /// Whether `rel` exists, symlinks followed.
    fn exists(&self, rel: &str) -> bool {
        self.resolve(rel).is_some()
    }

    /// Whether `rel` is a regular file, symlinks followed.
    fn is_file(&self, rel: &str) -> bool {
        self.resolve(rel) == Some(Entry::File)
    }

    /// Whether `rel` is a folder, symlinks followed.
    fn is_dir(&self, rel: &str) -> bool {
        self.resolve(rel) == Some(Entry::Dir)
    }
}

/// A prefix on disk as a [`Tree`].
pub struct PrefixTree<'a>(pub &'a Path);

impl Tree for PrefixTree<'_> {
    fn entry(&self, rel: &str) -> Option<Entry> {
        let p = self.0.join(rel);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        Some(if meta.is_dir() {
            Entry::Dir
        } else if meta.file_type().is_symlink() {
            Entry::Symlink(std::fs::read_link(&p).ok()?.to_string_lossy().into_owned())
        } else {
            Entry::File
        })
    }

    fn children(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.join(rel))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn resolve(&self, rel: &str) -> Option<Entry> {
        let meta = std::fs::metadata(self.0.join(rel)).ok()?;
        Some(if meta.is_dir() {
            Entry::Dir
        } else {
            Entry::File
        })
    }
}

/// The entries of a tree by path, as a [`Tree`].
#[derive(Debug, Default)]
pub struct Listing(pub BTreeMap<String, Entry>);

impl Tree for Listing {
    fn entry(&self, rel: &str) -> Option<Entry> {
        if rel.is_empty() {
            return Some(Entry::Dir);
        }
        self.0.get(rel).cloned()
    }

    fn children(&self, rel: &str) -> Vec<String> {
        // The folder itself, symlinks followed, is needed to list it.
        let Some((base, Entry::Dir)) = self.follow(rel) else {
            return Vec::new();
        };
        let start = if base.is_empty() {
            String::new()
        } else {
            format!("{base}/")
        };
        self.0
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter_map(|(k, _)| {
                let name = &k[start.len()..];
                (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_the_packages_and_not_envpacks_manifest() {
        let prefix = tempfile::tempdir().unwrap();
        let meta = prefix.path().join("conda-meta");
        std::fs::create_dir(&meta).unwrap();
        std::fs::write(
            meta.join("six-1.17.0-py_0.json"),
            r#"{"name": "six", "version": "1.17.0", "build": "py_0", "files": ["a.py"]}"#,
        )
        .unwrap();
        // As a `--format dir` output or an unpacked archive holds it: no name of its own.
        std::fs::write(
            meta.join("envpack.json"),
            r#"{"envpack": "0.1.0", "format": "dir", "packages": [{"name": "six"}]}"#,
        )
        .unwrap();
        let records = read_records(prefix.path()).unwrap();
        let names: Vec<&str> = records.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["six"]);
        assert_eq!(records.files.keys().collect::<Vec<_>>(), ["a.py"]);
    }

    #[test]
    fn missing_files_are_those_neither_walked_nor_on_disk() {
        let prefix = tempfile::tempdir().unwrap();
        let p = prefix.path();
        std::fs::create_dir_all(p.join("conda-meta")).unwrap();
        std::fs::create_dir(p.join("lib")).unwrap();
        std::fs::write(p.join("lib/libfoo.so"), "x").unwrap();
        std::os::unix::fs::symlink("lib", p.join("lib64")).unwrap();
        let mut records = Records::default();
        for path in ["lib/libfoo.so", "lib64/libfoo.so", "lib/gone.so", "lib64"] {
            records.files.insert(
                path.to_string(),
                Managed {
                    placeholder: None,
                    binary: false,
                },
            );
        }
        let walked = walk(p, &[]).unwrap();
        // The path through the symlinked folder is not walked but is there.
        assert!(!walked.found.iter().any(|f| f.path == "lib64/libfoo.so"));
        assert_eq!(missing_files(p, &records, &walked.found), ["lib/gone.so"]);
    }

    #[test]
    fn patterns_match_as_users_expect() {
        assert!(pattern_matches("share/doc/*", "share/doc/x/y"));
        assert!(pattern_matches("share/doc", "share/doc/x/y"));
        assert!(pattern_matches("share/doc/", "share/doc/x"));
        assert!(!pattern_matches("share/doc", "share/docs/x"));
        assert!(pattern_matches(
            "*.pyc",
            "lib/python3.11/__pycache__/a.cpython-311.pyc"
        ));
        assert!(pattern_matches("__pycache__", "lib/x/__pycache__/a.pyc"));
        assert!(pattern_matches(
            "lib/python3.1?/site-packages/*",
            "lib/python3.11/site-packages/six.py"
        ));
        assert!(pattern_matches("bin/[fp]*", "bin/pip"));
        assert!(!pattern_matches("bin/[!fp]*", "bin/pip"));
        assert!(!pattern_matches("*.so", "lib/libz.so.1"));
        assert!(pattern_matches("*.so*", "lib/libz.so.1"));
        assert!(pattern_matches("./include", "include/zlib.h"));
    }

    #[test]
    fn filters_apply_in_order() {
        let f = [
            Filter::Exclude("share/doc/*".into()),
            Filter::Include("share/doc/keep/*".into()),
        ];
        assert!(!included("share/doc/x", &f));
        assert!(included("share/doc/keep/y", &f));
        let g = [
            Filter::Include("share/doc/keep/*".into()),
            Filter::Exclude("share/doc/*".into()),
        ];
        assert!(!included("share/doc/keep/y", &g));
        assert!(included("bin/python", &g));
    }

    #[test]
    fn walk_is_sorted_does_not_follow_links_and_keeps_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("lib/sub")).unwrap();
        std::fs::create_dir_all(p.join("share/doc/x")).unwrap();
        std::fs::write(p.join("lib/sub/b"), "b").unwrap();
        std::fs::write(p.join("lib/a"), "a").unwrap();
        std::fs::write(p.join("share/doc/x/readme"), "r").unwrap();
        std::os::unix::fs::symlink("lib", p.join("lib64")).unwrap();
        let all: Vec<String> = walk(p, &[])
            .unwrap()
            .found
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            all,
            [
                "lib",
                "lib/a",
                "lib/sub",
                "lib/sub/b",
                "lib64",
                "share",
                "share/doc",
                "share/doc/x",
                "share/doc/x/readme"
            ]
        );
        let some: Vec<String> = walk(
            p,
            &[
                Filter::Exclude("*".into()),
                Filter::Include("lib/sub/b".into()),
            ],
        )
        .unwrap()
        .found
        .into_iter()
        .map(|f| f.path)
        .collect();
        assert_eq!(some, ["lib", "lib/sub", "lib/sub/b"]);
    }

    #[test]
    fn special_files_are_reported_and_unreadable_names_need_an_exclude() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("lib")).unwrap();
        std::fs::write(p.join("lib/a"), "a").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p.join("lib/sock")).unwrap();
        let w = walk(p, &[]).unwrap();
        assert_eq!(w.skipped, ["lib/sock"]);
        assert!(
            walk(p, &[Filter::Exclude("sock".into())])
                .unwrap()
                .skipped
                .is_empty()
        );

        let bad = p.join(std::ffi::OsStr::from_bytes(b"lib/bad\xffname"));
        std::fs::write(&bad, "x").unwrap();
        assert!(matches!(
            walk(p, &[]),
            Err(PackError::NonUtf8Path { path }) if path == bad
        ));
        let w = walk(p, &[Filter::Exclude("lib/bad*".into())]).unwrap();
        let names: Vec<&str> = w.found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["lib", "lib/a"]);
    }
}
