//! `envpack lock`: solve an environment file for each `--platform`, resolve its `pip:` section
//! with the environment's own pip (`pip install --dry-run --report`, after installing the
//! conda packages into a staging prefix, so for the environment's Python and platform), and
//! write [`lock::CONDA_LOCK_FILE`] beside the environment file.
//!
//! Installing a lock instead of solving is the engine's ([`crate::pipeline`]).

use std::path::{Path, PathBuf};

use rattler_conda_types::Subdir;
use serde::Serialize;
use url::Url;

use crate::error::Error;
use crate::install;
use crate::lock::{self, LockMode};
use crate::pipeline::Pipeline;
use crate::report::{SharedReporter, Stage, Timings};
use crate::settings::{Input, LockSettings, Settings, SettingsError};
use crate::solve;
use crate::spec;
use crate::targets;

/// One platform of a lock written.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformReport {
    /// The platform.
    pub platform: String,
    /// Conda packages locked.
    pub packages: usize,
    /// `pip:` packages locked.
    pub pip: usize,
}

/// What `envpack lock` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    /// The environment file locked.
    pub environment_file: PathBuf,
    /// The lock written.
    pub lock_file: PathBuf,
    /// Per platform, what it locks.
    pub platforms: Vec<PlatformReport>,
    /// Seconds per stage.
    pub timings: Timings,
}

/// `envpack lock`: solves each environment file of `settings` (PATH, or each model's) for each
/// of `platforms` (default: the settings' platform) and writes its lock (`output`, or
/// `conda-lock.yml` beside it).
pub fn lock(
    settings: &Settings,
    platforms: &[String],
    output: Option<&Path>,
    reporter: &SharedReporter,
) -> Result<Vec<LockReport>, Error> {
    let mut targets_platforms: Vec<Subdir> = Vec::new();
    for p in platforms {
        let p = solve::target_platform(Some(p)).map_err(SettingsError::from)?;
        if !p.is_linux() {
            return Err(SettingsError::NotLinux { platform: p }.into());
        }
        if !targets_platforms.contains(&p) {
            targets_platforms.push(p);
        }
    }
    if targets_platforms.is_empty() {
        targets_platforms.push(settings.platform);
    }
    let files = environment_files(settings)?;
    if output.is_some() && files.len() > 1 {
        return Err(SettingsError::LockOutputForSeveral.into());
    }
    if let Some(f) = files.iter().find(|f| lock::detect(f).is_some()) {
        return Err(SettingsError::LockOfLock { path: f.clone() }.into());
    }
    let mut reports = Vec::new();
    for file in files {
        let env = spec::read(&file)?;
        let target = output.map_or_else(
            || env.base_dir().join(lock::CONDA_LOCK_FILE),
            Path::to_path_buf,
        );
        let mut timings = Timings::default();
        let mut locks = Vec::new();
        for platform in &targets_platforms {
            let s = Settings {
                platform: *platform,
                lock: LockSettings {
                    mode: LockMode::Ignore,
                    environment: None,
                },
                ..settings.clone()
            };
            let p = Pipeline::new(&s)?;
            let solved = p.solve(env.clone(), reporter)?;
            timings.extend(&solved.timings);
            let pip = if env.pip.is_empty() {
                Vec::new()
            } else {
                let mut conda_only = solved.clone();
                conda_only.env.pip.clear();
                let staged = p.install(&conda_only, reporter)?;
                timings.extend(&staged.timings);
                let work = staged.prefix.parent().unwrap_or(&staged.prefix);
                timings.time(Stage::Pip, || {
                    install::resolve_pip(&staged.prefix, &env.pip, env.base_dir(), work)
                })?
            };
            // The lock names the channels, never the mirrors the packages came from.
            let canonical = |u: &str| solved.rewrites.apply(u).unwrap_or_else(|| u.to_string());
            let records = solved
                .records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if let Ok(u) = Url::parse(&canonical(r.url.as_str())) {
                        r.url = u;
                    }
                    r.channel = r.channel.map(|c| canonical(&c));
                    r
                })
                .collect();
            locks.push(lock::PlatformLock {
                platform: *platform,
                records,
                pip,
            });
        }
        let lock_dir = target.parent().unwrap_or(Path::new("."));
        let new = lock::NewLock {
            name: env.name.clone(),
            source: relative_to(&file, lock_dir),
            inputs: lock::Inputs::of(&env, &settings.virtual_packages, settings.channels.alias()),
            variables: env.variables.clone(),
            platforms: locks,
        };
        lock::write_conda_lock(&target, &new)?;
        reports.push(LockReport {
            environment_file: file,
            lock_file: target,
            platforms: new
                .platforms
                .iter()
                .map(|p| PlatformReport {
                    platform: p.platform.to_string(),
                    packages: p.records.len(),
                    pip: p.pip.len(),
                })
                .collect(),
            timings,
        });
    }
    Ok(reports)
}

/// The environment files PATH names: the file, or each model's (once each).
fn environment_files(settings: &Settings) -> Result<Vec<PathBuf>, Error> {
    let mut files: Vec<PathBuf> = Vec::new();
    match &settings.input {
        Input::EnvironmentFile(f) | Input::MlServerImage(f) => files.push(f.clone()),
        Input::Models { root, models } => {
            for m in models {
                let f = match &settings.model_file {
                    Some(f) => spec::locate(f)?,
                    None => targets::find_environment_file(&m.dir, root)?,
                };
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        Input::Prefix(_) => return Err(SettingsError::LockOfPrefix.into()),
    }
    Ok(files)
}

/// `file` relative to `dir` (`../x/environment.yml`), or absolute when they share nothing.
fn relative_to(file: &Path, dir: &Path) -> String {
    let (Ok(file), Ok(dir)) = (fs_err::canonicalize(file), fs_err::canonicalize(dir)) else {
        return file.display().to_string();
    };
    let common = file
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    if common <= 1 {
        return file.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in dir.components().skip(common) {
        rel.push("..");
    }
    for c in file.components().skip(common) {
        rel.push(c);
    }
    rel.display().to_string()
}
