//! Packing models: one model folder, or every model of a repository, in one run; and the
//! image-level MLServer tarball. The orchestration above the pipeline engine: it drives
//! [`Pipeline`]'s steps with the domain of [`crate::targets`].
//!
//! Plan first, for every model, before any work: its environment file, its output (which
//! must not exist without `--force`), the format its server reads, its config (parsed; with
//! `--write-config` the edit is computed). Then each distinct environment file is solved once
//! (files with the same bytes are one; see [`solve_key`]), environments that solved to the
//! same packages (same [`Solved::identity`]) are installed, checked and packed once, into the
//! output of the first model that uses them, and the tarball is copied to the other models.
//! Last, the configs are written: a config never points at a tarball that is not there.
//!
//! Distinct environments are solved and built at once, at most `--parallel` of them (default:
//! the cores, at most 4). They share one rayon pool and one tokio runtime sized by
//! `--threads`, so two builds split the cores instead of each taking all of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::error::Error;
use crate::manifest::Manifest;
use crate::pack::walk::Tree;
use crate::pack::{Format, archive, publish};
use crate::pipeline::{self, Pipeline, Solved, Summary};
use crate::report::{Notice, Reporter, SharedReporter, Stage};
use crate::settings::Settings;
use crate::spec::{self, EnvironmentSpec};
use crate::targets::config::{self, ConfigPlan};
use crate::targets::{self, Consumer, Model, Server, TargetError, checks};

/// What happened to one model.
#[derive(Debug, Clone, Serialize)]
#[allow(clippy::struct_excessive_bools)] // facts of a report
pub struct ModelReport {
    /// Its path below the repository root.
    pub name: String,
    /// Its server.
    pub server: Server,
    /// The model folder.
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// The environment file used.
    pub environment_file: PathBuf,
    /// Index of its environment in [`ModelsReport::environments`].
    pub environment: usize,
    /// The packed environment written for it.
    pub output: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its size in bytes (for a folder: the bytes of its files); 0 on a dry run.
    pub size: u64,
    /// Seconds spent for this model: solve, install and pack for the model that built its
    /// environment; the solve (if its file was solved for it) and the copy for the others.
    pub seconds: f64,
    /// Its environment file was solved for this model (not shared with an earlier model).
    pub solved: bool,
    /// Its environment was installed and packed for this model.
    pub installed: bool,
    /// The model whose packed environment was copied for this one.
    pub reused_from: Option<String>,
    /// Its output was up to date: nothing was written for it.
    pub up_to_date: bool,
    /// `--write-config` changed its config.
    pub config_written: bool,
    /// Its config points at the output (after any `--write-config`).
    pub config_points_at_output: bool,
}

/// What a model run did: the table and `--json` print the same facts.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsReport {
    /// The repository root (a single model's parent folder).
    pub root: PathBuf,
    /// The models, sorted by name.
    pub models: Vec<ModelReport>,
    /// The distinct environments, each installed and packed once.
    pub environments: Vec<EnvironmentReport>,
    /// Bytes of packed environments the repository holds.
    pub size: u64,
    /// What it would hold with a copy of each environment per model.
    pub copy_per_model_size: u64,
    /// Shared environments envpack wrote earlier that no model uses any more, removed (on a
    /// dry run: that would be removed).
    pub removed: Vec<PathBuf>,
    /// Warnings and notes.
    pub notices: Vec<Notice>,
    /// Nothing was written.
    pub dry_run: bool,
}

/// One distinct environment of a model run.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentReport {
    /// What was packed.
    #[serde(flatten)]
    pub summary: Summary,
    /// The models that use it, by name.
    pub models: Vec<String>,
    /// Written once for all its models (not a copy per model).
    pub shared: bool,
}

/// One model, planned.
struct Job {
    model: Model,
    file: PathBuf,
    output: PathBuf,
    config: ConfigPlan,
    /// The manifest of the output envpack wrote there earlier (none with `--force`).
    existing: Option<Manifest>,
}

/// Passes warnings on and nothing else: the binary draws one set of progress bars, which
/// several builds at once would fight over.
struct WarningsOnly(SharedReporter);

impl Reporter for WarningsOnly {
    fn on_notice(&self, notice: &Notice) {
        self.0.on_notice(notice);
    }
}

/// Environment files that are the same environment before solving: the same bytes, and, when
/// the file refers to files relative to its folder, the same folder.
fn solve_key(env: &EnvironmentSpec) -> String {
    if pipeline::refers_to_files(env) {
        format!("{} {}", env.digest, env.base_dir().display())
    } else {
        env.digest.clone()
    }
}

