//! Hostile packages, clumsy outputs, interrupts and full disks, through the real binary: each
//! test asserts the message, that nothing outside the output was touched, and that no
//! temporary is left behind.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::channel::{Channel, Package};
use crate::support::{envpack, run_err, run_ok};
use serde_json::json;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every path below `dir` (folders included), relative, sorted.
fn snapshot(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.insert(rel);
        }
    }
    out
}

/// A test folder: `channel/` with a fake python and the given packages, `work/` for staging,
/// `proj/` holding `environment.yml`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(packages: Vec<Package>, deps: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ch = Channel::new(&dir.path().join("channel"));
        for p in packages {
            ch.add(p);
        }
        ch.write();
        let proj = dir.path().join("proj");
        std::fs::create_dir_all(&proj).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let s = Self { dir };
        s.env("env", deps);
        s
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn proj(&self) -> PathBuf {
        self.path().join("proj")
    }
    fn work(&self) -> PathBuf {
        self.path().join("work")
    }
    fn env(&self, name: &str, deps: &[&str]) -> PathBuf {
        let body: String = deps.iter().flat_map(|d| ["  - ", d, "\n"]).collect();
        let f = self.proj().join("environment.yml");
        std::fs::write(
            &f,
            format!(
                "name: {name}\nchannels: [{}]\ndependencies:\n{body}",
                format_args!("file://{}", self.path().join("channel").display())
            ),
        )
        .unwrap();
        f
    }
    /// `envpack pack environment.yml` run in `proj/`, staging in `work/`.
    fn pack(&self, extra: &[&str]) -> Command {
        self.pack_in(&self.work(), extra)
    }
    /// The same with staging in `work`.
    fn pack_in(&self, work: &Path, extra: &[&str]) -> Command {
        let mut c = envpack();
        c.current_dir(self.proj())
            .arg("pack")
            .arg("environment.yml")
            .arg("--no-progress")
            .arg("--work-dir")
            .arg(work)
            .args(extra);
        c
    }
    /// Nothing left in `work/`.
    fn assert_no_staging(&self) {
        let left = snapshot(&self.work());
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
}

fn small_package(name: &str) -> Package {
    Package::new(name, "1.0").file(&format!("share/{name}/data.txt"), "data\n")
}

// ---------------------------------------------------------------- item 1: hostile packages

/// The two routes to an archive: an environment without `pip:` is packed straight from the
/// package cache by default; `--via-prefix` installs it into a staging prefix first.
const ROUTES: [(&str, &[&str]); 2] = [
    ("package-cache", &[]),
    ("staging-prefix", &["--via-prefix"]),
];

/// Packs `s`'s environment on both routes, each expected to be refused: asserts the exit
/// code, that both routes say the same, that nothing below `s` changed (or `victim`), and
/// that no staging is left. Returns the message.
fn refused_on_both_routes(s: &Setup) -> String {
    let before = snapshot(s.path());
    let mut messages = Vec::new();
    for (route, flags) in ROUTES {
        let out = run_err(&mut s.pack(flags));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{route}: {err}");
        assert!(!err.contains("panicked"), "{route}: {err}");
        s.assert_no_staging();
        assert_eq!(snapshot(s.path()), before, "{route}: something was written");
        // rattler's cache may warn first (a package of this name with other contents was
        // cached by an earlier run of the test): envpack's own lines are compared.
        let own: Vec<&str> = err.lines().filter(|l| !l.contains("WARN")).collect();
        messages.push(own.join("\n"));
    }
    assert_eq!(messages[0], messages[1], "the routes refuse differently");
    messages.swap_remove(0)
}

