//! MLServer 1.7.1 with environments packed by envpack, `mlserver` installed through the
//! environment file's `pip:` section (offline, from the servers' wheelhouse): the per-model
//! flow (`envpack pack MODEL_DIR --write-config` sets `environment_tarball`) and the
//! image-level flow (`envpack pack --mlserver`, then what the image does). The model returns
//! its interpreter and where `mlserver` was imported from: the host's MLServer would answer
//! too if the environment were not used.

use std::path::Path;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::{Value, json};

use crate::servers::{self, MlServer, ServersDir};
use crate::support::{ensure, envpack, run_ok, sha256_file};
use crate::{Case, Needs, mirror_arg};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "mlserver::per_model_tarball_runs_the_environments_python_and_mlserver",
            needs: &[Needs::Channel, Needs::Servers],
            run: per_model_tarball_runs_the_environments_python_and_mlserver,
        },
        Case {
            name: "mlserver::image_level_tarball_runs_mlserver_from_the_environment",
            needs: &[Needs::Channel, Needs::Servers],
            run: image_level_tarball_runs_mlserver_from_the_environment,
        },
        Case {
            name: "mlserver::two_models_share_one_tarball_at_the_repository_root",
            needs: &[Needs::Channel, Needs::Servers],
            run: two_models_share_one_tarball_at_the_repository_root,
        },
    ]
}

/// An environment with `mlserver` from the wheelhouse. numpy comes from conda, and must satisfy
/// what the wheels ask for (pandas 3 needs numpy>=2.0.2): otherwise pip replaces conda's numpy
/// and the pack stops at the conda files pip removed.
pub fn environment(servers: &ServersDir) -> String {
    format!(
        "name: mlserver-model\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy>=2\n  - pip\n  - pip:\n    - --no-index\n    - --find-links {}\n    - mlserver=={}\n    - uvloop<0.22\n",
        servers.wheels().display(),
        servers::MLSERVER_VERSION
    )
}

const MODEL_PY: &str = r#"
import json, sys
import mlserver
import numpy
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

class EnvInfo(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        libpython = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libpython" in l})
        info = json.dumps({"executable": sys.executable, "prefix": sys.prefix,
                           "mlserver": mlserver.__file__, "numpy": numpy.__file__,
                           "libpython": libpython})
        total = sum(float(x) for x in payload.inputs[0].data)
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="info", shape=[1], datatype="BYTES", data=[info]),
            ResponseOutput(name="sum", shape=[1], datatype="FP64", data=[total])])
"#;

/// Writes the model `name` (`model.py`, `model-settings.json` without a tarball) into `models`.
pub fn write_model(models: &Path, name: &str) -> std::path::PathBuf {
    let m = models.join(name);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("model.py"), MODEL_PY).unwrap();
    let settings = servers::model_settings(name, "model.EnvInfo", None);
    std::fs::write(
        m.join("model-settings.json"),
        serde_json::to_string_pretty(&settings).unwrap(),
    )
    .unwrap();
    m
}

/// Sends [1, 2, 3.5], checks the sum, returns the model's info.
fn infer_info(server: &MlServer, model: &str) -> Result<Value, Failed> {
    let req = servers::v2_request("x", "FP64", &[3], json!([1.0, 2.0, 3.5]));
    let resp = server.infer(model, &req)?;
    let sum = servers::v2_output_f64(&resp, "sum")?;
    ensure(sum == [6.5], format!("sum is {sum:?}"))?;
    Ok(serde_json::from_str(
        &servers::v2_output_strings(&resp, "info")?[0],
    )?)
}

/// Checks that the worker ran `env`'s Python with `env`'s mlserver and numpy.
fn ran_from(info: &Value, env: &Path) -> Result<(), Failed> {
    for key in ["executable", "prefix", "mlserver", "numpy"] {
        let v = info[key].as_str().unwrap_or_default();
        ensure(
            Path::new(v).starts_with(env),
            format!("{key} is {v}, not under {}", env.display()),
        )?;
    }
    let exe = info["executable"].as_str().unwrap_or_default();
    ensure(
        Path::new(exe).parent() == Some(&env.join("bin")),
        format!("the worker runs {exe}"),
    )
}

fn pack(args: &[&std::ffi::OsStr], cwd: &Path) -> Result<Value, Failed> {
    let t = Instant::now();
    let out = run_ok(
        envpack()
            .arg("pack")
            .args(args)
            .args(["--json", "-q", "--mirror", &mirror_arg()])
            .current_dir(cwd),
    );
    eprintln!("packed in {:.1} s", t.elapsed().as_secs_f64());
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn per_model_tarball_runs_the_environments_python_and_mlserver() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let model = write_model(&models, "envinfo");
    std::fs::write(model.join("environment.yml"), environment(&servers))?;
    let report = pack(&[model.as_os_str(), "--write-config".as_ref()], dir.path())?;
    let tarball = model.join("environment.tar.gz");
    ensure(
        tarball.is_file() && report["models"][0]["config_written"] == json!(true),
        format!("report {report}"),
    )?;
    let text = std::fs::read_to_string(model.join("model-settings.json"))?;
    let settings: Value = serde_json::from_str(&text)?;
    ensure(
        settings["parameters"]["environment_tarball"] == "./environment.tar.gz"
            && settings["name"] == "envinfo",
        format!("model-settings.json:\n{text}"),
    )?;

    let server = MlServer::start(&servers, &models, &dir.path().join("mlserver.log"))?;
    let ready = server.wait_model_ready("envinfo", Duration::from_mins(4))?;
    eprintln!("mlserver ready in {:.1} s", ready.as_secs_f64());
    let info = infer_info(&server, "envinfo")?;
    let env = server.environments_dir.join(sha256_file(&tarball));
    ran_from(&info, &env)?;
    ensure(
        server.extracted_envs() == [env.clone()],
        format!("extractions {:?}", server.extracted_envs()),
    )?;
    server.stop()?;
    Ok(())
}

