//! The environment file: what to install, read as conda reads `environment.yml`.
//!
//! First stage of the pipeline. Finds the file (`environment.yml`, `environment.yaml`, or any
//! name given), parses `name`, `channels`, `dependencies` (with `channel::package` specs and a
//! `pip:` subsection), and `variables`. No I/O beyond reading the file.

use std::path::{Path, PathBuf};

use rattler_conda_types::{MatchSpec, ParseStrictness};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The names looked for in a folder, in this order.
pub const FILE_NAMES: [&str; 2] = ["environment.yml", "environment.yaml"];

/// A pip requirements file, packed when a folder has no environment file: `python` and `pip`
/// from conda-forge, the file installed as the `pip:` section would be.
pub const REQUIREMENTS: &str = "requirements.txt";

/// Errors of reading an environment file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No environment file in the folder.
    #[error("no environment file in {}: looked for {}", dir.display(), FILE_NAMES.join(", "))]
    NotFound {
        /// The folder searched.
        dir: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the shape of an environment file.
    #[error("{} is not a valid environment file", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// A dependency that is not a valid match spec.
    #[error("{}: invalid dependency `{dependency}`", path.display())]
    MatchSpec {
        /// The file.
        path: PathBuf,
        /// The dependency as written.
        dependency: String,
        /// Why it did not parse.
        #[source]
        source: rattler_conda_types::ParseMatchSpecError,
    },
    /// A subsection other than `pip:` in `dependencies`.
    #[error("{}: unsupported dependency subsection `{name}:` (only `pip:` is supported)", path.display())]
    UnknownSubsection {
        /// The file.
        path: PathBuf,
        /// The subsection's key.
        name: String,
    },
    /// An environment without dependencies.
    #[error("{}: `dependencies` is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl SpecError {
    /// What the user can do about it.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        matches!(self, SpecError::NotFound { .. }).then(|| {
            "pass the environment file itself, e.g. `envpack pack path/to/env.yml`, or `--prefix` for an existing environment".into()
        })
    }
}

/// One conda dependency.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The line as written (a lock records it, to name what changed).
    pub text: String,
    /// The channel of a `channel::package` spec, as written.
    pub channel: Option<String>,
    /// The parsed spec, without its channel (the solver resolves that with our channel map).
    pub spec: MatchSpec,
}

/// An environment file, read.
#[derive(Debug, Clone)]
pub struct EnvironmentSpec {
    /// Where the file is.
    pub path: PathBuf,
    /// `name:`, if given.
    pub name: Option<String>,
    /// `channels:` as written, without `nodefaults`; conda-forge when the file has none.
    pub channels: Vec<String>,
    /// Conda dependencies.
    pub dependencies: Vec<Dependency>,
    /// Lines of the `pip:` subsection.
    pub pip: Vec<String>,
    /// `variables:`, in file order.
    pub variables: Vec<(String, String)>,
    /// sha256 of the file's bytes: environments read from identical files are identical.
    pub digest: String,
    /// What was ignored (unknown keys, invalid `variables:`), for the user.
    pub warnings: Vec<String>,
}

