//! Channel names to URLs: the channel alias, `defaults`, local paths and mirrors.
//!
//! A channel has two URLs: its *canonical* URL (what conda would call it, recorded in
//! `conda-meta` so the archive does not depend on where packages were fetched from) and its
//! *fetch* URL (the mirror, if one applies). Mirrors redirect by exact URL or by path prefix.

use std::path::{Path, PathBuf};

use url::Url;

/// The channels conda means by `defaults` on Linux.
pub const DEFAULTS: [&str; 2] = [
    "https://repo.anaconda.com/pkgs/main",
    "https://repo.anaconda.com/pkgs/r",
];

/// conda's default channel alias.
pub const DEFAULT_ALIAS: &str = "https://conda.anaconda.org/";

/// Errors of channel resolution.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A channel alias that is not an absolute URL.
    #[error("invalid channel alias `{alias}`")]
    InvalidAlias {
        /// The alias as given.
        alias: String,
        /// Why it did not parse.
        #[source]
        source: url::ParseError,
    },
    /// A `--mirror` or `ENVPACK_MIRRORS` entry that is not `FROM=TO`.
    #[error(
        "invalid mirror `{entry}`: expected FROM=TO, FROM a channel name or URL, TO a URL or path"
    )]
    InvalidMirror {
        /// The entry as given.
        entry: String,
    },
    /// A channel that is neither a name, a URL nor a path.
    #[error("invalid channel `{channel}`")]
    InvalidChannel {
        /// The channel as written.
        channel: String,
    },
}

/// One redirect: channels at or below `from` are fetched from `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Canonical URL (or URL prefix) being redirected, without trailing slash.
    pub from: String,
    /// Where to fetch instead, without trailing slash.
    pub to: String,
}

/// A channel resolved to its two URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChannel {
    /// The channel as the user wrote it (`conda-forge`, `./local`, a URL).
    pub name: String,
    /// What conda would call it; recorded in the environment.
    pub canonical: Url,
    /// Where it is fetched from (the canonical URL unless a mirror applies).
    pub fetch: Url,
}

/// How channel names map to URLs.
#[derive(Debug, Clone)]
pub struct ChannelMap {
    alias: Url,
    mirrors: Vec<Mirror>,
}

impl Default for ChannelMap {
    fn default() -> Self {
        Self {
            alias: Url::parse(DEFAULT_ALIAS).expect("valid default alias"),
            mirrors: Vec::new(),
        }
    }
}

impl ChannelMap {
    /// A map with the given alias (`None`: conda's) and mirror entries (`FROM=TO`).
    /// Relative mirror targets are resolved against `cwd`.
    pub fn new(alias: Option<&str>, mirrors: &[String], cwd: &Path) -> Result<Self, ChannelError> {
        let alias = match alias {
            Some(a) => {
                let with_slash = if a.ends_with('/') {
                    a.to_string()
                } else {
                    format!("{a}/")
                };
                Url::parse(&with_slash).map_err(|source| ChannelError::InvalidAlias {
                    alias: a.to_string(),
                    source,
                })?
            }
            None => Url::parse(DEFAULT_ALIAS).expect("valid default alias"),
        };
        let mut map = Self {
            alias,
            mirrors: Vec::new(),
        };
        for entry in mirrors {
            let (from, to) = entry
                .split_once('=')
                .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                .ok_or_else(|| ChannelError::InvalidMirror {
                    entry: entry.clone(),
                })?;
            let invalid = || ChannelError::InvalidMirror {
                entry: entry.clone(),
            };
            let to = trim_slash(to_url(to, cwd).ok_or_else(invalid)?.as_str());
            if from == "defaults" {
                // A mirror of `defaults` holds its channels side by side: TO/main, TO/r.
                for u in DEFAULTS {
                    let name = u.rsplit('/').next().unwrap_or_default();
                    map.mirrors.push(Mirror {
                        from: u.to_string(),
                        to: format!("{to}/{name}"),
                    });
                }
            } else {
                let from_url = map.canonical_url(from, cwd).map_err(|_| invalid())?;
                map.mirrors.push(Mirror {
                    from: trim_slash(from_url.as_str()),
                    to,
                });
            }
        }
        Ok(map)
    }

