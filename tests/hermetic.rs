//! Hermetic tests: small conda packages built at test time (`support::channel`), served from a
//! `file://` channel, packed by the real binary, extracted and used.
//!
//! They port the ideas of conda-pack's own suite (`conda_pack/tests/test_core.py`: round trip,
//! `--dest-prefix`, anonymised `conda-meta`, include/exclude, editable and missing files,
//! activation) and pin the conda-pack bugs envpack must not have (hard links, 0600 archives,
//! non-reproducible bytes, duplicate members, a missing `conda-meta/history`, partial output).
// Test-only noise: short names (f = fixture, t = target) read best in these scenarios.
#![allow(clippy::missing_panics_doc, clippy::many_single_char_names)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::channel::{Channel, Package, Prefix, fake_python, long_placeholder};
use support::{envpack, extract, files_containing, list, run_err, run_ok, sh};

/// Every package of the fixture environment.
const DEPS: &[&str] = &["python", "tool", "greet", "dup-a", "dup-b"];

/// A channel of small packages and an environment file using it, in a temporary folder.
struct Fixture {
    dir: tempfile::TempDir,
}

fn tool_package() -> Package {
    let ph = long_placeholder();
    Package::new("tool", "1.0")
        .tar_bz2()
        .depends("python")
        // `#!<prefix>/bin/python3.11`: conda-pack's `#!/usr/bin/env python3.11` form.
        .with_prefix("bin/plain-py", Prefix::Text, &ph, true, |ph| {
            format!("#!{ph}/bin/python3.11\nimport sys\nprint('plain', *sys.argv[1:])\n")
                .into_bytes()
        })
        // With an option, `env` would get `python3.11 -E` as one word on Linux.
        .with_prefix("bin/opt-py", Prefix::Text, &ph, true, |ph| {
            format!(
                "#!{ph}/bin/python3.11 -E\nimport sys\nprint('opt', sys.flags.ignore_environment)\n"
            )
            .into_bytes()
        })
        .exe("bin/mysh", "#!/bin/sh\nexec /bin/sh \"$@\"\n")
        // A non-Python interpreter with an option: `env -S`.
        .with_prefix("bin/opt-sh", Prefix::Text, &ph, true, |ph| {
            format!(
                "#!{ph}/bin/mysh -e\ncase $- in *e*) echo opt-sh -e ;; *) echo opt-sh ;; esac\n"
            )
            .into_bytes()
        })
        .with_prefix("share/tool/paths.txt", Prefix::Text, &ph, false, |ph| {
            format!("data={ph}/share/tool\n").into_bytes()
        })
        .with_prefix("lib/libtool.so", Prefix::Binary, &ph, false, |ph| {
            let mut v = b"\x7fELF\x02\x01\x01\0\xff\xfe".to_vec();
            v.extend_from_slice(format!("{ph}/share/tool").as_bytes());
            v.extend_from_slice(b"\0end\0");
            v
        })
        .file(
            "etc/conda/activate.d/tool.sh",
            "TOOL_ACTIVATED=1\nexport TOOL_ACTIVATED\n",
        )
        .file("etc/conda/deactivate.d/tool.sh", "unset TOOL_ACTIVATED\n")
        .file("share/doc/tool/README", "read me\n")
        .file("share/doc/tool/keep/LICENSE", "BSD\n")
        .file("share/tool/notes.txt", "no prefix here\n")
}

