//! Targets: Triton and MLServer models, and the model repositories that hold them.
//!
//! The domain of the last stage, driven by [`crate::models`]: [`detect`] tells what PATH is (a
//! Triton model, an MLServer model, a model repository, or an environment as before);
//! [`find_environment_file`] finds a model's environment file; [`default_file_name`] names its
//! tarball the way its server expects; `checks` inspect a staging prefix for what the server
//! needs; `glibc` checks the ELF files of a plan against the target's C library; `config` points a model's config at its tarball, through the editors of the two
//! config files, `pbtxt` (Triton's `config.pbtxt`) and `model_settings` (MLServer's
//! `model-settings.json`). Nothing here drives the pipeline.

pub mod checks;
pub mod config;
pub mod glibc;
pub mod model_settings;
pub mod pbtxt;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::pack::Format;
use crate::spec;

/// The file that makes a folder a Triton model.
pub const TRITON_CONFIG: &str = "config.pbtxt";
/// The file that makes a folder an MLServer model.
pub const MLSERVER_CONFIG: &str = "model-settings.json";
/// A Triton model's tarball, as Triton's documentation names it.
pub const TRITON_TARBALL: &str = "model-conda.tar.gz";
/// An MLServer tarball (per model, and `MLSERVER_ENV_TARBALL`'s default name).
pub const MLSERVER_TARBALL: &str = "environment.tar.gz";
/// How deep below a repository root models are looked for (MLServer models may be nested).
pub const MAX_DEPTH: usize = 4;

