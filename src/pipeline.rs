//! The pipeline engine: one environment, from an environment file or an existing prefix, to
//! an archive.
//!
//! Resolve, plan, execute, as steps the orchestration above drives ([`crate::models`] for
//! models and repositories): [`Pipeline::solve`] reads nothing new and solves the environment
//! file (the plan `--dry-run` prints), [`Pipeline::install`] installs the packages and the
//! `pip:` section into a staging prefix in a work folder, a check looks at that prefix for the
//! server that will read it, and [`Pipeline::pack`] writes the archive. [`Pipeline::build`]
//! is that sequence; the staging prefix is removed when the [`Staged`] value is dropped.
//!
//! A locked build is a [`Solved`] made from a lock file instead of a solve
//! ([`Pipeline::find_lock`], [`Pipeline::plan_locked`]): no repodata is fetched, each package
//! comes from the URL the lock names (through the mirrors), and the `pip:` packages are
//! installed with their hashes required. The lock is used when PATH (or `--file`) is one, or
//! when a `conda-lock.yml` beside the environment file still matches it (its `content_hash`,
//! [`lock::Inputs::digest`]); `--locked` fails instead of solving when it is missing or stale,
//! naming what changed; `--frozen` installs it as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rattler_conda_types::RepoDataRecord;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::channels::UrlRewrites;
use crate::error::Error;
use crate::install;
use crate::lock::{self, LockError, LockMode, Locked};
use crate::manifest::{self, Manifest};
use crate::pack::direct::{self, CachedPackage, Direct, DirectOptions};
use crate::pack::walk::{PrefixTree, Tree};
use crate::pack::{self, Format, PackError, PackPlan};
use crate::report::{Notice, SharedReporter, Stage, Timings};
use crate::settings::Settings;
use crate::solve::{self, SolveRequest};
use crate::spec::{self, EnvironmentSpec};

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

/// Where an archive's files are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// The extracted packages in the package cache (no staging prefix).
    PackageCache,
    /// A staging prefix the packages (and the `pip:` section) were installed into.
    StagingPrefix,
    /// An existing environment (`--prefix`).
    Prefix,
}

/// What a run did for one environment: the human summary and `--json` print the same facts.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The environment file, if one was solved.
    pub environment_file: Option<PathBuf>,
    /// The prefix packed, when packing an existing one.
    pub prefix: Option<PathBuf>,
    /// Where the archive's files were read from.
    pub route: Route,
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
    /// Warnings and notes.
    pub notices: Vec<Notice>,
    /// Nothing was written.
    pub dry_run: bool,
    /// The output was there with the same digest: nothing was written.
    pub up_to_date: bool,
    /// The digest of the output's inputs (its manifest's), when known before writing.
    pub digest: Option<String>,
    /// Seconds per stage.
    pub timings: Timings,
    /// The lock file installed instead of solving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<PathBuf>,
}

/// What a check of the environment's tree (the staging prefix, or the listing of an archive
/// planned from the package cache) found: nothing that stops the pack, or notices.
pub type Check<'c> = &'c (dyn Fn(&dyn Tree) -> Result<Vec<Notice>, Error> + Sync);

/// No check.
pub fn no_check() -> Check<'static> {
    &|_| Ok(Vec::new())
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
    /// Mirror URL prefixes to canonical ones, for `conda-meta`.
    pub rewrites: UrlRewrites,
    /// Seconds per stage so far.
    pub timings: Timings,
    /// The lock these packages come from (no solve).
    pub lock: Option<PathBuf>,
    /// With a lock: its `pip:` packages, installed instead of the `pip:` lines.
    pub pip_lock: Option<PipLock>,
}

/// The `pip:` packages of a lock, installed with their hashes required.
#[derive(Debug, Clone)]
pub struct PipLock {
    /// Requirement lines: the index options, then one pinned package with its hash each.
    pub lines: Vec<String>,
    /// (name, version) of those a solved install would have installed only as dependencies.
    pub not_requested: Vec<(String, String)>,
}

impl Solved {
    /// The `pip:` lines installed: the lock's packages with a lock, else the file's lines.
    #[must_use]
    pub fn pip_lines(&self) -> &[String] {
        self.pip_lock.as_ref().map_or(&self.env.pip, |l| &l.lines)
    }