fn packages() -> Vec<Package> {
    vec![
        fake_python(),
        tool_package(),
        Package::new("greet", "1.0")
            .depends("python")
            .noarch_python(&["greet = greet:main"])
            .file(
                "site-packages/greet/__init__.py",
                "import sys\n\ndef main():\n    print('greet', __file__, *sys.argv[1:])\n",
            ),
        Package::new("dup-a", "1.0").file("share/dup/same.txt", "from a\n"),
        Package::new("dup-b", "1.0")
            .tar_bz2()
            .file("share/dup/same.txt", "from b\n"),
    ]
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut chan = Channel::new(&dir.path().join("channels/local"));
        for p in packages() {
            chan.add(p);
        }
        chan.write();
        let f = Fixture { dir };
        f.env_file(DEPS);
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `environment.yml` with these dependencies from the `local` channel.
    fn env_file(&self, deps: &[&str]) -> PathBuf {
        support::write_environment(self.path(), "hermetic", &["local"], deps)
    }

    /// `envpack pack environment.yml -o OUT` with the channel alias pointing at the fixture.
    fn pack_cmd(&self, out: &Path) -> Command {
        let mut c = envpack();
        c.arg("pack")
            .arg(self.path().join("environment.yml"))
            .arg("-o")
            .arg(out)
            .arg("--channel-alias")
            .arg(format!("file://{}/channels/", self.path().display()))
            .args(["--platform", "linux-64", "-q"]);
        c
    }

    fn pack(&self, out: &Path, extra: &[&str]) -> Output {
        run_ok(self.pack_cmd(out).args(extra))
    }

    /// An existing environment: the staging prefix of a pack kept with `--keep-work`.
    fn existing(&self, name: &str) -> PathBuf {
        let work = self.path().join(name);
        self.pack(
            &self.path().join(format!("{name}.tar")),
            &["--keep-work", "--work-dir", work.to_str().unwrap()],
        );
        let staging = support::kept_work_folder(&work);
        let prefix = staging.join("env");
        assert!(prefix.join("conda-meta").is_dir(), "{}", prefix.display());
        prefix
    }
}

/// `envpack pack --prefix PREFIX -o OUT`.
fn pack_prefix(prefix: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = envpack();
    c.arg("pack")
        .arg("--prefix")
        .arg(prefix)
        .arg("-o")
        .arg(out)
        .arg("--no-progress")
        .args(extra);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn first_line(path: impl AsRef<Path>) -> String {
    read(path).lines().next().unwrap_or_default().to_string()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `bash -c script` in `dir`, returning stdout (asserting success).
fn bash(script: &str, dir: &Path) -> String {
    sh(script, dir)
}

// ------------------------------------------------------------------------------------------------
// conda-pack's round trip
// ------------------------------------------------------------------------------------------------

#[test]
fn shebangs_become_portable_and_every_script_runs_after_conda_unpack() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    f.pack(&out, &["--no-auto-relocate"]);
    // Extract to a path longer than the kernel's 127-byte shebang limit.
    let target = f.path().join(format!("x{}", "long".repeat(40)));
    extract(&out, &target);
    let t = &target;
    // Python scripts run the interpreter next to them, whatever PATH holds.
    let trampoline = envpack::python_trampoline("python3.11", "");
    assert!(read(t.join("bin/plain-py")).starts_with(&trampoline));
    assert_eq!(
        first_line(t.join("bin/opt-sh")),
        "#!/usr/bin/env -S mysh -e"
    );
    let opt = read(t.join("bin/opt-py"));
    assert!(opt.starts_with("#!/bin/sh\n'''true';"), "{opt}");
    assert!(opt.contains("/python3.11\" -E \"$0\" \"$@\""), "{opt}");
    // The entry point rattler generated with the staging prefix in its shebang.
    assert!(read(t.join("bin/greet")).starts_with(&trampoline));
    for script in [
        "plain-py",
        "opt-py",
        "opt-sh",
        "greet",
        "conda-unpack",
        "fake-config",
    ] {
        let line = first_line(t.join("bin").join(script));
        assert!(line.len() <= 127, "{script}: {line}");
    }
    bash("bin/conda-unpack", t);
    let real = t.canonicalize().unwrap();
    let out = bash(
        "set +u; source bin/activate; plain-py a b; bin/opt-py; opt-sh; greet hi; fake-config",
        t,
    );
    assert_eq!(
        out,
        format!(
            "plain a b\nopt 1\nopt-sh -e\ngreet {r}/lib/python3.11/site-packages/greet/__init__.py hi\nprefix={r}\nlibdir={r}/lib\n",
            r = real.display()
        )
    );
    // Run by path, without activation, an entry point still uses the environment's Python.
    assert_eq!(
        bash("bin/greet direct", t),
        format!(
            "greet {}/lib/python3.11/site-packages/greet/__init__.py direct\n",
            real.display()
        )
    );
    assert_eq!(
        read(t.join("share/tool/paths.txt")),
        format!("data={}/share/tool\n", real.display())
    );
    let lib = std::fs::read(t.join("lib/libtool.so")).unwrap();
    assert!(contains(
        &lib,
        format!("{}/share/tool\0", real.display()).as_bytes()
    ));
    // C strings are rewritten in place: the file keeps the length it was built with.
    let built = tool_package()
        .files
        .into_iter()
        .find(|f| f.path == "lib/libtool.so")
        .unwrap();
    assert_eq!(lib.len(), built.data.len());
}

#[test]
fn conda_unpack_answers_help_and_version() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    f.pack(&out, &[]);
    let t = f.path().join("x");
    extract(&out, &t);
    let help = run_ok(Command::new(t.join("bin/conda-unpack")).arg("--help"));
    assert!(
        String::from_utf8_lossy(&help.stdout).starts_with("usage: conda-unpack"),
        "{help:?}"
    );
    let version = run_ok(Command::new(t.join("bin/conda-unpack")).arg("--version"));
    let text = String::from_utf8_lossy(&version.stdout).into_owned()
        + &String::from_utf8_lossy(&version.stderr);
    assert!(text.starts_with("conda-unpack"), "{text}");
}

