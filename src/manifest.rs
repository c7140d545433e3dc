//! The manifest every output carries: `conda-meta/envpack.json`, the first member of an archive
//! (so reading it takes one tar header and its content), or that file in a folder output.
//!
//! It says which envpack wrote the output and from what: a digest of everything that decides
//! the output's bytes (packages, `pip:` lines, variables, the options that change bytes,
//! envpack's version), the platform, the Python, the packages and the format. It holds no time
//! and no path of the machine that wrote it, and its JSON keys are sorted: the same inputs give
//! the same manifest. [`read`] finds it in an output, without reading further than it needs.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest's path inside the environment.
pub const PATH: &str = "conda-meta/envpack.json";

/// The manifest's schema version.
pub const SCHEMA: u32 = 1;

/// The largest manifest [`read`] accepts.
const MAX_SIZE: u64 = 64 << 20;

/// Errors of reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest is there but does not parse.
    #[error("cannot read the envpack manifest of {}", path.display())]
    Parse {
        /// The output.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An I/O error; it names its path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One conda package of the environment.
// Fields in alphabetical order: serde writes them in this order, so the JSON keys are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Build string.
    #[serde(default)]
    pub build: String,
    /// Name.
    pub name: String,
    /// Size of the package archive in bytes (0 when unknown).
    #[serde(default)]
    pub size: u64,
    /// Version.
    #[serde(default)]
    pub version: String,
}

/// What `conda-meta/envpack.json` holds.
// Fields in alphabetical order: serde writes them in this order, so the JSON keys are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Hex SHA-256 of everything that decides the output's bytes: two outputs with the same
    /// digest are the same bytes.
    pub digest: String,
    /// The envpack version that wrote it.
    pub envpack: String,
    /// The output format (`tar-gz`, `tar-zst`, `tar`, `dir`).
    pub format: String,
    /// The conda packages, sorted by name.
    #[serde(default)]
    pub packages: Vec<Package>,
    /// The `pip:` lines of the environment file.
    #[serde(default)]
    pub pip: Vec<String>,
    /// Target platform (`linux-64`, ...).
    pub platform: String,
    /// The Python version (`3.11`), if the environment has Python.
    #[serde(default)]
    pub python: Option<String>,
    /// Schema version of this file ([`SCHEMA`]).
    pub schema: u32,
    /// What was packed: `environment` (an environment file, solved) or `prefix` (an existing
    /// environment, `--prefix`).
    pub source: String,
}

impl Manifest {
    /// Its bytes: pretty JSON with sorted keys and a final newline.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        v.push(b'\n');
        v
    }

    /// `major.minor` of the `python` package, if any.
    #[must_use]
    pub fn python_of(packages: &[Package]) -> Option<String> {
        let p = packages.iter().find(|p| p.name == "python")?;
        let mut parts = p.version.split('.');
        Some(format!("{}.{}", parts.next()?, parts.next()?))
    }
}

/// A digest built line by line: each part is a line of text, parts cannot run into each other.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Adds one part.
    pub fn line(&mut self, part: &str) -> &mut Self {
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part.as_bytes());
        self
    }

    /// Adds raw bytes.
    pub fn bytes(&mut self, part: &[u8]) -> &mut Self {
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part);
        self
    }

    /// The hex digest.
    #[must_use]
    pub fn finish(self) -> String {
        use std::fmt::Write;
        self.0
            .finalize()
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// The compression of a file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// None: a plain tar, or not an archive at all.
    None,
}