/// Runs `f` on every item, at most `limit` at once, results in item order. Panics propagate.
fn fan_out<T: Sync, R: Send>(limit: usize, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let limit = limit.clamp(1, items.len().max(1));
    if limit == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..limit {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().expect("result slot") = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("result slot")
                .expect("every item ran")
        })
        .collect()
}

fn display_below(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

/// Plans every model before any work: environment file, output, format, config.
fn plan_jobs(settings: &Settings, root: &Path, models: &[Model]) -> Result<Vec<Job>, Error> {
    let mut files = Vec::new();
    for m in models {
        files.push(match &settings.model_file {
            Some(f) => spec::locate(f)?,
            None => targets::find_environment_file(
                &m.dir,
                &targets::project_boundary(&m.dir, root, &settings.cwd),
            )?,
        });
    }
    let mut jobs = Vec::new();
    for (m, file) in models.iter().zip(files.iter()) {
        let output = output_for(m, settings);
        if settings.check {
            checks::check_format(m.server.consumer(), settings.pack.format)?;
        }
        // A file several models use becomes one shared output (checked once it is named).
        let shared = !settings.copy_per_model && files.iter().filter(|f| *f == file).count() > 1;
        let existing = if shared {
            None
        } else {
            pipeline::check_output(settings, &output)?
        };
        let config = config::plan(m, &output, settings.write_config, false)?;
        jobs.push(Job {
            model: m.clone(),
            file: file.clone(),
            output,
            config,
            existing,
        });
    }
    Ok(jobs)
}

/// The Python of an environment made from a requirements file: `--python`, else the one the
/// server runs (the stub of `--triton-version` or of the newest Triton; MLServer's image).
fn default_python(settings: &Settings, server: Server) -> String {
    if let Some(p) = &settings.python {
        return p.clone();
    }
    let (a, b) = match server {
        Server::Triton => settings
            .triton_version
            .unwrap_or(targets::TritonVersion::NEWEST)
            .stub_python(),
        Server::MlServer => checks::MLSERVER_IMAGE_PYTHON,
    };
    format!("{a}.{b}")
}

/// The folder shared environments go to: the repository root, beside it for folders (which
/// Triton would take for models), or `--env-dir`.
fn shared_dir(settings: &Settings, root: &Path) -> PathBuf {
    match &settings.env_dir {
        Some(d) => d.clone(),
        None if settings.pack.format == Format::Dir => root.parent().unwrap_or(root).to_path_buf(),
        None => root.to_path_buf(),
    }
}

/// Where each build goes when several models use it: one file (a folder for `--format dir`)
/// in [`shared_dir`], named from the environment and the first 8 digits of the digest in its
/// manifest (so an unchanged environment keeps its name, and a stale one can be told from
/// anything else: see [`remove_stale`]). `None` for builds of one model, and with
/// `--copy-per-model`.
fn shared_outputs(
    p: &Pipeline,
    root: &Path,
    sh: &Sharing,
    solved: &[Solved],
) -> Result<Vec<Option<PathBuf>>, Error> {
    let settings = p.settings;
    let format = settings.pack.format;
    let dir = shared_dir(settings, root);
    if format == Format::Dir && crate::paths::normalize(&dir).starts_with(root) {
        return Err(TargetError::SharedFolderInRepository { dir }.into());
    }
    Ok(sh
        .build_leader
        .iter()
        .enumerate()
        .map(|(b, &leader)| {
            let users = sh.build_of_job.iter().filter(|x| **x == b).count();
            (!settings.copy_per_model && users > 1).then(|| {
                let s = &solved[sh.solve_of_job[leader]];
                let name = file_name_part(s.env.name.as_deref().unwrap_or("environment"));
                let digest = s.digest(settings, &p.options_for(s, format));
                dir.join(format!("{name}-{}{}", &digest[..8], format.extension()))
            })
        })
        .collect())
}

/// `name` with anything but letters, digits, `.`, `_` and `-` replaced, fit for a file name.
fn file_name_part(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "environment".into()
    } else {
        s
    }
}

/// Which job shares what with which: solves and builds, and the first job of each.
struct Sharing {
    solve_of_job: Vec<usize>,
    build_of_job: Vec<usize>,
    solve_leader: Vec<usize>,
    build_leader: Vec<usize>,
}

