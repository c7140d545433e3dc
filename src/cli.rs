//! Command-line arguments, parsed with clap and turned into an [`envpack::settings::Request`].

use std::path::PathBuf;

use clap::{ArgMatches, Args, Parser, Subcommand};
use envpack::pack::Filter;
use envpack::settings::Request;

/// Pack a conda environment into a relocatable tarball for Triton and MLServer.
#[derive(Debug, Parser)]
#[command(name = "envpack", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Solve, install and pack an environment file, a model, a model repository, or an
    /// existing environment (--prefix).
    Pack(PackArgs),
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct PackArgs {
    /// An environment file, a folder holding `environment.yml`, a Triton or MLServer model
    /// folder, or a model repository. Default: the current folder.
    pub path: Option<PathBuf>,

    /// The environment file to use (instead of looking for one).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Pack an existing environment (conda, mamba, micromamba, pixi, envpack) instead.
    #[arg(short = 'p', long, value_name = "PATH")]
    pub prefix: Option<PathBuf>,

    /// Output file (default: `<name>.tar.gz` in the current folder; in a model folder, the
    /// name the server expects). The format follows the extension.
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

    /// glibc version of the target (default 2.28; also CONDA_OVERRIDE_GLIBC).
    #[arg(long, value_name = "X.Y")]
    pub glibc: Option<String>,

    /// CUDA driver version of the target (default none; also CONDA_OVERRIDE_CUDA).
    #[arg(long, value_name = "X.Y")]
    pub cuda: Option<String>,

    /// URL that channel names are relative to (default https://conda.anaconda.org/).
    #[arg(long, value_name = "URL", env = "ENVPACK_CHANNEL_ALIAS")]
    pub channel_alias: Option<String>,

    /// Fetch channel FROM (a name or URL prefix) from TO (a URL or folder). Repeatable; also
    /// ENVPACK_MIRRORS="FROM=TO FROM=TO".
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,

    /// Package and repodata cache (default: rattler's, shared with pixi).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Where the staging prefix is made (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Keep the staging prefix.
    #[arg(long)]
    pub keep_work: bool,

    /// Threads for scanning and compression (default: all cores).
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

    /// No progress bars.
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
            path: self.file.clone().or_else(|| self.path.clone()),
            prefix: self.prefix.clone(),
            output: self.output.clone(),
            format: self.format.clone(),
            level: self.level,
            platform: self.platform.clone(),
            glibc: self.glibc.clone(),
            cuda: self.cuda.clone(),
            channel_alias: self.channel_alias.clone(),
            mirrors: self.mirror.clone(),
            cache_dir: self.cache_dir.clone(),
            work_dir: self.work_dir.clone(),
            keep_work: self.keep_work,
            threads: self.threads,
            dry_run: self.dry_run,
            force: self.force,
            arcroot: self.arcroot.clone(),
            dest_prefix: self.dest_prefix.clone(),
            filters: filters.into_iter().map(|(_, f)| f).collect(),
            ignore_missing_files: self.ignore_missing_files,
            ignore_editable_packages: self.ignore_editable_packages,
            no_auto_relocate: self.no_auto_relocate,
        }
    }
}
