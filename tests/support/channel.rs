//! Small conda packages and a channel, built at test time.
//!
//! A [`Package`] is written in either format (`.conda` or `.tar.bz2`) with `info/index.json`,
//! `info/paths.json` (placeholders, file modes, symlinks) and, for `noarch: python`,
//! `info/link.json` with entry points. [`Channel::index`] writes `repodata.json` for
//! `linux-64` and `noarch`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rattler_conda_types::compression_level::CompressionLevel;
use rattler_package_streaming::write::{write_conda_package, write_tar_bz2_package};
use serde_json::{Value, json};

/// A placeholder of the usual conda-build length (255 characters).
pub fn long_placeholder() -> String {
    let base = "/home/conda/feedstock_root/build_artifacts/pkg_1700000000000/_h_env_placehold";
    let mut s = base.to_string();
    while s.len() < 255 {
        s.push_str("_placehold");
    }
    s.truncate(255);
    s
}

/// How a file holds the placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Text replacement.
    Text,
    /// C-string replacement.
    Binary,
}

/// One file of a package.
#[derive(Clone, Debug)]
pub struct PkgFile {
    pub path: String,
    pub data: Vec<u8>,
    pub executable: bool,
    pub prefix: Option<(Prefix, String)>,
    pub symlink: Option<String>,
}

/// A package to build.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub build: String,
    pub depends: Vec<String>,
    pub noarch_python: bool,
    pub entry_points: Vec<String>,
    pub files: Vec<PkgFile>,
    pub tar_bz2: bool,
    /// Written at the format's lowest compression level ([`Package::fast`]).
    pub fast: bool,
    /// Extra `info/paths.json` entries, written as given (hostile packages).
    pub raw_entries: Vec<Value>,
}

impl Package {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            build: "0".into(),
            depends: Vec::new(),
            noarch_python: false,
            entry_points: Vec::new(),
            files: Vec::new(),
            tar_bz2: false,
            fast: false,
            raw_entries: Vec::new(),
        }
    }
    pub fn depends(mut self, d: &str) -> Self {
        self.depends.push(d.into());
        self
    }
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.files.push(PkgFile {
            path: path.into(),
            data: data.into(),
            executable: false,
            prefix: None,
            symlink: None,
        });
        self
    }
    pub fn exe(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.files.push(PkgFile {
            path: path.into(),
            data: data.into(),
            executable: true,
            prefix: None,
            symlink: None,
        });
        self
    }
    /// A file holding `placeholder` (its content built by `data(placeholder)`).
    pub fn with_prefix(
        mut self,
        path: &str,
        mode: Prefix,
        placeholder: &str,
        executable: bool,
        data: impl FnOnce(&str) -> Vec<u8>,
    ) -> Self {
        self.files.push(PkgFile {
            path: path.into(),
            data: data(placeholder),
            executable,
            prefix: Some((mode, placeholder.into())),
            symlink: None,
        });
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.files.push(PkgFile {
            path: path.into(),
            data: Vec::new(),
            executable: false,
            prefix: None,
            symlink: Some(target.into()),
        });
        self
    }
    pub fn noarch_python(mut self, entry_points: &[&str]) -> Self {
        self.noarch_python = true;
        self.entry_points = entry_points.iter().map(ToString::to_string).collect();
        self
    }
    /// An `info/paths.json` entry written as given, whatever it says (no file behind it).
    pub fn raw_entry(mut self, entry: Value) -> Self {
        self.raw_entries.push(entry);
        self
    }
    pub fn tar_bz2(mut self) -> Self {
        self.tar_bz2 = true;
        self
    }
    /// Written at the lowest compression level: for large payloads that do not compress,
    /// on which the default level (zstd 15) spends seconds.
    pub fn fast(mut self) -> Self {
        self.fast = true;
        self
    }
    pub fn subdir(&self) -> &'static str {
        if self.noarch_python {
            "noarch"
        } else {
            "linux-64"
        }
    }
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}{}",
            self.name,
            self.version,
            self.build,
            if self.tar_bz2 { ".tar.bz2" } else { ".conda" }
        )
    }

    /// Writes the package into `channel/<subdir>/`.
    pub fn write(&self, channel: &Path) -> PathBuf {
        let src = tempfile::tempdir().unwrap();
        let base = src.path();
        let mut paths = Vec::new();
        let mut entries = Vec::new();
        for f in &self.files {
            let p = base.join(&f.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if let Some(t) = &f.symlink {
                std::os::unix::fs::symlink(t, &p).unwrap();
                entries.push(json!({"_path": f.path, "path_type": "softlink"}));
            } else {
                std::fs::write(&p, &f.data).unwrap();
                let mode = if f.executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .unwrap();
                let mut e = json!({
                    "_path": f.path,
                    "path_type": "hardlink",
                    "sha256": super::sha256_hex(&f.data),
                    "size_in_bytes": f.data.len(),
                });
                if let Some((m, ph)) = &f.prefix {
                    e["prefix_placeholder"] = json!(ph);
                    e["file_mode"] = json!(if *m == Prefix::Binary {
                        "binary"
                    } else {
                        "text"
                    });
                }
                entries.push(e);
            }
            paths.push(p);
        }
        entries.extend(self.raw_entries.iter().cloned());
        let mut index = json!({
            "name": self.name, "version": self.version, "build": self.build, "build_number": 0,
            "depends": self.depends, "subdir": self.subdir(), "license": "BSD-3-Clause",
        });
        if self.noarch_python {
            index["noarch"] = json!("python");
        } else {
            index["arch"] = json!("x86_64");
            index["platform"] = json!("linux");
        }
        let info = base.join("info");
        std::fs::create_dir_all(&info).unwrap();
        let write_json = |name: &str, v: &Value| {
            let p = info.join(name);
            std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
            p
        };
        paths.push(write_json("index.json", &index));
        paths.push(write_json(
            "paths.json",
            &json!({"paths": entries, "paths_version": 1}),
        ));
        if self.noarch_python {
            paths.push(write_json(
                "link.json",
                &json!({"noarch": {"type": "python", "entry_points": self.entry_points}, "package_metadata_version": 1}),
            ));
        }
        let dir = channel.join(self.subdir());
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(self.file_name());
        let file = std::fs::File::create(&out).unwrap();
        let level = if self.fast {
            CompressionLevel::Lowest
        } else {
            CompressionLevel::Default
        };
        if self.tar_bz2 {
            write_tar_bz2_package(file, base, &paths, level, None, None).unwrap();
        } else {
            let stem = self.file_name().trim_end_matches(".conda").to_string();
            write_conda_package(file, base, &paths, level, None, &stem, None, None).unwrap();
        }
        out
    }
}