#[test]
fn activate_then_conda_unpack_then_deactivate_in_bash_and_dash() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    f.pack(&out, &["--no-auto-relocate"]);
    let t = f.path().join("x");
    extract(&out, &t);
    let script = ". \"$PWD/bin/activate\" && test \"$TOOL_ACTIVATED\" -eq 1 && \
                  conda-unpack && . \"$PWD/bin/deactivate\" && test -z \"${TOOL_ACTIVATED:-}\" && \
                  echo Done";
    for shell in ["bash", "dash"] {
        let out = run_ok(Command::new(shell).arg("-c").arg(script).current_dir(&t));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Done\n",
            "{shell}: {out:?}"
        );
    }
    assert!(
        read(t.join("bin/fake-config"))
            .contains(&format!("prefix={}", t.canonicalize().unwrap().display()))
    );
}

#[test]
fn dest_prefix_relocates_at_pack_time_and_leaves_no_old_prefix() {
    let f = Fixture::new();
    let dest = f.path().join("final/location");
    let out = f.path().join("env.tar");
    let work = f.path().join("work");
    f.pack(
        &out,
        &[
            "--dest-prefix",
            dest.to_str().unwrap(),
            "--keep-work",
            "--work-dir",
            work.to_str().unwrap(),
        ],
    );
    let raw = std::fs::read(&out).unwrap();
    for old in [work.to_str().unwrap(), envpack::ARCHIVE_PREFIX] {
        assert!(!contains(&raw, old.as_bytes()), "the archive holds {old}");
    }
    extract(&out, &dest);
    // Only the records still name the packages' build placeholder (`prefix_placeholder`).
    let ph = long_placeholder();
    let holding: Vec<String> = files_containing(&dest, ph.as_bytes())
        .into_iter()
        .filter(|f| !f.starts_with("conda-meta/"))
        .collect();
    assert_eq!(holding, Vec::<String>::new());
    let before = snapshot(&dest);
    // No unpack step: everything already names the destination.
    let d = dest.display();
    assert_eq!(
        bash("bin/fake-config", &dest),
        format!("prefix={d}\nlibdir={d}/lib\n")
    );
    let lib = std::fs::read(dest.join("lib/libfake.so")).unwrap();
    assert!(contains(
        &lib,
        format!("{d}/lib:{d}/lib/extra\0").as_bytes()
    ));
    assert_eq!(
        bash("set +u; source bin/activate; greet x", &dest),
        format!("greet {d}/lib/python3.11/site-packages/greet/__init__.py x\n")
    );
    // And running conda-unpack there changes nothing.
    bash("bin/conda-unpack", &dest);
    assert_eq!(before, snapshot(&dest));
}

/// Relative path → (content or link target), for every file and symlink below `dir`.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    support::tree(dir)
        .into_iter()
        .map(|(rel, path, link)| {
            let bytes = if link {
                std::fs::read_link(path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(path).unwrap()
            };
            (rel, bytes)
        })
        .collect()
}

