//! The error of a whole run: one variant per stage, each with its own typed error, and what
//! the user can do about it. The binary renders it once, with its causes and a hint.

use crate::{
    channels, inspect, install, lock, manifest, pack, settings, solve, spec, targets, unpack,
};

/// Every error envpack reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arguments and environment variables that do not fit together.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
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
    /// The manifest of an existing output.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// Triton and MLServer models.
    #[error(transparent)]
    Target(#[from] targets::TargetError),
    /// `envpack unpack`.
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    /// `envpack inspect`.
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    /// Lock files.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The thread pool for `--threads` could not be started.
    /// A repository's environment failed: the models that use it, and its file.
    #[error("cannot pack the environment of {models} ({})", file.display())]
    Models {
        models: String,
        file: std::path::PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("cannot start the thread pool")]
    ThreadPool(#[source] rayon::ThreadPoolBuildError),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Credentials could not be loaded.
    #[error("cannot load credentials")]
    Auth(#[source] rattler_networking::authentication_storage::AuthenticationStorageError),
}

impl Error {
    /// A line telling the user what to do, where there is one.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Settings(e) => e.hint(),
            Error::Spec(e) => e.hint(),
            Error::Solve(e) => solve_hint(e),
            Error::Pack(e) => pack_hint(e),
            Error::Install(install::InstallError::PipUnavailable { .. }) => Some(
                "add `python` and `pip` to `dependencies`, and pack for the platform of this machine".into(),
            ),
            Error::Install(install::InstallError::PipUnlockable { .. }) => Some(
                "name a released version (`pkg==1.2`) or a wheel file; folders, editable installs and VCS URLs have no hash to lock".into(),
            ),
            Error::Target(t) => t.hint(),
            Error::Unpack(unpack::UnpackError::DestExists { .. }) => {
                Some("unpack into a folder that does not exist yet, or an empty one".into())
            }
            Error::Unpack(unpack::UnpackError::Relocate { .. }) => Some(
                "unpack to a shorter path, or give --dest-prefix with the shorter path the folder will be moved to".into(),
            ),
            Error::Lock(l) => l.hint(),
            Error::Inspect(i) => i.hint(),
            Error::Models { source, .. } => source.hint(),
            _ => None,
        }
    }

    /// Whether this is a usage error (exit code 2) rather than a failure (exit code 1).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Settings(e) => e.is_usage(),
            Error::Inspect(e) => e.is_usage(),
            Error::Models { source, .. } => source.is_usage(),
            Error::Channel(_)
            | Error::Solve(solve::SolveError::InvalidSetting { .. })
            | Error::Pack(
                pack::PackError::NoOutputFolder { .. }
                | pack::PackError::NotReplaceable { .. }
                | pack::PackError::UnsafeName { .. }
                | pack::PackError::NothingLeft { .. },
            )
            | Error::Unpack(unpack::UnpackError::BadPrefix(_)) => true,
            _ => false,
        }
    }
}

fn solve_hint(e: &solve::SolveError) -> Option<String> {
    match e {
        solve::SolveError::Repodata(_) => Some(
            "check the channel URLs; `--mirror NAME=URL` or ENVPACK_MIRRORS redirect a channel to a mirror or a local folder".into(),
        ),
        solve::SolveError::Unsolvable { .. } => Some(
            "relax the version constraints, add a channel, or check the target's virtual packages (`--glibc`, `--cuda`, `--platform`)".into(),
        ),
        _ => None,
    }
}

fn pack_hint(e: &pack::PackError) -> Option<String> {
    use pack::PackError as P;
    Some(match e {
        P::OutputExists { .. } => "use --force to overwrite it, or -o to choose another name".into(),
        P::NotReplaceable { .. } => "choose another output with -o".into(),
        P::UnsafeName { .. } => "name the output with -o, or give `name:` a plain file name".into(),
        P::Editable { .. } => "install those packages normally (not with `pip install -e`), or pass --ignore-editable-packages".into(),
        P::MissingFiles { .. } => "reinstall the affected packages, or pass --ignore-missing-files to pack without them".into(),
        P::Relocate { .. } => "choose a shorter --dest-prefix".into(),
        P::NonUtf8Path { .. } => "rename it, or leave it out with --exclude".into(),
        P::NothingLeft { .. } => "check the patterns: `--exclude '*'` drops everything an --include after it does not bring back".into(),
        _ => return None,
    })
}