/// A channel folder with packages.
pub struct Channel {
    pub dir: PathBuf,
    packages: Vec<Package>,
}

impl Channel {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            packages: Vec::new(),
        }
    }

    pub fn add(&mut self, p: Package) -> &mut Self {
        self.packages.push(p);
        self
    }

    /// Writes every package and the repodata of `linux-64` and `noarch`.
    pub fn write(&self) -> &Path {
        let mut repodata: BTreeMap<&str, Value> = BTreeMap::new();
        for subdir in ["linux-64", "noarch"] {
            std::fs::create_dir_all(self.dir.join(subdir)).unwrap();
            repodata.insert(subdir, json!({"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}, "repodata_version": 1}));
        }
        for p in &self.packages {
            let path = p.write(&self.dir);
            let bytes = std::fs::read(&path).unwrap();
            let mut rec = json!({
                "name": p.name, "version": p.version, "build": p.build, "build_number": 0,
                "depends": p.depends, "subdir": p.subdir(), "license": "BSD-3-Clause",
                "sha256": super::sha256_hex(&bytes), "size": bytes.len(),
            });
            if p.noarch_python {
                rec["noarch"] = json!("python");
            }
            let key = if p.tar_bz2 {
                "packages"
            } else {
                "packages.conda"
            };
            repodata.get_mut(p.subdir()).unwrap()[key][p.file_name()] = rec;
        }
        for (subdir, data) in repodata {
            std::fs::write(
                self.dir.join(subdir).join("repodata.json"),
                serde_json::to_vec_pretty(&data).unwrap(),
            )
            .unwrap();
        }
        &self.dir
    }

    /// The channel as a `file://` URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// A fake `python` package: `bin/python3.11` is a shell script that runs the host's
/// python3 (the first on PATH outside the environment) with the environment's `site-packages` on `PYTHONPATH` (enough for the installer
/// to link noarch packages and for their entry points to import them),
/// `lib/python3.11/site-packages` exists, and `lib/libfake.so` holds the placeholder as a
/// binary C string, `bin/fake-config` as text.
pub fn fake_python() -> Package {
    let ph = long_placeholder();
    Package::new("python", "3.11.0")
        .with_prefix("bin/python3.11", Prefix::Text, &ph, true, |ph| {
            format!(
                "#!/bin/sh\n# built in {ph}\nd=${{0%/*}}\n\
                 PYTHONPATH=\"$d/../lib/python3.11/site-packages\"\nexport PYTHONPATH\n\
                 IFS=:\nfor p in $PATH; do\n\
                 \x20   [ \"$p\" -ef \"$d\" ] || [ ! -x \"$p/python3\" ] || exec \"$p/python3\" \"$@\"\n\
                 done\necho 'no python3 on PATH' >&2\nexit 127\n"
            )
            .into_bytes()
        })
        .symlink("bin/python", "python3.11")
        .symlink("bin/python3", "python3.11")
        .file("lib/python3.11/site-packages/README.txt", "site-packages\n")
        .file("lib/python3.11/os.py", "# stdlib stand-in\n")
        .with_prefix("lib/libfake.so", Prefix::Binary, &ph, false, |ph| {
            let mut v = b"\x7fELF\x02\x01\x01\0".to_vec();
            v.extend_from_slice(format!("{ph}/lib:{ph}/lib/extra").as_bytes());
            v.push(0);
            v.extend_from_slice(b"OTHER\0");
            v.extend_from_slice(ph.as_bytes());
            v.extend_from_slice(b"/etc/ssl\0\0\0tail");
            v
        })
        .with_prefix("bin/fake-config", Prefix::Text, &ph, true, |ph| {
            format!("#!/bin/sh\necho prefix={ph}\necho libdir={ph}/lib\n").into_bytes()
        })
        .symlink("lib/libfake.so.1", "libfake.so")
        .symlink("lib/python3.1", "python3.11")
}
