//! The commands the documentation shows work: the README's first command, and every `envpack`
//! command line of `Dockerfile.example` (run in a folder laid out as the builder stage's).

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Failed;

use crate::support::{self, ensure, envpack, run_ok};
use crate::{Case, Needs};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "docs::readme_first_command_packs_the_demo",
            needs: &[Needs::Channel],
            run: readme_first_command_packs_the_demo,
        },
        Case {
            name: "docs::readme_mlserver_model_finds_the_environment_file_above_it",
            needs: &[Needs::Channel],
            run: readme_mlserver_model_finds_the_environment_file_above_it,
        },
        Case {
            name: "docs::dockerfile_envpack_lines_run",
            needs: &[Needs::Channel, Needs::Servers],
            run: dockerfile_envpack_lines_run,
        },
    ]
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Splits a command line as a shell would for these simple lines (no quotes in them).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// The README's first fenced command: `cargo run -- pack ...` (comment stripped).
fn readme_first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --"))
        .expect("the README starts with a `cargo run --` command");
    let line = line.split('#').next().unwrap();
    words(line.trim_start_matches("cargo run --"))
}

fn readme_first_command_packs_the_demo() -> Result<(), Failed> {
    let args = readme_first_command();
    if args.first().map(String::as_str) != Some("pack") {
        return Err(format!("unexpected README command: {args:?}").into());
    }
    // The README runs from the repository, with ../shared beside it; here the channel comes
    // from the test environment, in the same place relative to a copy of the repository.
    let dir = tempfile::tempdir()?;
    let clone = dir.path().join("envpack");
    std::fs::create_dir_all(clone.join("testdata"))?;
    copy_dir(&repo().join("testdata/demo"), &clone.join("testdata/demo"))?;
    std::os::unix::fs::symlink(
        crate::test_channel()?.parent().unwrap(),
        dir.path().join("shared"),
    )?;
    run_ok(envpack().args(&args).arg("-q").current_dir(&clone));
    let out = clone.join("demo.tar.gz");
    if !out.is_file() {
        return Err("the README command wrote no demo.tar.gz".into());
    }
    let listing = crate::support::list(&out);
    for member in [
        "bin/python3.11",
        "bin/activate",
        "bin/conda-unpack",
        "conda-meta/history",
    ] {
        if !listing.iter().any(|m| m == member) {
            return Err(format!("{member} missing from demo.tar.gz").into());
        }
    }
    Ok(())
}

/// `RUN envpack ...` lines and the `COPY` lines that lay out the build folder.
fn dockerfile() -> (Vec<Vec<String>>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(repo().join("Dockerfile.example")).unwrap();
    let mut runs = Vec::new();
    let mut copies = Vec::new();
    let mut in_pack_stage = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("FROM ") {
            in_pack_stage = rest.ends_with(" AS pack");
        } else if let Some(rest) = line.strip_prefix("RUN envpack ") {
            runs.push(words(rest));
        } else if let Some(rest) = line.strip_prefix("COPY ").filter(|_| in_pack_stage) {
            let w = words(rest);
            if w.len() == 2 {
                copies.push((w[0].clone(), w[1].clone()));
            }
        }
    }
    (runs, copies)
}

