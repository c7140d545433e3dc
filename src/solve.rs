//! Solve: channel metadata in, the exact packages to install out.
//!
//! Second stage. Reads repodata through rattler's gateway (HTTPS with the user's credentials,
//! or `file://` channels directly), then solves with resolvo for the target platform against
//! an explicit list of virtual packages: never those of the build machine, so a build solves
//! the same everywhere.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rattler_conda_types::{
    Channel, GenericVirtualPackage, MatchSpec, PackageName, RepoDataRecord, Subdir, Version,
    package::BuildString,
};
use rattler_repodata_gateway::Gateway;
use rattler_solve::{ChannelPriority, SolverImpl, SolverTask};

use crate::channels::{ChannelError, ChannelMap, ResolvedChannel};
use crate::spec::EnvironmentSpec;

/// Errors of solving.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A channel of the environment could not be resolved.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Fetching or reading repodata failed.
    #[error("cannot read channel metadata")]
    Repodata(#[source] rattler_repodata_gateway::GatewayError),
    /// No set of packages satisfies the environment.
    #[error("the environment cannot be solved for {platform}:\n{explanation}")]
    Unsolvable {
        /// The target platform.
        platform: Subdir,
        /// The solver's explanation.
        explanation: String,
    },
    /// The solver failed for another reason.
    #[error("the solver failed")]
    Solver(#[source] rattler_solve::SolveError),
    /// A `--platform`, `--glibc`, `--cuda` or `CONDA_OVERRIDE_*` value that does not parse.
    #[error("invalid {what} `{value}`")]
    InvalidSetting {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
    },
}

/// The virtual packages the target system provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualPackageSettings {
    /// `__glibc` version (default 2.28, what conda-forge builds for).
    pub glibc: String,
    /// `__linux` version.
    pub linux: String,
    /// `__cuda` version, if the target has a GPU driver.
    pub cuda: Option<String>,
    /// `__archspec` build (the micro-architecture), default the platform's generic one.
    pub archspec: Option<String>,
}

impl Default for VirtualPackageSettings {
    fn default() -> Self {
        Self {
            glibc: "2.28".into(),
            linux: "4.18".into(),
            cuda: None,
            archspec: None,
        }
    }
}

impl VirtualPackageSettings {
    /// Defaults, overridden by conda's `CONDA_OVERRIDE_*` variables (read through `env`),
    /// overridden by explicit values.
    pub fn resolve(
        glibc: Option<String>,
        cuda: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let d = Self::default();
        let over = |k: &str| env(k).filter(|v| !v.is_empty());
        Self {
            glibc: glibc
                .or_else(|| over("CONDA_OVERRIDE_GLIBC"))
                .unwrap_or(d.glibc),
            linux: over("CONDA_OVERRIDE_LINUX").unwrap_or(d.linux),
            cuda: cuda.or_else(|| over("CONDA_OVERRIDE_CUDA")),
            archspec: over("CONDA_OVERRIDE_ARCHSPEC"),
        }
    }

    /// The virtual packages for `platform`.
    pub fn packages(&self, platform: Subdir) -> Result<Vec<GenericVirtualPackage>, SolveError> {
        let vp = |name: &str,
                  version: &str,
                  build: &str|
         -> Result<GenericVirtualPackage, SolveError> {
            Ok(GenericVirtualPackage {
                name: PackageName::new_unchecked(name),
                version: Version::from_str(version).map_err(|_| SolveError::InvalidSetting {
                    what: "virtual package version",
                    value: format!("{name}={version}"),
                })?,
                build_string: BuildString::new_unchecked(build),
            })
        };
        let mut out = Vec::new();
        if platform.is_unix() {
            out.push(vp("__unix", "0", "0")?);
        }
        if platform.is_linux() {
            out.push(vp("__linux", &self.linux, "0")?);
            out.push(vp("__glibc", &self.glibc, "0")?);
        }
        if let Some(cuda) = &self.cuda {
            out.push(vp("__cuda", cuda, "0")?);
        }
        let arch = self
            .archspec
            .clone()
            .or_else(|| platform.arch().map(|a| a.to_string()));
        if let Some(arch) = arch {
            out.push(vp("__archspec", "1", &arch)?);
        }
        Ok(out)
    }
}

