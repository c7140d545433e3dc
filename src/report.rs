//! Progress and diagnostics: the core reports through [`Reporter`], the binary renders.
//!
//! Every stage of the pipeline calls these hooks; the library never prints. The binary's
//! implementation draws indicatif bars, tests use [`NoopReporter`] or a recorder.

use std::sync::Arc;

/// The stages of one pack, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetching channel metadata and solving.
    Solve,
    /// Downloading and extracting packages into the package cache (bytes).
    Install,
    /// Linking packages into the staging prefix (packages), alongside [`Stage::Install`].
    Link,
    /// Installing the `pip:` section.
    Pip,
    /// Scanning the prefix for embedded paths.
    Scan,
    /// Writing and compressing the archive.
    Pack,
}

impl Stage {
    /// A short lowercase label for logs and progress bars.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Stage::Solve => "solve",
            Stage::Install => "download",
            Stage::Link => "link",
            Stage::Pip => "pip",
            Stage::Scan => "scan",
            Stage::Pack => "pack",
        }
    }
}

/// Receives progress from the pipeline. All methods have empty defaults.
pub trait Reporter: Send + Sync {
    /// A stage starts. `total` is its amount of work when known (packages, bytes).
    fn on_stage_start(&self, _stage: Stage, _total: Option<u64>) {}
    /// Work of the current stage advanced by `delta` units.
    fn on_progress(&self, _stage: Stage, _delta: u64) {}
    /// The total of a stage became known or changed.
    fn on_total(&self, _stage: Stage, _total: u64) {}
    /// A stage ended.
    fn on_stage_end(&self, _stage: Stage) {}
    /// Something the user should know that does not stop the pack.
    fn on_warning(&self, _message: &str) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

impl Reporter for NoopReporter {}

/// A shared reporter handle, as the pipeline passes it around.
pub type SharedReporter = Arc<dyn Reporter>;