#[test]
fn the_direct_route_is_the_default_for_these_environments() {
    // The hostile tests below rely on the default route being the package cache's: a benign
    // package of the same shape takes it (and `--via-prefix` the other).
    let s = Setup::new(vec![small_package("benign")], &["benign"]);
    for (route, flags) in ROUTES {
        let out = run_ok(s.pack(flags).args(["--json", "--force", "-o", "b.tar.gz"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["route"], route);
    }
    s.assert_no_staging();
}

#[test]
fn a_package_path_leaving_the_prefix_is_refused_before_anything_is_written() {
    let hostile = Package::new("hostile-dotdot", "1.0")
        .file("share/ok.txt", "ok\n")
        .raw_entry(
            json!({"_path": "../../../victim.txt", "path_type": "hardlink",
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
            "size_in_bytes": 3}),
        );
    let s = Setup::new(vec![hostile], &["hostile-dotdot"]);
    // The staging prefix is work/envpack-XXXX/env: `../../../victim.txt` is this file.
    let victim = s.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let err = refused_on_both_routes(&s);
    assert!(
        err.starts_with("error: the package hostile-dotdot-1.0-0")
            && err.contains(" is unsafe: \"../../../victim.txt\" leaves the environment"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn an_absolute_package_path_is_refused_without_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("abs-victim");
    let hostile = Package::new("hostile-abs", "1.0")
        .file("share/ok.txt", "ok\n")
        .raw_entry(
            json!({"_path": target.display().to_string(), "path_type": "hardlink",
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
            "size_in_bytes": 3}),
        );
    let s = Setup::new(vec![hostile], &["hostile-abs"]);
    let err = refused_on_both_routes(&s);
    assert!(
        err.starts_with("error: the package hostile-abs-1.0-0")
            && err.contains(&format!(
                " is unsafe: {:?} is absolute",
                target.display().to_string()
            )),
        "{err}"
    );
    assert!(!target.exists());
}

#[test]
fn symlinks_out_of_the_prefix_and_files_written_through_them_are_refused() {
    // A symlink to the prefix's parent (the direct route packed it with a mere warning).
    let link = Package::new("hostile-link", "1.0").symlink("share/up", "../../..");
    let s = Setup::new(vec![link], &["hostile-link"]);
    let err = refused_on_both_routes(&s);
    assert!(
        err.starts_with("error: the package hostile-link-1.0-0")
            && err.contains(" is unsafe: \"share/up\" is a symlink")
            && err.contains("outside the environment"),
        "{err}"
    );

    // Each link alone stays inside; followed one after the other they leave it.
    let a = Package::new("chain-a", "1.0").symlink("deep/er", ".");
    let b = Package::new("chain-b", "1.0")
        .file("keep.txt", "k\n")
        .raw_entry(
            json!({"_path": "deep/er/../../escaped.txt", "path_type": "hardlink",
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
            "size_in_bytes": 1}),
        );
    let s = Setup::new(vec![a, b], &["chain-a", "chain-b"]);
    let err = refused_on_both_routes(&s);
    assert!(
        err.starts_with("error: the package chain-b-1.0-0")
            && err.contains(" is unsafe: \"deep/er/../../escaped.txt\""),
        "{err}"
    );
}

// ------------------------------------------------- items 2, 3, 13: what --force may replace

fn packed_dir(s: &Setup, out: &Path) {
    run_ok(s.pack(&["--format", "dir", "-o"]).arg(out));
    assert!(out.join("conda-meta").is_dir());
}

#[test]
fn force_never_deletes_a_folder_holding_the_input_or_foreign_files() {
    let s = Setup::new(vec![small_package("plain")], &["plain"]);
    std::fs::write(s.proj().join("notes.txt"), "mine\n").unwrap();
    let before = snapshot(s.path());
    // The folder holding the environment file (and the current folder).
    for target in [".", "..", s.proj().to_str().unwrap()] {
        let out = run_err(&mut s.pack(&["--format", "dir", "--force", "-o", target]));
        let err = stderr(&out);
        assert!(err.contains("cannot be replaced"), "{target}: {err}");
        assert_eq!(out.status.code(), Some(2), "{err}");
    }
    // A folder envpack did not write, refused before solving (the channel is not read).
    let foreign = s.path().join("foreign");
    std::fs::create_dir_all(foreign.join("sub")).unwrap();
    std::fs::write(foreign.join("sub/file"), "theirs").unwrap();
    let before_foreign = snapshot(s.path());
    std::fs::rename(s.path().join("channel"), s.path().join("channel.away")).unwrap();
    for extra in [&["--force"][..], &[][..]] {
        let out = run_err(
            s.pack(extra)
                .arg("--format")
                .arg("dir")
                .arg("-o")
                .arg(&foreign),
        );
        let err = stderr(&out);
        assert!(
            err.contains("cannot be replaced: it is a folder envpack did not write"),
            "{err}"
        );
        assert!(!err.contains("channel"), "solved first: {err}");
    }
    std::fs::rename(s.path().join("channel.away"), s.path().join("channel")).unwrap();
    assert_eq!(snapshot(s.path()), before_foreign);
    s.assert_no_staging();
    let _ = before;

    // The prefix given with -p, even though envpack wrote it.
    let prefix = s.path().join("envdir");
    packed_dir(&s, &prefix);
    let prefix_before = snapshot(&prefix);
    let out = run_err(
        envpack()
            .current_dir(s.path())
            .args(["pack", "--no-progress", "--format", "dir", "--force", "-p"])
            .arg(&prefix)
            .arg("-o")
            .arg(&prefix),
    );
    assert!(stderr(&out).contains("it holds"), "{}", stderr(&out));
    assert_eq!(snapshot(&prefix), prefix_before);
}

#[test]
fn force_replaces_a_file_or_an_output_envpack_made_and_leaves_no_temporary() {
    let s = Setup::new(vec![small_package("plain2")], &["plain2"]);
    let out_dir = s.path().join("out");
    packed_dir(&s, &out_dir);
    std::fs::write(out_dir.join("marker"), "old").unwrap();
    // Without --force: an up-to-date output envpack wrote is left alone.
    let o = run_ok(s.pack(&["--format", "dir", "-o"]).arg(&out_dir));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("up to date"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        out_dir.join("marker").is_file(),
        "an up-to-date output was touched"
    );
    run_ok(s.pack(&["--format", "dir", "--force", "-o"]).arg(&out_dir));
    assert!(
        !out_dir.join("marker").exists(),
        "the old output was not replaced"
    );
    assert!(out_dir.join("share/plain2/data.txt").is_file());
    // A folder output replaced by a tarball, and a file by a tarball.
    let tar = s.path().join("out.tar.gz");
    std::fs::write(&tar, "old file").unwrap();
    run_ok(s.pack(&["--force", "-o"]).arg(&tar));
    assert!(std::fs::read(&tar).unwrap().starts_with(&[0x1f, 0x8b]));
    let names: Vec<String> = snapshot(s.path())
        .into_iter()
        .filter(|n| n.contains(".partial") || n.ends_with(".old"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    s.assert_no_staging();
}

#[test]
fn force_never_replaces_fifos_or_devices() {
    let s = Setup::new(vec![small_package("plain3")], &["plain3"]);
    let fifo = s.path().join("fifo.tar.gz");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let err = stderr(&run_err(s.pack(&["--force", "-o"]).arg(&fifo)));
    assert!(err.contains("cannot be replaced: it is a FIFO"), "{err}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A character device (a copy of /dev/null's numbers), where mknod is allowed.
    let dev = s.path().join("null.tar.gz");
    if Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|st| st.success())
    {
        let err = stderr(&run_err(s.pack(&["--force", "-o"]).arg(&dev)));
        assert!(err.contains("cannot be replaced: it is a device"), "{err}");
        assert!(
            std::fs::symlink_metadata(&dev)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    } else {
        eprintln!("mknod not permitted: the device case is covered by the FIFO case only");
    }
    s.assert_no_staging();
}

// ------------------------------------------------------------- item 4: names and --arcroot

#[test]
fn environment_names_and_arcroots_that_escape_are_refused() {
    let s = Setup::new(vec![small_package("plain4")], &["plain4"]);
    let before = snapshot(s.path());
    for name in ["../escaped", "/abs/x", "\"a\\nb\"", "..", "sub/dir"] {
        s.env(name, &["plain4"]);
        let out = run_err(&mut s.pack(&[]));
        let err = stderr(&out);
        assert!(err.contains("cannot name the output"), "{name}: {err}");
        assert_eq!(out.status.code(), Some(2));
    }
    s.env("env", &["plain4"]);
    for arcroot in ["../../evil", "/abs", "a/../../b", "./x"] {
        let out = run_err(&mut s.pack(&["-o", "x.tar", "--arcroot", arcroot]));
        let err = stderr(&out);
        assert!(err.contains("--arcroot"), "{arcroot}: {err}");
        assert_eq!(out.status.code(), Some(2));
    }
    let after: BTreeSet<String> = snapshot(s.path())
        .into_iter()
        .filter(|p| p != "proj/environment.yml")
        .collect();
    let before: BTreeSet<String> = before
        .into_iter()
        .filter(|p| p != "proj/environment.yml")
        .collect();
    assert_eq!(after, before);
    assert!(!s.path().join("escaped.tar.gz").exists());
    s.assert_no_staging();
}

// ------------------------------------------------------------ item 9: no-replace publish

/// A `.tar.bz2` package served from a FIFO: the run blocks reading it until `feed` writes
/// its bytes. Returns the FIFO's path and the bytes.
fn blocking_package(s: &Setup, name: &str) -> (PathBuf, Vec<u8>) {
    let pkg = small_package(name).tar_bz2();
    let file = s.path().join("channel/linux-64").join(pkg.file_name());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    run_ok(Command::new("mkfifo").arg(&file));
    (file, bytes)
}

/// Writes the package's bytes into the FIFO once the run opens it; returns without writing
/// if the run ends first.
fn feed(fifo: &Path, bytes: &[u8], child: &mut std::process::Child) {
    use std::io::Write;
    let Some(mut f) = wait_for_reader(fifo, child) else {
        return;
    };
    // The writer end is non-blocking: retry while the pipe is full.
    let mut rest = bytes;
    while !rest.is_empty() {
        match f.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

/// Waits until the run opens the FIFO (it is past its checks and fetching); `false` if the
/// run ended first.
fn wait_for_reader(fifo: &Path, child: &mut std::process::Child) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        // O_NONBLOCK: fails (ENXIO) while nobody reads, instead of blocking.
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000)
            .open(fifo);
        if let Ok(f) = probe {
            return Some(f);
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn blocking_setup(name: &str) -> (Setup, PathBuf, Vec<u8>) {
    let s = Setup::new(vec![small_package(name).tar_bz2()], &[name]);
    let (fifo, bytes) = blocking_package(&s, name);
    (s, fifo, bytes)
}

#[test]
fn an_output_created_while_envpack_runs_is_never_overwritten() {
    for (route, flags) in ROUTES {
        let (s, fifo, bytes) = blocking_setup(&format!("slow9-{route}"));
        let cache = s.path().join("cache");
        let out = s.path().join("out.tar.gz");
        let mut child = s
            .pack(flags)
            .arg("-o")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The run has checked that the output is free and now waits for the package; another
        // process writes the output meanwhile.
        let writer = wait_for_reader(&fifo, &mut child).expect("the run ended early");
        std::fs::write(&out, "written by someone else").unwrap();
        feed(&fifo, &bytes, &mut child);
        drop(writer);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{route}: {err}");
        assert!(
            err.contains(&format!("{} already exists", out.display())),
            "{route}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "written by someone else"
        );
        let left = partials(s.path());
        assert!(left.is_empty(), "{route}: {left:?}");
        s.assert_no_staging();
    }
}

#[test]
fn two_concurrent_runs_to_one_output_one_wins_the_other_fails_cleanly() {
    let s = Setup::new(vec![small_package("both9")], &["both9"]);
    let out = s.path().join("same.tar.gz");
    // Both routes publish: half the runs take each. A cache of their own: all four fetch
    // the package into it at once.
    let cache = s.path().join("cache");
    let children: Vec<_> = (0..4)
        .map(|i| {
            s.pack(ROUTES[i % 2].1)
                .arg("-o")
                .arg(&out)
                .arg("--cache-dir")
                .arg(&cache)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let wrote = outputs
        .iter()
        .filter(|o| o.status.success() && stdout(o).starts_with("wrote "))
        .count();
    assert_eq!(wrote, 1, "exactly one run writes the output");
    // The others lost the race to publish, or started once the output was there: a run
    // whose output envpack wrote for the same environment finds it up to date.
    for o in outputs.iter().filter(|o| !stdout(o).starts_with("wrote ")) {
        if o.status.success() {
            assert!(stdout(o).starts_with("up to date: "), "{}", stdout(o));
        } else {
            assert!(stderr(o).contains("already exists"), "{}", stderr(o));
        }
    }
    assert!(std::fs::read(&out).unwrap().starts_with(&[0x1f, 0x8b]));
    s.assert_no_staging();
}

// ------------------------------------------------------------ item 8: signals and litter

fn signal(child: &std::process::Child, sig: &str) {
    run_ok(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string()),
    );
}

/// Waits until `ready` holds (`true`) or `child` ends (`false`, and it is reaped): the point
/// of the run to interrupt. No timed assertion.
fn wait_until(child: &mut std::process::Child, ready: impl Fn() -> bool) -> bool {
    loop {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Waits until `ready` holds, while `child` runs. Fails (with the run's stderr) if the run
/// ends first.
fn wait_for(child: &mut std::process::Child, point: &str, ready: impl Fn() -> bool) {
    if !wait_until(child, ready) {
        let mut err = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut err);
        }
        panic!("the run ended before {point}: {err}");
    }
}

/// Waits until a run's staging folder in `work` is registered (its in-use mark is written
/// after).
fn wait_for_marker(child: &mut std::process::Child, work: &Path) {
    wait_for(child, "its staging folder was made", || {
        snapshot(work)
            .iter()
            .any(|p| p.ends_with("/.envpack-in-use"))
    });
}

/// The partial outputs (`.NAME.XXXXXX.partial`) below `dir`.
fn partials(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_iter()
        .filter(|n| n.contains(".partial"))
        .collect()
}

#[test]
fn interrupts_at_any_point_leave_no_staging_and_no_partial() {
    for (sig, fmt) in [("INT", "tar.gz"), ("TERM", "dir"), ("HUP", "tar.zst")] {
        // While the package is being fetched (the staging folder exists).
        let (s, _fifo, _bytes) = blocking_setup(&format!("sig-{}", sig.to_lowercase()));
        let out = s.path().join("out");
        // The staged route: the direct one makes no staging folder to leave behind.
        let mut child = s
            .pack(&["--via-prefix", "--format", fmt, "-o"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(s.path().join("cache"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_marker(&mut child, &s.work());
        signal(&child, sig);
        let o = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!o.success());
        assert!(
            err.contains("interrupted: temporary files removed"),
            "{err}"
        );
        s.assert_no_staging();
        assert!(!out.exists());
        let left = partials(s.path());
        assert!(left.is_empty(), "{sig}: {left:?}");
    }
}

/// The exit code of a run ended by `sig`, as a shell reports it.
fn interrupted_code(sig: &str) -> i32 {
    128 + match sig {
        "HUP" => 1,
        "INT" => 2,
        "TERM" => 15,
        _ => unreachable!("{sig}"),
    }
}

/// Asserts that `out` is a complete output: a tarball its decompressor tests and tar lists
/// to its manifest, or a folder holding its manifest.
fn assert_complete(out: &Path) {
    let name = out.to_string_lossy();
    if out.is_dir() {
        assert!(out.join("conda-meta/envpack.json").is_file(), "{name}");
        return;
    }
    if name.ends_with(".tar.gz") {
        run_ok(Command::new("gzip").arg("-t").arg(out));
    } else if name.ends_with(".tar.zst") {
        run_ok(Command::new("zstd").args(["-q", "-t"]).arg(out));
    }
    let members = crate::support::list(out);
    assert!(
        members
            .iter()
            .any(|m| m.ends_with("conda-meta/envpack.json")),
        "{name}: {members:?}"
    );
}

/// A package of 300 small folders and 48 MB that do not compress: its archive written at
/// `--compress-level 9 -j 1` takes a second, its folder a little while.
fn big_package(name: &str) -> Package {
    let mut p = Package::new(name, "1.0");
    for i in 0..300 {
        p = p.file(&format!("share/{name}/d{i:03}/f.txt"), format!("{i}\n"));
    }
    p.file(
        &format!("share/{name}/z.bin"),
        crate::support::incompressible(48 << 20),
    )
    .fast()
}

/// The state of each thread of the process `pid` (`R`, `S`, `T`, `Z`...); empty once it is
/// gone.
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit(')').next()?.trim_start().chars().next())
        .collect()
}

/// Sends `sig` to `child` if `still` holds while the run is stopped (SIGSTOP, every thread
/// seen stopped), so that the point cannot pass between the look and the signal; then lets
/// it go on. `false` if the point had passed (the run goes on untouched).
fn interrupt_while(child: &std::process::Child, sig: &str, still: impl Fn() -> bool) -> bool {
    signal(child, "STOP");
    while thread_states(child.id())
        .iter()
        .any(|s| !matches!(s, 'T' | 't' | 'Z' | 'X'))
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let now = still();
    if now {
        signal(child, sig);
    }
    signal(child, "CONT");
    now
}

/// Where a run is interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// The staging prefix is being linked: files of the package are there, its record not yet.
    Linking,
    /// The partial output is being written; the staging prefix exists exactly when `true`
    /// (the staged route).
    Writing(bool),
}

/// Whether `s`'s run writing into `outs` is at `at`.
fn reached(at: At, s: &Setup, outs: &Path) -> bool {
    let staging = snapshot(&s.work());
    match at {
        At::Linking => {
            staging.iter().any(|p| p.contains("/env/share/big8/d"))
                && !staging
                    .iter()
                    .any(|p| p.ends_with("/conda-meta/big8-1.0-0.json"))
        }
        At::Writing(staged) => !partials(outs).is_empty() && staging.is_empty() != staged,
    }
}

#[test]
fn interrupts_while_the_prefix_or_the_output_is_written_leave_nothing_and_the_cache_usable() {
    let s = Setup::new(vec![big_package("big8")], &["big8"]);
    let cache = s.path().join("cache");
    let outs = s.path().join("out");
    std::fs::create_dir_all(&outs).unwrap();
    let level: &[&str] = &["--compress-level", "9", "-j", "1"];
    // (the point, the signal, the output, the flags, where)
    for (point, sig, name, flags, at) in [
        (
            "the package-cache route",
            "INT",
            "direct.tar.gz",
            level,
            At::Writing(false),
        ),
        (
            "the pack stage of the staged route",
            "TERM",
            "staged.tar.zst",
            &[
                "--via-prefix",
                "--format",
                "tar.zst",
                "--compress-level",
                "12",
                "-j",
                "1",
            ][..],
            At::Writing(true),
        ),
        (
            "a folder output",
            "HUP",
            "folder",
            &["--format", "dir"],
            At::Writing(false),
        ),
        (
            "a folder output of the staged route",
            "INT",
            "staged-folder",
            &["--format", "dir", "--via-prefix"],
            At::Writing(true),
        ),
        (
            "the install of the staging prefix",
            "TERM",
            "linked.tar",
            &["--via-prefix", "--format", "tar"],
            At::Linking,
        ),
    ] {
        let out = outs.join(name);
        let pack = || {
            let mut c = s.pack(flags);
            c.arg("-o").arg(&out).arg("--cache-dir").arg(&cache);
            c
        };
        // Until the signal lands at the point (a folder is written fast: the run may be past
        // it before the test looks; then again).
        let mut tries = 0;
        let o = loop {
            tries += 1;
            assert!(tries <= 20, "{point}: never interrupted there");
            let mut child = pack().stderr(Stdio::piped()).spawn().unwrap();
            let at_point = || reached(at, &s, &outs);
            let hit = wait_until(&mut child, at_point) && interrupt_while(&child, sig, at_point);
            let o = child.wait_with_output().unwrap();
            if hit {
                break o;
            }
            assert!(o.status.success(), "{point}: {}", stderr(&o));
            remove_output(&out);
        };
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(interrupted_code(sig)),
            "{point}: {err}"
        );
        assert!(
            err.contains("interrupted: temporary files removed"),
            "{point}: {err}"
        );
        let left = partials(&outs);
        assert!(left.is_empty(), "{point}: {left:?}");
        assert!(!out.exists(), "{point}: an interrupted output appeared");
        s.assert_no_staging();
        // The package cache is usable, nothing stale is in the way: the same command works.
        run_ok(&mut pack());
        assert_complete(&out);
        assert!(partials(&outs).is_empty(), "{point}");
        s.assert_no_staging();
    }
}

fn remove_output(out: &Path) {
    if out.is_dir() {
        std::fs::remove_dir_all(out).unwrap();
    } else {
        std::fs::remove_file(out).unwrap();
    }
}

/// Whether the process `pid` runs (exists and is not a zombie, which writes nothing).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Kills the process whose PID a file holds, if it still runs when dropped: a child a test
/// run left behind, whatever the test's outcome.
struct KillLeftover(PathBuf);

impl Drop for KillLeftover {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            && running(pid)
        {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// A `python` whose `bin/python -m pip ...` writes its PID to `pid` (complete when the file
/// appears), then blocks opening `fifo`, as a long pip install would; any other call (envpack
/// asks the interpreter its glibc) returns at once, saying nothing. Once the test opens the
/// FIFO, a `--report FILE` call (`pip install --dry-run`, as `envpack lock` runs it) writes a
/// report of one wheel and succeeds; any other fails.
fn blocking_python(pid: &Path, fifo: &Path) -> Package {
    let (pid, fifo) = (pid.display(), fifo.display());
    let report = r#"{"version":"1","install":[{"metadata":{"name":"anything","version":"1.0"},"requested":true,"download_info":{"url":"https://example.invalid/anything-1.0-py3-none-any.whl","archive_info":{"hashes":{"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}}}]}"#;
    Package::new("python", "3.11.0")
        .exe(
            "bin/python",
            format!(
                "#!/bin/sh\ncase \"$1\" in -m) ;; *) exit 0 ;; esac\n\
                 echo $$ > '{pid}.tmp' && mv '{pid}.tmp' '{pid}'\n\
                 exec 3< '{fifo}'\n\
                 while [ $# -gt 1 ]; do\n\
                   if [ \"$1\" = --report ]; then echo '{report}' > \"$2\"; exit 0; fi\n\
                   shift\n\
                 done\n\
                 echo 'pip went on' >&2\nexit 1\n"
            ),
        )
        .file("lib/python3.11/site-packages/README.txt", "site-packages\n")
}

/// A `python` whose `-m pip` writes its PID to `pid` after running `trap` (a shell `trap`
/// line) and then runs until it is stopped.
fn looping_python(pid: &Path, trap: &str) -> Package {
    let pid = pid.display();
    Package::new("python", "3.11.0").exe(
        "bin/python",
        format!(
            "#!/bin/sh\ncase \"$1\" in -m) ;; *) exit 0 ;; esac\n{trap}\n\
             echo $$ > '{pid}.tmp' && mv '{pid}.tmp' '{pid}'\n\
             while :; do sleep 0.05; done\n"
        ),
    )
}

/// A [`Setup`] whose environment has a `pip:` section, its `python` a [`blocking_python`]
/// writing its PID to `pip.pid` and blocked on the FIFO `pip.fifo`, both in the returned
/// folder (kept alive with the setup).
fn pip_setup_blocked() -> (tempfile::TempDir, PathBuf, PathBuf, Setup) {
    let d = tempfile::tempdir().unwrap();
    let (pid_file, fifo) = (d.path().join("pip.pid"), d.path().join("pip.fifo"));
    run_ok(Command::new("mkfifo").arg(&fifo));
    let s = pip_env(blocking_python(&pid_file, &fifo));
    (d, pid_file, fifo, s)
}

/// A [`Setup`] whose environment has a `pip:` section, run by `python`.
fn pip_env(python: Package) -> Setup {
    let pip = Package::new("pip", "24.0").file("lib/python3.11/site-packages/pip/__init__.py", "");
    let s = Setup::new(vec![python, pip], &[]);
    std::fs::write(
        s.proj().join("environment.yml"),
        format!(
            "name: env\nchannels: [file://{}]\ndependencies:\n  - python\n  - pip\n  - pip:\n    - anything==1.0\n",
            s.path().join("channel").display()
        ),
    )
    .unwrap();
    s
}

/// Waits until the fake pip of [`pip_setup`] has written its PID, and returns it: pip runs, in
/// the staging prefix (`what` names the run in messages).
fn pip_pid(child: &mut std::process::Child, pid_file: &Path, s: &Setup, what: &str) -> u32 {
    wait_for(child, "pip started", || pid_file.exists());
    let pid: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(running(pid), "{what}");
    assert!(
        !snapshot(&s.work()).is_empty(),
        "{what}: pip runs without a staging prefix"
    );
    pid
}

/// Sends `sig` to a run whose pip is `pid`: the run ends as interrupted, saying so, and leaves
/// no pip running (nothing writes into the removed staging folder) and no staging.
fn interrupt_pip(child: std::process::Child, sig: &str, pid: u32, s: &Setup) {
    signal(&child, sig);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(interrupted_code(sig)), "{sig}: {err}");
    assert!(
        err.contains("interrupted: temporary files removed"),
        "{sig}: {err}"
    );
    assert!(
        !running(pid),
        "{sig}: pip ({pid}) still runs after envpack ended"
    );
    s.assert_no_staging();
}

#[test]
fn an_interrupt_while_pip_runs_stops_it_and_removes_staging() {
    let (_d, pid_file, _, s) = pip_setup_blocked();
    for sig in ["INT", "TERM"] {
        let _ = std::fs::remove_file(&pid_file);
        let _leftover = KillLeftover(pid_file.clone());
        let out = s.path().join("env.tar.gz");
        let mut child = pack_with_pip(&s, &out);
        let pid = pip_pid(&mut child, &pid_file, &s, sig);
        interrupt_pip(child, sig, pid, &s);
        assert!(!out.exists());
        let left = partials(s.path());
        assert!(left.is_empty(), "{sig}: {left:?}");
    }
}

/// Starts packing `s` (its `pip:` section) into `out`, with uv kept off `PATH`: envpack then
/// runs `python -m pip`, the environment's own interpreter, as the child.
fn pack_with_pip(s: &Setup, out: &Path) -> std::process::Child {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::env::split_paths(&path).filter(|p| !p.join("uv").exists()))
            .unwrap();
    s.pack(&["-o"])
        .arg(out)
        .arg("--cache-dir")
        .arg(s.path().join("cache"))
        .env("PATH", path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_interrupted_pip_is_asked_to_stop_and_killed_only_when_it_does_not() {
    let d = tempfile::tempdir().unwrap();
    let (pid_file, asked) = (d.path().join("pip.pid"), d.path().join("asked"));
    let cases = [
        (
            "handles SIGINT",
            format!(
                "trap 'echo cleaned up > \"{}\"; exit 130' INT",
                asked.display()
            ),
        ),
        ("ignores SIGINT", "trap '' INT".to_string()),
    ];
    for (case, trap) in cases {
        let _ = std::fs::remove_file(&pid_file);
        let _leftover = KillLeftover(pid_file.clone());
        let s = pip_env(looping_python(&pid_file, &trap));
        let mut child = pack_with_pip(&s, &s.path().join("env.tar.gz"));
        let pid = pip_pid(&mut child, &pid_file, &s, case);
        let start = std::time::Instant::now();
        interrupt_pip(child, "TERM", pid, &s);
        if std::fs::exists(&asked).unwrap() {
            // It was sent SIGINT and ran its handler before anything was removed.
            assert_eq!(case, "handles SIGINT");
            assert_eq!(std::fs::read_to_string(&asked).unwrap(), "cleaned up\n");
            std::fs::remove_file(&asked).unwrap();
        } else {
            assert_eq!(case, "ignores SIGINT", "pip was not asked to stop");
            // Killed, but only once its time to end (3 s) had passed.
            assert!(
                start.elapsed() >= std::time::Duration::from_secs(3),
                "{case}: killed after {:?}",
                start.elapsed()
            );
        }
    }
}

#[test]
fn an_interrupted_lock_stops_pip_and_leaves_no_lock_and_no_staging() {
    let (_d, pid_file, fifo, s) = pip_setup_blocked();
    let lock_file = s.proj().join("conda-lock.yml");
    let lock = || {
        let mut c = envpack();
        c.current_dir(s.proj())
            .args(["lock", "environment.yml", "--no-progress", "--work-dir"])
            .arg(s.work())
            .arg("--cache-dir")
            .arg(s.path().join("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let before = snapshot(&s.proj());
    let start = |sig: &str| {
        let _ = std::fs::remove_file(&pid_file);
        let mut child = lock().spawn().unwrap();
        let pid = pip_pid(&mut child, &pid_file, &s, sig);
        (child, pid)
    };
    for sig in ["INT", "TERM", "HUP"] {
        let _leftover = KillLeftover(pid_file.clone());
        let (child, pid) = start(sig);
        interrupt_pip(child, sig, pid, &s);
        // No lock, no partial lock: the folder holds the environment file only.
        assert_eq!(snapshot(&s.proj()), before, "{sig}");
    }
    // The same command, pip let go on: the lock is written, with pip's answer.
    let _leftover = KillLeftover(pid_file.clone());
    let (mut child, _) = start("retry");
    drop(wait_for_reader(&fifo, &mut child).expect("the retry ended before pip read"));
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&lock_file).unwrap();
    assert!(
        text.contains("anything-1.0-py3-none-any.whl"),
        "the lock lacks the pip package: {text}"
    );
    s.assert_no_staging();
    let mut expected = before.clone();
    expected.insert("conda-lock.yml".into());
    assert_eq!(snapshot(&s.proj()), expected);
}

/// Where an unpack is interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnpackAt {
    /// Members are being written into the temporary folder beside DEST.
    Extracting,
    /// The tree is complete and its files are being rewritten for DEST.
    Relocating,
}

#[test]
fn interrupts_while_unpack_extracts_or_relocates_leave_no_dest_and_no_temporary() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("env");
    std::fs::create_dir_all(prefix.join("conda-meta")).unwrap();
    // 16 MB that do not compress: extracting them takes a while.
    let big = crate::support::incompressible(8 << 20);
    for i in 0..2 {
        std::fs::create_dir_all(prefix.join(format!("share/big{i}"))).unwrap();
        std::fs::write(prefix.join(format!("share/big{i}/z.bin")), &big).unwrap();
    }
    // Many files holding the prefix: relocating them takes a while too.
    std::fs::create_dir_all(prefix.join("share/text")).unwrap();
    let holding = format!(
        "#!{}/bin/python\nPREFIX={}\n",
        prefix.display(),
        prefix.display()
    );
    for i in 0..1000 {
        std::fs::write(prefix.join(format!("share/text/f{i:04}.txt")), &holding).unwrap();
    }
    let archive = d.path().join("env.tar.gz");
    run_ok(&mut crate::support::fixture::pack_prefix(
        &prefix,
        &archive,
        &["--compress-level", "1"],
    ));
    std::fs::remove_dir_all(&prefix).unwrap();
    let outs = d.path().join("out");
    std::fs::create_dir_all(&outs).unwrap();
    // In a folder the run makes: an interrupt removes it too.
    let dest = outs.join("new/env");
    let real_dest = outs.canonicalize().unwrap().join("new/env");
    let unpack = || {
        let mut c = envpack();
        c.args(["unpack", "--no-progress"]).arg(&archive).arg(&dest);
        c
    };
    // Whether the run is at `at`: its temporary is there, DEST is not, and no file of the
    // temporary holds DEST yet (extracting), or some but fewer than half do (relocating: far
    // from the end, so the run is still there when the signal lands).
    let reached = |at: UnpackAt| {
        let Some(tmp) = std::fs::read_dir(outs.join("new"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        else {
            return false;
        };
        if dest.exists() {
            return false;
        }
        let relocated = std::fs::read_dir(tmp.path().join("share/text")).map_or(0, |files| {
            files
                .filter_map(Result::ok)
                .filter(|f| {
                    std::fs::read_to_string(f.path())
                        .is_ok_and(|t| t.contains(&*real_dest.to_string_lossy()))
                })
                .count()
        });
        match at {
            UnpackAt::Extracting => relocated == 0,
            UnpackAt::Relocating => relocated > 0 && relocated < 500,
        }
    };
    for (at, sig) in [
        (UnpackAt::Extracting, "INT"),
        (UnpackAt::Extracting, "TERM"),
        (UnpackAt::Relocating, "INT"),
        (UnpackAt::Relocating, "TERM"),
        (UnpackAt::Relocating, "HUP"),
    ] {
        let point = format!("{at:?} {sig}");
        let before = snapshot(d.path());
        let mut tries = 0;
        let o = loop {
            tries += 1;
            assert!(tries <= 20, "{point}: never interrupted there");
            let mut child = unpack().stderr(Stdio::piped()).spawn().unwrap();
            let hit = wait_until(&mut child, || reached(at))
                && interrupt_while(&child, sig, || reached(at));
            let o = child.wait_with_output().unwrap();
            if hit {
                break o;
            }
            assert!(o.status.success(), "{point}: {}", stderr(&o));
            std::fs::remove_dir_all(outs.join("new")).unwrap();
        };
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(interrupted_code(sig)),
            "{point}: {err}"
        );
        assert!(
            err.contains("interrupted: temporary files removed"),
            "{point}: {err}"
        );
        assert!(!dest.exists(), "{point}: an interrupted DEST appeared");
        let left = partials(&outs);
        assert!(left.is_empty(), "{point}: {left:?}");
        assert_eq!(
            snapshot(d.path()),
            before,
            "{point}: something else changed"
        );
        // The same command again unpacks, relocated.
        let again = run_ok(&mut unpack());
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("1000 files relocated"),
            "{point}: {}",
            String::from_utf8_lossy(&again.stdout)
        );
        assert_complete(&dest);
        assert_eq!(std::fs::read(dest.join("share/big1/z.bin")).unwrap(), big);
        assert!(partials(&outs).is_empty(), "{point}");
        std::fs::remove_dir_all(outs.join("new")).unwrap();
    }
}

/// Fills the pipe `w` writes to: a process given it as stdout blocks on its first write.
fn fill(w: &std::io::PipeWriter) {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    use std::io::Write;
    let flags = fcntl_getfl(w).unwrap();
    fcntl_setfl(w, flags | OFlags::NONBLOCK).unwrap();
    loop {
        match (&*w).write(&[b'.'; 4096]) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The flag belongs to the pipe, which the run shares: blocking again.
    fcntl_setfl(w, flags).unwrap();
}

#[test]
fn an_interrupt_after_the_output_is_in_place_keeps_it_says_so_and_a_retry_is_up_to_date() {
    let s = Setup::new(vec![small_package("done8")], &["done8"]);
    let out = s.path().join("done.tar.gz");
    let pack = |flags: &[&str]| {
        let mut c = s.pack(flags);
        c.arg("-o")
            .arg(&out)
            .arg("--cache-dir")
            .arg(s.path().join("cache"));
        c
    };
    let assert_kept = |o: &Output, how: &str| {
        let err = stderr(o);
        assert!(
            err.contains(&format!(
                "interrupted: {} is complete and kept",
                out.display()
            )),
            "{how}: {err}"
        );
        assert!(
            !err.contains("interrupted: temporary files removed"),
            "{how}: {err}"
        );
    };
    let assert_done = |how: &str| {
        assert_complete(&out);
        let left = partials(s.path());
        assert!(left.is_empty(), "{how}: {left:?}");
        s.assert_no_staging();
        // The same command again: the output is envpack's and up to date.
        let again = run_ok(&mut pack(&[]));
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(said.starts_with("up to date: "), "{how}: {said}");
    };

    // Reached every time: the run's stdout is a full pipe, so the run blocks printing its
    // summary, after the final rename and before it exits.
    let (reader, writer) = std::io::pipe().unwrap();
    fill(&writer);
    let mut child = pack(&[])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "its output appeared", || out.exists());
    signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    drop(reader);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_kept(&o, "blocked after the rename");
    assert_done("blocked after the rename");

    // The moment the output appears, on both routes (the staged one then removes its
    // prefix): the run may be over before the signal lands, either way the output stays.
    for (i, (route, flags)) in ROUTES.iter().cycle().take(6).enumerate() {
        let how = format!("{route} #{i}");
        std::fs::remove_file(&out).unwrap();
        let mut child = pack(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Not signalled if it ended (and was reaped) first.
        if wait_until(&mut child, || out.exists()) {
            signal(&child, "INT");
        }
        let o = child.wait_with_output().unwrap();
        match o.status.code() {
            Some(0) => {}
            Some(130) => assert_kept(&o, &how),
            _ => panic!("{how}: {:?}: {}", o.status, stderr(&o)),
        }
        assert_done(&how);
    }
}

#[test]
fn staging_left_by_kill_9_is_swept_by_the_next_run_but_a_living_runs_is_not() {
    let (s, fifo, bytes) = blocking_setup("killed");
    let cache = s.path().join("cache");
    // The staged route throughout: only it makes (and sweeps) staging folders.
    let mut child = s
        .pack(&["--via-prefix", "-o", "a.tar.gz", "--cache-dir"])
        .arg(&cache)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_marker(&mut child, &s.work());
    signal(&child, "KILL");
    child.wait().unwrap();
    let stale = snapshot(&s.work());
    assert!(!stale.is_empty(), "kill -9 left nothing to sweep");
    // A living run holds its staging folder: a second run must not sweep it.
    let mut living = s
        .pack(&["--via-prefix", "-o", "b.tar.gz", "--cache-dir"])
        .arg(&cache)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The living run swept the stale folder and made its own (blocked on the FIFO).
    loop {
        let now = snapshot(&s.work());
        let tops: Vec<&String> = now.iter().filter(|p| !p.contains('/')).collect();
        if tops.len() == 1 && !stale.contains(tops[0]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A third run (another output, no FIFO involved) does not touch the living one's folder.
    let other = Setup::new(vec![small_package("other")], &["other"]);
    run_ok(
        other
            .pack_in(&s.work(), &["--via-prefix", "-o"])
            .arg(other.path().join("o.tar.gz")),
    );
    assert_eq!(
        snapshot(&s.work())
            .iter()
            .filter(|p| !p.contains('/'))
            .count(),
        1,
        "the living run's staging folder was swept"
    );
    feed(&fifo, &bytes, &mut living);
    let o = living.wait().unwrap();
    assert!(o.success());
    assert!(s.proj().join("b.tar.gz").is_file());
    s.assert_no_staging();
}

/// Runs `cmd` in a mount namespace of its own where `dir` is a 2 MB tmpfs (`unshare -m`, with
/// `-r` when not root): nothing to unmount, even when a test fails. Returns its output and
/// what `dir` held when it ended (read inside the namespace).
fn on_small_fs(dir: &Path, cmd: &Command) -> (Output, Vec<String>) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let listing = dir.with_extension("listing");
    let mut c = Command::new("unshare");
    c.arg("-m");
    if !root {
        c.arg("-r");
    }
    c.args([
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=2m tmpfs "$SMALL" || exit 99
"$@"; rc=$?
ls -A "$SMALL" > "$LISTING"
exit $rc"#,
        "sh",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args())
    .env("SMALL", dir)
    .env("LISTING", &listing);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        c.current_dir(cwd);
    }
    let out = c.output().expect("unshare runs");
    assert_ne!(
        out.status.code(),
        Some(99),
        "this test needs a 2 MB tmpfs in a mount namespace (unshare -m, or -r when not root): {}",
        stderr(&out)
    );
    let left = std::fs::read_to_string(&listing)
        .unwrap_or_else(|e| panic!("{}: {e}; {}", listing.display(), stderr(&out)));
    std::fs::remove_file(&listing).unwrap();
    (out, left.lines().map(str::to_string).collect())
}

#[test]
fn a_full_disk_leaves_no_staging_and_names_the_output() {
    // 3 MB that compress to little: the package is small, the prefix and a plain tar are not.
    let s = Setup::new(
        vec![Package::new("big", "1.0").file("share/big.bin", vec![7u8; 3 << 20])],
        &["big"],
    );
    let small = s.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let before = snapshot(s.path());

    // Staging on the full disk (the staged route: the direct one stages nothing).
    let (o, left) = on_small_fs(&small, &s.pack_in(&small, &["--via-prefix", "-o", "x.tar"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(left.is_empty(), "staging left on the full disk: {left:?}");

    // The output on the full disk, on both routes: the error names it, no partial is left.
    let out = small.join("out.tar");
    for (route, flags) in ROUTES {
        let (o, left) = on_small_fs(&small, s.pack(flags).arg("-o").arg(&out));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{route}: {err}");
        assert!(
            err.contains(&format!("failed to write {}", out.display()))
                && err.contains("No space left on device"),
            "{route}: {err}"
        );
        assert!(left.is_empty(), "{route}: left on the full disk: {left:?}");
        s.assert_no_staging();
    }
    assert!(!s.proj().join("x.tar").exists());
    assert_eq!(snapshot(s.path()), before, "something was written outside");
}

// ------------------------------------------- items 5, 6: binaries envpack cannot rewrite

/// A prefix conda made (at a path shorter than the archive's placeholder, 31 characters)
/// holding files no package installed, each with the prefix inside: a pickle-like blob, an
/// ELF file (both as C strings) and a text file.
struct Unrecorded {
    prefix: PathBuf,
    /// The prefix's path.
    from: String,
    blob: Vec<u8>,
    elf: Vec<u8>,
}

const ELF: &str = "lib/libshort.so";
const TEXT: &str = "share/models/config.txt";

impl Unrecorded {
    fn new(s: &Setup) -> Self {
        let kept = s.path().join("k");
        run_ok(
            s.pack_in(&kept, &["--via-prefix", "--keep-work", "-o"])
                .arg(s.path().join("first.tar")),
        );
        let prefix = s.path().join("p");
        std::fs::rename(crate::support::kept_work_folder(&kept).join("env"), &prefix).unwrap();
        let from = prefix.display().to_string();
        assert!(from.len() < envpack::ARCHIVE_PREFIX.len(), "{from}");
        let blob = [&b"\x80\x04\x95\x10\x00"[..], from.as_bytes(), b"\x00\x94."].concat();
        let elf = [
            &b"\x7fELF\x02\x01\x01\x00"[..],
            // Not UTF-8, as any real ELF file (a UTF-8 file is text, relocated as text).
            b"\xff\xfe\x00\x00\xc3\x28\x00\x00",
            from.as_bytes(),
            b"/lib:",
            from.as_bytes(),
            b"/lib64\x00\x00\x00tail",
        ]
        .concat();
        std::fs::create_dir_all(prefix.join("share/models")).unwrap();
        std::fs::write(prefix.join("share/models/model.pkl"), &blob).unwrap();
        std::fs::write(prefix.join(TEXT), format!("root={from}/share\n")).unwrap();
        std::fs::create_dir_all(prefix.join("lib")).unwrap();
        std::fs::write(prefix.join(ELF), &elf).unwrap();
        Self {
            prefix,
            from,
            blob,
            elf,
        }
    }

    /// Packs the prefix into `out` with `extra` flags; returns stderr.
    fn pack(&self, s: &Setup, out: &Path, extra: &[&str]) -> String {
        let o = run_ok(
            envpack()
                .current_dir(s.path())
                .args(["pack", "--no-progress", "-p"])
                .arg(&self.prefix)
                .arg("-o")
                .arg(out)
                .args(extra),
        );
        stderr(&o)
    }

    /// The ELF file as relocated for `to`: each string holds `to`, NUL padded, same length.
    fn elf_for(&self, to: &str) -> Vec<u8> {
        assert!(to.len() <= self.from.len());
        let pad = 2 * (self.from.len() - to.len());
        [
            &b"\x7fELF\x02\x01\x01\x00"[..],
            b"\xff\xfe\x00\x00\xc3\x28\x00\x00",
            to.as_bytes(),
            b"/lib:",
            to.as_bytes(),
            b"/lib64",
            &vec![0u8; pad],
            b"\x00\x00\x00tail",
        ]
        .concat()
    }
}

/// The record of `rel` in the tree's `relocations.json`.
fn record(tree: &Path, rel: &str) -> Option<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tree.join("share/envpack/relocations.json")).unwrap(),
    )
    .unwrap();
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == rel)
        .cloned()
}

/// Every file and symlink below `dir` with its bytes, but the lock `conda-unpack` creates.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    crate::support::snapshot(dir)
        .into_iter()
        .filter(|(rel, _)| rel != "share/envpack/.lock")
        .collect()
}

/// Runs the tree's own `bin/conda-unpack` with python3; returns stderr.
fn conda_unpack(tree: &Path) -> String {
    stderr(&run_ok(
        Command::new("python3").arg(tree.join("bin/conda-unpack")),
    ))
}

/// `envpack unpack ARCHIVE DEST`; returns stderr.
fn unpack(archive: &Path, dest: &Path) -> String {
    stderr(&run_ok(
        envpack()
            .args(["unpack", "--no-progress"])
            .arg(archive)
            .arg(dest),
    ))
}

/// Unpacks `archive` at `dest` with `envpack unpack`, then again by extracting it there and
/// running its `conda-unpack`: both must leave the same tree. Returns both stderrs.
fn unpack_both_ways(archive: &Path, dest: &Path) -> (String, String) {
    let native = unpack(archive, dest);
    let by_envpack = files(dest);
    std::fs::remove_dir_all(dest).unwrap();
    crate::support::extract(archive, dest);
    let script = conda_unpack(dest);
    let by_script = files(dest);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&by_envpack), names(&by_script));
    for (a, b) in by_envpack.iter().zip(&by_script) {
        assert!(a == b, "{}: envpack unpack and conda-unpack differ", a.0);
    }
    (native, script)
}

#[test]
fn unrecorded_binaries_it_cannot_rewrite_are_packed_unchanged_with_a_warning() {
    let s = Setup::new(vec![small_package("plain5")], &["plain5"]);
    let u = Unrecorded::new(&s);
    let out = s.path().join("out.tar");
    let err = u.pack(&s, &out, &[]);
    assert!(
        err.contains("share/models/model.pkl: a binary file not installed by conda (and not ELF) holds the build prefix; packed unchanged"),
        "{err}"
    );
    let (from, room) = (&u.from, u.from.len());
    assert!(
        err.contains(&format!("{ELF}: an ELF file not installed by conda holds the build prefix {from}, which is shorter than the archive's prefix {}; packed unchanged, it is relocated at unpack only to paths of at most {room} characters", envpack::ARCHIVE_PREFIX)),
        "{err}"
    );
    assert!(!err.contains("--dest-prefix"), "{err}");
    let x = s.path().join("x");
    crate::support::extract(&out, &x);
    assert_eq!(
        std::fs::read(x.join("share/models/model.pkl")).unwrap(),
        u.blob
    );
    assert_eq!(std::fs::read(x.join(ELF)).unwrap(), u.elf);
    // Its record names the prefix it holds; the others keep the three elements earlier
    // envpack versions wrote (and read), and the blob has none.
    assert_eq!(record(&x, ELF), Some(json!([ELF, "binary", room, from])));
    assert_eq!(record(&x, TEXT), Some(json!([TEXT, "text", 0])));
    assert_eq!(record(&x, "share/models/model.pkl"), None);
}

/// Item 6: the ELF file packed unchanged is relocated by `envpack unpack` and by its
/// `conda-unpack` wherever the new prefix fits its strings, and moves again with the tree.
#[test]
fn an_unrecorded_elf_is_relocated_at_unpack_where_the_new_prefix_fits() {
    let s = Setup::new(vec![small_package("plain6")], &["plain6"]);
    let u = Unrecorded::new(&s);
    let out = s.path().join("out.tar");
    u.pack(&s, &out, &[]);
    // As long as the build prefix, then shorter.
    let d = s.path().join("d");
    assert_eq!(d.display().to_string().len(), u.from.len());
    let (native, script) = unpack_both_ways(&out, &d);
    let d = d.canonicalize().unwrap().display().to_string();
    for err in [&native, &script] {
        assert!(!err.contains("not relocated"), "{err}");
    }
    let elf = std::fs::read(s.path().join("d").join(ELF)).unwrap();
    assert_eq!(elf, u.elf_for(&d));
    assert!(!crate::support::contains(&elf, u.from.as_bytes()));
    assert_eq!(
        record(&s.path().join("d"), ELF),
        Some(json!([ELF, "binary", u.from.len(), d]))
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("d").join(TEXT)).unwrap(),
        format!("root={d}/share\n")
    );
    // Moved to another path that fits, it is relocated again.
    let short = s.path().join("e");
    std::fs::rename(s.path().join("d"), &short).unwrap();
    let err = conda_unpack(&short);
    assert!(!err.contains("not relocated"), "{err}");
    let short = short.canonicalize().unwrap().display().to_string();
    assert_eq!(
        std::fs::read(s.path().join("e").join(ELF)).unwrap(),
        u.elf_for(&short)
    );
    assert_eq!(
        record(&s.path().join("e"), ELF),
        Some(json!([ELF, "binary", u.from.len(), short]))
    );
}

/// Item 6: where the new prefix does not fit, the ELF file is left as it was packed, with a
/// warning naming it and its limit; everything else is relocated, and a later move to a short
/// enough path relocates it.
#[test]
fn an_unrecorded_elf_is_left_with_a_warning_where_the_new_prefix_does_not_fit() {
    let s = Setup::new(vec![small_package("plain6b")], &["plain6b"]);
    let u = Unrecorded::new(&s);
    let out = s.path().join("out.tar");
    u.pack(&s, &out, &[]);
    let long = s.path().join("a-destination-longer-than-the-build-prefix");
    let (native, script) = unpack_both_ways(&out, &long);
    let l = long.canonicalize().unwrap().display().to_string();
    let room = u.from.len();
    assert!(
        native.contains(&format!("{ELF}: not relocated: it can hold a prefix of at most {room} characters, and the new one has {}", l.len())),
        "{native}"
    );
    assert!(
        script.contains(&format!("{l}/{ELF} was not relocated: it can hold a prefix of at most {room} characters, and the new one has {}", l.len())),
        "{script}"
    );
    assert_eq!(std::fs::read(long.join(ELF)).unwrap(), u.elf);
    assert_eq!(
        record(&long, ELF),
        Some(json!([ELF, "binary", room, u.from])),
        "the record still names what the file holds"
    );
    assert_eq!(
        std::fs::read_to_string(long.join("share/envpack/location")).unwrap(),
        l
    );
    assert_eq!(
        std::fs::read_to_string(long.join(TEXT)).unwrap(),
        format!("root={l}/share\n")
    );
    assert_eq!(
        crate::support::files_containing(&long, envpack::ARCHIVE_PREFIX.as_bytes()),
        ["share/envpack/relocations.json"]
    );
    // Moved to a short enough path, it is relocated from the prefix it still holds.
    let m = s.path().join("m");
    std::fs::rename(&long, &m).unwrap();
    let err = conda_unpack(&m);
    assert!(!err.contains("not relocated"), "{err}");
    let m = m.canonicalize().unwrap().display().to_string();
    assert_eq!(
        std::fs::read(s.path().join("m").join(ELF)).unwrap(),
        u.elf_for(&m)
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("m").join(TEXT)).unwrap(),
        format!("root={m}/share\n")
    );

    // Packed for a --dest-prefix longer than the build prefix: the same rule.
    let dest = s.path().join("opt/the-final-place-of-the-environment");
    let out = s.path().join("dest.tar");
    let err = u.pack(&s, &out, &["--dest-prefix", &dest.display().to_string()]);
    assert!(
        err.contains(&format!("{ELF}: an ELF file not installed by conda holds the build prefix {}, which is shorter than the archive's prefix {}; packed unchanged, it is relocated at unpack only to paths of at most {room} characters", u.from, dest.display())),
        "{err}"
    );
    let n = s.path().join("n");
    let err = unpack(&out, &n);
    assert!(!err.contains("not relocated"), "{err}");
    let n = n.canonicalize().unwrap().display().to_string();
    assert_eq!(
        std::fs::read(s.path().join("n").join(ELF)).unwrap(),
        u.elf_for(&n)
    );
}

// ------------------------------------------ items 11, 13, 14: input checks and messages

#[test]
fn unknown_top_level_keys_warn_and_the_environment_is_packed() {
    let s = Setup::new(vec![small_package("plain11")], &["plain11"]);
    let f = s.proj().join("environment.yml");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        format!("{text}platforms:\n  - linux-64\ncategory: main\nvariables:\n  OK_NAME: 1\n  bad-name: 2\n"),
    )
    .unwrap();
    let o = run_ok(&mut s.pack(&["-o", "e.tar.gz"]));
    let err = stderr(&o);
    for key in ["platforms", "category"] {
        assert!(
            err.contains(&format!("unknown key `{key}` ignored")),
            "{err}"
        );
    }
    assert!(
        err.contains("variable `bad-name` ignored: not a valid environment variable name"),
        "{err}"
    );
    assert!(s.proj().join("e.tar.gz").is_file());
    s.assert_no_staging();
}

#[test]
fn a_misspelt_package_gets_a_suggestion_and_a_missing_version_the_versions() {
    let s = Setup::new(
        vec![
            small_package("plainpkg"),
            Package::new("plainpkg", "1.1").file("share/plainpkg/data.txt", "1.1\n"),
        ],
        &["plainpkgg"],
    );
    let before = snapshot(s.path());
    let err = stderr(&run_err(&mut s.pack(&[])));
    assert!(
        err.contains("no package named `plainpkgg` in the channels; did you mean `plainpkg`?"),
        "{err}"
    );
    s.env("env", &["plainpkg=2.0"]);
    let err = stderr(&run_err(&mut s.pack(&[])));
    assert!(
        err.contains("versions of `plainpkg` in the channels for this platform: 1.0, 1.1"),
        "{err}"
    );
    s.assert_no_staging();
    let after: BTreeSet<String> = snapshot(s.path());
    assert_eq!(after, before, "a failed solve wrote something");
}

#[test]
fn values_that_cannot_work_are_refused_before_any_work() {
    let s = Setup::new(vec![small_package("plain14")], &["plain14"]);
    // The channel is gone: a refusal that read it would say so.
    std::fs::rename(s.path().join("channel"), s.path().join("channel.away")).unwrap();
    let before = snapshot(s.path());
    for (flags, message) in [
        (&["-j", "0"][..], "--threads \"0\": give at least 1 thread"),
        (
            &["--parallel", "0"][..],
            "--parallel \"0\": give at least 1",
        ),
        (
            &["--compress-level", "99"][..],
            "compression level 99 is out of range: gzip takes 0 to 9",
        ),
        (
            &["--format", "tar.zst", "--compress-level", "23"][..],
            "compression level 23 is out of range: zstd takes",
        ),
        (
            &["--dest-prefix", "/opt/env\nx"][..],
            "holds a control character",
        ),
    ] {
        let o = run_err(&mut s.pack(flags));
        let err = stderr(&o);
        assert!(err.contains(message), "{flags:?}: {err}");
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(!err.contains("channel"), "{flags:?} solved first: {err}");
    }
    assert_eq!(snapshot(s.path()), before);
    s.assert_no_staging();
}

#[test]
fn a_run_on_the_package_cache_route_sweeps_staging_left_by_kill_9_too() {
    let (s, _fifo, _bytes) = blocking_setup("killed-direct");
    let mut child = s
        .pack(&["--via-prefix", "-o", "a.tar.gz", "--cache-dir"])
        .arg(s.path().join("cache"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_marker(&mut child, &s.work());
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(
        !snapshot(&s.work()).is_empty(),
        "kill -9 left nothing to sweep"
    );
    // Another environment, on the direct route (no staging folder of its own).
    let other = Setup::new(vec![small_package("other")], &["other"]);
    let out = run_ok(
        other
            .pack_in(&s.work(), &["--json", "-o"])
            .arg(other.path().join("o.tar.gz")),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "package-cache", "{v}");
    s.assert_no_staging();
}
