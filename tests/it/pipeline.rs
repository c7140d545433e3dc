//! An environment file packed end to end: the archive's layout, its relocation records,
//! entry points that run from the extraction, variables, and the output formats.

use std::path::Path;
use std::process::Command;

use crate::support::fixture::Fixture;
use crate::support::{self, envpack, extract, members, run_ok, sh, snapshot};

#[test]
fn packs_a_relocatable_archive_with_the_expected_layout() {
    let f = Fixture::new();
    f.env_text(&format!(
        "name: t\nchannels: [{}]\ndependencies: [python, greet, tool]\n",
        f.channel_url()
    ));
    let out = f.path().join("out.tar.gz");
    f.pack(&out, &[]);

    // Mode 0644 (less umask), never 0600.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions())
            & 0o777;
    assert_eq!(mode & 0o044, 0o044, "archive mode {mode:o}");

    // Layout: every member at the root, relative, sorted, owner 0, mtime 0, no hard links,
    // no duplicates; read completely by Python's tarfile.
    let script = r"
import sys, tarfile
t = tarfile.open(sys.argv[1])
names = []
for m in t:
    assert not m.name.startswith('/') and '..' not in m.name.split('/'), m.name
    assert not m.islnk(), m.name
    assert m.uid == 0 and m.gid == 0 and m.mtime == 0, m.name
    if m.issym():
        assert not m.linkname.startswith('/'), (m.name, m.linkname)
    names.append(m.name)
assert len(names) == len(set(names)), 'duplicates'
print('\n'.join(names))
";
    let listing = run_ok(Command::new("python3").arg("-c").arg(script).arg(&out));
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for expected in [
        "bin/activate",
        "bin/deactivate",
        "bin/conda-unpack",
        "bin/greet",
        "conda-meta/history",
        "share/envpack/relocations.json",
        "share/envpack/location",
        "share/envpack/auto-relocate",
        "lib/python3.11/site-packages/greet/__init__.py",
        "lib/python3.11/site-packages/envpack-relocate.pth",
        "lib/libtool.so.2",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "CACHEDIR.TAG"));

    // Relocation records: text and binary files with the placeholder's room.
    let x = f.path().join("x");
    extract(&out, &x);
    let rel: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("share/envpack/relocations.json")).unwrap())
            .unwrap();
    assert_eq!(rel["prefix"], envpack::ARCHIVE_PREFIX);
    let files = rel["files"].as_array().unwrap();
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f[0] == p)
            .unwrap_or_else(|| panic!("{p} not recorded in {files:?}"))
    };
    assert_eq!(find("etc/tool.conf")[1], "text");
    assert_eq!(find("lib/libtool.so")[1], "binary");
    assert_eq!(find("lib/libtool.so")[2], 255);
    assert_eq!(find("lib/libfake.so")[1], "binary");
    // The entry point's shebang became location-independent, so it needs no record.
    assert!(!files.iter().any(|f| f[0] == "bin/greet"), "{files:?}");
    let greet = std::fs::read_to_string(x.join("bin/greet")).unwrap();
    assert!(
        greet.starts_with(&envpack::python_trampoline("python3.11", "")),
        "{greet}"
    );

    // The files hold the archive prefix, padded to the original length for binaries.
    let conf = std::fs::read_to_string(x.join("etc/tool.conf")).unwrap();
    assert_eq!(
        conf,
        format!(
            "home={p}\ndata={p}/share/tool\n",
            p = envpack::ARCHIVE_PREFIX
        )
    );
    let lib = std::fs::read(x.join("lib/libtool.so")).unwrap();
    assert_eq!(lib.len(), 5 + 255 + "/share/tool\0".len() + 16);
    // Symlinks stay relative.
    assert_eq!(
        std::fs::read_link(x.join("lib/libtool.so.2")).unwrap(),
        Path::new("libtool.so")
    );

    // conda-unpack relocates to the extraction path, binary length kept.
    run_ok(&mut Command::new(x.join("bin/conda-unpack")));
    let real = x.canonicalize().unwrap();
    let conf = std::fs::read_to_string(x.join("etc/tool.conf")).unwrap();
    assert_eq!(
        conf,
        format!("home={p}\ndata={p}/share/tool\n", p = real.display())
    );
    let lib2 = std::fs::read(x.join("lib/libtool.so")).unwrap();
    assert_eq!(lib2.len(), lib.len());
    let s = &lib2[5..];
    let end = s.iter().position(|&b| b == 0).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&s[..end]),
        format!("{}/share/tool", real.display())
    );
    // The entry point runs with the environment's interpreter.
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(". bin/activate && greet")
            .current_dir(&x),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "greet {}/lib/python3.11/site-packages/greet/__init__.py",
            real.display()
        )
    );
}

