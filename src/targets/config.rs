//! Pointing a model's config at its packed environment.
//!
//! Triton: the top-level `parameters` entry `EXECUTION_ENV_PATH` of `config.pbtxt`, as
//! `$$TRITON_MODEL_DIRECTORY/<name>` (the variable must come first: Triton only substitutes it
//! there). MLServer: `parameters.environment_tarball` of `model-settings.json`, as `./<name>`
//! (relative to the file). Planned before any work (a config that does not parse stops the
//! run with `--write-config`), written after every tarball is in place, atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Model, Server, TargetError, model_settings, pbtxt};
use crate::paths::normalize;
use crate::report::Notice;

/// Triton's parameter.
pub const EXECUTION_ENV_PATH: &str = "EXECUTION_ENV_PATH";
/// The variable Triton replaces with the model folder.
pub const MODEL_DIR_VAR: &str = "$$TRITON_MODEL_DIRECTORY";

/// What to do with one model's config.
#[derive(Debug, Clone)]
pub struct ConfigPlan {
    /// The config file.
    pub path: PathBuf,
    /// It already points at the output.
    pub points: bool,
    /// The new text, when `--write-config` changes the file.
    pub new_text: Option<String>,
    /// Things the user should know (the fix, when the config does not point at the output).
    pub warnings: Vec<Notice>,
}

/// The value a model's config should hold for `output`: if `output` is in the model folder,
/// or, for an environment `shared` by the models of a repository, wherever it is (a path
/// relative to the model folder, with `..`).
#[must_use]
pub fn value_for(model: &Model, output: &Path, shared: bool) -> Option<String> {
    let rel = if shared {
        crate::paths::relative(&model.dir, output)
    } else {
        normalize(output)
            .strip_prefix(normalize(&model.dir))
            .ok()?
            .to_path_buf()
    };
    let rel = rel.to_str()?.to_string();
    if rel.is_empty() {
        return None;
    }
    Some(match model.server {
        Server::Triton => format!("{MODEL_DIR_VAR}/{rel}"),
        Server::MlServer if rel.starts_with("../") => rel,
        Server::MlServer => format!("./{rel}"),
    })
}

/// Where the server looks for the environment, given the config's value.
#[must_use]
pub fn resolve_value(model: &Model, value: &str) -> Option<PathBuf> {
    match model.server {
        Server::Triton => {
            if let Some(rest) = value.strip_prefix(MODEL_DIR_VAR) {
                Some(model.dir.join(rest.trim_start_matches('/')))
            } else if Path::new(value).is_absolute() {
                Some(PathBuf::from(value))
            } else {
                None
            }
        }
        Server::MlServer => Some(model.dir.join(value)),
    }
    .map(|p| normalize(&p))
}

/// Plans the config of `model` for `output`: reads it, tells whether it points at `output`,
/// and with `write` computes the edited text. `shared`: see [`value_for`].
pub fn plan(
    model: &Model,
    output: &Path,
    write: bool,
    shared: bool,
) -> Result<ConfigPlan, TargetError> {
    let path = model.config_path();
    let text = fs_err::read_to_string(&path)?;
    // Editors on Windows may start a file with a UTF-8 byte order mark: edit what follows it,
    // and keep it.
    let (bom, text) = match text.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest.to_string()),
        None => ("", text),
    };
    let file_name = output
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let value = match value_for(model, output, shared) {
        Some(v) => v,
        None if write => {
            return Err(TargetError::OutputOutsideModel {
                output: output.to_path_buf(),
                model: model.dir.clone(),
            });
        }
        None => output.display().to_string(),
    };
    let mut warnings = Vec::new();
    let current = read_current(model, &text, &path, &mut warnings);
    let current = match current {
        Ok(c) => c,
        Err(e) if write => return Err(e),
        Err(e) => {
            warnings.push(Notice::warning(format!(
                "{}: cannot tell whether it points at {file_name}: {}",
                path.display(),
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string)
            )));
            return Ok(ConfigPlan {
                path,
                points: false,
                new_text: None,
                warnings,
            });
        }
    };
    let target = normalize(output);
    let points = current
        .as_deref()
        .and_then(|v| resolve_value(model, v))
        .is_some_and(|p| p == target);
    let new_text =
        if write && current.as_deref() != Some(value.as_str()) {
            Some(match model.server {
                Server::Triton => {
                    pbtxt::set_parameter(&text, EXECUTION_ENV_PATH, &value).map_err(|source| {
                        TargetError::Pbtxt {
                            path: path.clone(),
                            source,
                        }
                    })?
                }
                Server::MlServer => model_settings::set_environment_tarball(&text, &value)
                    .map_err(|source| TargetError::ModelSettings {
                        path: path.clone(),
                        source,
                    })?,
            })
            .map(|t| format!("{bom}{t}"))
        } else {
            None
        };
    if !write && !points {
        warnings.push(Notice::warning(fix_warning(
            model,
            &path,
            &file_name,
            &value,
            current.as_deref(),
        )));
    }
    Ok(ConfigPlan {
        path,
        points,
        new_text,
        warnings,
    })
}

