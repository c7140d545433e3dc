//! The environment-file reader on arbitrary bytes: `envpack::fuzzing::read` never panics, and
//! what it accepts has dependencies and the digest of the bytes read. The first line of the
//! input also names a folder holding a `requirements.txt`, which `read_any` must accept as the
//! environment `python` + `pip` of that folder's name, whatever the name holds.
#![no_main]

use std::error::Error as _;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;

use envpack::fuzzing::{DEFAULT_PYTHON, read, read_any};
use libfuzzer_sys::fuzz_target;

/// The error and its sources, rendered as the binary renders them.
fn render(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, ": {cause}");
        source = cause.source();
    }
    s
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("environment.yml");
    std::fs::write(&file, data).unwrap();
    match read(&file) {
        Ok(spec) => {
            assert!(!spec.dependencies.is_empty() || !spec.pip.is_empty());
            assert!(!spec.channels.is_empty());
            assert_eq!(spec.digest, sha256_hex(data));
            assert!(spec.warnings.iter().all(|w| !w.is_empty()));
            for d in &spec.dependencies {
                let _ = d.spec.to_string();
            }
        }
        Err(e) => {
            let message = render(&e);
            assert!(!message.is_empty());
            let _ = e.source();
        }
    }

    // A folder named by the first line (when that is a valid file name) with a requirements file.
    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let name = std::ffi::OsStr::from_bytes(first);
    if first.is_empty()
        || first.len() > 200
        || first.contains(&b'/')
        || first.contains(&0)
        || first == b"."
        || first == b".."
    {
        return;
    }
    let dir = root.path().join("r").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, data).unwrap();
    let spec = read_any(&requirements, DEFAULT_PYTHON)
        .unwrap_or_else(|e| panic!("requirements.txt in {name:?}: {}", render(&e)));
    let expected = Some(name.to_string_lossy().into_owned()).filter(|n| !n.trim().is_empty());
    assert_eq!(spec.name, expected);
    // Quoted for pip, which splits the options of a requirements line like a shell.
    assert_eq!(spec.pip, ["-r \"requirements.txt\""]);
    assert_eq!(spec.dependencies.len(), 2);
});