#[test]
fn variables_are_set_by_activate_and_restored_by_deactivate() {
    let f = Fixture::new();
    f.env_text(&format!(
        "channels: [{}]\ndependencies: [tool]\nvariables:\n  MODEL_MODE: fast\n",
        f.channel_url()
    ));
    let out = f.path().join("out.tar.gz");
    f.pack(&out, &[]);
    let x = f.path().join("x");
    extract(&out, &x);
    let out = run_ok(Command::new("bash").arg("-euc").arg("MODEL_MODE=old; source bin/activate; echo $MODEL_MODE; source bin/deactivate; echo $MODEL_MODE").current_dir(&x));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fast\nold\n");
}

#[test]
fn arcroot_puts_everything_in_one_folder() {
    let f = Fixture::new();
    let out = f.path().join("env.tar.gz");
    f.pack(&out, &["--arcroot", "myenv"]);
    let members = members(&out);
    assert!(
        members
            .iter()
            .all(|m| m == "myenv" || m.starts_with("myenv/")),
        "{members:?}"
    );
    assert!(members.contains(&"myenv/bin/conda-unpack".to_string()));
    let t = f.path().join("x");
    extract(&out, &t);
    sh("myenv/bin/conda-unpack", &t);
    let r = t.join("myenv").canonicalize().unwrap();
    assert_eq!(
        sh("myenv/bin/fake-config", &t),
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
        listings.push(members(&out));
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
    // The same but for the format the manifest names.
    let manifest = "conda-meta/envpack.json";
    let without = |root: &Path| {
        let mut s = snapshot(root);
        s.retain(|(rel, _)| rel != manifest);
        s
    };
    assert_eq!(without(&dir), without(&t));
}

#[test]
fn an_output_inside_the_packed_environment_is_not_packed_into_the_next_archive() {
    let f = Fixture::new();
    let env = f.env_text(&format!(
        "channels: [{}]\ndependencies: [tool]\n",
        f.channel_url()
    ));
    let prefix = f.path().join("env");
    run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(&prefix)
            .args(["--format", "dir", "-q"]),
    );
    let out = prefix.join("share/env.tar");
    for _ in 0..2 {
        run_ok(
            envpack()
                .arg("pack")
                .arg("-p")
                .arg(&prefix)
                .arg("-o")
                .arg(&out)
                .args(["-q", "--force"]),
        );
    }
    let members = support::list(&out);
    assert!(members.iter().any(|m| m == "etc/tool.conf"), "{members:?}");
    assert!(
        !members.iter().any(|m| m.contains("env.tar")),
        "{members:?}"
    );
}

#[test]
fn elf_files_needing_a_newer_glibc_than_the_target_are_named_on_both_routes() {
    // A package whose metadata says nothing of glibc, holding this machine's `ls`.
    let d = tempfile::tempdir().unwrap();
    let ls = std::path::PathBuf::from("/bin/ls");
    let needed = *support::readelf_glibc_needs(std::slice::from_ref(&ls))
        .get(&ls)
        .expect("this machine's /bin/ls needs a versioned glibc symbol");
    let mut chan = support::channel::Channel::new(&d.path().join("channel"));
    chan.add(
        support::channel::Package::new("native", "1.0")
            .exe("bin/native", std::fs::read(&ls).unwrap())
            .file("share/native/readme.txt", "not ELF\n"),
    );
    chan.write();
    support::write_environment(
        d.path(),
        "native",
        &[&format!("file://{}", d.path().join("channel").display())],
        &["native"],
    );
    for route in [&[][..], &["--via-prefix"]] {
        let pack = |glibc: u32| {
            let out = run_ok(
                envpack()
                    .arg("pack")
                    .arg(d.path().join("environment.yml"))
                    .arg("-o")
                    .arg(d.path().join(format!("out-{glibc}-{}.tar.gz", route.len())))
                    .args(["--platform", "linux-64", "--glibc"])
                    .arg(format!("2.{glibc}"))
                    .args(route),
            );
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let older = pack(needed - 1);
        assert!(
            older.contains(&format!(
                "1 ELF file needs a newer glibc than the target's 2.{}",
                needed - 1
            )) && older.contains(&format!("bin/native (GLIBC_2.{needed})")),
            "{route:?}: {older}"
        );
        let same = pack(needed);
        assert!(!same.contains("newer glibc"), "{route:?}: {same}");
    }
}