/// Errors of the model targets.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A folder that is both a Triton and an MLServer model.
    #[error("{} holds both {TRITON_CONFIG} and {MLSERVER_CONFIG}: it cannot be both a Triton and an MLServer model", dir.display())]
    Ambiguous {
        /// The model folder.
        dir: PathBuf,
    },
    /// No environment file in the model folder or its ancestors up to the repository root.
    #[error("no environment file for the model {}: looked for {}", model.display(), searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoEnvironmentFile {
        /// The model folder.
        model: PathBuf,
        /// The files looked for, in order.
        searched: Vec<PathBuf>,
    },
    /// A `config.pbtxt` that does not parse (the message names the line).
    #[error("cannot edit {}", path.display())]
    Pbtxt {
        /// The config.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: pbtxt::PbtxtError,
    },
    /// A `model-settings.json` that does not parse or has the wrong shape.
    #[error("cannot edit {}", path.display())]
    ModelSettings {
        /// The settings file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: model_settings::ModelSettingsError,
    },
    /// Shared environment folders inside the model repository (Triton takes any folder there
    /// for a model).
    #[error("{} is inside the model repository: Triton would take a shared environment folder there for a model", dir.display())]
    SharedFolderInRepository {
        /// The folder asked for.
        dir: PathBuf,
    },
    /// `--write-config` with a tarball outside the model folder.
    #[error("{} is outside the model folder {}: its config cannot point at it portably", output.display(), model.display())]
    OutputOutsideModel {
        /// The output.
        output: PathBuf,
        /// The model folder.
        model: PathBuf,
    },
    /// An output format the server cannot read.
    #[error("{consumer} cannot read a {format} environment")]
    Format {
        /// Who reads it.
        consumer: Consumer,
        /// The format asked for.
        format: &'static str,
    },
    /// The environment has no Python (or no `bin/python3`).
    #[error("the environment has no Python, which {consumer} needs")]
    NoPython {
        /// Who needs it.
        consumer: Consumer,
    },
    /// More than one `lib/pythonX.Y` folder.
    #[error("the environment has several Python library folders ({}): {consumer} needs exactly one", found.join(", "))]
    SeveralPythons {
        /// Who needs one.
        consumer: Consumer,
        /// The folders.
        found: Vec<String>,
    },
    /// No shared libpython: Triton's stub embeds it.
    #[error("the environment has no {expected}: Triton's python backend stub loads it")]
    NoLibpython {
        /// The file looked for.
        expected: String,
    },
    /// No numpy: Triton's backend utilities import it.
    #[error("the environment has no numpy: Triton's python backend imports it")]
    NoNumpy,
    /// The Python minor version differs from the stub's of the chosen Triton release.
    #[error(
        "the environment has Python {python}, but the python backend stub of Triton {release} is built for Python {stub}"
    )]
    PythonMismatch {
        /// The environment's version.
        python: String,
        /// The stub's version.
        stub: String,
        /// The release.
        release: TritonVersion,
    },
    /// numpy 2 with a Triton release whose stub needs numpy < 2.
    #[error(
        "the environment has numpy {numpy}, but Triton {release} needs numpy<2 (outputs arrive empty with numpy 2)"
    )]
    Numpy2 {
        /// numpy's version.
        numpy: String,
        /// The release.
        release: TritonVersion,
    },
    /// No `mlserver` in the environment.
    #[error(
        "mlserver is not installed in the environment: without it MLServer silently runs its own Python"
    )]
    NoMlserver,
    /// A consumer check failed for the environment of a model.
    #[error("the environment {} does not suit the {server} model {model}", environment.display())]
    Check {
        /// The model.
        model: String,
        /// Its server.
        server: Server,
        /// Its environment file.
        environment: PathBuf,
        /// The check that failed.
        #[source]
        source: Box<TargetError>,
    },
    /// An I/O error; it names its path (`fs_err`, `tempfile`, or [`crate::paths::at`]).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl TargetError {
    /// A closure mapping an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TargetError + '_ {
        move |source| TargetError::Io(crate::paths::at("I/O error on", path)(source))
    }

    /// What the user can do about it.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            TargetError::Ambiguous { .. } => {
                "keep one of the two files, or pack the environment file itself (`envpack pack path/to/environment.yml`)".into()
            }
            TargetError::NoEnvironmentFile { .. } => {
                "put an environment.yml in the model folder or the repository root, or name one with --file".into()
            }
            TargetError::Pbtxt { .. } => {
                "fix the syntax at that line (Triton would reject it too), or set EXECUTION_ENV_PATH by hand and pack without --write-config".into()
            }
            TargetError::ModelSettings { .. } => {
                "fix the file (MLServer would reject it too), or set parameters.environment_tarball by hand and pack without --write-config".into()
            }
            TargetError::SharedFolderInRepository { .. } => {
                "name a folder outside the repository with --env-dir (the configs reach it with ../), or pack tarballs".into()
            }
            TargetError::OutputOutsideModel { .. } => {
                "write the tarball into the model folder (-o NAME), or pack without --write-config".into()
            }
            TargetError::Format { .. } => {
                "use the default .tar.gz (Triton also reads .tar and, from 23.07, --format dir), or pass --no-check".into()
            }
            TargetError::NoPython { .. } | TargetError::SeveralPythons { .. } => {
                "add `python` to `dependencies` (e.g. python=3.12)".into()
            }
            TargetError::NoLibpython { .. } => {
                "use conda-forge's python, which ships the shared library".into()
            }
            TargetError::NoNumpy => "add `numpy` to `dependencies`".into(),
            TargetError::PythonMismatch { stub, .. } => format!(
                "ask for python={stub}, check against another release with --triton-version, or put a stub built for your Python in the model folder (triton_python_backend_stub)"
            ),
            TargetError::Numpy2 { .. } => "add `numpy<2` to `dependencies`".into(),
            TargetError::NoMlserver => {
                "add `mlserver` (the server's version, e.g. mlserver==1.7.1) to the `pip:` section, with `python` and `pip` in `dependencies`".into()
            }
            TargetError::Check { source, .. } => return source.hint(),
            TargetError::Io(_) => return None,
        })
    }
}

/// The server a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// Triton's python backend (`config.pbtxt`, `EXECUTION_ENV_PATH`).
    Triton,
    /// MLServer (`model-settings.json`, `parameters.environment_tarball`).
    MlServer,
}

impl Server {
    /// How this server reads a model's tarball.
    #[must_use]
    pub fn consumer(self) -> Consumer {
        match self {
            Server::Triton => Consumer::Triton,
            Server::MlServer => Consumer::MlServerModel,
        }
    }

    /// The config file of a model of this server.
    #[must_use]
    pub fn config_file(self) -> &'static str {
        match self {
            Server::Triton => TRITON_CONFIG,
            Server::MlServer => MLSERVER_CONFIG,
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Server::Triton => "triton",
            Server::MlServer => "mlserver",
        })
    }
}

/// Who reads a tarball, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// Triton's python backend (libarchive; a folder from 23.07).
    Triton,
    /// MLServer's per-model `environment_tarball` (Python's tarfile).
    MlServerModel,
    /// The MLServer image's `MLSERVER_ENV_TARBALL` (`tar -zxf`).
    MlServerImage,
}

impl fmt::Display for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consumer::Triton => "Triton's python backend",
            Consumer::MlServerModel => "MLServer (environment_tarball)",
            Consumer::MlServerImage => "MLServer's image (MLSERVER_ENV_TARBALL)",
        })
    }
}

