//! The scripts every packed environment carries (`src/pack/scripts/`: conda-unpack, the
//! Python startup hook, activate and deactivate under bash, dash and zsh), tested by their
//! own driver `tests/scripts/test_scripts.py` (Python, stdlib only), run here so that
//! `cargo test` and CI run it.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

/// Whether this is CI: `CI=true` (as `.ci/run` and CI services set), or the older
/// `ENVPACK_E2E_REQUIRE=1`. There, a check that cannot run (a missing tool) is a failure.
fn in_ci() -> bool {
    let set = |k: &str, off: &[&str]| {
        std::env::var(k).is_ok_and(|v| !v.is_empty() && !off.contains(&v.to_lowercase().as_str()))
    };
    set("CI", &["0", "false", "no"]) || set("ENVPACK_E2E_REQUIRE", &["0"])
}

#[test]
fn script_test_driver_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = root.join("tests/scripts/test_scripts.py");
    let scripts = root.join("src/pack/scripts");
    let mut cmd = Command::new("python3");
    cmd.arg(&driver).arg("--scripts").arg(&scripts);
    if in_ci() {
        cmd.env("CI", "true");
    }
    let out = cmd.output().expect("python3 starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        driver.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "{stdout}"
    );
    let skipped: Vec<&str> = stdout.lines().filter(|l| l.starts_with("SKIP ")).collect();
    // In CI every tool is installed (`.ci/run`): nothing may be skipped there.
    assert!(
        !in_ci() || (skipped.is_empty() && !stdout.contains(" skipped")),
        "skipped in CI:\n{stdout}"
    );
    if !skipped.is_empty() {
        // A test that passes cannot say it skipped something, and what it prints is
        // captured: so the skipped checks go straight to stderr, which is never captured.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "scripts::script_test_driver_passes: {} check(s) SKIPPED, not passed \
             (CI=true makes this a failure):",
            skipped.len()
        );
        for line in &skipped {
            let _ = writeln!(err, "    {line}");
        }
    }
}
