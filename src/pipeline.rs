//! The pipeline: settings in, an archive (and a summary) out.
//!
//! Resolve, plan, execute: the environment file is read and solved (the plan of packages),
//! `--dry-run` stops there; otherwise packages are installed into a staging prefix in a work
//! folder, packed, and the staging prefix removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::install::{self, PipTool};
use crate::pack::{self, Format, PackError, PackPlan};
use crate::report::{SharedReporter, Stage};
use crate::settings::{Input, Settings};
use crate::solve::{self, SolveRequest};
use crate::{Error, channels, spec};

/// One package of the environment, for reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackageSummary {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Build string.
    pub build: String,
    /// Canonical channel URL.
    pub channel: String,
    /// Archive size in bytes.
    pub size: u64,
}

/// What a run did: the human summary and `--json` print the same facts.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The environment file, if one was solved.
    pub environment_file: Option<PathBuf>,
    /// The prefix packed, when packing an existing one.
    pub prefix: Option<PathBuf>,
    /// The output.
    pub output: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its size (0 on a dry run).
    pub size: u64,
    /// Target platform.
    pub platform: String,
    /// The solved packages.
    pub packages: Vec<PackageSummary>,
    /// Bytes to download at most (all package archives).
    pub download_size: u64,
    /// pip lines installed.
    pub pip: Vec<String>,
    /// Number of archive members.
    pub members: usize,
    /// Files relocated when the environment moves.
    pub relocated_files: usize,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Nothing was written.
    pub dry_run: bool,
    /// Seconds per stage.
    pub timings: Vec<(String, f64)>,
}

/// Runs the whole job.
pub fn run(settings: &Settings, reporter: &SharedReporter) -> Result<Summary, Error> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            .thread_name(|i| format!("envpack-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start {} threads: {e}", settings.threads)))?,
    );
    match &settings.input {
        Input::Prefix(prefix) => pack_prefix(settings, prefix, pool, reporter),
        Input::EnvironmentFile(file) => pack_environment(settings, file, pool, reporter),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: PathBuf::from("<tokio runtime>"),
            source,
        })
}

fn http_client() -> Result<rattler_networking::LazyClient, Error> {
    let auth = rattler_networking::AuthenticationMiddleware::from_env_and_defaults()
        .map_err(Error::Auth)?;
    Ok(rattler_networking::LazyClient::new(move || {
        let client = reqwest::Client::builder()
            .user_agent(concat!("envpack/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default settings");
        reqwest_middleware::ClientBuilder::new(client)
            .with(auth)
            .build()
    }))
}

fn check_output(settings: &Settings, output: &Path) -> Result<(), Error> {
    if output.exists() && !settings.force && !settings.dry_run {
        return Err(PackError::OutputExists {
            path: output.to_path_buf(),
        }
        .into());
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Error::Usage(format!(
            "the output folder {} does not exist",
            parent.display()
        )));
    }
    Ok(())
}

fn default_output(name: &str, format: Format) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.join(format!("{name}{}", format.extension()))
}

fn pack_prefix(
    settings: &Settings,
    prefix: &Path,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<Summary, Error> {
    let name = fs_err::canonicalize(prefix)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "environment".into());
    let output = settings
        .output
        .clone()
        .unwrap_or_else(|| default_output(&name, settings.pack.format));
    check_output(settings, &output)?;
    let mut timings = Vec::new();
    let t = Instant::now();
    let plan = pack::plan(prefix, &settings.pack, &pool, reporter)?;
    timings.push(("scan".to_string(), t.elapsed().as_secs_f64()));
    for w in &plan.warnings {
        reporter.on_warning(w);
    }
    let size = if settings.dry_run {
        0
    } else {
        let t = Instant::now();
        let size = pack::execute(&plan, &output, pool, reporter)?;
        timings.push(("pack".to_string(), t.elapsed().as_secs_f64()));
        size
    };
    Ok(summary_of(
        &plan,
        None,
        Some(plan.prefix.clone()),
        output,
        size,
        settings,
        Vec::new(),
        Vec::new(),
        timings,
    ))
}

#[allow(clippy::too_many_arguments)]
fn summary_of(
    plan: &PackPlan,
    environment_file: Option<PathBuf>,
    prefix: Option<PathBuf>,
    output: PathBuf,
    size: u64,
    settings: &Settings,
    packages: Vec<PackageSummary>,
    pip: Vec<String>,
    timings: Vec<(String, f64)>,
) -> Summary {
    Summary {
        environment_file,
        prefix,
        output,
        format: plan.format,
        size,
        platform: settings.platform.to_string(),
        download_size: packages.iter().map(|p| p.size).sum(),
        packages,
        pip,
        members: plan.members.len(),
        relocated_files: plan.relocations.len(),
        warnings: plan.warnings.clone(),
        dry_run: settings.dry_run,
        timings,
    }
}

