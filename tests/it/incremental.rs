//! Incremental builds: every archive starts with its manifest (`conda-meta/envpack.json`);
//! a second pack with nothing changed writes nothing, a change rebuilds an output envpack
//! wrote without `--force`, a file it did not write still needs it, and `SOURCE_DATE_EPOCH`
//! sets member mtimes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::support::fixture::Fixture;
use crate::support::{envpack, list, read, run_err, run_ok, stderr};

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with("envpack-"))
        .collect()
}

/// `envpack pack` of the fixture into `out`, without `-q`.
fn pack_cmd(f: &Fixture, out: &Path, extra: &[&str]) -> Command {
    let mut c = envpack();
    c.arg("pack")
        .arg(f.path().join("environment.yml"))
        .arg("-o")
        .arg(out)
        .arg("--channel-alias")
        .arg(format!("file://{}/channels/", f.path().display()))
        .args(["--platform", "linux-64", "--no-progress"])
        .args(extra);
    c
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap()
}

fn manifest(archive: &Path) -> serde_json::Value {
    let o = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("conda-meta/envpack.json"),
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// An old mtime, so that a rewrite within the same second is seen.
fn age(path: &Path) -> SystemTime {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_second_pack_writes_nothing_and_a_change_rebuilds_without_force() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    let first = json(&run_ok(&mut pack_cmd(&f, &out, &["--json"])));
    assert_eq!(first["up_to_date"], false);
    // The manifest is the first member, with sorted keys and no path of this machine.
    assert_eq!(list(&out)[0], "conda-meta/envpack.json");
    let m = manifest(&out);
    assert_eq!(m["digest"], first["digest"]);
    assert_eq!(m["platform"], "linux-64");
    assert_eq!(m["python"], "3.11");
    assert_eq!(m["format"], "tar-gz");
    let names: Vec<&str> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dup-a", "dup-b", "greet", "python", "tool"]);
    let text = String::from_utf8(
        run_ok(
            Command::new("tar")
                .arg("-xOf")
                .arg(&out)
                .arg("conda-meta/envpack.json"),
        )
        .stdout,
    )
    .unwrap();
    assert!(!text.contains(&*f.path().to_string_lossy()), "{text}");
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);

    // Nothing changed: nothing written, the bytes and the mtime as they were.
    let bytes = std::fs::read(&out).unwrap();
    let mtime = age(&out);
    let again = run_ok(&mut pack_cmd(&f, &out, &[]));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        format!("up to date: {}", out.display())
    );
    let again = json(&run_ok(&mut pack_cmd(&f, &out, &["--json"])));
    assert_eq!(again["up_to_date"], true);
    assert_eq!(again["digest"], first["digest"]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&out).unwrap().modified().unwrap(), mtime);
    assert_eq!(leftovers(f.path()), Vec::<String>::new());

    // Another compression level: rebuilt, no --force needed (envpack wrote it).
    let level = json(&run_ok(&mut pack_cmd(
        &f,
        &out,
        &["--json", "--compress-level", "1"],
    )));
    assert_eq!(level["up_to_date"], false);
    assert_ne!(level["digest"], first["digest"]);
    assert_ne!(std::fs::read(&out).unwrap(), bytes);

    // One dependency less: rebuilt, and the manifest says so.
    f.env_file(&["python", "tool", "greet", "dup-a"]);
    let fewer = json(&run_ok(&mut pack_cmd(
        &f,
        &out,
        &["--json", "--compress-level", "1"],
    )));
    assert_eq!(fewer["up_to_date"], false);
    assert_ne!(fewer["digest"], level["digest"]);
    assert_eq!(manifest(&out)["digest"], fewer["digest"]);
    assert_eq!(manifest(&out)["packages"].as_array().unwrap().len(), 4);

    // --force redoes the work even when up to date.
    let forced = json(&run_ok(&mut pack_cmd(
        &f,
        &out,
        &["--json", "--compress-level", "1", "--force"],
    )));
    assert_eq!(forced["up_to_date"], false);
    assert_eq!(forced["digest"], fewer["digest"]);
}

#[test]
fn a_file_envpack_did_not_write_still_needs_force() {
    let f = Fixture::new();
    let out = f.path().join("env.tar");
    std::fs::write(&out, "precious").unwrap();
    let err = run_err(&mut pack_cmd(&f, &out, &[]));
    assert!(stderr(&err).contains("--force"), "{}", stderr(&err));
    assert_eq!(read(&out), "precious");
    // A conda-pack style archive (no manifest) is foreign too.
    let other = f.path().join("other.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&other)
            .arg("-C")
            .arg(f.path())
            .arg("environment.yml"),
    );
    let before = std::fs::read(&other).unwrap();
    let err = run_err(&mut pack_cmd(&f, &other, &[]));
    assert!(stderr(&err).contains("already exists"), "{}", stderr(&err));
    assert_eq!(std::fs::read(&other).unwrap(), before);
    run_ok(&mut pack_cmd(&f, &out, &["--force", "-q"]));
    assert_eq!(list(&out)[0], "conda-meta/envpack.json");
}

fn mtimes(archive: &Path) -> Vec<u64> {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().header().mtime().unwrap())
        .collect()
}

#[test]
fn source_date_epoch_sets_member_mtimes_and_is_reproducible() {
    let f = Fixture::new();
    let plain = f.path().join("plain.tar");
    run_ok(&mut pack_cmd(&f, &plain, &["-q"]));
    assert!(mtimes(&plain).iter().all(|t| *t == 0));
    let a = f.path().join("a.tar");
    let b = f.path().join("b.tar");
    for out in [&a, &b] {
        run_ok(
            pack_cmd(&f, out, &["-q"])
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .arg("-j1"),
        );
    }
    let times = mtimes(&a);
    assert!(times.len() > 10);
    assert!(times.iter().all(|t| *t == 1_700_000_000), "{times:?}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_ne!(manifest(&a)["digest"], manifest(&plain)["digest"]);
    // The epoch is part of the digest: the output is not up to date under another one.
    let o = json(&run_ok(
        pack_cmd(&f, &a, &["--json"]).env("SOURCE_DATE_EPOCH", "1700000000"),
    ));
    assert_eq!(o["up_to_date"], true);
    let o = json(&run_ok(
        pack_cmd(&f, &a, &["--json"]).env("SOURCE_DATE_EPOCH", "1700000001"),
    ));
    assert_eq!(o["up_to_date"], false);
    // Not a number: a usage error, nothing written.
    let err =
        run_err(pack_cmd(&f, &f.path().join("c.tar"), &[]).env("SOURCE_DATE_EPOCH", "yesterday"));
    assert_eq!(err.status.code(), Some(2));
    assert!(
        stderr(&err).contains("SOURCE_DATE_EPOCH"),
        "{}",
        stderr(&err)
    );
    assert!(!f.path().join("c.tar").exists());
}
