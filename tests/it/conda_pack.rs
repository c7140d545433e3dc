//! conda-pack's own suite, ported (`conda_pack/tests/test_core.py`: round trip,
//! `--dest-prefix`, anonymised `conda-meta`, include/exclude, editable and missing files,
//! activation), and the conda-pack bugs envpack must not have (hard links, 0600 archives,
//! duplicate members, a missing `conda-meta/history`). Non-reproducible bytes are pinned in
//! [`crate::determinism`], partial output in [`crate::failures`].

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::channel::long_placeholder;
use crate::support::fixture::{DEPS, Fixture, pack_prefix, tool_package};
use crate::support::{
    self, contains, extract, files_containing, first_line, list, members, read, run_err, run_ok,
    sh, snapshot, stderr,
};

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
    sh("bin/conda-unpack", t);
    let real = t.canonicalize().unwrap();
    let out = sh(
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
        sh("bin/greet direct", t),
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
        sh("bin/fake-config", &dest),
        format!("prefix={d}\nlibdir={d}/lib\n")
    );
    let lib = std::fs::read(dest.join("lib/libfake.so")).unwrap();
    assert!(contains(
        &lib,
        format!("{d}/lib:{d}/lib/extra\0").as_bytes()
    ));
    assert_eq!(
        sh("set +u; source bin/activate; greet x", &dest),
        format!("greet {d}/lib/python3.11/site-packages/greet/__init__.py x\n")
    );
    // And running conda-unpack there changes nothing.
    sh("bin/conda-unpack", &dest);
    assert_eq!(before, snapshot(&dest));
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
        // The manifest is envpack's, not a package record.
        if p.extension().is_none_or(|x| x != "json") || p.ends_with("envpack.json") {
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
    let a = members(&a);
    let b = members(&b);
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
    let c = members(&c);
    assert!(!c.iter().any(|m| m.ends_with(".txt")), "{c:?}");
    assert!(c.contains(&"share/doc/tool/README".to_string()));
}

#[test]
fn an_exclude_that_matches_nothing_warns() {
    let f = Fixture::new();
    let out = f.path().join("a.tar");
    let o = f.pack(&out, &["--exclude", "shar/doc", "--exclude", "*.txt"]);
    let err = stderr(&o);
    assert!(
        err.contains("--exclude shar/doc matches nothing in the environment"),
        "{err}"
    );
    assert!(!err.contains("--exclude *.txt"), "{err}");
    // The staged route and --prefix alike; the output written inside the prefix is left
    // out without a word.
    let prefix = f.existing("stage");
    let o = run_ok(&mut pack_prefix(
        &prefix,
        &prefix.join("self.tar"),
        &["--exclude", "no-such-thing"],
    ));
    let err = stderr(&o);
    assert!(
        err.contains("--exclude no-such-thing matches nothing") && !err.contains("self.tar"),
        "{err}"
    );
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
    assert!(members(&out).contains(&"lib/python3.1".to_string()));
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
    let members = members(&out);
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
    sh("bin/conda-unpack", &t);
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
    sh("bin/conda-unpack", &first);
    std::fs::write(
        first.join("etc/added.conf"),
        format!("at={}\n", first.display()),
    )
    .unwrap();
    let out = f.path().join("second.tar.gz");
    run_ok(&mut pack_prefix(&first, &out, &["--no-auto-relocate"]));
    let t = f.path().join("second-place");
    extract(&out, &t);
    sh("bin/conda-unpack", &t);
    let r = t.canonicalize().unwrap();
    assert_eq!(
        read(t.join("etc/added.conf")),
        format!("at={}\n", r.display())
    );
    assert_eq!(
        sh("bin/fake-config; set +u; source bin/activate; greet", &t),
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
    let gnu = members(&out);
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
    sh("bin/conda-unpack", &t);
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

#[test]
fn out_of_range_compression_levels_are_refused() {
    let f = Fixture::new();
    let prefix = f.existing("stage");
    for (name, level, message) in [
        (
            "env.tar.gz",
            "10",
            "compression level 10 is out of range: gzip takes 0 to 9",
        ),
        (
            "env.tar.zst",
            "23",
            "compression level 23 is out of range: zstd takes",
        ),
    ] {
        let out = f.path().join(name);
        let err = run_err(&mut pack_prefix(
            &prefix,
            &out,
            &["--compress-level", level],
        ));
        assert!(stderr(&err).contains(message), "{}", stderr(&err));
        assert!(!out.exists());
    }
    // The ends of the ranges are fine, and gzip reads level 0 (stored) and 9.
    for level in ["0", "9"] {
        let out = f.path().join(format!("level{level}.tar.gz"));
        run_ok(&mut pack_prefix(
            &prefix,
            &out,
            &["--compress-level", level],
        ));
        run_ok(Command::new("gzip").arg("-t").arg(&out));
    }
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
        assert!(members(&out).contains(&"conda-meta/history".to_string()));
    }
}