impl Sharing {
    fn new(solve_of_job: Vec<usize>, build_of_solve: &[usize]) -> Self {
        let build_of_job: Vec<usize> = solve_of_job.iter().map(|s| build_of_solve[*s]).collect();
        let leaders = |of: &[usize]| {
            let n = of.iter().max().map_or(0, |m| m + 1);
            (0..n)
                .map(|k| of.iter().position(|x| *x == k).expect("a job per group"))
                .collect::<Vec<_>>()
        };
        Self {
            solve_leader: leaders(&solve_of_job),
            build_leader: leaders(&build_of_job),
            solve_of_job,
            build_of_job,
        }
    }
}

/// Reads each environment file once and solves each distinct one, at most `--parallel` at
/// once. Returns the solutions and, per job, the index of its solution.
fn solve_all(
    p: &Pipeline,
    jobs: &[Job],
    reporter: &SharedReporter,
) -> Result<(Vec<Solved>, Vec<usize>), Error> {
    let mut read: HashMap<PathBuf, EnvironmentSpec> = HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    let mut envs: Vec<EnvironmentSpec> = Vec::new();
    let mut solve_of_job = Vec::new();
    for j in jobs {
        let env = if let Some(e) = read.get(&j.file) {
            e.clone()
        } else {
            let e = pipeline::read_environment(
                &j.file,
                p.settings,
                &default_python(p.settings, j.model.server),
            )?;
            read.insert(j.file.clone(), e.clone());
            e
        };
        let key = solve_key(&env);
        let i = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
            keys.push(key);
            envs.push(env);
            keys.len() - 1
        });
        solve_of_job.push(i);
    }
    let reporter = quiet(p.settings, reporter, envs.len());
    let solved = fan_out(p.settings.parallel, &envs, |env| {
        p.solve(env.clone(), &reporter)
    })
    .into_iter()
    .enumerate()
    .map(|(i, r)| {
        r.map_err(|e| {
            let users = (0..jobs.len()).filter(|j| solve_of_job[*j] == i);
            in_models(e, &envs[i].path, users.map(|j| &jobs[j]))
        })
    })
    .collect::<Result<_, _>>()?;
    Ok((solved, solve_of_job))
}

/// The reporter for `n` tasks at once: bars only when one runs at a time.
fn quiet(settings: &Settings, reporter: &SharedReporter, n: usize) -> SharedReporter {
    if settings.parallel > 1 && n > 1 {
        Arc::new(WarningsOnly(reporter.clone()))
    } else {
        reporter.clone()
    }
}

/// The planned run: every model's job, the solutions, who shares what, and where shared
/// environments go.
struct RunPlan {
    jobs: Vec<Job>,
    solved: Vec<Solved>,
    sh: Sharing,
    shared: Vec<Option<PathBuf>>,
}

impl RunPlan {
    /// The jobs of the models that use build `b`.
    fn users(&self, b: usize) -> Vec<&Job> {
        (0..self.jobs.len())
            .filter(|j| self.sh.build_of_job[*j] == b)
            .map(|j| &self.jobs[j])
            .collect()
    }

    /// The solution build `b` installs.
    fn solved_of(&self, b: usize) -> &Solved {
        &self.solved[self.sh.solve_of_job[self.sh.build_leader[b]]]
    }
}

/// What the builds did: each build's summary; per job, the seconds spent on it and whether a
/// copy was written for it (`--copy-per-model`).
struct Built {
    environments: Vec<Summary>,
    seconds: Vec<f64>,
    copied: Vec<bool>,
}

