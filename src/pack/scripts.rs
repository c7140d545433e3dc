//! The files envpack adds to every environment: activation, `conda-unpack`, the
//! self-relocation hook, and the relocation records they read.
//!
//! The scripts are static (no templating), so they are the same bytes in every archive; what
//! differs per environment lives in `share/envpack/relocations.json` and its neighbours.
//!
//! `relocations.json` is `{"envpack": 1, "version": V, "prefix": A, "files": [...]}`, one
//! record per file that holds a prefix: `[path, "text"|"binary", room]`, or
//! `[path, "text"|"binary", room, held]`. `room` is, for a binary file, the longest prefix its
//! C strings can hold (the length of the placeholder it was built with; 0 for text). The file
//! holds the prefix in `share/envpack/location` (`A` until the environment is relocated),
//! unless the record has a fourth element: the prefix that file holds. Envpack writes one
//! only for an ELF file conda did not install whose build prefix is shorter than `A` (packed
//! unchanged, so it still holds that prefix, and its room is that prefix's length). Such a
//! file is relocated only to prefixes that fit its room; elsewhere it is left as it is, with
//! a warning, and its record keeps saying what it holds. A relocation that rewrites it sets
//! the fourth element to the new prefix, so it moves again with the environment. Archives of
//! earlier envpack versions have three-element records only, and read as before.

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

/// The prefix a [`LOCATION`] file names: its bytes without the line ends that follow them.
#[must_use]
pub fn location_value(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    &raw[..end]
}

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
    /// The prefix the file holds, when it is not the archive's: an unrecorded ELF file packed
    /// unchanged (see the module docs).
    pub holds: Option<String>,
}

#[derive(Serialize)]
struct RelocationsJson<'a> {
    envpack: u32,
    version: &'a str,
    prefix: &'a str,
    files: Vec<serde_json::Value>,
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
            .map(|r| {
                let (kind, room) = match r.mode {
                    Mode::Text => ("text", 0),
                    Mode::Binary { room } => ("binary", room),
                };
                match r.holds.as_deref().filter(|h| *h != prefix) {
                    Some(held) => serde_json::json!([r.path, kind, room, held]),
                    None => serde_json::json!([r.path, kind, room]),
                }
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
                holds: Some("/P".into()),
            },
            Relocation {
                path: "bin/a".into(),
                mode: Mode::Text,
                holds: None,
            },
            Relocation {
                path: "lib/c".into(),
                mode: Mode::Binary { room: 6 },
                holds: Some("/build".into()),
            },
        ];
        let v: serde_json::Value = serde_json::from_slice(&relocations_json("/P", &r)).unwrap();
        assert_eq!(v["prefix"], "/P");
        assert_eq!(v["files"][0], serde_json::json!(["bin/a", "text", 0]));
        // The archive's own prefix is not repeated: earlier readers see three elements.
        assert_eq!(v["files"][1], serde_json::json!(["lib/b", "binary", 255]));
        assert_eq!(
            v["files"][2],
            serde_json::json!(["lib/c", "binary", 6, "/build"])
        );
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
