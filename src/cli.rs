//! Command-line arguments, parsed with clap and turned into an [`envpack::Request`].

use std::path::PathBuf;

use clap::{ArgMatches, Args, Parser, Subcommand};
use envpack::{Filter, Request};

/// Pack a conda environment into a relocatable tarball for Triton and MLServer.
#[derive(Debug, Parser)]
#[command(name = "envpack", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Solve, install and pack an environment file, a model, a model repository, or an
    /// existing environment (--prefix).
    #[command(after_long_help = MODELS_HELP)]
    Pack(Box<PackArgs>),
    /// Solve an environment file (or a model's) and write its lock, conda-lock.yml, beside it:
    /// the exact packages with their URLs and hashes, the pip: section locked too.
    #[command(after_long_help = LOCK_HELP)]
    Lock(Box<LockArgs>),
    /// Extract an envpack or conda-pack archive (or a `--format dir` folder) into DEST and
    /// relocate it there, as its conda-unpack would, without Python.
    #[command(after_long_help = UNPACK_HELP)]
    Unpack(UnpackArgs),
    /// Show what a packed environment holds (platform, Python, packages and their sizes, pip
    /// packages, its manifest) and whether Triton and MLServer can use it, without extracting it.
    #[command(after_long_help = INSPECT_HELP)]
    Inspect(InspectArgs),
}

/// For `envpack inspect --help`.
const INSPECT_HELP: &str = "\
PATH is a tarball (gzip, zstd or plain tar: recognised by its content, not its name), a folder
written by `envpack pack --format dir`, or a model folder: Triton's (config.pbtxt, its
EXECUTION_ENV_PATH) or MLServer's (model-settings.json, its parameters.environment_tarball);
without that setting, the tarball's default name in the model folder. The archive is read as
one stream; nothing is written to disk.

Sizes are those of the files each package installed (conda records' file lists; pip packages'
RECORD). The checks are those `envpack pack` runs: Triton once per stub era (up to 23.04,
23.05-24.10, from 24.11), or for --triton-version only; MLServer's per-model tarball and its
image's MLSERVER_ENV_TARBALL. A failed check does not change the exit code (0).

--json prints one document; its \"version\" (1) changes only when a field changes meaning or
goes away. Fields: version, path, model {dir, server, config, config_value}, format, size,
installed_size, files, platform, python, packages [{name, version, build, size, files}] and pip
[{name, version, size, files}] largest first, other_size, manifest (conda-meta/envpack.json as
written, or null), manifest_matches_records, checks [{consumer, releases, ok, problem, hint,
notices, model}].

  envpack inspect model_repository/my_model
  envpack inspect environment.tar.gz --json | jq '.packages[:5]'";

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A tarball, a `--format dir` folder, or a Triton or MLServer model folder.
    pub path: PathBuf,

    /// Check Triton against this release (YY.MM) only, instead of once per stub era.
    #[arg(long, value_name = "YY.MM")]
    pub triton_version: Option<String>,

    /// Print a machine-readable document on stdout (its \"version\" field is 1).
    #[arg(long)]
    pub json: bool,

    /// More logs (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// For `envpack unpack --help`.
const UNPACK_HELP: &str = "\
ARCHIVE is a tar archive (gzip, zstd, bzip2 or plain: recognised by its content, not its
name) or a folder written by `envpack pack --format dir`. DEST must not exist, or be an empty
folder; it appears only when everything succeeded.

Members with absolute names or `..`, members written through a symlink, hard links to
anything but a file of the archive, and devices or FIFOs are refused. When the archive's
manifest (conda-meta/envpack.json) lists file digests, they are checked. Files are then
relocated as the archive's own conda-unpack would (envpack's and conda-pack's alike), and an
envpack environment is marked relocated: its first activation does nothing more.

  envpack unpack model-conda.tar.gz /opt/envs/model
  envpack unpack env.tar.gz ./build/env --dest-prefix /opt/env   # moved to /opt/env later";

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The archive, or a folder written by `envpack pack --format dir`.
    pub archive: PathBuf,

    /// The folder to create (it must not exist, or be empty).
    pub dest: PathBuf,

    /// Relocate for this path instead of DEST: the folder will be moved there.
    #[arg(long, value_name = "DIR")]
    pub dest_prefix: Option<String>,

    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress bars, no summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// No progress bars (warnings still print).
    #[arg(long)]
    pub no_progress: bool,

    /// More logs (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How locks are used, for `envpack lock --help`.
