//! Settings: command-line values and environment variables, resolved once.
//!
//! The binary parses arguments into a [`Request`]; [`Settings::resolve`] applies defaults and
//! reads the process environment, through the function it is given: `ENVPACK_*`,
//! `CONDA_OVERRIDE_*`, `SOURCE_DATE_EPOCH`, `PATH` (for uv), `HOME` and `TMPDIR`. Nothing else in the library reads
//! the environment or the current folder (`cwd` is given too).

use std::path::{Path, PathBuf};

use rattler_conda_types::Subdir;

use crate::channels::{ChannelError, ChannelMap};
use crate::install::PipTool;
use crate::lock::{self, LockMode};
use crate::pack::{Filter, Format, PackOptions};
use crate::solve::{self, SolveError, VirtualPackageSettings};
use crate::spec::{self, SpecError};
use crate::targets::{self, Detected, Model, TargetError, TritonVersion};

/// Arguments and environment variables that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--prefix` with PATH, `--file` or `--mlserver`.
    #[error("give either an environment file (or model) or --prefix, not both")]
    PrefixWithPath,
    /// `--mlserver` with both PATH and `--file`.
    #[error("with --mlserver, give the environment file either as PATH or with --file")]
    MlServerPathAndFile,
    /// A platform that is not Linux.
    #[error("platform {platform} is not supported: Triton and MLServer run Linux containers")]
    NotLinux {
        /// The platform asked for.
        platform: Subdir,
    },
    /// No `--cache-dir`, and no default cache folder.
    #[error("cannot find a cache folder: pass --cache-dir")]
    NoCacheDir,
    /// A relative `--dest-prefix`.
    #[error("--dest-prefix must be an absolute path, not `{value}`")]
    DestPrefixNotAbsolute {
        /// The value given.
        value: String,
    },
    /// A `--compress-level` outside its format's range.
    #[error(transparent)]
    Level(#[from] crate::pack::compress::LevelError),
    /// A flag's value that cannot work.
    #[error("{flag} {value:?}: {reason}")]
    InvalidValue {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `--triton-version` that is not `YY.MM`.
    #[error("--triton-version takes a release as YY.MM (e.g. 24.10), not `{value}`")]
    TritonVersion {
        /// The value given.
        value: String,
    },
    /// A flag that acts on models, without models.
    #[error(
        "{flag} applies to models: give a Triton or MLServer model folder or a model repository as PATH"
    )]
    NeedsModels {
        /// The flag.
        flag: &'static str,
    },
    /// `-o` that is not UTF-8 where it names a file in each model folder.
    #[error("-o {}: not valid UTF-8", path.display())]
    NonUtf8Output {
        /// The value given.
        path: PathBuf,
    },
    /// `-o PATH` with a repository.
    #[error("-o {}: with a model repository, -o takes a file name (written into each model folder)", path.display())]
    OutputPathForRepository {
        /// The value given.
        path: PathBuf,
    },
    /// `--format` that contradicts the output's extension.
    #[error("--format {format} does not match the output name {}: name it for the format, or drop --format", path.display())]
    FormatMismatch {
        /// The output.
        path: PathBuf,
        /// The format asked for.
        format: Format,
    },
    /// A `--glibc` or `--cuda` that is not a version.
    #[error("{flag} takes a version as X.Y (e.g. 2.28), not `{value}`")]
    Version {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// `--prefix` names no folder.
    #[error("no such folder: {}", path.display())]
    NoSuchPrefix {
        /// The path given.
        path: PathBuf,
    },
    /// A `--python` that is not `X.Y`.
    #[error("--python takes a version as X.Y (e.g. 3.11), not `{value}`")]
    Python {
        /// The value given.
        value: String,
    },
    /// An unknown `--format`.
    #[error("unknown format `{value}`: use tar.gz, tar.zst, tar or dir")]
    UnknownFormat {
        /// The value given.
        value: String,
    },
    /// An output name whose extension names no format.
    #[error("cannot tell the format from `{}`: name it .tar.gz, .tar.zst or .tar, or pass --format", path.display())]
    UnknownExtension {
        /// The output.
        path: PathBuf,
    },
    /// `--file` with a PATH that holds no model.
    #[error("{} is not a model folder or model repository: --file names the environment file of a model; to pack an environment file, give it alone", path.display())]
    FileWithoutModel {
        /// PATH.
        path: PathBuf,
    },
    /// A `SOURCE_DATE_EPOCH` that is not a number of seconds.
    #[error("SOURCE_DATE_EPOCH must be a whole number of seconds since 1970, not `{value}`")]
    SourceDateEpoch {
        /// The value given.
        value: String,
    },
    /// `envpack lock -o FILE` with several environment files.
    #[error("-o names one lock file, but the models use several environment files")]
    LockOutputForSeveral,
    /// `envpack lock` of a lock file.
    #[error("{} is a lock file already: give the environment file it was made from", path.display())]
    LockOfLock {
        /// The lock.
        path: PathBuf,
    },
    /// `envpack lock --prefix`.
    #[error("envpack lock locks an environment file, not an existing environment")]
    LockOfPrefix,
    /// `--locked` with `--frozen`.
    #[error(
        "--locked and --frozen exclude each other: --locked checks the lock against the environment file, --frozen does not"
    )]
    LockedAndFrozen,
    /// The environment file named or looked for.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// What PATH is.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--channel-alias`, `--mirror`.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// `--platform`, `--glibc`, `--cuda`.
    #[error(transparent)]
    Solve(#[from] SolveError),
}

