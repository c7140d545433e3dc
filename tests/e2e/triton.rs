//! A Triton model packed by `envpack pack MODEL_DIR --write-config`, served by the real Triton
//! (python backend, `EXECUTION_ENV_PATH`): the tarball, and the folder form Triton uses in
//! place. The model returns `sys.prefix` and the libpython it mapped, to prove that it ran
//! from our environment and not from some other Python.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::{Value, json};

use crate::servers::{self, ServersDir, Triton};
use crate::support::{ensure, envpack, run_ok};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "triton::tarball_from_write_config_runs_in_triton_extraction",
            needs: &[Needs::Channel, Needs::Servers],
            run: tarball_from_write_config_runs_in_triton_extraction,
        },
        Case {
            name: "triton::template_layout_packs_from_the_project_root_and_serves",
            needs: &[Needs::Channel, Needs::Servers],
            run: template_layout_packs_from_the_project_root_and_serves,
        },
        Case {
            name: "triton::folder_form_runs_in_place",
            needs: &[Needs::Channel, Needs::Servers],
            run: folder_form_runs_in_place,
        },
    ]
}

/// The environment of the Triton test models: the stub here is built for Python 3.11, and
/// Triton 24.10 needs numpy<2.
pub const TRITON_ENV: &str =
    "name: triton-model\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy<2\n";

