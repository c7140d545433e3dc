//! `envpack unpack ARCHIVE DEST`: hostile archives built at test time with the `tar` crate are
//! refused with nothing written outside DEST and no litter; envpack's archives (every format,
//! and `--format dir` folders) unpack, relocate and run, with nothing left for the first
//! activation to do; conda-pack's format (records embedded in its `bin/conda-unpack`) is
//! relocated as its script would; manifest digests are checked.
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::channel::{Channel, Package, Prefix, fake_python, long_placeholder};
use crate::support::{self, envpack, files_containing, run_err, run_ok};

const PLACEHOLDER: &str = envpack::ARCHIVE_PREFIX;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn unpack(archive: &Path, dest: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = envpack();
    c.arg("unpack").arg(archive).arg(dest).args(extra);
    c
}

/// Every path below `dir` (folders included), relative, sorted: what "nothing else was
/// touched" compares.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

// ------------------------------------------------------------------------------------------------
// Hostile archives
// ------------------------------------------------------------------------------------------------

/// A tar member written byte by byte: the `tar` crate's `set_path` refuses `..` and absolute
/// names, which is what these tests need.
fn raw_member(
    out: &mut Vec<u8>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

struct Hostile {
    dir: tempfile::TempDir,
}

impl Hostile {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "secret\n").unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Self { dir }
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Writes the members as `NAME.tar` (after a harmless first member), `envpack unpack`s
    /// it into `work/dest`, asserts the refusal and that nothing changed outside DEST.
    fn refused(&self, name: &str, members: &[(&str, tar::EntryType, Option<&str>, &[u8])]) {
        let mut data = Vec::new();
        raw_member(
            &mut data,
            "ok.txt",
            tar::EntryType::Regular,
            None,
            b"fine\n",
        );
        for (n, k, l, d) in members {
            raw_member(&mut data, n, *k, *l, d);
        }
        data.extend_from_slice(&[0u8; 1024]);
        let archive = self.dir.path().join(format!("{name}.tar"));
        std::fs::write(&archive, &data).unwrap();
        let before = listing(self.dir.path());
        let dest = self.dir.path().join("work/dest");
        let o = run_err(&mut unpack(&archive, &dest, &["-q"]));
        assert!(
            stderr(&o).contains("refusing the archive member"),
            "{name}: {}",
            stderr(&o)
        );
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(!dest.exists(), "{name}: DEST was created");
        assert_eq!(
            listing(self.dir.path()),
            before,
            "{name}: something changed outside DEST (or a temporary was left)"
        );
        assert_eq!(
            std::fs::read_to_string(self.outside().join("secret")).unwrap(),
            "secret\n",
            "{name}"
        );
    }
}

#[test]
fn hostile_archives_are_refused_with_nothing_written_outside_dest() {
    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};
    let h = Hostile::new();
    let outside = h.outside();
    let abs_new = outside.join("new");
    let abs_secret = outside.join("secret");
    let (abs_new, abs_secret, outside_s) = (
        abs_new.to_str().unwrap(),
        abs_secret.to_str().unwrap(),
        outside.to_str().unwrap(),
    );
    h.refused(
        "dotdot",
        &[("../../outside/new", Regular, None, b"pwned\n")],
    );
    h.refused("dotdot-inner", &[("a/../../x", Regular, None, b"pwned\n")]);
    h.refused("dotdot-dir", &[("../outside/d", Directory, None, b"")]);
    h.refused("absolute", &[(abs_new, Regular, None, b"pwned\n")]);
    // A symlink to a folder outside, then a member written through it.
    h.refused(
        "symlink-then-write",
        &[
            ("lib", Symlink, Some(outside_s), b""),
            ("lib/new", Regular, None, b"pwned\n"),
        ],
    );
    h.refused(
        "relative-symlink-then-write",
        &[
            ("a/b", Directory, None, b""),
            ("a/b/up", Symlink, Some("../../../outside"), b""),
            ("a/b/up/secret", Regular, None, b"pwned\n"),
        ],
    );
    h.refused(
        "symlink-then-dir-through-it",
        &[
            ("lib", Symlink, Some(outside_s), b""),
            ("lib/sub/x", Regular, None, b"pwned\n"),
        ],
    );
    // Hard links out of the tree, by `..`, by absolute name, or through a symlink.
    h.refused(
        "hardlink-dotdot",
        &[("h", Link, Some("../../outside/secret"), b"")],
    );
    h.refused("hardlink-absolute", &[("h", Link, Some(abs_secret), b"")]);
    h.refused(
        "hardlink-through-symlink",
        &[
            ("s", Symlink, Some(outside_s), b""),
            ("h", Link, Some("s/secret"), b""),
        ],
    );
    h.refused(
        "hardlink-to-symlink",
        &[
            ("s", Symlink, Some(abs_secret), b""),
            ("h", Link, Some("s"), b""),
        ],
    );
    h.refused("hardlink-missing", &[("h", Link, Some("nothing"), b"")]);
    h.refused("char-device", &[("null", Char, None, b"")]);
    h.refused("block-device", &[("sda", Block, None, b"")]);
    h.refused("fifo", &[("pipe", Fifo, None, b"")]);
    h.refused(
        "file-over-folder",
        &[("d", Directory, None, b""), ("d", Regular, None, b"x")],
    );
}