fn dockerfile_envpack_lines_run() -> Result<(), Failed> {
    let (runs, copies) = dockerfile();
    if runs.is_empty() {
        return Err("Dockerfile.example has no `RUN envpack` line".into());
    }
    let build = tempfile::tempdir()?;
    for (from, to) in &copies {
        let src = repo().join(from.trim_end_matches('/'));
        let dest = build.path().join(to.trim_end_matches('/'));
        if src.is_dir() {
            copy_dir(&src, &dest)?;
        } else {
            std::fs::create_dir_all(dest.parent().unwrap())?;
            std::fs::copy(&src, &dest)?;
        }
    }
    // The stub step: the Dockerfile's own loop, run on the installed servers' copy of the
    // nvidia-pytriton wheel (where the image downloads and unzips it from PyPI).
    let servers = crate::servers::ServersDir::from_env()?;
    let stub_loop = dockerfile_stub_loop()?;
    let wheel = servers.root.join("triton");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(stub_loop.replace("/tmp/pytriton", &wheel.to_string_lossy()))
            .current_dir(build.path()),
    );
    let mirrors = format!("conda-forge=file://{}", crate::test_channel()?.display());
    let mut stderrs = Vec::new();
    for args in &runs {
        let out = run_ok(
            envpack()
                .args(args)
                .arg("-q")
                .env("ENVPACK_MIRRORS", &mirrors)
                // pip offline, from the wheelhouse, where the Dockerfile reaches PyPI.
                .env("PIP_NO_INDEX", "1")
                .env("PIP_FIND_LINKS", servers.wheels())
                .current_dir(build.path()),
        );
        stderrs.push(String::from_utf8_lossy(&out.stderr).into_owned());
        // Each line's output exists and is a gzip tar.
        if let Some(i) = args.iter().position(|a| a == "-o") {
            let o = build.path().join(&args[i + 1]);
            run_ok(Command::new("tar").arg("-tzf").arg(&o));
        }
    }
    stubs_load_as_the_image_loads_them(build.path())?;
    // Each line's environments run on its image's C library: every ELF file in them (conda
    // packages and pip wheels alike) that needs a newer glibc than the line's `--glibc`, as
    // readelf reads them, is one envpack named in its warning (the test channel's CPython was
    // built here, against a newer glibc than its metadata says), and none is when none does.
    for (args, stderr) in runs.iter().zip(&stderrs) {
        let glibc = flag_value(args, "--glibc").ok_or("a RUN envpack line without --glibc")?;
        let tarballs = if let Some(o) = flag_value(args, "-o") {
            vec![build.path().join(o)]
        } else {
            // The models' stubs (and the CUDA runtime beside them) run in that image too.
            let stubs = glibc_needs(&build.path().join("models"), glibc)?;
            ensure(
                stubs.is_empty(),
                format!("the stubs need more than glibc {glibc}: {stubs:?}"),
            )?;
            model_tarballs(&build.path().join("models"))?
        };
        ensure(!tarballs.is_empty(), format!("no output for {args:?}"))?;
        for tarball in tarballs {
            let env = tempfile::tempdir()?;
            support::extract(&tarball, env.path());
            let newer = glibc_needs(env.path(), glibc)?;
            let warned = stderr.contains(&format!("need a newer glibc than the target's {glibc}"))
                || stderr.contains(&format!("needs a newer glibc than the target's {glibc}"));
            ensure(
                warned != newer.is_empty(),
                format!("{args:?}: readelf finds {newer:?}; envpack said:\n{stderr}"),
            )?;
            for (file, minor) in newer.iter().take(5) {
                ensure(
                    stderr.contains(&format!("{file} (GLIBC_2.{minor})")),
                    format!("{file} (GLIBC_2.{minor}) is not in envpack's warning:\n{stderr}"),
                )?;
            }
            ensure(
                stderr.contains(&format!("{} ELF file", newer.len())) || newer.is_empty(),
                format!("envpack did not count {} files:\n{stderr}", newer.len()),
            )?;
        }
    }
    // The repository line packed each Triton model and pointed its config at the tarball.
    for model in std::fs::read_dir(build.path().join("models"))? {
        let model = model?.path();
        if model.join("config.pbtxt").is_file() {
            run_ok(
                Command::new("tar")
                    .arg("-tzf")
                    .arg(model.join("model-conda.tar.gz")),
            );
            let config = std::fs::read_to_string(model.join("config.pbtxt"))?;
            if !config.contains("$$TRITON_MODEL_DIRECTORY/model-conda.tar.gz") {
                return Err(format!(
                    "{} does not point at its tarball:\n{config}",
                    model.display()
                )
                .into());
            }
        }
    }
    Ok(())
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The `model-conda.tar.gz` of every model folder in `models`.
fn model_tarballs(models: &Path) -> Result<Vec<PathBuf>, Failed> {
    let mut found = Vec::new();
    for model in std::fs::read_dir(models)? {
        let tarball = model?.path().join("model-conda.tar.gz");
        if tarball.is_file() {
            found.push(tarball);
        }
    }
    Ok(found)
}