#[test]
fn conda_meta_records_name_no_build_machine_path() {
    let f = Fixture::new();
    let out = f.path().join("env.tar");
    let work = f.path().join("work");
    f.pack(&out, &["--keep-work", "--work-dir", work.to_str().unwrap()]);
    // (The channel's own URL is in the records, as conda records it: here a file:// URL.)
    let raw = std::fs::read(&out).unwrap();
    for machine in [
        work.to_str().unwrap(),
        support::cache_dir().to_str().unwrap(),
    ] {
        assert!(
            !contains(&raw, machine.as_bytes()),
            "the archive holds {machine}"
        );
    }
    let t = f.path().join("x");
    extract(&out, &t);
    let mut n = 0;
    for e in std::fs::read_dir(t.join("conda-meta")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        n += 1;
        let v: serde_json::Value = serde_json::from_str(&read(&p)).unwrap();
        for key in ["extracted_package_dir", "package_tarball_full_path"] {
            assert!(
                v.get(key).is_none_or(|x| x == ""),
                "{}: {key} = {}",
                p.display(),
                v[key]
            );
        }
        if let Some(link) = v.get("link").filter(|l| l.is_object()) {
            assert!(
                link.get("source").is_none_or(|x| x == ""),
                "{}",
                p.display()
            );
        }
    }
    assert_eq!(n, DEPS.len());
}

// ------------------------------------------------------------------------------------------------
// Collection: filters, editable installs, missing files, unmanaged files, symlinks
// ------------------------------------------------------------------------------------------------

fn members_of(archive: &Path) -> Vec<String> {
    list(archive)
        .into_iter()
        .map(|m| m.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn include_and_exclude_apply_in_command_line_order() {
    let f = Fixture::new();
    let a = f.path().join("a.tar");
    let b = f.path().join("b.tar");
    // conda-pack #162: `share/doc/*` matches files in folders below share/doc.
    f.pack(
        &a,
        &[
            "--exclude",
            "share/doc/*",
            "--include",
            "share/doc/tool/keep/*",
        ],
    );
    f.pack(
        &b,
        &[
            "--include",
            "share/doc/tool/keep/*",
            "--exclude",
            "share/doc/*",
        ],
    );
    let a = members_of(&a);
    let b = members_of(&b);
    assert!(
        a.contains(&"share/doc/tool/keep/LICENSE".to_string()),
        "{a:?}"
    );
    assert!(!a.contains(&"share/doc/tool/README".to_string()), "{a:?}");
    assert!(!b.iter().any(|m| m.starts_with("share/doc/tool/")), "{b:?}");
    // Everything else is untouched.
    for m in ["bin/plain-py", "share/tool/notes.txt", "lib/libfake.so"] {
        assert!(
            a.contains(&m.to_string()) && b.contains(&m.to_string()),
            "{m}"
        );
    }
    // A pattern without `/` matches names anywhere.
    let c = f.path().join("c.tar");
    f.pack(&c, &["--exclude", "*.txt"]);
    let c = members_of(&c);
    assert!(!c.iter().any(|m| m.ends_with(".txt")), "{c:?}");
    assert!(c.contains(&"share/doc/tool/README".to_string()));
}

#[test]
fn editable_installs_are_an_error_naming_them_unless_ignored() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    let dist = prefix.join("lib/python3.11/site-packages/mine-0.1.dist-info");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::write(
        dist.join("direct_url.json"),
        r#"{"url": "file:///src/mine", "dir_info": {"editable": true}}"#,
    )
    .unwrap();
    let out = f.path().join("env.tar.gz");
    let err = run_err(&mut pack_prefix(&prefix, &out, &[]));
    assert!(
        stderr(&err).contains("mine-0.1.dist-info"),
        "{}",
        stderr(&err)
    );
    assert!(
        stderr(&err).contains("--ignore-editable-packages"),
        "{}",
        stderr(&err)
    );
    assert!(!out.exists());
    let ok = run_ok(&mut pack_prefix(
        &prefix,
        &out,
        &["--ignore-editable-packages"],
    ));
    assert!(
        stderr(&ok).contains("mine-0.1.dist-info"),
        "{}",
        stderr(&ok)
    );
    assert!(out.is_file());
}

#[test]
fn missing_managed_files_are_listed_unless_ignored_and_python3_1_is_no_false_positive() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    // Python >= 3.10 environments hold `lib/python3.1` -> python3.11: present, not missing.
    assert!(prefix.join("lib/python3.1").is_symlink());
    let out = f.path().join("env.tar");
    run_ok(&mut pack_prefix(&prefix, &out, &[]));
    assert!(members_of(&out).contains(&"lib/python3.1".to_string()));
    std::fs::remove_file(prefix.join("share/tool/notes.txt")).unwrap();
    std::fs::remove_file(prefix.join("share/doc/tool/README")).unwrap();
    let out = f.path().join("missing.tar");
    let err = run_err(&mut pack_prefix(&prefix, &out, &[]));
    let text = stderr(&err);
    assert!(
        text.contains("share/tool/notes.txt") && text.contains("share/doc/tool/README"),
        "{text}"
    );
    assert!(text.contains("--ignore-missing-files"), "{text}");
    assert!(
        !text.contains("python3.1,") && !text.contains("python3.1\n"),
        "{text}"
    );
    assert!(!out.exists());
    // Excluding the missing files is as good as ignoring them.
    run_ok(&mut pack_prefix(
        &prefix,
        &out,
        &["--exclude", "share/doc", "--exclude", "*.txt"],
    ));
    run_ok(&mut pack_prefix(
        &prefix,
        &out,
        &["--ignore-missing-files", "--force"],
    ));
    let members = members_of(&out);
    assert!(!members.contains(&"share/tool/notes.txt".to_string()));
    assert!(members.contains(&"share/tool/paths.txt".to_string()));
}

