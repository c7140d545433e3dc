//! The same environment packs to the same bytes: whatever the work folder, the number of
//! threads or the channel's location, and (pinned) from one build of envpack to the next.

use crate::support::fixture::{Fixture, pack_prefix};
use crate::support::{self, assert_same_bytes, envpack, extract, run_ok, sha256_file};

#[test]
fn the_archive_does_not_depend_on_where_it_was_staged_or_fetched_from() {
    let f = Fixture::new();
    let d = f.path();
    // Fetched through a mirror of a named channel, staged in two different work folders.
    let env = f.env_text("name: t\nchannels: [mychan]\ndependencies: [python, greet, tool]\n");
    let mirror = format!("mychan={}", f.channel_url());
    let a = d.join("a.tar.gz");
    let b = d.join("b.tar.gz");
    for (out, work, threads) in [
        (&a, "w1", "1"),
        (&b, "a-much-longer-work-folder-name/w2", "2"),
    ] {
        run_ok(
            envpack()
                .arg("pack")
                .arg(&env)
                .arg("-o")
                .arg(out)
                .args(["--mirror", &mirror, "-q", "-j", threads, "--work-dir"])
                .arg(d.join(work)),
        );
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two packs differ"
    );
    let x = d.join("x");
    extract(&a, &x);
    // No path of this machine in any file, records included; the channel is the canonical one.
    for needle in [d.to_str().unwrap(), support::cache_dir().to_str().unwrap()] {
        assert_eq!(
            support::files_containing(&x, needle.as_bytes()),
            Vec::<String>::new(),
            "{needle}"
        );
    }
    let record = std::fs::read_dir(x.join("conda-meta"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("tool-"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    assert_eq!(
        v["channel"].as_str().unwrap().trim_end_matches('/'),
        "https://conda.anaconda.org/mychan"
    );
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://conda.anaconda.org/mychan/linux-64/tool-2.0-0.tar.bz2"),
        "{v}"
    );
    assert_eq!(v["extracted_package_dir"], "");
}

#[test]
fn packing_twice_gives_the_same_bytes_whatever_the_threads_and_work_dir() {
    let f = Fixture::new();
    for ext in ["tar.gz", "tar.zst"] {
        let a = f.path().join(format!("a.{ext}"));
        let b = f.path().join(format!("b.{ext}"));
        let wa = f.path().join("work-a");
        let wb = f.path().join("a-much-longer-work-folder-name/nested");
        std::fs::create_dir_all(&wb).unwrap();
        f.pack(&a, &["-j", "1", "--work-dir", wa.to_str().unwrap()]);
        f.pack(&b, &["-j", "2", "--work-dir", wb.to_str().unwrap()]);
        assert_same_bytes(&a, &b);
        let c = f.path().join(format!("c.{ext}"));
        f.pack(&c, &["-j", "4"]);
        assert_same_bytes(&a, &c);
    }
    // The same for an existing environment packed from two places.
    let one = f.existing("one");
    let two = f.existing("two-elsewhere");
    let (a, b) = (f.path().join("p1.tar.gz"), f.path().join("p2.tar.gz"));
    run_ok(&mut pack_prefix(&one, &a, &["-j", "1"]));
    run_ok(&mut pack_prefix(&two, &b, &["-j", "2"]));
    assert_same_bytes(&a, &b);
}

/// The fixture environment packed with fixed options, one archive per format, and the
/// sha256 each must have.
///
/// The packages are built at test time (`tests/support/fixture.rs`, written by
/// `rattler_package_streaming` with its fixed timestamp) and fetched through a mirror of a
/// channel name, so no path or time of this machine reaches the archive; two packs are the
/// same bytes (see the tests above). A change of any byte, in envpack's output or in what it
/// packs, fails here.
///
/// When bytes change on purpose (a new file in every environment, a changed script or
/// record, another compressor, a new envpack version: `share/envpack/relocations.json` records
/// it, a dependency update that changes the fixture packages or the records):
/// 1. run `ENVPACK_KEEP_PINNED=DIR cargo test --test it determinism::pinned` on the commit
///    before the change and on the change (another DIR each), which keeps the archives in DIR;
/// 2. compare them (`diff -r` of the extracted trees, `cmp` of the archives) and make sure
///    every difference is one you meant;
/// 3. paste the digests the failure message prints below, and say in the commit message
///    which bytes changed and why.
const PINNED: &[(&str, &[&str], &str)] = &[
    (
        "env.tar",
        &[],
        "b49b3850a1c6639e2ea76442bd8a1665ad10791b92b8a8ebef0188b2bf3ac3dc",
    ),
    (
        "env.tar.gz",
        &["--compress-level", "4"],
        "a7616ee0c03c584aba42e64cae5a8b4cc31d502360d8816e6be1a8428130d716",
    ),
    (
        "env.tar.zst",
        &["--compress-level", "3"],
        "1cbf7e974f1b85df3bfe80b6ac5468ca06564e1d3f60f82a628c4375de7de7a4",
    ),
];

#[test]
fn pinned_fixture_archives_keep_their_sha256() {
    let f = Fixture::new();
    let env = f.env_text(
        "name: pinned\nchannels: [pinned]\ndependencies: [python, tool, greet, dup-a, dup-b]\n",
    );
    let mirror = format!("pinned={}", f.channel_url());
    let keep = std::env::var_os("ENVPACK_KEEP_PINNED").map(std::path::PathBuf::from);
    let mut wrong = Vec::new();
    for (name, options, want) in PINNED {
        let out = f.path().join(name);
        run_ok(
            envpack()
                .arg("pack")
                .arg(&env)
                .arg("-o")
                .arg(&out)
                .args([
                    "--mirror",
                    &mirror,
                    "--platform",
                    "linux-64",
                    "-j",
                    "2",
                    "-q",
                ])
                .args(*options),
        );
        let got = sha256_file(&out);
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(&out, dir.join(name)).unwrap();
        }
        if got != *want {
            wrong.push(format!("    (\"{name}\", {options:?}, \"{got}\"),"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the fixture archives changed bytes; if that is intended, see the comment on PINNED \
         and update it with:\n{}",
        wrong.join("\n")
    );
}