/// The ELF files under `root` (relative paths) that need a newer glibc than `max` ("2.34"),
/// with the highest `GLIBC_2.N` that `readelf -V` lists among their needs, most demanding
/// first, then by name.
fn glibc_needs(root: &Path, max: &str) -> Result<Vec<(String, u32)>, Failed> {
    let limit = support::glibc_minor(max).ok_or_else(|| format!("--glibc {max}: not 2.N"))?;
    let mut elves = Vec::new();
    for entry in support::tree(root) {
        let mut magic = [0u8; 4];
        if entry.kind == support::Kind::File
            && std::io::Read::read(&mut std::fs::File::open(&entry.path)?, &mut magic)? == 4
            && magic == *b"\x7fELF"
        {
            elves.push(entry.path);
        }
    }
    ensure(
        !elves.is_empty(),
        format!("no ELF file under {}", root.display()),
    )?;
    let newer = support::readelf_glibc_needs(&elves)
        .into_iter()
        .filter(|(_, m)| *m > limit)
        .map(|(file, m)| {
            let rel = file.strip_prefix(root).unwrap_or(&file);
            (rel.to_string_lossy().into_owned(), m)
        });
    let mut newer: Vec<(String, u32)> = newer.collect();
    newer.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(newer)
}

/// The `for m in models/*/; do ... done` loop of the Dockerfile's stub step, as one line.
fn dockerfile_stub_loop() -> Result<String, Failed> {
    let text = std::fs::read_to_string(repo().join("Dockerfile.example"))?;
    let joined = text.replace("\\\n", " ");
    let start = joined
        .find("for m in models/*/; do")
        .ok_or("Dockerfile.example has no stub loop (`for m in models/*/; do`)")?;
    let end = joined[start..]
        .find("done")
        .ok_or("the stub loop has no `done`")?;
    Ok(joined[start..start + end + 4].to_string())
}

/// Each Triton model's stub, with the models folder moved elsewhere (as `COPY --from=pack`
/// does), resolves every library the way the image runs it: no `LD_LIBRARY_PATH` but the
/// extracted environment's `lib` (which the python backend adds), the CUDA runtime from the
/// model folder, libpython from the environment.
fn stubs_load_as_the_image_loads_them(build: &Path) -> Result<(), Failed> {
    let moved = tempfile::tempdir()?;
    let models = moved.path().join("models");
    copy_dir(&build.join("models"), &models)?;
    let mut checked = 0;
    for model in std::fs::read_dir(&models)? {
        let model = model?.path();
        let stub = model.join("triton_python_backend_stub");
        if !model.join("config.pbtxt").is_file() || !stub.is_file() {
            continue;
        }
        let config = std::fs::read_to_string(model.join("config.pbtxt"))?;
        let tarball = config
            .split('"')
            .find_map(|v| v.strip_prefix("$$TRITON_MODEL_DIRECTORY/"))
            .map(|rel| model.join(rel))
            .ok_or_else(|| format!("{}: no EXECUTION_ENV_PATH", model.display()))?;
        let env = moved.path().join(format!("env-{checked}"));
        support::extract(&tarball, &env);
        let out = run_ok(
            Command::new("ldd")
                .arg(&stub)
                .env_clear()
                .env("LD_LIBRARY_PATH", env.join("lib")),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = |lib: &str| {
            text.lines()
                .find(|l| l.contains(lib))
                .unwrap_or_default()
                .to_string()
        };
        ensure(
            !text.contains("not found"),
            format!("{}:\n{text}", stub.display()),
        )?;
        ensure(
            line("libcudart").contains(&model.to_string_lossy().into_owned()),
            format!("libcudart not from the model folder:\n{text}"),
        )?;
        ensure(
            line("libpython3.11").contains(&env.to_string_lossy().into_owned()),
            format!("libpython not from the environment:\n{text}"),
        )?;
        checked += 1;
    }
    ensure(checked > 0, "no Triton model with a stub was checked")
}

/// The README's MLServer model example, `envpack pack testdata/mlserver/models/double`, from
/// the checkout (dry run, the test channel): an MLServer model whose environment file is the
/// one beside its models folder, as in the MLServer template.
fn readme_mlserver_model_finds_the_environment_file_above_it() -> Result<(), Failed> {
    let mirror = format!("conda-forge={}", crate::test_channel()?.display());
    let out = run_ok(
        envpack()
            .args([
                "pack",
                "testdata/mlserver/models/double",
                "--dry-run",
                "--json",
            ])
            .args(["--mirror", &mirror, "-q"])
            .current_dir(repo()),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let m = &report["models"][0];
    let env = repo()
        .canonicalize()?
        .join("testdata/mlserver/environment.yml");
    if m["server"] != "mlserver" || Path::new(m["environment_file"].as_str().unwrap_or("")) != env {
        return Err(format!("not the MLServer model of {}: {report}", env.display()).into());
    }
    Ok(())
}

fn copy_dir(src: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dest.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}
