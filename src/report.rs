//! Progress and diagnostics: the core reports through [`Reporter`], the binary renders.
//!
//! Every stage of the pipeline calls these hooks; the library never prints. The binary's
//! implementation draws indicatif bars. What a run
//! measured and noticed is typed here too: [`Timings`] per [`Stage`], [`Notice`]s with a
//! [`Severity`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// The stages of one pack, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Fetching channel metadata and solving.
    Solve,
    /// Reading a lock file instead of solving (and completing its records).
    Lock,
    /// Downloading and extracting packages into the package cache (bytes), and linking them.
    Install,
    /// Linking packages into the staging prefix (packages), alongside [`Stage::Install`].
    Link,
    /// Installing the `pip:` section.
    Pip,
    /// Scanning the prefix for embedded paths.
    Scan,
    /// Writing and compressing the archive.
    Pack,
    /// Extracting an archive (`envpack unpack`; bytes of the archive read).
    Extract,
    /// Rewriting the files of an unpacked environment for its new prefix (files).
    Relocate,
}

impl Stage {
    /// A short lowercase label for progress bars.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Stage::Solve => "solve",
            Stage::Lock => "lock",
            Stage::Install => "download",
            Stage::Link => "link",
            Stage::Pip => "pip",
            Stage::Scan => "scan",
            Stage::Pack => "pack",
            Stage::Extract => "extract",
            Stage::Relocate => "relocate",
        }
    }
}

/// How much a [`Notice`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing is wrong.
    Note,
    /// Probably not what the user wants; the pack goes on.
    Warning,
}

/// Something the user should know that does not stop the pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// How much it matters.
    pub severity: Severity,
    /// What to say, without a `warning:` or `note:` prefix.
    pub message: String,
}

impl Notice {
    /// A warning.
    pub fn warning(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    /// A note.
    pub fn note(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Note,
            message: message.into(),
        }
    }

    /// The same notice with `context: ` before its message.
    #[must_use]
    pub fn within(&self, context: &str) -> Self {
        Self {
            severity: self.severity,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Note => "note",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: {}", self.message)
    }
}

/// Seconds per stage; `--json` prints it as an object keyed by stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Timings(BTreeMap<Stage, f64>);

impl Timings {
    /// Adds `seconds` to `stage`.
    pub fn add(&mut self, stage: Stage, seconds: f64) {
        *self.0.entry(stage).or_default() += seconds;
    }

    /// Runs `f`, adding its duration to `stage`.
    pub fn time<R>(&mut self, stage: Stage, f: impl FnOnce() -> R) -> R {
        let t = std::time::Instant::now();
        let r = f();
        self.add(stage, t.elapsed().as_secs_f64());
        r
    }

    /// The seconds of `stage` (0 when it did not run).
    #[must_use]
    pub fn get(&self, stage: Stage) -> f64 {
        self.0.get(&stage).copied().unwrap_or_default()
    }

    /// Adds every stage of `other`.
    pub fn extend(&mut self, other: &Timings) {
        for (stage, seconds) in &other.0 {
            self.add(*stage, *seconds);
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
    fn on_notice(&self, _notice: &Notice) {}
}

/// A reporter that ignores everything, for unit tests.
#[cfg(test)]
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

#[cfg(test)]
impl Reporter for NoopReporter {}

/// A shared reporter handle, as the pipeline passes it around.
pub type SharedReporter = Arc<dyn Reporter>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_an_object_keyed_by_stage() {
        let mut t = Timings::default();
        t.add(Stage::Pack, 1.5);
        t.add(Stage::Solve, 0.25);
        t.add(Stage::Pack, 0.5);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"solve":0.25,"pack":2.0}"#
        );
        assert!((t.get(Stage::Pack) - 2.0).abs() < f64::EPSILON);
        assert!(t.get(Stage::Pip).abs() < f64::EPSILON);
    }

    #[test]
    fn notices_say_their_severity_once() {
        assert_eq!(Notice::note("fine").to_string(), "note: fine");
        assert_eq!(
            Notice::warning("odd").within("env.yml").to_string(),
            "warning: env.yml: odd"
        );
        assert_eq!(
            serde_json::to_value(Notice::note("x")).unwrap(),
            serde_json::json!({"severity": "note", "message": "x"})
        );
    }
}
