//! The pipeline: settings in, an archive (and a summary) out.
//!
//! Resolve, plan, execute, as steps that [`crate::targets`] drives too:
//! [`Pipeline::solve`] reads and solves the environment file (the plan `--dry-run` prints),
//! [`Pipeline::install`] installs the packages and the `pip:` section into a staging prefix in
//! a work folder, the targets check that prefix for their server, and [`Pipeline::pack`]
//! writes the archive. The staging prefix is removed when the [`Staged`] value is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rattler_conda_types::RepoDataRecord;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::install::{self, PipTool};
use crate::pack::{self, Format, PackError, PackPlan};
use crate::report::{SharedReporter, Stage};
use crate::settings::{Input, Settings};
use crate::solve::{self, SolveRequest};
use crate::spec::EnvironmentSpec;
use crate::{Error, channels, spec, targets};

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

/// What `envpack pack` reports: one environment, or the models of a model target.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// An environment file or an existing prefix, packed into one output.
    Environment(Summary),
    /// A Triton or MLServer model, or a model repository.
    Models(targets::ModelsReport),
}

/// Runs the whole job.
pub fn run(settings: &Settings, reporter: &SharedReporter) -> Result<Report, Error> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            .thread_name(|i| format!("envpack-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start {} threads: {e}", settings.threads)))?,
    );
    match &settings.input {
        Input::Prefix(prefix) => {
            pack_prefix(settings, prefix, pool, reporter).map(Report::Environment)
        }
        Input::EnvironmentFile(file) => {
            let p = Pipeline::new(settings, pool)?;
            pack_environment(&p, file, reporter).map(Report::Environment)
        }
        Input::MlServerImage(file) => {
            let p = Pipeline::new(settings, pool)?;
            targets::pack_mlserver_image(&p, file, reporter).map(Report::Environment)
        }
        Input::Models { root, models } => {
            let p = Pipeline::new(settings, pool)?;
            targets::pack_models(&p, root, models, reporter).map(Report::Models)
        }
    }
}

/// The shared resources of one run (thread pool, async runtime, HTTP client), and the steps
/// that use them. One value serves several environments built at once: every step takes
/// `&self`, and the pools are sized once from `--threads`, so concurrent builds share the
/// machine's cores instead of multiplying threads.
pub struct Pipeline<'a> {
    /// The resolved settings.
    pub settings: &'a Settings,
    pool: Arc<rayon::ThreadPool>,
    rt: tokio::runtime::Runtime,
    client: rattler_networking::LazyClient,
    pip_tool: PipTool,
}

/// An environment file, read and solved: the plan of one environment.
#[derive(Debug, Clone)]
pub struct Solved {
    /// The environment file.
    pub env: EnvironmentSpec,
    /// The packages to install.
    pub records: Vec<RepoDataRecord>,
    /// The same, for reports (canonical channels).
    pub packages: Vec<PackageSummary>,
    /// Mirror URL prefix → canonical URL prefix, for `conda-meta`.
    pub rewrites: Vec<(String, String)>,
    /// Seconds per stage so far.
    pub timings: Vec<(String, f64)>,
}

impl Solved {
    /// A digest of everything that decides the archive's bytes: the package files, the `pip:`
    /// lines (with the folder relative paths in them are relative to) and the `variables:`.
    /// Two environments with the same identity pack to the same tarball.
    #[must_use]
    pub fn identity(&self) -> String {
        let mut h = Sha256::new();
        let mut urls: Vec<String> = self
            .records
            .iter()
            .map(|r| {
                let sha = r
                    .package_record
                    .sha256
                    .map(|s| spec::hex(s.as_slice()))
                    .unwrap_or_default();
                format!("{} {sha}", r.url)
            })
            .collect();
        urls.sort();
        for u in &urls {
            h.update(u.as_bytes());
            h.update(b"\n");
        }
        h.update(b"\0pip\n");
        if refers_to_files(&self.env) {
            h.update(self.env.base_dir().as_os_str().as_encoded_bytes());
            h.update(b"\n");
        }
        for l in &self.env.pip {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.update(b"\0variables\n");
        for (k, v) in &self.env.variables {
            h.update(format!("{k}={v}\n").as_bytes());
        }
        spec::hex(&h.finalize())
    }

    /// The summary of this environment packed into `output` (sizes filled in by the pack).
    #[must_use]
    pub fn summary(&self, settings: &Settings, output: PathBuf, format: Format) -> Summary {
        Summary {
            environment_file: Some(self.env.path.clone()),
            prefix: None,
            output,
            format,
            size: 0,
            platform: settings.platform.to_string(),
            download_size: self.packages.iter().map(|p| p.size).sum(),
            packages: self.packages.clone(),
            pip: self.env.pip.clone(),
            members: 0,
            relocated_files: 0,
            warnings: Vec::new(),
            dry_run: settings.dry_run,
            timings: self.timings.clone(),
        }
    }
}

/// Whether the environment file names files relative to its folder (a local channel, or a
/// `pip:` line such as `-r requirements.txt` or `./pkg`): then its folder is part of what it is.
#[must_use]
pub fn refers_to_files(env: &EnvironmentSpec) -> bool {
    let local_channel = env
        .channels
        .iter()
        .any(|c| c.starts_with('.') || c.starts_with('~'));
    let pip_file = env
        .pip
        .iter()
        .any(|line| install::relative_path_in_requirement(line).is_some());
    local_channel || pip_file
}

/// An installed staging prefix. Removed on drop, unless `--keep-work` (then kept and named).
pub struct Staged {
    work: Option<tempfile::TempDir>,
    _interrupt: crate::cleanup::Guard,
    /// The staging prefix.
    pub prefix: PathBuf,
    /// Seconds per stage of the install.
    pub timings: Vec<(String, f64)>,
    keep: bool,
    reporter: SharedReporter,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.keep
            && let Some(work) = self.work.take()
        {
            let kept = work.keep();
            self.reporter.on_warning(&format!(
                "staging prefix kept at {}",
                kept.join("env").display()
            ));
        }
    }
}