impl SettingsError {
    /// Whether the user typed something that cannot work (exit code 2).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        match self {
            SettingsError::Spec(_) | SettingsError::Target(_) => false,
            SettingsError::Solve(e) => matches!(e, SolveError::InvalidSetting { .. }),
            _ => true,
        }
    }

    /// What the user can do about it.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            SettingsError::Spec(e) => e.hint(),
            SettingsError::Target(e) => e.hint(),
            _ => None,
        }
    }
}

/// What the user asked for, as parsed, before defaults.
#[derive(Debug, Clone, Default)]
#[allow(clippy::struct_excessive_bools)] // one field per flag, as parsed
pub struct Request {
    /// Environment file, or a folder holding one.
    pub path: Option<PathBuf>,
    /// An existing environment to pack instead.
    pub prefix: Option<PathBuf>,
    /// Output path.
    pub output: Option<PathBuf>,
    /// `--format`.
    pub format: Option<String>,
    /// `--compress-level`.
    pub level: Option<i32>,
    /// `--platform`.
    pub platform: Option<String>,
    /// `--glibc`.
    pub glibc: Option<String>,
    /// `--cuda`.
    pub cuda: Option<String>,
    /// `--channel-alias`.
    pub channel_alias: Option<String>,
    /// `--mirror`, repeatable.
    pub mirrors: Vec<String>,
    /// `--cache-dir`.
    pub cache_dir: Option<PathBuf>,
    /// `--work-dir`.
    pub work_dir: Option<PathBuf>,
    /// `--keep-work`.
    pub keep_work: bool,
    /// `--via-prefix` (hidden, for debugging).
    pub via_prefix: bool,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--force`.
    pub force: bool,
    /// `--arcroot`.
    pub arcroot: Option<String>,
    /// `--dest-prefix`.
    pub dest_prefix: Option<String>,
    /// `--include`/`--exclude` in command-line order.
    pub filters: Vec<Filter>,
    /// `--ignore-missing-files`.
    pub ignore_missing_files: bool,
    /// `--ignore-editable-packages`.
    pub ignore_editable_packages: bool,
    /// `--no-auto-relocate`.
    pub no_auto_relocate: bool,
    /// `--file`: the environment file (of a model, or instead of PATH).
    pub file: Option<PathBuf>,
    /// `--mlserver`: the image-level MLServer tarball.
    pub mlserver: bool,
    /// `--write-config`.
    pub write_config: bool,
    /// `--no-check`.
    pub no_check: bool,
    /// `--triton-version`.
    pub triton_version: Option<String>,
    /// `--parallel`.
    pub parallel: Option<usize>,
    /// `--copy-per-model`.
    pub copy_per_model: bool,
    /// `--python`.
    pub python: Option<String>,
    /// `--env-dir`.
    pub env_dir: Option<PathBuf>,
    /// `--locked`.
    pub locked: bool,
    /// `--frozen`.
    pub frozen: bool,
    /// `-e`: the environment of a pixi lock.
    pub environment: Option<String>,
}

/// What the pipeline packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An environment file, solved and installed first.
    EnvironmentFile(PathBuf),
    /// An existing environment.
    Prefix(PathBuf),
    /// An environment file, packed for MLServer's image (`MLSERVER_ENV_TARBALL`).
    MlServerImage(PathBuf),
    /// Triton or MLServer models: one model folder, or the models of a repository.
    Models {
        /// The repository root: the folder given for a repository, the model's parent folder
        /// for a single model. Environment files are looked up to here.
        root: PathBuf,
        /// The models, sorted by path.
        models: Vec<Model>,
    },
}

/// Everything resolved.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // one field per flag
pub struct Settings {
    /// What to pack.
    pub input: Input,
    /// What the user should know of how the input was read (reported before any work).
    pub notices: Vec<crate::report::Notice>,
    /// Where to write; `None`: derived from the environment's name.
    pub output: Option<PathBuf>,
    /// Channel names to URLs.
    pub channels: ChannelMap,
    /// Target platform.
    pub platform: Subdir,
    /// Target virtual packages.
    pub virtual_packages: VirtualPackageSettings,
    /// Package and repodata cache.
    pub cache_dir: PathBuf,
    /// Where staging prefixes are made.
    pub work_dir: PathBuf,
    /// Keep the staging prefix after packing.
    pub keep_work: bool,
    /// Always pack through a staging prefix (for debugging: the direct route from the package
    /// cache writes the same archive).
    pub via_prefix: bool,
    /// Threads for scanning and compression.
    pub threads: usize,
    /// Print the plan, write nothing.
    pub dry_run: bool,
    /// Overwrite the output.
    pub force: bool,
    /// How to pack.
    pub pack: PackOptions,
    /// The environment file of every model (`--file`), instead of looking one up.
    pub model_file: Option<PathBuf>,
    /// The output's file name inside each model folder (`-o NAME` with models).
    pub model_output_name: Option<String>,
    /// Point each model's config at its tarball.
    pub write_config: bool,
    /// Run the consumer checks.
    pub check: bool,
    /// The Triton release to check against.
    pub triton_version: Option<TritonVersion>,
    /// Environments of a model repository built at once.
    pub parallel: usize,
    /// Each model of a repository gets its own copy of a shared environment.
    pub copy_per_model: bool,
    /// The Python of environments made from a requirements file (`X.Y`).
    pub python: Option<String>,
    /// Where the shared environments of a repository go (default: its root; beside it for
    /// folders).
    pub env_dir: Option<PathBuf>,
    /// The folder the command runs in.
    pub cwd: PathBuf,
    /// What installs the `pip:` section.
    pub pip_tool: PipTool,
    /// How lock files are used.
    pub lock: LockSettings,
}

/// How lock files are used.
#[derive(Debug, Clone, Default)]
pub struct LockSettings {
    /// How a lock beside the environment file is used.
    pub mode: LockMode,
    /// The environment of a pixi lock (`-e`; default `default`).
    pub environment: Option<String>,
}

impl Settings {
    /// What the run reads, which no output may replace: the current folder, the environment
    /// file or prefix, the models (and the repository root), `--model-file`.
    #[must_use]
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cwd.clone()];
        match &self.input {
            Input::EnvironmentFile(p) | Input::Prefix(p) | Input::MlServerImage(p) => {
                v.push(p.clone());
            }
            Input::Models { root, models } => {
                v.push(root.clone());
                v.extend(models.iter().map(|m| m.dir.clone()));
            }
        }
        v.extend(self.model_file.clone());
        v
    }

    /// Resolves a request against the environment (`env` reads variables) and `cwd`.
    #[allow(clippy::too_many_lines)] // one field per flag
    pub fn resolve(
        req: Request,
        env: &dyn Fn(&str) -> Option<String>,
        cwd: &Path,
    ) -> Result<Settings, SettingsError> {
        check_versions(&req)?;
        let input = resolve_input(&req, cwd)?;
        let notices = implicit_repository(&req, &input, cwd);
        let (output, model_output_name, format) = resolve_output(&req, &input, cwd)?;
        check_values(&req, format)?;
        let models = matches!(input, Input::Models { .. });
        let triton_version = resolve_model_flags(&req, models)?;
        let alias = req
            .channel_alias
            .or_else(|| env("ENVPACK_CHANNEL_ALIAS").filter(|s| !s.is_empty()));
        let mut mirrors: Vec<String> = env("ENVPACK_MIRRORS")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        // Flags come after the variable: the last mirror of a channel wins.
        mirrors.extend(req.mirrors);
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let channels = ChannelMap::new(alias.as_deref(), &mirrors, cwd, home.as_deref())?;
        let platform = solve::target_platform(req.platform.as_deref())?;
        if !platform.is_linux() {
            return Err(SettingsError::NotLinux { platform });
        }
        let virtual_packages = VirtualPackageSettings::resolve(req.glibc, req.cuda, env);
        virtual_packages.packages(platform)?;
        let cache_dir = cache_dir(req.cache_dir.as_deref(), env, cwd)?;
        let work_dir = req.work_dir.map_or_else(
            || {
                PathBuf::from(
                    env("TMPDIR")
                        .filter(|t| !t.is_empty())
                        .unwrap_or("/tmp".into()),
                )
            },
            |w| cwd.join(w),
        );
        if let Some(d) = &req.dest_prefix
            && !d.starts_with('/')
        {
            return Err(SettingsError::DestPrefixNotAbsolute { value: d.clone() });
        }
        let threads = req
            .threads
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(std::num::NonZero::get)
            })
            .unwrap_or(1);
        let mtime = match env("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| SettingsError::SourceDateEpoch { value: v.clone() })?,
            None => crate::pack::archive::MTIME,
        };
        let parallel = req.parallel.unwrap_or_else(|| threads.min(4));
        Ok(Settings {
            input,
            notices,
            output,
            channels,
            platform,
            virtual_packages,
            cache_dir,
            work_dir,
            keep_work: req.keep_work,
            via_prefix: req.via_prefix,
            threads,
            dry_run: req.dry_run,
            force: req.force,
            pack: PackOptions {
                format,
                level: req.level,
                arcroot: req.arcroot,
                dest_prefix: req.dest_prefix,
                filters: req.filters,
                auto_relocate: !req.no_auto_relocate,
                url_rewrites: crate::channels::UrlRewrites::default(),
                ignore_missing_files: req.ignore_missing_files,
                ignore_editable_packages: req.ignore_editable_packages,
                variables: Vec::new(),
                mtime,
                manifest: None,
                record_link_type: None,
            },
            model_file: if models {
                req.file.map(|f| cwd.join(f))
            } else {
                None
            },
            model_output_name,
            write_config: req.write_config,
            check: !req.no_check,
            triton_version,
            parallel,
            copy_per_model: req.copy_per_model,
            python: req.python,
            env_dir: req.env_dir.map(|d| cwd.join(d)),
            cwd: cwd.to_path_buf(),
            pip_tool: PipTool::detect(env("PATH").as_deref()),
            lock: lock_settings(req.locked, req.frozen, req.environment)?,
        })
    }
}

/// `--cache-dir`, `ENVPACK_CACHE_DIR`, or rattler's (shared with pixi).
fn cache_dir(
    given: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<PathBuf, SettingsError> {
    match given {
        Some(c) => Ok(cwd.join(c)),
        None => env("ENVPACK_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| rattler_cache::default_cache_dir().ok())
            .ok_or(SettingsError::NoCacheDir),
    }
}

/// `--glibc`, `--cuda` and `--python` are versions (`X.Y` for Python).
fn check_versions(req: &Request) -> Result<(), SettingsError> {
    for (flag, value) in [("--glibc", &req.glibc), ("--cuda", &req.cuda)] {
        if let Some(v) = value
            && !is_dotted_version(v)
        {
            return Err(SettingsError::Version {
                flag,
                value: v.clone(),
            });
        }
    }
    if let Some(v) = &req.python
        && !(is_dotted_version(v) && v.matches('.').count() == 1)
    {
        return Err(SettingsError::Python { value: v.clone() });
    }
    Ok(())
}

/// Values that parse but cannot work: refused before any work.
fn check_values(req: &Request, format: Format) -> Result<(), SettingsError> {
    let invalid = |flag, value: String, reason| SettingsError::InvalidValue {
        flag,
        value,
        reason,
    };
    if req.threads == Some(0) {
        return Err(invalid("--threads", "0".into(), "give at least 1 thread"));
    }
    if req.parallel == Some(0) {
        return Err(invalid("--parallel", "0".into(), "give at least 1"));
    }
    // The format's range, as packing checks it, but before any work.
    crate::pack::archive::compression_for(format, req.level)?;
    if let Some(d) = &req.dest_prefix
        && d.chars().any(char::is_control)
    {
        return Err(invalid(
            "--dest-prefix",
            d.clone(),
            "holds a control character (a newline?)",
        ));
    }
    if let Some(a) = &req.arcroot {
        let p = Path::new(a);
        if a.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || a.chars().any(char::is_control)
        {
            return Err(invalid(
                "--arcroot",
                a.clone(),
                "must be a relative path of plain folder names (no `..`, `.` or leading `/`)",
            ));
        }
    }
    Ok(())
}

/// `2.28`, `12.4.1`: numbers separated by dots.
fn is_dotted_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// How a lock beside the environment file is used (`--locked`, `--frozen`, or when it
/// matches), and `-e`.
fn lock_settings(
    locked: bool,
    frozen: bool,
    environment: Option<String>,
) -> Result<LockSettings, SettingsError> {
    let mode = match (locked, frozen) {
        (true, true) => return Err(SettingsError::LockedAndFrozen),
        (true, false) => LockMode::Locked,
        (false, true) => LockMode::Frozen,
        (false, false) => LockMode::Auto,
    };
    Ok(LockSettings { mode, environment })
}

/// `--triton-version`, parsed, after checking that the model flags have models to act on.
fn resolve_model_flags(
    req: &Request,
    models: bool,
) -> Result<Option<TritonVersion>, SettingsError> {
    let triton_version = req
        .triton_version
        .as_deref()
        .map(|v| {
            v.parse::<TritonVersion>()
                .map_err(|_| SettingsError::TritonVersion {
                    value: v.to_string(),
                })
        })
        .transpose()?;
    if req.write_config && !models {
        return Err(SettingsError::NeedsModels {
            flag: "--write-config",
        });
    }
    if triton_version.is_some() && !models {
        return Err(SettingsError::NeedsModels {
            flag: "--triton-version",
        });
    }
    if req.copy_per_model && !models {
        return Err(SettingsError::NeedsModels {
            flag: "--copy-per-model",
        });
    }
    if req.env_dir.is_some() && !models {
        return Err(SettingsError::NeedsModels { flag: "--env-dir" });
    }
    Ok(triton_version)
}

/// The output, a model output name (`-o NAME` with models) and the format.
fn resolve_output(
    req: &Request,
    input: &Input,
    cwd: &Path,
) -> Result<(Option<PathBuf>, Option<String>, Format), SettingsError> {
    // With models, a bare file name is the output's name inside each model folder.
    let (output, model_output_name) = match (&req.output, input) {
        (Some(o), Input::Models { models, .. }) if o.components().count() == 1 => {
            let name = o
                .to_str()
                .ok_or_else(|| SettingsError::NonUtf8Output { path: o.clone() })?;
            if models.len() == 1 {
                (Some(models[0].dir.join(name)), Some(name.to_string()))
            } else {
                (None, Some(name.to_string()))
            }
        }
        (Some(o), Input::Models { models, .. }) if models.len() > 1 => {
            return Err(SettingsError::OutputPathForRepository { path: o.clone() });
        }
        (o, _) => (
            o.as_ref().map(|o| crate::paths::normalize(&cwd.join(o))),
            None,
        ),
    };
    let named = output
        .clone()
        .or_else(|| model_output_name.as_ref().map(PathBuf::from));
    let format = match (&req.format, &named) {
        (Some(f), _) => {
            Format::parse(f).ok_or_else(|| SettingsError::UnknownFormat { value: f.clone() })?
        }
        (None, Some(o)) => Format::from_path(o).unwrap_or(Format::TarGz),
        (None, None) => Format::TarGz,
    };
    if let (Some(o), true) = (&named, req.format.is_none())
        && Format::from_path(o).is_none()
        && !o.is_dir()
    {
        return Err(SettingsError::UnknownExtension { path: o.clone() });
    }
    // `--format tar.gz -o x.tar.zst` would write gzip into a .tar.zst; `--format dir -o
    // x.tar.gz` a folder named like a tarball.
    if let (Some(o), Some(_)) = (&named, &req.format)
        && let Some(implied) = Format::from_path(o)
        && implied != format
    {
        return Err(SettingsError::FormatMismatch {
            path: o.clone(),
            format,
        });
    }
    Ok((output, model_output_name, format))
}