/// The target platform: `--platform`, or Linux on the host's architecture.
pub fn target_platform(requested: Option<&str>) -> Result<Subdir, SolveError> {
    if let Some(p) = requested {
        return Subdir::from_str(p).map_err(|_| SolveError::InvalidSetting {
            what: "platform",
            value: p.to_string(),
        });
    }
    Ok(match std::env::consts::ARCH {
        "aarch64" => Subdir::LinuxAarch64,
        "powerpc64" => Subdir::LinuxPpc64le,
        "s390x" => Subdir::LinuxS390X,
        _ => Subdir::Linux64,
    })
}

/// Everything the solver needs, resolved.
pub struct SolveRequest<'a> {
    /// The environment file.
    pub spec: &'a EnvironmentSpec,
    /// Channel names to URLs.
    pub channels: &'a ChannelMap,
    /// Target platform.
    pub platform: Subdir,
    /// Virtual packages of the target.
    pub virtual_packages: Vec<GenericVirtualPackage>,
    /// Where repodata is cached.
    pub cache_dir: PathBuf,
    /// The HTTP client (with authentication).
    pub client: rattler_networking::LazyClient,
}

/// The solved environment.
#[derive(Debug, Clone)]
pub struct Solution {
    /// The packages, sorted by name.
    pub records: Vec<RepoDataRecord>,
    /// The channels used, in priority order, with their fetch and canonical URLs.
    pub channels: Vec<ResolvedChannel>,
}

