//! The `envpack` binary: parse arguments, set up output, run the library, render errors.

mod cli;
mod progress;

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command, UnpackArgs};
use envpack::{Error, ModelsReport, Report, Settings, SharedReporter, Summary};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    on_interrupt_remove_temporaries();
    match cli.command {
        Command::Pack(args) => {
            let sub = matches.subcommand_matches("pack").expect("pack matches");
            let bars = Arc::new(progress::Bars::new(!args.quiet && !args.no_progress));
            init_logging(args.verbose, bars.clone());
            // The process environment and the current folder are read here, once.
            let cwd = match current_dir() {
                Ok(c) => c,
                Err(code) => return code,
            };
            let env = |k: &str| std::env::var(k).ok();
            let result = Settings::resolve(args.request(sub), &env, &cwd)
                .map_err(Error::from)
                .and_then(|s| envpack::run(&s, &(bars.clone() as SharedReporter)));
            leave_to_the_interrupt();
            match result {
                Ok(report) => {
                    let printed = match &report {
                        Report::Environment(s) => print_summary(s, args.json, args.quiet),
                        Report::Models(m) => print_models(m, args.json, args.quiet),
                    };
                    if let Err(e) = printed
                        && e.kind() != std::io::ErrorKind::BrokenPipe
                    {
                        let _ = writeln!(std::io::stderr(), "error: cannot write the summary: {e}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => report(&e),
            }
        }
        Command::Unpack(args) => unpack(&args),
        Command::Lock(args) => lock_command(&args),
        Command::Inspect(args) => inspect_command(&args),
    }
}

/// Once an interrupt arrived, the handler removes the temporaries, says what is left and
/// exits: the command's result (an error its removal caused, or a summary) is not printed.
fn leave_to_the_interrupt() {
    if envpack::interrupted() {
        loop {
            std::thread::park();
        }
    }
}

/// `envpack inspect PATH`.
fn inspect_command(args: &cli::InspectArgs) -> ExitCode {
    init_logging(args.verbose, Arc::new(progress::Bars::new(false)));
    let options = envpack::InspectOptions {
        triton_version: args.triton_version.clone(),
    };
    match envpack::inspect(&args.path, &options) {
        Ok(i) => {
            let mut out = std::io::stdout().lock();
            let printed = if args.json {
                serde_json::to_writer_pretty(&mut out, &i)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
            } else {
                print_inspection(&mut out, &i)
            };
            if let Err(e) = printed
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                let _ = writeln!(std::io::stderr(), "error: cannot write the report: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&Error::from(e)),
    }
}

/// `envpack inspect`'s human report.
fn print_inspection(out: &mut impl Write, i: &envpack::Inspection) -> std::io::Result<()> {
    writeln!(
        out,
        "{} ({}, {}; {} in {} once extracted)",
        i.path.display(),
        i.format,
        human(i.size),
        human(i.installed_size),
        count(i.files, "file")
    )?;
    if let Some(m) = &i.model {
        let how = m.config_value.as_ref().map_or_else(
            || "its default name".to_string(),
            |v| {
                format!(
                    "`{v}` in {}",
                    m.config.file_name().unwrap_or_default().to_string_lossy()
                )
            },
        );
        writeln!(
            out,
            "model:     {} model {} (through {how})",
            m.server,
            m.dir.display()
        )?;
    }
    let or_unknown = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
    writeln!(out, "platform:  {}", or_unknown(&i.platform))?;
    writeln!(out, "python:    {}", or_unknown(&i.python))?;
    match &i.manifest {
        Some(m) => {
            let agrees = if i.manifest_matches_records == Some(false) {
                " (its packages differ from conda-meta's records)"
            } else {
                ""
            };
            writeln!(
                out,
                "manifest:  envpack {}, from {} ({}), {}, digest {}{agrees}",
                m.envpack,
                if m.source == "prefix" {
                    "an existing environment"
                } else {
                    "an environment file"
                },
                m.format,
                m.platform,
                m.digest.get(..16).unwrap_or(&m.digest)
            )?;
            for l in &m.pip {
                writeln!(out, "           pip: {l}")?;
            }
        }
        None => writeln!(out, "manifest:  none (not written by envpack)")?,
    }
    let conda: u64 = i.packages.iter().map(|p| p.size).sum();
    writeln!(
        out,
        "\n{}, {}:",
        count(i.packages.len(), "conda package"),
        human(conda)
    )?;
    for p in &i.packages {
        writeln!(
            out,
            "  {:>9}  {:<28} {:<14} {}",
            human(p.size),
            p.name,
            p.version,
            p.build
        )?;
    }
    if !i.pip.is_empty() {
        let pip: u64 = i.pip.iter().map(|p| p.size).sum();
        writeln!(
            out,
            "\n{}, {}:",
            count(i.pip.len(), "pip package"),
            human(pip)
        )?;
        for p in &i.pip {
            writeln!(out, "  {:>9}  {:<28} {}", human(p.size), p.name, p.version)?;
        }
    }
    writeln!(out, "\nother files: {}", human(i.other_size))?;
    print_verdicts(out, &i.checks)
}

/// The checks' verdicts, a hint once when the next verdict has the same.
fn print_verdicts(out: &mut impl Write, checks: &[envpack::Verdict]) -> std::io::Result<()> {
    writeln!(out, "\nchecks:")?;
    let mut last_hint = None;
    for v in checks {
        let who = match (&v.consumer[..], &v.releases) {
            ("triton", Some(r)) => format!("triton {r}"),
            ("mlserver", _) => "mlserver (environment_tarball)".into(),
            ("mlserver-image", _) => "mlserver image (MLSERVER_ENV_TARBALL)".into(),
            (c, _) => c.to_string(),
        };
        let mark = if v.model { " *" } else { "" };
        match &v.problem {
            None => writeln!(out, "  ok    {who}{mark}")?,
            Some(p) => writeln!(out, "  FAIL  {who}{mark}: {p}")?,
        }
        for n in &v.notices {
            writeln!(out, "          {n}")?;
        }
        if let Some(h) = &v.hint
            && last_hint != Some(h)
        {
            writeln!(out, "          hint: {h}")?;
        }
        last_hint = v.hint.as_ref();
    }
    if checks.iter().any(|v| v.model) {
        writeln!(out, "  (* the model's own server)")?;
    }
    Ok(())
}

/// `envpack unpack ARCHIVE DEST`.
fn unpack(args: &UnpackArgs) -> ExitCode {
    let bars = Arc::new(progress::Bars::new(!args.quiet && !args.no_progress));
    init_logging(args.verbose, bars.clone());
    let options = envpack::UnpackOptions {
        dest_prefix: args.dest_prefix.clone(),
    };
    let reporter: SharedReporter = bars;
    let result = envpack::unpack(&args.archive, &args.dest, &options, &reporter);
    leave_to_the_interrupt();
    match result {
        Ok(u) => {
            let mut out = std::io::stdout().lock();
            let printed = if args.json {
                serde_json::to_writer_pretty(&mut out, &u)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
            } else if args.quiet {
                Ok(())
            } else {
                let how = match (&u.prefix, u.origin) {
                    (Some(p), o) => format!(
                        "{} files relocated for {p} ({})",
                        u.relocated,
                        if o == envpack::Origin::CondaPack {
                            "conda-pack archive"
                        } else {
                            "envpack archive"
                        }
                    ),
                    (None, _) => "not relocated".into(),
                };
                let verified = if u.verified > 0 {
                    format!(", {} digests checked", u.verified)
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "unpacked {} into {} ({} files, {how}{verified})",
                    u.archive.display(),
                    u.root.display(),
                    u.files
                )
            };
            if let Err(e) = printed
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                let _ = writeln!(std::io::stderr(), "error: cannot write the summary: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&Error::from(e)),
    }
}

/// `envpack lock`: resolve the settings, lock each environment file, print what was written.
fn lock_command(args: &cli::LockArgs) -> ExitCode {
    let bars = Arc::new(progress::Bars::new(!args.quiet && !args.no_progress));
    init_logging(args.verbose, bars.clone());
    let cwd = match current_dir() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let env = |k: &str| std::env::var(k).ok();
    let output = args.output.as_ref().map(|o| cwd.join(o));
    let result = Settings::resolve(args.request(), &env, &cwd)
        .map_err(Error::from)
        .and_then(|s| {
            envpack::lock(
                &s,
                &args.platform,
                output.as_deref(),
                &(bars.clone() as SharedReporter),
            )
        });
    leave_to_the_interrupt();
    match result {
        Ok(reports) => {
            if let Err(e) = print_locks(&reports, args.json, args.quiet)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                let _ = writeln!(std::io::stderr(), "error: cannot write the summary: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

fn print_locks(reports: &[envpack::LockReport], json: bool, quiet: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, reports)?;
        return writeln!(out);
    }
    if quiet {
        return Ok(());
    }
    for r in reports {
        let platforms: Vec<String> = r
            .platforms
            .iter()
            .map(|p| match p.pip {
                0 => format!("{}: {} packages", p.platform, p.packages),
                n => format!("{}: {} packages, {n} pip", p.platform, p.packages),
            })
            .collect();
        writeln!(
            out,
            "wrote {} ({})",
            r.lock_file.display(),
            platforms.join("; ")
        )?;
    }
    Ok(())
}

/// Ctrl-C, SIGTERM (`docker stop`) and SIGHUP end the process without running destructors:
/// stop the child processes, remove the partial output and the staging prefix, then exit as
/// the signal would (128 + its number), also when an output was already complete: the run
/// was interrupted, and the message names each output that is kept (a retry finds it up to
/// date).
fn on_interrupt_remove_temporaries() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let complete = envpack::remove_temporaries();
            let _ = writeln!(std::io::stderr().lock(), "\n{}", interrupted(&complete));
            std::process::exit(128 + signal);
        }
    });
}

/// What an interrupt left: nothing but the outputs that were complete before it.
fn interrupted(complete: &[std::path::PathBuf]) -> String {
    let names: Vec<String> = complete.iter().map(|p| p.display().to_string()).collect();
    match names.as_slice() {
        [] => "interrupted: temporary files removed".into(),
        [one] => format!("interrupted: {one} is complete and kept; temporary files removed"),
        many => format!(
            "interrupted: {} are complete and kept; temporary files removed",
            many.join(", ")
        ),
    }
}

fn init_logging(verbose: u8, bars: Arc<progress::Bars>) {
    let level = match verbose {
        0 => "warn",
        1 => "envpack=info,rattler=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENVPACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let writer = move || SuspendingStderr(bars.clone());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(verbose > 1)
        .without_time()
        .try_init();
}

/// Writes log lines to stderr with the progress bars suspended.
struct SuspendingStderr(Arc<progress::Bars>);

impl Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Renders an error once: the message, each cause, then a hint.
/// The current folder, read once per command; when it cannot be read, the error is printed
/// and the exit code returned.
fn current_dir() -> Result<std::path::PathBuf, ExitCode> {
    std::env::current_dir().map_err(|e| {
        let _ = writeln!(
            std::io::stderr(),
            "error: cannot read the current folder\n  caused by: {e}"
        );
        ExitCode::from(1)
    })
}

fn report(e: &Error) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = writeln!(err, "  caused by: {s}");
        source = s.source();
    }
    if let Some(hint) = e.hint() {
        let _ = writeln!(err, "  hint: {hint}");
    }
    if e.is_usage() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// The version of `envpack pack --json`'s document (README, "The --json document"): it
/// changes when a field changes meaning or goes away; new fields may be added without a change.
const PACK_JSON_VERSION: u32 = 1;

/// `envpack pack --json`: one schema for an environment and for models, told apart by
/// `kind` (`environment`: the summary's fields; `models`: the repository's).
#[derive(serde::Serialize)]
struct PackJson<'a, T: serde::Serialize> {
    version: u32,
    kind: &'static str,
    #[serde(flatten)]
    report: &'a T,
}

impl<'a, T: serde::Serialize> PackJson<'a, T> {
    fn new(kind: &'static str, report: &'a T) -> Self {
        Self {
            version: PACK_JSON_VERSION,
            kind,
            report,
        }
    }
}

fn print_summary(s: &Summary, json: bool, quiet: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &PackJson::new("environment", s))?;
        writeln!(out)
    } else if s.up_to_date {
        if quiet {
            Ok(())
        } else {
            writeln!(out, "up to date: {}", s.output.display())
        }
    } else if s.dry_run {
        writeln!(
            out,
            "would write {} ({}, {})",
            s.output.display(),
            s.format,
            s.platform
        )?;
        print_packages(&mut out, s)
    } else if !quiet {
        let from = s.lock.as_ref().map_or_else(String::new, |l| {
            format!(
                ", from {}",
                l.file_name().unwrap_or_default().to_string_lossy()
            )
        });
        writeln!(
            out,
            "wrote {} ({}, {}, {}, {} relocatable{from})",
            s.output.display(),
            human(s.size),
            count(s.packages.len(), "package"),
            count(s.members, "file"),
            s.relocated_files
        )
    } else {
        Ok(())
    }
}

/// `1 file`, `2 files`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn print_packages(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "{}, {} to download at most:",
        count(s.packages.len(), "package"),
        human(s.download_size)
    )?;
    for p in &s.packages {
        writeln!(
            out,
            "  {:<24} {:<14} {:<24} {}",
            p.name, p.version, p.build, p.channel
        )?;
    }
    for l in &s.pip {
        writeln!(out, "  pip: {l}")?;
    }
    Ok(())
}