impl<'a> Pipeline<'a> {
    /// Starts the runtime and the HTTP client (credentials are loaded here).
    pub fn new(settings: &'a Settings, pool: Arc<rayon::ThreadPool>) -> Result<Self, Error> {
        Ok(Self {
            settings,
            pool,
            rt: runtime(settings.threads)?,
            client: http_client()?,
            pip_tool: PipTool::detect(),
        })
    }

    /// Reads nothing new: solves `env` for the target, after checking that its `pip:` section
    /// can be installed here.
    pub fn solve(&self, env: EnvironmentSpec, reporter: &SharedReporter) -> Result<Solved, Error> {
        let settings = self.settings;
        if !env.pip.is_empty() {
            // Before any work: the target must be runnable here.
            install::check_pip_platform(settings.platform)?;
        }
        let t = Instant::now();
        reporter.on_stage_start(Stage::Solve, None);
        let solution = self.rt.block_on(solve::solve(SolveRequest {
            spec: &env,
            channels: &settings.channels,
            platform: settings.platform,
            virtual_packages: settings.virtual_packages.packages(settings.platform)?,
            cache_dir: settings.cache_dir.clone(),
            client: self.client.clone(),
        }))?;
        reporter.on_stage_end(Stage::Solve);
        let timings = vec![("solve".to_string(), t.elapsed().as_secs_f64())];
        if !env.pip.is_empty() {
            install::check_pip(settings.platform, &solution.records, &self.pip_tool)?;
        }
        let rewrites = channels::canonical_rewrites(&solution.channels);
        let packages = package_summaries(&solution, &rewrites);
        Ok(Solved {
            env,
            records: solution.records,
            packages,
            rewrites,
            timings,
        })
    }

    /// Installs the solved packages, then the `pip:` section, into a fresh staging prefix.
    pub fn install(&self, solved: &Solved, reporter: &SharedReporter) -> Result<Staged, Error> {
        let settings = self.settings;
        let work = work_dir(settings)?;
        let prefix = work.path().join("env");
        let mut staged = Staged {
            prefix: prefix.clone(),
            _interrupt: crate::cleanup::register(work.path()),
            work: Some(work),
            timings: Vec::new(),
            keep: settings.keep_work,
            reporter: reporter.clone(),
        };
        let t = Instant::now();
        self.rt.block_on(install::install_conda(
            &prefix,
            solved.records.clone(),
            settings.platform,
            &settings.cache_dir,
            self.client.clone(),
            reporter.clone(),
        ))?;
        staged
            .timings
            .push(("install".to_string(), t.elapsed().as_secs_f64()));
        if !solved.env.pip.is_empty() {
            let t = Instant::now();
            let work = staged.work.as_ref().map_or(Path::new("."), |w| w.path());
            install::install_pip(
                &prefix,
                &solved.env.pip,
                solved.env.base_dir(),
                work,
                &self.pip_tool,
                reporter,
            )?;
            staged
                .timings
                .push(("pip".to_string(), t.elapsed().as_secs_f64()));
        }
        Ok(staged)
    }