const LOCK_HELP: &str = "\
The lock is conda-lock's unified format (version 1): conda-lock and micromamba read it.
`envpack pack` installs it instead of solving while it matches the environment file (its
metadata.content_hash, a digest of the channels, dependency lines, pip: lines, --glibc,
--cuda and the channel alias); --locked fails when it is missing or out of date, naming what
changed; --frozen installs it as it is. Locked builds fetch no repodata, and install the pip:
packages with their hashes required. PATH may also be a lock: conda-lock.yml, pixi.lock
(-e ENV chooses its environment) or an @EXPLICIT file.

  envpack lock                                 ./environment.yml -> ./conda-lock.yml
  envpack lock env.yml --platform linux-64 --platform linux-aarch64
  envpack pack --locked                        fails if conda-lock.yml is stale";

/// How PATH is read, for `envpack pack --help`.
const MODELS_HELP: &str = "\
What PATH is:
  a file                             an environment file
  a folder with config.pbtxt         a Triton model (python backend)
  a folder with model-settings.json  an MLServer model
  a folder with models below it      a model repository: every model in its subfolders (up
                                     to 4 levels; hidden folders, conda environments and
                                     folders inside a model skipped)
  any other folder                   holds environment.yml (or environment.yaml)

A model's environment file (unless --file names one) is the first that exists of
  1. MODEL/environment.yml, MODEL/environment.yaml
  2. the same two names in each parent folder of MODEL, up to and including the repository
     root: the folder given as PATH for a repository, the model's parent folder (the model
     repository holding it) for a single model. Nothing above the root is looked at.

