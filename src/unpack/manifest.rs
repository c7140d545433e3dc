//! The archive's manifest, `conda-meta/envpack.json`, where it lists file digests.
//!
//! The manifest is optional, and so is its file list. What is read: a `files` entry that is
//! either an object mapping each path (relative to the environment) to its sha256 (a hex
//! string, or an object with a `sha256` field), or a list of `{"path": P, "sha256": H}`
//! objects or `[P, H]` pairs. Each listed file must be in the archive with those bytes (as
//! packed, before relocation). Other fields are not this module's business.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::UnpackError;
use super::relocate::tree_file;

/// Where the manifest is, relative to the environment.
pub const MANIFEST: &str = crate::manifest::PATH;

/// Checks every digest the manifest lists; returns how many files were checked.
pub(super) fn verify(root: &Path) -> Result<u64, UnpackError> {
    let Some(path) = tree_file(root, MANIFEST) else {
        return Ok(0);
    };
    let data = fs_err::read(&path).map_err(|source| UnpackError::Read {
        path: path.clone(),
        source,
    })?;
    let bad = |reason: String| UnpackError::Manifest { reason };
    let doc: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| bad(format!("not JSON: {e}")))?;
    let entries = digests(&doc).map_err(bad)?;
    let mut checked = 0;
    for (rel, expected) in entries {
        if rel == MANIFEST {
            continue;
        }
        let Some(file) = tree_file(root, &rel) else {
            return Err(UnpackError::DigestMissing { path: rel });
        };
        let actual = sha256_file(&file).map_err(|source| UnpackError::Read {
            path: file.clone(),
            source,
        })?;
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(UnpackError::Digest {
                path: rel,
                expected,
                actual,
            });
        }
        checked += 1;
    }
    Ok(checked)
}

/// The (path, sha256) pairs of the manifest's `files`, in its order.
fn digests(doc: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    use serde_json::Value;
    let sha = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("sha256").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    };
    let checked = |path: &str, digest: Option<String>| -> Result<(String, String), String> {
        let digest = digest.ok_or_else(|| format!("no sha256 for {path:?}"))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{path:?}: {digest:?} is not a sha256"));
        }
        Ok((path.to_string(), digest))
    };
    match doc.get("files") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map.iter().map(|(p, v)| checked(p, sha(v))).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|e| match e {
                Value::Object(o) => {
                    let path = o
                        .get("path")
                        .or_else(|| o.get("_path"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("an entry without a path: {e}"))?;
                    checked(path, sha(e))
                }
                Value::Array(pair) if pair.len() == 2 => {
                    let path = pair[0]
                        .as_str()
                        .ok_or_else(|| format!("an entry without a path: {e}"))?;
                    checked(path, sha(&pair[1]))
                }
                _ => Err(format!("an entry that is not a file digest: {e}")),
            })
            .collect(),
        Some(other) => Err(format!("`files` is neither an object nor a list: {other}")),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::spec::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn digests_are_checked_in_every_accepted_shape() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(verify(root).unwrap(), 0, "no manifest: nothing to check");
        write(root, "lib/a", b"hello");
        let good = crate::spec::hex(&Sha256::digest(b"hello"));
        let bad = crate::spec::hex(&Sha256::digest(b"other"));
        for files in [
            serde_json::json!({ "lib/a": good }),
            serde_json::json!({ "lib/a": { "sha256": good, "size": 5 } }),
            serde_json::json!([{ "path": "lib/a", "sha256": good }]),
            serde_json::json!([["lib/a", good]]),
        ] {
            write(
                root,
                MANIFEST,
                serde_json::json!({ "version": 1, "files": files })
                    .to_string()
                    .as_bytes(),
            );
            assert_eq!(verify(root).unwrap(), 1);
        }
        write(root, MANIFEST, br#"{"inputs": "abc"}"#);
        assert_eq!(verify(root).unwrap(), 0, "a manifest without a file list");
        write(
            root,
            MANIFEST,
            serde_json::json!({ "files": { "lib/a": bad } })
                .to_string()
                .as_bytes(),
        );
        assert!(matches!(
            verify(root),
            Err(UnpackError::Digest { path, .. }) if path == "lib/a"
        ));
        write(
            root,
            MANIFEST,
            serde_json::json!({ "files": { "lib/gone": good } })
                .to_string()
                .as_bytes(),
        );
        assert!(matches!(
            verify(root),
            Err(UnpackError::DigestMissing { path }) if path == "lib/gone"
        ));
        write(root, MANIFEST, b"{not json");
        assert!(matches!(verify(root), Err(UnpackError::Manifest { .. })));
        write(root, MANIFEST, br#"{"files": {"lib/a": "xyz"}}"#);
        assert!(matches!(verify(root), Err(UnpackError::Manifest { .. })));
    }
}