/// The environment file of `path`: the file itself, or in a folder the first of
/// [`spec::FILE_NAMES`] and the lock files [`lock::FILE_NAMES`], then a requirements file.
fn locate(path: &Path) -> Result<PathBuf, SettingsError> {
    if path.is_dir()
        && let Some(p) = spec::FILE_NAMES
            .iter()
            .chain(lock::FILE_NAMES.iter())
            .map(|n| path.join(n))
            .find(|p| p.is_file())
    {
        return Ok(p);
    }
    Ok(spec::locate(path)?)
}

/// `envpack pack` with no PATH, in a folder with no environment file, packs the models found
/// below it: say so, it is not what the command usually does.
fn implicit_repository(req: &Request, input: &Input, cwd: &Path) -> Vec<crate::report::Notice> {
    let Input::Models { models, .. } = input else {
        return Vec::new();
    };
    let has_file = spec::FILE_NAMES
        .iter()
        .chain(lock::FILE_NAMES.iter())
        .chain([&spec::REQUIREMENTS])
        .any(|n| cwd.join(n).is_file());
    if req.path.is_some() || req.file.is_some() || has_file {
        return Vec::new();
    }
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    vec![crate::report::Notice::note(format!(
        "no environment file in {}: packing the {} found below it ({}); give an environment file or one model folder as PATH to pack only that",
        cwd.display(),
        if names.len() == 1 {
            "model".to_string()
        } else {
            format!("{} models", names.len())
        },
        names.join(", ")
    ))]
}

