//! End-to-end tests: real conda packages (`ENVPACK_TEST_CHANNEL`, the shared channel), real
//! servers (`ENVPACK_E2E_SERVERS`, installed by `.ci/install-servers`).
//!
//! Each trial names its prerequisites. A trial whose prerequisites are missing is reported
//! as ignored, with the reason printed once at the start, so a plain `cargo test` on a
//! fresh clone passes and says what it skipped. With `ENVPACK_E2E_REQUIRE=1` (as in
//! `.ci/run`), a missing prerequisite fails the trial instead.

#[path = "../support/mod.rs"]
mod support;

mod docs;
mod lock;
mod mlserver;
mod pack;
mod parity;
mod pip;
mod repository;
mod servers;
mod triton;

use std::collections::BTreeMap;
use std::path::PathBuf;

use libtest_mimic::{Arguments, Failed, Trial};

/// What a trial needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// The shared conda channel.
    Channel,
    /// The installed servers and wheelhouse.
    Servers,
}

/// The shared conda channel: `ENVPACK_TEST_CHANNEL`, or `../shared/conda-channel` next to the
/// repository for a developer's convenience.
pub fn test_channel() -> Result<PathBuf, String> {
    let from_env = std::env::var_os("ENVPACK_TEST_CHANNEL").map(PathBuf::from);
    let candidate = from_env.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conda-channel")
    });
    if candidate.join("noarch/repodata.json").is_file()
        && candidate.join("linux-64/repodata.json").is_file()
    {
        Ok(candidate.canonicalize().map_err(|e| e.to_string())?)
    } else if from_env.is_some() {
        Err(format!(
            "ENVPACK_TEST_CHANNEL={} holds no conda channel (linux-64 and noarch repodata.json)",
            candidate.display()
        ))
    } else {
        Err("the shared conda channel was not found: set ENVPACK_TEST_CHANNEL (../shared/conda-channel)".into())
    }
}

/// The `--mirror` argument that makes conda-forge the shared channel.
#[must_use]
pub fn mirror_arg() -> String {
    format!(
        "conda-forge=file://{}",
        test_channel().expect("checked").display()
    )
}

fn check(needs: Needs) -> Result<(), String> {
    match needs {
        Needs::Channel => test_channel().map(|_| ()),
        Needs::Servers => servers::ServersDir::from_env().map(|_| ()),
    }
}

/// A trial: name, prerequisites, body.
pub struct Case {
    pub name: &'static str,
    pub needs: &'static [Needs],
    pub run: fn() -> Result<(), Failed>,
}

fn main() {
    let args = Arguments::from_args();
    let required = std::env::var("ENVPACK_E2E_REQUIRE").is_ok_and(|v| !v.is_empty() && v != "0");
    let cases: Vec<Case> = [
        docs::cases(),
        lock::cases(),
        pack::cases(),
        parity::cases(),
        pip::cases(),
        triton::cases(),
        mlserver::cases(),
        repository::cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut missing: BTreeMap<Needs, String> = BTreeMap::new();
    let mut skipped = 0;
    let trials: Vec<Trial> = cases
        .into_iter()
        .map(|c| {
            let absent: Vec<String> = c
                .needs
                .iter()
                .filter_map(|n| {
                    check(*n).err().inspect(|e| {
                        missing.insert(*n, e.clone());
                    })
                })
                .collect();
            if absent.is_empty() {
                Trial::test(c.name, c.run)
            } else if required {
                let why = absent.join("; ");
                Trial::test(c.name, move || {
                    Err(format!("prerequisite missing: {why}").into())
                })
            } else {
                skipped += 1;
                Trial::test(c.name, || Ok(())).with_ignored_flag(true)
            }
        })
        .collect();
    if skipped > 0 {
        eprintln!(
            "skipping {skipped} end-to-end tests (ENVPACK_E2E_REQUIRE=1 makes this an error):"
        );
        for why in missing.values() {
            eprintln!("  - {why}");
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
