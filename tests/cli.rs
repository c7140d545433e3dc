//! Hermetic tests of the whole pipeline through the real binary, against channels of small
//! packages built at test time: the environment file, channel mapping, solve errors,
//! relocation records, and the archive's layout.

// Scenario tests read best as one story each.
#![allow(
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::many_single_char_names
)]

mod support;

use std::path::Path;
use std::process::Command;

use support::channel::{Channel, Package, Prefix, fake_python, long_placeholder};
use support::{envpack, run_err, run_ok};

/// A channel with a fake python, a noarch python package with an entry point, a package with
/// text and binary placeholders in both formats, and symlinks.
fn test_channel(dir: &Path) -> Channel {
    let ph = long_placeholder();
    let mut c = Channel::new(dir);
    c.add(fake_python());
    c.add(
        Package::new("greet", "1.0")
            .depends("python >=3.11")
            .noarch_python(&["greet = greet:main"])
            .file(
                "site-packages/greet.py",
                "def main():\n    print('hello from greet')\n",
            ),
    );
    c.add(
        Package::new("tool", "2.0")
            .with_prefix("etc/tool.conf", Prefix::Text, &ph, false, |ph| {
                format!("home={ph}\ndata={ph}/share/tool\n").into_bytes()
            })
            .with_prefix("lib/libtool.so", Prefix::Binary, &ph, false, |ph| {
                let mut v = b"\x7fELF\0".to_vec();
                v.extend_from_slice(ph.as_bytes());
                v.extend_from_slice(b"/share/tool\0");
                v.extend_from_slice(&[0u8; 16]);
                v
            })
            .symlink("lib/libtool.so.2", "libtool.so")
            .symlink("bin/tool-data", "../share/tool")
            .file("share/tool/data.txt", "data\n")
            .tar_bz2(),
    );
    c.add(Package::new("needs-old-glibc", "1.0").depends("__glibc >=9.0"));
    c.write();
    c
}

fn write_env(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("environment.yml");
    std::fs::write(&p, body).unwrap();
    p
}

fn pack(dir: &Path, env: &Path, extra: &[&str]) -> std::process::Output {
    run_ok(
        envpack()
            .arg("pack")
            .arg(env)
            .arg("-o")
            .arg(dir.join("out.tar.gz"))
            .args(["-q", "--force"])
            .args(extra),
    )
}

#[test]
fn packs_a_relocatable_archive_with_the_expected_layout() {
    let d = tempfile::tempdir().unwrap();
    let chan = test_channel(&d.path().join("chan"));
    let env = write_env(
        d.path(),
        &format!(
            "name: t\nchannels: [{}]\ndependencies: [python, greet, tool]\n",
            chan.url()
        ),
    );
    pack(d.path(), &env, &[]);
    let out = d.path().join("out.tar.gz");

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
        "lib/python3.11/site-packages/greet.py",
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
    let x = d.path().join("x");
    support::extract(&out, &x);
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
        "hello from greet"
    );
}