/// A Triton release, `YY.MM` (e.g. 24.10), as `--triton-version` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TritonVersion {
    /// Two-digit year.
    pub year: u32,
    /// Month.
    pub month: u32,
}

impl TritonVersion {
    /// The newest release the rules below were checked against.
    pub const NEWEST: TritonVersion = TritonVersion::new(26, 7);

    const fn new(year: u32, month: u32) -> Self {
        Self { year, month }
    }

    /// The Python (major, minor) its python backend stub is built for.
    #[must_use]
    pub fn stub_python(self) -> (u32, u32) {
        if self <= TritonVersion::new(23, 4) {
            (3, 8)
        } else if self <= TritonVersion::new(24, 10) {
            (3, 10)
        } else {
            (3, 12)
        }
    }

    /// Whether its stub needs numpy < 2.
    #[must_use]
    pub fn needs_numpy_1(self) -> bool {
        self <= TritonVersion::new(24, 10)
    }
}

impl FromStr for TritonVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--triton-version takes a release as YY.MM (e.g. 24.10), not `{s}`");
        let (y, m) = s.trim().split_once('.').ok_or_else(bad)?;
        let (year, month): (u32, u32) =
            (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(19..=99).contains(&year) || !(1..=12).contains(&month) || y.len() != 2 {
            return Err(bad());
        }
        Ok(Self { year, month })
    }
}

impl fmt::Display for TritonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}.{:02}", self.year, self.month)
    }
}

/// A model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Its server.
    pub server: Server,
    /// The folder (absolute, symlinks resolved).
    pub dir: PathBuf,
    /// Its path below the repository root, `/`-separated (the folder name for one model).
    pub name: String,
}

impl Model {
    /// Its config file.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(self.server.config_file())
    }
}

/// What PATH is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// An environment file, or a folder that is no model and holds no models.
    Environment,
    /// A Triton or MLServer model folder.
    Model(Model),
    /// A folder whose subfolders hold models.
    Repository {
        /// The folder (absolute, symlinks resolved).
        root: PathBuf,
        /// Its models, sorted by path.
        models: Vec<Model>,
    },
}

/// The server of the model in `dir`, if it is one.
fn server_of(dir: &Path) -> Result<Option<Server>, TargetError> {
    match (
        dir.join(TRITON_CONFIG).is_file(),
        dir.join(MLSERVER_CONFIG).is_file(),
    ) {
        (true, true) => Err(TargetError::Ambiguous {
            dir: dir.to_path_buf(),
        }),
        (true, false) => Ok(Some(Server::Triton)),
        (false, true) => Ok(Some(Server::MlServer)),
        (false, false) => Ok(None),
    }
}

/// Tells what `path` is: a folder with `config.pbtxt` is a Triton model, one with
/// `model-settings.json` an MLServer model, a folder with models in its subfolders (up to
/// [`MAX_DEPTH`] levels down; hidden folders, symlinks and conda environments skipped; no
/// descent into a model) a model repository; anything else an environment file or folder.
pub fn detect(path: &Path) -> Result<Detected, TargetError> {
    if !path.is_dir() {
        return Ok(Detected::Environment);
    }
    let dir = fs_err::canonicalize(path)?;
    if let Some(server) = server_of(&dir)? {
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        return Ok(Detected::Model(Model { server, dir, name }));
    }
    let mut models = Vec::new();
    find_models(&dir, &dir, 1, &mut models)?;
    if models.is_empty() {
        return Ok(Detected::Environment);
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Detected::Repository { root: dir, models })
}

fn find_models(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<Model>,
) -> Result<(), TargetError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in fs_err::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let ty = entry.file_type()?;
        if !ty.is_dir() || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let sub = entry.path();
        if sub.join("conda-meta").is_dir() {
            continue;
        }
        if let Some(server) = server_of(&sub)? {
            let rel = sub.strip_prefix(root).unwrap_or(&sub);
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(Model {
                server,
                dir: sub,
                name,
            });
        } else {
            find_models(root, &sub, depth + 1, out)?;
        }
    }
    Ok(())
}

/// How far up from a model its environment file is looked for: the outermost of the
/// repository `root`, the version-control root holding the model (a folder with `.git` or
/// `.hg`), and `cwd` when the model lies below it. Never above all of them, so a template
/// layout (`src/environment.yml` beside `src/models/`) is found from the project root, from
/// `src/` and from `src/models/` alike.
#[must_use]
pub fn project_boundary(model_dir: &Path, root: &Path, cwd: &Path) -> PathBuf {
    let vcs = model_dir
        .ancestors()
        .find(|d| d.join(".git").exists() || d.join(".hg").exists());
    let below_cwd = model_dir.starts_with(cwd).then_some(cwd);
    [Some(root), vcs, below_cwd]
        .into_iter()
        .flatten()
        .filter(|d| model_dir.starts_with(d))
        .min_by_key(|d| d.components().count())
        .unwrap_or(root)
        .to_path_buf()
}