/// Packs every model: see the module documentation.
pub fn pack_models(
    p: &Pipeline,
    root: &Path,
    models: &[Model],
    reporter: &SharedReporter,
) -> Result<ModelsReport, Error> {
    let settings = p.settings;
    let plan = plan_run(p, root, models, reporter)?;
    let mut notices = planned_notices(settings, &plan.jobs, reporter);
    for n in mlserver_sharing(&plan) {
        reporter.on_notice(&n);
        notices.push(n);
    }

    // An output whose manifest has the digest its environment packs to is left as it is.
    let mut current = Vec::new();
    for (b, &leader) in plan.sh.build_leader.iter().enumerate() {
        let job = &plan.jobs[leader];
        let s = plan.solved_of(b);
        current.push(p.up_to_date(s, job.existing.as_ref(), &job.output, settings.pack.format)?);
    }
    let mut built = if settings.dry_run {
        // What the real run would refuse, the dry run refuses too.
        for n in dry_run_checks(settings, &plan, root)? {
            reporter.on_notice(&n);
            notices.push(n);
        }
        let environments = current
            .into_iter()
            .enumerate()
            .map(|(b, up)| {
                let output = plan.jobs[plan.sh.build_leader[b]].output.clone();
                up.unwrap_or_else(|| {
                    plan.solved_of(b)
                        .summary(settings, output, settings.pack.format)
                })
            })
            .collect();
        Built {
            environments,
            seconds: vec![0.0; plan.jobs.len()],
            copied: vec![false; plan.jobs.len()],
        }
    } else {
        build_all(p, &plan, current, root, reporter, &mut notices)?
    };
    for (s, &j) in plan.sh.solve_leader.iter().enumerate() {
        if plan.sh.build_leader[plan.sh.build_of_job[j]] != j {
            let t = &plan.solved[s].timings;
            built.seconds[j] += t.get(Stage::Solve) + t.get(Stage::Lock);
        }
    }

    // Configs last: they point at tarballs that exist now. All of them, or none.
    let written = if settings.dry_run {
        vec![false; plan.jobs.len()]
    } else {
        config::apply_all(&plan.jobs.iter().map(|j| &j.config).collect::<Vec<_>>())?
    };
    let reports = model_reports(settings, &plan, &built, &written);
    let keep: Vec<PathBuf> = plan.shared.iter().flatten().cloned().collect();
    let planned: Vec<(&Path, &str)> = plan
        .jobs
        .iter()
        .filter_map(|j| Some((j.config.path.as_path(), j.config.new_text.as_deref()?)))
        .collect();
    let (removed, stale_notices) = remove_stale(settings, root, &keep, &planned)?;
    for n in stale_notices {
        reporter.on_notice(&n);
        notices.push(n);
    }
    let mut report = models_report(
        settings,
        root,
        reports,
        built.environments,
        &plan.shared,
        notices,
    );
    report.removed = removed;
    Ok(report)
}

/// `e`, naming the models whose environment (`file`) it is; an error that names its model
/// already (a failed check) is left as it is.
fn in_models<'a>(e: Error, file: &Path, users: impl IntoIterator<Item = &'a Job>) -> Error {
    if matches!(e, Error::Target(TargetError::Check { .. })) {
        return e;
    }
    let names: Vec<&str> = users.into_iter().map(|j| j.model.name.as_str()).collect();
    Error::Models {
        models: format!(
            "{} {}",
            if names.len() == 1 { "model" } else { "models" },
            names.join(", ")
        ),
        file: file.to_path_buf(),
        source: Box::new(e),
    }
}

/// The warning for MLServer models that share one environment: MLServer (1.7.1 checked) loads
/// the models of a folder at start-up all at once, keys extractions by the tarball's sha256,
/// and only checks that the extraction folder exists: the second model starts its workers
/// from the first one's half-extracted environment, and they crash. Byte-identical copies in
/// each model folder race the same way.
fn mlserver_sharing(plan: &RunPlan) -> Vec<Notice> {
    (0..plan.sh.build_leader.len())
        .filter_map(|b| {
            let users: Vec<&str> = plan
                .users(b)
                .iter()
                .filter(|j| j.model.server == Server::MlServer)
                .map(|j| j.model.name.as_str())
                .collect();
            (users.len() > 1).then(|| {
                Notice::warning(format!(
                    "MLServer models {} use one environment: MLServer loads models at start-up \
                     all at once, and a second model on the same tarball can start from the \
                     first one's half-extracted copy (its workers crash); set \
                     \"load_models_at_startup\": false in settings.json and load them one by \
                     one through the repository API, or give them different environments",
                    users.join(", ")
                ))
            })
        })
        .collect()
}

/// Plans the run: the jobs, each distinct environment file solved once, the builds, and the
/// shared outputs (with the manifests of what envpack wrote there before).
fn plan_run(
    p: &Pipeline,
    root: &Path,
    models: &[Model],
    reporter: &SharedReporter,
) -> Result<RunPlan, Error> {
    let settings = p.settings;
    let mut jobs = plan_jobs(settings, root, models)?;
    let (solved, solve_of_job) = solve_all(p, &jobs, reporter)?;
    let sh = Sharing::new(solve_of_job, &distinct_builds(&solved));

    // An environment several models use is written once, where each model's config reaches it.
    let shared = shared_outputs(p, root, &sh, &solved)?;
    let mut shared_existing = Vec::new();
    for out in &shared {
        shared_existing.push(match out {
            Some(out) => pipeline::check_output(settings, out)?,
            None => None,
        });
    }
    for (j, job) in jobs.iter_mut().enumerate() {
        let b = sh.build_of_job[j];
        if let Some(out) = &shared[b] {
            job.output.clone_from(out);
            job.existing.clone_from(&shared_existing[b]);
            job.config = config::plan(&job.model, out, settings.write_config, true)?;
        }
    }
    Ok(RunPlan {
        jobs,
        solved,
        sh,
        shared,
    })
}

