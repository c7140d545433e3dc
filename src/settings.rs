//! Settings: command-line values and environment variables, resolved once.
//!
//! The binary parses arguments into a [`Request`]; [`Settings::resolve`] applies defaults and
//! the `ENVPACK_*` / `CONDA_OVERRIDE_*` variables, so the pipeline never looks at either.

use std::path::{Path, PathBuf};

use rattler_conda_types::Subdir;

use crate::Error;
use crate::channels::ChannelMap;
use crate::pack::{Filter, Format, PackOptions};
use crate::solve::{self, VirtualPackageSettings};

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
}

/// What the pipeline packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An environment file, solved and installed first.
    EnvironmentFile(PathBuf),
    /// An existing environment.
    Prefix(PathBuf),
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What to pack.
    pub input: Input,
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
    /// Threads for scanning and compression.
    pub threads: usize,
    /// Print the plan, write nothing.
    pub dry_run: bool,
    /// Overwrite the output.
    pub force: bool,
    /// How to pack.
    pub pack: PackOptions,
}

impl Settings {
    /// Resolves a request against the environment (`env` reads variables) and `cwd`.
    pub fn resolve(
        req: Request,
        env: &dyn Fn(&str) -> Option<String>,
        cwd: &Path,
    ) -> Result<Settings, Error> {
        let input = match (&req.prefix, &req.path) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "give either an environment file or --prefix, not both".into(),
                ));
            }
            (Some(p), None) => Input::Prefix(cwd.join(p)),
            (None, p) => {
                let p = cwd.join(p.clone().unwrap_or_else(|| PathBuf::from(".")));
                Input::EnvironmentFile(crate::spec::locate(&p)?)
            }
        };
        let alias = req
            .channel_alias
            .or_else(|| env("ENVPACK_CHANNEL_ALIAS").filter(|s| !s.is_empty()));
        let mut mirrors: Vec<String> = env("ENVPACK_MIRRORS")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        // Flags come first: the first matching mirror wins.
        mirrors.splice(0..0, req.mirrors);
        let channels = ChannelMap::new(alias.as_deref(), &mirrors, cwd)?;
        let platform = solve::target_platform(req.platform.as_deref())?;
        if !platform.is_linux() {
            return Err(Error::Usage(format!(
                "platform {platform} is not supported: Triton and MLServer run Linux containers"
            )));
        }
        let virtual_packages = VirtualPackageSettings::resolve(req.glibc, req.cuda, env);
        virtual_packages.packages(platform)?;
        let cache_dir = match req.cache_dir {
            Some(c) => cwd.join(c),
            None => env("ENVPACK_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| rattler_cache::default_cache_dir().ok())
                .ok_or_else(|| {
                    Error::Usage("cannot find a cache folder: pass --cache-dir".into())
                })?,
        };
        let work_dir = req
            .work_dir
            .map_or_else(std::env::temp_dir, |w| cwd.join(w));
        let output = req.output.map(|o| cwd.join(o));
        let format = match (&req.format, &output) {
            (Some(f), _) => Format::parse(f).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown format `{f}`: use tar.gz, tar.zst, tar or dir"
                ))
            })?,
            (None, Some(o)) => Format::from_path(o).unwrap_or(Format::TarGz),
            (None, None) => Format::TarGz,
        };
        if let (Some(o), true) = (&output, req.format.is_none())
            && Format::from_path(o).is_none()
            && !o.is_dir()
        {
            return Err(Error::Usage(format!(
                "cannot tell the format from `{}`: name it .tar.gz, .tar.zst or .tar, or pass --format",
                o.display()
            )));
        }
        if let Some(d) = &req.dest_prefix
            && !d.starts_with('/')
        {
            return Err(Error::Usage(format!(
                "--dest-prefix must be an absolute path, not `{d}`"
            )));
        }
        let threads = req
            .threads
            .filter(|t| *t > 0)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(std::num::NonZero::get)
            })
            .unwrap_or(1);
        Ok(Settings {
            input,
            output,
            channels,
            platform,
            virtual_packages,
            cache_dir,
            work_dir,
            keep_work: req.keep_work,
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
                url_rewrites: Vec::new(),
                ignore_missing_files: req.ignore_missing_files,
                ignore_editable_packages: req.ignore_editable_packages,
                variables: Vec::new(),
            },
        })
    }
}