/// The files looked for as the environment file of the model in `model_dir`, in order: each of
/// [`spec::FILE_NAMES`] and of the lock files [`crate::lock::FILE_NAMES`] in the model folder,
/// then in each parent folder up to and including `boundary` (see [`project_boundary`]); then
/// [`spec::REQUIREMENTS`] the same way. A `model_dir` outside `boundary` looks in its own
/// folder only.
#[must_use]
pub fn environment_file_candidates(model_dir: &Path, boundary: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let files: Vec<&str> = spec::FILE_NAMES
        .iter()
        .chain(crate::lock::FILE_NAMES.iter())
        .copied()
        .collect();
    for names in [&files[..], &[spec::REQUIREMENTS]] {
        for dir in model_dir.ancestors() {
            out.extend(names.iter().map(|n| dir.join(n)));
            if dir == boundary || !dir.starts_with(boundary) {
                break;
            }
        }
    }
    out
}

/// The first of [`environment_file_candidates`] that is a file.
pub fn find_environment_file(model_dir: &Path, root: &Path) -> Result<PathBuf, TargetError> {
    let searched = environment_file_candidates(model_dir, root);
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| TargetError::NoEnvironmentFile {
            model: model_dir.to_path_buf(),
            searched,
        })
}

/// The default file name of a model's packed environment: `model-conda.tar.gz` for Triton
/// (`model-conda`, a folder, with `--format dir`), `environment.tar.gz` for MLServer; other
/// formats change the extension.
#[must_use]
pub fn default_file_name(server: Server, format: Format) -> String {
    let stem = match server {
        Server::Triton => TRITON_TARBALL,
        Server::MlServer => MLSERVER_TARBALL,
    }
    .trim_end_matches(".tar.gz");
    format!("{stem}{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, "x").unwrap();
    }

    #[test]
    fn folders_are_told_apart_by_their_config_file() {
        let t = tempfile::tempdir().unwrap();
        let root = fs_err::canonicalize(t.path()).unwrap();
        touch(&root.join("tri/config.pbtxt"));
        touch(&root.join("mls/model-settings.json"));
        touch(&root.join("env/environment.yml"));
        assert!(matches!(
            detect(&root.join("tri")).unwrap(),
            Detected::Model(Model { server: Server::Triton, ref name, .. }) if name == "tri"
        ));
        assert!(matches!(
            detect(&root.join("mls")).unwrap(),
            Detected::Model(Model {
                server: Server::MlServer,
                ..
            })
        ));
        assert_eq!(detect(&root.join("env")).unwrap(), Detected::Environment);
        assert_eq!(
            detect(&root.join("env/environment.yml")).unwrap(),
            Detected::Environment
        );
        touch(&root.join("both/config.pbtxt"));
        touch(&root.join("both/model-settings.json"));
        assert!(matches!(
            detect(&root.join("both")),
            Err(TargetError::Ambiguous { .. })
        ));
    }

    #[test]
    fn a_folder_with_models_below_is_a_repository() {
        let t = tempfile::tempdir().unwrap();
        let root = fs_err::canonicalize(t.path()).unwrap();
        touch(&root.join("environment.yml"));
        touch(&root.join("b/config.pbtxt"));
        touch(&root.join("b/1/config.pbtxt")); // inside a model: not a model of its own
        touch(&root.join("a/config.pbtxt"));
        touch(&root.join("group/c/model-settings.json"));
        touch(&root.join(".hidden/config.pbtxt"));
        touch(&root.join("env/conda-meta/x.json"));
        touch(&root.join("env/d/config.pbtxt"));
        touch(&root.join("1/2/3/4/deep/config.pbtxt"));
        let Detected::Repository { root: r, models } = detect(&root).unwrap() else {
            panic!("not a repository");
        };
        assert_eq!(r, root);
        let names: Vec<(&str, Server)> =
            models.iter().map(|m| (m.name.as_str(), m.server)).collect();
        assert_eq!(
            names,
            [
                ("a", Server::Triton),
                ("b", Server::Triton),
                ("group/c", Server::MlServer)
            ]
        );
        assert_eq!(models[2].dir, root.join("group/c"));
    }

    #[test]
    fn environment_files_are_looked_up_from_the_model_to_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = fs_err::canonicalize(t.path()).unwrap().join("repo");
        let model = root.join("group/m");
        fs_err::create_dir_all(&model).unwrap();
        assert_eq!(
            environment_file_candidates(&model, &root),
            [
                model.join("environment.yml"),
                model.join("environment.yaml"),
                model.join("conda-lock.yml"),
                model.join("pixi.lock"),
                root.join("group/environment.yml"),
                root.join("group/environment.yaml"),
                root.join("group/conda-lock.yml"),
                root.join("group/pixi.lock"),
                root.join("environment.yml"),
                root.join("environment.yaml"),
                root.join("conda-lock.yml"),
                root.join("pixi.lock"),
                model.join("requirements.txt"),
                root.join("group/requirements.txt"),
                root.join("requirements.txt"),
            ]
        );
        // Nothing above the root counts.
        touch(&root.parent().unwrap().join("environment.yml"));
        assert!(matches!(
            find_environment_file(&model, &root),
            Err(TargetError::NoEnvironmentFile { ref searched, .. }) if searched.len() == 15
        ));
        touch(&root.join("environment.yml"));
        assert_eq!(
            find_environment_file(&model, &root).unwrap(),
            root.join("environment.yml")
        );
        touch(&root.join("group/environment.yaml"));
        assert_eq!(
            find_environment_file(&model, &root).unwrap(),
            root.join("group/environment.yaml")
        );
        touch(&model.join("environment.yaml"));
        assert_eq!(
            find_environment_file(&model, &root).unwrap(),
            model.join("environment.yaml")
        );
        touch(&model.join("environment.yml"));
        assert_eq!(
            find_environment_file(&model, &root).unwrap(),
            model.join("environment.yml")
        );
    }

    #[test]
    fn the_walk_stops_at_the_project_boundary() {
        let t = tempfile::tempdir().unwrap();
        let project = fs_err::canonicalize(t.path()).unwrap().join("project");
        let model = project.join("src/models/modelA");
        fs_err::create_dir_all(&model).unwrap();
        let models = project.join("src/models");
        // No version control: the folder the command runs in, when the model is below it.
        assert_eq!(project_boundary(&model, &models, &project), project);
        assert_eq!(
            project_boundary(&model, &models, &project.join("src")),
            project.join("src")
        );
        // Run from elsewhere: the repository root.
        assert_eq!(
            project_boundary(&model, &models, &project.with_file_name("elsewhere")),
            models
        );
        // A git checkout: its root, from wherever below it.
        fs_err::create_dir_all(project.join(".git")).unwrap();
        assert_eq!(project_boundary(&model, &models, &models), project);
        touch(&project.join("src/environment.yml"));
        assert_eq!(
            find_environment_file(&model, &project_boundary(&model, &models, &models)).unwrap(),
            project.join("src/environment.yml")
        );
        // A requirements file counts only when no environment file is found.
        touch(&model.join("requirements.txt"));
        assert_eq!(
            find_environment_file(&model, &project).unwrap(),
            project.join("src/environment.yml")
        );
        fs_err::remove_file(project.join("src/environment.yml")).unwrap();
        assert_eq!(
            find_environment_file(&model, &project).unwrap(),
            model.join("requirements.txt")
        );
    }

    #[test]
    fn outputs_are_named_as_the_servers_expect() {
        assert_eq!(
            default_file_name(Server::Triton, Format::TarGz),
            "model-conda.tar.gz"
        );
        assert_eq!(
            default_file_name(Server::Triton, Format::Dir),
            "model-conda"
        );
        assert_eq!(
            default_file_name(Server::Triton, Format::Tar),
            "model-conda.tar"
        );
        assert_eq!(
            default_file_name(Server::MlServer, Format::TarGz),
            "environment.tar.gz"
        );
    }

    #[test]
    fn triton_releases_map_to_their_stub_python() {
        let v = |s: &str| s.parse::<TritonVersion>().unwrap();
        assert_eq!(v("23.04").stub_python(), (3, 8));
        assert_eq!(v("23.05").stub_python(), (3, 10));
        assert_eq!(v("24.10").stub_python(), (3, 10));
        assert_eq!(v("24.11").stub_python(), (3, 12));
        assert!(v("24.10").needs_numpy_1());
        assert!(!v("24.11").needs_numpy_1());
        assert_eq!(v("24.1").to_string(), "24.01");
        for bad in ["24", "2024.10", "24.13", "x.y", "24.10.1", "2.51"] {
            assert!(bad.parse::<TritonVersion>().is_err(), "{bad}");
        }
    }
}