/// The config's current value (`EXECUTION_ENV_PATH`, `parameters.environment_tarball`), with
/// warnings about settings that make the server ignore it.
fn read_current(
    model: &Model,
    text: &str,
    path: &Path,
    warnings: &mut Vec<Notice>,
) -> Result<Option<String>, TargetError> {
    match model.server {
        Server::Triton => {
            let parsed = pbtxt::get_parameter(text, EXECUTION_ENV_PATH);
            if let Ok(Some(backend)) = pbtxt::get_field(text, "backend")
                && backend != "python"
            {
                warnings.push(Notice::warning(format!(
                    "{}: backend is `{backend}`: Triton reads EXECUTION_ENV_PATH for the python backend only",
                    model.name
                )));
            }
            parsed.map_err(|source| TargetError::Pbtxt {
                path: path.to_path_buf(),
                source,
            })
        }
        Server::MlServer => {
            let parsed = model_settings::summary(text);
            if let Ok(s) = &parsed
                && s.parallel_workers == Some(0)
            {
                warnings.push(Notice::warning(format!(
                    "{}: parallel_workers is 0: MLServer ignores environment_tarball then",
                    model.name
                )));
            }
            parsed
                .map(|s| s.environment_tarball)
                .map_err(|source| TargetError::ModelSettings {
                    path: path.to_path_buf(),
                    source,
                })
        }
    }
}

/// The warning for a config that does not point at the output, with the fix.
fn fix_warning(
    model: &Model,
    path: &Path,
    file_name: &str,
    value: &str,
    current: Option<&str>,
) -> String {
    let now = current.map_or_else(|| "is not set".to_string(), |c| format!("is `{c}`"));
    let (what, fix) = match model.server {
        Server::Triton => (
            EXECUTION_ENV_PATH,
            format!(
                "parameters: {{ key: \"{EXECUTION_ENV_PATH}\", value: {{ string_value: \"{value}\" }} }}"
            ),
        ),
        Server::MlServer => (
            "parameters.environment_tarball",
            format!("\"parameters\": {{ \"environment_tarball\": \"{value}\" }}"),
        ),
    };
    format!(
        "{} does not point at {file_name} ({what} {now}), so the server will not use it: pack again with --write-config, or add\n    {fix}",
        path.display()
    )
}