/// Builds every environment that is not `current` (up to date), at most `--parallel` at once,
/// then (`--copy-per-model`) copies each to the other models that use it, unless the copy
/// there is up to date. The builds' notices join `notices`.
fn build_all(
    p: &Pipeline,
    plan: &RunPlan,
    current: Vec<Option<Summary>>,
    root: &Path,
    reporter: &SharedReporter,
    notices: &mut Vec<Notice>,
) -> Result<Built, Error> {
    let settings = p.settings;
    let (jobs, sh) = (&plan.jobs, &plan.sh);
    let mut seconds = vec![0.0; jobs.len()];
    let mut copied = vec![false; jobs.len()];
    let todo: Vec<usize> = (0..sh.build_leader.len())
        .filter(|b| current[*b].is_none())
        .collect();
    let reporter = quiet(settings, reporter, todo.len());
    let built = fan_out(settings.parallel, &todo, |&b| {
        let leader = sh.build_leader[b];
        let t = Instant::now();
        build(
            p,
            plan.solved_of(b),
            &jobs[leader],
            &plan.users(b),
            root,
            &reporter,
        )
        .map(|summary| (summary, t.elapsed().as_secs_f64()))
    });
    let mut environments = current;
    for (&b, r) in todo.iter().zip(built) {
        let (summary, elapsed) =
            r.map_err(|e| in_models(e, &plan.solved_of(b).env.path, plan.users(b)))?;
        seconds[sh.build_leader[b]] = elapsed;
        for w in &summary.notices {
            if !notices.contains(w) {
                notices.push(w.clone());
            }
        }
        environments[b] = Some(summary);
    }
    let environments: Vec<Summary> = environments
        .into_iter()
        .map(|e| e.expect("every environment is up to date or built"))
        .collect();
    for (j, job) in jobs.iter().enumerate() {
        let b = sh.build_of_job[j];
        let leader = sh.build_leader[b];
        let same = job.existing.as_ref().map(|m| &m.digest) == environments[b].digest.as_ref();
        if leader != j && plan.shared[b].is_none() && !same {
            let t = Instant::now();
            copy_output(
                &jobs[leader].output,
                &job.output,
                settings.pack.format,
                // A stale copy envpack wrote is replaced; anything else needs --force.
                settings.force || job.existing.is_some(),
                &settings.inputs(),
            )?;
            seconds[j] = t.elapsed().as_secs_f64();
            copied[j] = true;
        }
    }
    Ok(Built {
        environments,
        seconds,
        copied,
    })
}

/// What happened to each model.
fn model_reports(
    settings: &Settings,
    plan: &RunPlan,
    built: &Built,
    written: &[bool],
) -> Vec<ModelReport> {
    let sh = &plan.sh;
    let mut reports = Vec::new();
    for (j, job) in plan.jobs.iter().enumerate() {
        let b = sh.build_of_job[j];
        let leader = sh.build_leader[b];
        let env = &built.environments[b];
        let up_to_date = if leader == j || plan.shared[b].is_some() {
            env.up_to_date
        } else {
            !settings.dry_run && !built.copied[j]
        };
        reports.push(ModelReport {
            name: job.model.name.clone(),
            server: job.model.server,
            dir: job.model.dir.clone(),
            config: job.config.path.clone(),
            environment_file: job.file.clone(),
            environment: b,
            output: job.output.clone(),
            format: settings.pack.format,
            size: env.size,
            seconds: built.seconds[j],
            solved: sh.solve_leader[sh.solve_of_job[j]] == j,
            installed: !settings.dry_run && leader == j && !env.up_to_date,
            reused_from: (leader != j).then(|| plan.jobs[leader].model.name.clone()),
            up_to_date,
            config_written: written[j],
            config_points_at_output: job.config.points || written[j],
        });
    }
    reports
}