fn pack_environment(
    settings: &Settings,
    file: &Path,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<Summary, Error> {
    let env = spec::read(file)?;
    let name = env.name.clone().unwrap_or_else(|| "environment".into());
    let output = settings
        .output
        .clone()
        .unwrap_or_else(|| default_output(&name, settings.pack.format));
    check_output(settings, &output)?;
    let pip_tool = PipTool::detect();
    if !env.pip.is_empty() {
        // Before any work: the target must be runnable here.
        install::check_pip_platform(settings.platform)?;
    }
    let rt = runtime()?;
    let client = http_client()?;
    let mut timings = Vec::new();

    let t = Instant::now();
    reporter.on_stage_start(Stage::Solve, None);
    let solution = rt.block_on(solve::solve(SolveRequest {
        spec: &env,
        channels: &settings.channels,
        platform: settings.platform,
        virtual_packages: settings.virtual_packages.packages(settings.platform)?,
        cache_dir: settings.cache_dir.clone(),
        client: client.clone(),
    }))?;
    reporter.on_stage_end(Stage::Solve);
    timings.push(("solve".to_string(), t.elapsed().as_secs_f64()));
    if !env.pip.is_empty() {
        install::check_pip(settings.platform, &solution.records, &pip_tool)?;
    }
    let rewrites = channels::canonical_rewrites(&solution.channels);
    let packages = package_summaries(&solution, &rewrites);
    let mut summary = Summary {
        environment_file: Some(env.path.clone()),
        prefix: None,
        output,
        format: settings.pack.format,
        size: 0,
        platform: settings.platform.to_string(),
        download_size: packages.iter().map(|p| p.size).sum(),
        packages,
        pip: env.pip.clone(),
        members: 0,
        relocated_files: 0,
        warnings: Vec::new(),
        dry_run: settings.dry_run,
        timings,
    };
    if settings.dry_run {
        return Ok(summary);
    }

    let work = work_dir(settings)?;
    let staging = work.path().join("env");
    let t = Instant::now();
    rt.block_on(install::install_conda(
        &staging,
        solution.records,
        settings.platform,
        &settings.cache_dir,
        client,
        reporter.clone(),
    ))?;
    summary
        .timings
        .push(("install".to_string(), t.elapsed().as_secs_f64()));
    drop(rt);
    if !env.pip.is_empty() {
        let t = Instant::now();
        install::install_pip(
            &staging,
            &env.pip,
            env.base_dir(),
            work.path(),
            &pip_tool,
            reporter,
        )?;
        summary
            .timings
            .push(("pip".to_string(), t.elapsed().as_secs_f64()));
    }

    let mut options = settings.pack.clone();
    options.url_rewrites = rewrites;
    options.variables.clone_from(&env.variables);
    pack_staging(&mut summary, &staging, &options, pool, reporter)?;
    if settings.keep_work {
        let kept = work.keep();
        reporter.on_warning(&format!(
            "staging prefix kept at {}",
            kept.join("env").display()
        ));
    }
    Ok(summary)
}

/// Plans and writes the archive of the staging prefix, filling in the summary.
fn pack_staging(
    summary: &mut Summary,
    staging: &Path,
    options: &pack::PackOptions,
    pool: Arc<rayon::ThreadPool>,
    reporter: &SharedReporter,
) -> Result<(), Error> {
    let t = Instant::now();
    let plan = pack::plan(staging, options, &pool, reporter)?;
    summary
        .timings
        .push(("scan".to_string(), t.elapsed().as_secs_f64()));
    for w in &plan.warnings {
        reporter.on_warning(w);
    }
    let t = Instant::now();
    summary.size = pack::execute(&plan, &summary.output, pool, reporter)?;
    summary
        .timings
        .push(("pack".to_string(), t.elapsed().as_secs_f64()));
    summary.members = plan.members.len();
    summary.relocated_files = plan.relocations.len();
    summary.warnings = plan.warnings;
    Ok(())
}

/// A fresh folder for the staging prefix, removed when dropped.
fn work_dir(settings: &Settings) -> Result<tempfile::TempDir, Error> {
    let io = |source| Error::Io {
        path: settings.work_dir.clone(),
        source,
    };
    fs_err::create_dir_all(&settings.work_dir).map_err(io)?;
    tempfile::Builder::new()
        .prefix("envpack-")
        .tempdir_in(&settings.work_dir)
        .map_err(io)
}

fn package_summaries(
    solution: &solve::Solution,
    rewrites: &[(String, String)],
) -> Vec<PackageSummary> {
    solution
        .records
        .iter()
        .map(|r| PackageSummary {
            name: r.package_record.name.as_normalized().to_string(),
            version: r.package_record.version.to_string(),
            build: r.package_record.build.to_string(),
            channel: canonical(r.channel.as_deref().unwrap_or_default(), rewrites),
            size: r.package_record.size.unwrap_or(0),
        })
        .collect()
}

fn canonical(url: &str, rewrites: &[(String, String)]) -> String {
    let trimmed = url.trim_end_matches('/');
    rewrites
        .iter()
        .find(|(f, _)| trimmed.starts_with(f.as_str()))
        .map_or_else(
            || trimmed.to_string(),
            |(f, t)| format!("{t}{}", &trimmed[f.len()..]),
        )
}