#[test]
fn unmanaged_files_holding_the_prefix_text_relocated_binary_reported() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    let p = prefix.to_str().unwrap();
    std::fs::write(
        prefix.join("etc/mine.conf"),
        format!("root={p}\ncache={p}/var\n"),
    )
    .unwrap();
    let mut blob = b"\x7fELF\0\xff\xfe".to_vec();
    blob.extend_from_slice(format!("{p}/lib\0tail").as_bytes());
    std::fs::write(prefix.join("lib/libmine.so"), &blob).unwrap();
    let out = f.path().join("env.tar.gz");
    let ok = run_ok(&mut pack_prefix(&prefix, &out, &["--no-auto-relocate"]));
    let text = stderr(&ok);
    assert!(
        text.contains("warning:") && text.contains("lib/libmine.so"),
        "{text}"
    );
    assert!(!text.contains("etc/mine.conf"), "{text}");
    let t = f.path().join("x");
    extract(&out, &t);
    bash("bin/conda-unpack", &t);
    let r = t.canonicalize().unwrap();
    assert_eq!(
        read(t.join("etc/mine.conf")),
        format!("root={r}\ncache={r}/var\n", r = r.display())
    );
    // Relocated to a prefix that fits, length kept.
    let lib = std::fs::read(t.join("lib/libmine.so")).unwrap();
    assert_eq!(lib.len(), blob.len());
    assert!(contains(&lib, format!("{}/lib\0", r.display()).as_bytes()));
}