    /// A digest of everything that decides the archive's bytes: the package files, the `pip:`
    /// lines (with the folder relative paths in them are relative to) and the `variables:`.
    /// Two environments with the same identity pack to the same tarball, wherever their
    /// packages were fetched from.
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
                // The canonical URL: where a mirror serves the package from is no part of it.
                let url = self
                    .rewrites
                    .apply(r.url.as_str())
                    .unwrap_or_else(|| r.url.to_string());
                format!("{url} {sha}")
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
        // A lock's pip packages decide them too (the lines alone may not pin a version); a lock
        // without any leaves the identity of the solved build it came from.
        if let Some(locked) = self.pip_lock.as_ref().filter(|l| !l.lines.is_empty()) {
            h.update(b"\0locked pip\n");
            for l in &locked.lines {
                h.update(l.as_bytes());
                h.update(b"\n");
            }
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
            route: Route::StagingPrefix,
            output,
            format,
            size: 0,
            platform: settings.platform.to_string(),
            download_size: self.packages.iter().map(|p| p.size).sum(),
            packages: self.packages.clone(),
            pip: self.pip_lines().to_vec(),
            members: 0,
            relocated_files: 0,
            notices: Vec::new(),
            dry_run: settings.dry_run,
            up_to_date: false,
            digest: None,
            timings: self.timings.clone(),
            lock: self.lock.clone(),
        }
        .with_notices(self.env.warnings.iter().cloned().map(Notice::warning))
    }

    /// The digest of the output this environment packs to with `options`: its identity, the
    /// options that change bytes, the platform and envpack's version.
    #[must_use]
    pub fn digest(&self, settings: &Settings, options: &pack::PackOptions) -> String {
        let mut h = manifest::Hasher::default();
        h.line(concat!("envpack ", env!("CARGO_PKG_VERSION")))
            .line("source environment")
            .line(settings.platform.as_str())
            .line(&self.identity())
            .line(&options.fingerprint());
        h.finish()
    }

    /// The manifest of this environment's output.
    #[must_use]
    pub fn manifest(&self, settings: &Settings, digest: String, format: Format) -> Manifest {
        let mut packages: Vec<manifest::Package> = self
            .packages
            .iter()
            .map(|p| manifest::Package {
                build: p.build.clone(),
                name: p.name.clone(),
                size: p.size,
                version: p.version.clone(),
            })
            .collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            digest,
            envpack: env!("CARGO_PKG_VERSION").into(),
            format: format.name().into(),
            python: Manifest::python_of(&packages),
            packages,
            pip: self.pip_lines().to_vec(),
            platform: settings.platform.to_string(),
            schema: manifest::SCHEMA,
            source: "environment".into(),
        }
    }
}

impl Summary {
    fn with_notices(mut self, notices: impl Iterator<Item = Notice>) -> Self {
        self.notices.extend(notices);
        self
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
    pub timings: Timings,
    keep: bool,
    reporter: SharedReporter,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.keep
            && let Some(work) = self.work.take()
        {
            let kept = work.keep();
            // A kept folder is the user's now: later runs do not sweep it.
            let _ = std::fs::remove_file(kept.join(IN_USE));
            self.reporter.on_notice(&Notice::note(format!(
                "staging prefix kept at {}",
                kept.join("env").display()
            )));
        }
    }
}

impl<'a> Pipeline<'a> {
    /// Starts the thread pool, the runtime and the HTTP client (credentials are loaded here).
    pub fn new(settings: &'a Settings) -> Result<Self, Error> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            .thread_name(|i| format!("envpack-{i}"))
            .build()
            .map_err(Error::ThreadPool)?;
        // Network I/O and the installer's file work; CPU work runs on the rayon pool. Both
        // are sized from --threads so that environments built at once share the cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads.max(1))
            .max_blocking_threads((settings.threads * 4).max(8))
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        Ok(Self {
            settings,
            pool: Arc::new(pool),
            rt,
            client: http_client()?,
        })
    }

    /// Solves `env` for the target, after checking that its `pip:` section can be installed
    /// here; or, when a lock applies ([`Pipeline::find_lock`]), installs that instead.
    pub fn solve(&self, env: EnvironmentSpec, reporter: &SharedReporter) -> Result<Solved, Error> {
        if let Some(locked) = self.find_lock(&env, reporter)? {
            return self.plan_locked(env, &locked, reporter);
        }
        let settings = self.settings;
        if !env.pip.is_empty() {
            // Before any work: the target must be runnable here.
            install::check_pip_platform(settings.platform)?;
        }
        let mut timings = Timings::default();
        reporter.on_stage_start(Stage::Solve, None);
        let solution = timings.time(Stage::Solve, || {
            self.rt.block_on(solve::solve(SolveRequest {
                spec: &env,
                channels: &settings.channels,
                platform: settings.platform,
                virtual_packages: settings.virtual_packages.packages(settings.platform)?,
                cache_dir: settings.cache_dir.clone(),
                client: self.client.clone(),
            }))
        })?;
        reporter.on_stage_end(Stage::Solve);
        if !env.pip.is_empty() {
            install::check_pip(settings.platform, &solution.records, &settings.pip_tool)?;
        }
        let rewrites = UrlRewrites::new(&solution.channels);
        let packages = package_summaries(&solution.records, &rewrites);
        Ok(Solved {
            env,
            records: solution.records,
            packages,
            rewrites,
            timings,
            lock: None,
            pip_lock: None,
        })
    }

