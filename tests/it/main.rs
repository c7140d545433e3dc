//! The hermetic integration tests: the real `envpack` binary against channels of small conda
//! packages built at test time (`tests/support/fixture.rs`), served from `file://` (or over
//! HTTPS from 127.0.0.1), packed, extracted and used. No network, no shared channel.
//!
//! One module per area:
//! - [`pipeline`]: an environment file packed end to end: the archive's layout, relocation
//!   records, entry points, variables, output formats.
//! - [`channels`]: channel names, aliases, relative paths, mirrors, HTTPS with credentials.
//! - [`conda_pack`]: conda-pack's own suite ported, and the conda-pack bugs envpack must not have.
//! - [`failures`]: errors the user sees, and that a failed or interrupted pack leaves nothing.
//! - [`incremental`]: the manifest, no work when nothing changed, `SOURCE_DATE_EPOCH`.
//! - [`models`]: Triton models and repositories: environment files found as the server
//!   templates lay them out, shared environments, flags refused before any work.
//! - [`determinism`]: the same bytes wherever and however packed, and a pinned digest.
//! - [`routes`]: straight from the package cache and through a staging prefix, one archive.
//! - [`lock`]: `envpack lock`, packs that install a lock (or an explicit file) without solving,
//!   stale locks, `--locked`, `--frozen`.
//! - [`safety`]: hostile packages, outputs `--force` must not replace, interrupts, full disks.
//! - [`scripts`]: the scripts every environment carries (`tests/scripts/test_scripts.py`).
//! - [`inspect`]: `envpack inspect` on a Triton and an MLServer model, `--json`'s fields, every
//!   format and a folder.
//! - [`unpack`]: `envpack unpack`: hostile archives refused, envpack's and conda-pack's
//!   archives relocated natively, manifests checked, the fuzz seed corpus replayed.

// Scenario tests read best as one story each, with short names (f = fixture, t = target).
#![allow(
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::many_single_char_names,
    clippy::missing_panics_doc
)]

#[path = "../support/mod.rs"]
mod support;

mod channels;
mod conda_pack;
mod determinism;
mod docs;
mod failures;
mod incremental;
mod inspect;
mod lock;
mod models;
mod pipeline;
mod routes;
mod safety;
mod scripts;
mod unpack;