    /// The mirrors, in the order they are tried (first match wins).
    #[must_use]
    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// Resolves one `channels:` entry. `defaults` yields two channels; `base_dir` anchors
    /// relative paths (the environment file's folder).
    pub fn resolve(
        &self,
        channel: &str,
        base_dir: &Path,
    ) -> Result<Vec<ResolvedChannel>, ChannelError> {
        if channel == "defaults" {
            return Ok(DEFAULTS
                .iter()
                .map(|u| self.with_fetch(channel, defaults_url(u)))
                .collect());
        }
        let canonical = self.canonical_url(channel, base_dir)?;
        Ok(vec![self.with_fetch(channel, canonical)])
    }

    fn with_fetch(&self, name: &str, canonical: Url) -> ResolvedChannel {
        let fetch = self
            .mirrored(&canonical)
            .unwrap_or_else(|| canonical.clone());
        ResolvedChannel {
            name: name.to_string(),
            canonical,
            fetch,
        }
    }

    /// The mirror URL for `canonical`, if a mirror applies.
    fn mirrored(&self, canonical: &Url) -> Option<Url> {
        let c = trim_slash(canonical.as_str());
        self.mirrors.iter().find_map(|m| {
            let rest = c.strip_prefix(&m.from)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            Url::parse(&format!("{}{rest}/", m.to)).ok()
        })
    }

    /// The canonical URL of a channel name, URL or path.
    fn canonical_url(&self, channel: &str, base_dir: &Path) -> Result<Url, ChannelError> {
        let invalid = || ChannelError::InvalidChannel {
            channel: channel.to_string(),
        };
        if channel.is_empty() || channel.contains(char::is_whitespace) {
            return Err(invalid());
        }
        if channel.contains("://") {
            return Url::parse(&format!("{}/", trim_slash(channel))).map_err(|_| invalid());
        }
        if is_path_like(channel) {
            let path = expand_path(channel, base_dir);
            return Url::from_directory_path(&path).map_err(|()| invalid());
        }
        // A name, possibly with a path (`pytorch/label/nightly`).
        self.alias
            .join(&format!("{}/", channel.trim_matches('/')))
            .map_err(|_| invalid())
    }

    /// The canonical URL for the channel part of a `channel::package` spec.
    pub fn spec_channel(
        &self,
        channel: &str,
        base_dir: &Path,
    ) -> Result<ResolvedChannel, ChannelError> {
        let canonical = self.canonical_url(channel, base_dir)?;
        Ok(self.with_fetch(channel, canonical))
    }
}

/// URL rewrites from fetch URLs back to canonical ones, for records written into the
/// environment. Longest prefixes first.
#[must_use]
pub fn canonical_rewrites(channels: &[ResolvedChannel]) -> Vec<(String, String)> {
    let mut rewrites: Vec<(String, String)> = channels
        .iter()
        .filter(|c| c.fetch != c.canonical)
        .map(|c| {
            (
                trim_slash(c.fetch.as_str()),
                trim_slash(c.canonical.as_str()),
            )
        })
        .collect();
    rewrites.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
    rewrites.dedup();
    rewrites
}

fn defaults_url(u: &str) -> Url {
    Url::parse(&format!("{u}/")).expect("valid defaults URL")
}

fn is_path_like(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s == "."
        || s == ".."
}

fn expand_path(s: &str, base_dir: &Path) -> PathBuf {
    let p = if let Some(rest) = s.strip_prefix("~/") {
        std::env::var_os("HOME").map_or_else(|| PathBuf::from(s), |h| PathBuf::from(h).join(rest))
    } else {
        PathBuf::from(s)
    };
    let joined = if p.is_absolute() { p } else { base_dir.join(p) };
    normalize(&joined)
}

/// Lexical normalisation (`a/./b/../c` to `a/c`), without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn to_url(s: &str, cwd: &Path) -> Option<Url> {
    if s.contains("://") {
        Url::parse(&format!("{}/", trim_slash(s))).ok()
    } else {
        Url::from_directory_path(expand_path(s, cwd)).ok()
    }
}

