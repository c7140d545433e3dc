//! The binary's reporter: indicatif bars on stderr, hidden when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use envpack::{Notice, Reporter, Stage};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws one bar per stage.
pub struct Bars {
    multi: MultiProgress,
    /// The bars of the stages under way (downloads and linking run at once).
    current: Mutex<Vec<(Stage, ProgressBar)>>,
}

impl Bars {
    /// Bars are drawn when `show` and stderr is a terminal.
    pub fn new(show: bool) -> Self {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            current: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with the bars out of the way, so log lines don't tear them.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    /// Runs `f` on the bar of `stage`, if that stage is under way.
    fn with_bar(&self, stage: Stage, f: impl FnOnce(&ProgressBar)) {
        if let Some((_, bar)) = self
            .current
            .lock()
            .expect("bars")
            .iter()
            .find(|(s, _)| *s == stage)
        {
            f(bar);
        }
    }

    fn style(stage: Stage) -> ProgressStyle {
        let template = match stage {
            Stage::Solve | Stage::Lock | Stage::Pip => "{spinner} {prefix:>8} {elapsed}",
            Stage::Scan | Stage::Relocate => "{spinner} {prefix:>8} [{bar:30}] {pos}/{len} files",
            Stage::Link => "{spinner} {prefix:>8} [{bar:30}] {pos}/{len} packages",
            Stage::Install | Stage::Pack | Stage::Extract => {
                "{spinner} {prefix:>8} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}"
            }
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }
}

impl Reporter for Bars {
    fn on_stage_start(&self, stage: Stage, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let bar = self.multi.add(bar);
        bar.set_style(Self::style(stage));
        bar.set_prefix(stage.label());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        self.current.lock().expect("bars").push((stage, bar));
    }

    fn on_progress(&self, stage: Stage, delta: u64) {
        self.with_bar(stage, |bar| bar.inc(delta));
    }

    fn on_total(&self, stage: Stage, total: u64) {
        self.with_bar(stage, |bar| bar.set_length(total));
    }

    fn on_stage_end(&self, stage: Stage) {
        let mut current = self.current.lock().expect("bars");
        if let Some(i) = current.iter().position(|(s, _)| *s == stage) {
            let (_, bar) = current.remove(i);
            bar.finish_and_clear();
        }
    }

    fn on_notice(&self, notice: &Notice) {
        // Even with -q: a warning is what the user must not miss.
        self.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{notice}");
        });
    }
}