#[test]
fn a_file_replacing_a_symlink_is_written_in_the_tree_not_through_the_link() {
    let h = Hostile::new();
    let secret = h.outside().join("secret");
    let mut data = Vec::new();
    raw_member(
        &mut data,
        "f",
        tar::EntryType::Symlink,
        Some(secret.to_str().unwrap()),
        b"",
    );
    raw_member(&mut data, "f", tar::EntryType::Regular, None, b"mine\n");
    // An absolute symlink is kept as it is (conda-pack archives have them): never followed.
    raw_member(
        &mut data,
        "kept",
        tar::EntryType::Symlink,
        Some(secret.to_str().unwrap()),
        b"",
    );
    data.extend_from_slice(&[0u8; 1024]);
    let archive = h.dir.path().join("dup.tar");
    std::fs::write(&archive, data).unwrap();
    let dest = h.dir.path().join("work/dest");
    run_ok(&mut unpack(&archive, &dest, &["-q"]));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret\n");
    assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "mine\n");
    assert!(
        std::fs::symlink_metadata(dest.join("f"))
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(std::fs::read_link(dest.join("kept")).unwrap(), secret);
}

#[test]
fn dest_must_be_new_or_an_empty_folder_and_garbage_is_not_an_archive() {
    let d = tempfile::tempdir().unwrap();
    let mut data = Vec::new();
    raw_member(&mut data, "a.txt", tar::EntryType::Regular, None, b"a\n");
    data.extend_from_slice(&[0u8; 1024]);
    let archive = d.path().join("x.tar");
    std::fs::write(&archive, &data).unwrap();

    let full = d.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), "mine\n").unwrap();
    let o = run_err(&mut unpack(&archive, &full, &[]));
    assert!(
        stderr(&o).contains("already exists and is not an empty folder"),
        "{}",
        stderr(&o)
    );
    assert_eq!(listing(&full), ["keep"]);
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    run_err(&mut unpack(&archive, &file, &[]));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    // An empty folder keeps its mode; missing parents are created.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o750)).unwrap();
    run_ok(&mut unpack(&archive, &empty, &["-q"]));
    assert_eq!(std::fs::read_to_string(empty.join("a.txt")).unwrap(), "a\n");
    assert_eq!(
        std::fs::metadata(&empty).unwrap().permissions().mode() & 0o777,
        0o750
    );
    run_ok(&mut unpack(
        &archive,
        &d.path().join("new/deeper/env"),
        &["-q"],
    ));
    assert!(d.path().join("new/deeper/env/a.txt").is_file());

    // Not an archive (whatever its name); a truncated one. Nothing is left behind.
    let before = listing(d.path());
    let junk = d.path().join("junk.tar.gz");
    std::fs::write(&junk, "this is not an archive at all").unwrap();
    let o = run_err(&mut unpack(&junk, &d.path().join("j"), &[]));
    assert!(
        stderr(&o).contains("is not a tar archive"),
        "{}",
        stderr(&o)
    );
    let cut = d.path().join("cut.bin");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut big = Vec::new();
    raw_member(
        &mut big,
        "big",
        tar::EntryType::Regular,
        None,
        &vec![7u8; 100_000],
    );
    gz.write_all(&big).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    let o = run_err(&mut unpack(&cut, &d.path().join("c"), &[]));
    assert!(
        stderr(&o).contains("is not a valid archive"),
        "{}",
        stderr(&o)
    );
    let mut after = listing(d.path());
    after.retain(|p| p != "junk.tar.gz" && p != "cut.bin");
    assert_eq!(after, before);
}