    /// Packs the staging prefix into `summary.output` (in `summary.format`), filling in the
    /// summary.
    pub fn pack(
        &self,
        solved: &Solved,
        staged: &Staged,
        summary: &mut Summary,
        reporter: &SharedReporter,
    ) -> Result<(), Error> {
        summary.timings.extend(staged.timings.iter().cloned());
        let mut options = self.settings.pack.clone();
        options.format = summary.format;
        options.url_rewrites.clone_from(&solved.rewrites);
        options.variables.clone_from(&solved.env.variables);
        pack_staging(
            summary,
            &staged.prefix,
            &options,
            self.pool.clone(),
            reporter,
        )
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    // Network I/O and the installer's file work; CPU work runs on the rayon pool. Both are
    // sized from --threads so that environments built at once share the cores.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .max_blocking_threads((threads * 4).max(8))
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

/// Checks, before any work, that `output` may be written.
pub fn check_output(settings: &Settings, output: &Path) -> Result<(), Error> {
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

/// `<name><extension>` in the current folder.
#[must_use]
pub fn default_output(name: &str, format: Format) -> PathBuf {
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
    let mut options = settings.pack.clone();
    options.filters.extend(output_inside(prefix, &output));
    let plan = pack::plan(prefix, &options, &pool, reporter)?;
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
    Ok(summary_of(&plan, output, size, settings, timings))
}

/// When the output is written inside the environment being packed, an earlier output and
/// the temporary being written must not become part of the archive.
fn output_inside(prefix: &Path, output: &Path) -> Vec<pack::Filter> {
    let (Ok(prefix), Some(parent), Some(name)) = (
        fs_err::canonicalize(prefix),
        output.parent().and_then(|p| fs_err::canonicalize(p).ok()),
        output.file_name().map(|n| n.to_string_lossy().into_owned()),
    ) else {
        return Vec::new();
    };
    let Ok(rel) = parent.strip_prefix(&prefix) else {
        return Vec::new();
    };
    let dir = rel.to_string_lossy();
    let join = |n: &str| {
        if dir.is_empty() {
            n.to_string()
        } else {
            format!("{dir}/{n}")
        }
    };
    vec![
        pack::Filter::Exclude(join(&name)),
        pack::Filter::Exclude(join(&format!(".{name}.*.partial"))),
    ]
}

fn summary_of(
    plan: &PackPlan,
    output: PathBuf,
    size: u64,
    settings: &Settings,
    timings: Vec<(String, f64)>,
) -> Summary {
    Summary {
        environment_file: None,
        prefix: Some(plan.prefix.clone()),
        output,
        format: plan.format,
        size,
        platform: settings.platform.to_string(),
        download_size: 0,
        packages: Vec::new(),
        pip: Vec::new(),
        members: plan.members.len(),
        relocated_files: plan.relocations.len(),
        warnings: plan.warnings.clone(),
        dry_run: settings.dry_run,
        timings,
    }
}

fn pack_environment(
    p: &Pipeline,
    file: &Path,
    reporter: &SharedReporter,
) -> Result<Summary, Error> {
    let settings = p.settings;
    let env = spec::read(file)?;
    let name = env.name.clone().unwrap_or_else(|| "environment".into());
    let output = settings
        .output
        .clone()
        .unwrap_or_else(|| default_output(&name, settings.pack.format));
    check_output(settings, &output)?;
    let solved = p.solve(env, reporter)?;
    let mut summary = solved.summary(settings, output, settings.pack.format);
    if settings.dry_run {
        return Ok(summary);
    }
    let staged = p.install(&solved, reporter)?;
    p.pack(&solved, &staged, &mut summary, reporter)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(channels: &[&str], pip: &[&str]) -> EnvironmentSpec {
        EnvironmentSpec {
            path: PathBuf::from("/m/environment.yml"),
            name: None,
            channels: channels.iter().map(ToString::to_string).collect(),
            dependencies: Vec::new(),
            pip: pip.iter().map(ToString::to_string).collect(),
            variables: Vec::new(),
            digest: String::new(),
        }
    }

    #[test]
    fn files_named_relative_to_the_environment_file_are_noticed() {
        assert!(!refers_to_files(&env(&["conda-forge"], &[])));
        assert!(!refers_to_files(&env(
            &["https://x/y", "conda-forge"],
            &[
                "--no-index",
                "--find-links /srv/wheels",
                "-r /abs/r.txt",
                "--extra-index-url https://pypi.example/simple",
                "mlserver==1.7.1",
                "uvloop<0.22",
            ]
        )));
        assert!(refers_to_files(&env(&["./channel"], &[])));
        for line in [
            "-r requirements.txt",
            "-rrequirements.txt",
            "--requirement=sub/r.txt",
            "-e ./pkg",
            "./wheels/x.whl",
            "--find-links wheels",
            "-c constraints.txt",
        ] {
            assert!(refers_to_files(&env(&[], &[line])), "{line}");
        }
    }
}