fn trim_slash(s: &str) -> String {
    s.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(alias: Option<&str>, mirrors: &[&str]) -> ChannelMap {
        let m: Vec<String> = mirrors.iter().map(ToString::to_string).collect();
        ChannelMap::new(alias, &m, Path::new("/build")).unwrap()
    }

    #[test]
    fn names_use_the_alias() {
        let c = &map(None, &[])
            .resolve("conda-forge", Path::new("/x"))
            .unwrap()[0];
        assert_eq!(
            c.canonical.as_str(),
            "https://conda.anaconda.org/conda-forge/"
        );
        assert_eq!(c.fetch, c.canonical);
        let c = &map(Some("https://repo.example/api/conda"), &[])
            .resolve("conda-forge", Path::new("/x"))
            .unwrap()[0];
        assert_eq!(
            c.canonical.as_str(),
            "https://repo.example/api/conda/conda-forge/"
        );
    }

    #[test]
    fn defaults_maps_to_main_and_r() {
        let cs = map(None, &[]).resolve("defaults", Path::new("/x")).unwrap();
        let urls: Vec<&str> = cs.iter().map(|c| c.canonical.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://repo.anaconda.com/pkgs/main/",
                "https://repo.anaconda.com/pkgs/r/"
            ]
        );
    }

    #[test]
    fn relative_paths_are_anchored_at_the_file() {
        let c = &map(None, &[])
            .resolve("./chan", Path::new("/models/a"))
            .unwrap()[0];
        assert_eq!(c.canonical.as_str(), "file:///models/a/chan/");
        let c = &map(None, &[])
            .resolve("../chan", Path::new("/models/a"))
            .unwrap()[0];
        assert_eq!(c.canonical.as_str(), "file:///models/chan/");
        let c = &map(None, &[])
            .resolve("file:///srv/c", Path::new("/models/a"))
            .unwrap()[0];
        assert_eq!(c.canonical.as_str(), "file:///srv/c/");
    }

    #[test]
    fn mirrors_by_name_url_and_prefix() {
        let m = map(
            None,
            &[
                "conda-forge=file:///srv/cf",
                "https://repo.anaconda.com/pkgs=https://mirror.example/anaconda",
            ],
        );
        let c = &m.resolve("conda-forge", Path::new("/x")).unwrap()[0];
        assert_eq!(c.fetch.as_str(), "file:///srv/cf/");
        assert_eq!(
            c.canonical.as_str(),
            "https://conda.anaconda.org/conda-forge/"
        );
        let cs = m.resolve("defaults", Path::new("/x")).unwrap();
        assert_eq!(
            cs[0].fetch.as_str(),
            "https://mirror.example/anaconda/main/"
        );
        // A prefix only matches at a path boundary.
        let c = &m.resolve("conda-forge-extra", Path::new("/x")).unwrap()[0];
        assert_eq!(c.fetch, c.canonical);
        let rewrites = canonical_rewrites(&[
            c.clone(),
            m.resolve("conda-forge", Path::new("/x")).unwrap()[0].clone(),
        ]);
        assert_eq!(
            rewrites,
            [(
                "file:///srv/cf".to_string(),
                "https://conda.anaconda.org/conda-forge".to_string()
            )]
        );
    }

    #[test]
    fn a_defaults_mirror_holds_main_and_r() {
        let m = map(None, &["defaults=https://mirror.example/anaconda/"]);
        let cs = m.resolve("defaults", Path::new("/x")).unwrap();
        let fetch: Vec<&str> = cs.iter().map(|c| c.fetch.as_str()).collect();
        assert_eq!(
            fetch,
            [
                "https://mirror.example/anaconda/main/",
                "https://mirror.example/anaconda/r/"
            ]
        );
    }

    #[test]
    fn mirror_to_a_relative_path() {
        let m = map(None, &["conda-forge=./mirror"]);
        let c = &m.resolve("conda-forge", Path::new("/x")).unwrap()[0];
        assert_eq!(c.fetch.as_str(), "file:///build/mirror/");
    }

    #[test]
    fn bad_mirrors_are_errors() {
        for bad in ["conda-forge", "=x", "conda-forge="] {
            let r = ChannelMap::new(None, &[bad.to_string()], Path::new("/"));
            assert!(
                matches!(r, Err(ChannelError::InvalidMirror { .. })),
                "{bad}"
            );
        }
    }
}