/// Opens `path` as a tar stream, decompressing gzip or zstd as its first bytes say.
pub fn open_tar(path: &Path) -> Result<(Compression, Box<dyn Read>), std::io::Error> {
    let mut file = fs_err::File::open(path)?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        let k = file.read(&mut magic[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    file.rewind()?;
    let file = std::io::BufReader::with_capacity(256 * 1024, file);
    Ok(match magic {
        [0x1f, 0x8b, ..] if n >= 2 => (
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(file)),
        ),
        [0x28, 0xb5, 0x2f, 0xfd] => (
            Compression::Zstd,
            Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        ),
        _ => (Compression::None, Box::new(file)),
    })
}

/// Whether an archive member's name is the manifest (at the root, or below one `--arcroot`
/// folder).
#[must_use]
pub fn is_manifest_member(name: &str) -> bool {
    let name = name.strip_prefix("./").unwrap_or(name);
    name == PATH || name.strip_suffix(PATH).is_some_and(|r| r.ends_with('/'))
}

/// Parses manifest bytes read from `path`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, ManifestError> {
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The manifest of an output: a tarball (gzip, zstd or plain tar: its first member) or a
/// folder (its `conda-meta/envpack.json`, or that of its one `--arcroot` folder).
/// `Ok(None)`: `path` does not exist, or it exists and carries no manifest (not written by
/// envpack, an older envpack, conda-pack, or not an archive at all). Reads one tar header
/// and the manifest, never the rest of the archive.
pub fn read(path: &Path) -> Result<Option<Manifest>, ManifestError> {
    let meta = match fs_err::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if meta.is_dir() {
        return read_dir(path);
    }
    let (_, stream) = open_tar(path)?;
    let mut archive = tar::Archive::new(stream);
    // Anything that is not a tar stream carries no manifest.
    let Ok(mut entries) = archive.entries() else {
        return Ok(None);
    };
    let Some(Ok(mut first)) = entries.next() else {
        return Ok(None);
    };
    let is_manifest = first
        .path()
        .ok()
        .is_some_and(|p| is_manifest_member(&p.to_string_lossy()));
    if !is_manifest || first.header().entry_type() != tar::EntryType::Regular {
        return Ok(None);
    }
    if first.size() > MAX_SIZE {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    first
        .read_to_end(&mut bytes)
        .map_err(crate::paths::at("cannot read", path))?;
    parse(&bytes, path).map(Some)
}

fn read_dir(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
    let direct = dir.join(PATH);
    let file = if direct.is_file() {
        Some(direct)
    } else {
        // An `--arcroot` folder: the only entry of the output.
        let entries: Vec<_> = fs_err::read_dir(dir)?.collect::<Result<_, _>>()?;
        match entries.as_slice() {
            [one] if one.path().join(PATH).is_file() => Some(one.path().join(PATH)),
            _ => None,
        }
    };
    let Some(file) = file else {
        return Ok(None);
    };
    let bytes = fs_err::read(&file)?;
    parse(&bytes, &file).map(Some)
}

/// A conda record (`conda-meta/<pkg>.json`) as the manifest and `inspect` need it.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// Name.
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Build string.
    #[serde(default)]
    pub build: String,
    /// Package archive size.
    #[serde(default)]
    pub size: Option<u64>,
    /// The package's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Its SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Its MD5.
    #[serde(default)]
    pub md5: Option<String>,
}

impl Record {
    /// Parses a record; `None` when it is not one.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice(bytes).ok()
    }

    /// What identifies the package (not where it was installed): for digests.
    #[must_use]
    pub fn identity(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.name,
            self.version,
            self.build,
            self.url.as_deref().unwrap_or(""),
            self.sha256.as_deref().unwrap_or(""),
            self.md5.as_deref().unwrap_or("")
        )
    }

    /// Its package, for the manifest.
    #[must_use]
    pub fn package(&self) -> Package {
        Package {
            build: self.build.clone(),
            name: self.name.clone(),
            size: self.size.unwrap_or(0),
            version: self.version.clone(),
        }
    }
}

/// Whether an environment-relative path is a conda record (not the manifest, not `history`).
#[must_use]
pub fn is_record(rel: &str) -> bool {
    rel.strip_prefix("conda-meta/")
        .is_some_and(|n| !n.contains('/') && n.ends_with(".json") && rel != PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            digest: "ab".repeat(32),
            envpack: "0.1.0".into(),
            format: "tar-gz".into(),
            packages: vec![Package {
                build: "h1_0".into(),
                name: "python".into(),
                size: 10,
                version: "3.11.9".into(),
            }],
            pip: vec!["six==1.16.0".into()],
            platform: "linux-64".into(),
            python: Some("3.11".into()),
            schema: SCHEMA,
            source: "environment".into(),
        }
    }

    #[test]
    fn keys_are_sorted_and_the_json_round_trips() {
        let m = manifest();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 9);
        assert_eq!(parse(text.as_bytes(), Path::new("x")).unwrap(), m);
        assert_eq!(Manifest::python_of(&m.packages).as_deref(), Some("3.11"));
    }

    #[test]
    fn the_first_member_is_read_from_every_format_and_foreign_files_have_none() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [(PATH, m.to_bytes()), ("bin/x", b"x".to_vec())] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let plain = tar.into_inner().unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &plain).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(plain.as_slice(), 3).unwrap();
        for (name, bytes) in [("a.tar", &plain), ("a.tar.gz", &gz), ("a.tar.zst", &zst)] {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(read(&p).unwrap(), Some(m.clone()), "{name}");
        }
        let foreign = d.path().join("f.tar.gz");
        std::fs::write(&foreign, "precious").unwrap();
        assert_eq!(read(&foreign).unwrap(), None);
        assert_eq!(read(&d.path().join("missing")).unwrap(), None);
        let dir = d.path().join("out/arcroot/conda-meta");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&d.path().join("out")).unwrap(), None);
        std::fs::write(dir.join("envpack.json"), m.to_bytes()).unwrap();
        assert_eq!(read(&d.path().join("out")).unwrap(), Some(m));
        assert!(is_manifest_member("./arcroot/conda-meta/envpack.json"));
        assert!(!is_manifest_member("xconda-meta/envpack.json"));
        assert!(is_record("conda-meta/numpy-1.26.4-py311_0.json"));
        assert!(!is_record(PATH));
    }
}
