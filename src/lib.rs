//! envpack: solve an `environment.yml`, install it, and pack it into a relocatable,
//! conda-pack compatible archive for Triton's python backend and MLServer.
//!
//! The modules follow the pipeline, lower layers never importing higher ones:
//!
//! - leaf stages: `spec` (read the environment file), `channels` (names, aliases, mirrors),
//!   `report` (progress, notices, timings), `cleanup` (temporaries removed on interrupt),
//!   `paths`;
//! - engines: `solve` (repodata + resolvo), `install` (rattler's installer, then pip), `pack`
//!   (walk, relocate, archive, compress), `lock` (lock files: conda-lock, pixi, explicit);
//! - domain: `targets` (Triton and MLServer models: detection, checks, config editing),
//!   `unpack` (`envpack unpack`: safe extraction and native relocation, with pack's rewriting),
//!   `inspect` (`envpack inspect`: what an archive holds and the checks' verdicts, streamed);
//! - `settings` (arguments and environment variables, resolved once), `error` (the error of a
//!   run), `pipeline` (the engine: one environment to one archive, solved or locked), `models`
//!   (models and repositories, driving the engine), `locking` (`envpack lock`);
//! - this file: [`run`], which dispatches on what PATH is, and the [`Report`] it returns.

mod channels;
mod cleanup;
mod error;
mod inspect;
mod install;
mod lock;
mod locking;
mod manifest;
mod models;
mod pack;
mod paths;
mod pipeline;
mod report;
mod settings;
mod solve;
mod spec;
mod targets;
mod unpack;

pub use cleanup::{interrupted, remove_all as remove_temporaries};
pub use error::Error;
pub use inspect::{
    InspectError, InspectOptions, Inspection, ModelInfo, PackageInfo, PipInfo, Verdict, inspect,
};
pub use lock::Format as LockFormat;
pub use locking::{LockReport, PlatformReport, lock};
pub use models::{ModelReport, ModelsReport};
pub use pack::relocate::python_trampoline;
pub use pack::{ARCHIVE_PREFIX, Filter, Format};
pub use pipeline::{PackageSummary, Route, Summary};
pub use report::{Notice, Reporter, Severity, SharedReporter, Stage, Timings};
pub use settings::{Request, Settings, SettingsError};
pub use unpack::{Origin, UnpackError, UnpackOptions, Unpacked, Unsafe, unpack};

/// The parsers of untrusted input, for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::spec::{DEFAULT_PYTHON, read, read_any};
    pub use crate::targets::{glibc, model_settings, pbtxt};
}

use serde::Serialize;

use pipeline::Pipeline;
use settings::Input;

/// What `envpack pack` reports: one environment, or the models of a model target.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// An environment file or an existing prefix, packed into one output.
    Environment(Summary),
    /// A Triton or MLServer model, or a model repository.
    Models(ModelsReport),
}

/// Runs the whole job.
pub fn run(settings: &Settings, reporter: &SharedReporter) -> Result<Report, Error> {
    let p = Pipeline::new(settings)?;
    for n in &settings.notices {
        reporter.on_notice(n);
    }
    match &settings.input {
        Input::Prefix(prefix) => p.pack_prefix(prefix, reporter).map(Report::Environment),
        Input::EnvironmentFile(file) => p
            .pack_file(
                file,
                settings.output.clone(),
                pipeline::no_check(),
                reporter,
            )
            .map(Report::Environment),
        Input::MlServerImage(file) => {
            models::pack_mlserver_image(&p, file, reporter).map(Report::Environment)
        }
        Input::Models { root, models } => {
            models::pack_models(&p, root, models, reporter).map(Report::Models)
        }
    }
}

/// The layering above, checked: every `crate::` path in a module's code names a module of its own
/// layer or a lower one, and the modules import each other without a cycle.
/// `cargo test --lib layering -- --nocapture` prints the module graph.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};

    /// Module → layer, lowest first, as the crate documentation lists them.
    const LAYERS: &[(&str, u8)] = &[
        ("paths", 0),
        ("report", 0),
        ("cleanup", 0),
        ("spec", 1),
        ("channels", 1),
        ("manifest", 1),
        ("solve", 2),
        ("install", 2),
        ("pack", 2),
        ("lock", 2),
        ("targets", 3),
        ("unpack", 3),
        ("inspect", 3),
        ("settings", 4),
        ("error", 5),
        ("pipeline", 6),
        ("models", 7),
        ("locking", 7),
    ];

    /// Each top-level module and the modules its files name as `crate::NAME`.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, _) in LAYERS {
            let file = src.join(format!("{module}.rs"));
            let dir = src.join(module);
            let mut texts = Vec::new();
            if file.is_file() {
                texts.push(std::fs::read_to_string(&file).unwrap());
            }
            if dir.is_dir() {
                let mut stack = vec![dir];
                while let Some(d) = stack.pop() {
                    for e in std::fs::read_dir(d).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "rs") {
                            texts.push(std::fs::read_to_string(&p).unwrap());
                        }
                    }
                }
            }
            let deps = graph.entry((*module).to_string()).or_default();
            for text in texts {
                // Code only: documentation may point upwards.
                let text: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                for (i, _) in text.match_indices("crate::") {
                    let name: String = text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name != *module && LAYERS.iter().any(|(m, _)| *m == name) {
                        deps.insert(name);
                    }
                }
                // `use crate::{a, b}` groups.
                for (i, _) in text.match_indices("use crate::{") {
                    let group = &text[i + 12..i + 12 + text[i + 12..].find('}').unwrap_or(0)];
                    for name in group
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or(""))
                    {
                        if name != *module && LAYERS.iter().any(|(m, _)| *m == name) {
                            deps.insert(name.to_string());
                        }
                    }
                }
            }
        }
        graph
    }

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, l)| *l)
            .unwrap()
    }

    #[test]
    fn modules_import_only_their_own_layer_or_lower_without_cycles() {
        let graph = graph();
        for (module, deps) in &graph {
            println!(
                "{module:<9} -> {}",
                deps.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        for (module, deps) in &graph {
            for d in deps {
                assert!(
                    layer(d) <= layer(module),
                    "{module} (layer {}) imports {d} (layer {})",
                    layer(module),
                    layer(d)
                );
            }
        }
        // No cycle: repeatedly remove modules that import nothing left.
        let mut left = graph.clone();
        while !left.is_empty() {
            let free: Vec<String> = left
                .iter()
                .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
                .map(|(m, _)| m.clone())
                .collect();
            assert!(!free.is_empty(), "import cycle among {:?}", left.keys());
            for m in free {
                left.remove(&m);
            }
        }
    }
}