A model's output goes into the model folder: model-conda.tar.gz for Triton (model-conda, a
folder Triton 23.07+ uses in place, with --format dir), environment.tar.gz for MLServer;
-o NAME renames it. --write-config points config.pbtxt (EXECUTION_ENV_PATH =
$$TRITON_MODEL_DIRECTORY/NAME) or model-settings.json (parameters.environment_tarball =
./NAME) at it; without it, a config that does not point there gets a warning with the fix.
Models with the same environment (same file, or the same solved packages) share one solve,
install and pack; the tarball is copied to each.

  envpack pack models/add_one --write-config     one Triton model
  envpack pack models --write-config             a whole model repository
  envpack pack --mlserver env.yml                MLServer's image-level environment.tar.gz";

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct PackArgs {
    /// An environment file, a folder holding `environment.yml`, a Triton or MLServer model
    /// folder, or a model repository. Default: the current folder.
    pub path: Option<PathBuf>,

    /// The environment file to use (instead of looking for one; for a model or every model
    /// of a repository too).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Pack for MLServer's image (MLSERVER_ENV_TARBALL): PATH is an environment file or its
    /// folder; writes `environment.tar.gz` and checks that `mlserver` is installed in it.
    #[arg(long)]
    pub mlserver: bool,

    /// Point each model's config at its packed environment (config.pbtxt's
    /// EXECUTION_ENV_PATH, model-settings.json's parameters.environment_tarball).
    #[arg(long)]
    pub write_config: bool,

    /// Check the environment against this Triton release (YY.MM): the stub's Python (3.8 up
    /// to 23.04, 3.10 for 23.05-24.10, 3.12 from 24.11) and numpy<2 up to 24.10.
    #[arg(long, value_name = "YY.MM")]
    pub triton_version: Option<String>,

    /// Skip the checks of what Triton or MLServer need in the environment.
    #[arg(long)]
    pub no_check: bool,

    /// The Python of an environment made from a requirements.txt (X.Y; default: what the
    /// server runs: the Triton stub's, 3.12 for the newest; 3.10 for MLServer).
    #[arg(long, value_name = "X.Y")]
    pub python: Option<String>,

    /// In a model repository, give every model its own copy of an environment it shares
    /// with others (default: one file at the repository root, which every model's config
    /// points at; use this when models are shipped or mounted one by one).
    #[arg(long)]
    pub copy_per_model: bool,

    /// Where the shared environments of a model repository go (default: the repository
    /// root; for --format dir, beside the repository, since Triton takes any folder in the
    /// repository for a model).
    #[arg(long, value_name = "DIR")]
    pub env_dir: Option<PathBuf>,

    /// Distinct environments of a model repository built at once (default: the cores, at
    /// most 4).
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,

    /// Pack an existing environment (conda, mamba, micromamba, pixi, envpack) instead.
    #[arg(short = 'p', long, value_name = "PATH")]
    pub prefix: Option<PathBuf>,

    /// Output file (default: `<name>.tar.gz` in the current folder; for a model, the name
    /// its server expects, in the model folder, and a bare NAME renames it there). The format
    /// follows the extension.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Output format: tar.gz, tar.zst, tar, or dir (a folder).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,

    /// Compression level (gzip 0-9, default 4; zstd 1-22, default 3).
    #[arg(
        long = "compress-level",
        value_name = "N",
        allow_negative_numbers = false
    )]
    pub level: Option<i32>,

    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,

    /// Target platform (default: linux on this machine's architecture).
    #[arg(long, value_name = "SUBDIR")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Where the staging prefix is made (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Keep the staging prefix.
    #[arg(long)]
    pub keep_work: bool,

    /// For debugging: install into a staging prefix and pack it, even when the archive can be
    /// written straight from the package cache (the result is the same archive).
    #[arg(long, hide = true)]
    pub via_prefix: bool,

    /// Threads in all, for scanning, reading and compressing (default: all cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// Print the plan (packages, download size, output) and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,

    /// A folder inside the archive that holds the environment.
    #[arg(long, value_name = "DIR")]
    pub arcroot: Option<String>,

    /// Relocate at pack time for this final location (no unpack step needed there).
    #[arg(long, value_name = "DIR")]
    pub dest_prefix: Option<String>,

    /// Leave out paths matching PATTERN (repeatable; with --include, applied in order).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// Bring back paths matching PATTERN (repeatable; applied in order with --exclude).
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,

    /// Pack even when files conda installed are missing.
    #[arg(long)]
    pub ignore_missing_files: bool,

    /// Pack even when pip installed packages in editable mode.
    #[arg(long)]
    pub ignore_editable_packages: bool,

    /// Do not relocate the environment by itself at first activation or Python start.
    #[arg(long)]
    pub no_auto_relocate: bool,

    /// Fail unless a lock beside the environment file (conda-lock.yml) matches it; install
    /// that lock without solving.
    #[arg(long)]
    pub locked: bool,

    /// Install the lock beside the environment file as it is, even if the file changed.
    #[arg(long, conflicts_with = "locked")]
    pub frozen: bool,

    /// The environment of a pixi.lock given as PATH or --file (default: `default`).
    #[arg(short = 'e', long = "environment", value_name = "ENV")]
    pub environment: Option<String>,

    /// No progress bars and no result line (warnings and errors still print).
    #[arg(short, long)]
    pub quiet: bool,

    /// No progress bars (same as -q for bars; warnings still print).
    #[arg(long)]
    pub no_progress: bool,

    /// More logs (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl PackArgs {
    /// The request, with include/exclude in command-line order (from `matches`).
    pub fn request(&self, matches: &ArgMatches) -> Request {
        let mut filters: Vec<(usize, Filter)> = Vec::new();
        for (id, make) in [
            ("exclude", Filter::Exclude as fn(String) -> Filter),
            ("include", Filter::Include),
        ] {
            if let (Some(values), Some(indices)) =
                (matches.get_many::<String>(id), matches.indices_of(id))
            {
                for (v, i) in values.zip(indices) {
                    filters.push((i, make(v.clone())));
                }
            }
        }
        filters.sort_by_key(|(i, _)| *i);
        Request {
            path: self.path.clone(),
            file: self.file.clone(),
            mlserver: self.mlserver,
            write_config: self.write_config,
            no_check: self.no_check,
            triton_version: self.triton_version.clone(),
            parallel: self.parallel,
            copy_per_model: self.copy_per_model,
            python: self.python.clone(),
            env_dir: self.env_dir.clone(),
            prefix: self.prefix.clone(),
            output: self.output.clone(),
            format: self.format.clone(),
            level: self.level,
            platform: self.platform.clone(),
            glibc: self.target.glibc.clone(),
            cuda: self.target.cuda.clone(),
            channel_alias: self.target.channel_alias.clone(),
            mirrors: self.target.mirror.clone(),
            cache_dir: self.target.cache_dir.clone(),
            work_dir: self.work_dir.clone(),
            keep_work: self.keep_work,
            via_prefix: self.via_prefix,
            threads: self.threads,
            dry_run: self.dry_run,
            force: self.force,
            arcroot: self.arcroot.clone(),
            dest_prefix: self.dest_prefix.clone(),
            filters: filters.into_iter().map(|(_, f)| f).collect(),
            ignore_missing_files: self.ignore_missing_files,
            ignore_editable_packages: self.ignore_editable_packages,
            no_auto_relocate: self.no_auto_relocate,
            locked: self.locked,
            frozen: self.frozen,
            environment: self.environment.clone(),
        }
    }
}