/// Writes every plan's new text, all or none: each new config is written in full to a
/// temporary file beside the file it replaces before any is put in place, so a failure leaves
/// every config as it was. A symlinked config is edited where it points (the link stays).
/// Returns, per plan, whether it wrote.
pub fn apply_all(plans: &[&ConfigPlan]) -> Result<Vec<bool>, TargetError> {
    let io = TargetError::io;
    let mut staged = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let Some(text) = &plan.new_text else {
            continue;
        };
        let target = fs_err::canonicalize(&plan.path)?;
        let dir = target.parent().unwrap_or(Path::new("."));
        let permissions = fs_err::metadata(&target)?.permissions();
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        tmp.write_all(text.as_bytes()).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        fs_err::set_permissions(tmp.path(), permissions)?;
        staged.push((i, tmp, target));
    }
    let mut written = vec![false; plans.len()];
    for (i, tmp, target) in staged {
        tmp.persist(&target)
            .map_err(|e| crate::paths::at("failed to replace", &target)(e.error))?;
        written[i] = true;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(plan: &ConfigPlan) -> Result<bool, TargetError> {
        Ok(apply_all(&[plan])?[0])
    }

    fn model(dir: &Path, server: Server, config: &str) -> Model {
        fs_err::create_dir_all(dir).unwrap();
        fs_err::write(dir.join(server.config_file()), config).unwrap();
        Model {
            server,
            dir: dir.to_path_buf(),
            name: "m".into(),
        }
    }

    const TRITON: &str = "name: \"m\" # the model\nbackend: \"python\"\n";

    #[test]
    fn triton_config_gets_the_model_directory_variable_first() {
        let t = tempfile::tempdir().unwrap();
        let m = model(&t.path().join("m"), Server::Triton, TRITON);
        let out = m.dir.join("model-conda.tar.gz");
        let plan = plan(&m, &out, true, false).unwrap();
        assert!(
            plan.new_text
                .as_deref()
                .is_some_and(|t| t.contains("\"$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz\"")),
            "{:?}",
            plan.new_text
        );
        assert!(!plan.points);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert!(apply(&plan).unwrap());
        let text = fs_err::read_to_string(m.config_path()).unwrap();
        assert!(text.starts_with(TRITON), "{text}");
        assert_eq!(
            pbtxt::get_parameter(&text, EXECUTION_ENV_PATH)
                .unwrap()
                .as_deref(),
            Some("$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz")
        );
        // Now it points: nothing to write, no warning.
        let again = super::plan(&m, &out, true, false).unwrap();
        assert!(again.points && again.new_text.is_none());
        assert!(!apply(&again).unwrap());
        assert!(
            super::plan(&m, &out, false, false)
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn a_config_that_does_not_point_at_the_output_gets_a_warning_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let m = model(
            &t.path().join("m"),
            Server::Triton,
            "parameters { key: \"EXECUTION_ENV_PATH\" value { string_value: \"$$TRITON_MODEL_DIRECTORY/old.tar.gz\" } }\n",
        );
        let p = plan(&m, &m.dir.join("model-conda.tar.gz"), false, false).unwrap();
        assert!(!p.points && p.new_text.is_none());
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].message.contains("--write-config"),
            "{:?}",
            p.warnings
        );
        assert!(
            p.warnings[0]
                .message
                .contains("string_value: \"$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz\""),
            "{:?}",
            p.warnings
        );
        // An absolute path to the same file points too.
        let abs = format!(
            "parameters {{ key: \"EXECUTION_ENV_PATH\" value {{ string_value: \"{}/./model-conda.tar.gz\" }} }}\n",
            m.dir.display()
        );
        fs_err::write(m.config_path(), abs).unwrap();
        assert!(
            plan(&m, &m.dir.join("model-conda.tar.gz"), false, false)
                .unwrap()
                .points
        );
    }

    #[test]
    fn mlserver_settings_get_a_relative_path() {
        let t = tempfile::tempdir().unwrap();
        let m = model(
            &t.path().join("m"),
            Server::MlServer,
            "{\n  \"name\": \"m\",\n  \"implementation\": \"model.M\"\n}\n",
        );
        let out = m.dir.join("environment.tar.gz");
        let p = plan(&m, &out, false, false).unwrap();
        assert!(
            p.warnings[0]
                .message
                .contains("\"environment_tarball\": \"./environment.tar.gz\"")
        );
        let p = plan(&m, &out, true, false).unwrap();
        apply(&p).unwrap();
        let text = fs_err::read_to_string(m.config_path()).unwrap();
        assert_eq!(
            model_settings::environment_tarball(&text)
                .unwrap()
                .as_deref(),
            Some("./environment.tar.gz")
        );
        assert!(text.starts_with("{\n  \"name\": \"m\",\n  \"implementation\": \"model.M\","));
        assert!(plan(&m, &out, false, false).unwrap().points);
    }

    #[test]
    fn unparsable_configs_stop_write_config_and_name_the_line() {
        let t = tempfile::tempdir().unwrap();
        let m = model(
            &t.path().join("m"),
            Server::Triton,
            "name: \"m\"\nparameters {\n",
        );
        let out = m.dir.join("model-conda.tar.gz");
        let e = plan(&m, &out, true, false).unwrap_err();
        assert!(matches!(e, TargetError::Pbtxt { .. }));
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("line "), "{source}");
        // Without --write-config it is only a warning.
        let p = plan(&m, &out, false, false).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn write_config_needs_the_output_in_the_model_folder() {
        let t = tempfile::tempdir().unwrap();
        let m = model(&t.path().join("m"), Server::Triton, TRITON);
        assert!(matches!(
            plan(&m, &t.path().join("elsewhere.tar.gz"), true, false),
            Err(TargetError::OutputOutsideModel { .. })
        ));
        assert_eq!(
            value_for(&m, &m.dir.join("sub/../env.tar"), false).as_deref(),
            Some("$$TRITON_MODEL_DIRECTORY/env.tar")
        );
    }

    #[test]
    fn shared_environments_are_reached_with_dot_dot() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("repo");
        let tri = model(&root.join("a"), Server::Triton, TRITON);
        let mls = model(&root.join("group/b"), Server::MlServer, "{\"name\": \"b\"}");
        let shared = root.join("env-1234abcd.tar.gz");
        assert_eq!(
            value_for(&tri, &shared, true).as_deref(),
            Some("$$TRITON_MODEL_DIRECTORY/../env-1234abcd.tar.gz")
        );
        assert_eq!(
            value_for(&mls, &shared, true).as_deref(),
            Some("../../env-1234abcd.tar.gz")
        );
        let p = plan(&tri, &shared, true, true).unwrap();
        assert!(
            p.new_text
                .as_deref()
                .is_some_and(|t| t.contains("$$TRITON_MODEL_DIRECTORY/../env-1234abcd.tar.gz")),
            "{:?}",
            p.new_text
        );
        assert!(apply(&p).unwrap());
        // The server resolves it to the shared file.
        let again = plan(&tri, &shared, false, true).unwrap();
        assert!(again.points, "{:?}", again.warnings);
    }

    #[test]
    fn a_symlinked_config_is_edited_where_it_points() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("configs/m.pbtxt");
        fs_err::create_dir_all(shared.parent().unwrap()).unwrap();
        fs_err::write(&shared, TRITON).unwrap();
        let dir = t.path().join("m");
        fs_err::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("../configs/m.pbtxt", dir.join("config.pbtxt")).unwrap();
        let m = Model {
            server: Server::Triton,
            dir: dir.clone(),
            name: "m".into(),
        };
        let p = plan(&m, &dir.join("model-conda.tar.gz"), true, false).unwrap();
        assert!(apply(&p).unwrap());
        let link = fs_err::symlink_metadata(dir.join("config.pbtxt")).unwrap();
        assert!(link.file_type().is_symlink(), "the link stays a link");
        let text = fs_err::read_to_string(&shared).unwrap();
        assert!(text.contains(EXECUTION_ENV_PATH), "{text}");
    }

    #[test]
    fn configs_are_written_all_or_none() {
        let t = tempfile::tempdir().unwrap();
        let a = model(&t.path().join("a"), Server::Triton, TRITON);
        let b = model(&t.path().join("b"), Server::Triton, TRITON);
        let pa = plan(&a, &a.dir.join("model-conda.tar.gz"), true, false).unwrap();
        let pb = plan(&b, &b.dir.join("model-conda.tar.gz"), true, false).unwrap();
        // b's config goes away between the plan and the write: a is not written either.
        fs_err::remove_file(b.config_path()).unwrap();
        assert!(apply_all(&[&pa, &pb]).is_err());
        assert_eq!(fs_err::read_to_string(a.config_path()).unwrap(), TRITON);
        let left: Vec<_> = fs_err::read_dir(&a.dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary left: {left:?}");
    }

    #[test]
    fn a_byte_order_mark_is_kept_and_what_follows_it_edited() {
        let t = tempfile::tempdir().unwrap();
        let text = "\u{feff}{\"name\": \"m\", \"implementation\": \"model.M\"}\n";
        let m = model(&t.path().join("m"), Server::MlServer, text);
        let p = plan(&m, &m.dir.join("environment.tar.gz"), true, false).unwrap();
        assert!(apply(&p).unwrap());
        let written = fs_err::read_to_string(m.config_path()).unwrap();
        assert!(written.starts_with('\u{feff}'), "{written:?}");
        assert_eq!(
            model_settings::environment_tarball(&written[3..])
                .unwrap()
                .as_deref(),
            Some("./environment.tar.gz")
        );
        // Read again, it points at the output: nothing more to write.
        let again = plan(&m, &m.dir.join("environment.tar.gz"), true, false).unwrap();
        assert!(again.points && again.new_text.is_none(), "{again:?}");
    }
}
