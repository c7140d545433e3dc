//! Consumer checks: does the installed environment have what its server needs?
//!
//! Run on the staging prefix after the install and before the archive is written, so a
//! tarball the server cannot use is never written. Each failure is an error with a hint;
//! `--no-check` skips them. The rules come from the servers' sources (see the project's
//! notes on consumers): Triton's stub embeds libpython of one Python minor version and
//! imports numpy; MLServer must find `mlserver` inside the environment.

use crate::report::Notice;
use std::path::{Path, PathBuf};

use super::{Consumer, TargetError, TritonVersion};
use crate::pack::Format;
use crate::pack::walk::{Entry, Tree};

/// The Python minor version of MLServer's image.
pub const MLSERVER_IMAGE_PYTHON: (u32, u32) = (3, 10);

/// What an installed environment provides, as far as the servers care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFacts {
    /// The Python of the single `lib/pythonX.Y` folder, when `bin/python3` exists too.
    pub python: Option<(u32, u32)>,
    /// Every `lib/pythonX.Y` folder (one is expected).
    pub python_dirs: Vec<String>,
    /// `lib/libpythonX.Y.so.1.0` exists.
    pub libpython: bool,
    /// numpy's version, if it is importable (`unknown` without metadata).
    pub numpy: Option<String>,
    /// mlserver's version, if it is importable.
    pub mlserver: Option<String>,
}