// ------------------------------------------------------------------------------------------------
// envpack's archives
// ------------------------------------------------------------------------------------------------

/// A channel (fake python, a package with text and binary placeholders, a noarch package
/// with an entry point) and an environment file using it.
struct Env {
    dir: tempfile::TempDir,
}

fn tool() -> Package {
    let ph = long_placeholder();
    Package::new("tool", "1.0")
        .depends("python")
        .with_prefix("share/tool/paths.txt", Prefix::Text, &ph, false, |ph| {
            format!("data={ph}/share/tool\n").into_bytes()
        })
        .with_prefix("lib/libtool.so", Prefix::Binary, &ph, false, |ph| {
            let mut v = b"\x7fELF\x02\x01\x01\0\xff\xfe".to_vec();
            v.extend_from_slice(format!("{ph}/share/tool").as_bytes());
            v.extend_from_slice(b"\0end\0");
            v
        })
        .file("share/tool/plain.txt", "no prefix\n")
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut chan = Channel::new(&dir.path().join("channels/local"));
        chan.add(fake_python());
        chan.add(tool());
        chan.add(
            Package::new("greet", "1.0")
                .depends("python")
                .noarch_python(&["greet = greet:main"])
                .file(
                    "site-packages/greet/__init__.py",
                    "import sys\n\ndef main():\n    print('greet', __file__, *sys.argv[1:])\n",
                ),
        );
        chan.write();
        support::write_environment(
            dir.path(),
            "unpack",
            &["local"],
            &["python", "tool", "greet"],
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn pack(&self, out: &Path, extra: &[&str]) -> Output {
        run_ok(
            envpack()
                .arg("pack")
                .arg(self.path().join("environment.yml"))
                .arg("-o")
                .arg(out)
                .arg("--channel-alias")
                .arg(format!("file://{}/channels/", self.path().display()))
                .args(["--platform", "linux-64", "-q"])
                .args(extra),
        )
    }
}

/// The environment at `t` is relocated for `r` (its scripts, text and binary files), and
/// activating it, starting its Python and running its conda-unpack rewrite nothing more.
fn assert_relocated_and_settled(t: &Path, r: &Path) {
    let r = r.display().to_string();
    assert_eq!(
        std::fs::read_to_string(t.join("share/envpack/location")).unwrap(),
        r
    );
    assert_eq!(
        files_containing(t, PLACEHOLDER.as_bytes()),
        ["share/envpack/relocations.json"],
        "only the records name the placeholder"
    );
    assert_eq!(
        std::fs::read_to_string(t.join("share/tool/paths.txt")).unwrap(),
        format!("data={r}/share/tool\n")
    );
    let lib = std::fs::read(t.join("lib/libtool.so")).unwrap();
    let expect = format!("{r}/share/tool\0");
    assert!(
        lib.windows(expect.len()).any(|w| w == expect.as_bytes()),
        "the binary's C string is not relocated"
    );
    assert_eq!(lib.len(), tool().files[1].data.len(), "binary length kept");
    let log = t.parent().unwrap().join("relocate.log");
    let out = run_ok(
        std::process::Command::new("bash")
            .arg("-euc")
            .arg("bin/conda-unpack; bin/fake-config; set +u; source bin/activate; greet hi; python -c 'print(1)'")
            .current_dir(t)
            .env("ENVPACK_RELOCATE_LOG", &log),
    );
    assert_eq!(
        stdout(&out),
        format!(
            "prefix={r}\nlibdir={r}/lib\ngreet {r}/lib/python3.11/site-packages/greet/__init__.py hi\n1\n"
        )
    );
    assert!(
        !log.exists(),
        "activation or conda-unpack rewrote files after envpack unpack: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn envpack_archives_of_every_format_unpack_relocate_and_run() {
    let e = Env::new();
    for (name, extra) in [
        ("env.tar.gz", &[][..]),
        ("env.tar.zst", &[][..]),
        ("env.tar", &[][..]),
        ("env-dir", &["--format", "dir"][..]),
    ] {
        let out = e.path().join(name);
        e.pack(&out, extra);
        // The name says nothing: the content decides.
        let renamed = e.path().join(format!("renamed-{name}.bin"));
        let input = if out.is_dir() {
            out.clone()
        } else {
            std::fs::copy(&out, &renamed).unwrap();
            renamed
        };
        let dest = e.path().join(format!("u-{name}"));
        let o = run_ok(&mut unpack(&input, &dest, &["--json"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let real = dest.canonicalize().unwrap();
        assert_eq!(v["origin"], "envpack", "{name}");
        assert_eq!(v["prefix"], real.display().to_string(), "{name}");
        assert!(v["relocated"].as_u64().unwrap() >= 3, "{name}: {v}");
        assert_relocated_and_settled(&dest, &real);
        if out.is_dir() {
            // The folder given is read, never changed.
            assert_eq!(
                std::fs::read_to_string(out.join("share/envpack/location")).unwrap(),
                PLACEHOLDER
            );
        }
    }
}

/// Issue 10, item 7: a `--format dir` output never activated holds envpack's placeholder, not
/// its own path; packed again with `--prefix`, its tarball relocates like any other.
#[test]
fn a_dir_output_never_activated_packed_again_relocates() {
    let e = Env::new();
    let dir = e.path().join("env-dir");
    e.pack(&dir, &["--format", "dir"]);
    assert!(!files_containing(&dir, PLACEHOLDER.as_bytes()).is_empty());
    let tarball = e.path().join("again.tar.gz");
    let o = run_ok(&mut support::fixture::pack_prefix(&dir, &tarball, &[]));
    assert!(!stderr(&o).contains("0 relocatable"), "{}", stderr(&o));
    // envpack unpack into a new folder: relocated, settled, runs.
    let dest = e.path().join("u-again");
    run_ok(&mut unpack(&tarball, &dest, &[]));
    assert_relocated_and_settled(&dest, &dest.canonicalize().unwrap());
    // Extracted by tar, relocated by its own conda-unpack: no file keeps the placeholder but
    // the records, and its scripts run from there.
    let t = e.path().join("t-again");
    support::extract(&tarball, &t);
    let out = run_ok(
        std::process::Command::new("bash")
            .arg("-euc")
            .arg("bin/conda-unpack; set +u; source bin/activate; greet hi; bin/fake-config")
            .current_dir(&t),
    );
    let r = t.canonicalize().unwrap().display().to_string();
    assert_eq!(
        files_containing(&t, PLACEHOLDER.as_bytes()),
        ["share/envpack/relocations.json"],
        "only the records name the placeholder"
    );
    assert_eq!(
        stdout(&out),
        format!(
            "greet {r}/lib/python3.11/site-packages/greet/__init__.py hi\nprefix={r}\nlibdir={r}/lib\n"
        )
    );
}

#[test]
fn dest_prefix_relocates_for_where_the_tree_is_moved_later() {
    let e = Env::new();
    let out = e.path().join("env.tar.gz");
    e.pack(&out, &[]);
    let build = e.path().join("build/env");
    let final_place = e.path().join("opt/the-final-place");
    let o = run_ok(&mut unpack(
        &out,
        &build,
        &["--dest-prefix", final_place.to_str().unwrap()],
    ));
    assert!(
        stdout(&o).contains(&format!("relocated for {}", final_place.display())),
        "{}",
        stdout(&o)
    );
    std::fs::create_dir_all(final_place.parent().unwrap()).unwrap();
    std::fs::rename(&build, &final_place).unwrap();
    assert_relocated_and_settled(&final_place, &final_place);
    // A relative --dest-prefix is a usage error.
    let o = run_err(&mut unpack(
        &out,
        &e.path().join("x"),
        &["--dest-prefix", "rel/path"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!e.path().join("x").exists());
}

#[test]
fn a_binary_file_without_room_for_dest_fails_and_leaves_nothing() {
    let e = Env::new();
    let out = e.path().join("env.tar.gz");
    e.pack(&out, &[]);
    let parent = e.path().join("deep");
    std::fs::create_dir(&parent).unwrap();
    // The package's placeholder is 255 bytes: a longer path cannot fit in its C strings.
    let dest = parent.join("d".repeat(250)).join("e".repeat(20));
    let o = run_err(&mut unpack(&out, &dest, &[]));
    assert!(
        stderr(&o).contains("cannot relocate lib/"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("hint:"), "{}", stderr(&o));
    assert_eq!(listing(&parent), Vec::<String>::new(), "litter left");
}

/// Rewrites a tar archive with `conda-meta/envpack.json` added.
fn with_manifest(archive: &Path, out: &Path, manifest: &serde_json::Value) {
    let mut input = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(archive).unwrap(),
    ));
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut h = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        if h.entry_type() == tar::EntryType::Symlink {
            let target = entry.link_name().unwrap().unwrap().into_owned();
            b.append_link(&mut h, &path, &target).unwrap();
        } else {
            b.append_data(&mut h, &path, &mut entry).unwrap();
        }
    }
    let data = serde_json::to_vec(manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "conda-meta/envpack.json", &data[..])
        .unwrap();
    b.finish().unwrap();
}

#[test]
fn manifest_digests_are_checked_where_present() {
    let e = Env::new();
    let out = e.path().join("env.tar.gz");
    e.pack(&out, &[]);
    let probe = e.path().join("probe");
    support::extract(&out, &probe);
    let sha = |rel: &str| {
        use sha2::Digest;
        support::hex(&sha2::Sha256::digest(
            std::fs::read(probe.join(rel)).unwrap(),
        ))
    };
    let good = e.path().join("good.tar");
    with_manifest(
        &out,
        &good,
        &serde_json::json!({ "files": {
            "share/tool/paths.txt": sha("share/tool/paths.txt"),
            "lib/libtool.so": sha("lib/libtool.so"),
        }}),
    );
    let o = run_ok(&mut unpack(&good, &e.path().join("g"), &[]));
    assert!(stdout(&o).contains("2 digests checked"), "{}", stdout(&o));

    let bad = e.path().join("bad.tar");
    with_manifest(
        &out,
        &bad,
        &serde_json::json!({ "files": { "share/tool/paths.txt": sha("lib/libtool.so") } }),
    );
    let o = run_err(&mut unpack(&bad, &e.path().join("b"), &[]));
    assert!(
        stderr(&o).contains("share/tool/paths.txt does not match the archive's manifest"),
        "{}",
        stderr(&o)
    );
    assert!(!e.path().join("b").exists());
    assert!(
        !listing(e.path()).iter().any(|p| p.ends_with(".partial")),
        "a temporary folder was left"
    );
}

// ------------------------------------------------------------------------------------------------
// conda-pack's format
// ------------------------------------------------------------------------------------------------

#[test]
fn conda_pack_records_relocate_as_its_conda_unpack_would() {
    let d = tempfile::tempdir().unwrap();
    let text_ph = "/opt/anaconda1anaconda2anaconda3";
    let bin_ph = long_placeholder();
    let env_ph = "/home/user/envs/built-here";
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("conda-meta/x-1.0-0.json", b"{}", 0o644);
    add(
        "etc/x.conf",
        format!("a={text_ph}/lib b={text_ph}\n").as_bytes(),
        0o644,
    );
    let mut so = b"\x7fELF\0".to_vec();
    so.extend_from_slice(format!("{bin_ph}/lib:{bin_ph}/x").as_bytes());
    so.extend_from_slice(b"\0tail");
    add("lib/libx.so", &so, 0o755);
    add(
        "bin/tool",
        format!("#!/usr/bin/env python3\n# {env_ph}\n").as_bytes(),
        0o755,
    );
    add(
        "share/untouched.txt",
        format!("{text_ph}\n").as_bytes(),
        0o644,
    );
    let script = format!(
        "#!/usr/bin/env python\n# Import progress bar to display unpack progress\nfrom conda_unpack_progress import progressbar\n\n\
         def update_prefix(path, new_prefix, placeholder, mode='text'):\n    pass\n\n\
         _prefix_records = [\n{},\n{},\n{},\n{}\n]\n\nif __name__ == '__main__':\n    pass\n",
        format_args!("('etc/x.conf', '{text_ph}', 'text')"),
        format_args!("('lib/libx.so', '{bin_ph}', 'binary')"),
        format_args!("('bin/tool', '{env_ph}', 'text')"),
        format_args!("('lib/gone.txt', '{text_ph}', 'text')"),
    );
    add("bin/conda-unpack", script.as_bytes(), 0o755);
    let archive = d.path().join("cp.tar.bz2");
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&b.into_inner().unwrap()).unwrap();
    std::fs::write(&archive, bz.finish().unwrap()).unwrap();

    let dest = d.path().join("env");
    let o = run_ok(&mut unpack(&archive, &dest, &["--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["origin"], "conda-pack");
    assert_eq!(v["relocated"], 3);
    assert!(
        v["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("lib/gone.txt"),
        "{v}"
    );
    let r = dest.display().to_string();
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/x.conf")).unwrap(),
        format!("a={r}/lib b={r}\n")
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("bin/tool")).unwrap(),
        format!("#!/usr/bin/env python3\n# {r}\n")
    );
    let lib = std::fs::read(dest.join("lib/libx.so")).unwrap();
    let mut expect = b"\x7fELF\0".to_vec();
    expect.extend_from_slice(format!("{r}/lib:{r}/x").as_bytes());
    expect.resize(so.len() - 5, 0);
    expect.extend_from_slice(b"\0tail");
    assert_eq!(lib, expect);
    // Not in the records: untouched. Modes kept, nothing added (no envpack data).
    assert_eq!(
        std::fs::read_to_string(dest.join("share/untouched.txt")).unwrap(),
        format!("{text_ph}\n")
    );
    assert_eq!(
        std::fs::metadata(dest.join("lib/libx.so"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        listing(&dest),
        [
            "bin",
            "bin/conda-unpack",
            "bin/tool",
            "conda-meta",
            "conda-meta/x-1.0-0.json",
            "etc",
            "etc/x.conf",
            "lib",
            "lib/libx.so",
            "share",
            "share/untouched.txt"
        ]
    );
}

// ------------------------------------------------------------------------------------------------
// The fuzz target's seed corpus, replayed through the binary on the stable toolchain
// ------------------------------------------------------------------------------------------------

#[test]
fn fuzz_seed_corpus_never_writes_outside_dest() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/unpack");
    let mut n = 0;
    for seed in std::fs::read_dir(&seeds).unwrap() {
        let seed = seed.unwrap().path();
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "secret\n").unwrap();
        let work = root.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let o = unpack(&seed, &work.join("dest"), &["-q"]).output().unwrap();
        assert_eq!(listing(&outside), ["secret"], "{}", seed.display());
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "secret\n"
        );
        let left = listing(&work);
        if o.status.success() {
            assert!(left.iter().all(|p| p.starts_with("dest")), "{left:?}");
        } else {
            assert_eq!(left, Vec::<String>::new(), "{}", seed.display());
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds");
}
