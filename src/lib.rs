//! envpack: solve an `environment.yml`, install it, and pack it into a relocatable,
//! conda-pack compatible archive for Triton's python backend and MLServer.
//!
//! The pipeline, one module per stage:
//! [`spec`] (read the environment file) → [`solve`] (repodata + resolvo, with [`channels`]) →
//! [`install`] (rattler's installer, then pip) → [`pack`] (walk, relocate, archive,
//! compress) → [`targets`] (Triton and MLServer models). [`settings`] resolves arguments and
//! environment variables once; [`pipeline`] runs the stages; [`report`] is how they talk.

pub mod channels;
pub mod cleanup;
pub mod install;
pub mod pack;
pub mod pipeline;
pub mod report;
pub mod settings;
pub mod solve;
pub mod spec;
pub mod targets;

pub use pipeline::{Report, Summary, run};
pub use settings::Settings;

use std::path::PathBuf;

/// Every error envpack reports, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment file.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Channel names, aliases and mirrors.
    #[error(transparent)]
    Channel(#[from] channels::ChannelError),
    /// Solving.
    #[error(transparent)]
    Solve(#[from] solve::SolveError),
    /// Installing.
    #[error(transparent)]
    Install(#[from] install::InstallError),
    /// Packing.
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    /// Triton and MLServer models.
    #[error(transparent)]
    Target(#[from] targets::TargetError),
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// Credentials could not be loaded.
    #[error("cannot load credentials")]
    Auth(#[source] rattler_networking::authentication_storage::AuthenticationStorageError),
    /// An I/O error on a path outside the stages.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A line telling the user what to do, where there is one.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        use pack::PackError as P;
        match self {
            Error::Spec(spec::SpecError::NotFound { .. }) => Some(
                "pass the environment file itself, e.g. `envpack pack path/to/env.yml`, or `--prefix` for an existing environment".into(),
            ),
            Error::Solve(solve::SolveError::Repodata(_)) => Some(
                "check the channel URLs; `--mirror NAME=URL` or ENVPACK_MIRRORS redirect a channel to a mirror or a local folder".into(),
            ),
            Error::Solve(solve::SolveError::Unsolvable { .. }) => Some(
                "relax the version constraints, add a channel, or check the target's virtual packages (`--glibc`, `--cuda`, `--platform`)".into(),
            ),
            Error::Pack(P::OutputExists { .. }) => Some("use --force to overwrite it, or -o to choose another name".into()),
            Error::Pack(P::Editable { .. }) => Some(
                "install those packages normally (not with `pip install -e`), or pass --ignore-editable-packages".into(),
            ),
            Error::Pack(P::MissingFiles { .. }) => Some(
                "reinstall the affected packages, or pass --ignore-missing-files to pack without them".into(),
            ),
            Error::Pack(P::Relocate { .. }) => Some("choose a shorter --dest-prefix".into()),
            Error::Install(install::InstallError::PipUnavailable { .. }) => Some(
                "add `python` and `pip` to `dependencies`, and pack for the platform of this machine".into(),
            ),
            Error::Target(t) => t.hint(),
            _ => None,
        }
    }

    /// Whether this is a usage error (exit code 2) rather than a failure (exit code 1).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::Channel(_))
    }
}