#[test]
fn symlinks_into_the_prefix_become_relative_and_others_are_kept_with_a_warning() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    std::os::unix::fs::symlink(prefix.join("lib/libfake.so"), prefix.join("lib/abs.so")).unwrap();
    std::os::unix::fs::symlink(prefix.join("share/tool"), prefix.join("share/tool-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", prefix.join("share/outside")).unwrap();
    let out = f.path().join("env.tar");
    let ok = run_ok(&mut pack_prefix(&prefix, &out, &[]));
    let text = stderr(&ok);
    assert!(
        text.contains("share/outside") && text.contains("/etc/hostname"),
        "{text}"
    );
    assert!(!text.contains("abs.so"), "{text}");
    let t = f.path().join("x");
    extract(&out, &t);
    assert_eq!(
        std::fs::read_link(t.join("lib/abs.so")).unwrap(),
        Path::new("../lib/libfake.so")
    );
    assert_eq!(
        std::fs::read_link(t.join("share/tool-link")).unwrap(),
        Path::new("../share/tool")
    );
    assert_eq!(
        std::fs::read_link(t.join("share/outside")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(
        std::fs::read_link(t.join("bin/python")).unwrap(),
        Path::new("python3.11")
    );
    assert!(t.join("share/tool-link/notes.txt").is_file());
    // Moved away, the staging prefix no longer backs any link.
    std::fs::rename(&prefix, prefix.with_file_name("gone")).unwrap();
    assert!(std::fs::read(t.join("lib/abs.so")).is_ok());
}

#[test]
fn an_environment_packed_as_a_folder_is_packed_again_from_its_prefix() {
    // conda-pack #106: moving an environment twice.
    let f = Fixture::new();
    let first = f.path().join("first");
    f.pack(&first, &["--format", "dir", "--no-auto-relocate"]);
    assert!(first.join("conda-meta").is_dir());
    bash("bin/conda-unpack", &first);
    std::fs::write(
        first.join("etc/added.conf"),
        format!("at={}\n", first.display()),
    )
    .unwrap();
    let out = f.path().join("second.tar.gz");
    run_ok(&mut pack_prefix(&first, &out, &["--no-auto-relocate"]));
    let t = f.path().join("second-place");
    extract(&out, &t);
    bash("bin/conda-unpack", &t);
    let r = t.canonicalize().unwrap();
    assert_eq!(
        read(t.join("etc/added.conf")),
        format!("at={}\n", r.display())
    );
    assert_eq!(
        bash("bin/fake-config; set +u; source bin/activate; greet", &t),
        format!(
            "prefix={r}\nlibdir={r}/lib\ngreet {r}/lib/python3.11/site-packages/greet/__init__.py\n",
            r = r.display()
        )
    );
    let first_path = first.to_str().unwrap();
    assert_eq!(
        files_containing(&t, first_path.as_bytes()),
        Vec::<String>::new()
    );
}

#[test]
fn arcroot_puts_everything_in_one_folder() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    f.pack(&out, &["--arcroot", "myenv"]);
    let members = members_of(&out);
    assert!(
        members
            .iter()
            .all(|m| m == "myenv" || m.starts_with("myenv/")),
        "{members:?}"
    );
    assert!(members.contains(&"myenv/bin/conda-unpack".to_string()));
    let t = f.path().join("x");
    extract(&out, &t);
    bash("myenv/bin/conda-unpack", &t);
    let r = t.join("myenv").canonicalize().unwrap();
    assert_eq!(
        bash("myenv/bin/fake-config", &t),
        format!("prefix={r}\nlibdir={r}/lib\n", r = r.display())
    );
}

#[test]
fn format_follows_the_extension() {
    let f = Fixture::new();
    let mut listings = Vec::new();
    for (name, magic) in [
        ("env.tar.gz", &b"\x1f\x8b"[..]),
        ("env.tgz", &b"\x1f\x8b"[..]),
        ("env.tar.zst", &b"\x28\xb5\x2f\xfd"[..]),
        ("env.tar", &b""[..]),
    ] {
        let out = f.path().join(name);
        f.pack(&out, &[]);
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(magic), "{name}");
        if magic.is_empty() {
            assert_eq!(&bytes[257..262], b"ustar", "{name}");
        }
        listings.push(members_of(&out));
    }
    for l in &listings[1..] {
        assert_eq!(l, &listings[0]);
    }
    let dir = f.path().join("env-dir");
    f.pack(&dir, &["--format", "dir"]);
    assert!(dir.join("bin/conda-unpack").is_file());
    assert!(std::fs::read_link(dir.join("bin/python")).is_ok());
    // The folder holds what the archives hold.
    let t = f.path().join("from-tar");
    extract(&f.path().join("env.tar"), &t);
    assert_eq!(snapshot(&dir), snapshot(&t));
}

// ------------------------------------------------------------------------------------------------
// conda-pack's bugs, pinned
// ------------------------------------------------------------------------------------------------