/// Removes the shared environments envpack wrote earlier into [`shared_dir`] that no model
/// uses any more: only an entry named like one (`NAME-DIGEST8` and an archive extension, or
/// a folder), carrying envpack's manifest whose digest starts with those 8 digits, not one of
/// this run's outputs (`keep`), and named in no config of the repository's models (as
/// `--write-config` leaves them: `planned` holds the new texts, for a dry run). Only at the
/// repository root: a folder outside it may serve another repository, so a stale environment
/// there is named in a note and left. Returns what was (on a dry run: would be) removed.
fn remove_stale(
    settings: &Settings,
    root: &Path,
    keep: &[PathBuf],
    planned: &[(&Path, &str)],
) -> Result<(Vec<PathBuf>, Vec<Notice>), Error> {
    let dir = shared_dir(settings, root);
    let mut removed = Vec::new();
    let mut notices = Vec::new();
    let Ok(entries) = fs_err::read_dir(&dir) else {
        return Ok((removed, notices));
    };
    let mut candidates: Vec<(PathBuf, String, String)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| !keep.contains(p))
        .filter_map(|p| stale_name(&p).map(|(name, digest)| (p, name, digest)))
        .collect();
    if candidates.is_empty() {
        return Ok((removed, notices));
    }
    candidates.sort();
    // Every config of the repository, as text: an environment one names is in use.
    let configs = match targets::detect(root)? {
        targets::Detected::Repository { models, .. } => models,
        targets::Detected::Model(m) => vec![m],
        targets::Detected::Environment => Vec::new(),
    }
    .iter()
    .map(|m| {
        let path = m.config_path();
        match planned.iter().find(|(p, _)| *p == path) {
            Some((_, text)) => Ok((*text).to_string()),
            None => fs_err::read_to_string(path),
        }
    })
    .collect::<Result<Vec<String>, _>>()
    .map_err(TargetError::from)?;
    let inside = crate::paths::normalize(&dir) == crate::paths::normalize(root);
    for (path, name, digest) in candidates {
        let ours =
            matches!(crate::manifest::read(&path), Ok(Some(m)) if m.digest.starts_with(&digest));
        if !ours || configs.iter().any(|c| c.contains(&name)) {
            continue;
        }
        let shown = path.display();
        if !inside {
            notices.push(Notice::note(format!(
                "{shown} is a shared environment envpack wrote that no model of this \
                 repository uses any more; left in place (outside the repository, another \
                 repository may use it)"
            )));
        } else if settings.dry_run {
            notices.push(Notice::note(format!(
                "would remove {shown}: no model uses it any more"
            )));
            removed.push(path);
        } else {
            if fs_err::symlink_metadata(&path)
                .map_err(TargetError::from)?
                .is_dir()
            {
                fs_err::remove_dir_all(&path).map_err(TargetError::from)?;
            } else {
                fs_err::remove_file(&path).map_err(TargetError::from)?;
            }
            notices.push(Notice::note(format!(
                "removed {shown}: no model uses it any more"
            )));
            removed.push(path);
        }
    }
    Ok((removed, notices))
}

/// The file name and the 8 hex digits of a shared environment's name (`NAME-DIGEST8` with an
/// archive extension, or a folder without one), if `path` is named like one.
fn stale_name(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?.to_string();
    let meta = fs_err::symlink_metadata(path).ok()?;
    let stem = if meta.is_dir() {
        name.as_str()
    } else if meta.is_file() {
        [Format::TarGz, Format::TarZst, Format::Tar]
            .iter()
            .find_map(|f| name.strip_suffix(f.extension()))?
    } else {
        return None;
    };
    let (head, digest) = stem.rsplit_once('-')?;
    let hex = digest.len() == 8
        && digest
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    (hex && !head.is_empty()).then(|| (name.clone(), digest.to_string()))
}

/// Each distinct package set once: the build of each solve.
fn distinct_builds(solved: &[Solved]) -> Vec<usize> {
    let mut identities: Vec<String> = Vec::new();
    let mut build_of_solve = Vec::new();
    for s in solved {
        let id = s.identity();
        let b = identities.iter().position(|i| *i == id).unwrap_or_else(|| {
            identities.push(id);
            identities.len() - 1
        });
        build_of_solve.push(b);
    }
    build_of_solve
}

/// The consumer checks of every build, on what its solve says the environment will hold.
fn dry_run_checks(settings: &Settings, plan: &RunPlan, root: &Path) -> Result<Vec<Notice>, Error> {
    let mut notices = Vec::new();
    for (b, &leader) in plan.sh.build_leader.iter().enumerate() {
        let s = plan.solved_of(b);
        let facts = checks::expected(&s.records, s.pip_lines());
        let users = plan.users(b);
        notices.extend(check_users(
            settings,
            &facts,
            &plan.jobs[leader],
            &users,
            root,
        )?);
    }
    Ok(notices)
}