/// The models' table: model, server, environment, tarball, size, time, and what was done.
fn print_models(r: &ModelsReport, json: bool, quiet: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &PackJson::new("models", r))?;
        return writeln!(out);
    }
    if quiet && !r.dry_run {
        return Ok(());
    }
    let below = |p: &std::path::Path| {
        p.strip_prefix(&r.root)
            .map_or_else(|_| p.display().to_string(), |p| p.display().to_string())
    };
    let mut rows = vec![[
        "model".to_string(),
        "server".into(),
        "environment".into(),
        if r.dry_run { "would write" } else { "tarball" }.into(),
        "size".into(),
        "time".into(),
        String::new(),
    ]];
    for m in &r.models {
        let how = match (&m.reused_from, m.installed, r.dry_run) {
            _ if m.up_to_date => "up to date".into(),
            (Some(from), _, _) => format!("same environment as {from}"),
            (None, true, _) => "solved, installed, packed".into(),
            (None, false, true) => String::new(),
            (None, false, false) => "packed".into(),
        };
        let how = if m.config_written {
            format!(
                "{how}; {} updated",
                m.config.file_name().unwrap_or_default().to_string_lossy()
            )
        } else {
            how
        };
        rows.push([
            m.name.clone(),
            m.server.to_string(),
            below(&m.environment_file),
            below(&m.output),
            if r.dry_run { "-".into() } else { human(m.size) },
            if r.dry_run {
                "-".into()
            } else {
                format!("{:.1} s", m.seconds)
            },
            how,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 4 || c == 5 {
                let _ = write!(line, "{cell:>w$}  ", w = widths[c]);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    if r.dry_run {
        for e in &r.environments {
            writeln!(out, "\nenvironment of {}:", e.models.join(", "))?;
            print_packages(&mut out, &e.summary)?;
        }
        return Ok(());
    }
    if r.environments.iter().any(|e| e.shared) {
        for e in r.environments.iter().filter(|e| e.shared) {
            writeln!(
                out,
                "shared: {} ({}) used by {}",
                below(&e.summary.output),
                human(e.summary.size),
                e.models.join(", ")
            )?;
        }
        writeln!(
            out,
            "environments in the repository: {} (a copy per model: {})",
            human(r.size),
            human(r.copy_per_model_size)
        )?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