#[test]
fn hard_linked_files_both_rewritten_give_a_tar_gnu_tar_and_python_read_completely() {
    // conda-pack #70: the second of two hard links was written as a link entry plus data.
    let f = Fixture::new();
    let prefix = f.existing("stage");
    let p = prefix.to_str().unwrap();
    std::fs::write(prefix.join("etc/one.conf"), format!("root={p}\n")).unwrap();
    std::fs::hard_link(prefix.join("etc/one.conf"), prefix.join("etc/two.conf")).unwrap();
    // A managed file, hard-linked too (as an installer linking from its cache leaves them).
    std::fs::hard_link(
        prefix.join("share/tool/paths.txt"),
        prefix.join("share/tool/paths2.txt"),
    )
    .unwrap();
    let out = f.path().join("env.tar");
    run_ok(&mut pack_prefix(&prefix, &out, &["--no-auto-relocate"]));
    let verbose = run_ok(Command::new("tar").arg("-tvf").arg(&out));
    let verbose = String::from_utf8_lossy(&verbose.stdout);
    assert!(
        !verbose
            .lines()
            .any(|l| l.starts_with('h') || l.contains(" link to ")),
        "{verbose}"
    );
    let gnu = members_of(&out);
    let py = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, tarfile\n\
         with tarfile.open(sys.argv[1]) as t:\n\
         \x20   for m in t.getmembers():\n\
         \x20       assert not m.islnk(), m.name\n\
         \x20       if m.isfile():\n\
         \x20           assert len(t.extractfile(m).read()) == m.size, m.name\n\
         \x20       print(m.name)\n",
            )
            .arg(&out),
    );
    let py: Vec<String> = String::from_utf8_lossy(&py.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(py, gnu);
    assert!(
        py.contains(&"etc/two.conf".to_string())
            && py.contains(&"share/tool/paths2.txt".to_string())
    );
    let t = f.path().join("x");
    extract(&out, &t);
    bash("bin/conda-unpack", &t);
    let r = t.canonicalize().unwrap();
    for name in ["etc/one.conf", "etc/two.conf"] {
        assert_eq!(
            read(t.join(name)),
            format!("root={}\n", r.display()),
            "{name}"
        );
    }
    assert_eq!(
        read(t.join("share/tool/paths2.txt")),
        format!("data={}/share/tool\n", r.display())
    );
}

#[test]
fn archive_mode_is_0644_less_the_umask_never_0600() {
    let f = Fixture::new();
    for (umask, want) in [("022", 0o644), ("027", 0o640), ("002", 0o644)] {
        let out = f.path().join(format!("env-{umask}.tar.gz"));
        let cmd = f.pack_cmd(&out);
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        run_ok(&mut sh);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "umask {umask}: {mode:o}");
    }
}

/// Asserts two archives are the same bytes; if not, names the members that differ.
fn assert_same_bytes(a: &Path, b: &Path) {
    if std::fs::read(a).unwrap() == std::fs::read(b).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("a"), dir.path().join("b"));
    extract(a, &x);
    extract(b, &y);
    let (sx, sy) = (snapshot(&x), snapshot(&y));
    let differ: Vec<&String> = sx
        .iter()
        .zip(&sy)
        .filter(|(p, q)| p != q)
        .map(|(p, _)| &p.0)
        .collect();
    panic!(
        "{} and {} differ; members: {} vs {}, first differing: {differ:?}",
        a.display(),
        b.display(),
        sx.len(),
        sy.len()
    );
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
    }
    // The same for an existing environment packed from two places.
    let one = f.existing("one");
    let two = f.existing("two-elsewhere");
    let (a, b) = (f.path().join("p1.tar.gz"), f.path().join("p2.tar.gz"));
    run_ok(&mut pack_prefix(&one, &a, &["-j", "1"]));
    run_ok(&mut pack_prefix(&two, &b, &["-j", "2"]));
    assert_same_bytes(&a, &b);
}

#[test]
fn two_packages_providing_one_path_give_one_member() {
    let f = Fixture::new();
    let out = f.path().join("env.tar");
    f.pack(&out, &[]);
    let mut members = list(&out);
    let n = members.len();
    members.sort();
    members.dedup();
    assert_eq!(members.len(), n, "duplicate members");
    assert!(members.contains(&"share/dup/same.txt".to_string()));
    // Also when both records of an existing environment claim the path.
    let prefix = f.existing("stage");
    let out = f.path().join("again.tar");
    run_ok(&mut pack_prefix(&prefix, &out, &[]));
    let mut members = list(&out);
    let n = members.len();
    members.dedup();
    assert_eq!(members.len(), n, "duplicate members");
}

#[test]
fn a_missing_conda_meta_history_is_fine() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    let _ = std::fs::remove_file(prefix.join("conda-meta/history"));
    for ext in ["tar", "tar.gz", "tar.zst"] {
        let out = f.path().join(format!("env.{ext}"));
        run_ok(&mut pack_prefix(&prefix, &out, &[]));
        assert!(members_of(&out).contains(&"conda-meta/history".to_string()));
    }
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
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x.to_le_bytes()[0]);
    }
    std::fs::write(prefix.join("share/big.bin"), &noise).unwrap();
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