/// Fetches repodata and solves.
#[allow(clippy::too_many_lines)]
pub async fn solve(request: SolveRequest<'_>) -> Result<Solution, SolveError> {
    let base = request.spec.base_dir();
    let mut channels: Vec<ResolvedChannel> = Vec::new();
    for c in &request.spec.channels {
        for r in request.channels.resolve(c, base)? {
            if !channels.contains(&r) {
                channels.push(r);
            }
        }
    }
    let mut specs = Vec::new();
    for dep in &request.spec.dependencies {
        let mut spec = dep.spec.clone();
        if let Some(ch) = &dep.channel {
            let r = request.channels.spec_channel(ch, base)?;
            spec.channel = Some(Arc::new(Channel::from_url(r.fetch.clone())));
            if !channels.contains(&r) {
                channels.push(r);
            }
        }
        specs.push(spec);
    }
    tracing::debug!(
        channels = ?channels.iter().map(|c| c.fetch.as_str()).collect::<Vec<_>>(),
        "querying repodata"
    );
    let gateway = Gateway::builder()
        .with_client(request.client.clone())
        .with_cache_dir(request.cache_dir.join(rattler_cache::REPODATA_CACHE_DIR))
        .with_max_concurrent_requests(16)
        .finish();
    let sources: Vec<Channel> = channels
        .iter()
        .map(|c| Channel::from_url(c.fetch.clone()))
        .collect();
    let repodata = gateway
        .query(
            sources.clone(),
            [request.platform, Subdir::NoArch],
            specs.clone(),
        )
        .recursive(true)
        .execute()
        .await
        .map_err(SolveError::Repodata)?;

    let virtual_packages = request.virtual_packages;
    let platform = request.platform;
    let task_specs = specs.clone();
    // Solving is CPU work: off the async runtime.
    let result = tokio::task::spawn_blocking(move || {
        let task = SolverTask {
            specs: task_specs,
            virtual_packages,
            channel_priority: ChannelPriority::Strict,
            ..SolverTask::from_iter(&repodata)
        };
        rattler_solve::resolvo::Solver.solve(task)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut records = match result {
        Ok(r) => r.records,
        Err(rattler_solve::SolveError::Unsolvable(lines)) => {
            let mut explanation = lines.join("\n");
            explanation.push_str(&explain(&gateway, &sources, platform, &specs).await);
            return Err(SolveError::Unsolvable {
                platform,
                explanation,
            });
        }
        Err(e) => return Err(SolveError::Solver(e)),
    };
    records.sort_by(|a, b| a.package_record.name.cmp(&b.package_record.name));
    Ok(Solution { records, channels })
}

/// What the channels hold of each requested name, to explain an unsolvable environment: a
/// name they do not hold gets the closest names they do; a name with a version asked for gets
/// the versions they have. The specs' own query returned only matching records: every
/// version of each name is queried again.
async fn explain(
    gateway: &Gateway,
    sources: &[Channel],
    platform: Subdir,
    specs: &[MatchSpec],
) -> String {
    let names: Vec<PackageName> = specs
        .iter()
        .filter_map(|s| s.name.as_exact().cloned())
        .collect();
    let mut versions: std::collections::BTreeMap<String, Vec<(Version, String)>> = names
        .iter()
        .map(|n| (n.as_normalized().to_string(), Vec::new()))
        .collect();
    let every_version = gateway
        .query(
            sources.to_vec(),
            [platform, Subdir::NoArch],
            names.iter().cloned().map(MatchSpec::from),
        )
        .execute()
        .await
        .unwrap_or_default();
    for rd in &every_version {
        for r in rd {
            if let Some(v) = versions.get_mut(r.package_record.name.as_normalized()) {
                v.push((
                    r.package_record.version.version().clone(),
                    r.package_record.version.to_string(),
                ));
            }
        }
    }
    let mut explanation = String::new();
    let missing: Vec<&String> = versions
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = gateway
            .names(sources.to_vec(), [platform, Subdir::NoArch])
            .execute()
            .await
            .map(|o| {
                o.names
                    .iter()
                    .map(|n| n.as_normalized().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for name in missing {
            explanation.push_str(&no_such_package(name, &names));
        }
    }
    for spec in specs {
        let Some(name) = spec.name.as_exact().map(PackageName::as_normalized) else {
            continue;
        };
        if let Some(found) = versions.get(name).filter(|v| !v.is_empty())
            && spec.version.is_some()
        {
            explanation.push_str(&available_versions(name, found));
        }
    }
    explanation
}

/// "no package named X" with the closest names in the channels, if any are close.
fn no_such_package(name: &str, names: &[String]) -> String {
    let mut close: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (edit_distance(name, n), n))
        .filter(|(d, n)| *d <= (name.len() / 3).max(1) && n.as_str() != name)
        .collect();
    close.sort();
    let close: Vec<String> = close
        .iter()
        .take(3)
        .map(|(_, n)| format!("`{n}`"))
        .collect();
    if close.is_empty() {
        format!("\nno package named `{name}` in the channels")
    } else {
        format!(
            "\nno package named `{name}` in the channels; did you mean {}?",
            close.join(" or ")
        )
    }
}

/// "versions of X in the channels: ..." (the newest few, newest last).
fn available_versions(name: &str, found: &[(Version, String)]) -> String {
    let mut v: Vec<&(Version, String)> = found.iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|a, b| a.1 == b.1);
    let shown: Vec<&str> = v
        .iter()
        .rev()
        .take(12)
        .rev()
        .map(|(_, s)| s.as_str())
        .collect();
    let more = if v.len() > shown.len() { "..., " } else { "" };
    format!(
        "\nversions of `{name}` in the channels for this platform: {more}{}",
        shown.join(", ")
    )
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_names_get_a_suggestion() {
        assert_eq!(edit_distance("numpyy", "numpy"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        let names = vec!["numpy".to_string(), "pandas".into(), "numba".into()];
        let m = no_such_package("numpyy", &names);
        assert!(m.contains("did you mean `numpy`?"), "{m}");
        assert!(!no_such_package("zzzzzz", &names).contains("did you mean"));
    }

    #[test]
    fn virtual_packages_are_explicit_and_overridable() {
        let none = |_: &str| None;
        let v = VirtualPackageSettings::resolve(None, None, &none);
        let names: Vec<String> = v
            .packages(Subdir::Linux64)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "__unix=0=0",
                "__linux=4.18=0",
                "__glibc=2.28=0",
                "__archspec=1=x86_64"
            ]
        );

        let env = |k: &str| match k {
            "CONDA_OVERRIDE_GLIBC" => Some("2.31".to_string()),
            "CONDA_OVERRIDE_CUDA" => Some("12.4".to_string()),
            _ => None,
        };
        let v = VirtualPackageSettings::resolve(None, None, &env);
        assert_eq!(v.glibc, "2.31");
        assert_eq!(v.cuda.as_deref(), Some("12.4"));
        // Flags win over variables.
        let v = VirtualPackageSettings::resolve(Some("2.35".into()), None, &env);
        assert_eq!(v.glibc, "2.35");
        let names: Vec<String> = v
            .packages(Subdir::LinuxAarch64)
            .unwrap()
            .iter()
            .map(|p| p.name.as_normalized().to_string())
            .collect();
        assert!(names.contains(&"__cuda".to_string()));
        let bad = VirtualPackageSettings {
            glibc: "2..28".into(),
            ..VirtualPackageSettings::default()
        };
        assert!(bad.packages(Subdir::Linux64).is_err());
    }

    #[test]
    fn platform_defaults_to_linux() {
        assert!(target_platform(None).unwrap().is_linux());
        assert_eq!(
            target_platform(Some("linux-aarch64")).unwrap(),
            Subdir::LinuxAarch64
        );
        assert!(target_platform(Some("amiga-68k")).is_err());
    }
}