    /// The lock to install instead of solving `env`, if one applies (see the module docs).
    pub fn find_lock(
        &self,
        env: &EnvironmentSpec,
        reporter: &SharedReporter,
    ) -> Result<Option<Locked>, Error> {
        let s = self.settings;
        let read = |p: &Path| lock::read(p, s.platform, s.lock.environment.as_deref());
        if lock::detect(&env.path).is_some() {
            return Ok(Some(read(&env.path)?));
        }
        if s.lock.mode == LockMode::Ignore {
            return Ok(None);
        }
        let path = env.base_dir().join(lock::CONDA_LOCK_FILE);
        if !path.is_file() {
            return match s.lock.mode {
                LockMode::Locked | LockMode::Frozen => Err(LockError::Missing {
                    environment: env.path.clone(),
                    lock: path,
                }
                .into()),
                LockMode::Auto | LockMode::Ignore => Ok(None),
            };
        }
        let file = file_name(&env.path);
        let locked = match read(&path) {
            Ok(l) => l,
            Err(e) if s.lock.mode == LockMode::Auto => {
                reporter.on_notice(&Notice::warning(format!("{e}: solving {file} instead")));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if s.lock.mode == LockMode::Frozen {
            return Ok(Some(locked));
        }
        let current = lock::Inputs::of(env, &s.virtual_packages, s.channels.alias());
        if locked.content_hash.as_deref() == Some(current.digest(s.platform.as_str()).as_str()) {
            return Ok(Some(locked));
        }
        let changes = match &locked.inputs {
            Some(old) => Some(current.changes_from(old))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| {
                    vec!["its content_hash does not match the inputs it records".to_string()]
                }),
            None => vec![format!("it was not written by `envpack lock` from {file}")],
        };
        if s.lock.mode == LockMode::Locked {
            return Err(LockError::Stale {
                lock: path,
                changes,
            }
            .into());
        }
        reporter.on_notice(&Notice::warning(format!(
            "{} does not match {file} ({}): solving instead; `envpack lock` updates it",
            path.display(),
            changes.join("; ")
        )));
        Ok(None)
    }

    /// The plan of a locked build: the lock's packages, fetched through the mirrors, no solve.
    pub fn plan_locked(
        &self,
        env: EnvironmentSpec,
        locked: &Locked,
        reporter: &SharedReporter,
    ) -> Result<Solved, Error> {
        let s = self.settings;
        let mut timings = Timings::default();
        reporter.on_stage_start(Stage::Lock, None);
        let (records, rewrites) = timings.time(Stage::Lock, || -> Result<_, Error> {
            let (mut records, rewrites) = lock::for_install(&locked.records, &s.channels);
            // Other tools' records are completed from the packages themselves, which the
            // install downloads anyway; a dry run downloads nothing.
            if !locked.complete && !s.dry_run {
                self.rt.block_on(lock::complete_records(
                    &mut records,
                    &s.cache_dir,
                    self.client.clone(),
                ))?;
            }
            Ok((records, rewrites))
        })?;
        reporter.on_stage_end(Stage::Lock);
        // The lock's pip packages, never the file's lines (even when it has none).
        let pip_lock = PipLock {
            lines: if locked.pip.is_empty() {
                Vec::new()
            } else {
                install::check_pip(s.platform, &records, &s.pip_tool)?;
                locked.pip_requirements()?
            },
            not_requested: locked.pip_not_requested(),
        };
        tracing::info!(
            "{} packages from {} ({}), no solve",
            records.len(),
            locked.path.display(),
            locked.format
        );
        let packages = package_summaries(&records, &rewrites);
        Ok(Solved {
            env,
            records,
            packages,
            rewrites,
            timings,
            lock: Some(locked.path.clone()),
            pip_lock: Some(pip_lock),
        })
    }

    /// Installs the solved packages, then the `pip:` section, into a fresh staging prefix.
    pub fn install(&self, solved: &Solved, reporter: &SharedReporter) -> Result<Staged, Error> {
        let settings = self.settings;
        let (work, interrupt) = work_dir(settings)?;
        let prefix = work.path().join("env");
        let mut staged = Staged {
            prefix: prefix.clone(),
            _interrupt: interrupt,
            work: Some(work),
            timings: Timings::default(),
            keep: settings.keep_work,
            reporter: reporter.clone(),
        };
        staged.timings.time(Stage::Install, || {
            self.rt.block_on(install::install_conda(
                &prefix,
                solved.records.clone(),
                settings.platform,
                &settings.cache_dir,
                self.client.clone(),
                reporter.clone(),
            ))
        })?;
        if !solved.pip_lines().is_empty() {
            let work = staged.work.as_ref().map_or(Path::new("."), |w| w.path());
            staged.timings.time(Stage::Pip, || {
                install::install_pip(
                    &prefix,
                    solved.pip_lines(),
                    solved.env.base_dir(),
                    work,
                    &settings.pip_tool,
                    solved.pip_lock.is_some(),
                    &settings.virtual_packages.glibc,
                    reporter,
                )
            })?;
            if let (Some(locked), install::PipTool::Pip) = (&solved.pip_lock, &settings.pip_tool) {
                install::unmark_requested(&prefix, &locked.not_requested)?;
            }
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
        summary.timings.extend(&staged.timings);
        let mut options = self.options_for(solved, summary.format);
        let digest = solved.digest(self.settings, &options);
        options.manifest = Some(solved.manifest(self.settings, digest.clone(), summary.format));
        summary.digest = Some(digest);
        let plan = self.plan(&staged.prefix, &options, &mut summary.timings, reporter)?;
        summary.size = self.execute(&plan, &summary.output, &mut summary.timings, reporter)?;
        summary.members = plan.members.len();
        summary.relocated_files = plan.relocations.len();
        summary.notices.extend(plan.warnings);
        Ok(())
    }

    /// Installs `solved`, runs `check` on the staging prefix (its notices are reported and
    /// kept), and packs it into `output`: the sequence every environment goes through.
    ///
    /// When nothing has to run inside the environment (no `pip:` section), the archive is
    /// written straight from the package cache instead, with no staging prefix: the same
    /// archive, byte for byte (`--via-prefix` forces the staged route, for debugging).
    pub fn build(
        &self,
        solved: &Solved,
        output: PathBuf,
        check: Check<'_>,
        reporter: &SharedReporter,
    ) -> Result<Summary, Error> {
        // `--keep-work` asks for the staging prefix: it takes the staged route.
        if solved.pip_lines().is_empty()
            && !self.settings.via_prefix
            && !self.settings.keep_work
            && let Some(summary) = self.build_direct(solved, &output, check, reporter)?
        {
            return Ok(summary);
        }
        let staged = self.install(solved, reporter)?;
        let notices = check(&PrefixTree(&staged.prefix))?;
        for n in &notices {
            reporter.on_notice(n);
        }
        let mut summary = solved.summary(self.settings, output, self.settings.pack.format);
        summary.notices.extend(notices);
        self.pack(solved, &staged, &mut summary, reporter)?;
        Ok(summary)
    }

    /// The direct route: fetches the packages into the cache and plans the archive from
    /// there. `None` when the environment needs the staged route (the reason is logged).
    fn build_direct(
        &self,
        solved: &Solved,
        output: &Path,
        check: Check<'_>,
        reporter: &SharedReporter,
    ) -> Result<Option<Summary>, Error> {
        let settings = self.settings;
        let mut timings = Timings::default();
        let (dirs, _cache_lock) = timings.time(Stage::Install, || {
            self.rt.block_on(install::fetch_packages(
                &solved.records,
                &settings.cache_dir,
                self.client.clone(),
                reporter.clone(),
            ))
        })?;
        let packages: Vec<CachedPackage> = solved
            .records
            .iter()
            .cloned()
            .zip(dirs)
            .map(|(record, dir)| CachedPackage { record, dir })
            .collect();
        sweep_staging(settings);
        let Some(staging_prefix_len) = staging_prefix_len(settings) else {
            tracing::info!("packing through a staging prefix: its path holds a space");
            return Ok(None);
        };
        // The staged route's options and manifest: the digest does not depend on the route.
        let format = settings.pack.format;
        let mut options = self.options_for(solved, format);
        let digest = solved.digest(settings, &options);
        options.manifest = Some(solved.manifest(settings, digest.clone(), format));
        let direct_options = DirectOptions {
            platform: settings.platform,
            staging_prefix_len,
            link_type: install::LINK_TYPE,
        };
        let planned = timings.time(Stage::Scan, || {
            direct::plan(&packages, &options, &direct_options, &self.pool, reporter)
        })?;
        let (mut plan, listing) = match planned {
            Direct::Plan(plan, listing) => (plan, listing),
            Direct::Unsupported(reason) => {
                tracing::info!("packing through a staging prefix: {reason}");
                return Ok(None);
            }
        };
        let notices = check(&listing)?;
        plan.warnings.extend(self.glibc_check(&plan));
        for n in notices.iter().chain(&plan.warnings) {
            reporter.on_notice(n);
        }
        let mut summary = solved.summary(settings, output.to_path_buf(), format);
        summary.route = Route::PackageCache;
        summary.digest = Some(digest);
        summary.notices.extend(notices);
        summary.timings.extend(&timings);
        summary.size = self.execute(&plan, output, &mut summary.timings, reporter)?;
        summary.members = plan.members.len();
        summary.relocated_files = plan.relocations.len();
        summary.notices.extend(plan.warnings);
        Ok(Some(summary))
    }

    /// Reads, solves and (unless `--dry-run`) builds the environment file `file` into
    /// `output` (default: named after the environment, in the current folder), with `check`
    /// between install and pack.
    pub fn pack_file(
        &self,
        file: &Path,
        output: Option<PathBuf>,
        check: Check<'_>,
        reporter: &SharedReporter,
    ) -> Result<Summary, Error> {
        let env = read_environment(
            file,
            self.settings,
            self.settings
                .python
                .as_deref()
                .unwrap_or(spec::DEFAULT_PYTHON),
        )?;
        for w in &env.warnings {
            reporter.on_notice(&Notice::warning(w.clone()));
        }
        let output = if let Some(o) = output {
            o
        } else {
            let name = env.name.as_deref().unwrap_or("environment");
            check_name(name)?;
            default_output(self.settings, name)
        };
        let existing = check_output(self.settings, &output)?;
        let solved = self.solve(env, reporter)?;
        let format = self.settings.pack.format;
        if let Some(summary) = self.up_to_date(&solved, existing.as_ref(), &output, format)? {
            return Ok(summary);
        }
        if self.settings.dry_run {
            return Ok(solved.summary(self.settings, output, format));
        }
        self.build(&solved, output, check, reporter)
    }

    /// The options `solved` is packed with into `format`.
    #[must_use]
    pub fn options_for(&self, solved: &Solved, format: Format) -> pack::PackOptions {
        let mut options = self.settings.pack.clone();
        options.format = format;
        options.url_rewrites.clone_from(&solved.rewrites);
        options.variables.clone_from(&solved.env.variables);
        options.record_link_type = Some(install::LINK_TYPE);
        options
    }

    /// When `existing` (the manifest of the output there) has the digest `solved` packs to in
    /// `format`: the summary of that output, nothing to write.
    pub fn up_to_date(
        &self,
        solved: &Solved,
        existing: Option<&Manifest>,
        output: &Path,
        format: Format,
    ) -> Result<Option<Summary>, Error> {
        let digest = solved.digest(self.settings, &self.options_for(solved, format));
        if existing.is_none_or(|m| m.digest != digest) {
            return Ok(None);
        }
        let mut summary = solved.summary(self.settings, output.to_path_buf(), format);
        summary.size = output_size(output)?;
        summary.up_to_date = true;
        summary.digest = Some(digest);
        Ok(Some(summary))
    }

    /// Packs an existing environment (`--prefix`).
    pub fn pack_prefix(&self, prefix: &Path, reporter: &SharedReporter) -> Result<Summary, Error> {
        let settings = self.settings;
        let name = fs_err::canonicalize(prefix)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "environment".into());
        let output = settings
            .output
            .clone()
            .unwrap_or_else(|| default_output(settings, &name));
        let existing = check_output(settings, &output)?;
        let mut timings = Timings::default();
        let mut options = settings.pack.clone();
        options.filters.extend(output_inside(prefix, &output));
        let mut notices = Vec::new();
        if existing.is_some() {
            // Files pip or a user changed in a prefix leave no trace in its records: no digest
            // of it is cheap and safe, so a prefix is always packed again.
            let n = Notice::note(format!(
                "{} was written by envpack: replaced (packs of --prefix are not incremental)",
                output.display()
            ));
            reporter.on_notice(&n);
            notices.push(n);
        }
        let digest = prefix_manifest(settings, prefix, &mut options)?;
        let mut plan = self.plan(prefix, &options, &mut timings, reporter)?;
        plan.warnings.extend(notices);
        let size = if settings.dry_run {
            0
        } else {
            self.execute(&plan, &output, &mut timings, reporter)?
        };
        Ok(Summary {
            environment_file: None,
            prefix: Some(plan.prefix.clone()),
            route: Route::Prefix,
            output,
            format: plan.format,
            size,
            platform: settings.platform.to_string(),
            download_size: 0,
            packages: plan
                .packages
                .iter()
                .map(|p| PackageSummary {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    build: p.build.clone(),
                    channel: p.channel.clone().unwrap_or_default(),
                    size: p.size.unwrap_or(0),
                })
                .collect(),
            pip: Vec::new(),
            members: plan.members.len(),
            relocated_files: plan.relocations.len(),
            notices: plan.warnings,
            dry_run: settings.dry_run,
            up_to_date: false,
            digest: Some(digest),
            timings,
            lock: None,
        })
    }

    /// Scans `prefix` into the archive's plan; its warnings are reported.
    fn plan(
        &self,
        prefix: &Path,
        options: &pack::PackOptions,
        timings: &mut Timings,
        reporter: &SharedReporter,
    ) -> Result<PackPlan, Error> {
        let mut plan = timings.time(Stage::Scan, || {
            pack::plan(prefix, options, &self.pool, reporter)
        })?;
        plan.warnings.extend(self.glibc_check(&plan));
        for w in &plan.warnings {
            reporter.on_notice(w);
        }
        Ok(plan)
    }

    /// The warning for the plan's ELF files that need a newer glibc than the target's
    /// (linux targets only).
    fn glibc_check(&self, plan: &PackPlan) -> Option<Notice> {
        let settings = self.settings;
        if !settings.platform.is_linux() {
            return None;
        }
        crate::targets::glibc::check(plan, &settings.virtual_packages.glibc, &self.pool)
    }

    /// Writes the plan to `output`; returns its size.
    fn execute(
        &self,
        plan: &PackPlan,
        output: &Path,
        timings: &mut Timings,
        reporter: &SharedReporter,
    ) -> Result<u64, Error> {
        let inputs = self.settings.inputs();
        // An output envpack wrote (it carried a manifest when `check_output` looked, before
        // any work) is replaced without `--force`; what `--force` may never replace is still
        // refused. Anything that appeared there since (a concurrent run's output) is not.
        let ours = REPLACEABLE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(output);
        let dest = pack::archive::Destination {
            path: output,
            force: self.settings.force || ours,
            inputs: &inputs,
        };
        Ok(timings.time(Stage::Pack, || {
            pack::execute(plan, &dest, self.pool.clone(), reporter)
        })?)
    }
}

/// Reads the environment file (or requirements file, for Python `python`) `file`, or makes one
/// of the lock file `file`: its name, channels and variables, no dependencies (the lock has the
/// packages).
pub fn read_environment(
    file: &Path,
    settings: &Settings,
    python: &str,
) -> Result<EnvironmentSpec, Error> {
    if lock::detect(file).is_none() {
        return Ok(spec::read_any(file, python)?);
    }
    let locked = lock::read(
        file,
        settings.platform,
        settings.lock.environment.as_deref(),
    )?;
    let mut h = Sha256::new();
    h.update(fs_err::read(file).map_err(|source| LockError::Read {
        path: file.to_path_buf(),
        source,
    })?);
    if let Some(e) = &settings.lock.environment {
        h.update(format!("\0{e}").as_bytes());
    }
    Ok(EnvironmentSpec {
        path: file.to_path_buf(),
        name: locked.name,
        channels: locked.channels,
        dependencies: Vec::new(),
        pip: Vec::new(),
        variables: locked.variables,
        digest: spec::hex(&h.finalize()),
        warnings: Vec::new(),
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn http_client() -> Result<rattler_networking::LazyClient, Error> {
    let auth = rattler_networking::AuthenticationMiddleware::from_env_and_defaults()
        .map_err(Error::Auth)?;
    Ok(rattler_networking::LazyClient::new(move || {
        // reqwest is built without a crypto provider (see Cargo.toml): ring is the process's.
        // Installing fails only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("envpack/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default settings");
        reqwest_middleware::ClientBuilder::new(client)
            .with(auth)
            .build()
    }))
}

/// The length of the staging prefix the staged route would make (`<work dir>/envpack-XXXXXX/env`,
/// the work dir's real path), or `None` when it would hold a space.
fn staging_prefix_len(settings: &Settings) -> Option<usize> {
    let dir = fs_err::create_dir_all(&settings.work_dir)
        .and_then(|()| fs_err::canonicalize(&settings.work_dir))
        .unwrap_or_else(|_| settings.work_dir.clone());
    let prefix = dir.join("envpack-XXXXXX").join("env");
    let prefix = prefix.to_str()?;
    (!prefix.contains(' ')).then_some(prefix.len())
}

/// The outputs `check_output` found written by envpack: publishing may replace them.
static REPLACEABLE: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Checks, before any work, that `output` may be written: it does not exist, or envpack wrote
/// it (it carries a manifest, returned: the output is up to date when the digest matches,
/// else it is replaced), or `--force`. With `--force` the manifest is not read: everything is
/// redone. Never replaceable, even with `--force`: a device, FIFO or socket, a folder envpack
/// did not write, a folder holding an input of the run.
pub fn check_output(settings: &Settings, output: &Path) -> Result<Option<Manifest>, Error> {
    if let Some(reason) = pack::publish::not_replaceable(output, &settings.inputs()) {
        return Err(PackError::NotReplaceable {
            path: output.to_path_buf(),
            reason,
        }
        .into());
    }
    if !settings.dry_run {
        sweep_partials(output);
    }
    let existing = if settings.force || fs_err::symlink_metadata(output).is_err() {
        None
    } else {
        // Unreadable or foreign: not envpack's.
        match manifest::read(output) {
            Ok(Some(m)) => Some(m),
            Ok(None) | Err(_) if settings.dry_run => None,
            Ok(None) | Err(_) => {
                return Err(PackError::OutputExists {
                    path: output.to_path_buf(),
                }
                .into());
            }
        }
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(PackError::NoOutputFolder {
            dir: parent.to_path_buf(),
        }
        .into());
    }
    if existing.is_some() {
        REPLACEABLE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(output.to_path_buf());
    }
    Ok(existing)
}

/// The size of an output: a file's length, or the bytes of a folder's files.
pub fn output_size(output: &Path) -> Result<u64, Error> {
    fn walk(dir: &Path) -> std::io::Result<u64> {
        let mut total = 0;
        for e in fs_err::read_dir(dir)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                total += walk(&e.path())?;
            } else if ty.is_file() {
                total += e.metadata()?.len();
            }
        }
        Ok(total)
    }
    let meta = fs_err::metadata(output).map_err(PackError::from)?;
    Ok(if meta.is_dir() {
        walk(output).map_err(PackError::from)?
    } else {
        meta.len()
    })
}

/// An environment's `name:` names the default output only when it is a plain file name: no
/// `/`, not `.` or `..`, no control character (a newline would land in the file name).
pub fn check_name(name: &str) -> Result<(), Error> {
    let bad = name.contains('/')
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || name.chars().any(char::is_control);
    if bad {
        return Err(PackError::UnsafeName {
            name: name.to_string(),
        }
        .into());
    }
    Ok(())
}

/// `<name><extension>` in the current folder.
#[must_use]
pub fn default_output(settings: &Settings, name: &str) -> PathBuf {
    settings
        .cwd
        .join(format!("{name}{}", settings.pack.format.extension()))
}

/// Puts the manifest of an existing prefix into `options`: its packages from its conda
/// records, its digest from the packages they name and the options. Returns the digest.
fn prefix_manifest(
    settings: &Settings,
    prefix: &Path,
    options: &mut pack::PackOptions,
) -> Result<String, Error> {
    let meta = prefix.join("conda-meta");
    let mut names: Vec<String> = Vec::new();
    if meta.is_dir() {
        for e in fs_err::read_dir(&meta).map_err(PackError::from)? {
            let name = e.map_err(PackError::from)?.file_name();
            let name = name.to_string_lossy();
            if manifest::is_record(&format!("conda-meta/{name}")) {
                names.push(name.into_owned());
            }
        }
    }
    names.sort();
    let mut h = manifest::Hasher::default();
    h.line(concat!("envpack ", env!("CARGO_PKG_VERSION")))
        .line("source prefix")
        .line(settings.platform.as_str());
    let mut packages = Vec::new();
    // What the records say about the packages, not where they were installed (records hold
    // the prefix's path).
    for n in &names {
        let bytes = fs_err::read(meta.join(n)).map_err(PackError::from)?;
        match manifest::Record::parse(&bytes) {
            Some(r) => {
                h.line(&r.identity());
                packages.push(r.package());
            }
            None => {
                h.line(n).bytes(&bytes);
            }
        }
    }
    for (k, v) in &options.variables {
        h.line(&format!("{k}={v}"));
    }
    h.line(&options.fingerprint());
    let digest = h.finish();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    options.manifest = Some(Manifest {
        digest: digest.clone(),
        envpack: env!("CARGO_PKG_VERSION").into(),
        format: options.format.name().into(),
        python: Manifest::python_of(&packages),
        packages,
        pip: Vec::new(),
        platform: settings.platform.to_string(),
        schema: manifest::SCHEMA,
        source: "prefix".into(),
    });
    Ok(digest)
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
        pack::Filter::Omit(join(&name)),
        pack::Filter::Omit(join(&format!(".{name}.*.partial"))),
    ]
}

/// Marks a work folder as envpack's staging folder while a run uses it (removed when it is
/// kept with `--keep-work`): only marked folders are swept.
const IN_USE: &str = ".envpack-in-use";

/// A fresh folder for the staging prefix, removed when dropped. Staging folders that runs
/// killed with `kill -9` left in the work folder (unlocked) are removed first.
fn work_dir(settings: &Settings) -> Result<(tempfile::TempDir, crate::cleanup::Guard), Error> {
    fs_err::create_dir_all(&settings.work_dir).map_err(install::InstallError::from)?;
    sweep_staging(settings);
    // Registered (and locked) as it is made, before it is marked: a marked folder is always
    // locked while its run lives.
    let (dir, guard) = crate::cleanup::create(
        || {
            tempfile::Builder::new()
                .prefix("envpack-")
                .tempdir_in(&settings.work_dir)
        },
        tempfile::TempDir::path,
    )
    .map_err(install::InstallError::from)?;
    fs_err::write(dir.path().join(IN_USE), b"").map_err(install::InstallError::from)?;
    Ok((dir, guard))
}

/// Removes the staging folders that runs killed with `kill -9` left in the work folder (marked
/// as envpack's, no longer locked by a living run). Every build does it, whatever its route.
fn sweep_staging(settings: &Settings) {
    crate::cleanup::sweep(&settings.work_dir, |name, path| {
        name.starts_with("envpack-") && path.join(IN_USE).is_file()
    });
}

/// Removes the partial outputs (`.NAME.XXXXXX.partial`) beside `output` that no living run
/// writes.
fn sweep_partials(output: &Path) {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    crate::cleanup::sweep(dir, |n, _| {
        n.starts_with(&prefix) && n.ends_with(".partial")
    });
}

/// The packages of `records` for reports, with canonical channels.
#[must_use]
pub fn package_summaries(
    records: &[RepoDataRecord],
    rewrites: &UrlRewrites,
) -> Vec<PackageSummary> {
    records
        .iter()
        .map(|r| PackageSummary {
            name: r.package_record.name.as_normalized().to_string(),
            version: r.package_record.version.to_string(),
            build: r.package_record.build.to_string(),
            channel: rewrites.canonical(r.channel.as_deref().unwrap_or_default()),
            size: r.package_record.size.unwrap_or(0),
        })
        .collect()
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
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_pip_line_or_a_variable_changes_the_identity() {
        let solved = |pip: &[&str], vars: &[(&str, &str)]| Solved {
            env: EnvironmentSpec {
                variables: vars
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                ..env(&["conda-forge"], pip)
            },
            records: Vec::new(),
            packages: Vec::new(),
            rewrites: UrlRewrites::default(),
            timings: Timings::default(),
            lock: None,
            pip_lock: None,
        };
        let base = solved(&["six==1.16.0"], &[]).identity();
        assert_eq!(base, solved(&["six==1.16.0"], &[]).identity());
        assert_ne!(base, solved(&["six==1.17.0"], &[]).identity());
        assert_ne!(base, solved(&["six==1.16.0", "idna"], &[]).identity());
        assert_ne!(base, solved(&["six==1.16.0"], &[("A", "1")]).identity());
        // A lock's pip packages count; a lock without any leaves the identity as it was.
        let locked = |lines: &[&str]| Solved {
            pip_lock: Some(PipLock {
                lines: lines.iter().map(ToString::to_string).collect(),
                not_requested: Vec::new(),
            }),
            ..solved(&["six==1.16.0"], &[])
        };
        assert_eq!(base, locked(&[]).identity());
        assert_ne!(base, locked(&["six==1.16.0 --hash=sha256:ab"]).identity());
        assert_ne!(
            locked(&["six==1.16.0 --hash=sha256:ab"]).identity(),
            locked(&["six==1.16.0 --hash=sha256:cd"]).identity()
        );
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