/// What the plan has to say, reported: which files the models use, and their configs.
fn planned_notices(settings: &Settings, jobs: &[Job], reporter: &SharedReporter) -> Vec<Notice> {
    let mut notices = files_found_above(settings, jobs);
    notices.extend(jobs.iter().flat_map(|j| j.config.warnings.iter().cloned()));
    for n in &notices {
        reporter.on_notice(n);
    }
    notices
}

/// The notes that say which environment file models use, where it was found above the model
/// folder.
fn files_found_above(settings: &Settings, jobs: &[Job]) -> Vec<Notice> {
    let mut notices = Vec::new();
    if settings.model_file.is_some() {
        return notices;
    }
    let mut files: Vec<&Path> = jobs.iter().map(|j| j.file.as_path()).collect();
    files.sort();
    files.dedup();
    for f in files {
        let users: Vec<&str> = jobs
            .iter()
            .filter(|j| j.file == f && !f.starts_with(&j.model.dir))
            .map(|j| j.model.name.as_str())
            .collect();
        if !users.is_empty() {
            notices.push(Notice::note(format!(
                "{} uses {}",
                users.join(", "),
                f.display()
            )));
        }
    }
    notices
}

/// The report: models, each environment with the models that use it, and the sizes.
fn models_report(
    settings: &Settings,
    root: &Path,
    reports: Vec<ModelReport>,
    environments: Vec<Summary>,
    shared: &[Option<PathBuf>],
    notices: Vec<Notice>,
) -> ModelsReport {
    let environments: Vec<EnvironmentReport> = environments
        .into_iter()
        .enumerate()
        .map(|(b, summary)| EnvironmentReport {
            models: reports
                .iter()
                .filter(|m| m.environment == b)
                .map(|m| m.name.clone())
                .collect(),
            shared: shared[b].is_some(),
            summary,
        })
        .collect();
    let copies = |e: &EnvironmentReport| e.summary.size * e.models.len() as u64;
    ModelsReport {
        root: root.to_path_buf(),
        models: reports,
        size: environments
            .iter()
            .map(|e| if e.shared { e.summary.size } else { copies(e) })
            .sum(),
        copy_per_model_size: environments.iter().map(copies).sum(),
        environments,
        removed: Vec::new(),
        notices,
        dry_run: settings.dry_run,
    }
}

/// Installs, checks for every model that uses it, and packs one environment into the output
/// of `leader`.
fn build(
    p: &Pipeline,
    solved: &Solved,
    leader: &Job,
    users: &[&Job],
    root: &Path,
    reporter: &SharedReporter,
) -> Result<Summary, Error> {
    let settings = p.settings;
    let check = |tree: &dyn Tree| -> Result<Vec<Notice>, Error> {
        let facts = checks::inspect_tree(tree);
        check_users(settings, &facts, leader, users, root)
    };
    p.build(solved, leader.output.clone(), &check, reporter)
}