/// What the solved packages will provide, for `--dry-run`: Python and numpy from their
/// records (conda-forge's Python ships its shared library), mlserver when a `pip:` line names it.
#[must_use]
pub fn expected(records: &[rattler_conda_types::RepoDataRecord], pip: &[String]) -> EnvFacts {
    let version = |name: &str| {
        records
            .iter()
            .find(|r| r.package_record.name.as_normalized() == name)
            .map(|r| r.package_record.version.to_string())
    };
    let python = version("python").and_then(|v| {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    });
    let mlserver = pip
        .iter()
        .any(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .strip_prefix("mlserver")
                .is_some_and(|rest| {
                    !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        })
        .then(|| "from pip".to_string());
    EnvFacts {
        python,
        python_dirs: python
            .map(|(a, b)| vec![format!("python{a}.{b}")])
            .unwrap_or_default(),
        libpython: python.is_some(),
        numpy: version("numpy"),
        mlserver,
    }
}

/// Looks into an environment's tree (a prefix, or an archive's planned listing).
#[must_use]
pub fn inspect_tree(tree: &dyn Tree) -> EnvFacts {
    let mut python_dirs: Vec<String> = tree
        .children("lib")
        .into_iter()
        // `lib/python3.1` is a symlink in Python >= 3.10 environments: not a second Python.
        .filter(|name| {
            parse_python_dir(name).is_some()
                && tree.entry(&format!("lib/{name}")) == Some(Entry::Dir)
        })
        .collect();
    python_dirs.sort();
    let mut facts = EnvFacts {
        python_dirs,
        ..EnvFacts::default()
    };
    let [dir] = facts.python_dirs.as_slice() else {
        return facts;
    };
    let Some((major, minor)) = parse_python_dir(dir) else {
        return facts;
    };
    if tree.exists("bin/python3") || tree.exists("bin/python") {
        facts.python = Some((major, minor));
    }
    facts.libpython = tree.exists(&format!("lib/libpython{major}.{minor}.so.1.0"));
    let site = format!("lib/{dir}/site-packages");
    facts.numpy = package_version(tree, &site, "numpy");
    facts.mlserver = package_version(tree, &site, "mlserver");
    facts
}

/// `python3.11` → (3, 11).
fn parse_python_dir(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.strip_prefix("python")?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The version of an importable package of `site`: from its `.dist-info` folder, else from
/// its conda record, else `unknown`. `None` when it is not importable.
fn package_version(tree: &dyn Tree, site: &str, name: &str) -> Option<String> {
    if !tree.is_file(&format!("{site}/{name}/__init__.py")) {
        return None;
    }
    let dash = format!("{name}-");
    let version_in = |dir: &str, suffix: &str| -> Option<String> {
        if !tree.is_dir(dir) {
            return None;
        }
        for file in tree.children(dir) {
            let file = file.to_lowercase();
            if let Some(v) = file
                .strip_prefix(&dash)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            {
                // conda records are `name-version-build.json`.
                let v = if suffix == ".json" {
                    v.rsplit_once('-').map_or(v, |(v, _build)| v)
                } else {
                    v
                };
                return Some(v.to_string());
            }
        }
        None
    };
    let found = version_in(site, ".dist-info").or_else(|| version_in("conda-meta", ".json"));
    Some(found.unwrap_or_else(|| "unknown".into()))
}

fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

fn python_of(facts: &EnvFacts, consumer: Consumer) -> Result<(u32, u32), TargetError> {
    if facts.python_dirs.len() > 1 {
        return Err(TargetError::SeveralPythons {
            consumer,
            found: facts
                .python_dirs
                .iter()
                .map(|d| format!("lib/{d}"))
                .collect(),
        });
    }
    facts.python.ok_or(TargetError::NoPython { consumer })
}

/// Triton's python backend: Python with its shared library, numpy, and (with `release`) the
/// stub's Python and numpy<2 up to 24.10. `custom_stub`: the model folder ships its own
/// `triton_python_backend_stub`, so the release's Python does not apply. Returns warnings.
pub fn check_triton(
    facts: &EnvFacts,
    release: Option<TritonVersion>,
    custom_stub: bool,
) -> Result<Vec<Notice>, TargetError> {
    let (major_v, minor_v) = python_of(facts, Consumer::Triton)?;
    if !facts.libpython {
        return Err(TargetError::NoLibpython {
            expected: format!("lib/libpython{major_v}.{minor_v}.so.1.0"),
        });
    }
    let Some(numpy) = &facts.numpy else {
        return Err(TargetError::NoNumpy);
    };
    let mut warnings = Vec::new();
    let python = format!("{major_v}.{minor_v}");
    let stub_of = |r: TritonVersion| {
        let (a, b) = r.stub_python();
        format!("{a}.{b}")
    };
    match release {
        Some(release) => {
            if !custom_stub && stub_of(release) != python {
                return Err(TargetError::PythonMismatch {
                    python,
                    stub: stub_of(release),
                    release,
                });
            }
            if release.needs_numpy_1() && major(numpy).is_some_and(|m| m >= 2) {
                return Err(TargetError::Numpy2 {
                    numpy: numpy.clone(),
                    release,
                });
            }
        }
        None if !custom_stub && stub_of(TritonVersion::NEWEST) != python => {
            let newest = TritonVersion::NEWEST;
            warnings.push(Notice::warning(format!(
                "the environment has Python {python}, but the python backend stub of the newest Triton ({newest}) is built for Python {}: pass --triton-version YY.MM to check against your release (3.8 up to 23.04, 3.10 for 23.05 to 24.10, 3.12 from 24.11), or put a stub for Python {python} in the model folder",
                stub_of(newest)
            )));
        }
        None => {}
    }
    Ok(warnings)
}

/// MLServer (per model or image level): Python, and `mlserver` installed in the environment.
/// Returns notes: a Python minor version other than the image's.
pub fn check_mlserver(facts: &EnvFacts) -> Result<Vec<Notice>, TargetError> {
    let (a, b) = python_of(facts, Consumer::MlServerModel)?;
    if facts.mlserver.is_none() {
        return Err(TargetError::NoMlserver);
    }
    let (ia, ib) = MLSERVER_IMAGE_PYTHON;
    let mut notes = Vec::new();
    if (a, b) != MLSERVER_IMAGE_PYTHON {
        notes.push(Notice::note(format!(
            "the environment has Python {a}.{b}, MLServer's image runs Python {ia}.{ib}: fine for the image-level tarball and for per-model tarballs of MLServer >= 1.6 (workers start the environment's own bin/python); with older servers use python={ia}.{ib}"
        )));
    }
    Ok(notes)
}

/// Whether `consumer` can read `format` (gzip tar everywhere; plain tar for Triton and
/// MLServer's per-model flow; a folder for Triton 23.07+; zstd nowhere).
pub fn check_format(consumer: Consumer, format: Format) -> Result<(), TargetError> {
    let ok = matches!(
        (consumer, format),
        (_, Format::TarGz)
            | (Consumer::Triton, Format::Tar | Format::Dir)
            | (Consumer::MlServerModel, Format::Tar)
    );
    if ok {
        Ok(())
    } else {
        Err(TargetError::Format {
            consumer,
            format: match format {
                Format::TarGz => ".tar.gz",
                Format::TarZst => ".tar.zst",
                Format::Tar => ".tar",
                Format::Dir => "folder (--format dir)",
            },
        })
    }
}

/// The custom stub a Triton model folder may ship.
#[must_use]
pub fn custom_stub(model_dir: &Path) -> PathBuf {
    model_dir.join("triton_python_backend_stub")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::walk::PrefixTree;

    /// A fake prefix with the given files (empty).
    fn prefix(files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let p = t.path().join(f);
            fs_err::create_dir_all(p.parent().unwrap()).unwrap();
            if f.ends_with('/') {
                fs_err::create_dir_all(&p).unwrap();
            } else {
                fs_err::write(&p, "").unwrap();
            }
        }
        t
    }

    const TRITON_OK: &[&str] = &[
        "bin/python3",
        "lib/libpython3.11.so.1.0",
        "lib/python3.11/os.py",
        "lib/python3.11/site-packages/numpy/__init__.py",
        "lib/python3.11/site-packages/numpy-1.26.4.dist-info/METADATA",
    ];

    fn facts(files: &[&str]) -> EnvFacts {
        let p = prefix(files);
        inspect_tree(&PrefixTree(p.path()))
    }

    #[allow(clippy::unnecessary_wraps)] // reads better at the call sites
    fn v(s: &str) -> Option<TritonVersion> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn inspect_finds_python_libpython_and_package_versions() {
        let p = prefix(TRITON_OK);
        std::os::unix::fs::symlink("python3.11", p.path().join("lib/python3.1")).unwrap();
        let f = inspect_tree(&PrefixTree(p.path()));
        assert_eq!(f.python, Some((3, 11)));
        assert_eq!(f.python_dirs, ["python3.11"]);
        assert!(f.libpython);
        assert_eq!(f.numpy.as_deref(), Some("1.26.4"));
        assert_eq!(f.mlserver, None);
        // Version from the conda record when there is no dist-info.
        let f = facts(&[
            "bin/python3",
            "lib/python3.12/site-packages/mlserver/__init__.py",
            "conda-meta/mlserver-1.7.1-pyhd8ed1ab_0.json",
        ]);
        assert_eq!(f.mlserver.as_deref(), Some("1.7.1"));
        assert!(!f.libpython);
        assert_eq!(facts(&[]), EnvFacts::default());
    }

    #[test]
    fn triton_needs_python_libpython_and_numpy() {
        assert!(
            check_triton(&facts(TRITON_OK), v("24.11"), true)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            check_triton(&facts(&["lib/x.so"]), None, false),
            Err(TargetError::NoPython { .. })
        ));
        let no_lib: Vec<&str> = TRITON_OK
            .iter()
            .copied()
            .filter(|f| !f.starts_with("lib/libpython"))
            .collect();
        assert!(matches!(
            check_triton(&facts(&no_lib), None, false),
            Err(TargetError::NoLibpython { ref expected }) if expected == "lib/libpython3.11.so.1.0"
        ));
        let no_numpy: Vec<&str> = TRITON_OK
            .iter()
            .copied()
            .filter(|f| !f.contains("numpy"))
            .collect();
        assert!(matches!(
            check_triton(&facts(&no_numpy), None, false),
            Err(TargetError::NoNumpy)
        ));
        let mut two = TRITON_OK.to_vec();
        two.push("lib/python3.12/os.py");
        assert!(matches!(
            check_triton(&facts(&two), None, false),
            Err(TargetError::SeveralPythons { .. })
        ));
    }

    #[test]
    fn triton_release_decides_the_stub_python_and_numpy() {
        let ok = facts(TRITON_OK);
        // 3.11 is no release's stub Python.
        for r in ["23.04", "24.10", "25.01"] {
            assert!(
                matches!(
                    check_triton(&ok, v(r), false),
                    Err(TargetError::PythonMismatch { .. })
                ),
                "{r}"
            );
        }
        // A stub in the model folder overrides the release's.
        assert!(check_triton(&ok, v("24.10"), true).is_ok());
        let py310 = facts(&[
            "bin/python3",
            "lib/libpython3.10.so.1.0",
            "lib/python3.10/site-packages/numpy/__init__.py",
            "lib/python3.10/site-packages/numpy-2.2.6.dist-info/METADATA",
        ]);
        assert!(matches!(
            check_triton(&py310, v("24.10"), false),
            Err(TargetError::Numpy2 { ref numpy, .. }) if numpy == "2.2.6"
        ));
        assert!(matches!(
            check_triton(&py310, v("24.11"), false),
            Err(TargetError::PythonMismatch { .. })
        ));
        // Without a release: a mismatch with the newest is a warning, not an error.
        let w = check_triton(&ok, None, false).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("--triton-version"), "{w:?}");
        assert!(check_triton(&ok, None, true).unwrap().is_empty());
    }

    #[test]
    fn mlserver_must_be_installed_in_the_environment() {
        assert!(matches!(
            check_mlserver(&facts(TRITON_OK)),
            Err(TargetError::NoMlserver)
        ));
        let mut with = TRITON_OK.to_vec();
        with.push("lib/python3.11/site-packages/mlserver/__init__.py");
        let notes = check_mlserver(&facts(&with)).unwrap();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].message.contains("3.10"), "{notes:?}");
        assert!(
            check_mlserver(&facts(&[
                "bin/python",
                "lib/python3.10/site-packages/mlserver/__init__.py"
            ]))
            .unwrap()
            .is_empty()
        );
        assert!(matches!(
            check_mlserver(&facts(&[])),
            Err(TargetError::NoPython { .. })
        ));
    }

    #[test]
    fn formats_follow_what_each_server_reads() {
        use Consumer::{MlServerImage, MlServerModel, Triton};
        for c in [Triton, MlServerModel, MlServerImage] {
            assert!(check_format(c, Format::TarGz).is_ok());
            assert!(check_format(c, Format::TarZst).is_err());
        }
        assert!(check_format(Triton, Format::Dir).is_ok());
        assert!(check_format(Triton, Format::Tar).is_ok());
        assert!(check_format(MlServerModel, Format::Tar).is_ok());
        assert!(check_format(MlServerModel, Format::Dir).is_err());
        assert!(check_format(MlServerImage, Format::Tar).is_err());
    }
}
