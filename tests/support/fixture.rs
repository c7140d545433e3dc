//! The hermetic fixture: one channel of small packages built at test time, in a temporary
//! folder, an environment file using it, and the commands that pack from it.
//!
//! Layout of the folder: `channels/local/` (the channel, so `--channel-alias
//! file://DIR/channels/` makes `local` a channel name), `environment.yml`; tests write their
//! outputs beside them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::channel::{Channel, Package, Prefix, fake_python, long_placeholder};
use super::{envpack, run_ok};

/// The packages of the default fixture environment.
pub const DEPS: &[&str] = &["python", "tool", "greet", "dup-a", "dup-b"];

/// `tool`: text and binary placeholders, scripts with every kind of shebang, activation
/// hooks, documentation, and symlinks to a file and to a folder; a `.tar.bz2`.
pub fn tool_package() -> Package {
    let ph = long_placeholder();
    Package::new("tool", "2.0")
        .tar_bz2()
        .with_prefix("etc/tool.conf", Prefix::Text, &ph, false, |ph| {
            format!("home={ph}\ndata={ph}/share/tool\n").into_bytes()
        })
        // One C string right after a 5-byte header, then NULs: its room is the placeholder's.
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
        .file(
            "etc/conda/activate.d/tool.sh",
            "TOOL_ACTIVATED=1\nexport TOOL_ACTIVATED\n",
        )
        .file("etc/conda/deactivate.d/tool.sh", "unset TOOL_ACTIVATED\n")
        .file("share/doc/tool/README", "read me\n")
        .file("share/doc/tool/keep/LICENSE", "BSD\n")
        .file("share/tool/notes.txt", "no prefix here\n")
}

/// Every package of the fixture channel: a fake python, `tool`, a noarch python package
/// with an entry point, two packages providing one path, and one that needs a newer glibc
/// than any machine has.
pub fn packages() -> Vec<Package> {
    vec![
        fake_python(),
        tool_package(),
        Package::new("greet", "1.0")
            .depends("python >=3.11")
            .noarch_python(&["greet = greet:main"])
            .file(
                "site-packages/greet/__init__.py",
                "import sys\n\ndef main():\n    print('greet', __file__, *sys.argv[1:])\n",
            ),
        Package::new("dup-a", "1.0").file("share/dup/same.txt", "from a\n"),
        Package::new("dup-b", "1.0")
            .tar_bz2()
            .file("share/dup/same.txt", "from b\n"),
        Package::new("needs-old-glibc", "1.0").depends("__glibc >=9.0"),
    ]
}

/// A temporary folder with the fixture channel in `channels/local` and an environment file
/// of [`DEPS`] from `local`.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
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

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The channel folder.
    pub fn channel_dir(&self) -> PathBuf {
        self.path().join("channels/local")
    }

    /// The channel as a `file://` URL.
    pub fn channel_url(&self) -> String {
        format!("file://{}", self.channel_dir().display())
    }

    /// Writes `environment.yml` with these dependencies from the `local` channel.
    pub fn env_file(&self, deps: &[&str]) -> PathBuf {
        super::write_environment(self.path(), "hermetic", &["local"], deps)
    }

    /// Writes `environment.yml` with this text.
    pub fn env_text(&self, text: &str) -> PathBuf {
        super::write_environment_text(self.path(), text)
    }

    /// `envpack pack environment.yml -o OUT` with the channel alias pointing at the fixture.
    pub fn pack_cmd(&self, out: &Path) -> Command {
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

    pub fn pack(&self, out: &Path, extra: &[&str]) -> Output {
        run_ok(self.pack_cmd(out).args(extra))
    }

    /// An existing environment: the staging prefix of a pack kept with `--keep-work`.
    pub fn existing(&self, name: &str) -> PathBuf {
        let work = self.path().join(name);
        self.pack(
            &self.path().join(format!("{name}.tar")),
            &["--keep-work", "--work-dir", work.to_str().unwrap()],
        );
        let staging = super::kept_work_folder(&work);
        let prefix = staging.join("env");
        assert!(prefix.join("conda-meta").is_dir(), "{}", prefix.display());
        prefix
    }
}

/// `envpack pack --prefix PREFIX -o OUT`.
pub fn pack_prefix(prefix: &Path, out: &Path, extra: &[&str]) -> Command {
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