fn image_level_tarball_runs_mlserver_from_the_environment() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build)?;
    std::fs::write(build.join("environment.yml"), environment(&servers))?;
    // `--mlserver` with the folder: environment.tar.gz in the current folder.
    let report = pack(&["--mlserver".as_ref(), "build".as_ref()], dir.path())?;
    let tarball = dir.path().join("environment.tar.gz");
    ensure(
        report["output"] == json!(tarball.canonicalize()?),
        format!("report {report}"),
    )?;
    let models = dir.path().join("models");
    write_model(&models, "envinfo");
    let extract = dir.path().join("opt-mlserver-envs-env");
    let server = MlServer::start_image_flow(
        &servers,
        &tarball,
        &extract,
        &models,
        &dir.path().join("mlserver.log"),
    )?;
    let ready = server.wait_model_ready("envinfo", Duration::from_mins(4))?;
    eprintln!(
        "mlserver (image flow) ready in {:.1} s",
        ready.as_secs_f64()
    );
    let info = infer_info(&server, "envinfo")?;
    ran_from(&info, &extract.canonicalize()?)?;
    server.stop()?;
    Ok(())
}

/// Two models on one environment file: one tarball at the repository root, both
/// `model-settings.json` point at it (`../NAME.tar.gz`), MLServer extracts it once and serves
/// both from it. A second run with nothing changed writes nothing.
fn two_models_share_one_tarball_at_the_repository_root() -> Result<(), Failed> {
    let servers = ServersDir::from_env()?;
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    for name in ["one", "two"] {
        write_model(&models, name);
    }
    std::fs::write(models.join("environment.yml"), environment(&servers))?;
    let report = pack(&[models.as_os_str(), "--write-config".as_ref()], dir.path())?;
    let tarballs: Vec<_> = std::fs::read_dir(&models)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    ensure(tarballs.len() == 1, format!("root tarballs {tarballs:?}"))?;
    let tarball = &tarballs[0];
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    for model in ["one", "two"] {
        ensure(
            !models.join(model).join("environment.tar.gz").exists(),
            format!("{model} holds a copy"),
        )?;
        let text = std::fs::read_to_string(models.join(model).join("model-settings.json"))?;
        let settings: Value = serde_json::from_str(&text)?;
        ensure(
            settings["parameters"]["environment_tarball"] == json!(format!("../{name}")),
            format!("{model}/model-settings.json:\n{text}"),
        )?;
    }
    ensure(
        report["environments"].as_array().map(Vec::len) == Some(1)
            && report["environments"][0]["shared"] == json!(true),
        format!("report {report}"),
    )?;
    ensure(
        report["notices"].as_array().is_some_and(|n| {
            n.iter().any(|n| {
                n["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("MLServer models one, two use one environment"))
            })
        }),
        format!("no warning about MLServer's start-up race: {report}"),
    )?;
    let mtime = std::fs::metadata(tarball)?.modified()?;
    let again = pack(&[models.as_os_str(), "--write-config".as_ref()], dir.path())?;
    ensure(
        again["models"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["up_to_date"] == json!(true))),
        format!("second run {again}"),
    )?;
    ensure(
        std::fs::metadata(tarball)?.modified()? == mtime,
        "the second run rewrote the tarball",
    )?;

    // MLServer 1.7.1 loads the models of a folder at start-up all at once, and a second model
    // on the same tarball (same sha256) finds the extraction folder of the first one half
    // written and starts its workers from it (`_extract_tarball` only checks that the folder
    // exists): they crash. This happens as well with a byte-identical copy in each model
    // folder. Loaded one after the other, as the repository API does, they share one pool.
    let mut extra = serde_json::Map::new();
    extra.insert("load_models_at_startup".into(), json!(false));
    let options = servers::MlServerOptions {
        extra_settings: extra,
        ..servers::MlServerOptions::default()
    };
    let server = MlServer::start_with(
        &servers,
        &models,
        &dir.path().join("mlserver.log"),
        &options,
    )?;
    let env = server.environments_dir.join(sha256_file(tarball));
    let up = Instant::now();
    while !matches!(server.http("GET", "/v2/health/live", None), Ok((200, _))) {
        ensure(
            up.elapsed() < Duration::from_mins(2),
            "mlserver did not start",
        )?;
        std::thread::sleep(Duration::from_millis(250));
    }
    for model in ["one", "two"] {
        let t = Instant::now();
        // The load request answers when the model is loaded; on a busy machine that can take
        // longer than the harness's request timeout: then the readiness wait decides.
        match server.http(
            "POST",
            &format!("/v2/repository/models/{model}/load"),
            Some("{}"),
        ) {
            Ok((200, _)) => {}
            Ok((status, body)) => return Err(format!("loading {model}: {status} {body}").into()),
            Err(e) => eprintln!("loading {model}: {e}; waiting for it to be ready"),
        }
        server.wait_model_ready(model, Duration::from_mins(4))?;
        eprintln!("{model} loaded in {:.1} s", t.elapsed().as_secs_f64());
        let info = infer_info(&server, model)?;
        ran_from(&info, &env)?;
    }
    ensure(
        server.extracted_envs() == [env.clone()],
        format!("extractions {:?}", server.extracted_envs()),
    )?;
    server.stop()?;
    Ok(())
}
