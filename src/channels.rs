//! Channel names to URLs: the channel alias, `defaults`, local paths and mirrors.
//!
//! A channel has two URLs: its *canonical* URL (what conda would call it, recorded in
//! `conda-meta` so the archive does not depend on where packages were fetched from) and its
//! *fetch* URL (the mirror, if one applies). Mirrors redirect by exact URL or by path prefix.

use std::path::{Path, PathBuf};

use url::Url;

use crate::paths::normalize;

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
    Alias {
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
    Mirror {
        /// The entry as given.
        entry: String,
    },
    /// A channel that is neither a name, a URL nor a path.
    #[error("invalid channel `{channel}`")]
    Name {
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
    /// The user's home folder, for `~/` in channel paths.
    home: Option<PathBuf>,
}

impl Default for ChannelMap {
    fn default() -> Self {
        Self {
            alias: Url::parse(DEFAULT_ALIAS).expect("valid default alias"),
            mirrors: Vec::new(),
            home: None,
        }
    }
}

impl ChannelMap {
    /// A map with the given alias (`None`: conda's) and mirror entries (`FROM=TO`).
    /// Relative mirror targets are resolved against `cwd`, `~/` against `home`. When two
    /// entries redirect the same channel, the later one wins (flags come after
    /// `ENVPACK_MIRRORS`, so a flag overrides the variable).
    pub fn new(
        alias: Option<&str>,
        mirrors: &[String],
        cwd: &Path,
        home: Option<&Path>,
    ) -> Result<Self, ChannelError> {
        let alias = match alias {
            Some(a) => {
                let with_slash = if a.ends_with('/') {
                    a.to_string()
                } else {
                    format!("{a}/")
                };
                Url::parse(&with_slash).map_err(|source| ChannelError::Alias {
                    alias: a.to_string(),
                    source,
                })?
            }
            None => Url::parse(DEFAULT_ALIAS).expect("valid default alias"),
        };
        let mut map = Self {
            alias,
            mirrors: Vec::new(),
            home: home.map(Path::to_path_buf),
        };
        for entry in mirrors {
            let (from, to) = entry
                .split_once('=')
                .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                .ok_or_else(|| ChannelError::Mirror {
                    entry: entry.clone(),
                })?;
            let invalid = || ChannelError::Mirror {
                entry: entry.clone(),
            };
            let to = trim_slash(map.to_url(to, cwd).ok_or_else(invalid)?.as_str());
            if from == "defaults" {
                // A mirror of `defaults` holds its channels side by side: TO/main, TO/r.
                for u in DEFAULTS {
                    let name = u.rsplit('/').next().unwrap_or_default();
                    map.add_mirror(Mirror {
                        from: u.to_string(),
                        to: format!("{to}/{name}"),
                    });
                }
            } else {
                let from_url = map.canonical_url(from, cwd).map_err(|_| invalid())?;
                map.add_mirror(Mirror {
                    from: trim_slash(from_url.as_str()),
                    to,
                });
            }
        }
        Ok(map)
    }

    /// Adds a mirror; one for the same channel given earlier is replaced (the last wins).
    fn add_mirror(&mut self, mirror: Mirror) {
        self.mirrors.retain(|m| m.from != mirror.from);
        self.mirrors.push(mirror);
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

    /// Where a canonical package or channel URL is fetched from, if a mirror applies (the
    /// longest matching prefix): (the mirrored URL, the mirror's FROM prefix, its TO prefix).
    /// Locked builds fetch the canonical URLs of a lock file through this.
    #[must_use]
    pub fn mirror_url(&self, canonical: &str) -> Option<(String, String, String)> {
        self.mirrors
            .iter()
            .filter_map(|m| {
                let rest = canonical.strip_prefix(&m.from)?;
                (rest.is_empty() || rest.starts_with('/')).then_some((m, rest))
            })
            .max_by_key(|(m, _)| m.from.len())
            .map(|(m, rest)| (format!("{}{rest}", m.to), m.from.clone(), m.to.clone()))
    }

    /// The channel alias names are relative to.
    #[must_use]
    pub fn alias(&self) -> &Url {
        &self.alias
    }

    /// The mirror URL for `canonical`, if a mirror applies (the longest matching prefix).
    fn mirrored(&self, canonical: &Url) -> Option<Url> {
        let c = trim_slash(canonical.as_str());
        self.mirrors
            .iter()
            .filter_map(|m| {
                let rest = c.strip_prefix(&m.from)?;
                (rest.is_empty() || rest.starts_with('/')).then_some((m, rest))
            })
            .max_by_key(|(m, _)| m.from.len())
            .and_then(|(m, rest)| Url::parse(&format!("{}{rest}/", m.to)).ok())
    }

    /// The canonical URL of a channel name, URL or path.
    fn canonical_url(&self, channel: &str, base_dir: &Path) -> Result<Url, ChannelError> {
        let invalid = || ChannelError::Name {
            channel: channel.to_string(),
        };
        if channel.is_empty() || channel.contains(char::is_whitespace) {
            return Err(invalid());
        }
        if channel.contains("://") {
            return Url::parse(&format!("{}/", trim_slash(channel))).map_err(|_| invalid());
        }
        if is_path_like(channel) {
            let path = self.expand_path(channel, base_dir);
            return Url::from_directory_path(&path).map_err(|()| invalid());
        }
        // A name, possibly with a path (`pytorch/label/nightly`).
        self.alias
            .join(&format!("{}/", channel.trim_matches('/')))
            .map_err(|_| invalid())
    }

    /// A path as written in a channel or mirror entry, made absolute: `~/` is the home
    /// folder, a relative path is relative to `base_dir`.
    fn expand_path(&self, s: &str, base_dir: &Path) -> PathBuf {
        let p = match (s.strip_prefix("~/"), &self.home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => PathBuf::from(s),
        };
        let joined = if p.is_absolute() { p } else { base_dir.join(p) };
        normalize(&joined)
    }

    /// A mirror target: a URL, or a folder.
    fn to_url(&self, s: &str, cwd: &Path) -> Option<Url> {
        if s.contains("://") {
            Url::parse(&format!("{}/", trim_slash(s))).ok()
        } else {
            Url::from_directory_path(self.expand_path(s, cwd)).ok()
        }
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

/// Fetch-URL prefixes mapped back to canonical ones, longest first: records written into the
/// environment name the channel, never the mirror it was fetched from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRewrites(Vec<(String, String)>);

impl UrlRewrites {
    /// The rewrites of the mirrored channels among `channels`.
    #[must_use]
    pub fn new(channels: &[ResolvedChannel]) -> Self {
        Self(canonical_rewrites(channels))
    }

    /// Rewrites from explicit (fetch prefix, canonical prefix) pairs, longest first.
    #[must_use]
    pub fn from_pairs(mut pairs: Vec<(String, String)>) -> Self {
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        Self(pairs)
    }

    /// `url` with a mirror's prefix replaced by its channel's, if one matches.
    #[must_use]
    pub fn apply(&self, url: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(f, _)| url.starts_with(f.as_str()))
            .map(|(f, t)| format!("{t}{}", &url[f.len()..]))
    }

    /// The canonical form of a channel URL, without its trailing slash.
    #[must_use]
    pub fn canonical(&self, url: &str) -> String {
        let trimmed = url.trim_end_matches('/');
        self.apply(trimmed).unwrap_or_else(|| trimmed.to_string())
    }
}

fn canonical_rewrites(channels: &[ResolvedChannel]) -> Vec<(String, String)> {
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

fn trim_slash(s: &str) -> String {
    s.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(alias: Option<&str>, mirrors: &[&str]) -> ChannelMap {
        let m: Vec<String> = mirrors.iter().map(ToString::to_string).collect();
        ChannelMap::new(alias, &m, Path::new("/build"), None).unwrap()
    }

    #[test]
    fn the_last_mirror_of_a_channel_wins_and_the_longest_prefix_applies() {
        let m = map(
            None,
            &[
                "conda-forge=/first",
                "conda-forge=/second",
                "https://conda.anaconda.org=/all",
            ],
        );
        let fetch = |c: &str| m.resolve(c, Path::new("/x")).unwrap()[0].fetch.to_string();
        assert_eq!(fetch("conda-forge"), "file:///second/");
        assert_eq!(fetch("bioconda"), "file:///all/bioconda/");
    }

    #[test]
    fn home_expands_in_channel_paths() {
        let m =
            ChannelMap::new(None, &[], Path::new("/build"), Some(Path::new("/home/u"))).unwrap();
        let c = &m.resolve("~/chan", Path::new("/x")).unwrap()[0];
        assert_eq!(c.canonical.as_str(), "file:///home/u/chan/");
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
            let r = ChannelMap::new(None, &[bad.to_string()], Path::new("/"), None);
            assert!(matches!(r, Err(ChannelError::Mirror { .. })), "{bad}");
        }
    }
}
