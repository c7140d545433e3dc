//! What the user sees when a pack cannot be done, and that a pack that fails or is
//! interrupted leaves no output, no partial file and no earlier archive damaged.

use std::path::Path;
use std::process::Command;

use crate::support::fixture::{Fixture, pack_prefix};
use crate::support::{envpack, incompressible, run_err, run_ok, stderr};

#[test]
fn unsolvable_environments_explain_why() {
    let f = Fixture::new();
    let env = f.env_text(&format!(
        "channels: [{}]\ndependencies: [tool >=3]\n",
        f.channel_url()
    ));
    let out = run_err(envpack().arg("pack").arg(&env).arg("--dry-run"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be solved"), "{err}");
    assert!(err.contains("tool"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(out.status.code(), Some(1));
    // A virtual package the target lacks, and the override that provides it.
    let env = f.env_text(&format!(
        "channels: [{}]\ndependencies: [needs-old-glibc]\n",
        f.channel_url()
    ));
    let out = run_err(envpack().arg("pack").arg(&env).arg("--dry-run"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("__glibc"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .args(["--dry-run", "--glibc", "9.1"]),
    );
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("--dry-run")
            .env("CONDA_OVERRIDE_GLIBC", "9.1"),
    );
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let f = Fixture::new();
    let d = f.path();
    let env = f.env_text("name: x\ndependencies:\n  - numpy >>= 1\n");
    let out = run_err(envpack().arg("pack").arg(&env).current_dir(d));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("numpy >>= 1"), "{err}");
    assert!(!d.join("x.tar.gz").exists());
    // No environment file.
    let empty = tempfile::tempdir().unwrap();
    let out = run_err(envpack().arg("pack").current_dir(empty.path()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment file"));
    // Usage errors exit with 2.
    let out = run_err(
        envpack()
            .arg("pack")
            .arg(&env)
            .args(["--mirror", "nonsense"]),
    );
    assert_eq!(out.status.code(), Some(2));
    // An existing output is kept without --force.
    let env = f.env_text(&format!(
        "name: x\nchannels: [{}]\ndependencies: [tool]\n",
        f.channel_url()
    ));
    std::fs::write(d.join("x.tar.gz"), "precious").unwrap();
    let out = run_err(envpack().arg("pack").arg(&env).current_dir(d));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(d.join("x.tar.gz")).unwrap(),
        "precious"
    );
    // Nothing partial left behind anywhere.
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_interrupted_pack_leaves_no_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("env");
    std::fs::create_dir_all(prefix.join("conda-meta")).unwrap();
    // Enough incompressible bytes that packing at level 9 on one thread takes a while.
    std::fs::write(prefix.join("big.bin"), incompressible(96 << 20)).unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut child = envpack()
        .arg("pack")
        .arg("-p")
        .arg(&prefix)
        .arg("-o")
        .arg(out_dir.join("env.tar.gz"))
        .args(["--compress-level", "9", "-j", "1", "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = || {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    };
    let start = std::time::Instant::now();
    while !partial() {
        assert!(start.elapsed().as_secs() < 60, "no partial output appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pack ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run_ok(Command::new("kill").arg("-INT").arg(child.id().to_string()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{:?}", out.status);
    // Said on the pack's stderr (captured: `cargo test` prints nothing stray).
    assert!(
        stderr(&out).contains("interrupted: temporary files removed"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with(".out"))
        .collect()
}

#[test]
fn a_pack_that_fails_midway_leaves_no_output_and_no_temp_file() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    // Incompressible content, larger than the file size limit set below.
    std::fs::write(prefix.join("share/big.bin"), incompressible(1 << 20)).unwrap();
    let outdir = f.path().join("outdir");
    std::fs::create_dir(&outdir).unwrap();
    // Writes beyond 256 KiB fail with EFBIG (SIGXFSZ ignored): a failure while writing the
    // archive, after the plan succeeded. (Root reads unreadable files, so no chmod 000 here.)
    let limited = |out: &Path, extra: &str| {
        let script = format!(
            "trap '' XFSZ; ulimit -f 512; exec '{}' pack --prefix '{}' -o '{}' -q {extra}",
            env!("CARGO_BIN_EXE_envpack"),
            prefix.display(),
            out.display()
        );
        run_err(Command::new("bash").arg("-c").arg(script))
    };
    for name in ["env.tar", "env.tar.gz", "env-dir"] {
        let out = outdir.join(name);
        let extra = if name == "env-dir" {
            "--format dir"
        } else {
            ""
        };
        let err = limited(&out, extra);
        assert!(stderr(&err).contains("error"), "{}", stderr(&err));
        assert!(!out.exists(), "{name} exists");
        let left: Vec<String> = std::fs::read_dir(&outdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
    // With --force over an earlier archive, the earlier archive stays whole.
    let out = outdir.join("env.tar");
    std::fs::write(&out, b"earlier").unwrap();
    limited(&out, "--force");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");
    assert_eq!(leftovers(&outdir), Vec::<String>::new());
    // A failure at plan time (a destination too long for a binary file) writes nothing either.
    let long = format!("/{}", "d".repeat(400));
    let err = run_err(&mut pack_prefix(
        &prefix,
        &outdir.join("long.tar"),
        &["--dest-prefix", &long],
    ));
    assert!(stderr(&err).contains("--dest-prefix"), "{}", stderr(&err));
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 1);
}

#[test]
fn special_files_unreadable_names_and_empty_selections_in_a_prefix() {
    use std::os::unix::ffi::OsStrExt;
    let f = Fixture::new();
    let prefix = f.existing("special");
    let _sock = std::os::unix::net::UnixListener::bind(prefix.join("sock")).unwrap();
    let out = f.path().join("out.tar.gz");
    let ok = run_ok(&mut pack_prefix(&prefix, &out, &[]));
    assert!(
        stderr(&ok).contains("left out (FIFOs, sockets and devices cannot be packed): sock"),
        "{}",
        stderr(&ok)
    );

    let bad = prefix.join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    std::fs::write(&bad, "x").unwrap();
    let other = f.path().join("other.tar.gz");
    let err = run_err(&mut pack_prefix(&prefix, &other, &[]));
    assert!(
        stderr(&err).contains("is not valid UTF-8") && stderr(&err).contains("--exclude"),
        "{}",
        stderr(&err)
    );
    assert!(!other.exists());
    run_ok(&mut pack_prefix(&prefix, &other, &["--exclude", "bad*"]));
    assert!(other.is_file());

    let none = f.path().join("none.tar.gz");
    let err = run_err(&mut pack_prefix(&prefix, &none, &["--exclude", "*"]));
    assert_eq!(err.status.code(), Some(2));
    assert!(
        stderr(&err).contains("leave no file of"),
        "{}",
        stderr(&err)
    );
    assert!(!none.exists());
}