/// The target's virtual packages and where packages come from: the same flags for `pack` and
/// `lock`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// glibc version of the target (default 2.28; also CONDA_OVERRIDE_GLIBC).
    #[arg(long, value_name = "X.Y")]
    pub glibc: Option<String>,

    /// CUDA driver version of the target (default none; also CONDA_OVERRIDE_CUDA).
    #[arg(long, value_name = "X.Y")]
    pub cuda: Option<String>,

    /// URL that channel names are relative to (default https://conda.anaconda.org/; also
    /// ENVPACK_CHANNEL_ALIAS).
    #[arg(long, value_name = "URL")]
    pub channel_alias: Option<String>,

    /// Fetch channel FROM (a name or URL prefix) from TO (a URL or folder). Repeatable; also
    /// ENVPACK_MIRRORS="FROM=TO FROM=TO". Archives and locks record the canonical URLs.
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,

    /// Package and repodata cache (default: rattler's, shared with pixi).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct LockArgs {
    /// An environment file, a folder holding `environment.yml`, a model folder or a model
    /// repository (each environment file is locked). Default: the current folder.
    pub path: Option<PathBuf>,

    /// The environment file to lock (of a model, or instead of PATH).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Where to write the lock (default: conda-lock.yml beside the environment file).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// A platform to lock for (repeatable; default: linux on this machine's architecture).
    /// The pip: section can be locked for this machine's platform only.
    #[arg(long, value_name = "SUBDIR")]
    pub platform: Vec<String>,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Where the staging prefix for locking the pip: section is made.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Threads (default: all cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress bars and no result line (warnings and errors still print).
    #[arg(short, long)]
    pub quiet: bool,

    /// No progress bars (warnings still print).
    #[arg(long)]
    pub no_progress: bool,

    /// More logs (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl LockArgs {
    /// The request (`--platform` and `-o` are the lock's own, not the request's).
    pub fn request(&self) -> Request {
        Request {
            path: self.path.clone(),
            file: self.file.clone(),
            platform: self.platform.first().cloned(),
            glibc: self.target.glibc.clone(),
            cuda: self.target.cuda.clone(),
            channel_alias: self.target.channel_alias.clone(),
            mirrors: self.target.mirror.clone(),
            cache_dir: self.target.cache_dir.clone(),
            work_dir: self.work_dir.clone(),
            threads: self.threads,
            no_check: true,
            ..Request::default()
        }
    }
}