/// The consumer checks of one environment, once for every model that uses it (a model's own
/// stub lifts the Python rule for that model only). Returns the notices, each once.
fn check_users(
    settings: &Settings,
    facts: &checks::EnvFacts,
    leader: &Job,
    users: &[&Job],
    root: &Path,
) -> Result<Vec<Notice>, Error> {
    let mut notices: Vec<Notice> = Vec::new();
    if !settings.check {
        return Ok(notices);
    }
    let env_name = display_below(&leader.file, root);
    for job in users {
        let m = &job.model;
        let found = match m.server {
            Server::Triton => checks::check_triton(
                facts,
                settings.triton_version,
                checks::custom_stub(&m.dir).is_file(),
            ),
            Server::MlServer => checks::check_mlserver(facts),
        }
        .map_err(|source| TargetError::Check {
            model: m.name.clone(),
            server: m.server,
            environment: leader.file.clone(),
            source: Box::new(source),
        })?;
        for n in found {
            let n = n.within(&env_name);
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
    }
    Ok(notices)
}

/// Where a model's packed environment goes: `-o NAME` inside the model folder, `-o PATH` for
/// a single model, else [`targets::default_file_name`] in the model folder.
fn output_for(model: &Model, settings: &Settings) -> PathBuf {
    if let Some(name) = &settings.model_output_name {
        model.dir.join(name)
    } else if let Some(o) = &settings.output {
        o.clone()
    } else {
        model.dir.join(targets::default_file_name(
            model.server,
            settings.pack.format,
        ))
    }
}

/// Packs the image-level MLServer tarball (`MLSERVER_ENV_TARBALL`): `environment.tar.gz` in the
/// current folder unless `-o`, with `mlserver` checked in the staging prefix before writing.
pub fn pack_mlserver_image(
    p: &Pipeline,
    file: &Path,
    reporter: &SharedReporter,
) -> Result<Summary, Error> {
    let settings = p.settings;
    let output = settings
        .output
        .clone()
        .unwrap_or_else(|| settings.cwd.join(targets::MLSERVER_TARBALL));
    if settings.check {
        checks::check_format(Consumer::MlServerImage, settings.pack.format)?;
    }
    let check = |tree: &dyn Tree| -> Result<Vec<Notice>, Error> {
        if !settings.check {
            return Ok(Vec::new());
        }
        let facts = checks::inspect_tree(tree);
        Ok(checks::check_mlserver(&facts)?)
    };
    p.pack_file(file, Some(output), &check, reporter)
}

/// Copies a packed environment (a file or a folder) to `to`, through a temporary name beside
/// it: never a partial output.
fn copy_output(
    from: &Path,
    to: &Path,
    format: Format,
    force: bool,
    inputs: &[PathBuf],
) -> Result<(), Error> {
    if format == Format::Dir {
        let (tmp, _interrupt) = archive::temp_dir_beside(to).map_err(TargetError::from)?;
        copy_tree(from, tmp.path())?;
        let perms = fs_err::metadata(from)
            .map_err(TargetError::from)?
            .permissions();
        fs_err::set_permissions(tmp.path(), perms).map_err(TargetError::from)?;
        let kept = tmp.keep();
        if let Err(e) = publish::publish(&kept, to, force, inputs) {
            let _ = fs_err::remove_dir_all(&kept);
            return Err(e.into());
        }
    } else {
        let (tmp, _interrupt) = archive::temp_file_beside(to).map_err(TargetError::from)?;
        fs_err::copy(from, tmp.path()).map_err(TargetError::from)?;
        let tmp = tmp.into_temp_path();
        publish::publish(&tmp, to, force, inputs)?;
        let _ = tmp.keep();
    }
    Ok(())
}

/// Copies the contents of folder `from` into the existing folder `to`: files (with their
/// modes), folders, and symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), TargetError> {
    for e in fs_err::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let ty = e.file_type()?;
        if ty.is_symlink() {
            let target = fs_err::read_link(&src)?;
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(crate::paths::at("failed to create symlink", &dst))?;
        } else if ty.is_dir() {
            fs_err::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
            let perms = fs_err::metadata(&src)?.permissions();
            fs_err::set_permissions(&dst, perms)?;
        } else {
            fs_err::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_keeps_order_and_bounds_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<usize> = (0..12).collect();
        let out = fan_out(3, &items, |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=3).contains(&peak), "peak {peak}");
        assert_eq!(fan_out(4, &[] as &[usize], |i| *i), Vec::<usize>::new());
    }

    #[test]
    fn copies_are_identical_files_and_trees() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.tar.gz");
        fs_err::write(&a, b"bytes").unwrap();
        let b = t.path().join("m/b.tar.gz");
        fs_err::create_dir_all(b.parent().unwrap()).unwrap();
        copy_output(&a, &b, Format::TarGz, false, &[]).unwrap();
        assert_eq!(fs_err::read(&b).unwrap(), b"bytes");

        let src = t.path().join("env");
        fs_err::create_dir_all(src.join("bin")).unwrap();
        fs_err::write(src.join("bin/python3.11"), "py").unwrap();
        std::os::unix::fs::symlink("python3.11", src.join("bin/python")).unwrap();
        fs_err::set_permissions(
            src.join("bin/python3.11"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dst = t.path().join("m/env");
        // An old output, replaced.
        fs_err::create_dir_all(dst.join("conda-meta")).unwrap();
        fs_err::create_dir_all(dst.join("share/envpack")).unwrap();
        copy_output(&src, &dst, Format::Dir, true, &[]).unwrap();
        assert_eq!(
            fs_err::read_link(dst.join("bin/python")).unwrap(),
            Path::new("python3.11")
        );
        let mode = fs_err::metadata(dst.join("bin/python3.11"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        // No temporary left behind.
        let names: Vec<String> = fs_err::read_dir(t.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    }
}