impl EnvironmentSpec {
    /// The folder that relative paths in the file are relative to.
    #[must_use]
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

#[derive(Deserialize)]
struct RawFile {
    name: Option<String>,
    #[allow(dead_code)]
    prefix: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    dependencies: Vec<RawDependency>,
    #[serde(default)]
    variables: serde_yaml::Mapping,
    /// Keys conda ignores (conda-lock adds `platforms`, `category`): warned about.
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDependency {
    Spec(String),
    Section(std::collections::BTreeMap<String, Option<Vec<String>>>),
    // `- 3.11` style numbers are not valid specs in conda either, but give a useful error.
    Other(serde_yaml::Value),
}

/// Finds the environment file for `path`: the file itself, or the first of [`FILE_NAMES`]
/// in the folder, else its [`REQUIREMENTS`].
pub fn locate(path: &Path) -> Result<PathBuf, SpecError> {
    if path.is_dir() {
        FILE_NAMES
            .iter()
            .chain([&REQUIREMENTS])
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| SpecError::NotFound {
                dir: path.to_path_buf(),
            })
    } else {
        Ok(path.to_path_buf())
    }
}

/// The Python of an environment made from a requirements file, unless `--python` or the target
/// server says otherwise: the newest Triton's stub's.
pub const DEFAULT_PYTHON: &str = "3.12";

/// Whether `path` is a pip requirements file rather than an environment file.
#[must_use]
pub fn is_requirements(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt")
}

/// Reads an environment file, or a requirements file as the environment of Python `python`
/// (`X.Y`) and `pip` with the file as its `pip:` section.
pub fn read_any(path: &Path, python: &str) -> Result<EnvironmentSpec, SpecError> {
    if !is_requirements(path) {
        return read(path);
    }
    let bytes = fs_err::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.parent().and_then(Path::file_name).map_or_else(
        || "environment".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = path
        .file_name()
        .map_or_else(|| REQUIREMENTS.into(), |n| n.to_string_lossy().into_owned());
    // Double-quoted for pip, which splits the options of a requirements line like a shell.
    let pip = format!("-r \"{}\"", file.replace('\\', "\\\\").replace('"', "\\\""));
    // The spec is built here, not parsed from YAML: folder and file names may hold characters
    // a YAML stream cannot (DEL, C1 controls). The digest covers the environment this text
    // describes, then the file.
    let text = format!(
        "name: {}\nchannels: [conda-forge]\ndependencies:\n  - python={python}\n  - pip\n  - pip:\n    - {pip}\n",
        serde_json::to_string(&name).unwrap_or_default(),
    );
    let mut all = text.into_bytes();
    all.extend_from_slice(&bytes);
    Ok(EnvironmentSpec {
        path: path.to_path_buf(),
        name: Some(name).filter(|n| !n.trim().is_empty()),
        channels: vec!["conda-forge".to_string()],
        dependencies: vec![
            parse_dependency(path, &format!("python={python}"))?,
            parse_dependency(path, "pip")?,
        ],
        pip: vec![pip],
        variables: Vec::new(),
        digest: hex(&Sha256::digest(&all)),
        warnings: Vec::new(),
    })
}

/// Reads and validates an environment file.
pub fn read(path: &Path) -> Result<EnvironmentSpec, SpecError> {
    let bytes = fs_err::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    parse(path, &text, &bytes)
}

fn parse(path: &Path, text: &str, bytes: &[u8]) -> Result<EnvironmentSpec, SpecError> {
    let raw: RawFile = serde_yaml::from_str(text).map_err(|source| SpecError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let mut dependencies = Vec::new();
    let mut pip = Vec::new();
    for dep in raw.dependencies {
        match dep {
            RawDependency::Spec(s) => dependencies.push(parse_dependency(path, &s)?),
            RawDependency::Section(map) => {
                for (name, lines) in map {
                    if name == "pip" {
                        pip.extend(lines.unwrap_or_default());
                    } else {
                        return Err(SpecError::UnknownSubsection {
                            path: path.to_path_buf(),
                            name,
                        });
                    }
                }
            }
            RawDependency::Other(v) => {
                let s = match v {
                    serde_yaml::Value::Number(n) => n.to_string(),
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                dependencies.push(parse_dependency(path, &s)?);
            }
        }
    }
    if dependencies.is_empty() && pip.is_empty() {
        return Err(SpecError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut channels: Vec<String> = raw
        .channels
        .into_iter()
        .filter(|c| c != "nodefaults")
        .collect();
    if channels.is_empty() {
        channels.push("conda-forge".to_string());
    }
    let mut warnings: Vec<String> = raw
        .unknown
        .keys()
        .map(|k| format!("{}: unknown key `{k}` ignored", path.display()))
        .collect();
    let mut variables = Vec::new();
    for (k, v) in raw.variables {
        match (yaml_scalar(&k), yaml_scalar(&v)) {
            (Some(k), Some(v)) if is_variable_name(&k) => variables.push((k, v)),
            (Some(k), Some(_)) => warnings.push(format!(
                "{}: variable `{k}` ignored: not a valid environment variable name",
                path.display()
            )),
            (k, _) => warnings.push(format!(
                "{}: variable `{}` ignored: its value is not a string, number or boolean",
                path.display(),
                k.unwrap_or_else(|| "?".into())
            )),
        }
    }
    Ok(EnvironmentSpec {
        path: path.to_path_buf(),
        name: raw.name.filter(|n| !n.trim().is_empty()),
        channels,
        dependencies,
        pip,
        variables,
        digest: hex(&Sha256::digest(bytes)),
        warnings,
    })
}

/// A name a shell can export: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_dependency(path: &Path, text: &str) -> Result<Dependency, SpecError> {
    let trimmed = text.trim();
    // `channel::name`: the channel is resolved later with our channel map, not rattler's.
    let bracket = trimmed.find('[').unwrap_or(trimmed.len());
    let (channel, rest) = match trimmed[..bracket].rfind("::") {
        Some(i) => (Some(trimmed[..i].to_string()), &trimmed[i + 2..]),
        None => (None, trimmed),
    };
    let spec = MatchSpec::from_str(rest, ParseStrictness::Lenient).map_err(|source| {
        SpecError::MatchSpec {
            path: path.to_path_buf(),
            dependency: text.to_string(),
            source,
        }
    })?;
    Ok(Dependency {
        text: trimmed.to_string(),
        channel,
        spec,
    })
}

/// Lowercase hex of bytes.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<EnvironmentSpec, SpecError> {
        parse(Path::new("/m/environment.yml"), s, s.as_bytes())
    }

    #[test]
    fn reads_all_sections() {
        let env = parse_str(
            "name: model-a\nchannels:\n  - conda-forge\n  - nodefaults\n  - ./local\ndependencies:\n  - python=3.11\n  - numpy>=1.26,<2\n  - conda-forge::six 1.17.* py_0\n  - pip\n  - pip:\n    - mlserver==1.7.1\n    - -r requirements.txt\nvariables:\n  OMP_NUM_THREADS: 1\n  MODE: fast\n",
        )
        .unwrap();
        assert_eq!(env.name.as_deref(), Some("model-a"));
        assert_eq!(env.channels, ["conda-forge", "./local"]);
        let names: Vec<String> = env
            .dependencies
            .iter()
            .map(|d| d.spec.name.to_string())
            .collect();
        assert_eq!(names, ["python", "numpy", "six", "pip"]);
        assert_eq!(env.dependencies[2].channel.as_deref(), Some("conda-forge"));
        assert!(env.dependencies[2].spec.channel.is_none());
        assert_eq!(
            env.dependencies[2].spec.build.as_ref().unwrap().to_string(),
            "py_0"
        );
        assert_eq!(env.pip, ["mlserver==1.7.1", "-r requirements.txt"]);
        assert_eq!(
            env.variables,
            [
                ("OMP_NUM_THREADS".into(), "1".into()),
                ("MODE".into(), "fast".into())
            ]
        );
        assert_eq!(env.base_dir(), Path::new("/m"));
    }

    #[test]
    fn an_empty_pip_section_is_no_pip_section() {
        for text in [
            "dependencies:\n  - python\n  - pip:\n",
            "dependencies:\n  - python\n  - pip: []\n",
        ] {
            let env = parse_str(text).unwrap();
            assert!(env.pip.is_empty(), "{text}");
            assert_eq!(env.dependencies.len(), 1, "{text}");
        }
    }

    #[test]
    fn no_channels_means_conda_forge() {
        let env = parse_str("dependencies: [python]\n").unwrap();
        assert_eq!(env.channels, ["conda-forge"]);
        assert!(env.name.is_none());
    }

    #[test]
    fn url_channel_specs_keep_their_channel() {
        let env = parse_str("dependencies:\n  - https://x.example/c::numpy[build=py*]\n").unwrap();
        assert_eq!(
            env.dependencies[0].channel.as_deref(),
            Some("https://x.example/c")
        );
        assert_eq!(env.dependencies[0].spec.name.to_string(), "numpy");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_str("dependencies:\n  - numpy >>= 1\n").unwrap_err();
        assert!(
            matches!(e, SpecError::MatchSpec { ref dependency, .. } if dependency == "numpy >>= 1"),
            "{e:?}"
        );
        let e = parse_str("dependencies:\n  - r:\n    - x\n").unwrap_err();
        assert!(matches!(e, SpecError::UnknownSubsection { ref name, .. } if name == "r"));
        let e = parse_str("name: x\ndependencies: []\n").unwrap_err();
        assert!(matches!(e, SpecError::Empty { .. }));
        let e = parse_str("name: [\n").unwrap_err();
        assert!(matches!(e, SpecError::Yaml { .. }));
        // Unknown keys are ignored with a warning, as conda does: a misspelt
        // `dependencies` leaves none.
        let e = parse_str("dependencis: [python]\n").unwrap_err();
        assert!(matches!(e, SpecError::Empty { .. }), "{e:?}");
        let env = parse_str("platforms: [linux-64]\ndependencies: [python]\n").unwrap();
        assert_eq!(env.warnings.len(), 1);
        assert!(env.warnings[0].contains("unknown key `platforms` ignored"));
    }

    #[test]
    fn locate_prefers_yml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            locate(dir.path()),
            Err(SpecError::NotFound { .. })
        ));
        std::fs::write(dir.path().join("environment.yaml"), "dependencies: [a]").unwrap();
        assert_eq!(
            locate(dir.path()).unwrap(),
            dir.path().join("environment.yaml")
        );
        std::fs::write(dir.path().join("environment.yml"), "dependencies: [a]").unwrap();
        assert_eq!(
            locate(dir.path()).unwrap(),
            dir.path().join("environment.yml")
        );
    }

    /// Found by the `environment_file` fuzz target: a folder named with a character a YAML
    /// stream cannot hold (here DEL) made its requirements.txt "not a valid environment file".
    #[test]
    fn requirements_in_any_folder_name_read_as_python_and_pip() {
        let root = tempfile::tempdir().unwrap();
        for name in ["dde\u{7f}pened", "a\u{85}b: [c", "sp ace\"q'\\"] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let file = dir.join("requirements.txt");
            std::fs::write(&file, "numpy\n").unwrap();
            let env = read_any(&file, "3.11").unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(env.name.as_deref(), Some(name));
            assert_eq!(env.channels, ["conda-forge"]);
            let deps: Vec<&str> = env.dependencies.iter().map(|d| d.text.as_str()).collect();
            assert_eq!(deps, ["python=3.11", "pip"]);
            assert_eq!(env.pip, ["-r \"requirements.txt\""]);
        }
        // The file name is quoted for pip's shell-like splitting of the line.
        let file = root.path().join("my \"reqs\".txt");
        std::fs::write(&file, "numpy\n").unwrap();
        assert_eq!(
            read_any(&file, "3.11").unwrap().pip,
            [r#"-r "my \"reqs\".txt""#]
        );
    }
}