/// What PATH (and `--file`, `--prefix`, `--mlserver`) name.
fn resolve_input(req: &Request, cwd: &Path) -> Result<Input, SettingsError> {
    if req.prefix.is_some() && (req.path.is_some() || req.file.is_some() || req.mlserver) {
        return Err(SettingsError::PrefixWithPath);
    }
    if let Some(p) = &req.prefix {
        let p = cwd.join(p);
        if !p.is_dir() {
            return Err(SettingsError::NoSuchPrefix { path: p });
        }
        return Ok(Input::Prefix(p));
    }
    if req.mlserver {
        // The image-level tarball: PATH (or --file) is an environment file or its folder.
        if req.path.is_some() && req.file.is_some() {
            return Err(SettingsError::MlServerPathAndFile);
        }
        let p = cwd.join(
            req.file
                .clone()
                .or_else(|| req.path.clone())
                .unwrap_or_else(|| ".".into()),
        );
        return Ok(Input::MlServerImage(locate(&p)?));
    }
    if req.path.is_none()
        && let Some(f) = &req.file
    {
        return Ok(Input::EnvironmentFile(locate(&cwd.join(f))?));
    }
    let p = cwd.join(req.path.clone().unwrap_or_else(|| PathBuf::from(".")));
    match targets::detect(&p)? {
        Detected::Model(model) => {
            let root = model
                .dir
                .parent()
                .map_or_else(|| model.dir.clone(), Path::to_path_buf);
            Ok(Input::Models {
                root,
                models: vec![model],
            })
        }
        Detected::Repository { root, models } => Ok(Input::Models { root, models }),
        Detected::Environment if req.file.is_some() => {
            Err(SettingsError::FileWithoutModel { path: p })
        }
        Detected::Environment => Ok(Input::EnvironmentFile(locate(&p)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(req: Request, cwd: &Path) -> Result<Settings, SettingsError> {
        let req = Request {
            cache_dir: Some(cwd.join("cache")),
            ..req
        };
        Settings::resolve(req, &|_| None, cwd)
    }

    /// `models/{tri,mls}` and `models/environment.yml`, in a canonical temporary folder.
    fn repo() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = fs_err::canonicalize(t.path()).unwrap();
        let models = root.join("models");
        for (dir, file) in [("tri", "config.pbtxt"), ("mls", "model-settings.json")] {
            fs_err::create_dir_all(models.join(dir)).unwrap();
            fs_err::write(models.join(dir).join(file), "{}").unwrap();
        }
        fs_err::write(models.join("environment.yml"), "dependencies: [python]").unwrap();
        (t, root)
    }

    fn path(p: &str) -> Request {
        Request {
            path: Some(p.into()),
            ..Request::default()
        }
    }

    #[test]
    fn a_model_folder_is_packed_as_a_model_of_its_parent_repository() {
        let (_t, root) = repo();
        let s = resolve(path("models/tri"), &root).unwrap();
        let Input::Models { root: r, models } = &s.input else {
            panic!("{:?}", s.input)
        };
        assert_eq!(r, &root.join("models"));
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].server, targets::Server::Triton);
        let s = resolve(path("models"), &root).unwrap();
        assert!(matches!(&s.input, Input::Models { models, .. } if models.len() == 2));
        // The environment file itself is packed as before.
        let s = resolve(path("models/environment.yml"), &root).unwrap();
        assert_eq!(
            s.input,
            Input::EnvironmentFile(root.join("models/environment.yml"))
        );
    }

    #[test]
    fn a_bare_output_name_goes_into_each_model_folder() {
        let (_t, root) = repo();
        let s = resolve(
            Request {
                output: Some("env.tar".into()),
                ..path("models")
            },
            &root,
        )
        .unwrap();
        assert_eq!(s.model_output_name.as_deref(), Some("env.tar"));
        assert_eq!(s.output, None);
        assert_eq!(s.pack.format, Format::Tar);
        let s = resolve(
            Request {
                output: Some("x.tar.gz".into()),
                ..path("models/tri")
            },
            &root,
        )
        .unwrap();
        assert_eq!(s.output, Some(root.join("models/tri/x.tar.gz")));
        let e = resolve(
            Request {
                output: Some("out/x.tar.gz".into()),
                ..path("models")
            },
            &root,
        )
        .unwrap_err();
        assert!(e.is_usage(), "{e}");
    }

    #[test]
    fn model_flags_need_models_and_a_valid_release() {
        let (_t, root) = repo();
        fs_err::create_dir_all(root.join("plain")).unwrap();
        let env_file = || path("models/environment.yml");
        for req in [
            Request {
                write_config: true,
                ..env_file()
            },
            Request {
                triton_version: Some("24.10".into()),
                ..env_file()
            },
            Request {
                triton_version: Some("2.51.0".into()),
                ..path("models")
            },
            // --file with a folder that holds no model.
            Request {
                file: Some("models/environment.yml".into()),
                ..path("plain")
            },
        ] {
            let e = resolve(req.clone(), &root).unwrap_err();
            assert!(e.is_usage(), "{req:?}: {e}");
        }
        let s = resolve(
            Request {
                triton_version: Some("24.10".into()),
                write_config: true,
                no_check: true,
                file: Some("models/environment.yml".into()),
                ..path("models")
            },
            &root,
        )
        .unwrap();
        assert_eq!(
            s.triton_version.map(|v| v.to_string()).as_deref(),
            Some("24.10")
        );
        assert!(s.write_config && !s.check);
        assert_eq!(s.model_file, Some(root.join("models/environment.yml")));
    }

    #[test]
    fn mlserver_and_file_alone_name_an_environment_file() {
        let (_t, root) = repo();
        let s = resolve(
            Request {
                mlserver: true,
                ..path("models")
            },
            &root,
        )
        .unwrap();
        assert_eq!(
            s.input,
            Input::MlServerImage(root.join("models/environment.yml"))
        );
        let s = resolve(
            Request {
                file: Some("models/environment.yml".into()),
                ..Request::default()
            },
            &root,
        )
        .unwrap();
        assert_eq!(
            s.input,
            Input::EnvironmentFile(root.join("models/environment.yml"))
        );
    }
}