const MODEL_PY: &str = r#"
import json, sys
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        libpython = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libpython" in l})
        info = json.dumps({"prefix": sys.prefix, "executable": sys.executable,
                           "libpython": libpython, "numpy": np.__version__})
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
            out1 = pb_utils.Tensor("INFO", np.array([info.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses
"#;

/// A config without `EXECUTION_ENV_PATH`, with comments and a nested `parameters` map that
/// `--write-config` must keep as they are.
fn config(name: &str) -> String {
    format!(
        r#"# {name}: doubles its input
name: "{name}"
backend: "python"  # the python backend: it reads the packed environment
max_batch_size: 0
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [
  {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] }},
  {{ name: "INFO", data_type: TYPE_STRING, dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"#
    )
}

/// Writes the model `name` (config, `1/model.py`) into `repo`; returns its folder.
pub fn write_model(repo: &Path, name: &str) -> PathBuf {
    let m = repo.join(name);
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::fs::write(m.join("config.pbtxt"), config(name)).unwrap();
    std::fs::write(m.join("1/model.py"), MODEL_PY).unwrap();
    m
}

/// Sends [1, 2, 3, 4.5], checks the doubled output, returns the model's INFO.
pub fn infer_info(triton: &Triton, model: &str) -> Result<Value, Failed> {
    let req = servers::v2_request("INPUT0", "FP32", &[4], json!([1.0, 2.0, 3.0, 4.5]));
    let resp = triton.infer(model, &req)?;
    let out = servers::v2_output_f64(&resp, "OUTPUT0")?;
    ensure(
        out == [2.0, 4.0, 6.0, 9.0],
        format!("{model}: OUTPUT0 is {out:?}"),
    )?;
    let info = servers::v2_output_strings(&resp, "INFO")?;
    Ok(serde_json::from_str(&info[0])?)
}

/// Checks that the model ran from `env`: `sys.prefix` and the one mapped libpython.
pub fn ran_from(info: &Value, env: &Path) -> Result<(), Failed> {
    let prefix = info["prefix"].as_str().unwrap_or_default();
    ensure(
        Path::new(prefix) == env,
        format!("sys.prefix is {prefix}, not {}", env.display()),
    )?;
    let libpython: Vec<&str> = info["libpython"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure(
        libpython == [format!("{prefix}/lib/libpython3.11.so.1.0")],
        format!("libpython mapped from {libpython:?}"),
    )?;
    ensure(
        info["numpy"].as_str().is_some_and(|v| v.starts_with("1.")),
        format!("numpy {}", info["numpy"]),
    )
}

/// `envpack pack MODEL --write-config` with the test channel, a work folder that must be
/// empty afterwards (the staging prefix is gone when Triton runs), and `extra` arguments.
pub fn pack_model(model: &Path, work: &Path, extra: &[&str]) -> Result<Value, Failed> {
    let t = Instant::now();
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(model)
            .args(["--write-config", "--json", "-q", "--mirror", &mirror_arg()])
            .arg("--work-dir")
            .arg(work)
            .args(extra),
    );
    eprintln!(
        "{}: packed in {:.1} s",
        model.display(),
        t.elapsed().as_secs_f64()
    );
    let left: Vec<_> = std::fs::read_dir(work)?.collect();
    ensure(
        left.is_empty(),
        format!("staging left in {}", work.display()),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn start(servers: &ServersDir, repo: &Path, log: &Path, model: &str) -> Result<Triton, Failed> {
    let triton = Triton::start(servers, repo, log)?;
    let ready = triton.wait_model_ready(model, Duration::from_mins(3))?;
    eprintln!("triton ready in {:.1} s", ready.as_secs_f64());
    ensure(
        triton.version()? == servers::TRITON_VERSION,
        "another Triton",
    )?;
    Ok(triton)
}

fn stop_and_check_cleanup(triton: Triton) -> Result<(), Failed> {
    let dirs = triton.extraction_dirs();
    let shm = triton.shm_regions();
    triton.stop()?;
    for p in dirs.iter().chain(&shm) {
        ensure(!p.exists(), format!("{} left behind", p.display()))?;
    }
    Ok(())
}

fn tarball_from_write_config_runs_in_triton_extraction() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    let model = write_model(&repo, "double");
    std::fs::write(model.join("environment.yml"), TRITON_ENV)?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let report = pack_model(&model, &work, &[])?;
    ensure(
        report["environments"][0]["route"] == json!("package-cache"),
        format!("packed by {}", report["environments"][0]["route"]),
    )?;
    let m = &report["models"][0];
    ensure(
        m["output"] == json!(model.canonicalize()?.join("model-conda.tar.gz")),
        format!("output {}", m["output"]),
    )?;
    ensure(m["config_written"] == json!(true), format!("report {m}"))?;
    let text = std::fs::read_to_string(model.join("config.pbtxt"))?;
    ensure(
        text.starts_with(&config("double"))
            && text.contains("$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz")
            && text.matches("EXECUTION_ENV_PATH").count() == 1,
        format!("config.pbtxt after --write-config:\n{text}"),
    )?;

    let triton = start(&servers, &repo, &dir.path().join("triton.log"), "double")?;
    let info = infer_info(&triton, "double")?;
    let prefix = PathBuf::from(info["prefix"].as_str().unwrap_or_default());
    ensure(
        prefix
            .to_string_lossy()
            .starts_with(servers::TRITON_EXTRACT_PREFIX),
        format!(
            "the model ran from {}, not Triton's extraction",
            prefix.display()
        ),
    )?;
    let dirs = triton.extraction_dirs();
    ensure(
        dirs.len() == 1 && prefix.starts_with(&dirs[0]),
        format!("extractions {dirs:?}, prefix {}", prefix.display()),
    )?;
    ran_from(&info, &prefix)?;
    stop_and_check_cleanup(triton)
}

fn folder_form_runs_in_place() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("models");
    let model = write_model(&repo, "double_dir");
    // The environment file is found in the repository root.
    std::fs::write(repo.join("environment.yml"), TRITON_ENV)?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let report = pack_model(&model, &work, &["--format", "dir"])?;
    ensure(
        report["environments"][0]["route"] == json!("package-cache"),
        format!("packed by {}", report["environments"][0]["route"]),
    )?;
    let env = model.canonicalize()?.join("model-conda");
    ensure(
        report["models"][0]["output"] == json!(env)
            && report["models"][0]["environment_file"]
                == json!(repo.canonicalize()?.join("environment.yml")),
        format!("report {report}"),
    )?;
    ensure(env.join("bin/activate").is_file(), "no bin/activate")?;
    let text = std::fs::read_to_string(model.join("config.pbtxt"))?;
    ensure(
        text.contains("string_value: \"$$TRITON_MODEL_DIRECTORY/model-conda\""),
        format!("config.pbtxt:\n{text}"),
    )?;

    let triton = start(
        &servers,
        &repo,
        &dir.path().join("triton.log"),
        "double_dir",
    )?;
    let info = infer_info(&triton, "double_dir")?;
    // A folder is used in place: the model runs from it, not from a copy.
    ran_from(&info, &env)?;
    stop_and_check_cleanup(triton)
}

/// The Triton template's layout: `src/environment.yml` beside `src/models/modelA`, packed with
/// the command users run from the project root, then served.
fn template_layout_packs_from_the_project_root_and_serves() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let models = project.join("src/models");
    write_model(&models, "modelA");
    std::fs::create_dir_all(project.join(".git"))?;
    std::fs::write(project.join("src/environment.yml"), TRITON_ENV)?;
    let out = run_ok(
        envpack()
            .current_dir(&project)
            .args(["pack", "src/models/modelA", "--write-config", "-q"])
            .args(["--mirror", &mirror_arg()]),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    ensure(
        said.contains("modelA uses") && said.contains("src/environment.yml"),
        format!("stderr: {said}"),
    )?;
    ensure(
        models.join("modelA/model-conda.tar.gz").is_file(),
        "no model-conda.tar.gz",
    )?;
    let triton = start(&servers, &models, &dir.path().join("triton.log"), "modelA")?;
    infer_info(&triton, "modelA")?;
    stop_and_check_cleanup(triton)
}
