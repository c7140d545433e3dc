//! The files envpack adds to every environment: activation, `conda-unpack`, the
//! self-relocation hook, and the relocation records they read.
//!
//! The scripts are static (no templating), so they are the same bytes in every archive; what
//! differs per environment lives in `share/envpack/relocations.json` and its neighbours.

use std::fmt::Write;

use serde::Serialize;

use super::relocate::Mode;

/// `bin/conda-unpack`: sh trampoline + Python relocator, conda-pack's CLI.
pub const CONDA_UNPACK: &str = include_str!("scripts/conda-unpack");
/// `bin/activate`, sourced by bash, zsh, dash.
pub const ACTIVATE: &str = include_str!("scripts/activate");
/// `bin/deactivate`.
pub const DEACTIVATE: &str = include_str!("scripts/deactivate");
/// `site-packages/_envpack_relocate.py`: relocates at the first interpreter start.
pub const HOOK_MODULE: &str = include_str!("scripts/_envpack_relocate.py");
/// `site-packages/envpack-relocate.pth`: imports the hook.
pub const HOOK_PTH: &str = include_str!("scripts/envpack-relocate.pth");

/// Where the relocation data lives in the environment.
pub const DATA_DIR: &str = "share/envpack";
/// Relocation records.
pub const RELOCATIONS: &str = "share/envpack/relocations.json";
/// The prefix the files hold now.
pub const LOCATION: &str = "share/envpack/location";
/// Present when self-relocation is on.
pub const AUTO_RELOCATE: &str = "share/envpack/auto-relocate";

/// Files that envpack generates; copies of them found in a prefix are replaced.
pub const GENERATED: [&str; 3] = ["bin/activate", "bin/deactivate", "bin/conda-unpack"];
/// Names of the hook in site-packages.
pub const HOOK_NAMES: [&str; 2] = ["_envpack_relocate.py", "envpack-relocate.pth"];

/// One file that holds the prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Relocation {
    /// Path relative to the environment.
    pub path: String,
    /// How it is rewritten (for binary files, with the placeholder length they were built
    /// with).
    pub mode: Mode,
}

#[derive(Serialize)]
struct RelocationsJson<'a> {
    envpack: u32,
    version: &'a str,
    prefix: &'a str,
    files: Vec<(&'a str, &'a str, usize)>,
}

/// `share/envpack/relocations.json`, sorted, deterministic.
#[must_use]
pub fn relocations_json(prefix: &str, relocations: &[Relocation]) -> Vec<u8> {
    let mut files: Vec<&Relocation> = relocations.iter().collect();
    files.sort();
    let doc = RelocationsJson {
        envpack: 1,
        version: env!("CARGO_PKG_VERSION"),
        prefix,
        files: files
            .iter()
            .map(|r| match r.mode {
                Mode::Text => (r.path.as_str(), "text", 0),
                Mode::Binary { room } => (r.path.as_str(), "binary", room),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec_pretty(&doc).expect("serializable");
    out.push(b'\n');
    out
}

/// `etc/conda/activate.d` and `deactivate.d` scripts for the environment file's `variables:`.
#[must_use]
pub fn variable_scripts(variables: &[(String, String)]) -> Option<(Vec<u8>, Vec<u8>)> {
    if variables.is_empty() {
        return None;
    }
    let mut on = String::from("# Variables of the environment file, set by envpack.\n");
    let mut off = String::from("# Restores what envpack's activate.d script changed.\n");
    for (k, v) in variables {
        if !is_shell_name(k) {
            continue;
        }
        let saved = format!("_ENVPACK_OLD_{k}");
        let _ = writeln!(
            on,
            "if [ -n \"${{{k}+x}}\" ]; then {saved}=\"${k}\"; export {saved}; fi\nexport {k}={}",
            shell_quote(v)
        );
        let _ = writeln!(
            off,
            "if [ -n \"${{{saved}+x}}\" ]; then {k}=\"${saved}\"; export {k}; unset {saved}; else unset {k}; fi"
        );
    }
    Some((on.into_bytes(), off.into_bytes()))
}

/// conda's `conda-meta/state` with the environment's variables, so `conda activate` sets them too.
#[must_use]
pub fn conda_state(variables: &[(String, String)]) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = variables
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut out = serde_json::to_vec_pretty(&serde_json::json!({ "env_vars": map })).expect("json");
    out.push(b'\n');
    out
}

fn is_shell_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocations_are_sorted_and_carry_the_prefix() {
        let r = [
            Relocation {
                path: "lib/b".into(),
                mode: Mode::Binary { room: 255 },
            },
            Relocation {
                path: "bin/a".into(),
                mode: Mode::Text,
            },
        ];
        let v: serde_json::Value = serde_json::from_slice(&relocations_json("/P", &r)).unwrap();
        assert_eq!(v["prefix"], "/P");
        assert_eq!(v["files"][0][0], "bin/a");
        assert_eq!(v["files"][1][2], 255);
    }

    #[test]
    fn variables_round_trip_through_a_shell() {
        let (on, off) = variable_scripts(&[
            ("MODE".into(), "it's fast".into()),
            ("HOME_X".into(), "$HOME".into()),
            ("bad-name".into(), "x".into()),
        ])
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("on.sh"), on).unwrap();
        std::fs::write(d.path().join("off.sh"), off).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-euc")
            .arg("MODE=old; . ./on.sh; echo \"$MODE|$HOME_X\"; . ./off.sh; echo \"$MODE|${HOME_X-unset}\"")
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's fast|$HOME\nold|unset\n"
        );
    }
}
