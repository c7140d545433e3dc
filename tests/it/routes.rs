//! The two routes to an archive: straight from the package cache (no `pip:` section) and
//! through a staging prefix (`--via-prefix`, for debugging, or what the direct route leaves to
//! it): the same bytes, and the package cache left as it was.

use std::path::Path;
use std::process::Output;

use crate::support::channel::long_placeholder;
use crate::support::fixture::Fixture;
use crate::support::{self, assert_same_bytes, files_containing, run_ok, sha256_file, snapshot};

/// The route a pack took, from its `--json` summary.
fn route(out: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["route"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_package_cache_route_writes_the_staged_routes_archive_and_leaves_the_cache_as_it_was() {
    let f = Fixture::new();
    // No two packages share a path here: nothing sends the pack through a staging prefix.
    f.env_file(&["python", "tool", "greet"]);
    let cache = f.path().join("cache");
    let pack = |out: &Path, extra: &[&str]| {
        run_ok(
            f.pack_cmd(out)
                .env("ENVPACK_CACHE_DIR", &cache)
                .arg("--json")
                .args(extra),
        )
    };
    let first = f.path().join("first.tar.gz");
    assert_eq!(route(&pack(&first, &[])), "package-cache");
    let before = support::digests(&cache);
    assert!(
        before.iter().any(|(p, _, _)| p.ends_with("bin/plain-py")),
        "the cache holds the extracted packages: {before:?}"
    );
    for extra in [&[][..], &["--dest-prefix", "/opt/some/where"], &["-j", "1"]] {
        let direct = f.path().join("direct.tar.gz");
        let staged = f.path().join("staged.tar.gz");
        let with = |out: &Path, more: &[&str]| {
            let mut args: Vec<&str> = extra.to_vec();
            args.extend_from_slice(more);
            args.push("--force");
            route(&pack(out, &args))
        };
        assert_eq!(with(&direct, &[]), "package-cache", "{extra:?}");
        assert_eq!(
            with(&staged, &["--via-prefix"]),
            "staging-prefix",
            "{extra:?}"
        );
        assert_same_bytes(&direct, &staged);
        assert_eq!(sha256_file(&direct), sha256_file(&staged), "{extra:?}");
    }
    assert_eq!(
        sha256_file(&first),
        sha256_file(&f.path().join("direct.tar.gz")),
        "-j 1 and the default give one archive"
    );
    // A folder, too.
    let (a, b) = (f.path().join("dir-direct"), f.path().join("dir-staged"));
    assert_eq!(route(&pack(&a, &["--format", "dir"])), "package-cache");
    assert_eq!(
        route(&pack(&b, &["--format", "dir", "--via-prefix"])),
        "staging-prefix"
    );
    assert_eq!(snapshot(&a), snapshot(&b));
    // Every placeholder was replaced (the records name it, as conda's do).
    let left: Vec<String> = files_containing(&a, long_placeholder().as_bytes())
        .into_iter()
        .filter(|p| !p.starts_with("conda-meta/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        support::digests(&cache),
        before,
        "the package cache changed"
    );
}

#[test]
fn clobbered_paths_take_the_staged_route_and_give_its_archive() {
    let f = Fixture::new();
    let cache = f.path().join("cache");
    let pack = |out: &Path, extra: &[&str]| {
        route(&run_ok(
            f.pack_cmd(out)
                .env("ENVPACK_CACHE_DIR", &cache)
                .arg("--json")
                .args(extra),
        ))
    };
    let (a, b) = (f.path().join("a.tar"), f.path().join("b.tar"));
    assert_eq!(pack(&a, &[]), "staging-prefix");
    assert_eq!(pack(&b, &["--via-prefix"]), "staging-prefix");
    assert_same_bytes(&a, &b);
}

#[test]
fn the_staging_prefix_hard_links_from_the_package_cache_and_leaves_it_as_it_was() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new();
    f.env_file(&["python", "tool", "greet"]);
    let cache = f.path().join("cache");
    let work = f.path().join("work");
    let out = f.path().join("staged.tar.gz");
    run_ok(
        f.pack_cmd(&out)
            .env("ENVPACK_CACHE_DIR", &cache)
            .args(["--via-prefix", "--keep-work", "--work-dir"])
            .arg(&work),
    );
    let before = support::digests(&cache);
    let prefix = support::kept_work_folder(&work).join("env");
    let linked: Vec<String> = support::tree(&prefix)
        .into_iter()
        .filter(|e| {
            let m = std::fs::symlink_metadata(prefix.join(&e.rel)).unwrap();
            m.is_file() && m.nlink() > 1
        })
        .map(|e| e.rel)
        .collect();
    assert!(
        !linked.is_empty(),
        "no file of the staging prefix is a hard link into the cache"
    );
    // The records in the archive say what its files are: copies.
    let dir = tempfile::tempdir().unwrap();
    support::extract(&out, dir.path());
    for e in std::fs::read_dir(dir.path().join("conda-meta")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") && !p.ends_with("envpack.json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(v["link"]["type"], 3, "{}", p.display());
        }
    }
    // Packing again from the linked prefix's cache leaves the cache as it was.
    run_ok(
        f.pack_cmd(&f.path().join("again.tar.gz"))
            .env("ENVPACK_CACHE_DIR", &cache)
            .arg("--via-prefix"),
    );
    assert_eq!(
        support::digests(&cache),
        before,
        "the package cache changed"
    );
}