#[test]
fn the_archive_does_not_depend_on_where_it_was_staged_or_fetched_from() {
    let d = tempfile::tempdir().unwrap();
    let chan = test_channel(&d.path().join("chan"));
    // Fetched through a mirror of a named channel, staged in two different work folders.
    let env = write_env(
        d.path(),
        "name: t\nchannels: [mychan]\ndependencies: [python, greet, tool]\n",
    );
    let mirror = format!("mychan={}", chan.url());
    let a = d.path().join("a.tar.gz");
    let b = d.path().join("b.tar.gz");
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
                .arg(d.path().join(work)),
        );
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two packs differ"
    );
    let x = d.path().join("x");
    support::extract(&a, &x);
    // No path of this machine in any file, records included; the channel is the canonical one.
    for needle in [
        d.path().to_str().unwrap(),
        support::cache_dir().to_str().unwrap(),
    ] {
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
fn channel_alias_and_relative_channels_resolve() {
    let d = tempfile::tempdir().unwrap();
    let chans = d.path().join("channels");
    test_channel(&chans.join("local"));
    // A named channel under a file:// alias.
    let env = write_env(
        d.path(),
        "channels: [local, nodefaults]\ndependencies: [tool]\n",
    );
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("--dry-run")
            .arg("--channel-alias")
            .arg(format!("file://{}", chans.display())),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tool"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A path relative to the environment file, and the variable form of the alias.
    let sub = d.path().join("model");
    std::fs::create_dir_all(&sub).unwrap();
    let env = write_env(
        &sub,
        "channels: [../channels/local]\ndependencies: [local::tool]\n",
    );
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .args(["--dry-run", "--json"])
            .env(
                "ENVPACK_CHANNEL_ALIAS",
                format!("file://{}", chans.display()),
            ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["packages"][0]["name"], "tool");
    assert!(
        v["packages"][0]["channel"]
            .as_str()
            .unwrap()
            .ends_with("/channels/local"),
        "{v}"
    );
    assert_eq!(v["dry_run"], true);
    assert!(!d.path().join("model/environment.tar.gz").exists());
}

#[test]
fn unsolvable_environments_explain_why() {
    let d = tempfile::tempdir().unwrap();
    let chan = test_channel(&d.path().join("chan"));
    let env = write_env(
        d.path(),
        &format!("channels: [{}]\ndependencies: [tool >=3]\n", chan.url()),
    );
    let out = run_err(envpack().arg("pack").arg(&env).arg("--dry-run"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be solved"), "{err}");
    assert!(err.contains("tool"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(out.status.code(), Some(1));
    // A virtual package the target lacks, and the override that provides it.
    let env = write_env(
        d.path(),
        &format!(
            "channels: [{}]\ndependencies: [needs-old-glibc]\n",
            chan.url()
        ),
    );
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
    let d = tempfile::tempdir().unwrap();
    let env = write_env(d.path(), "name: x\ndependencies:\n  - numpy >>= 1\n");
    let out = run_err(envpack().arg("pack").arg(&env).current_dir(d.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("numpy >>= 1"), "{err}");
    assert!(!d.path().join("x.tar.gz").exists());
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
    let chan = test_channel(&d.path().join("chan"));
    let env = write_env(
        d.path(),
        &format!(
            "name: x\nchannels: [{}]\ndependencies: [tool]\n",
            chan.url()
        ),
    );
    std::fs::write(d.path().join("x.tar.gz"), "precious").unwrap();
    let out = run_err(envpack().arg("pack").arg(&env).current_dir(d.path()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(d.path().join("x.tar.gz")).unwrap(),
        "precious"
    );
    // Nothing partial left behind anywhere.
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn variables_are_set_by_activate_and_restored_by_deactivate() {
    let d = tempfile::tempdir().unwrap();
    let chan = test_channel(&d.path().join("chan"));
    let env = write_env(
        d.path(),
        &format!(
            "channels: [{}]\ndependencies: [tool]\nvariables:\n  MODEL_MODE: fast\n",
            chan.url()
        ),
    );
    pack(d.path(), &env, &[]);
    let x = d.path().join("x");
    support::extract(&d.path().join("out.tar.gz"), &x);
    let out = run_ok(Command::new("bash").arg("-euc").arg("MODEL_MODE=old; source bin/activate; echo $MODEL_MODE; source bin/deactivate; echo $MODEL_MODE").current_dir(&x));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fast\nold\n");
}

#[test]
fn an_interrupted_pack_leaves_no_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("env");
    std::fs::create_dir_all(prefix.join("conda-meta")).unwrap();
    // Enough incompressible bytes that packing at level 9 on one thread takes a while.
    let mut data = vec![0u8; 96 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[3];
    }
    std::fs::write(prefix.join("big.bin"), &data).unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut child = envpack()
        .arg("pack")
        .arg("-p")
        .arg(&prefix)
        .arg("-o")
        .arg(out_dir.join("env.tar.gz"))
        .args(["--compress-level", "9", "-j", "1", "-q"])
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
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A channel served over HTTPS on 127.0.0.1, with a certificate from a test CA, that answers
/// only with basic auth; stopped by PID.
struct AuthChannel {
    child: std::process::Child,
    port: u16,
    /// The test CA's certificate (trusted through `SSL_CERT_FILE`).
    ca: std::path::PathBuf,
}

impl AuthChannel {
    fn start(dir: &Path, certs: &Path) -> Self {
        std::fs::create_dir_all(certs).unwrap();
        let openssl = |args: &str| {
            run_ok(
                Command::new("openssl")
                    .args(args.split_whitespace())
                    .current_dir(certs),
            );
        };
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=envpack-test-ca",
        );
        openssl("req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj /CN=127.0.0.1");
        std::fs::write(
            certs.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf",
        );
        let script = r#"
import base64, functools, http.server, ssl, sys
want = 'Basic ' + base64.b64encode(b'user:secret').decode()
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get('Authorization') != want:
            self.send_response(401)
            self.send_header('WWW-Authenticate', 'Basic realm="channel"')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        super().do_GET()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(H, directory=sys.argv[1]))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2] + '/cert.pem', sys.argv[2] + '/key.pem')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir)
            .arg(certs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Self {
            child,
            port,
            ca: certs.join("ca.pem"),
        }
    }
}

impl Drop for AuthChannel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_channels_behind_authentication_use_rattlers_credentials() {
    let d = tempfile::tempdir().unwrap();
    test_channel(&d.path().join("chan"));
    let server = AuthChannel::start(&d.path().join("chan"), &d.path().join("certs"));
    let url = format!("https://127.0.0.1:{}/", server.port);
    let env = write_env(
        d.path(),
        &format!("name: auth\nchannels: [{url}]\ndependencies: [tool]\n"),
    );
    let home = d.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cmd = |out: &str| {
        let mut c = envpack();
        c.arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(d.path().join(out))
            .arg("--cache-dir")
            .arg(d.path().join("cache"));
        c.arg("-q").env("HOME", &home);
        c
    };
    // A certificate nobody vouches for is refused.
    let out = run_err(&mut cmd("a.tar.gz"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    // Trusted (SSL_CERT_FILE), but without credentials: the server's refusal.
    let out = run_err(cmd("a.tar.gz").env("SSL_CERT_FILE", &server.ca));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    // With rattler's credentials file: solved, downloaded and packed.
    let auth = d.path().join("credentials.json");
    std::fs::write(
        &auth,
        r#"{"127.0.0.1": {"BasicHTTP": {"username": "user", "password": "secret"}}}"#,
    )
    .unwrap();
    run_ok(
        cmd("auth.tar.gz")
            .env("SSL_CERT_FILE", &server.ca)
            .env("RATTLER_AUTH_FILE", &auth),
    );
    let listing = support::list(&d.path().join("auth.tar.gz"));
    assert!(listing.iter().any(|m| m == "etc/tool.conf"), "{listing:?}");
    assert!(!d.path().join("a.tar.gz").exists());
}

#[test]
fn an_output_inside_the_packed_environment_is_not_packed_into_the_next_archive() {
    let d = tempfile::tempdir().unwrap();
    let chan = test_channel(&d.path().join("chan"));
    let env = write_env(
        d.path(),
        &format!("channels: [{}]\ndependencies: [tool]\n", chan.url()),
    );
    let prefix = d.path().join("env");
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
